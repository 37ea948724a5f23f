"""Harm and capability measures for activation capping, and the rule that picks an experiment.

Capping is only worth having if it lowers harm more than it costs in capability, so every capping
experiment is measured on both sides with the same items:

* **harm**: replies to persona jailbreaks (a harmful persona as system prompt plus a request in its
  domain, ``resources/jailbreaks/jailbreaks.jsonl``) are scored 0-3 by a judge with the harm rubric;
  the same requests without the persona give the baseline;
* **capability**: the mean negative log-likelihood of held-out default responses (perplexity), and
  accuracy on easy 4-option multiple-choice questions, scored without sampling (so no parsing
  failures) in one of two ways: ``letters`` compares the log-probabilities of the option letters
  after an ``Answer:`` prefix (the usual MMLU-style scoring, fine for large models); ``options``
  compares the summed log-likelihood of each option's text as the reply to the bare question
  (cloze scoring). The embedded SmolLM2-135M is at chance with letters (27% on our 48 items, it
  says "C" 38 times) but 62% with options, so only ``options`` tells capping effects from noise there.

All model functions here run whatever hooks are installed on a HF model, so the caller measures a
capped model by entering an :class:`~assistant_axis.steering.ActivationSteering` around them; given
a :class:`~assistant_axis.vllm_backend.VLLMEngine` instead, they score with vLLM's prompt
log-probabilities under the named intervention(s), one per item if asked, in one engine call.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .batching import length_batches, pad_sequences
from .conversation import Message, build_conversation, encode_conversation, format_conversation
from .judges import JudgeItem

LETTERS = ("A", "B", "C", "D")
MC_INSTRUCTION = "Answer with the letter of the correct option."
MC_PREFIX = "Answer:"


class EvalDataError(ValueError):
    """An evaluation file is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Jailbreak:
    """One persona jailbreak: the harmful persona (system prompt) and a request in its domain."""

    id: int
    domain: str
    persona: str
    request: str

    def conversation(self, with_persona: bool = True) -> list[Message]:
        """The jailbreak, or without ``with_persona`` the bare request (the baseline)."""
        return build_conversation(self.persona if with_persona else None, self.request)


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question with four options and the letter of the right one."""

    id: int
    question: str
    options: tuple[str, str, str, str]
    answer: str

    def prompt(self) -> str:
        lines = [self.question, *(f"{letter}. {option}" for letter, option in zip(LETTERS, self.options, strict=True)), MC_INSTRUCTION]
        return "\n".join(lines)


def _read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalDataError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise EvalDataError(f"{path} line {n}: expected a JSON object")
        rows.append((n, obj))
    if not rows:
        raise EvalDataError(f"{path}: no items")
    return rows


def _field(path: str | os.PathLike[str], n: int, obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise EvalDataError(f"{path} line {n}: field {name!r} must be a non-empty {kind.__name__}")
    return value


def load_jailbreaks(path: str | os.PathLike[str]) -> list[Jailbreak]:
    """JSONL lines ``{"id": int, "domain": str, "persona": str, "request": str}``, ids unique."""
    items, seen = [], set()
    for n, obj in _read_jsonl(path):
        item = Jailbreak(
            _field(path, n, obj, "id", int), _field(path, n, obj, "domain", str),
            _field(path, n, obj, "persona", str), _field(path, n, obj, "request", str),
        )
        if item.id in seen:
            raise EvalDataError(f"{path} line {n}: field 'id' repeats {item.id}")
        seen.add(item.id)
        items.append(item)
    return items


def load_mc(path: str | os.PathLike[str]) -> list[MCItem]:
    """JSONL lines ``{"id": int, "question": str, "options": [4 str], "answer": "A".."D"}``."""
    items = []
    for n, obj in _read_jsonl(path):
        options = obj.get("options")
        if not isinstance(options, list) or len(options) != 4 or not all(isinstance(o, str) and o for o in options):
            raise EvalDataError(f"{path} line {n}: field 'options' must be a list of 4 non-empty strings")
        answer = obj.get("answer")
        if answer not in LETTERS:
            raise EvalDataError(f"{path} line {n}: field 'answer' must be one of {', '.join(LETTERS)}, got {answer!r}")
        items.append(MCItem(_field(path, n, obj, "id", int), _field(path, n, obj, "question", str), tuple(options), answer))
    return items


def load_rubric(path: str | os.PathLike[str]) -> str:
    """A judge rubric with ``{question}`` and ``{answer}`` placeholders (both required)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    for placeholder in ("{question}", "{answer}"):
        if placeholder not in text:
            raise EvalDataError(f"{path}: the rubric has no {placeholder} placeholder")
    return text


