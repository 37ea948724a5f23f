"""The unit cache behind every resumable stage: entries survive unless their own inputs change."""

from __future__ import annotations

import pyarrow as pa

from assistant_axis.pipeline.cache import UnitCache, group_units, resume


def _table(value: str) -> pa.Table:
    return pa.table({"x": [value]})


def test_caching_a_unit_never_deletes_units_whose_names_extend_it(tmp_path):
    """Regression: caching `pirate` used to delete the finished `pirate.captain` (a name-prefix glob)."""
    cache = UnitCache(tmp_path)
    cache.put("pirate.captain", "aaaa", _table("captain"))
    cache.put("pirate", "bbbb", _table("pirate"))
    cache.put("pirate", "cccc", _table("pirate, new settings"))  # the unit's own old entry goes
    assert cache.get("pirate.captain", "aaaa").column("x").to_pylist() == ["captain"]
    assert cache.get("pirate", "bbbb") is None
    assert cache.get("pirate", "cccc").column("x").to_pylist() == ["pirate, new settings"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pirate.captain.aaaa.parquet", "pirate.cccc.parquet"]


def test_resume_computes_only_groups_with_a_missing_unit(tmp_path):
    cache = UnitCache(tmp_path)
    fps = {"a": "1", "b": "1", "c": "2"}
    calls = []

    def compute(group):
        calls.append(list(group))
        return {u: _table(u) for u in group}

    out = resume(cache, [["a", "b"], ["c"]], fps, compute, "test")
    assert calls == [["a", "b"], ["c"]] and set(out) == {"a", "b", "c"}
    calls.clear()
    (tmp_path / "b.1.parquet").unlink()  # a group with one unit lost is computed again, the other is not
    resume(cache, [["a", "b"], ["c"]], fps, compute, "test")
    assert calls == [["a", "b"]]
    calls.clear()
    resume(cache, [["a", "b"], ["c"]], {**fps, "c": "3"}, compute, "test")  # changed inputs: recomputed
    assert calls == [["c"]]
    (tmp_path / "a.1.parquet").write_bytes(b"not parquet")  # a corrupt entry is recomputed, never trusted
    calls.clear()
    resume(cache, [["a", "b"], ["c"]], {**fps, "c": "3"}, compute, "test")
    assert calls == [["a", "b"]]


def test_group_units_packs_consecutive_units_under_the_budget():
    sizes = {"a": 3, "b": 3, "c": 5, "d": 1}
    assert group_units(list(sizes), sizes, 6) == [["a", "b"], ["c", "d"]]
    assert group_units(list(sizes), sizes, 2) == [["a"], ["b"], ["c"], ["d"]]


def test_resume_with_compute_all_gets_every_unfinished_group_and_caches_as_units_arrive(tmp_path):
    """One engine serving every group: compute_all receives the unfinished groups together, and a
    unit is cached as soon as it is yielded, so an interruption keeps what already finished."""
    cache = UnitCache(tmp_path)
    fps = {"a": "1", "b": "1", "c": "1"}
    cache.put("b", "1", _table("b"))
    calls = []

    def interrupted(todo):
        calls.append([list(g) for g in todo])
        yield {"c": _table("c")}  # groups may finish in any order
        raise KeyboardInterrupt  # killed before group a was done

    try:
        resume(cache, [["a"], ["b"], ["c"]], fps, None, "test", compute_all=interrupted)
    except KeyboardInterrupt:
        pass
    assert calls == [[["a"], ["c"]]]
    assert cache.get("c", "1") is not None and cache.get("a", "1") is None
    calls.clear()

    def finish(todo):
        calls.append([list(g) for g in todo])
        yield {u: _table(u) for g in todo for u in g}

    out = resume(cache, [["a"], ["b"], ["c"]], fps, None, "test", compute_all=finish)
    assert calls == [[["a"]]] and sorted(out) == ["a", "b", "c"]
