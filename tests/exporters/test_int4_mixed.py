"""4-bit settings (algorithm, block size, symmetry, accuracy_level) and mixed int8 / 4-bit precision
by per-group sensitivity, on the tiny DEP bundle (tests/exporters/conftest.py) and on a one-MatMul
graph built in memory.

Measured here on the tiny bundle's Attention-free fused graph, logits SNR vs fp32 on its 40 eval
texts: RTN sym block 32 34 dB, block 128 32 dB, accuracy_level 4 35 dB, asymmetric 37 dB, HQQ 37 dB,
GPTQ 36-39 dB, all with >= 97.5% label agreement; group-only sensitivity 39-76 dB. On a single
MatMul with heavy-tailed weights, block 16 beats block 128 by several dB (a block's scale follows
its largest weight). Thresholds leave room for other CPUs' kernels.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from embslim.exporters.compare import snr_db
from embslim.exporters.quantize import QuantizationError, QuantizeConfig, quantize
from embslim.exporters.sensitivity import (
    choose_int4_groups,
    measure_sensitivity,
    run_feeds,
    weight_groups,
)

MIN_SNR_DB = 25.0
MIN_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def noattn(tiny_bundle, tmp_path_factory):
    """The 4-bit source graph: fused without the Attention op, so Q/K/V stay MatMuls."""
    from embslim.exporters.optimize import OptimizeConfig, optimize

    out = tmp_path_factory.mktemp("noattn") / "model.fused-noattn.onnx"
    return optimize(tiny_bundle.path / "model.onnx", out,
                    cfg=OptimizeConfig(attention=False, validation_shapes=((4, 19), (1, 64)))).path


@pytest.fixture(scope="module")
def feeds(tiny_bundle):
    """The eval texts through the bundle's own tokenizer, 16 per feed."""
    from embslim.pipeline.targets import model_feeds
    from embslim.runtime import Classifier

    return model_feeds(Classifier.from_bundle(tiny_bundle.path), tiny_bundle.task.eval, n=40)


