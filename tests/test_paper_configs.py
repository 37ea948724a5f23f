"""Configs that layer cleanly, the paper config planned offline, every malformed input caught by a dry
run in one line, and `assistant-axis plan` figures recomputed by hand.

Every check runs the real `snakemake -n` (or the real CLI) in a subprocess. A `sitecustomize`
module put first on the subprocess's path records any attempt to open a network connection and
refuses it, so "offline, no network wait" is observed, not assumed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_helpers import REPO, TINY_ROLES, planned_jobs, snakemake, tiny_config, write_config

from assistant_axis.models import MODEL_CONFIGS
from assistant_axis.roles import load_questions, load_roles

PAPER_RUNS = {"gemma2-27b", "qwen3-32b", "llama3.3-70b"}

_GUARD = '''
import os, socket

_LOG = os.environ["AA_NETWORK_LOG"]


def _refuse(*args, **kwargs):
    with open(_LOG, "a") as f:
        f.write(f"network attempt: {args[:2]!r}\\n")
    raise OSError("network access refused by the test")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for subprocesses: HF offline, an empty HF cache, and the network guard."""
    root = tmp_path_factory.mktemp("offline")
    (root / "guard").mkdir()
    (root / "guard" / "sitecustomize.py").write_text(_GUARD)
    log = root / "network.log"
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf_home"), "PYTHONPATH": str(root / "guard"),
            "AA_NETWORK_LOG": str(log)}


def _network_attempts(env: dict[str, str]) -> str:
    log = Path(env["AA_NETWORK_LOG"])
    return log.read_text() if log.exists() else ""


def _runs(jobs: list[tuple[str, str]]) -> set[str]:
    return {m.group(1) for _, wc in jobs for m in [re.search(r"run=([^,]+)", wc)] if m}


# ------------------------------------------------------------------------------------------------
# layering and the paper config


def test_a_configfile_names_the_runs_alone(tmp_path: Path) -> None:
    """The default config/config.yaml is read only when no --configfile is given: its runs never leak in."""
    write_config(tmp_path, tiny_config())  # run "tiny" in config/config.yaml
    other = tiny_config()
    other["models"] = {"other": other["models"]["tiny"]}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert _runs(planned_jobs(tmp_path)) == {"tiny"}
    out = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "other.yaml")).stdout
    assert {m.group(1) for m in re.finditer(r"run=([^,\s]+)", out)} == {"other"}


def test_paper_config_plans_the_three_models_offline(tmp_path: Path, offline_env: dict[str, str]) -> None:
    (tmp_path / "resources").symlink_to(REPO / "resources")
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "paper.yaml"), env=offline_env)
    assert not _network_attempts(offline_env)
    runs = {m.group(1) for m in re.finditer(r"run=([^,\s]+)", proc.stdout)}
    assert runs == PAPER_RUNS
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert counts["generate"] == counts["extract"] == counts["judge"] == str(3 * 32)
    assert counts["calibrate"] == counts["evaluate_capping"] == "2"  # Gemma 2 27B: no capping, as in the paper
    # the plan is printed once, before the jobs, with the paper's numbers
    plan = proc.stderr
    assert plan.count("assistant-axis plan") == 1
    for run, model in (("gemma2-27b", "google/gemma-2-27b-it"), ("qwen3-32b", "Qwen/Qwen3-32B"),
                       ("llama3.3-70b", "meta-llama/Llama-3.3-70B-Instruct")):
        assert f"== {run}: {model}" in plan
    assert plan.count("responses          331,200 (275 roles x 5 prompts x 240 questions + default 5 x 240)") == 3
    assert "windows [46, 54)" in plan and "windows [56, 72)" in plan and "capping: off" in plan
    assert "target layer 22" in plan and "target layer 32" in plan and "target layer 40" in plan


# ------------------------------------------------------------------------------------------------
# malformed inputs: one line, naming the file and the field, no traceback


def _roles_dir(tmp_path: Path, edit: dict[str, Any] | None = None) -> Path:
    """A roles folder with default, pirate and ghost; ``edit`` replaces fields of pirate.json."""
    folder = tmp_path / "roles" / "instructions"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("default", "pirate", "ghost"):
        shutil.copy(REPO / "resources" / "roles" / "instructions" / f"{name}.json", folder)
    if edit is not None:
        data = json.loads((folder / "pirate.json").read_text())
        for key, value in edit.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value
        (folder / "pirate.json").write_text(json.dumps(data))
    return tmp_path / "roles"