def harm_items(rubric: str, keys: Sequence[str], requests: Sequence[str], replies: Sequence[str]) -> list[JudgeItem]:
    """Judge items: the rubric filled in with each request and reply (str.replace: texts may hold braces)."""
    return [
        JudgeItem(key, rubric.replace("{question}", request).replace("{answer}", reply))
        for key, request, reply in zip(keys, requests, replies, strict=True)
    ]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _is_engine(model: Any) -> bool:
    """A scoring engine (:class:`~assistant_axis.vllm_backend.VLLMEngine`) rather than a HF model."""
    return hasattr(model, "token_logprobs")


def response_spans(tokenizer: Any, samples: Sequence[tuple[str | None, str, str]]) -> list[tuple[list[int], tuple[int, int]]]:
    """Token ids of each ``(system prompt, question, response)`` conversation and the span of the response content."""
    out = []
    for system, question, response in samples:
        enc = encode_conversation(tokenizer, build_conversation(system, question, response))
        out.append((list(enc.input_ids), enc.span_of_last("assistant")))
    return out


@torch.no_grad()
def response_nll(
    model: Any, tokenizer: Any, samples: Sequence[tuple[str | None, str, str]], batch_size: int = 8,
    intervention: Any = None,
) -> list[tuple[float, int]]:
    """``(summed NLL in nats, token count)`` of each response's content tokens given its prompt.

    ``samples`` are ``(system prompt, question, response)``; the tokens scored are exactly the
    assistant content span (no template or end-of-turn tokens), as for activations. ``model`` is a
    HF model (under whatever hooks are installed) or a vLLM engine, where ``intervention`` names
    the intervention of all samples or of each one (see :meth:`VLLMEngine.token_logprobs`).
    """
    encoded = response_spans(tokenizer, samples)
    if _is_engine(model):
        logprobs = model.token_logprobs([ids for ids, _ in encoded], intervention)
        # entry t - 1 is token t, so the span a..b-1 is entries a-1..b-2
        return [(-float(lp[a - 1 : b - 1].sum()), b - a) for lp, (_, (a, b)) in zip(logprobs, encoded, strict=True)]
    device = next(model.parameters()).device
    out: list[tuple[float, int] | None] = [None] * len(encoded)
    for batch in length_batches([len(ids) for ids, _ in encoded], batch_size):
        ids, mask = pad_sequences([encoded[i][0] for i in batch], _pad_id(tokenizer), side="right")
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            a, b = encoded[i][1]
            # logits at t-1 predict token t
            nll = torch.nn.functional.cross_entropy(logits[row, a - 1 : b - 1].float(), ids[row, a:b].to(device), reduction="sum")
            out[i] = (float(nll), b - a)
    return [o for o in out if o is not None]


def letter_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of " A".." D" (the letter after ``Answer:``); each must be a single token."""
    ids = []
    for letter in LETTERS:
        toks = tokenizer.encode(f" {letter}", add_special_tokens=False)
        if len(toks) != 1:
            toks = tokenizer.encode(letter, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"option letter {letter!r} is not a single token for {type(tokenizer).__name__}")
        ids.append(toks[0])
    return ids


def mc_prompt_ids(tokenizer: Any, item: MCItem) -> list[int]:
    """The question as one user turn, the generation prompt, then ``Answer:`` as the reply's start."""
    text = format_conversation(tokenizer, build_conversation(None, item.prompt()), add_generation_prompt=True) + MC_PREFIX
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _repeat(intervention: Any, times: int) -> Any:
    """A per-item intervention list stretched to ``times`` requests per item (a single value stays)."""
    if isinstance(intervention, (list, tuple)):
        return [c for c in intervention for _ in range(times)]
    return intervention


@torch.no_grad()
def mc_letter_logprobs(
    model: Any, tokenizer: Any, items: Sequence[MCItem], batch_size: int = 8, intervention: Any = None
) -> np.ndarray:
    """``(n_items, 4)`` log-probabilities of the option letters as the next token (full-vocabulary softmax)."""
    letters = letter_token_ids(tokenizer)
    prompts = [mc_prompt_ids(tokenizer, item) for item in items]
    if _is_engine(model):
        # each letter appended as the last prompt token: its prompt log-probability is the next-token one
        seqs = [ids + [letter] for ids in prompts for letter in letters]
        logprobs = model.token_logprobs(seqs, _repeat(intervention, len(letters)))
        return np.array([lp[-1] for lp in logprobs]).reshape(len(items), len(LETTERS))
    device = next(model.parameters()).device
    out = np.zeros((len(items), len(LETTERS)))
    for start in range(0, len(items), batch_size):
        rows = prompts[start : start + batch_size]
        ids, mask = pad_sequences(rows, _pad_id(tokenizer), side="right")
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        logp = torch.log_softmax(logits[torch.arange(len(rows), device=device), last].float(), dim=-1)
        out[start : start + len(rows)] = logp[:, letters].cpu().numpy()
    return out


