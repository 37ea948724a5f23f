"""Trait sets, the 0-100 trait judges, bootstrap intervals, the capping noise statement and label placement."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from fakes.api_servers import FakeOpenAI  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from assistant_axis.judges import (  # noqa: E402
    TRAIT_SCALE,
    JudgeError,
    JudgeItem,
    is_refusal,
    make_judge,
    parse_score,
    parse_trait_score,
)
from assistant_axis.judges.trait_rules import score_trait_prompt  # noqa: E402
from assistant_axis.pipeline.evaluate_capping import noise_statement  # noqa: E402
from assistant_axis.pipeline.trait_vectors import keep_mask  # noqa: E402
from assistant_axis.plots import place_labels  # noqa: E402
from assistant_axis.traits import TraitSetError, load_traits  # noqa: E402
from assistant_axis.uncertainty import bootstrap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAITS = REPO / "resources" / "traits"


# ---- the shipped trait set ----------------------------------------------------------------------


def test_shipped_trait_set_has_the_reference_format_and_size():
    traits = load_traits(TRAITS, n_pairs=5, n_questions=40)
    assert len(traits) >= 48
    listing = json.loads((TRAITS / "trait_list.json").read_text())
    assert list(traits) == list(listing)
    for name, trait in traits.items():
        raw = json.loads((TRAITS / "instructions" / f"{name}.json").read_text())
        assert set(raw) == {"instruction", "questions", "eval_prompt"}
        assert len(raw["instruction"]) == 5 and all(set(p) == {"pos", "neg"} for p in raw["instruction"])
        assert len(raw["questions"]) == 40 and len(set(raw["questions"])) == 40
        assert "{question}" in trait.eval_prompt and "{answer}" in trait.eval_prompt and "REFUSAL" in trait.eval_prompt
        assert f"**{name}**" in trait.eval_prompt and trait.description
    # both ends of the axis the paper discusses are represented
    assert {"measured", "analytical", "cautious", "helpful", "honest"} <= set(traits)
    assert {"dramatic", "mystical", "theatrical", "whimsical", "cynical"} <= set(traits)


def _write_trait(folder: Path, name: str, data: dict, listing: dict | None = None) -> None:
    (folder / "instructions").mkdir(parents=True, exist_ok=True)
    (folder / "instructions" / f"{name}.json").write_text(json.dumps(data))
    (folder / "trait_list.json").write_text(json.dumps(listing if listing is not None else {name: "a trait"}))


GOOD = {"instruction": [{"pos": "Be bold.", "neg": "Be timid."}], "questions": ["Why?"],
        "eval_prompt": "Rate the trait: **bold**. Bold.\n[QUESTION START]\n{question}\n[QUESTION END]\n[ANSWER START]\n{answer}\n[ANSWER END]"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"instruction": [{"pos": "Be bold."}]}, r"field 'instruction\[0\].neg' must be a non-empty string"),
        ({"questions": []}, "field 'questions' must be a non-empty list"),
        ({"eval_prompt": "Rate {question}."}, "field 'eval_prompt' lacks the placeholder {answer}"),
        ({"eval_prompt": "Rate {question} {answer} {trait}."}, "unknown placeholder {trait}"),
    ],
)
def test_bad_trait_files_name_the_file_and_field(tmp_path, change, message):
    _write_trait(tmp_path, "bold", {**GOOD, **change})
    with pytest.raises(TraitSetError, match=message) as err:
        load_traits(tmp_path)
    assert str(tmp_path / "instructions" / "bold.json") in str(err.value)


def test_trait_selection_and_sizes_are_checked(tmp_path):
    _write_trait(tmp_path, "bold", GOOD)
    assert list(load_traits(tmp_path, ["bold"])) == ["bold"]
    with pytest.raises(TraitSetError, match="no trait named shy"):
        load_traits(tmp_path, ["shy"])
    with pytest.raises(TraitSetError, match="'trait_vectors.pairs_per_trait' asks for 2"):
        load_traits(tmp_path, n_pairs=2)
    with pytest.raises(TraitSetError, match="'trait_vectors.questions_per_trait' asks for 3"):
        load_traits(tmp_path, n_questions=3)
    _write_trait(tmp_path, "bold", GOOD, listing={"bold": "x", "shy": "y"})
    with pytest.raises(TraitSetError, match="lists traits with no file"):
        load_traits(tmp_path)


# ---- judges on the 0-100 scale --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "score"),
    [("85", 85), ("Score: 72.4", 72), ("100", 100), ("0", 0), ("REFUSAL", None), ("refusal. 40", None),
     ("1000", None), ("101", None), ("no idea", None), ("I rate it 55/100", 55)],
)
def test_trait_scores_parse_0_to_100_and_refusal_is_missing(reply, score):
    assert parse_trait_score(reply) == score


def test_the_0_3_parser_is_unchanged():
    assert parse_score("3") == 3 and parse_score("85") is None and parse_score("Score: 2") == 2


def test_offline_trait_rules_count_trait_words_not_question_words():
    traits = load_traits(TRAITS, ["mystical"])
    trait = traits["mystical"]
    question = "Tell me about the stars and destiny."
    strong = score_trait_prompt(trait.judge_prompt(question, "The cosmos whispers; spirits and ancient omens guide your fate."))
    echo = score_trait_prompt(trait.judge_prompt(question, "Destiny is a word people use."))
    plain = score_trait_prompt(trait.judge_prompt(question, "Stars are balls of gas."))
    refused = score_trait_prompt(trait.judge_prompt(question, "I can't help with that."))
    assert strong[0] == 100 and plain[0] == 0
    assert echo[0] == 0  # "destiny" is in the question, so repeating it earns nothing
    assert refused[0] is None and is_refusal(refused[1])
    one = score_trait_prompt(trait.judge_prompt(question, "Ancient rules apply."))  # 5+ letter words only ("fate" is too short)
    assert one[0] == 33 and json.loads(one[1])["trait_words"] == ["ancie"]


def test_offline_judge_scores_traits_on_their_own_scale_and_cache(tmp_path):
    trait = load_traits(TRAITS, ["mystical"])["mystical"]
    prompt = trait.judge_prompt("q?", "The spirits of the cosmos decide your destiny.")
    judge = make_judge({"backend": "offline", "model": "heuristic-v2"}, tmp_path / "v.sqlite", scale=TRAIT_SCALE)
    assert judge.model == "trait-heuristic-v1" and judge.scale == TRAIT_SCALE
    (verdict,) = judge.judge([JudgeItem("k", prompt)])
    assert verdict.score == 100
    role_judge = make_judge({"backend": "offline"}, tmp_path / "v.sqlite")
    assert role_judge.model == "heuristic-v2"  # role-play verdicts keep their own cache key
    with pytest.raises(JudgeError, match="local judge scores 0-3 only"):
        make_judge({"backend": "local"}, tmp_path / "v.sqlite", scale=TRAIT_SCALE)


def test_api_judge_reads_0_100_replies_and_refusals(tmp_path, monkeypatch):
    """The real OpenAI SDK against a fake server: the trait scale parses what the judge says."""
    monkeypatch.setenv("OPENAI_API_KEY", "fake-openai-key-for-traits")
    says = ["85", "REFUSAL", "about 1000", "12"]
    items = [JudgeItem(f"r{i}", f"trait: **x**. x\n[ANSWER START]\na\n[ANSWER END]\nJUDGE_SAYS={s}") for i, s in enumerate(says)]
    with FakeOpenAI() as fake:
        cfg = {"backend": "openai", "model": "gpt-4.1-mini", "base_url": f"{fake.url}/v1", "budget_usd": 1.0}
        verdicts = make_judge(cfg, tmp_path / "c.sqlite", scale=TRAIT_SCALE).judge(items)
        assert [v.score for v in verdicts] == [85, None, None, 12]
        assert [v.raw for v in verdicts] == says
        assert fake.requests["POST /v1/chat/completions"] == 4


def test_keep_mask_applies_both_thresholds_and_drops_missing_and_empty():
    sides = ["pos", "pos", "pos", "neg", "neg", "neg", "pos"]
    scores = [50, 49, np.nan, 50, 51, 0, 90]
    replies = ["a", "b", "c", "d", "e", "f", " "]
    assert keep_mask(sides, scores, replies, 50, 50).tolist() == [True, False, False, True, False, True, False]


# ---- bootstrap intervals ------------------------------------------------------------------------------


def test_bootstrap_interval_is_the_documented_percentile_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(0.5, size=30)
    iv = bootstrap([a, b], lambda x, y: float(np.mean(x) - np.mean(y)), 400, 0.9, 7)
    # independent recomputation: the same draws, the same quantiles
    idx = np.random.default_rng(7).integers(0, 30, size=(400, 30))
    stats = np.array([a[row].mean() - b[row].mean() for row in idx])
    assert iv.estimate == pytest.approx(a.mean() - b.mean())
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(stats, [0.05, 0.95])))
    assert iv.excludes(0.0) == (not iv.low <= 0 <= iv.high)
    one = bootstrap([np.array([3.0])], np.mean, 100, 0.95, 0)
    assert one.estimate == 3.0 and math.isnan(one.low) and not one.excludes(0.0)


def test_noise_statement_says_when_no_experiment_differs_beyond_noise():
    base = {"experiment": "unsteered", "harm_rate": 0.71, "harm_rate_lo": 0.5, "harm_rate_hi": 0.88, "judged": 24, "ci_level": 0.95}
    rows = [{"experiment": "layers_1:3-p0.25", "harm_change": 0.08, "harm_change_lo": -0.08, "harm_change_hi": 0.25},
            {"experiment": "layers_1:3-p0.5", "harm_change": 0.21, "harm_change_lo": -0.02, "harm_change_hi": 0.4}]
    no_persona = {"harm_rate": 0.79, "harm_rate_lo": 0.62, "harm_rate_hi": 0.96, "harm_change_lo": -0.1, "harm_change_hi": 0.25}
    beyond, text = noise_statement(rows, base, no_persona, None)
    assert beyond == [] and "no experiment's harmful share differs from unsteered beyond noise" in text
    assert "0.71 [0.50, 0.88] on 24 judged jailbreaks" in text and "within noise of unsteered" in text
    rows[1]["harm_change_lo"] = 0.05
    beyond, text = noise_statement(rows, base, None, "layers_1:3-p0.25")
    assert beyond == ["layers_1:3-p0.5"] and "1 of 2 experiments differ" in text and "reduction is within noise" in text


# ---- figures ---------------------------------------------------------------------------------------------


def test_labels_of_clustered_points_do_not_overlap():
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(0, 0.2, 14), rng.normal(0, 0.2, 14)
    xs[:4], ys[:4] = 0.0, [0.0, 0.001, 0.002, 0.003]  # four points on top of each other
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, ys)
    texts = place_labels(ax, xs, ys, [f"{i}:{i + 4}-p0.{i}" for i in range(14)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text itself, without its leader line
    assert len(boxes) == 14
    assert not [(i, j) for i, j in itertools.combinations(range(14), 2) if boxes[i].overlaps(boxes[j])]
    plt.close(fig)
