"""Chat formatting and token spans of message contents, for any chat template.

Spans are found without knowing the template: the conversation is rendered once with every
message content replaced by a unique sentinel, which tells where each content sits in the real
rendering; the fast tokenizer's character offsets then map that to tokens. Every span checks
itself (the decoded tokens equal the content up to surrounding whitespace) and a mismatch raises
:class:`SpanError` instead of silently averaging the wrong tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]

THINK_CLOSE = "</think>"
_SENTINEL = "AAXSPAN{}QQ"


class SpanError(ValueError):
    """A message content could not be located in the tokenized conversation."""


def substitute_model_name(text: str, model_name: str | None) -> str:
    """Replace the ``{model_name}`` placeholder used by role prompts (other braces are left alone)."""
    if model_name is None:
        return text
    return text.replace("{model_name}", model_name)


def build_conversation(
    system_prompt: str | None, user: str, response: str | None = None, model_name: str | None = None
) -> list[Message]:
    """One-turn conversation; an empty system prompt means no system message at all."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": substitute_model_name(system_prompt, model_name)})
    messages.append({"role": "user", "content": user})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def _render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
    )


def supports_system_role(tokenizer: Any) -> bool:
    """True when the chat template accepts a system message and keeps its text (cached per template)."""
    template = getattr(tokenizer, "chat_template", None)
    cached = getattr(tokenizer, "_aa_supports_system", None)
    if cached is not None and cached[0] == template:
        return cached[1]
    probe = "AAXSYSTEMPROBE"
    try:
        text = _render(tokenizer, [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}], True)
        ok = probe in text
    except Exception:  # templates signal "no system role" with raise_exception
        ok = False
    try:
        tokenizer._aa_supports_system = (template, ok)
    except AttributeError:
        pass
    return ok


def prepare_messages(tokenizer: Any, messages: list[Message]) -> list[Message]:
    """Merge a leading system message into the first user turn when the template has no system role.

    When the conversation after the system message does not start with a user turn (the drift
    stage's simulated user sees the conversation with the roles swapped, so it starts with an
    assistant turn), the system text becomes a user turn of its own in front: templates without a
    system role (Gemma) also demand that turns alternate starting with the user.
    """
    if not messages or messages[0]["role"] != "system" or supports_system_role(tokenizer):
        return [dict(m) for m in messages]
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def format_conversation(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with the model's own chat template (system fallback applied, thinking off)."""
    return _render(tokenizer, prepare_messages(tokenizer, messages), add_generation_prompt)


def visible_content(message: Message) -> str:
    """The part of a message whose tokens count: an assistant's thinking block is excluded."""
    content = message["content"]
    if message["role"] == "assistant" and THINK_CLOSE in content:
        content = content.rsplit(THINK_CLOSE, 1)[1]
    return content


@dataclass
class EncodedConversation:
    """A tokenized conversation and the token span ``[start, end)`` of every message's content."""

    text: str
    input_ids: list[int]
    messages: list[Message]
    spans: list[tuple[int, int] | None]

    def span_of_last(self, role: str = "assistant") -> tuple[int, int]:
        for msg, span in zip(reversed(self.messages), reversed(self.spans)):
            if msg["role"] == role:
                if span is None:
                    raise SpanError(f"the last {role} message has empty content")
                return span
        raise SpanError(f"the conversation has no {role} message")


def _char_spans(tokenizer: Any, messages: list[Message], text: str, add_generation_prompt: bool) -> list[tuple[int, int] | None]:
    """Character span of each message's visible content inside ``text``."""
    sentinels = [_SENTINEL.format(i) for i in range(len(messages))]
    marked = _render(
        tokenizer,
        [{"role": m["role"], "content": s} for m, s in zip(messages, sentinels)],
        add_generation_prompt,
    )
    pieces = re.split("(" + "|".join(re.escape(s) for s in sentinels) + ")", marked)
    order = [int(p[len("AAXSPAN") : -2]) for p in pieces[1::2]]
    if sorted(order) != list(range(len(messages))):
        raise SpanError("the chat template drops or repeats message contents; cannot locate spans")
    variants = [
        lambda m: m["content"],
        lambda m: m["content"].strip(),
        lambda m: visible_content(m).strip(),
        lambda m: visible_content(m),
    ]
    for variant in variants:
        out: list[tuple[int, int] | None] = [None] * len(messages)
        pos, rebuilt = 0, []
        for i, piece in enumerate(pieces):
            if i % 2 == 1:
                idx = order[i // 2]
                piece = variant(messages[idx])
                # the visible part (thinking excluded) is a suffix of what the template printed
                vis = visible_content(messages[idx]).strip()
                start = piece.rfind(vis) if vis else -1
                if start >= 0:
                    out[idx] = (pos + start, pos + start + len(vis))
            rebuilt.append(piece)
            pos += len(piece)
        if "".join(rebuilt) == text:
            return out
    raise SpanError(
        "the chat template transforms message contents in a way the span finder cannot follow "
        "(rendered text differs from the sentinel rendering)"
    )


def encode_conversation(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False
) -> EncodedConversation:
    """Tokenize a conversation and find the token span of every message's content.

    The returned ``messages`` are the prepared ones (system merged into the first user turn when the
    template has no system role), and ``spans`` index into them.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise SpanError(f"{type(tokenizer).__name__} is not a fast tokenizer; span finding needs character offsets")
    prepared = prepare_messages(tokenizer, messages)
    text = _render(tokenizer, prepared, add_generation_prompt)
    char_spans = _char_spans(tokenizer, prepared, text, add_generation_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    spans: list[tuple[int, int] | None] = []
    for msg, cspan in zip(prepared, char_spans):
        if cspan is None or cspan[0] == cspan[1]:
            spans.append(None)
            continue
        a, b = cspan
        toks = [i for i, (s, e) in enumerate(offsets) if e > a and s < b and e > s]
        if not toks:
            raise SpanError(f"no tokens cover the {msg['role']} content at characters {a}-{b}")
        span = (toks[0], toks[-1] + 1)
        decoded = tokenizer.decode(ids[span[0] : span[1]], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded.strip() != text[a:b].strip():
            raise SpanError(
                f"span check failed for a {msg['role']} message: tokens decode to {decoded[:80]!r}, "
                f"content is {text[a:b][:80]!r} (a token straddles the content and the template)"
            )
        spans.append(span)
    return EncodedConversation(text=text, input_ids=ids, messages=prepared, spans=spans)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Special token(s) the chat template writes right after an assistant message (cached per template).

    Read off a rendering, not from a list of model names: ``<|im_end|>`` for ChatML, ``<|eot_id|>``
    for Llama 3, ``<end_of_turn>`` for Gemma. Generation stops on them as on the EOS token.
    """
    template = getattr(tokenizer, "chat_template", None)
    cached = getattr(tokenizer, "_aa_end_of_turn", None)
    if cached is not None and cached[0] == template:
        return list(cached[1])
    enc = encode_conversation(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}])
    span = enc.spans[-1]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    found = [] if span is None else [tok for tok in enc.input_ids[span[1] :] if tok in special][:1]
    try:
        tokenizer._aa_end_of_turn = (template, found)
    except AttributeError:
        pass
    return list(found)
