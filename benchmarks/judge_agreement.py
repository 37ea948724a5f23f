"""Agreement of each offline judge with the hand-labelled validation set.

Why: the pipeline's default judge decides which responses build the role vectors, so it should be
the judge that agrees best with a person reading the responses. This scores every response of
``resources/judge_validation/labels.jsonl`` with each judge that needs no network (``offline`` /
``heuristic-v2`` and ``local`` with the embedded SmolLM2-135M-Instruct), prints accuracy, Cohen's
kappa (unweighted and quadratic) and the confusion matrix against both readings of the labels
(the rubric as written, and "3 needs a visible trace of the character"), and writes the numbers
to ``resources/judge_validation/agreement.json`` so the README and the tests quote the same run.

Run: ``.venv/bin/python benchmarks/judge_agreement.py`` (a few minutes on 2 cores, nearly all of
it the local judge; ``--skip-local`` for the heuristic alone, keeping the stored local numbers).
Verdicts are cached in a temporary SQLite file, never in ``results/``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from assistant_axis.judges import make_judge
from assistant_axis.judges.offline import MODEL as HEURISTIC
from assistant_axis.judges.validation import agreement, character_required_label, judge_items, load_labels
from assistant_axis.roles import load_roles

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "resources/judge_validation/labels.jsonl"
OUT = ROOT / "resources/judge_validation/agreement.json"
JUDGES: dict[str, dict[str, Any]] = {
    f"offline/{HEURISTIC}": {"backend": "offline", "model": HEURISTIC},
    "local/smollm2-135m-instruct": {
        "backend": "local", "model": "embedded:smollm2-135m-instruct", "dtype": "float32", "device": "cpu",
        "batch_size": 8,
    },
}
READINGS = ("rubric", "character_required")


def table(record: dict[str, Any], reading: str) -> str:
    """Markdown table of one label reading, from the ``judges`` part of ``agreement.json``."""
    lines = [
        "| judge | n | missing | accuracy | kappa | quadratic kappa | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in record.items():
        a = entry[reading]
        lines.append(
            f"| {name} | {a['n']} | {a['missing']} | {a['accuracy']:.3f} | {a['kappa']:.3f} | "
            f"{a['kappa_quadratic']:.3f} | {entry['seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Score the set with every judge (or the heuristic only) and write ``agreement.json``."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-local", action="store_true", help="keep the stored local-judge numbers")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = load_labels(LABELS)
    roles = load_roles(ROOT / "resources/roles", sorted({r.judge_prompt_role for r in rows}))
    items = judge_items(rows, roles)
    truth = {"rubric": [r.label for r in rows], "character_required": [character_required_label(r) for r in rows]}
    stored = json.loads(OUT.read_text()) if OUT.exists() else {"judges": {}}
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in JUDGES.items():
            if args.skip_local and cfg["backend"] == "local":
                if name in stored["judges"]:
                    record[name] = stored["judges"][name]
                continue
            start = time.perf_counter()
            verdicts = make_judge(cfg, Path(tmp) / "cache.sqlite").judge(items)
            seconds = time.perf_counter() - start
            scores = [v.score for v in verdicts]
            record[name] = {
                "config": cfg, "seconds": round(seconds, 1),
                **{k: agreement(truth[k], scores).as_dict() for k in READINGS},
            }
    counts = {k: [truth[k].count(c) for c in range(4)] for k in READINGS}
    OUT.write_text(json.dumps({"n": len(rows), "label_counts": counts, "judges": record}, indent=2) + "\n")
    print(f"{len(rows)} labelled responses; label counts 0-3: {counts}\n")
    for reading in READINGS:
        print(f"### labels: {reading}\n\n{table(record, reading)}\n")
        for name, entry in record.items():
            print(f"{name} confusion (rows = label 0-3, columns = judge 0-3): {entry[reading]['confusion']}")
        print()
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
