"""SmoothQuant before dynamic int8 (embslim.exporters.smooth), on a post-LN block built in memory
whose LayerNorm gives two channels 30x the others' range (the outliers of real transformer hidden
states), and through the targets stage on the tiny DEP bundle.

Measured here on the in-memory block (int8 output SNR vs fp32, 8 batches): plain dynamic int8
~25 dB, smoothed (alpha 0.5-0.85) ~32-34 dB; the fp32 output moves by < 1e-5 relative.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from embslim.exporters.compare import snr_db
from embslim.exporters.quantize import QuantizeConfig, quantize
from embslim.exporters.sensitivity import run_feeds
from embslim.exporters.smooth import (
    SmoothError,
    activation_ranges,
    smooth,
    smooth_for_int8,
    smoothable_inputs,
)

HIDDEN, FFN, OUT = 64, 128, 16
OUTLIERS = (3, 41)


def _block(path) -> onnx.ModelProto:
    """x [b, s, 64] -> embed/MatMul -> LayerNorm (channels 3 and 41 scaled 30x) -> two MatMuls on the
    normed tensor (a Q/K-like pair sharing it) -> Add -> Relu -> MatMul -> logits [b, s, 16]."""
    rng = np.random.default_rng(0)
    gamma = np.ones(HIDDEN, np.float32)
    gamma[list(OUTLIERS)] = 30.0
    inits = [numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 8, "w_embed"),
             numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, FFN)).astype(np.float32) / 8, "w_a"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, FFN)).astype(np.float32) / 8, "w_b"),
             numpy_helper.from_array(rng.standard_normal((FFN, OUT)).astype(np.float32) / 8, "w_out")]
    nodes = [helper.make_node("MatMul", ["x", "w_embed"], ["e"], name="embed/MatMul"),
             helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w_a"], ["a"], name="layer.0/a/MatMul"),
             helper.make_node("MatMul", ["h", "w_b"], ["b"], name="layer.0/b/MatMul"),
             helper.make_node("Add", ["a", "b"], ["ab"], name="add"),
             helper.make_node("Relu", ["ab"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w_out"], ["logits"], name="layer.0/out/MatMul")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", HIDDEN])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return model


def _feeds(n: int = 8, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 12, HIDDEN)).astype(np.float32)} for _ in range(n)]


def test_smoothable_inputs_skip_the_embedding_stage_and_group_shared_inputs(tmp_path):
    groups = smoothable_inputs(_block(tmp_path / "b.onnx"))
    assert groups == {"h": ["layer.0/a/MatMul", "layer.0/b/MatMul"], "r": ["layer.0/out/MatMul"]}


def test_activation_ranges_find_the_outlier_channels(tmp_path):
    ranges = activation_ranges(_block(tmp_path / "b.onnx"), _feeds(), ["h"])["h"]
    assert ranges.shape == (HIDDEN,)
    others = np.delete(ranges, OUTLIERS)
    assert ranges[list(OUTLIERS)].min() > 10 * others.max()


def test_smoothing_keeps_fp32_outputs_and_scales_each_shared_input_once(tmp_path):
    model = _block(tmp_path / "b.onnx")
    feeds = _feeds()
    ranges = activation_ranges(model, feeds, list(smoothable_inputs(model)))
    smoothed = smooth(model, ranges, 0.75)
    muls = [n for n in smoothed.graph.node if n.op_type == "Mul"]
    assert len(muls) == 2 and {m.input[0] for m in muls} == {"h", "r"}
    onnx.checker.check_model(smoothed)
    ref, out = run_feeds(model, feeds), run_feeds(smoothed, feeds)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    # the outlier channels' weight rows took the scale: their rows grew, the others' shrank
    w_a = numpy_helper.to_array(next(i for i in smoothed.graph.initializer if i.name == "w_a"))
    w_a0 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_a"))
    growth = np.abs(w_a).max(1) / np.abs(w_a0).max(1)
    assert growth[list(OUTLIERS)].min() > 3 * np.delete(growth, OUTLIERS).max()


def test_smoothing_raises_int8_snr_and_alpha_is_picked_by_it(tmp_path):
    _block(tmp_path / "b.onnx")
    feeds, held_out = _feeds(8, seed=1), _feeds(4, seed=2)
    cfg = QuantizeConfig(target="arm64")
    quantize(tmp_path / "b.onnx", tmp_path / "plain.int8.onnx", cfg=cfg)
    result = smooth_for_int8(tmp_path / "b.onnx", tmp_path / "smoothed.onnx", feeds, cfg=cfg)
    assert result.alpha in (0.5, 0.65, 0.75, 0.85) and result.groups == 2
    assert set(result.snr_db) == {0.0, 0.5, 0.65, 0.75, 0.85}
    assert result.snr_db[result.alpha] == max(result.snr_db.values()) > result.snr_db[0.0]
    quantize(result.path, tmp_path / "smoothed.int8.onnx", cfg=cfg)
    ref = run_feeds(tmp_path / "b.onnx", held_out)   # texts the ranges were not taken on
    plain = snr_db(ref, run_feeds(tmp_path / "plain.int8.onnx", held_out))
    smoothed = snr_db(ref, run_feeds(tmp_path / "smoothed.int8.onnx", held_out))
    assert smoothed >= plain + 3.0, (plain, smoothed)


def test_given_alpha_is_used_and_bad_alpha_or_graph_is_one_error(tmp_path):
    _block(tmp_path / "b.onnx")
    cfg = QuantizeConfig(target="arm64")
    result = smooth_for_int8(tmp_path / "b.onnx", tmp_path / "s.onnx", _feeds(2), cfg=cfg, alpha=0.6)
    assert result.alpha == 0.6 and set(result.snr_db) == {0.6}
    with pytest.raises(SmoothError, match=r"alpha \(migration strength\) must be in \(0, 1\], got 1.5"):
        smooth_for_int8(tmp_path / "b.onnx", tmp_path / "s.onnx", _feeds(2), cfg=cfg, alpha=1.5)
    with pytest.raises(SmoothError, match="at least one calibration feed"):
        smooth_for_int8(tmp_path / "b.onnx", tmp_path / "s.onnx", [], cfg=cfg)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
                              [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "mm.onnx"))
    with pytest.raises(SmoothError, match="no MatMul with a float weight after a normalization node"):
        smooth_for_int8(tmp_path / "mm.onnx", tmp_path / "s.onnx", _feeds(1), cfg=cfg)


def test_targets_stage_quantizes_int8_and_mixed_from_the_smoothed_graph(tiny_bundle, tmp_path):
    from embslim.pipeline.scoring import scorer_for
    from embslim.pipeline.targets import TargetsConfig, build_targets
    from embslim.pipeline.validate import ValidateConfig

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    for f in bundle.glob("model.*.onnx"):
        f.unlink()
    cfg = TargetsConfig(targets=("arm64",), smooth_alpha=0.75, mixed=True, allow_drop=True, calibration_texts=32)
    assert cfg.smooth_quant
    rows = build_targets(bundle, tiny_bundle.task.eval, cfg=cfg, validate=ValidateConfig(measure=False),
                         work=tmp_path / "work", scorer=scorer_for("text-classification", n_labels=tiny_bundle.n_labels),
                         calibration=tiny_bundle.task.train)
    by_file = {r["file"]: r for r in rows}
    for file in ("model.int8-arm64.onnx", "model.mixed-arm64.onnx"):
        row = by_file[file]
        assert row["smooth_quant"]["alpha"] == 0.75 and row["smooth_quant"]["groups"] > 0
        assert row["description"].startswith("SmoothQuant alpha 0.75, unfused, ")
        names = [n.name for n in onnx.load(str(bundle / file)).graph.node]
        assert any(n.endswith("/SmoothQuant") for n in names)
        assert row["agreement_fp32"] >= 0.9
    assert (tmp_path / "work" / "model.smoothed.onnx").is_file()
    from embslim.pipeline.report import render_markdown

    md = render_markdown({"title": "t", "variants": [{"name": "fp32", "precision": "fp32"}] + rows})
    assert "## SmoothQuant" in md
    assert "- int8-arm64: alpha 0.75 (" in md and "- mixed-arm64: alpha 0.75 (" in md and "by alpha (dB): 0.75 " in md


@pytest.mark.parametrize("options, message", [
    ({"smooth_alpha": 0.0}, r"^smooth_alpha \(SmoothQuant migration strength\) must be in \(0, 1\], got 0.0"),
    ({"smooth_quant": True, "targets": ()}, r"^smooth_quant needs at least one target"),
    ({"static_int8": True, "calibration_method": "bogus"}, r"calibration_method"),
])
def test_targets_config_rejects_bad_smoothing_and_static_options(options, message):
    from embslim.pipeline.targets import TargetsConfig, TargetsError

    with pytest.raises(TargetsError, match=message):
        TargetsConfig(**options)
