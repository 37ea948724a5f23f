"""What capping and per-token projections cost a running ``assistant-axis serve`` (prints figures; not a test).

    .venv/bin/python benchmarks/bench_serve.py [--run results/<run>] [--tokens 64] [--streams 1 8 32] [--rounds 3]

One server subprocess (bf16 by default, as it would be served), the official ``openai`` client, and
rounds of ``streams`` concurrent streamed requests, each round running the four request settings
one after another in a rotated order (the machine is shared; drift then weighs on all alike):

* ``off``: no capping, no projections (plain vLLM speed through the server);
* ``capped``: the run's capping experiment on every request;
* ``projections``: ``return_projections`` (the probe at the target layer, every token sent back);
* ``capped+proj``: both.

Throughput is generated tokens over wall time; time to first token is measured at the client
(first content chunk). Prompts: the project's extraction questions, every other one under a role's
system prompt (so the cap has work to do); greedy, so the settings see the same prompts. Without
``--run`` the stored tiny run's real axis and floors are served (``tests/serve_helpers.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODES = {"off": ("off", False), "capped": ("on", False), "projections": ("off", True), "capped+proj": ("on", True)}


def prompts(n: int) -> list[list[dict[str, str]]]:
    questions = [json.loads(line)["question"] for line in (ROOT / "resources/extraction_questions.jsonl").open()]
    roles = sorted((ROOT / "resources/roles/instructions").glob("*.json"))
    out = []
    for i in range(n):
        system = json.loads(roles[i % len(roles)].read_text())["instruction"][0]["pos"] if i % 2 else None
        out.append(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": questions[i % len(questions)]}])
    return out


def start_server(run: Path, dtype: str, max_num_seqs: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    log = open(Path(tempfile.gettempdir()) / "bench_serve_server.log", "w")  # noqa: SIM115  (lives as long as the server)
    proc = subprocess.Popen([sys.executable, "-m", "assistant_axis.cli", "serve", "--run", str(run), "--port", str(port),
                             "--dtype", dtype, "--max-num-seqs", str(max_num_seqs)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited; see {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not start in 300 s")


def one(client, model: str, conv, tokens: int, capping: str, proj: bool) -> tuple[int, float, float]:
    """(completion tokens, time to first token, total time) of one streamed request."""
    start = time.perf_counter()
    first, n = None, 0
    stream = client.chat.completions.create(model=model, messages=conv, max_tokens=tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"capping": capping, "return_projections": proj})
    for ev in stream:
        if first is None and ev.choices and ev.choices[0].delta.content:
            first = time.perf_counter() - start
        if ev.usage:
            n = ev.usage.completion_tokens
    return n, first if first is not None else float("nan"), time.perf_counter() - start


def measure(client, model: str, convs, streams: int, tokens: int, mode: str) -> tuple[int, float, list[float], int]:
    """One round: ``streams`` requests at once; (tokens, wall seconds, times to first token, failures)."""
    capping, proj = MODES[mode]

    def safe(conv):
        try:
            return one(client, model, conv, tokens, capping, proj)
        except Exception as exc:  # noqa: BLE001  (counted and printed, the figures go on)
            print(f"  request failed: {exc!r}", flush=True)
            return None

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        results = [r for r in pool.map(safe, convs[:streams]) if r is not None]
    wall = time.perf_counter() - start
    return sum(r[0] for r in results), wall, [r[1] for r in results], streams - len(results)


def compare(client, model: str, convs, streams: int, rounds: int, tokens: int) -> dict[str, dict[str, float]]:
    """Every setting once per round, in a rotated order, so a machine that slows down or speeds up
    during the run (it is shared) weighs on every setting alike."""
    sums = {mode: [0, 0.0, [], 0] for mode in MODES}
    names = list(MODES)
    for r in range(rounds):
        for mode in names[r % len(names):] + names[: r % len(names)]:
            n, wall, ttft, failed = measure(client, model, convs, streams, tokens, mode)
            acc = sums[mode]
            acc[0] += n
            acc[1] += wall
            acc[2] += ttft
            acc[3] += failed
    return {mode: {"tok_s": n / wall, "ttft": statistics.median(t) if t else float("nan"), "failed": f}
            for mode, (n, wall, t, f) in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a finished run folder (default: the stored tiny run's files)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every setting once, streams requests at a time")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    from openai import OpenAI

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            run = Path(args.run)
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from serve_helpers import make_run

            run = make_run(Path(tmp))
        proc, url = start_server(run, args.dtype, max(args.streams))
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
            model = client.models.list().data[0].id
            convs = prompts(max(args.streams))
            one(client, model, convs[0], 8, "on", True)  # warm-up
            print(f"server {url}, {args.tokens} tokens per request, {args.rounds} rounds per setting, dtype {args.dtype}")
            print(f"{'streams':>7} {'setting':>12} {'tok/s':>8} {'ratio':>6} {'TTFT s':>7} {'failed':>6}")
            for streams in args.streams:
                rows = compare(client, model, convs, streams, args.rounds, args.tokens)
                base = rows["off"]["tok_s"]
                for mode, r in rows.items():
                    print(f"{streams:>7} {mode:>12} {r['tok_s']:>8.1f} {r['tok_s'] / base:>6.3f} {r['ttft']:>7.3f} {r['failed']:>6}", flush=True)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
