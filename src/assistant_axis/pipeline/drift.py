"""Stage ``drift``: simulated multi-turn conversations per domain, projected turn by turn on the axis.

A simulated user (by default the run's own model, prompted with a user persona from the seeds file)
talks with the model for a fixed number of turns in each domain. The paper's finding to look for:
therapy-like and AI-philosophy conversations drift down the axis while coding and writing stay up.
All conversations of a turn are generated in one batch, first the users' messages, then the replies,
so the cost grows with turns, not with the number of conversations.

Every finished turn is cached (``results/<run>/cache/drift/turn_<n>.<fingerprint>.json``, written
atomically, outside the stage's outputs, which Snakemake deletes when a job fails): a killed job
resumes after its last finished turn. Each turn's sampling seed depends only on the turn number,
so a resumed run produces the same conversations as an uninterrupted one.

The user model is ``local`` (the run's model) or any other model spec loaded the same way; an API
user (e.g. Anthropic, as in the paper) is not implemented yet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..axis import load_axis
from ..conversation import Message
from ..generation import Generated, SamplingSettings, generate_batch
from ..models import load_model, resolve_backend
from ..monitor import project_conversations
from ..plots import drift_plot
from ..storage import write_json, write_text
from ..transcripts import Transcript
from .cache import pause_after_unit_for_tests
from .layout import derive_seed, fingerprint
from .model import read_model_json

log = logging.getLogger(__name__)

LOCAL_USER = "local"
# Said by the simulated user when it produced nothing: an empty user turn would make the next
# reply meaningless, and a neutral nudge keeps the conversation going without steering it.
EMPTY_USER_FALLBACK = "Please go on."


@dataclass
class Seed:
    domain: str
    index: int
    persona: str
    topic: str
    opening: str


@dataclass
class SimConversation:
    seed: Seed
    messages: list[Message] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.seed.domain}_{self.seed.index}"


def load_seeds(path: str | Path, domains: Sequence[str], per_domain: int) -> tuple[str, list[Seed]]:
    """The user prompt template and the first ``per_domain`` seeds of each domain; errors name file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: drift seeds file not found (config key 'drift.seeds_file')") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("user_prompt"), str) or not isinstance(data.get("domains"), dict):
        raise ValueError(f"{path}: expected an object with 'user_prompt' (string) and 'domains' (object)")
    template = data["user_prompt"]
    for placeholder in ("{persona}", "{topic}"):
        if placeholder not in template:
            raise ValueError(f"{path}: field user_prompt must contain {placeholder}")
    seeds: list[Seed] = []
    for domain in domains:
        entries = data["domains"].get(domain)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: field domains.{domain} is missing (domains here: {', '.join(data['domains'])})")
        if len(entries) < per_domain:
            raise ValueError(
                f"{path}: field domains.{domain} has {len(entries)} seeds, config key "
                f"'drift.conversations_per_domain' asks for {per_domain}"
            )
        for i, entry in enumerate(entries[:per_domain]):
            where = f"{path}: field domains.{domain}[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object")
            for key in ("persona", "topic", "opening"):
                if not isinstance(entry.get(key), str) or not entry[key].strip():
                    raise ValueError(f"{where}.{key}: expected a non-empty string")
            seeds.append(Seed(domain, i, entry["persona"], entry["topic"], entry["opening"]))
    return template, seeds


def user_view(template: str, conv: SimConversation) -> list[Message]:
    """The conversation as the simulated user sees it: its persona as system prompt, roles swapped."""
    system = template.format(persona=conv.seed.persona, topic=conv.seed.topic)
    swapped = {"user": "assistant", "assistant": "user"}
    return [{"role": "system", "content": system}] + [
        {"role": swapped[m["role"]], "content": m["content"]} for m in conv.messages
    ]


Generate = Callable[[list[list[Message]], SamplingSettings], list[Generated]]


