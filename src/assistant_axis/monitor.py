"""Watch a conversation move along the Assistant Axis: per-turn projections and their trajectory.

The projection of assistant turn *k* is the mean, over the tokens of that reply's content, of the
block output at a layer, projected on the unit axis - computed on the conversation *up to and
including* turn *k*, i.e. on what the model had seen when it wrote the reply. Because the model is
causal, every turn whose prefix is a token prefix of a longer one is measured in that longer
forward pass, so a conversation that fits the context costs one pass.

A conversation longer than ``max_tokens`` is windowed per turn: the system prompt plus as many
whole most-recent turns (starting at a user message) as fit, ending with the turn being measured.
Rows say which turns were windowed and where their window started.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from .activations import layer_column, sequence_span_means
from .axis import unit
from .conversation import EncodedConversation, Message, encode_conversation
from .layers import check_layer_indices, get_layers

log = logging.getLogger(__name__)

ROW_COLUMNS = ["turn", "message_index", "n_tokens", "context_tokens", "window_start", "windowed", "projection"]


class ContextTooShortError(ValueError):
    """A single turn does not fit the token budget even with no earlier turns."""


@dataclass
class TurnPlan:
    """How one assistant turn is measured: the token ids of its (possibly windowed) context and its span."""

    turn: int  # 1-based assistant turn number
    message_index: int  # index of the assistant message in the original message list
    window_start: int  # first non-system message kept (0 or the system prompt's successor when unwindowed)
    windowed: bool
    ids: list[int]
    span: tuple[int, int] | None  # None: empty reply content


@dataclass
class _Pass:
    ids: list[int]
    plans: list[TurnPlan]


def _context(messages: Sequence[Message], start: int, end: int) -> list[Message]:
    """System prompt (if any) plus ``messages[start:end + 1]``."""
    head = [messages[0]] if messages[0]["role"] == "system" and start > 0 else []
    return head + list(messages[start : end + 1])


def _last_span(enc: EncodedConversation) -> tuple[int, int] | None:
    if enc.messages[-1]["role"] != "assistant":
        raise ValueError("internal: a measured context must end with the assistant message")
    return enc.spans[-1]


def plan_turns(
    tokenizer: Any, messages: Sequence[Message], max_tokens: int, turns: Sequence[int] | None = None
) -> list[TurnPlan]:
    """Decide the context of every requested assistant turn (1-based; all by default)."""
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    wanted = sorted(set(turns)) if turns is not None else list(range(1, len(assistant_at) + 1))
    for t in wanted:
        if not 1 <= t <= len(assistant_at):
            raise ValueError(f"assistant turn {t} does not exist; the conversation has {len(assistant_at)}")
    first = 1 if messages[0]["role"] == "system" else 0
    plans: list[TurnPlan] = []
    lo = first  # window starts never move backwards from one turn to the next
    for t in wanted:
        a = assistant_at[t - 1]
        enc = encode_conversation(tokenizer, list(messages[: a + 1]))
        if len(enc.input_ids) <= max_tokens:
            plans.append(TurnPlan(t, a, first, False, enc.input_ids, _last_span(enc)))
            continue
        starts = [j for j in range(max(lo, first), a + 1) if messages[j]["role"] == "user" or j == first]
        for j in starts:
            enc = encode_conversation(tokenizer, _context(messages, j, a))
            if len(enc.input_ids) <= max_tokens:
                plans.append(TurnPlan(t, a, j, j > first, enc.input_ids, _last_span(enc)))
                lo = j
                break
        else:
            raise ContextTooShortError(
                f"assistant turn {t} (message {a}) needs {len(enc.input_ids)} tokens with only its own exchange "
                f"and the system prompt, more than the limit of {max_tokens}"
            )
    return plans


def _group_passes(plans: Sequence[TurnPlan]) -> list[_Pass]:
    """Merge consecutive plans whose contexts extend each other into one forward pass."""
    passes: list[_Pass] = []
    for plan in plans:
        cur = passes[-1] if passes else None
        if cur is not None and plan.ids[: len(cur.ids)] == cur.ids:
            cur.ids = plan.ids
            cur.plans.append(plan)
        else:
            passes.append(_Pass(list(plan.ids), [plan]))
    return passes


def default_max_tokens(model: Any) -> int:
    """The context length: ``max_position_embeddings`` of a HF model, or what a vLLM engine leaves for a prompt."""
    if _is_engine(model):
        return int(model.max_model_len) - 1  # a scoring request still samples one token
    cfg = model.config.get_text_config()
    value = getattr(cfg, "max_position_embeddings", None)
    if not value:
        raise ValueError(f"{type(model).__name__} does not state max_position_embeddings; pass max_tokens")
    return int(value)


def _is_engine(model: Any) -> bool:
    """A :class:`~assistant_axis.vllm_backend.VLLMEngine` rather than a HF model."""
    return hasattr(model, "token_projections")


def _model_shape(model: Any, layers_path: str | None) -> tuple[int, int]:
    if _is_engine(model):
        return int(model.n_layers), int(model.hidden_size)
    return len(get_layers(model, layers_path)), int(model.config.get_text_config().hidden_size)


def _engine_projections(engine: Any, passes: Sequence[_Pass], layer_list: Sequence[int], directions: torch.Tensor) -> list[torch.Tensor]:
    """Per pass ``(n_spans, n_layers)`` span-mean projections, all passes in one vLLM call.

    The mean of per-token projections on a unit direction equals the projection of the mean
    activation, so the engine only returns one number per token and layer.
    """
    probes = [engine.define_probe(f"monitor-layer-{layer}", layer, directions[j]) for j, layer in enumerate(layer_list)]
    per_token = engine.token_projections([p.ids for p in passes], probes, intervention=None)
    out = []
    for p, values in zip(passes, per_token, strict=True):
        rows = torch.full((len(p.plans), len(layer_list)), float("nan"), dtype=torch.float64)
        for i, plan in enumerate(p.plans):
            if plan.span is not None:
                a, b = plan.span
                rows[i] = torch.tensor([float(values[name][a:b].mean()) for name in probes], dtype=torch.float64)
        out.append(rows)
    return out


def project_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    axis: torch.Tensor,
    layer: int,
    all_layers: bool = False,
    max_tokens: int | None = None,
    turns: Sequence[int] | None = None,
    layers_path: str | None = None,
) -> list[pd.DataFrame]:
    """:func:`project_conversation` for several conversations; a vLLM engine measures them all in one call."""
    n_blocks, hidden = _model_shape(model, layers_path)
    if axis.ndim != 2 or tuple(axis.shape) != (n_blocks, hidden):
        raise ValueError(f"the axis has shape {tuple(axis.shape)}, the model needs ({n_blocks}, {hidden}): wrong model or axis file")
    (layer,) = check_layer_indices([layer], n_blocks)
    budget = max_tokens or default_max_tokens(model)
    layer_list = list(range(n_blocks)) if all_layers else [layer]
    directions = unit(axis[layer_list].float())  # (n_layers, hidden)
    all_passes = [_group_passes(plan_turns(tokenizer, messages, budget, turns)) for messages in conversations]
    flat = [p for passes in all_passes for p in passes]
    if _is_engine(model):
        projections = iter(_engine_projections(model, flat, layer_list, directions))
    else:
        projections = iter(
            torch.einsum("sld,ld->sl", sequence_span_means(model, p.ids, [pl.span for pl in p.plans], layer_list, layers_path), directions)
            for p in flat
        )
    frames = []
    for passes in all_passes:
        rows: list[dict[str, Any]] = []
        for n, p in enumerate(passes, 1):
            log.info("projection pass %d/%d: %d tokens, %d turn(s)", n, len(passes), len(p.ids), len(p.plans))
            proj = next(projections)
            for pl, values in zip(p.plans, proj, strict=True):
                row: dict[str, Any] = {
                    "turn": pl.turn,
                    "message_index": pl.message_index,
                    "n_tokens": 0 if pl.span is None else pl.span[1] - pl.span[0],
                    "context_tokens": len(pl.ids),
                    "window_start": pl.window_start,
                    "windowed": pl.windowed,
                    "projection": float(values[layer_list.index(layer)]),
                }
                if all_layers:
                    row.update({layer_column(li): float(v) for li, v in zip(layer_list, values, strict=True)})
                rows.append(row)
        windowed = [r["turn"] for r in rows if r["windowed"]]
        if windowed:
            log.info("turns %s did not fit %d tokens with the whole history and were windowed", windowed, budget)
        frames.append(pd.DataFrame(rows, columns=ROW_COLUMNS + [c for c in (rows[0] if rows else {}) if c not in ROW_COLUMNS]))
    return frames


def project_conversation(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    axis: torch.Tensor,
    layer: int,
    all_layers: bool = False,
    max_tokens: int | None = None,
    turns: Sequence[int] | None = None,
    layers_path: str | None = None,
) -> pd.DataFrame:
    """One row per assistant turn: projection on the unit axis at ``layer`` (and every layer if asked).

    Columns: ``turn`` (1-based), ``message_index``, ``n_tokens`` (reply tokens averaged),
    ``context_tokens``, ``window_start`` (first non-system message of the context), ``windowed``,
    ``projection``, and ``layer_000``... with ``all_layers``. ``model`` is a HF model (any steering
    installed on it, e.g. capping, is active during the measurement, so capped replies are
    measured as the capped model computes them) or a :class:`~assistant_axis.vllm_backend.VLLMEngine`
    (measured without intervention).
    """
    return project_conversations(model, tokenizer, [messages], axis, layer, all_layers, max_tokens, turns, layers_path)[0]
