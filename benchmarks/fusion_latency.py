"""Benchmark: is an int8 file faster quantized from the fused graph or from the unfused one, on this CPU?

    .venv/bin/python benchmarks/fusion_latency.py --bundle head500=out/sst2-frontier-s42 \\
        --bundle dep=out/sst2-frontier-s42.work/dep --target avx512-vnni

For each bundle's model.onnx: ORT transformer fusion with Attention, fusion without Attention (what
4-bit is quantized from), and no fusion, each quantized to int8 for --target
(embslim.exporters.quantize). Then --rounds interleaved rounds, in this one process: a session per
file (embslim.runtime.session.session_options, 1 thread), --warmup runs, then --runs timed runs of one
batch of 1 x --seq-len random ids; the p50 per round, and the median over rounds. This is where
pipeline.targets.UNFUSED_INT8_TARGETS comes from (README, issue #16). Latency only; accuracy is the
targets stage's. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--target", default="avx512-vnni", choices=["arm64", "avx2", "avx512-vnni"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=32)
    args = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from embslim.exporters.onnx import shapes_for
    from embslim.exporters.optimize import OptimizeConfig, fuse_for_quantization
    from embslim.exporters.quantize import QuantizeConfig, quantize
    from embslim.pipeline.probe import time_runs
    from embslim.runtime.cpu import cpu_line
    from embslim.runtime.manifest import read_manifest
    from embslim.runtime.session import session_options

    work = Path(tempfile.mkdtemp(prefix="embslim-fusion-"))
    files: dict[str, Path] = {}
    try:
        for spec in args.bundle:
            name, _, folder = spec.partition("=")
            src = Path(folder)
            shapes = shapes_for(int(read_manifest(src)["task"]["max_length"]))
            fused = fuse_for_quantization(src / "model.onnx", work / name, int4=True,
                                          cfg=OptimizeConfig(config_json=str(src / "config.json"), validation_shapes=shapes))
            for label, source in (("fused with Attention", fused[8].path), ("fused without Attention", fused[4].path),
                                  ("unfused", src / "model.onnx")):
                out = work / name / f"{label.replace(' ', '-')}.onnx"
                quantize(source, out, cfg=QuantizeConfig(target=args.target, validation_shapes=shapes))
                files[f"{name} int8-{args.target}, {label}"] = out
        ids = np.random.default_rng(0).integers(2000, 8000, (1, args.seq_len)).astype(np.int64)
        p50s: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(args.rounds):
            for key, path in files.items():
                session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
                names = {i.name for i in session.get_inputs()}
                feeds = {k: v for k, v in {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                           "token_type_ids": np.zeros_like(ids)}.items() if k in names}
                p50s[key].append(float(np.median(time_runs(session, feeds, warmup=args.warmup, runs=args.runs))))
        print(f"CPU: {cpu_line()}; onnxruntime {ort.__version__}; 1 thread, batch 1 x {args.seq_len} tokens")
        print("| file | MB | p50 ms (median of rounds) | p50 per round |\n|---|---:|---:|---|")
        for key, path in files.items():
            rounds = ", ".join(f"{x:.2f}" for x in p50s[key])
            print(f"| {key} | {path.stat().st_size / 1e6:.2f} | {np.median(p50s[key]):.2f} | {rounds} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