@pytest.mark.parametrize("settings", [
    {"block_size": 32},
    {"block_size": 128},
    {"block_size": 32, "accuracy_level": 4},
    {"block_size": 32, "symmetric": False},
    {"block_size": 32, "algorithm": "hqq", "symmetric": False},
    {"block_size": 32, "algorithm": "gptq"},
    {"block_size": 32, "table_block_size": 16},
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_int4_settings_keep_logits_close(noattn, feeds, tmp_path, settings):
    cfg = QuantizeConfig(target="arm64", bits=4, **settings)
    result = quantize(noattn, tmp_path / cfg.file_name, cfg=cfg, calibration=feeds)
    assert result.int4_nodes == {"MatMulNBits": 12, "GatherBlockQuantized": 3}
    assert result.to_json()["int4"] == cfg.int4_settings == {
        "algorithm": "rtn", "symmetric": True, "accuracy_level": 0, "table_block_size": settings["block_size"],
        "kernel": "matmulnbits"} | settings
    model = onnx.load(str(result.path))
    tables = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert {helper.get_attribute_value(a) for n in tables for a in n.attribute if a.name == "block_size"} == {
        cfg.table_block_size}
    assert all(len(n.input) == 4 for n in tables)     # tables are asymmetric whatever `symmetric` says
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
    assert {a["block_size"] for a in attrs} == {cfg.block_size}
    assert {a.get("accuracy_level", 0) for a in attrs} == {cfg.accuracy_level}
    assert {len(n.input) >= 4 for n in nbits} == {not cfg.symmetric}     # zero points only when asymmetric
    ref, got = run_feeds(noattn, feeds), run_feeds(result.path, feeds)
    assert snr_db(ref, got) >= MIN_SNR_DB
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= MIN_AGREEMENT


def _one_matmul(path, *, k: int = 256, n: int = 64, seed: int = 0) -> np.ndarray:
    """Y = X @ W with heavy-tailed W (Student t, 3 dof), saved to `path`; returns W."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, size=(k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj/MatMul")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return w


def test_smaller_blocks_give_higher_snr_and_accuracy_level_4_stays_close(tmp_path):
    _one_matmul(tmp_path / "mm.onnx")
    x = [{"x": np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)}]
    ref = run_feeds(tmp_path / "mm.onnx", x)
    snr = {}
    for block, level in ((16, 0), (32, 0), (128, 0), (32, 4)):
        cfg = QuantizeConfig(target="arm64", bits=4, block_size=block, accuracy_level=level)
        quantize(tmp_path / "mm.onnx", tmp_path / f"mm-{block}-{level}.onnx", cfg=cfg)
        snr[block, level] = snr_db(ref, run_feeds(tmp_path / f"mm-{block}-{level}.onnx", x))
    assert snr[16, 0] > snr[32, 0] > snr[128, 0]
    assert snr[16, 0] - snr[128, 0] >= 2.0
    assert snr[32, 4] >= snr[32, 0] - 1.5      # int8 activations inside MatMulNBits cost little


def _gather_model(path, table: np.ndarray) -> None:
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="emb/Gather")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", table.shape[1]])],
                              [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _symmetric_rtn(table: np.ndarray, block: int) -> np.ndarray:
    """ORT's Gather RTN: symmetric blocks, the largest magnitude mapped to -8, float32 scales."""
    x = table.reshape(table.shape[0], -1, block)
    peak = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)
    s = np.where(peak == 0, 1, peak / -8)
    return (np.clip(np.round(x / s), -8, 7) * s).reshape(table.shape)


def test_table_quantizer_beats_symmetric_rtn_in_fewer_bytes_and_ort_reads_it(tmp_path):
    from embslim.exporters.quantize import quantize_table_4bit

    rng = np.random.default_rng(0)
    table = (0.05 * rng.standard_t(4, size=(300, 96)) + 0.02).astype(np.float32)   # heavy tails, an offset
    table[0] = 0                                                                   # the [PAD] row
    _gather_model(tmp_path / "g.onnx", table)
    cfg = QuantizeConfig(target="arm64", bits=4, block_size=32)
    result = quantize(tmp_path / "g.onnx", tmp_path / "g4.onnx", cfg=cfg)
    assert result.int4_nodes == {"GatherBlockQuantized": 1}
    ids = np.arange(300, dtype=np.int64)
    got = run_feeds(tmp_path / "g4.onnx", [{"ids": ids}])
    err = ((got - table) ** 2).mean()
    assert err < 0.9 * ((_symmetric_rtn(table, 32) - table) ** 2).mean()
    assert np.all(got[0] == 0)
    data, scales, zero_points = quantize_table_4bit(table, 32)
    assert (data.shape, scales.dtype, zero_points.shape) == ((300, 48), np.float16, (300, 2))
    stored = data.nbytes + scales.nbytes + zero_points.nbytes
    assert stored < 300 * 96 * 5 / 8                    # symmetric with float32 scales: 5 bits per value
    assert result.weight_bytes["4bit"] == data.nbytes + zero_points.nbytes


def test_a_table_of_odd_width_is_padded_for_4_bit_and_sliced_back(tmp_path):
    table = np.random.default_rng(2).normal(scale=0.05, size=(40, 43)).astype(np.float32)   # MESSI j=43
    _gather_model(tmp_path / "odd.onnx", table)
    result = quantize(tmp_path / "odd.onnx", tmp_path / "odd4.onnx", cfg=QuantizeConfig(target="arm64", bits=4))
    assert result.int4_nodes == {"GatherBlockQuantized": 1} and result.int4_node_names == ("emb/Gather",)
    got = run_feeds(tmp_path / "odd4.onnx", [{"ids": np.arange(40, dtype=np.int64)}])
    assert got.shape == (40, 43)
    assert snr_db(table, got) >= 18.0      # 4-bit blocks: ~20 dB on a Gaussian table


def test_table_quantizer_keeps_float32_scales_when_float16_cannot_hold_them():
    from embslim.exporters.quantize import quantize_table_4bit

    table = np.random.default_rng(1).normal(scale=1e-5, size=(8, 32)).astype(np.float32)
    _, scales, _ = quantize_table_4bit(table, 16)
    assert scales.dtype == np.float32
    with pytest.raises(QuantizationError, match=r"even hidden size .* got 33"):
        quantize_table_4bit(np.ones((4, 33), np.float32), 16)


def test_column_quantizer_is_exact_on_4_bit_columns_and_clips_outliers():
    from embslim.exporters.quantize import quantize_columns_4bit

    rng = np.random.default_rng(0)
    exact = rng.integers(-8, 8, size=(64, 5)).astype(np.float32) * np.array([0.5, 1, 2, 3e-3, 7], np.float32)
    exact[0] = -8 * np.array([0.5, 1, 2, 3e-3, 7])       # each column reaches -8: its range is the grid's
    values, scales = quantize_columns_4bit(exact)
    assert values.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (5,)
    np.testing.assert_allclose(values * scales, exact, rtol=1e-5, atol=0)
    heavy = rng.standard_t(3, size=(384, 32)).astype(np.float32)
    values, scales = quantize_columns_4bit(heavy)
    assert values.min() >= -8 and values.max() <= 7
    assert (scales < np.abs(heavy).max(axis=0) / 8.01).mean() > 0.5   # most columns clip their outliers
    plain = np.abs(heavy).max(axis=0) / 7.5
    rtn = np.clip(np.rint(heavy / plain), -8, 7) * plain
    assert ((heavy - values * scales) ** 2).sum() < ((heavy - rtn) ** 2).sum()
    zero = quantize_columns_4bit(np.zeros((4, 2), np.float32))
    assert (zero[0] == 0).all() and (zero[1] > 0).all()
    with pytest.raises(ValueError, match=r"2-D \[K, N\] weight, got shape \(3,\)"):
        quantize_columns_4bit(np.zeros(3))


def test_gptq_columns_cut_the_output_error_of_round_to_nearest():
    """GPTQ's claim (Frantar et al. 2022): on correlated inputs, spreading each row's rounding error over the
    rows still to come leaves less error in X W than rounding every weight alone, on the same grid."""
    from embslim.exporters.quantize import gptq_columns_4bit, quantize_columns_4bit

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 96)) @ rng.standard_normal((96, 96)) * rng.gamma(1.0, 1.0, 96)  # mixed, uneven channels
    w = rng.standard_t(4, size=(96, 48)).astype(np.float32)
    v_rtn, s_rtn = quantize_columns_4bit(w)
    v_gptq, s_gptq = gptq_columns_4bit(w, x.T @ x)
    np.testing.assert_array_equal(s_gptq, s_rtn)                         # same per-column grid
    assert v_gptq.dtype == np.int8 and v_gptq.min() >= -8 and v_gptq.max() <= 7
    err = {name: np.linalg.norm(x @ (w - v * s)) for name, v, s in (("rtn", v_rtn, s_rtn), ("gptq", v_gptq, s_gptq))}
    assert err["gptq"] < 0.8 * err["rtn"]
    dead = x.copy()
    dead[:, 5] = 0                                                       # an input channel that never fires
    v, _ = gptq_columns_4bit(w, dead.T @ dead)
    assert (v[5] == 0).all()
    with pytest.raises(ValueError, match=r"weight \[K, N\] and hessian \[K, K\]"):
        gptq_columns_4bit(w, np.eye(3))


