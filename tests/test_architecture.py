"""The shape of the house (docs/ARCHITECTURE.md): one name per stage, package layers, one source of defaults."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from assistant_axis.pipeline.config import fill_defaults, load_config, read_schema, run_settings
from assistant_axis.pipeline.layout import STAGES, RunLayout

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "assistant_axis"
SCHEMA = REPO / "config" / "config.schema.yaml"

# Lower layers never import higher ones (docs/ARCHITECTURE.md, "Module map").
LAYERS = {
    0: {"storage", "datafiles", "plots", "batching", "layers", "roles", "traits", "uncertainty"},
    1: {"models", "conversation", "transcripts"},
    2: {"activations", "axis", "capping", "generation", "steering", "monitor", "evaluation", "judges",
        "vllm_backend", "vllm_worker", "vllm_sampling", "pca", "internals", "reference_vllm"},
    3: {"pipeline"},
    4: {"cli", "serve"},
}


def _rules() -> dict[str, str]:
    """Rule name -> rule file, for every rule of the workflow."""
    out = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name in re.findall(r"^rule (\w+):", path.read_text(), re.M):
            out[name] = path.stem
    return out


def test_every_rule_a_profile_names_exists():
    rules = _rules()
    for profile in sorted((REPO / "workflow" / "profiles").glob("*/config.yaml")):
        named = set((yaml.safe_load(profile.read_text()) or {}).get("set-resources", {}))
        assert named <= set(rules), f"{profile}: set-resources names rules that do not exist: {sorted(named - set(rules))}"


def test_one_name_per_stage_end_to_end():
    rules = _rules()
    assert set(rules) == set(STAGES), "every stage is exactly one rule, and every rule a stage"
    for stage in STAGES:
        assert rules[stage] == stage, f"rule {stage} lives in {rules[stage]}.smk"
        assert (REPO / "workflow" / "scripts" / f"{stage}.py").is_file(), f"no script for stage {stage}"
        assert (PACKAGE / "pipeline" / f"{stage}.py").is_file(), f"no library module for stage {stage}"
        text = (REPO / "workflow" / "rules" / f"{stage}.smk").read_text()
        assert f'"../scripts/{stage}.py"' in text
        assert f'L.log("{stage}"' in text, f"rule {stage}: its log is named after the stage"
    layout = RunLayout("r")
    assert layout.stage("axis", "axis.pt") == "results/r/axis/axis.pt"
    assert layout.log("generate", "001") == "results/r/logs/generate_001.log"
    assert layout.benchmark("extract", "000") == "results/r/benchmarks/extract_000.tsv"
    with pytest.raises(ValueError, match="unknown stage"):
        layout.stage("capping_eval", "x")


def test_scripts_are_thin_and_call_their_own_stage():
    for stage in STAGES:
        text = (REPO / "workflow" / "scripts" / f"{stage}.py").read_text()
        imports = re.findall(r"from assistant_axis\.pipeline\.(\w+) import", text)
        assert set(imports) == {stage, "runner"}, f"script {stage}.py imports {imports}"
        assert "snakemake.config" not in text and len(text.splitlines()) < 60


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Package-internal modules imported by ``path`` (absolute names), at any depth of the file."""
    tree = ast.parse(path.read_text())
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("assistant_axis"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("assistant_axis"))
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules} - {_module_name(path)}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package's __init__: the public API, may import any library layer
    for layer, names in LAYERS.items():
        if parts[1] in names:
            return layer
    raise AssertionError(f"module {module} has no layer in docs/ARCHITECTURE.md (add it to LAYERS)")


def test_lower_layers_never_import_higher_ones():
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        mine = _layer(me)
        if mine is None:
            assert all(_layer(m) is None or _layer(m) <= 2 for m in _imports(path)), "the public API imports library layers only"
            continue
        for other in _imports(path):
            theirs = _layer(other)
            assert theirs is None or theirs <= mine, f"{me} (layer {mine}) imports {other} (layer {theirs})"


def test_no_import_cycle():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == "assistant_axis" or nxt.startswith(node + "."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else nxt)
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _code_strings(path: Path) -> list[str]:
    """String literals of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_model_name_special_cases_in_the_core():
    """End-of-turn and template tokens come from the tokenizer and its chat template, not from literals."""
    for path in PACKAGE.rglob("*.py"):
        for text in _code_strings(path):
            for literal in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|im_start|>", "<start_of_turn>"):
                assert literal not in text, f"{path.relative_to(REPO)} names the template token {literal}"
            assert not re.search(r"\b(qwen|llama|gemma|smollm)\b", text, re.I) or path.name == "models.py", (
                f"{path.relative_to(REPO)} special-cases a model family: {text[:60]!r}"
            )


def test_defaults_come_from_the_schema_only():
    schema = read_schema(SCHEMA)
    cfg = load_config({"models": {"m": {"model": "x"}}, "roles_dir": "r", "questions_file": "q",
                       "generation": {"max_new_tokens": 7}}, SCHEMA)
    # a section given in part is completed key by key from the schema's default
    assert cfg["generation"] == {**schema["properties"]["generation"]["default"], "max_new_tokens": 7}
    assert cfg["models"]["m"] == {"model": "x", "backend": "auto", "dtype": "auto", "device": "auto", "gpus": 1}
    for key, sub in schema["properties"].items():
        if "default" in sub:
            assert key in cfg, key
    # a run's own override replaces only what it names: no defaults are filled into it
    cfg = load_config({"models": {"m": {"model": "x", "generation": {"seed": 5}}}, "roles_dir": "r", "questions_file": "q",
                       "generation": {"temperature": 0.1}}, SCHEMA)
    assert cfg["models"]["m"]["generation"] == {"seed": 5}
    assert run_settings(cfg, "m")["generation"]["temperature"] == 0.1
    # the library keeps no copy of the defaults
    for path in (PACKAGE / "pipeline").glob("*.py"):
        assert "DEFAULTS" not in path.read_text(), path.name
    node = {"properties": {"a": {"type": "object", "default": {"x": 1, "y": {"z": 2}}}}}
    inst = {"a": {"y": {}}}
    fill_defaults(node, node, inst)
    assert inst == {"a": {"x": 1, "y": {"z": 2}}}


def test_workflow_parse_step_imports_nothing_heavy(tmp_path):
    """A dry run parses the Snakefile on every call: it must not import torch, transformers or vLLM
    (model facts come from config.json or the built-in table). Speed itself: benchmarks/bench_planning.py."""
    import subprocess
    import sys

    from pipeline_helpers import tiny_config, write_config

    write_config(tmp_path, tiny_config())
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--cores", "1", "-n", "-q"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "assistant_axis.pipeline.plan" in imported  # the parse step did run
    heavy = sorted(imported & {"torch", "transformers", "vllm", "sklearn", "matplotlib"})
    assert not heavy, f"the parse step imports {heavy}"
