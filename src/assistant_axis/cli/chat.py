"""``assistant-axis chat``: talk to the model in a terminal and watch each reply's Assistant-axis projection.

Every reply is measured the way ``assistant-axis project`` measures a saved conversation (same
function, same windowing), with capping - when it is on - active both while the reply is written
and while it is measured. ``/save`` writes a transcript that ``project`` reads back.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SPARK = "▁▂▃▄▅▆▇█"
HELP = """commands:
  /cap on|off   switch activation capping (needs --capping-config)
  /cap          show whether capping is on
  /save FILE    save the conversation (JSON that `assistant-axis project` reads)
  /reset        start a new conversation
  /help         this text
  /quit         leave (Ctrl-D too)"""

DESCRIPTION = """\
Chat with a model in the terminal. After each reply the projection of that reply on the Assistant
axis (mean over its tokens at the target layer; higher = more Assistant-like) is shown as a number,
a bar within the range seen so far, the change from the previous turn and a sparkline of the whole
conversation. The axis comes from --axis FILE or --run NAME (results/NAME/axis/axis.safetensors; the
run's model/model.json names the model, and the axis records the run's target layer).

""" + HELP


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "chat", help="interactive chat that shows each reply's Assistant-axis projection",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("axis (exactly one)")
    src.add_argument("--axis", help="axis file (.safetensors or .pt)")
    src.add_argument("--run", help="pipeline run name: uses results/RUN/axis/axis.safetensors and model/model.json")
    p.add_argument("--results-dir", default="results", help="where pipeline runs live (default: results)")
    p.add_argument("--model", help="model spec (default: the run's model, else embedded:smollm2-135m-instruct)")
    p.add_argument("--layer", type=int, help="layer to measure (default: the model's target layer)")
    p.add_argument("--capping-config", help="capping file (.safetensors or reference .pt) for /cap on")
    p.add_argument("--experiment", help="capping experiment id (default: the config's recommended or first one)")
    p.add_argument("--cap", action="store_true", help="start with capping on")
    p.add_argument("--system", default="", help="system prompt (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit (default: 128)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling (default: 0.9)")
    p.add_argument("--seed", type=int, default=0, help="random seed; turn k uses seed + k (default: 0)")
    p.add_argument("--dtype", default="auto", help="model dtype (auto = bfloat16 on GPUs and CPUs with native bf16, else float32)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.set_defaults(func=run)


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, scaled to the values' own range (missing values as a space)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return " " * len(values)
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(" ")
        elif hi == lo:
            out.append(SPARK[len(SPARK) // 2])
        else:
            out.append(SPARK[round((v - lo) / (hi - lo) * (len(SPARK) - 1))])
    return "".join(out)


def meter(values: Sequence[float], layer: int, capped: bool, width: int = 24) -> str:
    """The status line printed after a reply: value, bar within the range seen, change, sparkline."""
    value = values[-1]
    tag = "  [capped]" if capped else ""
    if not math.isfinite(value):
        return f"axis L{layer}: n/a (empty reply){tag}"
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = min(finite), max(finite)
    filled = width // 2 if hi == lo else round((value - lo) / (hi - lo) * width)
    bar = "#" * filled + "." * (width - filled)
    prev = [v for v in values[:-1] if math.isfinite(v)]
    delta = f"  change {value - prev[-1]:+.2f}" if prev else ""
    return f"axis L{layer}: {value:+.2f} [{bar}] range {lo:.2f}..{hi:.2f}{delta}  trend {sparkline(values)}{tag}"


@dataclass
class ChatState:
    """The conversation so far, with one projection and one capping flag per assistant turn."""

    system: str
    messages: list[dict[str, str]] = field(default_factory=list)
    projections: list[float] = field(default_factory=list)
    capped: list[bool] = field(default_factory=list)

    def conversation(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages


def run(args: argparse.Namespace) -> int:
    import torch

    from ..capping import CappingConfig
    from ..generation import SamplingSettings, generate_batch
    from ..models import DEFAULT_MODEL, describe_model, load_model
    from ..monitor import project_conversation
    from ..steering import build_capping_steerer
    from ..transcripts import save_transcript
    from .common import check_axis_fits, check_capping_fits, resolve_axis

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())

    if not args.verbose:
        logging.getLogger("assistant_axis.monitor").setLevel(logging.WARNING)
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
    print(f"loading {spec} ...", flush=True)
    model, tokenizer = load_model(spec, dtype=args.dtype, device=args.device)
    axis = source.axis.to(torch.float32)
    steerer = None
    steering_config: dict[str, Any] | None = None
    if args.capping_config:
        config = preloaded  # checked above, before loading the model; the file's first-token policy applies
        exp_id = args.experiment or config.recommended or config.experiments[0].id
        steerer = build_capping_steerer(model, config, exp_id)
        layers = config.get(exp_id).layers
        steering_config = {"experiment_id": exp_id, "num_interventions": len(layers), "layers": layers}
    elif args.experiment or args.cap:
        raise ValueError("--experiment and --cap need --capping-config")
    cap_on = bool(args.cap)
    state = ChatState(args.system)
    print(f"model {spec}, axis {source.path}, layer {layer}, capping "
          f"{'on' if cap_on else 'off' if steerer else 'unavailable'}. /help for commands.", flush=True)

    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(flush=True)
            break
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            rest = rest.strip()
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/help":
                print(HELP, flush=True)
            elif cmd == "/reset":
                state = ChatState(args.system)
                print("new conversation", flush=True)
            elif cmd == "/cap":
                if rest in ("on", "off") and steerer is None:
                    print("capping is unavailable: start with --capping-config FILE", flush=True)
                elif rest in ("on", "off"):
                    cap_on = rest == "on"
                    print(f"capping {rest} ({steering_config['experiment_id']})", flush=True)
                elif not rest:
                    print(f"capping is {'on' if cap_on else 'off'}", flush=True)
                else:
                    print("usage: /cap on|off", flush=True)
            elif cmd == "/save":
                if not rest:
                    print("usage: /save FILE", flush=True)
                elif not state.messages:
                    print("nothing to save yet", flush=True)
                else:
                    meta: dict[str, Any] = {
                        "steering": "capped" if all(state.capped) else "unsteered" if not any(state.capped) else "mixed",
                        "projections": [p if math.isfinite(p) else None for p in state.projections],
                        "capped_turns": [i + 1 for i, c in enumerate(state.capped) if c],
                        "layer": layer,
                        "axis": str(source.path),
                    }
                    if any(state.capped):
                        meta["steering_config"] = steering_config
                    try:
                        save_transcript(rest, state.conversation(), model=spec, **meta)
                    except OSError as exc:
                        print(f"cannot save to {rest}: {exc}", flush=True)
                    else:
                        print(f"saved {len(state.projections)} turns to {rest}", flush=True)
            else:
                print(f"unknown command {cmd}\n{HELP}", flush=True)
            continue

        state.messages.append({"role": "user", "content": line})
        turn = len(state.projections) + 1
        settings = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens, args.seed + turn)
        active = steerer if cap_on and steerer is not None else contextlib.nullcontext()
        with active:
            reply = generate_batch(model, tokenizer, [state.conversation()], settings, batch_size=1)[0].text
            state.messages.append({"role": "assistant", "content": reply})
            row = project_conversation(model, tokenizer, state.conversation(), axis, layer, turns=[turn]).iloc[0]
        state.projections.append(float(row["projection"]))
        state.capped.append(cap_on and steerer is not None)
        print(f"assistant> {reply}", flush=True)
        note = "  (context windowed)" if row["windowed"] else ""
        print(meter(state.projections, layer, state.capped[-1]) + note, flush=True)
    return 0
