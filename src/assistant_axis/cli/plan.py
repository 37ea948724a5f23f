"""``assistant-axis plan``: what a pipeline config will do and cost, before any job or download.

Checks the config exactly as the Snakefile does (schema, each run against its model's layers,
role and question files, model references) and prints, per model: responses, generated and
forward tokens, judge calls and their estimated cost, activation storage on disk, GPU memory per
stage, the SLURM resources each rule asks for, and estimated GPU-hours with the throughput
assumptions stated. Model facts come from the built-in table or a config.json, never from
weights, so planning the paper's 27-70B models takes a second and needs no network.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..pipeline.config import merge_config, read_config_file
from ..pipeline.plan import format_plan, plan_as_dict, prepare

# The workflow folder (Snakefile, config/, resources/) of a source checkout: src/assistant_axis/cli/ -> repo root.
WORKFLOW_DIR = Path(__file__).resolve().parents[3]


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="check a pipeline config and print its plan: work, cost, disk, GPUs, SLURM resources",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", nargs="+", default=None, metavar="FILE",
                   help="config file(s), merged in order like snakemake --configfile (default: config/config.yaml)")
    p.add_argument("--directory", "-d", default=None,
                   help="working folder that relative paths in the config refer to (as snakemake --directory; default: .)")
    p.add_argument("--workflow-dir", default=str(WORKFLOW_DIR),
                   help="folder holding config/config.schema.yaml and the shipped resources/ (default: this checkout)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    p.set_defaults(func=run)


def load_configs(files: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        config = merge_config(config, read_config_file(path))  # strict: UTF-8, YAML, mapping, no repeated key
    return config


def run(args: argparse.Namespace) -> int:
    workflow_dir = Path(args.workflow_dir).resolve()
    schema = workflow_dir / "config" / "config.schema.yaml"
    if not schema.is_file():
        raise FileNotFoundError(f"{schema}: the config schema is missing; pass --workflow-dir with the repository's folder")
    files = args.configfile or ["config/config.yaml"]
    if args.directory:
        files = [str(Path(f).resolve()) for f in files]
        os.chdir(args.directory)
    prepared = prepare(load_configs(files), schema, workflow_dir, files)
    if args.json:
        print(json.dumps(plan_as_dict(prepared.plan), indent=2, default=str))
    else:
        print(format_plan(prepared.plan))
    return 0