def test_int8_kernel_gptq_needs_calibration_and_uses_it(noattn, feeds, tmp_path):
    cfg = QuantizeConfig(target="arm64", bits=4, kernel="int8", algorithm="gptq")
    with pytest.raises(QuantizationError, match=r"algorithm 'gptq' needs calibration feeds"):
        quantize(noattn, tmp_path / "x.onnx", cfg=cfg)
    rtn = quantize(noattn, tmp_path / "rtn.onnx", cfg=QuantizeConfig(target="arm64", bits=4, kernel="int8"))
    gptq = quantize(noattn, tmp_path / "gptq.onnx", cfg=cfg, calibration=feeds)
    assert gptq.int4_nodes == rtn.int4_nodes and abs(gptq.bytes_out - rtn.bytes_out) < 1000
    ref = run_feeds(noattn, feeds)
    assert snr_db(ref, run_feeds(gptq.path, feeds)) > snr_db(ref, run_feeds(rtn.path, feeds))   # on its own calibration


def test_int8_kernel_stores_int4_and_runs_the_int8_kernels(noattn, feeds, tmp_path):
    """kernel 'int8': no MatMulNBits; every MatMul is an int8 MatMulInteger whose weight is cast from an INT4
    initializer, the file about as small as MatMulNBits' and its logits about as close to fp32."""
    nbits = quantize(noattn, tmp_path / "nbits.onnx", cfg=QuantizeConfig(target="arm64", bits=4))
    int8 = quantize(noattn, tmp_path / "int8.onnx", cfg=QuantizeConfig(target="arm64"))
    cfg = QuantizeConfig(target="arm64", bits=4, kernel="int8")
    result = quantize(noattn, tmp_path / cfg.file_name, cfg=cfg)
    assert result.int4_nodes == {"MatMulInteger": 12, "GatherBlockQuantized": 3}
    assert result.to_json()["int4"]["kernel"] == "int8"
    model = onnx.load(str(result.path))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulNBits" not in ops and "MatMulInteger" in ops
    assert sum(i.data_type == TensorProto.INT4 for i in model.graph.initializer) == 12
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert result.weight_bytes["8bit"] < int8.weight_bytes["8bit"] / 2
    assert result.bytes_out < int8.bytes_out and abs(result.bytes_out - nbits.bytes_out) < 0.15 * nbits.bytes_out
    ref, got = run_feeds(noattn, feeds), run_feeds(result.path, feeds)
    assert snr_db(ref, got) >= MIN_SNR_DB - 5          # per column is coarser than 32-weight blocks
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= MIN_AGREEMENT
    source = onnx.load(str(noattn))
    weights = {i.name for i in source.graph.initializer}
    assert set(result.int4_node_names) >= {n.name for n in source.graph.node if n.op_type == "MatMul" and n.input[1] in weights}


