"""Resume from a cache of finished work units: the one routine behind every resumable stage.

A heavy stage (generation, extraction, capping evaluation) works through *units* - a role, an
experiment - computed in *groups* that share one batch or one model load. Each finished unit is
written to a cache folder outside the stage's declared outputs (Snakemake deletes those when a job
fails), atomically, under a name carrying the fingerprint of everything that produced it. A killed
job therefore resumes at the first unfinished group, and a changed setting never reuses a stale
entry. An entry is replaced only when its own unit is recomputed with other inputs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import write_parquet

log = logging.getLogger(__name__)

SUFFIX = ".parquet"

# TEST-ONLY: seconds to sleep after each finished unit is cached. The kill-and-resume tests set it
# so they can SIGKILL a job at a known point (k units cached, the next not started); never set it
# in a real run - it only slows the job down.
TEST_UNIT_DELAY_ENV = "ASSISTANT_AXIS_TEST_UNIT_DELAY"


def pause_after_unit_for_tests() -> None:
    """Sleep ``$ASSISTANT_AXIS_TEST_UNIT_DELAY`` seconds when set (test-only; see above)."""
    delay = os.environ.get(TEST_UNIT_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


class UnitCache:
    """Parquet tables of finished units, named ``<unit>.<fingerprint>.parquet`` in one folder."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, unit: str, fp: str) -> Path:
        return self.folder / f"{unit}.{fp}{SUFFIX}"

    def get(self, unit: str, fp: str) -> pa.Table | None:
        path = self.path(unit, fp)
        if not path.exists():
            return None
        try:
            return pq.read_table(path)
        except Exception as exc:  # a corrupt entry is recomputed, never trusted
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None

    def put(self, unit: str, fp: str, table: pa.Table) -> None:
        """Store ``unit``'s table and drop the unit's own older entries (other fingerprints of it only)."""
        target = self.path(unit, fp)
        write_parquet(target, table)
        for old in self.folder.glob(f"*{SUFFIX}"):
            name, _, old_fp = old.name[: -len(SUFFIX)].rpartition(".")
            if name == unit and old_fp != fp:
                old.unlink(missing_ok=True)


def group_units(units: Sequence[str], sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """Consecutive units packed into groups of at most ``budget`` samples (a unit bigger than that is alone).

    A group is the unit of work and, for generation, of sampling: HF sampling draws from one random
    stream per batch, so a role's texts depend on its batch neighbours, and fixing the groups from
    the shard's role list keeps a resumed run identical.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    count = 0
    for unit in units:
        if current and count + sizes[unit] > budget:
            groups.append(current)
            current, count = [], 0
        current.append(unit)
        count += sizes[unit]
    if current:
        groups.append(current)
    return groups


def resume(
    cache: UnitCache,
    groups: Sequence[Sequence[str]],
    fingerprints: Mapping[str, str],
    compute: Callable[[Sequence[str]], Mapping[str, pa.Table]] | None,
    stage: str,
    compute_all: Callable[[list[Sequence[str]]], Iterable[Mapping[str, pa.Table]]] | None = None,
) -> dict[str, pa.Table]:
    """The table of every unit: from the cache where present, else computed.

    ``fingerprints`` maps each unit to the fingerprint of its inputs. A group is computed when any
    of its units is missing, and each of its units is cached as soon as its result arrives, so a
    killed job loses at most the work in progress. Either ``compute(group) -> {unit: table}`` runs
    group after group, or ``compute_all(unfinished groups)`` gets them all at once (one engine
    serving every group together, e.g. vLLM) and yields ``{unit: table}`` mappings as units finish.
    """
    tables: dict[str, pa.Table] = {}
    todo: list[Sequence[str]] = []
    for group in groups:
        cached = {unit: cache.get(unit, fingerprints[unit]) for unit in group}
        if all(t is not None for t in cached.values()):
            tables.update(cached)  # type: ignore[arg-type]
        else:
            todo.append(group)
    units = sum(len(g) for g in groups)
    log.info("%s: %d units in %d groups, %d groups cached, %d to do", stage, units, len(groups), len(groups) - len(todo), len(todo))
    if not todo:
        return tables
    if compute_all is not None:
        results: Iterable[Mapping[str, pa.Table]] = compute_all(todo)
    elif compute is not None:
        results = (compute(group) for group in todo)
    else:
        raise ValueError("resume needs compute or compute_all")
    wanted = {unit for group in todo for unit in group}
    done = 0
    for computed in results:
        for unit, table in computed.items():
            if unit not in wanted:
                raise RuntimeError(f"{stage}: computation returned a result for {unit!r}, which was not asked for")
            cache.put(unit, fingerprints[unit], table)
            tables[unit] = table
        done += 1
        log.info("%s: %d/%d done (%s)", stage, done, len(todo), ", ".join(computed))
        pause_after_unit_for_tests()
    missing = sorted(wanted - set(tables))
    if missing:
        raise RuntimeError(f"{stage}: group computation returned no result for {missing}")
    return tables
