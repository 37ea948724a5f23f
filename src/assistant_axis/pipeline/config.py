"""Pipeline configuration: validation with clear errors, defaults from the schema, per-run effective settings.

Defaults live in one place, the schema (``config/config.schema.yaml``): :func:`load_config` fills
every key a config leaves out with the schema's ``default`` (sections given in part are completed
key by key) and validates the result. The Snakefile turns the settings into ``params:``, so a change
to any of them reruns exactly the steps that use it, and only for the run it belongs to.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Sections a run may override for itself (models.<run>.<section>); they replace global values key by key.
RUN_SECTIONS = ("generation", "judge", "vllm", "capping")


class ConfigError(ValueError):
    """The pipeline config is invalid; the message names the key and what is expected."""


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def read_schema(schema_path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(schema_path).read_text())


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _complete(value: dict[str, Any], default: dict[str, Any]) -> None:
    """Add the keys of ``default`` that ``value`` lacks, recursively (given keys always win)."""
    for key, dval in default.items():
        if key not in value:
            value[key] = copy.deepcopy(dval)
        elif isinstance(value[key], dict) and isinstance(dval, dict):
            _complete(value[key], dval)


def fill_defaults(schema: dict[str, Any], node: dict[str, Any], instance: Any) -> None:
    """Fill ``instance`` in place with the ``default`` values ``node`` (a subschema of ``schema``) declares."""
    node = _resolve(schema, node)
    if not isinstance(instance, dict):
        return
    props = node.get("properties", {})
    for key, sub in props.items():
        if key not in instance:
            if "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
        elif isinstance(instance[key], dict) and isinstance(sub.get("default"), dict):
            _complete(instance[key], sub["default"])
        if key in instance:
            fill_defaults(schema, sub, instance[key])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in props:
                fill_defaults(schema, extra, value)


def validate_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
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


def load_config(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """The validated config with every default filled in (a new dict; ``config`` is not changed)."""
    schema = read_schema(schema_path)
    validate_config(config, schema)
    filled = copy.deepcopy(config)
    fill_defaults(schema, schema, filled)
    validate_config(filled, schema)
    return filled


def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def run_settings(config: dict[str, Any], run: str) -> dict[str, Any]:
    """Effective settings of one run (a filled config's ``models.<run>``): global sections overridden by the run's own."""
    if run not in config["models"]:
        raise ConfigError(f"config key 'models': no model run named {run!r}")
    entry = copy.deepcopy(config["models"][run])
    for key in RUN_SECTIONS:
        entry[key] = _merge(config[key], entry.get(key))
    return entry
