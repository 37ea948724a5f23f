"""Atomic file output: every result is written to a temporary name and renamed into place.

A job killed half-way must never leave a file that a rerun (or Snakemake) would trust, so all
writers in this package go through :func:`atomic_path`, which yields a temporary sibling path and
renames it onto the target only when the block finishes without an exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_parquet(target: str | os.PathLike[str], table: Any) -> None:
    """Write a pyarrow Table (or pandas DataFrame) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def save_safetensors(target: str | os.PathLike[str], tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def torch_save(target: str | os.PathLike[str], obj: Any) -> None:
    """Save a reference-format ``.pt`` file (tensors, dicts, lists, numbers, strings only)."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def torch_load_safe(path: str | os.PathLike[str]) -> Any:
    """Load a ``.pt`` file without executing pickled code (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and friends
        raise ValueError(
            f"{path}: cannot be loaded safely with weights_only=True ({type(exc).__name__}). "
            "Only tensors, dicts, lists, numbers and strings are accepted; re-save the file with plain types."
        ) from exc


def check_tensor(value: Any, source: str, field: str, ndim: int, fix: str) -> Any:
    """``value`` if it is a finite floating tensor of ``ndim`` dimensions, else a one-line ``ValueError``.

    The message names the file (``source``), the field and the ``fix``: loaded files are checked
    before use so a truncated or corrupted vector never silently turns results into NaN.
    """
    import torch

    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{source}: field {field!r} is {type(value).__name__}, not a tensor; {fix}")
    if value.ndim != ndim or not value.is_floating_point():
        raise ValueError(
            f"{source}: field {field!r} has shape {tuple(value.shape)} and dtype {value.dtype}; "
            f"expected a {ndim}-D floating tensor; {fix}"
        )
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        raise ValueError(f"{source}: field {field!r} has {int((~finite).sum())} non-finite values (NaN or inf); {fix}")
    return value
