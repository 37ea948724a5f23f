"""Response generation with HF transformers: the project's batched generator and the reference calls.

* :func:`generate_batch` (this project's, used by the pipeline): prompts sorted by length and
  left-padded, so a batch wastes little compute on padding; the random state is seeded per call
  and ``top_k`` is off, so the same call gives the same texts however a run was split.
* :func:`generate_response` and :func:`format_conversation` (the reference's): one conversation,
  the caller's random state (no reseeding) and transformers' own sampling defaults otherwise.

The prompt renderer of the project is :func:`assistant_axis.conversation.format_conversation`
(tokenizer, messages -> text); the reference's ``format_conversation`` here builds *messages*
(instruction, question, tokenizer -> messages). ``assistant_axis.format_conversation`` is the
reference one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import length_batches, pad_sequences
from .conversation import Message, build_conversation, end_of_turn_ids, prepare_messages
from .conversation import format_conversation as render_prompt  # the project's renderer (text)


@dataclass(frozen=True)
class SamplingSettings:
    """Generation settings (reference: temperature 0.7, top_p 0.9, 512 new tokens)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class Generated:
    text: str
    n_tokens: int
    finished: bool  # ended with an end-of-turn token rather than the token limit


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    settings: SamplingSettings = SamplingSettings(),
    batch_size: int = 32,
    progress: bool = False,
) -> list[Generated]:
    """Generate one assistant reply for each conversation (which must end with a user turn)."""
    prompts = [render_prompt(tokenizer, conv, add_generation_prompt=True) for conv in conversations]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    results: list[Generated | None] = [None] * len(prompts)
    eos_ids = stop_token_ids(getattr(model, "generation_config", None), tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    batches = length_batches([len(e) for e in encoded], batch_size)
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        ids, mask = pad_sequences([encoded[i] for i in batch], pad_id, side="left")
        width = ids.shape[1]
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if settings.greedy
            else {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        )
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            **sampling,
        )
        for row, i in enumerate(batch):
            new = out[row, width:].tolist()
            end = next((k for k, t in enumerate(new) if t in eos_ids), None)
            tokens = new if end is None else new[:end]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            results[i] = Generated(text=text.strip(), n_tokens=len(tokens), finished=end is not None)
    return [r for r in results if r is not None]


def stop_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Where a reply ends: the generation config's EOS ids, the tokenizer's EOS and the template's end of turn."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None)
    for value in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id] + end_of_turn_ids(tokenizer):
        if value is not None and value not in ids:
            ids.append(int(value))
    return ids


@torch.no_grad()
def generate_response(
    model: torch.nn.Module,
    tokenizer: Any,
    conversation: list[Message],
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    top_p: float = 0.9,
    do_sample: bool = True,
) -> str:
    """Reference API: one reply to one conversation with ``model.generate``; the decoded new tokens.

    As the reference does: the torch random state is the caller's (seed it yourself for
    reproducible samples), ``temperature``/``top_p`` apply only when sampling and every other
    setting (``top_k``, EOS ids) is the model's generation config; the prompt is tokenized with
    the tokenizer's default special tokens; the text is not stripped. Beyond the reference, the
    prompt always has thinking off and a system message is folded into the user turn for
    templates without a system role (where the reference would fail). For seeded, batched
    generation use :func:`generate_batch`.
    """
    prompt = render_prompt(tokenizer, conversation, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    outputs = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(outputs[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def format_conversation(instruction: str | None, question: str, tokenizer: Any) -> list[Message]:
    """Reference API: the messages for one question under an optional system instruction.

    ``[system, user]`` when the chat template keeps a system message, else one user turn
    ``"{instruction}\n\n{question}"``; an empty instruction gives the user turn alone.
    (This project's text renderer is :func:`assistant_axis.conversation.format_conversation`.)
    """
    return prepare_messages(tokenizer, build_conversation(instruction, question))
