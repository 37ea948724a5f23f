"""SQLite verdict cache: one row per (backend, model, prompt hash), so no judge call is paid twice.

SQLite in WAL mode lets several processes (parallel pipeline jobs) read and write the same file,
and each committed row survives a crash of the writer. ``INSERT OR IGNORE`` keeps the first
verdict for a key, so two processes racing on one item never end up with two different scores.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    score INTEGER,
    raw TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (backend, model, prompt_sha256)
)
"""
_CHUNK = 500  # stays below SQLite's limit on bound parameters per statement


class VerdictCache:
    """Verdicts keyed by backend + model + sha256(prompt); ``score`` NULL = reply did not parse."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable across process crashes (the case that matters here), cheaper commits
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, backend: str, model: str, hashes: Sequence[str]) -> dict[str, tuple[int | None, str | None]]:
        """``{hash: (score, raw)}`` for those of ``hashes`` that are cached."""
        unique = list(dict.fromkeys(hashes))
        found: dict[str, tuple[int | None, str | None]] = {}
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT prompt_sha256, score, raw FROM verdicts WHERE backend=? AND model=? AND prompt_sha256 IN ({marks})",
                [backend, model, *chunk],
            )
            found.update({h: (score, raw) for h, score, raw in rows})
        return found

    def put_many(self, backend: str, model: str, rows: Sequence[tuple[str, int | None, str | None]]) -> None:
        """Store ``(hash, score, raw)`` rows in one transaction; an existing row for a key is kept."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO verdicts (backend, model, prompt_sha256, score, raw, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(backend, model, h, score, raw, now) for h, score, raw in rows],
            )

    def count(self, backend: str | None = None, model: str | None = None) -> int:
        """Number of cached verdicts, optionally for one backend/model (used in reports and tests)."""
        sql, args = "SELECT COUNT(*) FROM verdicts WHERE 1=1", []
        if backend is not None:
            sql, args = sql + " AND backend=?", [*args, backend]
        if model is not None:
            sql, args = sql + " AND model=?", [*args, model]
        return int(self._db.execute(sql, args).fetchone()[0])

    def close(self) -> None:
        self._db.close()
