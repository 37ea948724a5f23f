"""The ``assistant-axis`` command: one entry point, one module per subcommand (each with a ``register`` function)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that add subcommands: each exposes ``register(subparsers)`` and sets ``func`` on its parser.
COMMAND_MODULES: list[str] = [
    "assistant_axis.cli.project",
    "assistant_axis.cli.chat",
    "assistant_axis.cli.generate",
    "assistant_axis.cli.plan",
    "assistant_axis.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assistant-axis",
        description="Project conversations on the Assistant Axis, chat while watching it, generate with capping, "
        "plan a pipeline run. The axis itself is computed by the Snakemake pipeline (see README.md).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        # one line, no traceback: every reader names the file, the field and the fix (storage.InputError)
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"assistant-axis {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
