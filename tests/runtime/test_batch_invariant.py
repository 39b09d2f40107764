"""`from_bundle(..., batch_invariant=True)`: a text's output must not depend on the texts sent with it.

A dynamic int8 file (ONNX Runtime's `quantize_dynamic`, the manifest's variant "int8") computes
its activation scales from the whole batch, so a text's logits move with its batch (issue #16:
9-15 of 872 SST-2 dev labels flip between batch 1 and 32). The tiny bundle's head MatMul is
quantized that way here, for real, and the option must make batch 32 give batch 1's outputs.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_bundle import artifact_entry, make_tiny_bundle, read_manifest_json, write_manifest

from embslim.runtime import Classifier
from embslim.runtime.bundle_model import batch_dependent

TEXTS = [
    "great movie", "this film was awful !", "i love it", "not very good", "boring plot but fun acting",
    "the acting is bad", "a good film", "i hate this movie", "it was fun", "very boring",
    "great great great acting and a great plot", ".",
]


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("dyn") / "b")
    quantize_dynamic(str(bundle / "model.onnx"), str(bundle / "model.int8-arm64.onnx"), op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8, per_channel=True)
    # the same dynamic file listed once more as if it were static, to prove the variant decides
    shutil.copy(bundle / "model.int8-arm64.onnx", bundle / "model.int8-static-arm64.onnx")
    manifest = read_manifest_json(bundle)
    manifest["artifacts"] += [artifact_entry(bundle, "model.int8-arm64.onnx", variant="int8", target="arm64"),
                              artifact_entry(bundle, "model.int8-static-arm64.onnx", variant="int8-static",
                                             target="arm64")]
    write_manifest(bundle, manifest)
    return bundle


def test_dynamic_int8_outputs_depend_on_the_batch_without_the_option(dynamic_bundle):
    clf = Classifier.from_bundle(dynamic_bundle, file="model.int8-arm64.onnx")
    assert clf.batch_invariant is False
    b32, b1 = clf.logits(TEXTS, batch_size=32), clf.logits(TEXTS, batch_size=1)
    assert np.abs(b32 - b1).max() > 1e-4   # the per-batch activation scale moved them


def test_batch_invariant_runs_dynamic_files_one_text_at_a_time(dynamic_bundle):
    clf = Classifier.from_bundle(dynamic_bundle, file="model.int8-arm64.onnx", batch_invariant=True)
    assert clf.batch_invariant is True
    alone = np.concatenate([clf.logits([t]) for t in TEXTS])
    for batch_size in (1, 5, 32):
        np.testing.assert_array_equal(clf.logits(TEXTS, batch_size=batch_size), alone)
    labels = [p.label for p in clf.predict(TEXTS, batch_size=32)]
    assert labels == [clf.labels[i] for i in alone.argmax(-1)]
    # and a text's result is the same whatever else the call carries
    np.testing.assert_array_equal(clf.logits(TEXTS[:1] + TEXTS[-3:], batch_size=32)[0], alone[0])


def test_batch_invariant_keeps_batching_for_fp32_and_static_files(dynamic_bundle):
    for file in ("model.onnx", "model.int8-static-arm64.onnx"):
        assert Classifier.from_bundle(dynamic_bundle, file=file, batch_invariant=True).batch_invariant is False


@pytest.mark.parametrize("variant, expected", [
    ("fp32", False), ("int8", True), ("int8-ort", True), ("int4", True), ("int8-static", False),
    ("int8-static-ort", False), ("tokenizer", False), ("mixed", True),
])
def test_batch_dependent_by_variant(variant, expected):
    assert batch_dependent({"variant": variant}) is expected


def test_batch_invariant_must_be_a_bool(dynamic_bundle):
    with pytest.raises(ValueError, match="batch_invariant must be True or False"):
        Classifier.from_bundle(dynamic_bundle, file="model.int8-arm64.onnx", batch_invariant="yes")