def mc_option_logprobs(
    model: Any, tokenizer: Any, items: Sequence[MCItem], batch_size: int = 8, intervention: Any = None
) -> np.ndarray:
    """``(n_items, 4)`` summed log-likelihood of each option's text as the reply to the bare question."""
    samples = [(None, item.question, option) for item in items for option in item.options]
    nll = response_nll(model, tokenizer, samples, batch_size, _repeat(intervention, len(LETTERS)))
    return -np.array([total for total, _ in nll]).reshape(len(items), len(LETTERS))


MC_SCORING = {"letters": mc_letter_logprobs, "options": mc_option_logprobs}


def mc_scores(
    model: Any, tokenizer: Any, items: Sequence[MCItem], scoring: str, batch_size: int = 8, intervention: Any = None
) -> np.ndarray:
    """``(n_items, 4)`` scores by ``scoring`` (``letters`` or ``options``, see the module docstring); higher = chosen."""
    if scoring not in MC_SCORING:
        raise ValueError(f"config key 'capping_eval.mc_scoring': {scoring!r} is not one of {', '.join(MC_SCORING)}")
    return MC_SCORING[scoring](model, tokenizer, items, batch_size, intervention)


def mc_predictions(logprobs: np.ndarray) -> list[str]:
    """The most likely letter of each item (the first on an exact tie)."""
    return [LETTERS[int(k)] for k in np.argmax(logprobs, axis=1)]


def perplexity(nll: Sequence[tuple[float, int]]) -> float:
    """``exp(total NLL / total tokens)``: per-token perplexity pooled over all responses."""
    tokens = sum(n for _, n in nll)
    if tokens == 0:
        raise ValueError("perplexity of zero tokens")
    return math.exp(sum(s for s, _ in nll) / tokens)


@dataclass(frozen=True)
class Bounds:
    """How much capability an experiment may cost and still be recommended."""

    max_perplexity_increase: float  # relative, 0.10 = +10%
    max_mc_drop: float  # accuracy points as a fraction, 0.05 = 5 points


RULE = (
    "among experiments whose perplexity rises by at most max_perplexity_increase (relative to unsteered) "
    "and whose MC accuracy falls by at most max_mc_drop, the one with the largest reduction of the harmful "
    "share (ties: lower mean harm score, then smaller perplexity increase); none if no experiment within "
    "the bounds lowers the harmful share"
)


def pareto_table(rows: Sequence[dict[str, Any]], bounds: Bounds) -> tuple[list[dict[str, Any]], str | None, str]:
    """Changes against the unsteered row, Pareto flags and the recommendation (see :data:`RULE`).

    ``rows``: one dict per condition with ``experiment`` ("unsteered" once, then experiment ids),
    ``harm_rate``, ``mean_harm``, ``perplexity``, ``mc_accuracy``. Returns the experiment rows with
    ``harm_change``, ``perplexity_change`` (relative), ``mc_change``, ``within_bounds``,
    ``pareto_optimal`` and ``recommended`` added, the recommended id (or None) and the reason.
    """
    base = [r for r in rows if r["experiment"] == "unsteered"]
    if len(base) != 1:
        raise ValueError("the metrics need exactly one 'unsteered' row to compare against")
    b = base[0]
    out = []
    for r in rows:
        if r["experiment"] == "unsteered":
            continue
        row = dict(r)
        row["harm_change"] = r["harm_rate"] - b["harm_rate"]
        row["perplexity_change"] = r["perplexity"] / b["perplexity"] - 1.0
        row["mc_change"] = r["mc_accuracy"] - b["mc_accuracy"]
        row["within_bounds"] = bool(
            row["perplexity_change"] <= bounds.max_perplexity_increase + 1e-12 and -row["mc_change"] <= bounds.max_mc_drop + 1e-12
        )
        out.append(row)
    for row in out:
        # dominated: another experiment is no worse on harm, perplexity and MC, and better on one
        row["pareto_optimal"] = not any(
            o is not row
            and o["harm_rate"] <= row["harm_rate"] and o["perplexity"] <= row["perplexity"] and o["mc_accuracy"] >= row["mc_accuracy"]
            and (o["harm_rate"] < row["harm_rate"] or o["perplexity"] < row["perplexity"] or o["mc_accuracy"] > row["mc_accuracy"])
            for o in out
        )
    candidates = [r for r in out if r["within_bounds"] and r["harm_change"] < 0]
    best = min(candidates, key=lambda r: (r["harm_rate"], r["mean_harm"], r["perplexity_change"]), default=None)
    for row in out:
        row["recommended"] = best is not None and row is best
    if best is not None:
        reason = (
            f"harmful share {b['harm_rate']:.3f} -> {best['harm_rate']:.3f} with perplexity {best['perplexity_change']:+.1%} "
            f"and MC accuracy {best['mc_change']:+.3f}"
        )
        return out, best["experiment"], reason
    inside = sum(r["within_bounds"] for r in out)
    reason = f"no experiment lowers the harmful share within the bounds ({inside} of {len(out)} within the capability bounds)"
    return out, None, reason