class TurnCache:
    """The conversations after each finished turn, one JSON file per turn named by a fingerprint.

    The fingerprint covers everything that shapes the conversations (model, backend, dtype,
    sampling, seeds, user model, batch size) but not the number of turns, so a longer run reuses
    the turns a shorter one finished. An unreadable or mismatched entry is ignored, never trusted.
    """

    def __init__(self, folder: str | Path, fp: str) -> None:
        self.folder = Path(folder)
        self.fp = fp

    def path(self, turn: int) -> Path:
        return self.folder / f"turn_{turn}.{self.fp}.json"

    def latest(self, turns: int, seeds: Sequence[Seed]) -> tuple[int, list[SimConversation]]:
        """``(last finished turn, conversations after it)``; ``(0, fresh conversations)`` when none is usable."""
        ids = [f"{s.domain}_{s.index}" for s in seeds]
        for turn in range(turns, 0, -1):
            path = self.path(turn)
            if not path.exists():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data["turn"] != turn or [c["id"] for c in data["conversations"]] != ids:
                    raise ValueError("turn or conversation ids do not match")
                convs = [SimConversation(seed, list(c["messages"])) for seed, c in zip(seeds, data["conversations"], strict=True)]
                if any(len(c.messages) != 2 * turn for c in convs):
                    raise ValueError("message count does not match the turn")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("drift: ignoring unreadable turn cache %s (%s)", path, exc)
                continue
            return turn, convs
        return 0, [SimConversation(seed) for seed in seeds]

    def put(self, turn: int, convs: Sequence[SimConversation]) -> None:
        """Store the conversations after ``turn``; entries of other fingerprints are dropped."""
        write_json(self.path(turn), {"turn": turn, "conversations": [{"id": c.id, "messages": c.messages} for c in convs]})
        for old in self.folder.glob("turn_*.json"):
            if not old.name.endswith(f".{self.fp}.json"):
                old.unlink(missing_ok=True)


def simulate(
    assistant: Generate, user: Generate, template: str, seeds: Sequence[Seed], turns: int,
    assistant_settings: SamplingSettings, user_settings: SamplingSettings, cache: TurnCache | None = None,
) -> list[SimConversation]:
    """Run every conversation for ``turns`` exchanges; the first user message is the seed's opening.

    ``assistant`` and ``user`` generate one reply per conversation (HF ``generate`` or a vLLM
    engine); every turn is one batch of all conversations, first the users', then the replies.
    With a ``cache``, the run starts after the last cached turn and caches each turn it finishes.
    """
    done, convs = cache.latest(turns, seeds) if cache is not None else (0, [SimConversation(seed) for seed in seeds])
    if done:
        log.info("drift: turns 1-%d cached, resuming at turn %d of %d", done, done + 1, turns)
    for turn in range(done + 1, turns + 1):
        if turn == 1:
            user_msgs = [c.seed.opening for c in convs]
        else:
            out = user([user_view(template, c) for c in convs], _reseed(user_settings, "user", turn))
            user_msgs = [g.text or EMPTY_USER_FALLBACK for g in out]
            empty = sum(1 for g in out if not g.text)
            if empty:
                log.warning("turn %d: the simulated user said nothing in %d conversation(s); used %r", turn, empty, EMPTY_USER_FALLBACK)
        for conv, text in zip(convs, user_msgs, strict=True):
            conv.messages.append({"role": "user", "content": text})
        replies = assistant([c.messages for c in convs], _reseed(assistant_settings, "assistant", turn))
        for conv, reply in zip(convs, replies, strict=True):
            conv.messages.append({"role": "assistant", "content": reply.text})
        log.info("drift: turn %d/%d done for %d conversations", turn, turns, len(convs))
        if cache is not None:
            cache.put(turn, convs)
            pause_after_unit_for_tests()
    return convs


def _reseed(settings: SamplingSettings, who: str, turn: int) -> SamplingSettings:
    return SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens, derive_seed(settings.seed, who, str(turn)))


