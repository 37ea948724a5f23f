"""Prometheus metrics in the text exposition format, without a client library.

Why hand-written: the format is a few lines of text, and the counters the server keeps (requests,
tokens, latency, time to first token, token projections, auto-capping triggers) need no more than
a lock; one dependency less for a server that must also run where vLLM is absent.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PROJECTION_BUCKETS = (-50, -20, -10, -5, 0, 5, 10, 15, 20, 30, 50, 100)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, total = [], 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts):
            total += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {total}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6g}", f"{name}_count{suffix} {self.count}"]
        return out


class Metrics:
    """Everything ``GET /metrics`` reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (capping mode, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.auto_triggered = 0
        self.auto_requests = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.projection = Histogram(PROJECTION_BUCKETS)

    def request(self, mode: str, status: str) -> None:
        with self.lock:
            self.requests[(mode, status)] += 1

    def finished(self, mode: str, n_prompt: int, n_tokens: int, latency: float, ttft: float | None,
                 projections: list[float], triggered: bool) -> None:
        with self.lock:
            self.requests[(mode, "ok")] += 1
            self.prompt_tokens += n_prompt
            self.completion_tokens += n_tokens
            self.latency.observe(latency)
            if ttft is not None:
                self.ttft.observe(ttft)
            for value in projections:
                self.projection.observe(value)
            if mode == "auto":
                self.auto_requests += 1
                self.auto_triggered += int(triggered)

    def render(self, running: int, max_running: int) -> str:
        p = "assistant_axis"
        with self.lock:
            lines = [f"# HELP {p}_requests_total Chat completion requests by capping mode and outcome.",
                     f"# TYPE {p}_requests_total counter"]
            lines += [f'{p}_requests_total{{capping="{m}",status="{s}"}} {n}' for (m, s), n in sorted(self.requests.items())]
            lines += [
                f"# HELP {p}_prompt_tokens_total Prompt tokens of finished requests.", f"# TYPE {p}_prompt_tokens_total counter",
                f"{p}_prompt_tokens_total {self.prompt_tokens}",
                f"# HELP {p}_completion_tokens_total Generated tokens.", f"# TYPE {p}_completion_tokens_total counter",
                f"{p}_completion_tokens_total {self.completion_tokens}",
                f"# HELP {p}_auto_capping_requests_total Requests with capping \"auto\".",
                f"# TYPE {p}_auto_capping_requests_total counter", f"{p}_auto_capping_requests_total {self.auto_requests}",
                f"# HELP {p}_auto_capping_triggered_total Auto requests whose projection fell below the threshold.",
                f"# TYPE {p}_auto_capping_triggered_total counter", f"{p}_auto_capping_triggered_total {self.auto_triggered}",
                f"# HELP {p}_running_requests Requests in the engine now.", f"# TYPE {p}_running_requests gauge",
                f"{p}_running_requests {running}",
                f"# HELP {p}_max_running_requests Most requests that shared one engine step so far.",
                f"# TYPE {p}_max_running_requests gauge", f"{p}_max_running_requests {max_running}",
                f"# HELP {p}_request_seconds Time from request to last token.", f"# TYPE {p}_request_seconds histogram",
            ]
            lines += self.latency.lines(f"{p}_request_seconds")
            lines += [f"# HELP {p}_time_to_first_token_seconds Time from request to first token.",
                      f"# TYPE {p}_time_to_first_token_seconds histogram"]
            lines += self.ttft.lines(f"{p}_time_to_first_token_seconds")
            lines += [f"# HELP {p}_token_projection Per-token projections on the Assistant axis (requests that asked).",
                      f"# TYPE {p}_token_projection histogram"]
            lines += self.projection.lines(f"{p}_token_projection")
        return "\n".join(lines) + "\n"
