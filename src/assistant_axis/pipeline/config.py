"""Pipeline configuration: validation with clear errors, defaults from the schema, per-run effective settings.

Defaults live in one place, the schema (``config/config.schema.yaml``): :func:`load_config` fills
every key a config leaves out with the schema's ``default`` (sections given in part are completed
key by key) and validates the result. The Snakefile turns the settings into ``params:``, so a change
to any of them reruns exactly the steps that use it, and only for the run it belongs to.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Sections a run may override for itself (models.<run>.<section>); they replace global values key by key.
RUN_SECTIONS = ("generation", "judge", "vllm", "capping", "extraction")


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


def _numbers(node: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every float in a config with its dotted key path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(node, float):
        yield path, node


def reject_non_finite(config: dict[str, Any]) -> None:
    """NaN and infinity pass JSON-schema range checks (every comparison with NaN is false): refuse them here."""
    for path, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{path}': {value} is not a finite number; write a number")


def validate_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    reject_non_finite(config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            msg = err.message
            if err.validator == "additionalProperties":
                msg += f" (allowed keys: {', '.join(sorted(err.schema.get('properties', {})))})"
            lines.append(f"config key '{_key_path(err)}': {msg}")
        raise ConfigError("\n".join(lines))


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


def merge_config(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """``over`` laid on ``base`` (nested sections key by key), as Snakemake merges several ``--configfile`` s."""
    return _merge(base, over)


def run_settings(config: dict[str, Any], run: str) -> dict[str, Any]:
    """Effective settings of one run (a filled config's ``models.<run>``): global sections overridden by the run's own."""
    if run not in config["models"]:
        raise ConfigError(f"config key 'models': no model run named {run!r}")
    entry = copy.deepcopy(config["models"][run])
    for key in RUN_SECTIONS:
        entry[key] = _merge(config[key], entry.get(key))
    # vLLM shards the model over the run's GPUs unless the config sets its own tensor parallelism
    # (with one GPU vLLM's own default, 1, applies and the setting stays out of the params)
    if entry.get("gpus", 1) > 1:
        entry["vllm"].setdefault("tensor_parallel_size", entry["gpus"])
    return entry


def run_windows(settings: dict[str, Any], total_layers: int) -> list[list[int]]:
    """A run's capping windows: as configured, or (null) derived from the model's depth; none when capping is off."""
    from ..models import default_windows

    capping = settings["capping"]
    if not capping.get("enabled", True):
        return []
    windows = capping["windows"]
    return [list(w) for w in (windows if windows is not None else default_windows(total_layers))]


def stored_layers(settings: dict[str, Any], total_layers: int) -> list[int]:
    """The layers whose activations extraction stores (``extraction.layers``, null = all), sorted."""
    chosen = settings["extraction"].get("layers")
    return list(range(total_layers)) if chosen is None else sorted(int(x) for x in chosen)


def resolve_run(config: dict[str, Any], run: str, facts: Any) -> dict[str, Any]:
    """A run's settings with what the model decides filled in: the target layer (default: the
    model's) and the capping windows (null: derived from the layer count; ``[]`` when
    ``capping.enabled`` is false). ``facts`` is the run's :class:`assistant_axis.models.ModelFacts`.
    """
    settings = run_settings(config, run)
    settings.setdefault("target_layer", facts.target_layer)
    settings["capping"]["windows"] = run_windows(settings, facts.total_layers)
    return settings


def check_run(config: dict[str, Any], run: str, settings: dict[str, Any], facts: Any) -> None:
    """Check one run's settings (from :func:`resolve_run`) against its model's facts (layers, heads), before any job.

    ``facts`` is the run's :class:`assistant_axis.models.ModelFacts`. Raises :class:`ConfigError`
    naming the key: target layer and capping windows inside the model's layers, stored layers
    covering both, tensor parallelism that divides the attention heads, capping-evaluation
    percentiles among the calibrated ones, and a ``min_count`` a role can reach.
    """
    layers = facts.total_layers
    key = f"models.{run}"
    target = settings["target_layer"]
    if not 0 <= target < layers:
        raise ConfigError(
            f"config key '{key}.target_layer': {target} is outside the {layers} layers of {facts.name} (0-{layers - 1})"
        )
    windows = settings["capping"]["windows"]
    where = f"{key}.capping.windows" if "windows" in config["models"][run].get("capping", {}) else "capping.windows"
    for start, stop in windows:
        if not 0 <= start < stop <= layers:
            raise ConfigError(
                f"config key '{where}': window [{start}, {stop}] does not fit the {layers} layers of {facts.name} "
                f"(half-open ranges [start, stop) with 0 <= start < stop <= {layers})"
            )
    stored = stored_layers(settings, layers)
    where = f"{key}.extraction.layers" if "layers" in config["models"][run].get("extraction", {}) else "extraction.layers"
    outside = [x for x in stored if not 0 <= x < layers]
    if outside:
        raise ConfigError(f"config key '{where}': layers {outside} are outside the {layers} layers of {facts.name}")
    needed = sorted({target, *(layer for start, stop in windows for layer in range(start, stop))} - set(stored))
    if needed:
        raise ConfigError(
            f"config key '{where}': layers {needed} are not stored but the target layer and the capping windows "
            "need them; add them to the list (or null = every layer)"
        )
    from ..models import resolve_backend

    if resolve_backend(settings["backend"], warn=lambda _msg: None) == "vllm":
        tp = int(settings["vllm"].get("tensor_parallel_size", 1))
        for dim in ("num_attention_heads", "num_key_value_heads"):
            heads = facts.dims.get(dim)
            if heads and int(heads) % tp and not (dim == "num_key_value_heads" and tp % int(heads) == 0):
                raise ConfigError(
                    f"config key '{key}.gpus': vLLM's tensor_parallel_size {tp} must divide the model's "
                    f"{dim} ({heads}); pick another GPU count or set {key}.vllm.tensor_parallel_size"
                )
    evaluated = config["capping_eval"].get("percentiles")
    calibrated = settings["capping"]["percentiles"]
    if windows and evaluated:
        missing = [p for p in evaluated if not any(math.isclose(p, c) for c in calibrated)]
        if missing:
            raise ConfigError(
                f"config key 'capping_eval.percentiles': {missing} are not among run {run}'s calibrated "
                f"percentiles {calibrated} (config key 'capping.percentiles')"
            )
    per_role = config["prompts_per_role"] * config["questions_per_role"]
    if config["role_vectors"]["min_count"] > per_role:
        raise ConfigError(
            f"config key 'role_vectors.min_count': {config['role_vectors']['min_count']} is more than the {per_role} "
            "responses a role gets (prompts_per_role x questions_per_role): no role vector could be built"
        )


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (plain YAML keeps the last silently)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: config key '{key}' appears twice in one section; keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One YAML config file read strictly: UTF-8, valid YAML, a mapping at the top, no duplicated key.

    Raises :class:`ConfigError` in one line naming the file, the line or key, and the fix. The
    Snakefile calls it on every ``--configfile`` (Snakemake's own reader lets a repeated key win silently).
    """
    from ..storage import InputError, read_text

    path = Path(path)
    try:
        text = read_text(path, "write the config as a YAML mapping of config keys (see config/config.yaml)")
    except InputError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}: not valid YAML ({problem}); fix the syntax (indentation, quotes, colons)") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): is a {type(data).__name__}, not a mapping of config keys; see config/config.yaml")
    return data


def check_config_files(files: list[str] | tuple[str, ...]) -> str | None:
    """The first problem of the config files (one line), or None: for the Snakefile, which exits on it."""
    for name in files:
        try:
            read_config_file(name)
        except ConfigError as exc:
            return str(exc)
    return None
