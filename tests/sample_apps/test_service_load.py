"""Load test of the service as deployed: `python -m sample_apps.service.serve` in its own
process on 127.0.0.1, 8 client threads x 250 requests (bounded: 60 s in all). Zero errors,
every answer equal to a direct runtime call on the same texts, and the server's VmRSS grows
by less than 50 MB between after warm-up and after the load."""

from __future__ import annotations

import http.client
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from embslim.runtime import Classifier

REPO = Path(__file__).resolve().parents[2]
CLIENTS = 8
RSS_GROWTH_LIMIT_MB = 50
POOL = [
    "a great movie", "the plot was boring", "I love this film!", "awful acting, awful plot",
    "Café crème, déjà vu: a naïve façade", "ÉNORME DÉCEPTION", "中文 and English",
    "not good, not bad", "it was fun", "good " * 80, "the movie " * 200,
    "!!!", "unbelievably overwhelmingly unaffable", "emoji 😀 fine",
]  # fmt: skip


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


class ServerProcess:
    def __init__(self, bundle: Path, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sample_apps.service.serve", str(bundle), "--port", "0",
             "--host", "127.0.0.1", "--threads", "1", "--log-level", "WARNING"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()  # "serving http://127.0.0.1:PORT/ (...)"
        if not line.startswith("serving http://127.0.0.1:"):
            self.stop()
            pytest.fail(f"the service did not start: {line!r}\n{log.read_text()[-2000:]}")
        self.port = int(line.split(":")[2].split("/")[0])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self._log.close()


def _get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _hammer(port: int, *, per_client: int, seed: int, deadline: float) -> dict:
    """CLIENTS threads x per_client requests of 1-4 texts each; keep-alive connections,
    reopened every 50 requests so new connections (and server threads) are exercised too."""
    results: list[list] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []

    def client(worker: int) -> None:
        rng = random.Random(seed * 1000 + worker)
        conn = None
        try:
            for i in range(per_client):
                if time.monotonic() > deadline:
                    failures.append(f"client {worker}: deadline passed after {i} requests")
                    return
                if i % 50 == 0:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                texts = rng.sample(POOL, rng.randint(1, 4))
                t0 = time.perf_counter()
                conn.request("POST", "/predict", body=json.dumps({"texts": texts, "top_k": 2}),
                             headers={"Content-Type": "application/json"})  # fmt: skip
                resp = conn.getresponse()
                body = resp.read()
                elapsed = time.perf_counter() - t0
                if resp.status != 200:
                    failures.append(f"client {worker} request {i}: {resp.status} {body[:200]!r}")
                    continue
                results[worker].append((texts, json.loads(body)["predictions"], elapsed))
        except Exception as e:  # noqa: BLE001 - reported as a failure with the client's id
            failures.append(f"client {worker}: {type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(CLIENTS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 5))
    wall = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a client thread hung past the deadline"
    return {"results": [r for rs in results for r in rs], "failures": failures, "wall_s": wall}


def run_load(bundle: Path, tmp_path: Path, *, per_client: int, time_limit_s: float) -> dict:
    server = ServerProcess(bundle, tmp_path / "service.log")
    try:
        deadline = time.monotonic() + time_limit_s
        warm = _hammer(server.port, per_client=25, seed=1, deadline=deadline)
        assert not warm["failures"], warm["failures"][:5]
        rss_before = _rss_mb(server.proc.pid)
        load = _hammer(server.port, per_client=per_client, seed=2, deadline=deadline)
        rss_after = _rss_mb(server.proc.pid)
        metrics = _get(server.port, "/metrics")
        assert server.proc.poll() is None, "the service died under load"
    finally:
        server.stop()

    assert not load["failures"], load["failures"][:5]
    assert len(load["results"]) == CLIENTS * per_client
    n_requests = CLIENTS * (25 + per_client)
    assert metrics["requests"] == n_requests and metrics["errors"] == 0, metrics

    clf = Classifier.from_bundle(bundle, variant="auto", threads=1)
    cache: dict[tuple[str, ...], list] = {}
    for texts, got, _ in load["results"]:
        key = tuple(texts)
        if key not in cache:
            cache[key] = [
                {"label": p.label, "score": p.score, "probabilities": p.probabilities,
                 "top_k": [{"label": lab, "score": s} for lab, s in p.top_k]}
                for p in clf.predict(texts, top_k=2)
            ]  # fmt: skip
        assert got == cache[key], texts

    latencies = sorted(r[2] * 1000 for r in load["results"])
    summary = {
        "requests": len(latencies),
        "texts": sum(len(r[0]) for r in load["results"]),
        "wall_s": round(load["wall_s"], 2),
        "requests_per_s": round(len(latencies) / load["wall_s"], 1),
        "client_latency_ms_p50": round(latencies[len(latencies) // 2], 2),
        "client_latency_ms_p95": round(latencies[int(len(latencies) * 0.95)], 2),
        "server_latency_ms": metrics["predict_latency_ms"],
        "rss_mb_after_warmup": round(rss_before, 1),
        "rss_mb_after_load": round(rss_after, 1),
    }
    print("\nservice load:", json.dumps(summary))
    (tmp_path / "load.json").write_text(json.dumps(summary, indent=2))
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, summary
    return summary


def test_service_under_load_on_a_tiny_bundle(tiny_bundle, tmp_path):
    run_load(tiny_bundle, tmp_path, per_client=250, time_limit_s=60)


@pytest.mark.slow
def test_service_under_load_on_a_real_sst2_bundle(sst2_bundle, tmp_path):
    # The real model costs ~5-15 ms a request here (2 cores): fewer requests, same checks.
    run_load(sst2_bundle, tmp_path, per_client=40, time_limit_s=120)
