"""File input and output: atomic writers, and strict readers that fail in one line.

A job killed half-way must never leave a file that a rerun (or Snakemake) would trust, so all
writers in this package go through :func:`atomic_path`, which yields a temporary sibling path and
renames it onto the target only when the block finishes without an exception.

Every file the project reads goes through the readers at the end of this module (:func:`read_text`,
:func:`read_json`, :func:`read_jsonl`, :func:`load_safetensors`, :func:`torch_load_safe`) and the
tensor check :func:`check_tensor`. A malformed input (bad encoding, duplicated key, NaN, huge file,
pickle with code, zero vector, wrong shape...) raises :class:`InputError`, whose message is one
line naming the file, the field and the fix: the CLI and the Snakefile print it instead of a
traceback, and nothing bad is accepted silently (a NaN or all-zero axis would otherwise turn every
projection into NaN or make capping a no-op with exit code 0).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

# Text inputs (JSON, JSONL, YAML, rubrics) larger than this are refused before being read: the
# legitimate ones are at most a few MB; a runaway file is a mistake, not data. Tensor files have no limit.
MAX_INPUT_BYTES = 256 * 1024 * 1024


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


class InputError(ValueError):
    """A file the project reads is malformed; ``str()`` is one line naming the file, the field and the fix.

    A ``ValueError`` so existing ``except ValueError`` handlers (and the CLI's) keep catching it;
    ``file``, ``field`` and ``fix`` stay available for callers that re-word or re-raise it.
    """

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str, fix: str) -> None:
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        where = f"{file}: {field}" if field else str(file)
        super().__init__(_one_line(f"{where}: {problem}; {fix}"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(file: Any, field: str, problem: str, fix: str) -> NoReturn:
    raise InputError(file, field, problem, fix)


def read_bytes(path: str | os.PathLike[str], fix: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes; missing, a folder, empty or larger than ``max_bytes`` (default :data:`MAX_INPUT_BYTES`) is an :class:`InputError`."""
    path = Path(path)
    limit = MAX_INPUT_BYTES if max_bytes is None else max_bytes
    if not path.exists():
        _fail(path, "", "no such file", fix)
    if not path.is_file():
        _fail(path, "", "is a folder, not a file", fix)
    size = path.stat().st_size
    if size > limit:
        _fail(path, "", f"is {size} bytes, more than the {limit} accepted (a runaway or wrong file)", fix)
    if size == 0:
        _fail(path, "", "is empty", fix)
    return path.read_bytes()


def read_text(path: str | os.PathLike[str], fix: str, max_bytes: int | None = None) -> str:
    """The file as UTF-8 text (a leading BOM dropped); bad bytes name the line, and an empty or blank file is refused."""
    path = Path(path)
    raw = read_bytes(path, fix, max_bytes)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        _fail(path, f"line {line}", f"byte 0x{raw[exc.start]:02x} is not valid UTF-8", "save the file as UTF-8")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        _fail(path, f"line {line}", "contains a NUL character (a binary file?)", fix)
    if not text.strip():
        _fail(path, "", "holds only whitespace", fix)
    return text


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_constant(name: str) -> Any:
    raise _BadNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(text if len(text) <= 30 else text[:27] + "...")
    return value


class _BadNumber(Exception):
    def __init__(self, text: str) -> None:
        self.text = text


def parse_json(text: str, source: str | os.PathLike[str], fix: str, where: str = "") -> Any:
    """Parse JSON strictly: duplicated keys, NaN/Infinity and numbers too big for a float are refused."""
    prefix = f"{where}, " if where else ""
    try:
        return json.loads(text, object_pairs_hook=_strict_pairs, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if where else f"line {exc.lineno}, column {exc.colno}"
        _fail(source, where, f"not valid JSON ({at}: {exc.msg})", fix)
    except _DuplicateKey as exc:
        _fail(source, f"{prefix}field {exc.key!r}", "appears twice in one object (the second would silently win)", "keep one entry")
    except _BadNumber as exc:
        _fail(source, f"{prefix}number {exc.text}", "is not a finite number (NaN, Infinity or too large)", "write a finite number")
    except RecursionError:
        _fail(source, where, "is nested too deeply", fix)


def read_json(path: str | os.PathLike[str], fix: str, max_bytes: int | None = None) -> Any:
    """A JSON file read strictly (:func:`read_text` then :func:`parse_json`)."""
    return parse_json(read_text(path, fix, max_bytes), path, fix)


def read_jsonl(path: str | os.PathLike[str], fix: str, max_bytes: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file; each line must be an object."""
    rows = []
    for n, line in enumerate(read_text(path, fix, max_bytes).splitlines(), 1):
        if not line.strip():
            continue
        obj = parse_json(line, f"{path}:{n}", fix)  # errors name the file as path:line
        if not isinstance(obj, dict):
            _fail(f"{path}:{n}", "", f"is a JSON {type(obj).__name__}, not an object", fix)
        rows.append((n, obj))
    return rows


def load_safetensors(path: str | os.PathLike[str], fix: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a truncated or foreign file is an :class:`InputError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    read_bytes_check(path, fix)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        _fail(path, "", f"is not a readable safetensors file ({type(exc).__name__}: {exc})", fix)
    return tensors, metadata


def read_bytes_check(path: Path, fix: str) -> None:
    """Existence and emptiness checks of :func:`read_bytes` without reading the file (binary inputs).

    No size limit here: a paper-sized ``role_vectors.safetensors`` (276 roles x 80 layers x 8192)
    is legitimately most of a gigabyte, and tensor files are memory-mapped, not parsed as text.
    """
    if not path.exists():
        _fail(path, "", "no such file", fix)
    if not path.is_file():
        _fail(path, "", "is a folder, not a file", fix)
    if path.stat().st_size == 0:
        _fail(path, "", "is empty", fix)


def torch_load_safe(path: str | os.PathLike[str], fix: str = "re-save the file with plain types (tensors, dicts, lists, numbers, strings)") -> Any:
    """Load a ``.pt`` file without executing pickled code (``weights_only=True``, never anything else).

    A pickle that would run code (or reference any class) is refused in one line, as is a file
    that is not a torch file at all.
    """
    import torch

    path = Path(path)
    read_bytes_check(path, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError/EOFError for foreign or truncated files
        first = _one_line(str(exc).split("\n")[0])[:160]
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "GLOBAL" in str(exc):
            problem = f"holds pickled objects or code that weights_only=True refuses ({first})"
        else:
            problem = f"is not a loadable torch file ({type(exc).__name__}: {first})"
        _fail(path, "(pickle)", problem, "only tensors, dicts, lists, numbers and strings are accepted; " + fix)


def check_tensor(
    value: Any, source: str | os.PathLike[str], field: str, ndim: int, fix: str, *,
    shape: tuple[int | None, ...] | None = None, nonzero: bool = False,
) -> Any:
    """``value`` if it is a finite floating tensor of ``ndim`` dimensions, else a one-line :class:`InputError`.

    ``shape`` (``None`` entries free) is the expected shape, e.g. ``(n_layers, hidden)``;
    ``nonzero`` refuses an all-zero tensor, whose direction is undefined (a zero axis projects
    everything to 0, a zero capping vector makes capping a silent no-op). Loaded files are checked
    before use so a truncated or corrupted vector never silently turns results into NaN.
    """
    import torch

    if not isinstance(value, torch.Tensor):
        _fail(source, f"field {field!r}", f"is {type(value).__name__}, not a tensor", fix)
    if value.ndim != ndim or not value.is_floating_point():
        _fail(source, f"field {field!r}", f"has shape {tuple(value.shape)} and dtype {value.dtype}; expected a {ndim}-D floating tensor", fix)
    if shape is not None:
        for got, want, what in zip(value.shape, shape, ("layers", "hidden size") if ndim == 2 else ("hidden size",), strict=False):
            if want is not None and got != want:
                _fail(source, f"field {field!r}", f"has shape {tuple(value.shape)}: {got} {what} where {want} are expected", fix)
    if value.numel() == 0:
        _fail(source, f"field {field!r}", f"is empty (shape {tuple(value.shape)})", fix)
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        _fail(source, f"field {field!r}", f"has {int((~finite).sum())} non-finite values (NaN or inf)", fix)
    if nonzero and not bool((value != 0).any()):
        _fail(source, f"field {field!r}", "is all zeros (zero norm: no direction)", fix)
    return value
