"""Latency and peak memory of one ONNX model, measured in a fresh process.

Run as `python -m embslim.pipeline.probe MODEL.onnx --ids 101,2023,...` (imports only onnxruntime and
numpy, like an app would). It loads the model, runs warm-up iterations, then times `--runs`
single-example inferences at the given token ids, and prints one JSON line: latency p50/p95 in
ms and the process's peak resident memory (VmHWM; a forked child's ru_maxrss would include the
parent's). `measure()` is the parent-side helper that launches it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_runs(session, feed: dict, *, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of `runs` `session.run(None, feed)` calls after `warmup` untimed ones
    (`session`: an onnxruntime.InferenceSession; `feed`: graph input name -> array)."""
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--ids", required=True, help="comma-separated token ids of one example")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from embslim.runtime.classifier import session_options

    opts = session_options(args.threads)   # what embslim.runtime.Classifier runs, so latency is of the same kernels
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    ids = np.asarray([[int(i) for i in args.ids.split(",")]], dtype=np.int64)
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: values[i.name] for i in session.get_inputs()}
    times = time_runs(session, feed, warmup=args.warmup, runs=args.runs)
    print(json.dumps({"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95)),
                      "latency_seq_len": int(ids.shape[1]), "latency_runs": args.runs, "threads": args.threads,
                      "peak_rss_mb": round(_peak_rss_mb(), 1)}))


def measure(model: str | Path, ids: Sequence[int], *, runs: int = 200, warmup: int = 20, threads: int = 1,
            python: str | None = None, timeout: float = 600) -> dict:
    """Launch the probe in a fresh interpreter and return its figures."""
    cmd = [python or sys.executable, "-m", "embslim.pipeline.probe", str(model), "--ids", ",".join(str(int(i)) for i in ids),
           "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    src_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"latency/memory probe failed for {model}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    _main()