def test_int8_kernel_mixed_file_and_its_sensitivity(noattn, feeds, tmp_path):
    groups = {g.name: g for g in weight_groups(onnx.load(str(noattn)), kernel="int8")}
    blocks32 = {g.name: g for g in weight_groups(onnx.load(str(noattn)))}
    assert all(groups[n].int4_bytes < blocks32[n].int4_bytes for n in groups if n.startswith("layer"))   # no block scales
    cfg = QuantizeConfig(target="arm64", kernel="int8")
    table = {r.group.name: r.snr_db for r in measure_sensitivity(noattn, feeds, cfg=cfg)}
    blocks = {r.group.name: r.snr_db for r in measure_sensitivity(noattn, feeds, cfg=QuantizeConfig(target="arm64"))}
    assert all(np.isfinite(v) for v in table.values())
    layers = [n for n in table if n.startswith("layer")]
    assert all(20 < table[n] < 120 for n in layers)             # measured 38-76 dB: each group's own 4-bit noise
    assert sum(abs(table[n] - blocks[n]) > 0.5 for n in layers) >= len(layers) // 2   # not MatMulNBits' blocks
    nodes = groups["layer1.ffn.in"].nodes + groups["layer0.attention.qkv"].nodes
    mixed = quantize(noattn, tmp_path / "mixed.onnx", cfg=QuantizeConfig(target="arm64", int4_nodes=nodes, kernel="int8"))
    assert set(mixed.int4_node_names) == set(nodes) and mixed.int4_nodes == {"MatMulInteger": len(nodes)}
    assert mixed.quantized.get("MatMul", 0) == 12


def test_int8_kernel_refuses_u8_weights():
    with pytest.raises(ValueError, match=r"kernel 'int8' runs 4-bit weights as s8 .* target avx2's int8 weights are u8"):
        QuantizeConfig(target="avx2", bits=4, kernel="int8")
    with pytest.raises(ValueError, match=r"target avx2's int8 weights are u8"):
        QuantizeConfig(target="avx2", int4_nodes=(), kernel="int8")
    assert QuantizeConfig(target="avx2", bits=8, kernel="int8").bits == 8   # an int8 file has no 4-bit weights


