"""Static (calibrated, QDQ) int8 of the tiny DEP bundle (tests/exporters/conftest.py builds it).

What static int8 is for (issue #16): its activation scales are fixed at calibration, so a text's
label and logits do not depend on the texts batched with it, where dynamic int8's do. Judged as the
other quantizers are: remap untouched, accuracy and agreement with fp32 on the tiny eval split
through `embslim.runtime.Classifier`.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from embslim.exporters.optimize import OptimizeConfig, optimize
from embslim.exporters.quantize import (
    QuantizationError,
    QuantizeConfig,
    StaticQuantizeConfig,
    calibration_feeds,
    check_quantized,
    quantize,
    quantize_static_int8,
)
from embslim.pipeline.bundle import add_artifacts, artifact_entry
from embslim.pipeline.validate import batch_flips, label_flips
from embslim.runtime import Classifier

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_AGREEMENT = 0.95     # 40 eval sentences: at most 2 flips


@pytest.fixture(scope="module")
def noattn_model(tiny_bundle, tmp_path_factory):
    """A graph fused without the Attention op (static int8 can start from it too)."""
    out = tmp_path_factory.mktemp("static") / "model.fused-noattn.onnx"
    return optimize(tiny_bundle.path / "model.onnx", out,
                    cfg=OptimizeConfig(validation_shapes=((4, 19), (1, 64)), attention=False)).path


@pytest.fixture(params=["unfused", "fused-noattn"])
def static_source(request, tiny_bundle, noattn_model):
    """The graphs static int8 is quantized from: the unfused export (what the targets stage uses)."""
    return tiny_bundle.path / "model.onnx" if request.param == "unfused" else noattn_model


def _feeds(tiny_bundle, *, same_length: bool):
    return calibration_feeds(tiny_bundle.path / "tokenizer.json", list(tiny_bundle.task.train.texts)[:60],
                             input_names=INPUTS, max_length=64, same_length=same_length)


def test_calibration_feeds_one_text_each_unpadded_or_padded_alike(tiny_bundle):
    loose = _feeds(tiny_bundle, same_length=False)
    padded = _feeds(tiny_bundle, same_length=True)
    assert len(loose) == len(padded) == 60
    assert all(set(f) == set(INPUTS) and f["input_ids"].shape[0] == 1 and f["input_ids"].dtype == np.int64 for f in loose)
    assert all(f["attention_mask"].all() for f in loose), "unpadded feeds hold real tokens only"
    lengths = {f["input_ids"].shape[1] for f in loose}
    assert len(lengths) > 1 and {f["input_ids"].shape[1] for f in padded} == {max(lengths)}
    for a, b in zip(loose, padded):
        n = a["input_ids"].shape[1]
        assert (b["input_ids"][0, :n] == a["input_ids"][0]).all() and (b["input_ids"][0, n:] == 0).all()
        assert b["attention_mask"][0].sum() == n
    with pytest.raises(ValueError, match="at least one text"):
        calibration_feeds(tiny_bundle.path / "tokenizer.json", [], input_names=INPUTS, max_length=64)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_static_int8_keeps_remap_and_labels_do_not_depend_on_the_batch(tiny_bundle, static_source, method):
    cfg = StaticQuantizeConfig(target="arm64", calibration_method=method, validation_shapes=((4, 19), (1, 64)))
    file = f"model.int8-static-{method}-{static_source.stem}.onnx"
    result = quantize_static_int8(static_source, tiny_bundle.path / file,
                                  _feeds(tiny_bundle, same_length=method != "minmax"), cfg=cfg)
    add_artifacts(tiny_bundle.path, [artifact_entry(tiny_bundle.path, file, variant=cfg.variant, target=cfg.target)])
    model = onnx.load(str(tiny_bundle.path / file))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    # embedding tables: int8, dequantized after the Gather (rows only), never a whole-table DequantizeLinear
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert not any(n.op_type == "Gather" and n.input[0] in dq_outputs for n in model.graph.node)
    assert any(n.op_type == "Gather" and n.input[0].endswith("_quantized") for n in model.graph.node)
    assert result.quantized.get("MatMul", 0) >= 2 * 6 and result.weight_bytes["8bit"] > 0   # 2 layers x (Q, K, V, out, FFN x2)
    # the remap (int16, original vocabulary size) stays one plain Gather's integer table
    remap = [i for i in model.graph.initializer if list(i.dims) == [tiny_bundle.original_rows] and i.name.endswith("remap")]
    assert len(remap) == 1 and remap[0].data_type == onnx.TensorProto.INT16
    assert [n.op_type for n in model.graph.node if remap[0].name in n.input] == ["Gather"]
    assert set(result.index_tables.values()) >= {remap[0].name}

    task = check_quantized(tiny_bundle.path, file, tiny_bundle.task.eval, n_labels=tiny_bundle.n_labels,
                           batch_flips=True)
    assert task["agreement"] >= MIN_AGREEMENT and task["drop"] <= 0.05
    assert task["batch_flips"] == 0 and task["batch_flips_batch_size"] == 32
    clf = Classifier.from_bundle(tiny_bundle.path, file=file)
    texts = list(tiny_bundle.task.eval.texts)
    # fixed scales: each text's logits are the same alone or in a batch of 32 (up to float summation order)
    np.testing.assert_allclose(clf.logits(texts, batch_size=32), clf.logits(texts, batch_size=1), atol=1e-4, rtol=0)


def test_dynamic_int8_logits_move_with_the_batch_where_static_do_not(tiny_bundle, noattn_model):
    """The property static int8 exists for, on the same graph: dynamic int8's per-batch activation
    scales change a text's logits with its batch (labels may or may not flip on 40 sentences)."""
    cfg = QuantizeConfig(target="arm64", validation_shapes=((4, 19), (1, 64)))
    quantize(noattn_model, tiny_bundle.path / "model.int8-dyn-noattn.onnx", cfg=cfg)
    add_artifacts(tiny_bundle.path, [artifact_entry(tiny_bundle.path, "model.int8-dyn-noattn.onnx", variant="int8",
                                                    target="arm64")])
    clf = Classifier.from_bundle(tiny_bundle.path, file="model.int8-dyn-noattn.onnx")
    texts = list(tiny_bundle.task.eval.texts)
    b32, b1 = clf.logits(texts, batch_size=32), clf.logits(texts, batch_size=1)
    assert np.abs(b32 - b1).max() > 1e-3
    assert batch_flips(clf, tiny_bundle.task.eval, logits=b32)["batch_flips"] == label_flips(b1, b32)


