"""Per-role results kept outside the declared outputs, so a killed shard job resumes where it stopped.

Snakemake deletes the declared outputs of a failed job; this cache is not declared, each entry is
written atomically (temporary name, then rename), and an entry's name carries the fingerprint of
everything that produced it, so a changed setting never reuses a stale entry.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import write_parquet

log = logging.getLogger(__name__)


class RoleCache:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, role: str, fp: str) -> Path:
        return self.folder / f"{role}.{fp}.parquet"

    def get(self, role: str, fp: str) -> pa.Table | None:
        path = self.path(role, fp)
        if not path.exists():
            return None
        try:
            return pq.read_table(path)
        except Exception as exc:  # a corrupt entry is recomputed, never trusted
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None

    def put(self, role: str, fp: str, table: pa.Table) -> None:
        write_parquet(self.path(role, fp), table)
        for stale in self.folder.glob(f"{role}.*.parquet"):
            if stale.name != self.path(role, fp).name:
                stale.unlink(missing_ok=True)
