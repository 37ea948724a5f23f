"""Conversation transcripts on disk: the formats ``assistant-axis project`` reads and ``chat`` writes.

Accepted files (JSON):

* a plain list of ``{"role", "content"}`` messages;
* the reference project's transcript object ``{"model", "turns", "conversation": [...]}``, including
  its case-study variant (``steering_config``) and persona-drift variant (``auditor_model``,
  ``domain``, ``persona``, ``topic``...). Every key besides ``conversation`` is kept as metadata;
* a list of such transcript objects (the drift stage's ``transcripts.json``), one picked by index;

Roles are ``system`` (first message only), ``user`` and ``assistant``. ``turns`` is not checked
against the messages: the reference files use it for exchanges in some places and for messages in
others, so it is metadata, not structure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversation import Message
from .storage import InputError, read_json, write_json

ROLES = ("system", "user", "assistant")
EXPECTED = (
    'a JSON list of {"role", "content"} messages, or an object with a "conversation" list of them '
    '(the reference transcript format: {"model", "turns", "conversation": [...]})'
)


class TranscriptError(ValueError):
    """A transcript file is not in a format this project reads; the message names file and field."""


@dataclass
class Transcript:
    """Messages plus whatever else the file said about them (model, steering, domain...)."""

    messages: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.metadata.get("model")

    @property
    def n_assistant_turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")

    def to_json(self) -> dict[str, Any]:
        """The reference layout: ``model`` and ``turns`` first, then metadata, then ``conversation``."""
        out: dict[str, Any] = {}
        if self.model is not None:
            out["model"] = self.model
        out["turns"] = self.n_assistant_turns
        out.update({k: v for k, v in self.metadata.items() if k not in ("model", "turns")})
        out["conversation"] = [dict(m) for m in self.messages]
        return out


def validate_messages(messages: Any, where: str) -> list[Message]:
    """Check a message list and return clean copies; ``where`` prefixes every error (file + field)."""
    if not isinstance(messages, list):
        raise TranscriptError(f"{where}: expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise TranscriptError(f"{where}: the conversation has no messages")
    out: list[Message] = []
    for i, msg in enumerate(messages):
        here = f"{where}[{i}]"
        if not isinstance(msg, Mapping):
            raise TranscriptError(f"{here}: expected an object with 'role' and 'content', got {type(msg).__name__}")
        for key in ("role", "content"):
            if key not in msg:
                raise TranscriptError(f"{here}: missing field '{key}'")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise TranscriptError(f"{here}.role: {role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise TranscriptError(f"{here}.role: a system message is only allowed as the first message")
        if not isinstance(content, str):
            raise TranscriptError(f"{here}.content: expected a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise TranscriptError(f"{where}: the conversation has no assistant message to project")
    return out


def _is_collection(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(x, dict) and "conversation" in x for x in data)


def parse_transcript(data: Any, source: str = "transcript", index: int | None = None) -> Transcript:
    """Build a :class:`Transcript` from already-parsed JSON (``source`` names it in errors).

    A list of transcript objects (what the drift stage writes) needs ``index`` to pick one.
    """
    if _is_collection(data):
        if index is None:
            raise TranscriptError(f"{source}: holds {len(data)} transcripts; pick one with an index (--index N, 0-based)")
        if not -len(data) <= index < len(data):
            raise TranscriptError(f"{source}: index {index} is out of range for {len(data)} transcripts")
        return parse_transcript(data[index], f"{source}[{index}]")
    if index is not None:
        raise TranscriptError(f"{source}: holds a single conversation; an index applies only to a list of transcripts")
    if isinstance(data, list):
        return Transcript(validate_messages(data, source))
    if isinstance(data, dict):
        if "conversation" not in data:
            keys = ", ".join(sorted(map(str, data))) or "none"
            raise TranscriptError(f"{source}: no 'conversation' field (keys: {keys}); expected {EXPECTED}")
        messages = validate_messages(data["conversation"], f"{source}: field conversation")
        if "model" in data and not isinstance(data["model"], str):
            raise TranscriptError(f"{source}: field model: expected a string, got {type(data['model']).__name__}")
        return Transcript(messages, {k: v for k, v in data.items() if k != "conversation"})
    raise TranscriptError(f"{source}: expected {EXPECTED}; got a JSON {type(data).__name__}")


def load_transcript(path: str | os.PathLike[str], index: int | None = None) -> Transcript:
    """Read and validate a transcript file; any problem raises :class:`TranscriptError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such transcript file")
    try:
        data = read_json(path, f"expected {EXPECTED}, in UTF-8")
    except InputError as exc:
        raise TranscriptError(str(exc)) from exc
    return parse_transcript(data, str(path), index)


def save_transcript(
    path: str | os.PathLike[str], messages: Sequence[Message], model: str | None = None, **metadata: Any
) -> Transcript:
    """Write a transcript in the reference layout (atomically), after the same validation as loading."""
    meta = dict(metadata)
    if model is not None:
        meta["model"] = model
    transcript = Transcript(validate_messages([dict(m) for m in messages], str(path)), meta)
    write_json(path, transcript.to_json())
    return transcript
