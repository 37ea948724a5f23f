"""``assistant-axis serve``: serve a model over the OpenAI chat API with per-request capping and axis telemetry.

The facts come from a finished run (``--run results/<run>``: its model, axis, target layer and
capping file) or from explicit files; they are checked before the model loads, so a missing file
is one line. The process stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)

DESCRIPTION = """\
Serve the model over HTTP: POST /v1/chat/completions (OpenAI chat API, streamed or not),
GET /v1/models, GET /health, GET /metrics (Prometheus), and a chat page at /.
Extra request fields: "capping": "off" | "auto" | "on" | <experiment id>, and
"return_projections": true (per-token projections on the Assistant axis at the target layer and
the turn mean, also in every streamed chunk)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="OpenAI-compatible server with capping and live axis telemetry",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a finished run: results/<run> (or a run name under --results-dir)")
    p.add_argument("--results-dir", default="results", help="where runs live when --run is a name (default: results)")
    p.add_argument("--model", help="model spec (default: the run's, else the embedded model)")
    p.add_argument("--axis", help="axis file (.safetensors or .pt) instead of --run")
    p.add_argument("--capping", help="capping file (.safetensors or reference capping_config.pt)")
    p.add_argument("--experiment", help="experiment that capping 'on'/'auto' applies (default: recommended or first)")
    p.add_argument("--layer", type=int, help="layer of the projections (default: the run's / model's target layer)")
    p.add_argument("--auto-threshold", type=float,
                   help="turn-mean projection below which 'auto' caps (default: the experiment's floor at the layer)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("ASSISTANT_AXIS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $ASSISTANT_AXIS_API_KEY; none = open)")
    p.add_argument("--engine", choices=["auto", "vllm", "hf"], default="auto", help="auto: vLLM where installed, else HF")
    p.add_argument("--dtype", default="auto", help="model dtype (auto = bfloat16 on GPUs and CPUs with native bf16, else float32; float32 for exact comparisons)")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length (default: 2048)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="vLLM: most requests in one batch (default: 64)")
    p.add_argument("--kv-cache-gib", type=float, default=2.0, help="vLLM on CPU: KV cache size in GiB (default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.app import make_server
    from ..serve.engine import make_backend
    from ..serve.setup import load_setup

    setup = load_setup(run=args.run, results_dir=args.results_dir, model=args.model, axis=args.axis,
                       capping=args.capping, layer=args.layer, experiment=args.experiment, threshold=args.auto_threshold)
    log.info("serving %s: layer %d, capping %s, auto threshold %s", setup.model, setup.layer,
             setup.default_experiment or "unavailable", "none" if setup.threshold is None else f"{setup.threshold:.3f}")
    backend = make_backend(setup, args.engine, dtype=args.dtype, max_model_len=args.max_model_len,
                           max_num_seqs=args.max_num_seqs, kv_cache_gib=args.kv_cache_gib)
    server = make_server(setup, backend, args.host, args.port, args.api_key)
    backend.start()

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    print(f"serving on http://{host}:{port} (engine {backend.name}{', API key required' if args.api_key else ''})",
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        backend.stop()
        print("stopped", flush=True)
        sys.stdout.flush()
        os._exit(0)  # vLLM's in-process engine keeps threads that would hold the interpreter open
    return 0
