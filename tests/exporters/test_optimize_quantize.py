"""Fusion and quantization of a tiny DEP bundle (tests/exporters/conftest.py builds it).

Lossy steps are judged the way DESIGN.md asks: label agreement with fp32 and accuracy on the tiny
task's eval split (40 sentences) through `embslim.runtime.Classifier`, plus the SNR of the logits. The
tiny model is trained for a few seconds first: a random model's logit margins are smaller than
int8 noise, so its labels would flip by chance. Measured here: int8 SNR 28-53 dB and 100%
agreement, 4-bit 28 dB and 100%; the thresholds below leave room for other CPUs' kernels.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from embslim.exporters.optimize import OptimizationError, OptimizeConfig, optimize
from embslim.exporters.quantize import (
    TARGETS,
    QuantizationAccuracyError,
    QuantizationError,
    QuantizeConfig,
    check_quantized,
    index_tables,
    quantize,
)
from embslim.pipeline.bundle import add_artifacts, artifact_entry

MIN_AGREEMENT = 0.95     # 40 eval sentences: at most 2 flips
MIN_SNR_DB_INT8 = 20.0
MIN_SNR_DB_INT4 = 15.0


def _remap(model: onnx.ModelProto, original_rows: int) -> onnx.TensorProto:
    found = [i for i in model.graph.initializer if list(i.dims) == [original_rows] and i.name.endswith("remap")]
    assert len(found) == 1, "expected one remap initializer of the original vocabulary size"
    return found[0]


def _assert_remap_untouched(path, original, original_rows: int) -> None:
    model = onnx.load(str(path))
    before, after = _remap(original, original_rows), _remap(model, original_rows)
    assert after.data_type == before.data_type == onnx.TensorProto.INT16   # the tiny vocabulary's rows fit int16
    assert onnx.numpy_helper.to_array(after).tobytes() == onnx.numpy_helper.to_array(before).tobytes()
    readers = [n for n in model.graph.node if after.name in n.input]
    assert [n.op_type for n in readers] == ["Gather"], "the remap must stay behind one plain Gather"
    assert not any(after.name in n.input for n in model.graph.node if n.op_type.startswith(("Dequantize", "GatherBlock")))


def _register(bundle, file, cfg: QuantizeConfig | None = None) -> None:
    variant, target = (cfg.variant, cfg.target) if cfg else ("fp32-fused", "any")
    add_artifacts(bundle, [artifact_entry(bundle, file, variant=variant, target=target)])


def _quantize_and_check(tiny_bundle, fused_model, cfg: QuantizeConfig, file: str | None = None):
    file = file or cfg.file_name
    result = quantize(fused_model.path, tiny_bundle.path / file, cfg=cfg)
    _register(tiny_bundle.path, file, cfg)
    task = check_quantized(tiny_bundle.path, file, tiny_bundle.task.eval, n_labels=tiny_bundle.n_labels)
    return result, task


# -- optimize -------------------------------------------------------------------------------

def test_optimize_fuses_attention_skip_layernorm_and_bias_gelu(tiny_bundle, fused_model):
    assert fused_model.fused.get("Attention") == 2          # one per layer
    assert fused_model.fused.get("SkipLayerNormalization") == 4
    assert fused_model.fused.get("BiasGelu") == 2
    assert "EmbedLayerNormalization" not in fused_model.fused   # custom (remapped) embedding: expected
    assert (fused_model.num_heads, fused_model.hidden_size) == (4, 128)   # read from config.json
    assert fused_model.comparison.max_abs_diff <= 1e-4
    assert [c[0] for c in fused_model.comparison.checks] == [
        "input names", "output names", "shape at (4, 19)", "shape at (1, 64)", "values"]
    ops = {n.op_type for n in onnx.load(str(fused_model.path)).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops and "Softmax" not in ops


def test_optimize_without_attention_keeps_projections_as_matmuls(tiny_bundle, tmp_path):
    result = optimize(tiny_bundle.path / "model.onnx", tmp_path / "noattn.onnx",
                      cfg=OptimizeConfig(config_json=str(tiny_bundle.path / "config.json"), attention=False))
    assert "Attention" not in result.fused and result.fused.get("SkipLayerNormalization") == 4
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    assert "Attention" not in ops and "Softmax" in ops
    assert result.comparison.max_abs_diff <= 1e-4
    int4 = quantize(result.path, tmp_path / "noattn.int4.onnx", cfg=QuantizeConfig(target="arm64", bits=4))
    # every projection is 4-bit: 2 layers x (Q, K, V, output, FFN in, FFN out) MatMuls + the classifier head's
    assert int4.int4_nodes.get("MatMulNBits", 0) >= 12


def test_optimize_fused_model_keeps_task_labels(tiny_bundle, fused_model):
    _register(tiny_bundle.path, fused_model.path.name)
    report = check_quantized(tiny_bundle.path, fused_model.path.name, tiny_bundle.task.eval,
                             n_labels=tiny_bundle.n_labels, max_drop=0.0)
    assert report["agreement"] == 1.0 and report["snr_db"] > 80


def test_optimize_failed_parity_raises_and_deletes_output(tiny_bundle, tmp_path, monkeypatch):
    import onnxruntime.transformers.optimizer as ort_optimizer

    real = ort_optimizer.optimize_model

    def broken(*args, **kwargs):   # a fusion that gets the classifier's weights wrong
        model = real(*args, **kwargs)
        for init in model.model.graph.initializer:
            if init.name.startswith("model.classifier.weight"):
                init.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(init), init.name))
        return model

    monkeypatch.setattr(ort_optimizer, "optimize_model", broken)
    out = tmp_path / "model.fused.onnx"
    with pytest.raises(OptimizationError, match=r"does not match the unfused graph: values: max \|diff\| .* atol 0.0001"):
        optimize(tiny_bundle.path / "model.onnx", out, cfg=OptimizeConfig(validation_shapes=((4, 19),)))
    assert not out.exists()


def test_optimize_needs_heads_without_config_json(tiny_bundle, tmp_path):
    lone = tmp_path / "model.onnx"
    shutil.copyfile(tiny_bundle.path / "model.onnx", lone)
    with pytest.raises(OptimizationError, match=r"num_heads/hidden_size not given and .*config.json not found"):
        optimize(lone, tmp_path / "fused.onnx", cfg=OptimizeConfig())
    with pytest.raises(OptimizationError, match="model_out must differ from model_in"):
        optimize(lone, lone, cfg=OptimizeConfig(num_heads=4, hidden_size=128))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_heads": 0}, r"num_heads must be a positive integer or None"),
    ({"num_heads": 5, "hidden_size": 128}, r"hidden_size 128 is not divisible by num_heads 5"),
    ({"model_type": "gpt2"}, r"model_type must be 'bert'"),
    ({"atol": 0.0}, r"atol must be > 0"),
    ({"validation_shapes": ((4, 0),)}, r"validation_shapes must be \(batch, sequence\) pairs >= 1"),
])
def test_optimize_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizeConfig(**kwargs)


# -- quantize -------------------------------------------------------------------------------

@pytest.mark.parametrize("target", list(TARGETS))
def test_int8_per_target_keeps_remap_and_task_labels(tiny_bundle, fused_model, target):
    cfg = QuantizeConfig(target=target)
    result, task = _quantize_and_check(tiny_bundle, fused_model, cfg)
    original = onnx.load(str(fused_model.path))
    _assert_remap_untouched(result.path, original, tiny_bundle.original_rows)
    assert list(result.index_tables.values()) == [_remap(original, tiny_bundle.original_rows).name]
    assert set(result.index_tables) <= set(result.excluded_nodes)
    # every float weight quantized: 2 fused Attentions, 6 MatMuls, pooler + classifier Gemm, 3 tables
    assert result.quantized == {"Attention": 2, "MatMul": 6, "Gemm": 2, "Gather": 3}
    assert result.float_weights_left == {} and result.int4_nodes == {}
    assert result.bytes_out < 0.35 * result.bytes_in
    weight_dtypes = {i.data_type for i in onnx.load(str(result.path)).graph.initializer if i.name.endswith("_quantized")}
    expected = onnx.TensorProto.UINT8 if TARGETS[target].weight_type == "QUInt8" else onnx.TensorProto.INT8
    assert expected in weight_dtypes
    assert task["agreement"] >= MIN_AGREEMENT and task["snr_db"] > MIN_SNR_DB_INT8
    assert task["drop"] <= 0.01 and task["flagged"] is False
    assert result.snr_db > MIN_SNR_DB_INT8   # random ids, vs the fused fp32 graph


def test_s8_weights_need_no_rewrite_where_the_cpu_has_an_int8_dot_product(tiny_bundle, fused_model, tmp_path):
    """The runtime leaves ORT's u8 x u8 rewrite (session.x64quantprecision) out on VNNI CPUs because
    their u8 x s8 kernel is exact: an s8-weight file gives the same outputs with and without it."""
    from embslim.exporters.compare import compare_onnx
    from embslim.runtime.cpu import has_int8_dot_product, is_x86

    if not is_x86():
        pytest.skip("the rewrite exists on x86 only")
    if not has_int8_dot_product():
        pytest.skip("this x86 CPU has no VNNI: its u8 x s8 kernel may saturate, so the outputs may differ")
    result = quantize(fused_model.path, tmp_path / "model.int8-arm64.onnx", cfg=QuantizeConfig(target="arm64"))
    assert compare_onnx(result.path, result.path, exact_int8=True, vocab_size=tiny_bundle.original_rows).max_abs_diff == 0.0
    with_rewrite = compare_onnx(fused_model.path, result.path, exact_int8=True, vocab_size=tiny_bundle.original_rows)
    without = compare_onnx(fused_model.path, result.path, exact_int8=False, vocab_size=tiny_bundle.original_rows)
    assert with_rewrite.max_abs_diff == without.max_abs_diff > 0


def test_int8_per_tensor_and_per_channel_both_work(tiny_bundle, fused_model):
    per_channel, task_pc = _quantize_and_check(tiny_bundle, fused_model, QuantizeConfig(target="arm64"),
                                               "model.int8-arm64-pc.onnx")
    per_tensor, task_pt = _quantize_and_check(tiny_bundle, fused_model,
                                              QuantizeConfig(target="arm64", per_channel=False),
                                              "model.int8-arm64-pt.onnx")
    # per channel: one fp32 scale per output column instead of one per matrix
    assert per_channel.weight_bytes["float"] > per_tensor.weight_bytes["float"]
    for task in (task_pc, task_pt):
        assert task["agreement"] >= MIN_AGREEMENT and task["snr_db"] > MIN_SNR_DB_INT8


def test_int4_is_smaller_than_int8_and_falls_back_to_int8(tiny_bundle, fused_model):
    int8 = quantize(fused_model.path, tiny_bundle.path / "model.int8-size.onnx", cfg=QuantizeConfig(target="arm64"))
    cfg = QuantizeConfig(target="arm64", bits=4)
    int4, task = _quantize_and_check(tiny_bundle, fused_model, cfg)
    assert cfg.file_name == "model.int4-arm64.onnx" and cfg.variant == "int4"
    assert int4.bytes_out < 0.8 * int8.bytes_out          # measured 352 KB vs 489 KB
    assert int4.int4_nodes == {"MatMulNBits": 6, "GatherBlockQuantized": 3}
    # what 4-bit cannot take goes int8: the fused Attentions' QKV weights and the two Gemms
    assert int4.quantized == {"Attention": 2, "MatMul": 6, "Gemm": 2, "Gather": 3}
    assert int4.weight_bytes["4bit"] > 0 and int4.weight_bytes["8bit"] > 0
    _assert_remap_untouched(int4.path, onnx.load(str(fused_model.path)), tiny_bundle.original_rows)
    assert task["agreement"] >= MIN_AGREEMENT and task["snr_db"] > MIN_SNR_DB_INT4


@pytest.mark.parametrize("bits", [8, 4])
def test_include_embeddings_false_keeps_tables_float(tiny_bundle, fused_model, tmp_path, bits):
    result = quantize(fused_model.path, tmp_path / "model.onnx",
                      cfg=QuantizeConfig(target="arm64", bits=bits, include_embeddings=False))
    assert result.float_weights_left == {"Gather": 3} and "Gather" not in result.quantized
    assert result.quantized["MatMul"] == 6


def test_quantize_unfused_export_too(tiny_bundle, tmp_path):
    """The exporter's graph without fusion (12 MatMuls: Q, K, V are separate) quantizes as well."""
    result = quantize(tiny_bundle.path / "model.onnx", tmp_path / "model.int8.onnx", cfg=QuantizeConfig(target="avx2"))
    assert result.quantized == {"MatMul": 12, "Gemm": 2, "Gather": 3}
    assert result.snr_db > MIN_SNR_DB_INT8


