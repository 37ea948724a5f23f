"""Glue for ``workflow/scripts``: logging into the rule's log file, CPU threads, then the stage."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any


def run_stage(snakemake: Any, stage: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``stage(**kwargs)`` with logging sent to the rule's ``log:`` file (and stderr)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        open(snakemake.log[0], "w").close()  # a fresh log per run of the job
        # append mode: a handler some library closes (vLLM's logging.config.dictConfig closes every
        # existing handler) reopens at the next message instead of dropping the rest of the log
        handlers.append(logging.FileHandler(snakemake.log[0], mode="a"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    try:
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))
    except ImportError:
        pass
    try:
        return stage(**kwargs)
    except Exception:
        logging.getLogger(stage.__module__).exception("%s failed", stage.__name__)
        raise