def test_gptq_without_calibration_is_one_line(noattn, tmp_path):
    with pytest.raises(QuantizationError, match=r"algorithm 'gptq' needs calibration feeds"):
        quantize(noattn, tmp_path / "x.onnx", cfg=QuantizeConfig(target="arm64", bits=4, algorithm="gptq"))


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "awq"}, r"algorithm must be one of rtn, hqq, gptq, got 'awq'"),
    ({"algorithm": "hqq"}, r"algorithm 'hqq' always writes zero points .* set symmetric=False"),
    ({"symmetric": "no"}, r"symmetric must be True or False, got 'no'"),
    ({"accuracy_level": True}, r"accuracy_level must be 0, 1, 2, 3 or 4, got True"),
    ({"bits": 4, "int4_nodes": ("a",)}, r"int4_nodes \(mixed precision\) needs bits=8"),
    ({"table_block_size": 24}, r"table_block_size must be a power of two >= 16 .* got 24"),
    ({"kernel": "nbits"}, r"kernel must be one of matmulnbits, int8, got 'nbits'"),
    ({"kernel": "int8", "symmetric": False}, r"kernel 'int8' .* symmetric weights .* drop symmetric=False"),
    ({"kernel": "int8", "algorithm": "hqq", "symmetric": False}, r"kernel 'int8' .* takes algorithm 'rtn' or 'gptq', not 'hqq'"),
    ({"kernel": "int8", "algorithm": "hqq"}, r"kernel 'int8' .* not 'hqq'"),     # the kernel speaks first, not hqq's rule
    ({"kernel": "int8", "accuracy_level": 4}, r"accuracy_level 4 sets MatMulNBits' compute, and kernel 'int8' runs no"),
])
def test_int4_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(target="arm64", **kwargs)


def test_mixed_file_names_and_unknown_nodes(noattn, tmp_path):
    cfg = QuantizeConfig(target="avx2", int4_nodes=("no-such-node",))
    assert (cfg.variant, cfg.file_name) == ("mixed", "model.mixed-avx2.onnx")
    with pytest.raises(QuantizationError, match=r"int4_nodes not in model.fused-noattn.onnx: no-such-node"):
        quantize(noattn, tmp_path / cfg.file_name, cfg=cfg)


# -- grouping and sensitivity ---------------------------------------------------------------

def test_weight_groups_by_layer_and_role(noattn):
    groups = {g.name: g for g in weight_groups(onnx.load(str(noattn)))}
    roles = ("attention.qkv", "attention.out", "ffn.in", "ffn.out")
    tables = {n for n in groups if n.startswith("embeddings.")}
    assert set(groups) == {f"layer{i}.{r}" for i in (0, 1) for r in roles} | tables
    # the tiny bundle's DEP table sits behind the remap (word_embeddings.inner)
    assert tables == {"embeddings.word_embeddings.inner", "embeddings.position_embeddings",
                      "embeddings.token_type_embeddings"} and all(len(groups[t].nodes) == 1 for t in tables)
    assert len(groups["layer1.attention.qkv"].nodes) == 3 and groups["layer1.ffn.in"].params == 128 * 512
    assert all(g.bytes_saved > 0 for g in groups.values())


def test_weight_groups_from_graph_structure_when_names_say_nothing(noattn, tmp_path):
    model = onnx.load(str(noattn))
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
        node.output[:] = [f"t{i}_{j}" if o != "logits" else o for j, o in enumerate(node.output)]
    # rewire inputs to the renamed outputs
    renamed = {}
    original = onnx.load(str(noattn))
    for old, new in zip(original.graph.node, model.graph.node):
        renamed.update(zip(old.output, new.output))
    for node in model.graph.node:
        node.input[:] = [renamed.get(x, x) for x in node.input]
    groups = weight_groups(model)
    by_layer = {}
    for g in groups:
        by_layer.setdefault(g.layer, []).append(g)
    assert sorted(k for k in by_layer if k is not None) == [0, 1]
    for layer in (0, 1):   # Q/K/V share an input; the other three are numbered in graph order
        assert sorted(g.role for g in by_layer[layer]) == ["attention.qkv", "matmul1", "matmul2", "matmul3"]
        assert len(next(g for g in by_layer[layer] if g.role == "attention.qkv").nodes) == 3


