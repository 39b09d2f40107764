"""Where the peak RSS of an ONNX Runtime session goes (issue #16's memory line), for given model files.

    .venv/bin/python benchmarks/rss_floor.py out/bench-frontier/work/optimum/model.int8-arm64.onnx \\
        out/sst2-frontier-s42/model.mixed-arm64.onnx

Prints one table, each figure the median of --rounds fresh processes:
- the probe process before any session (`python -m embslim.pipeline.probe` imports numpy,
  onnxruntime and embslim.runtime, as an app would): what no model file can go below;
- the probe on a graph with no weights (Cast + ReduceMean of input_ids): the process plus what any
  onnxruntime CPU session costs, its code paged in, thread pool and allocator;
- each file as it is (`embslim.pipeline.probe`: load, 20 warm-up and --runs timed runs at batch 1
  x 32 tokens, peak RSS = VmHWM);
- the same file with its weights moved to an external data file (`onnx.save_model(...,
  save_as_external_data=True)`), which onnxruntime memory-maps, so weights it never touches (rows of an
  embedding table no text used) are never paged in, and the file's bytes are not copied twice at load.

Needs the `onnx` package (embslim's export extra). Takes about 10 s per file and round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The probe's imports, then its peak RSS: the floor every model file starts from.
_BASE = ("import numpy, onnxruntime\nfrom embslim.runtime.classifier import session_options\n"
         "from embslim.pipeline.probe import _peak_rss_mb\nprint(_peak_rss_mb())")
_IDS = [101] + [2023, 3185, 2003, 1037, 2307, 2143, 1998, 1045, 2293, 2009] * 3 + [102]


def base_rss(rounds: int) -> float:
    """Median peak RSS (MB) of a fresh process that imported what the probe imports, with no session."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    got = [float(subprocess.run([sys.executable, "-c", _BASE], capture_output=True, text=True, check=True,
                                env=env).stdout.strip()) for _ in range(rounds)]
    return statistics.median(got)


def external_copy(model: Path, folder: Path) -> Path:
    """`model` saved into `folder` with every tensor of 4 KB or more in one external data file."""
    import onnx

    out = folder / model.name
    onnx.save_model(onnx.load(str(model)), str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=model.name + ".data", size_threshold=4096)
    return out


def empty_graph(folder: Path) -> Path:
    """An ONNX file with no weights: input_ids -> Cast -> ReduceMean -> logits [batch, 1]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["ids"], ["logits"], axes=[1], keepdims=1)], "no_weights",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    out = folder / "no_weights.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    from embslim.pipeline.probe import measure

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="ONNX files taking input_ids (+ attention_mask, token_type_ids)")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per figure (median)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per process, after 20 warm-up ones")
    args = p.parse_args(argv)
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        print(f"rss_floor: no such model file: {', '.join(missing)}", file=sys.stderr)
        return 2

    def peak(path: Path) -> float:
        return statistics.median(measure(path, _IDS, runs=args.runs, warmup=20, threads=1)["peak_rss_mb"]
                                 for _ in range(args.rounds))

    rows = [("probe process, no session", None, base_rss(args.rounds), None)]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("a session on a graph with no weights", None, peak(empty_graph(Path(tmp))), None))
        for model in args.models:
            folder = Path(tmp) / str(len(rows))
            folder.mkdir()
            rows.append((str(model), model.stat().st_size / 1e6, peak(model), peak(external_copy(model, folder))))
    print("| model | MB | peak RSS MB as it is | peak RSS MB, weights in external data (mmap) |")
    print("|---|---:|---:|---:|")
    for name, mb, rss, ext in rows:
        print(f"| {name} | {'' if mb is None else f'{mb:.2f}'} | {rss:.1f} | {'' if ext is None else f'{ext:.1f}'} |")
    print(json.dumps([{"model": n, "mb": mb, "peak_rss_mb": r, "peak_rss_mb_external_data": e} for n, mb, r, e in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