def _bad_questions(tmp_path: Path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text('{"question": "What is a good life?", "id": 0}\n{"question": "  ", "id": 1}\n')
    return path


PIRATE = "roles/instructions/pirate.json"
# kind -> (change to the tiny config, expected text, the file the error must name)
CASES: dict[str, tuple[Any, str, str]] = {
    "nan": (lambda c, t: c["generation"].update(temperature=float("nan")),
            "config key 'generation.temperature': nan is not a finite number", "config/config.yaml"),
    "infinite": (lambda c, t: c["capping_eval"].update(max_perplexity_increase=float("inf")),
                 "config key 'capping_eval.max_perplexity_increase': inf is not a finite number", "config/config.yaml"),
    "percentile_out_of_range": (lambda c, t: c["capping"].update(percentiles=[0.25, 1.0]),
                                "config key 'capping.percentiles.1': 1.0 is greater than or equal to the maximum of 1",
                                "config/config.yaml"),
    "window_outside_layers": (lambda c, t: c["capping"].update(windows=[[10, 12], [28, 34]]),
                              "config key 'capping.windows': window [28, 34] does not fit the 30 layers", "config/config.yaml"),
    "target_layer_outside_layers": (lambda c, t: c["models"]["tiny"].update(target_layer=30),
                                    "config key 'models.tiny.target_layer': 30 is outside the 30 layers", "config/config.yaml"),
    "stored_layers_miss_the_target": (lambda c, t: c["models"]["tiny"].update(extraction={"layers": [10, 11, 14]}),
                                      "config key 'models.tiny.extraction.layers': layers [15] are not stored",
                                      "config/config.yaml"),
    "min_count_unreachable": (lambda c, t: c["role_vectors"].update(min_count=3),
                              "config key 'role_vectors.min_count': 3 is more than the 2 responses", "config/config.yaml"),
    "tensor_parallel_does_not_divide_heads": (
        lambda c, t: c["models"]["tiny"].update(backend="vllm", gpus=2),
        "config key 'models.tiny.gpus': vLLM's tensor_parallel_size 2 must divide the model's num_attention_heads (9)",
        "config/config.yaml"),
    "duplicate_role_names": (lambda c, t: c.update(roles=["default", "pirate", "ghost", "pirate"]),
                             "config key 'roles': pirate listed more than once", "config/config.yaml"),
    "role_file_missing_key": (lambda c, t: c.update(roles_dir=str(_roles_dir(t, {"eval_prompt": None}))),
                              "field 'eval_prompt' is missing", PIRATE),
    "empty_prompt": (lambda c, t: c.update(roles_dir=str(_roles_dir(t, {"instruction": [{"pos": "  "}]}))),
                     "field 'instruction[0].pos' is empty", PIRATE),
    "unknown_placeholder": (
        lambda c, t: c.update(roles_dir=str(_roles_dir(t, {"instruction": [{"pos": "You are {role_name}, a pirate."}]}))),
        "field 'instruction[0].pos' has the unknown placeholder {role_name}", PIRATE),
    "too_few_prompts": (
        lambda c, t: (c.update(roles_dir=str(_roles_dir(t, {"instruction": [{"pos": "You are a pirate."}]}))),
                      c.update(prompts_per_role=2)),
        "field 'instruction' has 1 prompts but config key 'prompts_per_role' asks for 2", PIRATE),
    "bad_questions_file": (lambda c, t: c.update(questions_file=str(_bad_questions(t))),
                           ":2: field 'question' must be a non-empty string", "questions.jsonl"),
    "missing_data_file": (lambda c, t: c["capping_eval"].update(jailbreaks=str(t / "nope.jsonl")),
                          "config key 'capping_eval.jailbreaks': file", "config/config.yaml"),
    "missing_local_model_folder": (lambda c, t: c["models"]["tiny"].update(model=str(t / "no_such_model")),
                                   "config key 'models.tiny.model': model folder", "config/config.yaml"),
    "hub_id_not_cached_offline": (lambda c, t: c["models"]["tiny"].update(model="example-org/not-downloaded-7b"),
                                  "model example-org/not-downloaded-7b is not in the local Hugging Face cache and "
                                  "HF_HUB_OFFLINE=1", "config/config.yaml"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_malformed_input_fails_the_dry_run_in_one_line(kind: str, tmp_path: Path, offline_env: dict[str, str]) -> None:
    change, expected, named_file = CASES[kind]
    cfg = tiny_config(roles=["default", "pirate", "ghost"], questions_per_role=2)
    change(cfg, tmp_path)
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False, env=offline_env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output[-3000:]
    assert expected in lines[0] and named_file in lines[0], lines[0]
    assert "Traceback" not in output and 'File "' not in output
    assert not _network_attempts(offline_env)


def test_unreachable_hub_is_one_line_without_retries(tmp_path: Path, offline_env: dict[str, str]) -> None:
    """Online (no HF_HUB_OFFLINE) with no network: one short connection attempt, then one clear line
    (huggingface_hub alone would retry for ~25 s, logging each attempt)."""
    env = {k: v for k, v in offline_env.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_OFFLINE="0", AA_NETWORK_LOG=str(tmp_path / "network.log"))
    cfg = tiny_config()
    cfg["models"]["tiny"]["model"] = "example-org/not-downloaded-7b"
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert "config/config.yaml: config key 'models.tiny.model': model example-org/not-downloaded-7b is not in the local " \
           "Hugging Face cache and the hub (huggingface.co) cannot be reached" in lines[0]
    assert len((tmp_path / "network.log").read_text().splitlines()) == 1  # the probe, nothing more


# ------------------------------------------------------------------------------------------------
# the plan command, recomputed by hand

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"


def _plan_config() -> dict[str, Any]:
    """The tiny scale with two runs: the embedded model on CPU, and Llama-3.3-70B on 4 GPUs with a
    layer subset stored in bfloat16 (planned from the built-in table: nothing is downloaded)."""
    cfg = tiny_config()
    cfg["models"]["llama"] = {"model": LLAMA, "backend": "hf", "dtype": "bfloat16", "device": "cuda", "gpus": 4,
                              "capping": {"windows": [[56, 72]]},
                              "extraction": {"storage_dtype": "bfloat16", "layers": [40, *range(56, 72)]}}
    cfg["judge"] = {"backend": "anthropic", "model": "claude-haiku-5-5", "use_batches": True}
    return cfg


def test_plan_figures_match_a_recomputation(tmp_path: Path, offline_env: dict[str, str]) -> None:
    cfg = _plan_config()
    write_config(tmp_path, cfg)
    cli = Path(sys.executable).with_name("assistant-axis")
    proc = subprocess.run([str(cli), "plan", "--configfile", "config/config.yaml", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, **offline_env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["runs"]
    assert not _network_attempts(offline_env)

    roles = load_roles(cfg["roles_dir"], TINY_ROLES)
    questions = load_questions(cfg["questions_file"])[:2]
    max_new = cfg["generation"]["max_new_tokens"]
    # responses: 5 roles x 1 prompt x 2 questions + default 2 prompts x 2 questions
    for run in ("tiny", "llama"):
        p = plan[run]
        assert p["responses"] == 5 * 1 * 2 + 2 * 2 == 14
        assert p["generated_tokens"] == 14 * max_new
        assert p["judge_calls"] == 10
    # judge cost: each filled-in rubric at chars/4, 10 output tokens, Haiku 5.5 at $0.10/$0.50 per Mtok, batches half
    chars = sum(len(roles[r].judge_prompt(q.text, "x" * (max_new * 4))) for r in TINY_ROLES if r != "default" for q in questions)
    tokens_in = int(chars / 4)
    usd = (tokens_in * 0.10 + 10 * 10 * 0.50) / 1e6 * 0.5
    assert plan["tiny"]["judge_usd"] == pytest.approx(usd, rel=1e-9)
    # prompt tokens: system prompt ({model_name} filled) + question at chars/4, plus 32 template tokens each
    prompt_chars = 0
    for r in TINY_ROLES:
        prompts = roles[r].prompts[: 2 if r == "default" else 1]
        prompt_chars += sum(len(pr.replace("{model_name}", "Llama")) + len(q.text) for pr in prompts for q in questions)
    assert plan["llama"]["prompt_tokens"] == int(prompt_chars / 4 + 14 * 32)
    # activations on disk: responses x stored layers x hidden x bytes
    assert plan["tiny"]["activation_bytes"] == 14 * 30 * 576 * 4
    assert plan["llama"]["activation_bytes"] == 14 * 17 * 8192 * 2 and plan["llama"]["stored_layers"] == [40, *range(56, 72)]
    # Llama-3.3-70B's parameters counted from its architecture (80 layers, GQA 64/8 heads of 128, MLP 28672, vocab 128256)
    per_layer = 8192 * 64 * 128 * 2 + 8192 * 8 * 128 * 2 + 3 * 8192 * 28672 + 2 * 8192
    params = 80 * per_layer + 2 * 128256 * 8192 + 8192
    assert plan["llama"]["n_parameters"] == params and abs(params / 70.6e9 - 1) < 0.005
    assert plan["llama"]["weight_bytes"] == 2 * params
    # extraction: one job per shard on as few of the 4 GPUs as hold the weights and one batch's working memory
    # (16384 tokens x (4 x 8192 + 3 x 28672) x 2 bytes) in 90% of 80 GB: 3 GPUs, the model spread over them
    working = 16384 * (4 * 8192 + 3 * 28672) * 2  # the schema's default max_batch_tokens
    n_gpus = math.ceil((2 * params + working) / (0.9 * 80e9))
    assert n_gpus == 3 and plan["llama"]["hf_gpus"] == 3
    extract = plan["llama"]["stages"]["extract"]
    assert extract["jobs"] == 2 and extract["gpus"] == 3 and extract["resources"]["gpu"] == 3
    assert extract["gpu_memory_gb"] == pytest.approx((2 * params / 3 + working) / 1e9, rel=1e-9)
    # host memory: 4096 MB + 1.25 x the weights (HF loads through host memory)
    assert extract["resources"]["mem_mb"] == int(4096 + 1.25 * 2 * params / 2**20)
    # time: 2 x parameters FLOP per token through the deepest stored layer (72 of 80), at 40% of 989 TFLOP/s;
    # the GPUs of a device_map work one after another, and all 3 are held for the whole job
    forward = plan["llama"]["prompt_tokens"] + 14 * max_new
    seconds = 2 * params * forward * (72 / 80) / (989e12 * 0.4)
    assert extract["hours_per_job"] * extract["jobs"] * 3600 == pytest.approx(seconds, rel=1e-6)
    assert extract["gpu_hours"] == pytest.approx(seconds / 3600 * 3, rel=1e-6)
    assert extract["resources"]["runtime"] == max(60, math.ceil(2 * extract["hours_per_job"] * 60 + 30))
    # the CPU run asks for no GPU
    assert all(s["resources"]["gpu"] == 0 for s in plan["tiny"]["stages"].values())
    assert plan["tiny"]["n_parameters"] == MODEL_CONFIGS["embedded:smollm2-135m-instruct"]["dims"]["vocab_size"] * 576 + 30 * (
        576 * 9 * 64 * 2 + 576 * 3 * 64 * 2 + 3 * 576 * 1536 + 2 * 576) + 576

    # and the rules ask SLURM for exactly these resources
    out = snakemake(tmp_path, "-n", env=offline_env).stdout
    asked = set()
    for block in re.split(r"^(?=(?:local)?rule \w+:)", out, flags=re.M):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        run = re.search(r"run=([^,\s]+)", block)
        res = re.search(r"resources: (.*)", block)
        if rule and run and res and rule.group(1) == "extract":
            fields = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
            asked.add((run.group(1), int(fields["mem_mb"]), int(fields.get("gpu", 0)), int(fields["runtime"])))
    expected = {(run, plan[run]["stages"]["extract"]["resources"]["mem_mb"], plan[run]["stages"]["extract"]["resources"]["gpu"],
                 plan[run]["stages"]["extract"]["resources"]["runtime"]) for run in ("tiny", "llama")}
    assert asked == expected


def test_plan_command_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    write_config(tmp_path, tiny_config(capping={"windows": [[10, 40]], "percentiles": [0.25]}))
    cli = Path(sys.executable).with_name("assistant-axis")
    proc = subprocess.run([str(cli), "plan", "--configfile", "config/config.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "assistant-axis plan: error: config/config.yaml: config key 'capping.windows': window [10, 40] does not fit the "
        "30 layers of embedded:smollm2-135m-instruct (half-open ranges [start, stop) with 0 <= start < stop <= 30)"
    ]