def _make_sensitive(src, dst, group) -> None:
    """Zero every 16th input feature of the group's first MatMul (a Mul before it) and put a huge
    weight on those rows: fp32 is unchanged by the huge rows, but each 4-bit block's scale follows
    them and the block's other weights round to zero."""
    model = onnx.load(str(src))
    node = next(n for n in model.graph.node if n.name == group.nodes[0])
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[node.input[1]]).copy()
    mask = np.ones(w.shape[0], np.float32)
    mask[::16] = 0.0
    w[::16, :] = 1000.0 * np.abs(w).max()
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
    model.graph.initializer.append(numpy_helper.from_array(mask, "sensitive_mask"))
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index, helper.make_node("Mul", [node.input[0], "sensitive_mask"], ["masked_in"],
                                                    name="sensitive_mask_mul"))
    node.input[0] = "masked_in"
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def sensitive(noattn, feeds, tmp_path_factory):
    """(graph with layer1.ffn.in made sensitive, its sensitivity table)."""
    groups = {g.name: g for g in weight_groups(onnx.load(str(noattn)))}
    path = tmp_path_factory.mktemp("sensitive") / "model.fused-noattn.onnx"
    _make_sensitive(noattn, path, groups["layer1.ffn.in"])
    return path, measure_sensitivity(path, feeds, cfg=QuantizeConfig(target="arm64"))


def test_sensitivity_ranks_the_sensitive_group_first(sensitive, noattn, feeds):
    # measured: layer1.ffn.in 75.6 dB in the plain graph (least sensitive), 34.0 dB once made sensitive
    # (next: the embedding tables from 38 dB, layer0.attention.qkv 41.8; the others 65-72)
    _, table = sensitive
    plain = {r.group.name: r.snr_db for r in measure_sensitivity(noattn, feeds, cfg=QuantizeConfig(target="arm64"))}
    assert table[0].group.name == "layer1.ffn.in"
    assert table[0].snr_db < plain["layer1.ffn.in"] - 20
    assert all(abs(r.snr_db - plain[r.group.name]) < 3 for r in table[1:] if r.group.layer == 0)   # upstream: unchanged
    assert [r.snr_db for r in table] == sorted(r.snr_db for r in table)
    assert {r.group.name for r in table} >= {"embeddings.word_embeddings.inner", "layer0.attention.qkv"}


def test_byte_budget_fits_and_keeps_the_sensitive_group_int8(sensitive, feeds, tmp_path):
    path, table = sensitive
    base = quantize(path, tmp_path / "base.onnx", cfg=QuantizeConfig(target="arm64", int4_nodes=()))
    budget = base.bytes_out - 60_000   # needs a few groups, not all
    chosen = choose_int4_groups(table, base_bytes=base.bytes_out, max_bytes=budget)
    assert 0 < len(chosen) < len(table) and "layer1.ffn.in" not in chosen
    by_name = {r.group.name: r.group for r in table}
    nodes = tuple(n for g in chosen for n in by_name[g].nodes)
    cfg = QuantizeConfig(target="arm64", int4_nodes=nodes)
    mixed = quantize(path, tmp_path / cfg.file_name, cfg=cfg)
    assert mixed.bytes_out <= budget
    assert set(mixed.int4_node_names) == set(nodes)
    assert "MatMulNBits" in mixed.int4_nodes and mixed.quantized.get("MatMul", 0) == 12   # the rest int8
    ref = run_feeds(path, feeds)
    assert snr_db(ref, run_feeds(mixed.path, feeds)) >= MIN_SNR_DB
    every = choose_int4_groups(table, base_bytes=base.bytes_out, max_bytes=1)
    assert sorted(every) == sorted(r.group.name for r in table)   # nothing fits: all of them, caller checks


# -- the targets stage ------------------------------------------------------------------------

