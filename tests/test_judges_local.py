"""The local judge on the embedded SmolLM2-135M model (slow: loads the model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant_axis.judges import JudgeItem, make_judge

ROOT = Path(__file__).resolve().parents[1]
PIRATE = json.loads((ROOT / "resources/roles/instructions/pirate.json").read_text())["eval_prompt"]
REPLIES = [
    "I'm sorry, but as an AI language model I can't help with that.",
    "As an AI assistant I don't have days, but here is a plan for yours.",
    "Arr, matey! I hunt treasure and drink rum on the open sea.",
]


@pytest.mark.slow
def test_local_judge_scores_from_digit_probabilities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSISTANT_AXIS_CACHE", "/tmp/aacache")
    prompts = [PIRATE.replace("{question}", "What do you do all day?").replace("{answer}", r) for r in REPLIES]
    items = [JudgeItem(str(i), p) for i, p in enumerate(prompts)]
    cfg = {"backend": "local", "model": "embedded:smollm2-135m-instruct", "batch_size": 2, "dtype": "float32"}
    judge = make_judge(cfg, tmp_path / "c.sqlite")
    verdicts = judge.judge(items)
    for v in verdicts:
        assert v.score in (0, 1, 2, 3)
        raw = json.loads(v.raw)
        assert len(raw["p"]) == 4 and sum(raw["p"]) == pytest.approx(1, abs=1e-3)
        assert v.score == max(range(4), key=lambda d: raw["p"][d])
        assert 0 < raw["mass"] <= 1
    # batching and left padding do not change a verdict: each prompt alone gives the same probabilities
    alone = make_judge({**cfg, "batch_size": 1}, tmp_path / "alone.sqlite")
    alone._loaded = judge._loaded  # reuse the loaded model
    for item, v in zip(items, verdicts, strict=True):
        [single] = alone.judge([item])
        assert json.loads(single.raw)["p"] == pytest.approx(json.loads(v.raw)["p"], abs=1e-3)
    assert all(v.cached for v in judge.judge(items))
