"""Which kernel should run 4-bit MatMuls on this CPU? (`int4_kernel`, issue #16)

    .venv/bin/python benchmarks/int4_kernels.py

Builds, in memory, a stack of 12 MiniLM-sized MatMuls (6 x [384 -> 1536 -> 384], random weights)
and times it at batch 1 x 32 tokens, 1 thread (median of --runs after 20 warm-up runs, one process):
- dynamic int8 (ORT's `quantize_dynamic`, per channel, s8 weights): MatMulInteger;
- MatMulNBits (ORT's `MatMulNBitsQuantizer`) at block 32 / 64 / 128, symmetric or not, accuracy_level
  0 or 4;
- embslim's `kernel="int8"` 4-bit file (`embslim.exporters.quantize`, bits=4): INT4 weights cast to
  int8 when ORT loads the file, then the int8 kernels.
Prints one line per file with its p50 and its ratio to int8, and the CPU's int8-relevant flags. Where
MatMulNBits is close to int8 (ARM cores with i8mm / dot-product kernels, ORT builds with faster n-bit
kernels), `int4_kernel = "matmulnbits"` keeps 4-bit weights 4-bit in memory too.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

K, N, LAYERS, TOKENS = 384, 1536, 6, 32


def build(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(LAYERS):
        up = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
        down = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(up, f"up{i}"), numpy_helper.from_array(down, f"down{i}")]
        nodes += [helper.make_node("MatMul", [x, f"up{i}"], [f"h{i}"], name=f"layer.{i}/up/MatMul"),
                  helper.make_node("MatMul", [f"h{i}", f"down{i}"], [f"y{i}"], name=f"layer.{i}/down/MatMul")]
        x = f"y{i}"
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, K])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def variants(src: Path, folder: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from embslim.exporters.quantize import QuantizeConfig, quantize

    files = {"int8 (MatMulInteger)": folder / "int8.onnx"}
    quantize_dynamic(str(src), str(files["int8 (MatMulInteger)"]), weight_type=QuantType.QInt8, per_channel=True)
    for block in (32, 64, 128):
        for symmetric in (True, False):
            for level in (0, 4):
                q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block, is_symmetric=symmetric,
                                         accuracy_level=level or None)
                q.process()
                name = f"MatMulNBits block {block} {'sym' if symmetric else 'asym'} level {level}"
                files[name] = folder / f"nbits-{block}-{symmetric}-{level}.onnx"
                q.model.save_model_to_file(str(files[name]))
    name = "embslim int4_kernel int8 (INT4 -> int8 at load)"
    files[name] = folder / "int4-int8.onnx"
    quantize(src, files[name], cfg=QuantizeConfig(target="arm64", bits=4, kernel="int8",
                                                  validation_shapes=((1, TOKENS),)))
    return files


def p50_ms(path: Path, runs: int) -> float:
    import numpy as np
    import onnxruntime as ort

    from embslim.pipeline.probe import time_runs

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).standard_normal((1, TOKENS, K)).astype(np.float32)}
    return statistics.median(time_runs(session, feed, warmup=20, runs=runs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)   # ORT's quantizers log every node
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_optimum import cpu_info

    info = cpu_info()
    print(f"CPU: {info['model']}; int8-relevant flags: {', '.join(info['flags']) or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stack.onnx"
        build(src)
        files = variants(src, Path(tmp))
        times = {name: p50_ms(path, args.runs) for name, path in files.items()}
    ref = times["int8 (MatMulInteger)"]
    for name, ms in times.items():
        print(f"{name:50s} {ms:7.3f} ms  {ms / ref:5.2f}x int8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