def _index_graph(table_type: int) -> onnx.ModelProto:
    """input_ids -> Gather(integer cluster ids) -> Gather(float table) -> MatMul -> logits, like a
    k-means / MESSI embedding: the integer table must survive both quantizers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    vocab, rows, dim, labels = 300, 40, 64, 3
    ids = numpy_helper.from_array(rng.integers(0, rows, vocab).astype(onnx.helper.tensor_dtype_to_np_dtype(table_type)),
                                  "cluster_ids")
    table = numpy_helper.from_array(rng.normal(size=(rows, dim)).astype(np.float32), "centroids")
    head = numpy_helper.from_array(rng.normal(size=(dim, labels)).astype(np.float32), "head")
    nodes = [helper.make_node("Gather", ["cluster_ids", "input_ids"], ["cid"], name="lookup_ids"),
             helper.make_node("Gather", ["centroids", "cid"], ["emb"], name="lookup_rows"),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"], name="classify")]
    graph = helper.make_graph(nodes, "index", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", labels])],
                              initializer=[ids, table, head])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("table_type", [onnx.TensorProto.INT64, onnx.TensorProto.INT32])
@pytest.mark.parametrize("bits", [8, 4])
def test_integer_index_tables_are_never_quantized(tmp_path, table_type, bits):
    src = tmp_path / "index.onnx"
    model = _index_graph(table_type)
    onnx.save(model, str(src))
    assert index_tables(model) == {"lookup_ids": "cluster_ids"}
    result = quantize(src, tmp_path / "q.onnx", cfg=QuantizeConfig(target="arm64", bits=bits))
    assert result.index_tables == {"lookup_ids": "cluster_ids"} and "lookup_ids" in result.excluded_nodes
    out = {i.name: i for i in onnx.load(str(result.path)).graph.initializer}
    assert out["cluster_ids"].data_type == table_type
    assert (onnx.numpy_helper.to_array(out["cluster_ids"]) ==
            onnx.numpy_helper.to_array(model.graph.initializer[0])).all()
    assert result.quantized == {"Gather": 1, "MatMul": 1}
    assert result.agreement >= 0.8


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "x86"}, r"target must be one of arm64, avx2, avx512-vnni, got 'x86'"),
    ({"target": "arm64", "bits": 2}, r"bits must be 8 or 4, got 2"),
    ({"target": "arm64", "bits": True}, r"bits must be 8 or 4, got True"),
    ({"target": "arm64", "block_size": 24}, r"block_size must be a power of two >= 16 .* got 24"),
    ({"target": "arm64", "block_size": 8}, r"block_size must be a power of two >= 16 .* got 8"),
    ({"target": "arm64", "per_channel": "yes"}, r"per_channel must be True or False, got 'yes'"),
    ({"target": "arm64", "accuracy_level": 5}, r"accuracy_level must be 0, 1, 2, 3 or 4, got 5"),
])
def test_quantize_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**kwargs)


def test_quantize_bad_paths(tiny_bundle, tmp_path):
    with pytest.raises(QuantizationError, match=r"not found; pass an exported \(or fused\) model.onnx"):
        quantize(tmp_path / "missing.onnx", tmp_path / "out.onnx", cfg=QuantizeConfig(target="arm64"))
    model = tiny_bundle.path / "model.onnx"
    with pytest.raises(QuantizationError, match=r"model_out must differ from model_in .* e.g. model.int8-avx2.onnx"):
        quantize(model, model, cfg=QuantizeConfig(target="avx2"))


# -- check_quantized ------------------------------------------------------------------------

def _negated_logits(src, dst) -> None:
    """A "quantized" model that is maximally wrong: the same graph with its logits negated."""
    model = onnx.load(str(src))
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node("Neg", ["logits_raw"], ["logits"], name="negate"))
    onnx.save(model, str(dst))


def test_check_quantized_raises_on_accuracy_drop_unless_allowed(tiny_bundle):
    bundle, split = tiny_bundle.path, tiny_bundle.task.eval
    _negated_logits(bundle / "model.onnx", bundle / "model.bad.onnx")
    _register(bundle, "model.bad.onnx", QuantizeConfig(target="arm64"))
    with pytest.raises(QuantizationAccuracyError,
                       match=r"model.bad.onnx: accuracy .* points below model.onnx .* on 40 examples; at most 1.00 "
                             r"allowed\. Try --smooth-quant"):
        check_quantized(bundle, "model.bad.onnx", split, n_labels=tiny_bundle.n_labels)
    report = check_quantized(bundle, "model.bad.onnx", split, n_labels=tiny_bundle.n_labels, allow_drop=True)
    assert report["flagged"] is True and report["agreement"] == 0.0
    assert report["accuracy"] == pytest.approx(1 - report["fp32_accuracy"])
    with pytest.raises(ValueError, match=r"max_drop is a share of examples in \[0, 1\]"):
        check_quantized(bundle, "model.bad.onnx", split, n_labels=tiny_bundle.n_labels, max_drop=1.5)