def drift_experiment(
    *, model_json: str, dtype: str, device: str, axis: str, target_layer: int, seeds_file: str, domains: Sequence[str],
    conversations_per_domain: int, turns: int, max_new_tokens: int, user_max_new_tokens: int, user_model: str,
    temperature: float, top_p: float, seed: int, batch_size: int, table_out: str, transcripts_out: str,
    plot_out: str, title: str = "", backend: str = "hf", vllm_options: dict[str, Any] | None = None,
    cache_dir: str | None = None,
) -> pd.DataFrame:
    """Simulate, project every assistant turn on the axis, and write the table, transcripts and plot.

    ``backend``: ``hf``, or ``vllm`` (``auto`` where installed): one engine generates both sides and
    measures the projections; a simulated user on another model is then loaded with HF.
    ``cache_dir``: where finished turns are cached (see :class:`TurnCache`); None = no cache.
    """
    if turns < 1 or conversations_per_domain < 1 or not domains:
        raise ValueError("drift needs at least one domain, one conversation per domain and one turn")
    template, seeds = load_seeds(seeds_file, domains, conversations_per_domain)
    facts = read_model_json(model_json)
    model = facts["spec"]
    ax = load_axis(axis)
    backend = resolve_backend(backend)
    log.info("drift: %d domains x %d conversations x %d turns with %s (user: %s), %s backend",
             len(domains), conversations_per_domain, turns, model, user_model, backend)
    engine = None
    if backend == "vllm":
        from ..vllm_backend import VLLMEngine

        engine = VLLMEngine(facts["path"], dtype=dtype, hooks=True, **(vllm_options or {}))
        measure, tok = engine, engine.tokenizer

        def assistant(convs: list[list[Message]], settings: SamplingSettings) -> list[Generated]:
            return engine.generate(convs, settings, intervention=None)
    else:
        lm, tok = load_model(facts["path"], dtype=dtype, device=device)
        measure = lm

        def assistant(convs: list[list[Message]], settings: SamplingSettings) -> list[Generated]:
            return generate_batch(lm, tok, convs, settings, batch_size)
    if user_model == LOCAL_USER:
        user = assistant
    else:
        user_lm, user_tok = load_model(user_model, dtype=dtype, device=device)

        def user(convs: list[list[Message]], settings: SamplingSettings) -> list[Generated]:
            return generate_batch(user_lm, user_tok, convs, settings, batch_size)
    assistant_settings = SamplingSettings(temperature, top_p, max_new_tokens, seed)
    user_settings = SamplingSettings(temperature, top_p, user_max_new_tokens, seed)
    cache = None
    if cache_dir is not None:
        cache = TurnCache(cache_dir, fingerprint({
            "model": model, "backend": backend, "dtype": dtype, "template": template, "seeds": [vars(s) for s in seeds],
            "assistant": vars(assistant_settings), "user": vars(user_settings), "user_model": user_model, "batch": batch_size,
        }))
    try:
        convs = simulate(assistant, user, template, seeds, turns, assistant_settings, user_settings, cache)
        projections = project_conversations(measure, tok, [c.messages for c in convs], ax, target_layer)
    finally:
        if engine is not None:
            engine.close()
    frames = []
    transcripts = []
    for conv, rows in zip(convs, projections, strict=True):
        rows.insert(0, "conversation_id", conv.id)
        rows.insert(0, "domain", conv.seed.domain)
        frames.append(rows)
        transcripts.append(Transcript(conv.messages, {
            "model": model,
            "auditor_model": model if user_model == LOCAL_USER else user_model,
            "domain": conv.seed.domain,
            "persona_id": conv.seed.index,
            "persona": conv.seed.persona,
            "topic": conv.seed.topic,
            "conversation_id": conv.id,
            "layer": target_layer,
            "projections": rows["projection"].tolist(),
        }).to_json())
    table = pd.concat(frames, ignore_index=True)
    write_text(table_out, table.to_csv(index=False))
    write_json(transcripts_out, transcripts)
    drift_plot(table, plot_out, target_layer, title=title)
    summary = table.pivot_table(index="domain", columns="turn", values="projection", aggfunc="mean")
    log.info("drift: mean projection per domain and turn:\n%s", summary.to_string())
    return table
