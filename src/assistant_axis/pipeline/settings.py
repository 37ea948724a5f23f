"""Pipeline configuration: validation with clear errors, defaults, and per-model effective settings.

The Snakefile turns these settings into ``params:``, so a change to any of them reruns exactly the
steps that use it, and only for the model it belongs to.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULTS: dict[str, Any] = {
    "roles": "all",
    "prompts_per_role": 5,
    "questions_per_role": 240,
    "default_prompts": 5,
    "shards": 4,
    "threads": 8,
    "generation": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 512, "seed": 0},
    "batch_size": 64,
    "vllm": {},
    "extraction": {"batch_size": 32, "max_batch_tokens": 16384},
    "judge": {"backend": "offline", "model": "heuristic-v2"},
    "role_vectors": {"score": 3, "min_count": 10},
    "analysis": {"n_components": 10, "n_extremes": 12},
    "capping": {"windows": None, "percentiles": [0.01, 0.25, 0.5, 0.75]},
    # off unless a config asks for it (config/config.yaml does); sizes of the default config
    "drift": {
        "enabled": False, "seeds_file": "resources/drift/seeds.json",
        "domains": ["coding", "writing", "therapy", "philosophy"], "conversations_per_domain": 1, "turns": 3,
        "max_new_tokens": 48, "user_max_new_tokens": 32, "user_model": "local", "temperature": 0.7, "top_p": 0.9,
        "seed": 0,
    },
    # small by default (every run evaluates capping); files None = the sets shipped beside the Snakefile
    "capping_eval": {
        "jailbreaks": None,
        "harm_rubric": None,
        "mc_file": None,
        "percentiles": None,
        "n_jailbreaks": 24,
        "n_mc": None,
        "mc_scoring": "options",
        "n_perplexity": 32,
        "generation": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32, "seed": 0},
        "batch_size": 24,
        "judge": {"backend": "offline"},  # no model here: make_judge picks the backend's default
        "harm_threshold": 2,
        "max_perplexity_increase": 0.10,
        "max_mc_drop": 0.05,
    },
}
MODEL_DEFAULTS: dict[str, Any] = {"backend": "hf", "dtype": "auto", "device": "auto"}


class ConfigError(ValueError):
    """The pipeline config is invalid; the message names the key and what is expected."""


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(config: dict[str, Any], schema_path: str | Path) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            msg = err.message
            if err.validator == "additionalProperties":
                msg += f" (allowed keys: {', '.join(sorted(err.schema.get('properties', {})))})"
            lines.append(f"config key '{_key_path(err)}': {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    return _merge(DEFAULTS, config)


def model_settings(config: dict[str, Any], run: str) -> dict[str, Any]:
    """Effective settings of one model run: global values overridden by the model's own."""
    if run not in config["models"]:
        raise ConfigError(f"config key 'models': no model run named {run!r}")
    entry = _merge(MODEL_DEFAULTS, config["models"][run])
    for key in ("generation", "judge", "vllm", "capping"):
        entry[key] = _merge(config[key], entry.get(key))
    return entry