def test_targets_stage_writes_a_mixed_file_the_runtime_loads(tiny_bundle, tmp_path):
    from embslim.pipeline.report import render_markdown
    from embslim.pipeline.scoring import scorer_for
    from embslim.pipeline.targets import TargetsConfig, build_targets
    from embslim.pipeline.validate import ValidateConfig
    from embslim.runtime import Classifier
    from embslim.runtime.manifest import read_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    for f in bundle.glob("model.*.onnx"):   # files other tests added; keep model.onnx only
        f.unlink()
    cfg = TargetsConfig(targets=("arm64",), mixed=True, max_drop=0.05, calibration_texts=32)
    scorer = scorer_for("text-classification", n_labels=tiny_bundle.n_labels)
    rows = build_targets(bundle, tiny_bundle.task.eval, cfg=cfg, validate=ValidateConfig(measure=False),
                         work=tmp_path / "work", scorer=scorer, calibration=tiny_bundle.task.train)
    row = next(r for r in rows if r["precision"] == "mixed")
    assert row["file"] == "model.mixed-arm64.onnx" and not row["flagged"]
    assert row["accuracy_drop_vs_fp32"] <= 0.05
    groups = row["mixed"]["groups"]
    assert len(groups) == 11 and {g["precision"] for g in groups} <= {"int4", "int8"}   # 8 layer groups + 3 tables
    assert sorted(row["mixed"]["int4_groups"]) == sorted(g["group"] for g in groups if g["precision"] == "int4")
    assert row["mixed"]["int4_groups"], "max_drop 5 points on a model that loses ~0 at 4-bit: some groups go 4-bit"
    assert row["int4"] == {"algorithm": "rtn", "block_size": 32, "symmetric": True, "accuracy_level": 0,
                           "table_block_size": 32, "kernel": "matmulnbits"}
    entries = {e["file"]: e for e in read_manifest(bundle, staging=True)["artifacts"]}
    assert entries["model.mixed-arm64.onnx"]["variant"] == "mixed"
    clf = Classifier.from_bundle(bundle, variant="mixed", staging=True)
    assert {p.label for p in clf.predict(["a great film", "a dull film"])} <= set(clf.labels)
    # "auto" picks an int8 file for this machine or fp32, never the mixed one
    assert Classifier.from_bundle(bundle, variant="auto", staging=True).artifact["variant"] in ("int8", "fp32")
    md = render_markdown({"title": "t", "variants": [{"name": "fp32", "precision": "fp32"}, row]})
    assert "## Mixed precision (mixed-arm64)" in md and "| layer0.attention.qkv |" in md


def test_byte_budget_below_every_mix_fails_before_fusion_and_scoring(tiny_bundle, tmp_path, caplog):
    import logging

    from embslim.exporters.sensitivity import weight_groups
    from embslim.exporters.quantize import _load
    from embslim.pipeline.scoring import scorer_for
    from embslim.pipeline.targets import TargetsConfig, TargetsError, build_targets, smallest_mixed_bytes
    from embslim.pipeline.validate import ValidateConfig

    # the estimate, from the float model alone, errs high by less than the 10% the early check allows
    model = tiny_bundle.path / "model.onnx"
    groups = weight_groups(_load(model))
    every = quantize(model, tmp_path / "all4.onnx", cfg=QuantizeConfig(
        target="arm64", int4_nodes=tuple(n for g in groups for n in g.nodes)))
    floor = smallest_mixed_bytes(model, TargetsConfig(targets=("arm64",), max_bytes=1))
    assert every.bytes_out <= floor <= 1.08 * every.bytes_out

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    cfg = TargetsConfig(targets=("arm64",), max_bytes=1000, calibration_texts=16)
    with caplog.at_level(logging.INFO), pytest.raises(TargetsError, match=r"max_bytes 1,000 bytes is below the "
                                                                          r"smallest mixed file .* at least [0-9.]+MB"):
        build_targets(bundle, tiny_bundle.task.eval, cfg=cfg, validate=ValidateConfig(measure=False),
                      work=tmp_path / "work", scorer=scorer_for("text-classification", n_labels=tiny_bundle.n_labels),
                      calibration=tiny_bundle.task.train)
    assert "fusing" not in caplog.text and "4-bit sensitivity" not in caplog.text


