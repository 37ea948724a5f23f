"""The drift stage on a tiny setting, the seeds file, the persona-extremes figure, and their rules."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from pipeline_helpers import REPO, snakemake, tiny_config, write_config

from assistant_axis.axis import save_axis
from assistant_axis.models import describe_model
from assistant_axis.monitor import project_conversation
from assistant_axis.pipeline.drift import drift_experiment, load_seeds, user_view
from assistant_axis.pipeline.model import prepare_model
from assistant_axis.pipeline.persona_space import persona_extremes
from assistant_axis.transcripts import load_transcript

SEEDS = REPO / "resources" / "drift" / "seeds.json"
DOMAINS = ["coding", "writing", "therapy", "philosophy"]


def test_shipped_seeds_cover_the_four_domains():
    template, seeds = load_seeds(SEEDS, DOMAINS, 3)
    assert [s.domain for s in seeds] == [d for d in DOMAINS for _ in range(3)]
    assert len({s.opening for s in seeds}) == 12


def test_seed_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "seeds.json"
    bad.write_text(json.dumps({"user_prompt": "{persona} {topic}", "domains": {"coding": [{"persona": "p", "topic": "t"}]}}))
    with pytest.raises(ValueError, match=r"seeds.json: field domains.coding\[0\].opening"):
        load_seeds(bad, ["coding"], 1)
    with pytest.raises(ValueError, match="domains.therapy is missing"):
        load_seeds(bad, ["therapy"], 1)
    with pytest.raises(ValueError, match="conversations_per_domain"):
        load_seeds(SEEDS, ["coding"], 4)


def test_simulated_user_sees_swapped_roles():
    template, seeds = load_seeds(SEEDS, ["therapy"], 1)
    from assistant_axis.pipeline.drift import SimConversation

    conv = SimConversation(seeds[0], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    view = user_view(template, conv)
    assert view[0]["role"] == "system" and seeds[0].persona in view[0]["content"]
    assert [m["role"] for m in view[1:]] == ["assistant", "user"]


@pytest.mark.slow
def test_drift_stage_on_a_tiny_setting(tmp_path, fp32_model):
    axis = torch.randn(30, 576, generator=torch.Generator().manual_seed(11))
    save_axis(axis, tmp_path / "axis.safetensors")
    out = tmp_path / "drift"
    spec = "embedded:smollm2-135m-instruct"
    prepare_model(spec=spec, facts=describe_model(spec).as_dict(), output=str(tmp_path / "model.json"))
    table = drift_experiment(
        model_json=str(tmp_path / "model.json"), dtype="float32", device="cpu", axis=str(tmp_path / "axis.safetensors"),
        target_layer=15, seeds_file=str(SEEDS), domains=["coding", "therapy"], conversations_per_domain=1, turns=2,
        max_new_tokens=8, user_max_new_tokens=8, user_model="local", temperature=0.7, top_p=0.9, seed=0, batch_size=8,
        table_out=str(out / "drift.csv"), transcripts_out=str(out / "transcripts.json"), plot_out=str(out / "drift.png"),
    )
    csv = pd.read_csv(out / "drift.csv")
    assert len(csv) == 4 and list(csv["domain"]) == ["coding", "coding", "therapy", "therapy"]
    assert list(csv["turn"]) == [1, 2, 1, 2] and all(math.isfinite(v) for v in csv["projection"])
    assert (out / "drift.png").stat().st_size > 10_000
    model, tok = fp32_model
    for i, conv_id in enumerate(["coding_0", "therapy_0"]):
        t = load_transcript(out / "transcripts.json", index=i)
        assert t.metadata["conversation_id"] == conv_id and [m["role"] for m in t.messages] == ["user", "assistant"] * 2
        assert t.messages[0]["content"].startswith(load_seeds(SEEDS, [t.metadata["domain"]], 1)[1][0].opening[:20])
        again = project_conversation(model, tok, t.messages, axis, 15)
        mine = table[table["conversation_id"] == conv_id]["projection"].tolist()
        assert again["projection"].tolist() == pytest.approx(mine, rel=1e-4, abs=1e-4) == t.metadata["projections"]


def test_persona_extremes_from_persona_space(tmp_path):
    roles = [f"role{i}" for i in range(9)] + ["assistant"]
    result = {"target_layer": 15, "roles": roles, "axis_projection": [float(i) for i in range(10)]}
    table = persona_extremes(result, n=3, table_out=str(tmp_path / "x.csv"), plot_out=str(tmp_path / "x.png"), title="t")
    assert table["role"].tolist() == ["assistant", "role8", "role7", "role2", "role1", "role0"]
    assert table["rank"].tolist() == [1, 2, 3, 8, 9, 10]
    assert pd.read_csv(tmp_path / "x.csv")["group"].tolist()[:1] == ["most Assistant-like"]
    assert (tmp_path / "x.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="persona space: missing field 'axis_projection'"):
        persona_extremes({"roles": roles}, n=3, table_out=str(tmp_path / "y.csv"), plot_out=str(tmp_path / "y.png"))


def planned_rules(workdir: Path) -> set[str]:
    """Rule names in the "Job stats" table of a dry run (one line per rule: name and count)."""
    out = snakemake(workdir, "-n").stdout
    stats = out.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return set(re.findall(r"^(\w+)\s+\d+$", stats, re.M)) - {"total"}


@pytest.mark.slow
def test_drift_targets_follow_the_config(tmp_path):
    plain = tmp_path / "plain"
    write_config(plain, tiny_config())
    rules = planned_rules(plain)
    assert "persona_space" in rules and "drift" not in rules
    on = tmp_path / "on"
    write_config(on, tiny_config(drift={"enabled": True, "seeds_file": str(SEEDS), "domains": ["coding"], "turns": 1}))
    assert {"drift", "persona_space"} <= planned_rules(on)


def test_default_config_enables_drift():
    import yaml

    cfg = yaml.safe_load(Path(REPO / "config" / "config.yaml").read_text())
    assert cfg["drift"]["enabled"] is True and cfg["drift"]["user_model"] == "local"


def test_drift_resumes_after_the_last_cached_turn(tmp_path):
    """A run that dies in turn 3 leaves turns 1-2 cached: the rerun asks for turn 3 only and ends with
    the conversations of an uninterrupted run; another fingerprint or a torn entry is never used."""
    from assistant_axis.generation import Generated, SamplingSettings
    from assistant_axis.pipeline.drift import TurnCache, simulate

    template, seeds = load_seeds(SEEDS, ["coding", "therapy"], 1)
    calls: list[tuple[str, int]] = []

    def side(who: str, die_at: int | None = None):
        def generate(convs, settings):  # deterministic in the conversation and the turn's seed, like seeded HF
            turn = (len(convs[0]) + 1) // 2  # both sides see 2 * turn - 1 messages
            if turn == die_at:
                raise RuntimeError("killed")
            calls.append((who, turn))
            return [Generated(f"{who}:{settings.seed}:{len(c)}:{c[-1]['content'][:12]}", 3, True) for c in convs]
        return generate

    settings = SamplingSettings(0.7, 0.9, 8, 0)
    fresh = simulate(side("assistant"), side("user"), template, seeds, 3, settings, settings)
    calls.clear()
    cache = TurnCache(tmp_path / "cache", "fp1")
    with pytest.raises(RuntimeError, match="killed"):
        simulate(side("assistant", die_at=3), side("user"), template, seeds, 3, settings, settings, cache)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["turn_1.fp1.json", "turn_2.fp1.json"]
    calls.clear()
    resumed = simulate(side("assistant"), side("user"), template, seeds, 3, settings, settings, cache)
    assert calls == [("user", 3), ("assistant", 3)]  # turns 1-2 were not generated again
    assert [c.messages for c in resumed] == [c.messages for c in fresh]
    # a torn newest entry falls back to the one before it; another fingerprint starts over
    (tmp_path / "cache" / "turn_3.fp1.json").write_text('{"turn": 3, "conversations": [')
    assert TurnCache(tmp_path / "cache", "fp1").latest(3, seeds)[0] == 2
    assert TurnCache(tmp_path / "cache", "other").latest(3, seeds)[0] == 0
