"""ORT format (.ort) for ONNX Runtime Mobile: loads, and predicts what the .onnx it came from does."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from embslim.exporters.compare import compare_onnx
from embslim.exporters.mobile import OPERATORS_CONFIG, MobileConversionError, to_ort_format
from embslim.exporters.quantize import QuantizeConfig, quantize
from embslim.pipeline.bundle import add_artifacts, artifact_entry


def test_ort_round_trip_predicts_the_same_labels(tiny_bundle, fused_model):
    from embslim.runtime import Classifier

    bundle = tiny_bundle.path
    cfg = QuantizeConfig(target="arm64")
    onnx_path = quantize(fused_model.path, bundle / "model.int8-arm64-mobile.onnx", cfg=cfg).path
    ort_path, config_path = to_ort_format(onnx_path, bundle)
    assert ort_path == bundle / "model.int8-arm64-mobile.ort" and config_path == bundle / OPERATORS_CONFIG

    ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])   # a stock build reads .ort
    ops: dict[str, set[str]] = {}   # "domain;opset;op,op,..." lines, one per opset version
    for line in config_path.read_text().splitlines():
        if line and not line.startswith("#"):
            domain, _, names = line.split(";")
            ops.setdefault(domain, set()).update(names.split(","))
    assert {"Gather", "DynamicQuantizeLinear", "LayerNormalization"} <= ops["ai.onnx"]   # remap; int8 activations
    assert {"QAttention", "DynamicQuantizeMatMul", "SkipLayerNormalization", "BiasGelu"} <= ops["com.microsoft"]
    assert f"# - {ort_path.name}" in config_path.read_text()   # names the shipped file, not a temp path

    add_artifacts(bundle, [artifact_entry(bundle, p.name, variant="int8", target="arm64") for p in (onnx_path, ort_path)])
    texts = list(tiny_bundle.task.eval.texts)
    from_onnx = Classifier.from_bundle(bundle, file=onnx_path.name).logits(texts)
    from_ort = Classifier.from_bundle(bundle, file=ort_path.name).logits(texts)
    assert (from_ort.argmax(-1) == from_onnx.argmax(-1)).all()
    # The runtime asks ORT for exact u8 x u8 int8 on x86 without VNNI (session.x64quantprecision), a
    # rewrite ORT cannot apply to an .ort graph; without it on both sides the two files are the same.
    assert compare_onnx(onnx_path, ort_path, exact_int8=False).max_abs_diff <= 1e-4


def test_ort_round_trip_of_a_4bit_model(tiny_bundle, fused_model, tmp_path):
    onnx_path = quantize(fused_model.path, tmp_path / "model.int4-arm64.onnx",
                         cfg=QuantizeConfig(target="arm64", bits=4)).path
    ort_path, config_path = to_ort_format(onnx_path, tmp_path / "mobile")
    assert ort_path.name == "model.int4-arm64.ort"
    assert "MatMulNBits" in config_path.read_text() and "GatherBlockQuantized" in config_path.read_text()


def test_to_ort_format_errors(tmp_path, tiny_bundle):
    with pytest.raises(MobileConversionError, match=r"is not an existing \.onnx file; pass e\.g\. bundle/model\.int8-arm64\.onnx"):
        to_ort_format(tmp_path / "model.ort", tmp_path)
    with pytest.raises(MobileConversionError, match=r"target_platform must be 'arm' or 'amd64', got 'x86'"):
        to_ort_format(tiny_bundle.path / "model.onnx", tmp_path, target_platform="x86")
