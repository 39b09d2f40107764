"""Request counters and latency percentiles for the service, safe to update from many threads.

Memory stays bounded however long the service runs: counters are integers and latencies
are kept for the last `window` successful requests of each inference route only (/predict,
/embed and /tag: 10,000 floats each by default, ~80 KB in a deque), which is also what p50/p95
are computed over.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

__all__ = ["Metrics"]

# inference route -> its keys in the snapshot (texts done, latency percentiles)
_ROUTE_KEYS = {
    "/predict": ("texts_classified", "predict_latency_ms"),
    "/embed": ("texts_embedded", "embed_latency_ms"),
    "/tag": ("texts_tagged", "tag_latency_ms"),
}


class Metrics:
    """What `GET /metrics` reports, as JSON (see `snapshot`)."""

    def __init__(self, *, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError(f"window must be a positive number of requests, got {window}")
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._requests = 0
        self._errors = 0
        self._by_status: Counter[int] = Counter()
        self._texts: Counter[str] = Counter()
        self._latencies_ms = {path: deque(maxlen=window) for path in _ROUTE_KEYS}

    def record(self, *, path: str, status: int, seconds: float, texts: int = 0) -> None:
        """Count one finished request (any path); /predict, /embed and /tag latencies feed the
        percentiles of their route."""
        with self._lock:
            self._requests += 1
            self._by_status[status] += 1
            if status >= 400:
                self._errors += 1
            if path in self._latencies_ms and status < 400:
                self._texts[path] += texts
                self._latencies_ms[path].append(seconds * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        """Counters so far and p50/p95 of the recent successful /predict, /embed and /tag latencies
        (ms); a route the service does not serve reports 0 texts and no latencies.

        `requests` counts every answered request (the /metrics request being answered is
        not yet among them); `errors` counts responses with status >= 400.
        """
        with self._lock:
            snapshot: dict[str, Any] = {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "requests": self._requests,
                "errors": self._errors,
                "responses_by_status": {str(k): v for k, v in sorted(self._by_status.items())},
            }
            for path, (texts_key, latency_key) in _ROUTE_KEYS.items():
                latencies = sorted(self._latencies_ms[path])
                snapshot[texts_key] = self._texts[path]
                snapshot[latency_key] = {
                    "p50": _percentile(latencies, 50),
                    "p95": _percentile(latencies, 95),
                    "window": len(latencies),
                }
            return snapshot


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that was observed); None when there is none yet."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return round(sorted_values[int(rank) - 1], 3)
