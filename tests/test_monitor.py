"""Per-turn projections of conversations: exactness, transcript formats, errors and windowing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from assistant_axis.axis import save_axis, unit
from assistant_axis.cli import main
from assistant_axis.conversation import encode_conversation
from assistant_axis.monitor import ContextTooShortError, project_conversation
from assistant_axis.transcripts import TranscriptError, load_transcript, save_transcript

DATA = Path(__file__).parent / "data" / "transcripts"
LAYER = 15


@pytest.fixture(scope="module")
def axis() -> torch.Tensor:
    return torch.randn(30, 576, generator=torch.Generator().manual_seed(7))


def direct_projection(model, tok, context: list[dict], axis: torch.Tensor, layer: int) -> float:
    """Independent reference: full hidden states of the context, mean over the last reply's tokens."""
    enc = encode_conversation(tok, context)
    a, b = enc.span_of_last("assistant")
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
    return float(hs[layer + 1][0, a:b].mean(0) @ unit(axis[layer]))


def test_projection_equals_direct_computation(fp32_model, axis):
    model, tok = fp32_model
    messages = load_transcript(DATA / "plain.json").messages
    table = project_conversation(model, tok, messages, axis, LAYER, all_layers=True)
    assert list(table["turn"]) == [1, 2, 3] and list(table["message_index"]) == [2, 4, 6]
    assert not table["windowed"].any()
    for row in table.itertuples():
        context = messages[: row.message_index + 1]
        assert row.projection == pytest.approx(direct_projection(model, tok, context, axis, LAYER), rel=1e-4, abs=1e-4)
        assert row.layer_003 == pytest.approx(direct_projection(model, tok, context, axis, 3), rel=1e-4, abs=1e-4)
    assert table["projection"].tolist() == pytest.approx(table["layer_015"].tolist())


@pytest.mark.parametrize("name", ["plain.json", "drift_style.json", "case_study.json"])
def test_transcript_formats_load(name):
    t = load_transcript(DATA / name)
    assert t.n_assistant_turns >= 2
    assert t.messages[-1]["role"] == "assistant"
    if name == "drift_style.json":
        assert t.metadata["domain"] == "writing" and "auditor_model" in t.metadata
    if name == "case_study.json":
        assert t.metadata["steering_config"]["layers"] == [15, 16, 17, 18]


def test_saved_transcript_round_trips(tmp_path):
    src = load_transcript(DATA / "drift_style.json")
    out = tmp_path / "copy.json"
    save_transcript(out, src.messages, model="m", projections=[1.0, 2.0])
    back = load_transcript(out)
    assert back.messages == src.messages and back.metadata["projections"] == [1.0, 2.0]
    assert json.loads(out.read_text())["turns"] == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('"hello"', "expected a JSON list"),
        ('{"model": "x", "messages": []}', "no 'conversation' field (keys: messages, model)"),
        ('[{"role": "user"}]', "[0]: missing field 'content'"),
        ('[{"role": "bot", "content": "hi"}]', "[0].role: 'bot' is not one of"),
        ('{"conversation": [{"role": "user", "content": 3}]}', "conversation[0].content: expected a string"),
        ('[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "[1].role: a system message"),
        ('[{"role": "user", "content": "hi"}]', "no assistant message"),
        ('{"model": 5, "conversation": [{"role": "assistant", "content": "x"}]}', "field model: expected a string"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, text, expected):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TranscriptError) as info:
        load_transcript(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_long_conversations_are_windowed_per_turn(fp32_model, axis):
    model, tok = fp32_model
    messages = load_transcript(DATA / "plain.json").messages
    full = [len(encode_conversation(tok, messages[: i + 1]).input_ids) for i in (2, 4, 6)]
    budget = full[1]  # turns 1-2 fit with their whole history, turn 3 does not
    table = project_conversation(model, tok, messages, axis, LAYER, max_tokens=budget)
    assert table["windowed"].tolist() == [False, False, True]
    assert (table["context_tokens"] <= budget).all()
    last = table.iloc[2]
    start = int(last["window_start"])
    assert messages[start]["role"] == "user" and start > 1
    window = [messages[0], *messages[start:7]]
    assert last["context_tokens"] == len(encode_conversation(tok, window).input_ids)
    assert last["projection"] == pytest.approx(direct_projection(model, tok, window, axis, LAYER), rel=1e-4, abs=1e-4)
    unwindowed = project_conversation(model, tok, messages, axis, LAYER)
    assert table["projection"].iloc[:2].tolist() == pytest.approx(unwindowed["projection"].iloc[:2].tolist(), rel=1e-4)
    with pytest.raises(ContextTooShortError, match="assistant turn 1"):
        project_conversation(model, tok, messages, axis, LAYER, max_tokens=20)


def test_project_command_writes_table_json_and_plot(tmp_path, axis, capsys):
    axis_path = tmp_path / "axis.safetensors"
    save_axis(axis, axis_path)
    out = tmp_path / "out"
    rc = main([
        "project", str(DATA / "case_study.json"), "--axis", str(axis_path), "--dtype", "float32", "--device", "cpu",
        "--max-tokens", "75", "--out-csv", f"{out}.csv", "--out-json", f"{out}.json", "--plot", f"{out}.png",
    ])
    assert rc == 0
    table = pd.read_csv(f"{out}.csv")
    report = json.loads(Path(f"{out}.json").read_text())
    assert len(table) == 2 and report["layer"] == LAYER and report["max_tokens"] == 75
    assert report["windowed_turns"] == table.loc[table["windowed"], "turn"].tolist() == [2]
    assert Path(f"{out}.png").stat().st_size > 5_000
    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": []}')
    assert main(["project", str(bad), "--axis", str(axis_path)]) == 2
    assert f"{bad}: no 'conversation' field" in capsys.readouterr().err