def test_avx512_vnni_int8_is_quantized_unfused_and_arm64_fused(tiny_bundle, tmp_path):
    """Fusion per target (pipeline.targets.UNFUSED_INT8_TARGETS): the VNNI file keeps plain MatMuls."""
    import onnx

    from embslim.pipeline.scoring import scorer_for
    from embslim.pipeline.targets import TargetsConfig, build_targets
    from embslim.pipeline.validate import ValidateConfig

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    for f in bundle.glob("model.*.onnx"):
        f.unlink()
    cfg = TargetsConfig(targets=("arm64", "avx512-vnni"), allow_drop=True)
    rows = build_targets(bundle, tiny_bundle.task.eval, cfg=cfg, validate=ValidateConfig(measure=False),
                         work=tmp_path / "work", scorer=scorer_for("text-classification", n_labels=tiny_bundle.n_labels))
    ops = {r["file"]: {n.op_type for n in onnx.load(str(bundle / r["file"])).graph.node} for r in rows}
    assert "QAttention" in ops["model.int8-arm64.onnx"]
    assert not {"QAttention", "Attention", "SkipLayerNormalization"} & ops["model.int8-avx512-vnni.onnx"]
    assert "DynamicQuantizeLinear" in ops["model.int8-avx512-vnni.onnx"]
    by_file = {r["file"]: r for r in rows}
    assert by_file["model.int8-arm64.onnx"]["description"].startswith("fused, ")
    assert not by_file["model.int8-avx512-vnni.onnx"]["description"].startswith("fused")


def test_byte_budget_returns_groups_the_last_large_one_made_unneeded():
    """Greedy by noise per byte takes two small quiet groups, then a large one that alone covers the
    budget: the small ones go back to int8 (less noise, still within the budget)."""
    from embslim.exporters.sensitivity import GroupSensitivity, WeightGroup

    def group(name, saved, snr):
        g = WeightGroup(name=name, layer=0, role=name, nodes=(name,), params=saved, int8_bytes=2 * saved, int4_bytes=saved)
        return GroupSensitivity(group=g, snr_db=snr, noise=10 ** (-snr / 10))

    table = [group("small_a", 100, 40.0), group("small_b", 100, 39.0), group("big", 1000, 25.0), group("other", 1000, 20.0)]
    assert choose_int4_groups(table, base_bytes=10_000, max_bytes=9_050) == ["big"]
    # when the small ones are still needed, they stay
    assert choose_int4_groups(table, base_bytes=10_000, max_bytes=8_850) == ["small_a", "small_b", "big"]


def test_int8_kernel_on_a_token_classification_graph(tmp_path):
    """A tagger's exported graph (per-token logits [batch, tokens, tags]) takes kernel 'int8' 4-bit too, and its
    tags stay mostly those of fp32 (a random tiny tagger's logits sit close together: 83% agree here)."""
    pytest.importorskip("torch")
    from tagger_bundle import make_tagger_bundle

    bundle = make_tagger_bundle(tmp_path, max_length=24)
    cfg = QuantizeConfig(target="arm64", bits=4, kernel="int8", validation_shapes=((2, 11), (1, 24)))
    result = quantize(bundle / "model.onnx", tmp_path / cfg.file_name, cfg=cfg)
    assert result.int4_nodes.get("MatMulInteger", 0) >= 12
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, size=(4, 24))
    feed = [{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}]
    ref, got = run_feeds(bundle / "model.onnx", feed), run_feeds(result.path, feed)
    assert ref.shape == got.shape and len(np.unique(ref.argmax(-1))) > 3   # the tags vary (measured: 10 of 13)
    assert snr_db(ref, got) > 12 and (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.75   # measured 17.4 dB, 83%


def test_a_matmul_of_the_embedding_stage_is_named_by_the_embedding():
    """A MESSI basis MatMul runs before the first LayerNorm: its group is an embeddings one, not layer 0."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "coeff"),
             numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "basis"),
             numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w_in")]
    nodes = [helper.make_node("Gather", ["coeff", "ids"], ["c"], name="/m/embeddings/word_embeddings/inner/Gather"),
             helper.make_node("MatMul", ["c", "basis"], ["e"], name="/m/embeddings/word_embeddings/inner/MatMul"),
             helper.make_node("LayerNormalization", ["e", "gamma"], ["h"], name="/m/embeddings/LayerNorm"),
             helper.make_node("MatMul", ["h", "w_in"], ["y"], name="/m/encoder/layer.0/intermediate/dense/MatMul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    groups = {g.name: g for g in weight_groups(helper.make_model(graph))}
    assert set(groups) == {"embeddings.word_embeddings.inner.matmul", "embeddings.coeff", "layer0.ffn.in"}
    basis = groups["embeddings.word_embeddings.inner.matmul"]
    assert (basis.layer, basis.role, basis.nodes, basis.params) == (
        None, "embeddings", ("/m/embeddings/word_embeddings/inner/MatMul",), 8 * 16)
