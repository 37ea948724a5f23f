"""Stage ``judge``: every role-play response of a shard scored for role adherence (0-3; missing stays missing)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..judges import JudgeItem, make_judge
from ..roles import DEFAULT_ROLE, load_roles
from ..storage import write_parquet

log = logging.getLogger(__name__)

SCORE_SCHEMA = pa.schema([("key", pa.string()), ("role", pa.string()), ("score", pa.int8()), ("raw", pa.string())])


def judge_shard(*, responses: str, roles_dir: str, judge: dict[str, Any], cache_path: str, output: str) -> None:
    """Scores for the role-play responses of a shard; default responses need no judge and are skipped."""
    rows = pq.read_table(responses).to_pylist()
    roles = sorted({r["role"] for r in rows} - {DEFAULT_ROLE})
    role_defs = load_roles(roles_dir, roles) if roles else {}
    items = [
        JudgeItem(r["key"], role_defs[r["role"]].judge_prompt(r["question"], r["response"]))
        for r in rows
        if r["role"] != DEFAULT_ROLE
    ]
    judge_impl = make_judge(judge, cache_path)
    verdicts = judge_impl.judge(items) if items else []
    by_key = {v.key: v for v in verdicts}
    out_rows = [
        {"key": r["key"], "role": r["role"], "score": by_key[r["key"]].score, "raw": by_key[r["key"]].raw}
        for r in rows
        if r["role"] != DEFAULT_ROLE
    ]
    missing = sum(1 for r in out_rows if r["score"] is None)
    if missing:
        log.warning("score: %d of %d replies did not parse to 0-3 and are kept as missing", missing, len(out_rows))
    table = pa.Table.from_pylist(out_rows, schema=SCORE_SCHEMA)
    meta = {"judge_backend": judge_impl.backend, "judge_model": judge_impl.model, "missing": str(missing)}
    write_parquet(Path(output), table.replace_schema_metadata(meta))