def test_label_flips_counts_argmax_changes_and_checks_shapes():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], dtype=np.float32)
    b = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    assert label_flips(a, b) == 2 and label_flips(a, a) == 0
    with pytest.raises(ValueError, match=r"\[n, labels\]"):
        label_flips(a, b[:2])


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "x86"}, "target must be one of arm64"),
    ({"target": "arm64", "calibration_method": "kl"}, "calibration_method must be one of minmax, percentile, entropy"),
    ({"target": "arm64", "percentile": 0}, r"percentile must be in \(0, 100\]"),
    ({"target": "arm64", "calibration_size": 0}, "calibration_size must be a positive int"),
    ({"target": "arm64", "per_channel": 1}, "per_channel must be True or False"),
])
def test_static_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StaticQuantizeConfig(**kwargs)


def test_static_config_names_the_file_and_variant():
    cfg = StaticQuantizeConfig(target="avx2")
    assert (cfg.file_name, cfg.variant, cfg.bits, cfg.calibration_method) == (
        "model.int8-static-avx2.onnx", "int8-static", 8, "minmax")


def test_static_int8_bad_inputs(tiny_bundle, noattn_model, tmp_path):
    cfg = StaticQuantizeConfig(target="arm64")
    with pytest.raises(QuantizationError, match="no calibration feeds"):
        quantize_static_int8(noattn_model, tmp_path / "out.onnx", [], cfg=cfg)
    with pytest.raises(QuantizationError, match="not found"):
        quantize_static_int8(tmp_path / "missing.onnx", tmp_path / "out.onnx", [{}], cfg=cfg)
    with pytest.raises(QuantizationError, match=r"feeds must have one shape; .*same_length=True"):
        quantize_static_int8(noattn_model, tmp_path / "out.onnx", _feeds(tiny_bundle, same_length=False),
                             cfg=StaticQuantizeConfig(target="arm64", calibration_method="percentile"))
