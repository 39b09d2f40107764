"""The benchmark's model2vec rows and CPU line (benchmarks/bench_model2vec.py, bench_optimum.cpu_info).

The model2vec test runs the real path on the tiny BERT (tests/tiny_models.py): distil, train on the
tiny sentiment task, export to ONNX, dynamic int8, and classify through the benchmark's own runner;
it needs the `bench` extra (model2vec[distill,train]) and skips without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_optimum  # noqa: E402

X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
flags\t\t: fpu sse4_1 avx2 avx512f avx512bw avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
flags\t\t: fpu sse4_1 avx2 avx512f avx512bw avx512_vnni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes asimddp i8mm
CPU implementer\t: 0x41
"""


def test_cpu_info_reads_model_and_int8_flags():
    assert bench_optimum.cpu_info(X86) == {"model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
                                           "flags": ["avx2", "avx512f", "avx512_vnni"]}
    arm = bench_optimum.cpu_info(ARM)
    assert arm["flags"] == ["asimddp", "i8mm"] and arm["model"]   # no model name line: platform's, or "unknown"


def test_model2vec_row_distils_trains_exports_and_runs(tmp_path, tiny_task):
    pytest.importorskip("model2vec.train", reason="the bench extra (model2vec[distill,train]) is not installed")
    import bench_model2vec as m2v
    from tiny_models import make_tiny_model_dir

    src = make_tiny_model_dir(tmp_path / "encoder")
    train = tiny_task.train
    [(name, folder, info)] = m2v.prepare(tmp_path / "work", [("m2v-tiny", train.texts, train.labels)],
                                         tiny_task.label_names, source=str(src), pca_dims=None)
    assert name == "m2v-tiny" and info["train_sentences"] == len(train) and info["parity_max_abs_diff"] <= 1e-4
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    texts = list(tiny_task.eval.texts)
    fp32 = m2v.M2VRunner(folder)
    b32, b1 = fp32.logits(texts, batch_size=32), fp32.logits(texts, batch_size=1)
    assert b32.shape == (len(texts), len(tiny_task.label_names)) and b32.dtype == np.float32
    np.testing.assert_allclose(b32, b1, atol=1e-5)   # fp32 with pad-aware mean pooling: batch-invariant
    # the trained model learned the task (the generated sentiment words are in the tiny vocabulary)
    assert (b32.argmax(-1) == np.asarray(tiny_task.eval.labels)).mean() >= 0.7
    int8 = m2v.M2VRunner(folder, "model.int8.onnx").logits(texts, batch_size=32)
    assert (int8.argmax(-1) == b32.argmax(-1)).mean() >= 0.9
    ids = fp32.latency_ids(texts, seq_len=8)
    assert len(ids) == 8 and ids == fp32.ids([" ".join(texts[:64])])[0][:8]
