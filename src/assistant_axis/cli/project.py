"""``assistant-axis project``: per-turn Assistant-axis projections of a saved conversation."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Any

from ..storage import write_json, write_text

log = logging.getLogger(__name__)

DESCRIPTION = """\
Project every assistant turn of a conversation on the Assistant axis: the mean block output over
the reply's tokens at the target layer (and every layer with --all-layers), measured on the
conversation up to that turn. Higher = more Assistant-like.

The axis comes from exactly one of --axis FILE (.safetensors or reference .pt; the model is then
--model, default the embedded SmolLM2) or --run NAME (results/NAME/axis/axis.safetensors; the
run's model/model.json names the model, and the axis records the run's target layer).
Conversations longer than the model's context (or --max-tokens) are windowed per turn: the system
prompt plus as many whole recent turns as fit; the output's 'windowed' column says which turns were.

Reads a JSON list of {"role","content"} messages or a reference transcript
({"model","turns","conversation":[...]}, with or without steering_config/auditor fields), or a
list of such transcripts with --index N (the drift stage's transcripts.json).
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "project", help="per-turn Assistant-axis projections of a conversation file",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("conversation", help="transcript JSON file")
    p.add_argument("--index", type=int, help="which transcript of a list of transcripts (e.g. drift/transcripts.json), 0-based")
    src = p.add_argument_group("axis (exactly one)")
    src.add_argument("--axis", help="axis file (.safetensors or .pt)")
    src.add_argument("--run", help="pipeline run name: uses results/RUN/axis/axis.safetensors and model/model.json")
    p.add_argument("--results-dir", default="results", help="where pipeline runs live (default: results)")
    p.add_argument("--model", help="model spec (default: the run's model, else embedded:smollm2-135m-instruct)")
    p.add_argument("--layer", type=int, help="layer to report (default: the model's target layer)")
    p.add_argument("--all-layers", action="store_true", help="also add one column per layer (layer_000...)")
    p.add_argument("--max-tokens", type=int, help="context budget for windowing (default: the model's context length)")
    p.add_argument("--capping-config", help="measure with activation capping on (.safetensors or reference .pt)")
    p.add_argument("--experiment", help="capping experiment id (default: the config's recommended or first one)")
    p.add_argument("--out-csv", help="write the per-turn table as CSV")
    p.add_argument("--out-json", help="write the per-turn table and its settings as JSON")
    p.add_argument("--plot", help="write the trajectory as a PNG")
    p.add_argument("--dtype", default="auto", help="model dtype (auto = bfloat16 on GPUs and CPUs with native bf16, else float32; float32 for exact comparisons)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..capping import CappingConfig
    from ..models import DEFAULT_MODEL, describe_model, load_model
    from ..monitor import default_max_tokens, project_conversation
    from ..plots import trajectory_plot
    from ..steering import build_capping_steerer
    from ..transcripts import load_transcript
    from .common import check_axis_fits, check_capping_fits, resolve_axis

    transcript = load_transcript(args.conversation, args.index)
    source = resolve_axis(args.axis, args.run, args.results_dir)
    spec = args.model or source.model or DEFAULT_MODEL
    layer = args.layer if args.layer is not None else source.target_layer
    facts = describe_model(spec)
    if layer is None:
        layer = facts.target_layer
    check_axis_fits(source, spec, layer, facts)
    preloaded = CappingConfig.load(args.capping_config) if args.capping_config else None
    if preloaded is not None:
        check_capping_fits(preloaded, args.capping_config, spec, facts)
    if transcript.model and transcript.model != spec:
        log.info("%s was written by %s; measuring it with %s", args.conversation, transcript.model, spec)
    model, tokenizer = load_model(spec, dtype=args.dtype, device=args.device)
    max_tokens = args.max_tokens or default_max_tokens(model)
    capping: dict[str, Any] | None = None
    steerer = None
    floor = None
    if args.capping_config:
        config = preloaded  # checked above, before loading the model; the file's first-token policy applies
        exp_id = args.experiment or config.recommended or config.experiments[0].id
        steerer = build_capping_steerer(model, config, exp_id)
        capping = {"config": args.capping_config, "experiment_id": exp_id, "layers": config.get(exp_id).layers}
        floor = next((c.floor for c in config.get(exp_id).caps if c.layer == layer), None)
    elif args.experiment:
        raise ValueError("--experiment needs --capping-config")
    with steerer if steerer is not None else contextlib.nullcontext():
        table = project_conversation(
            model, tokenizer, transcript.messages, source.axis.to(torch.float32), layer,
            all_layers=args.all_layers, max_tokens=max_tokens,
        )
    print(table[["turn", "n_tokens", "context_tokens", "windowed", "projection"]].to_string(index=False))
    if args.out_csv:
        write_text(args.out_csv, table.to_csv(index=False))
    if args.out_json:
        write_json(args.out_json, {
            "source": str(args.conversation),
            "model": spec,
            "axis": str(source.path),
            "layer": layer,
            "max_tokens": max_tokens,
            "capping": capping,
            "windowed_turns": [int(t) for t in table.loc[table["windowed"], "turn"]],
            "rows": table.astype(object).where(table.notna(), None).to_dict(orient="records"),  # NaN -> null
        })
    if args.plot:
        trajectory_plot(table, args.plot, layer, title=f"{Path(args.conversation).name} ({spec})", floor=floor)
    return 0
