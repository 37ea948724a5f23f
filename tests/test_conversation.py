"""Span finding on several chat templates, with no template-specific code in the library."""

from __future__ import annotations

import copy

import pytest

from assistant_axis.conversation import (
    SpanError,
    build_conversation,
    encode_conversation,
    format_conversation,
    prepare_messages,
    supports_system_role,
)

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# Our own odd template: role names in brackets, content indented after a colon, no end markers.
CUSTOM = (
    "{% for m in messages %}[{{ m['role'] | upper }}]: {{ m['content'] }}\n---\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]: {% endif %}"
)


SPECIAL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>"]


def _with_template(tokenizer, template: str | None):
    """A copy of the embedded tokenizer with another template; its markers are special tokens, as in the real models."""
    tok = copy.deepcopy(tokenizer)
    if template is not None:
        tok.chat_template = template
        tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


TEMPLATES = {"chatml": None, "llama3": LLAMA3, "gemma": GEMMA, "custom": CUSTOM}

CONVERSATION = [
    {"role": "system", "content": "You are a lighthouse keeper on a stormy coast."},
    {"role": "user", "content": "What do you see tonight?"},
    {"role": "assistant", "content": "  Waves taller than the tower, and one small boat.\n\nI keep the lamp turning."},
    {"role": "user", "content": "user"},  # content that also appears in the template text
    {"role": "assistant", "content": "<think>they test me</think>\nassistant: the light is on."},
]


@pytest.mark.parametrize("name", TEMPLATES)
def test_spans_decode_to_content(tokenizer, name):
    tok = _with_template(tokenizer, TEMPLATES[name])
    enc = encode_conversation(tok, CONVERSATION)
    assert len(enc.spans) == len(enc.messages)
    for msg, span in zip(enc.messages, enc.spans):
        assert span is not None
        text = tok.decode(enc.input_ids[span[0] : span[1]])
        expected = msg["content"].split("</think>")[-1] if msg["role"] == "assistant" else msg["content"]
        assert text.strip() == expected.strip()
    # the thinking block is never inside the last response span
    a, b = enc.span_of_last("assistant")
    assert "think" not in tok.decode(enc.input_ids[a:b])
    # the tokens are the ones the template produces
    assert enc.input_ids == tok(format_conversation(tok, CONVERSATION, add_generation_prompt=False), add_special_tokens=False)["input_ids"]


def test_gemma_style_merges_system_into_first_user_turn(tokenizer):
    tok = _with_template(tokenizer, GEMMA)
    assert not supports_system_role(tok)
    prepared = prepare_messages(tok, CONVERSATION)
    assert [m["role"] for m in prepared] == ["user", "assistant", "user", "assistant"]
    assert prepared[0]["content"].startswith("You are a lighthouse keeper")
    assert prepared[0]["content"].endswith("What do you see tonight?")


def test_chatml_supports_system_and_substitutes_model_name(tokenizer):
    assert supports_system_role(tokenizer)
    conv = build_conversation("You are {model_name}.", "Hi", model_name="SmolLM")
    assert conv[0]["content"] == "You are SmolLM."
    assert build_conversation("", "Hi")[0]["role"] == "user"  # empty system prompt: no system message


def test_template_that_rewrites_content_fails_loudly(tokenizer):
    tok = _with_template(tokenizer, "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}")
    with pytest.raises(SpanError):
        encode_conversation(tok, [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}])


def test_template_dropping_a_message_fails_loudly(tokenizer):
    tok = _with_template(tokenizer, "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}\n{% endif %}{% endfor %}")
    tok._aa_supports_system = (tok.chat_template, True)  # pretend the probe passed: the span finder itself must notice
    with pytest.raises(SpanError):
        encode_conversation(tok, CONVERSATION)
