"""Request counters and latency percentiles for the service, safe to update from many threads.

Memory stays bounded however long the service runs: counters are integers and latencies
are kept for the last `window` /predict requests only (10,000 floats by default, ~80 KB in
a deque), which is also what p50/p95 are computed over.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

__all__ = ["Metrics"]


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
        self._texts = 0
        self._latencies_ms: deque[float] = deque(maxlen=window)

    def record(self, *, path: str, status: int, seconds: float, texts: int = 0) -> None:
        """Count one finished request (any path); /predict latencies feed the percentiles."""
        with self._lock:
            self._requests += 1
            self._by_status[status] += 1
            if status >= 400:
                self._errors += 1
            if path == "/predict" and status < 400:
                self._texts += texts
                self._latencies_ms.append(seconds * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        """Counters so far and p50/p95 of the recent successful /predict latencies (ms).

        `requests` counts every answered request (the /metrics request being answered is
        not yet among them); `errors` counts responses with status >= 400.
        """
        with self._lock:
            latencies = sorted(self._latencies_ms)
            return {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "requests": self._requests,
                "errors": self._errors,
                "responses_by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "texts_classified": self._texts,
                "predict_latency_ms": {
                    "p50": _percentile(latencies, 50),
                    "p95": _percentile(latencies, 95),
                    "window": len(latencies),
                },
            }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that was observed); None when there is none yet."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return round(sorted_values[int(rank) - 1], 3)
