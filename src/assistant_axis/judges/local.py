"""``local`` backend: a local HF chat model judges offline from its next-token probabilities.

The rubric prompt is rendered as one user turn with the model's chat template and generation
prompt; one forward pass (left-padded batches) gives the logits of the first reply token, and the
score is whichever of the tokens "0", "1", "2", "3" is most likely. This needs no sampling and no
reply parsing, so every response gets a score. ``raw`` records the four probabilities (renormalised
over the digits) and ``mass``, the share of the whole next-token distribution they hold: a low mass
means the model did not really mean to answer with a digit and the score deserves less trust.

The cache key is backend + model + prompt: ``dtype``, ``device`` and ``batch_size`` are not part of
it. In bfloat16 (the project's ``auto`` dtype) batching shifts the probabilities by up to a few
hundredths, which can flip a near tie; use ``dtype: float32`` where that matters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .base import Judge, JudgeError
from .cache import VerdictCache

DIGITS = ("0", "1", "2", "3")


def digit_token_ids(tokenizer: Any) -> list[int]:
    """The token id of each digit 0-3 as a reply's first token; each must be a single token."""
    ids = []
    for d in DIGITS:
        toks = tokenizer.encode(d, add_special_tokens=False)
        if len(toks) != 1:
            raise JudgeError(f"local judge: {d!r} is not a single token for this tokenizer ({toks})")
        ids.append(toks[0])
    return ids


class LocalJudge(Judge):
    """Scores by comparing the model's probabilities of the digits 0-3 after the rubric prompt."""

    backend = "local"

    def __init__(self, model: str, cache: VerdictCache, cfg: Mapping[str, Any]):
        super().__init__(model, cache)
        self.batch_size = int(cfg.get("batch_size", 8))
        self.device = str(cfg.get("device", "auto"))
        self.dtype = str(cfg.get("dtype", "auto"))
        self._loaded: tuple[Any, Any] | None = None

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from ..models import load_model

            self._loaded = load_model(self.model, dtype=self.dtype, device=self.device)
        return self._loaded

    def _run(self, todo: Mapping[str, str]) -> dict[str, tuple[int | None, str]]:
        import torch

        from ..batching import length_batches, pad_sequences
        from ..conversation import format_conversation

        model, tokenizer = self._model()
        digit_ids = torch.tensor(digit_token_ids(tokenizer))
        device = next(model.parameters()).device
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        encoded = {
            h: tokenizer(
                format_conversation(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True),
                add_special_tokens=False,
            )["input_ids"]
            for h, p in todo.items()
        }
        keys = list(encoded)
        results: dict[str, tuple[int | None, str]] = {}
        for group in length_batches([len(encoded[h]) for h in keys], self.batch_size):  # similar lengths: less padding
            batch = [keys[i] for i in group]
            ids, mask = pad_sequences([encoded[h] for h in batch], pad_id, side="left")
            # left padding: positions must count real tokens only, or padded rows see shifted positions
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    logits_to_keep=1,
                ).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1)[:, digit_ids.to(device)].cpu()
            rows = []
            for row, h in enumerate(batch):
                mass = float(probs[row].sum())
                p = (probs[row] / mass).tolist()
                score = int(torch.argmax(probs[row]))
                raw = json.dumps({"p": [round(x, 4) for x in p], "mass": round(mass, 4)})
                rows.append((h, score, raw))
                results[h] = (score, raw)
            self.report.called += len(batch)
            self._store(rows)
        return results
