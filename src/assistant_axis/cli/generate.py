"""``assistant-axis generate``: one reply to one prompt, optionally under an activation cap.

For trying a capping experiment by hand: the reply goes to stdout, and with ``--cap`` the capping
telemetry (per capped layer: token positions seen, how many the floor raised, mean correction)
goes to stderr, so ``> reply.txt`` keeps only the reply.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..capping import CappingConfig, CappingExperiment
from ..conversation import build_conversation
from ..generation import SamplingSettings
from ..models import DEFAULT_MODEL

RECOMMENDED = "recommended"


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate one reply, optionally with activation capping", description=__doc__)
    p.add_argument("prompt", help="the user message")
    p.add_argument("--system", default=None, help="system prompt (default: none; the chat template may add its own)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})")
    p.add_argument("--capping-config", default=None, help="capping file: our .safetensors or a reference capping_config.pt")
    p.add_argument("--cap", default=None, metavar="EXPERIMENT",
                   help="experiment id (layers_A:B-pP), its index, or 'recommended' (needs --capping-config)")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16), float32, ...")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def resolve_experiment(path: str | None, cap: str | None) -> CappingExperiment | None:
    """The experiment ``--cap`` names in ``--capping-config``; None without ``--cap``."""
    if cap is None:
        if path is not None:
            raise ValueError("--capping-config was given without --cap: name an experiment or use --cap recommended")
        return None
    if path is None:
        raise ValueError("--cap needs --capping-config (a capping .safetensors or reference .pt file)")
    config = CappingConfig.load(path)
    if cap == RECOMMENDED:
        if not config.recommended:
            raise ValueError(f"{path}: no recommended experiment is set; pass an experiment id to --cap")
        cap = config.recommended
    return config.get(int(cap) if cap.isdigit() else cap)


def format_telemetry(experiment: CappingExperiment, telemetry: dict[int, dict[str, float]]) -> str:
    """One line per capped layer, plus the total share of positions the floor acted on."""
    lines = [f"capping {experiment.id}:"]
    for layer, t in sorted(telemetry.items()):
        lines.append(f"  layer {layer}: {int(t['capped'])}/{int(t['tokens'])} positions capped, mean correction {t['mean_correction']:.3f}")
    seen = sum(int(t["tokens"]) for t in telemetry.values())
    capped = sum(int(t["capped"]) for t in telemetry.values())
    lines.append(f"  total: {capped}/{seen} positions capped ({capped / seen if seen else 0.0:.1%})")
    return "\n".join(lines)


def _generate_hf(args: argparse.Namespace, conv: list, settings: SamplingSettings, exp: CappingExperiment | None) -> tuple[str, dict]:
    from ..generation import generate_batch
    from ..models import load_model
    from ..steering import ActivationSteering

    model, tokenizer = load_model(args.model, dtype=args.dtype, device="auto")
    if exp is None:
        return generate_batch(model, tokenizer, [conv], settings, batch_size=1)[0].text, {}
    with ActivationSteering.from_experiment(model, exp) as steerer:
        text = generate_batch(model, tokenizer, [conv], settings, batch_size=1)[0].text
    return text, steerer.telemetry_summary()


def _generate_vllm(args: argparse.Namespace, conv: list, settings: SamplingSettings, exp: CappingExperiment | None) -> tuple[str, dict]:
    from ..vllm_backend import VLLMEngine  # optional dependency: imported only when asked for

    engine = VLLMEngine(args.model, dtype=args.dtype, hooks=exp is not None, seed=args.seed)
    try:
        if exp is not None:
            engine.set_capping(exp)
        text = engine.generate([conv], settings)[0].text
        return text, engine.telemetry() if exp is not None else {}
    finally:
        engine.close()


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    exp = resolve_experiment(args.capping_config, args.cap)
    if exp is not None:
        from .common import check_capping_fits

        check_capping_fits(CappingConfig([exp]), args.capping_config, args.model)  # before loading any weights
    conv = build_conversation(args.system, args.prompt)
    settings = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    generate = _generate_vllm if args.backend == "vllm" else _generate_hf
    text, telemetry = generate(args, conv, settings, exp)
    print(text)
    if exp is not None:
        print(format_telemetry(exp, telemetry), file=sys.stderr)
    return 0
