"""The contract every compressor meets.

A compressor replaces the `inner` table of `embslim.pipeline.embedding.RemappedEmbedding`: its module
takes NEW ids (int32 or int64 tensors of any shape, values in [0, N)) and returns [..., d]
float32 vectors. It is written with ops that export to plain ONNX (Gather via F.embedding,
MatMul, Concat, Sin/Cos...) and that int8 quantization handles; integer index tables are
registered as buffers (int32 or int64), float tables as parameters (they fine-tune).

Every compressor module also has two attributes: `embedding_dim` (int) and `spec` (the same
JSON-able dict as `Fitted.spec`), which checkpoints store to rebuild the module.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from torch import nn


class CompressError(ValueError):
    """A compressor option cannot work for this matrix; the message says what would."""


@dataclass
class Fitted:
    module: nn.Module                 # new ids -> vectors; has an int attribute `embedding_dim`
    spec: dict[str, Any]              # JSON-able; {"type": <registry name>, ...} rebuilds an empty module via from_spec
    params: int                       # learned floats in the module (index buffers excluded)
    reconstruction_error: float       # ||E - E_hat||_F / ||E||_F of the fitted module, before fine-tuning
    fit_seconds: float
    info: dict[str, Any] = field(default_factory=dict)   # method-specific figures for the report


@dataclass(frozen=True)
class Compressor:
    name: str
    config: type                                   # frozen dataclass of options, validated in __post_init__
    fit: Callable[..., Fitted]                     # fit(weight: np.ndarray [N, d], cfg, *, counts: np.ndarray | None) -> Fitted
    from_spec: Callable[[dict[str, Any]], nn.Module]


def run_fit(method: str, body: Callable[[np.ndarray, Any], Fitted], weight: np.ndarray, cfg: Any,
            counts: np.ndarray | None) -> Fitted:
    """The part every `fit` shares: check the matrix and counts, then run `body(x, cfg)` with
    `cfg.threads` BLAS threads."""
    with fit_threads(cfg.threads):
        x = as_matrix(weight, method=method)
        check_counts(counts, x.shape[0], method=method)
        return body(x, cfg)


def check_spec(spec: dict[str, Any], method: str, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint spec of another type or with missing keys, naming what was expected."""
    missing = sorted(set(keys) - set(spec))
    if spec.get("type") != method or missing:
        raise CompressError(f"{method}: expected a spec {{'type': '{method}', {', '.join(repr(k) for k in keys)}}}, got {spec!r}"
                            + (f" (missing {missing})" if missing else ""))


def relative_error(weight: np.ndarray, module: nn.Module) -> float:
    """||E - module(arange(N))||_F / ||E||_F."""
    import torch

    with torch.no_grad():
        approx = module(torch.arange(weight.shape[0])).float().numpy()
    return float(np.linalg.norm(weight - approx) / max(np.linalg.norm(weight), 1e-12))


def token_weighted_error(weight: np.ndarray, module: nn.Module, counts: np.ndarray | None) -> float | None:
    """The reconstruction error as the task reads the rows: each row's squared error weighted by
    how often the training text uses it, sqrt(sum c_i ||E_i - E_hat_i||^2 / sum c_i ||E_i||^2).
    None without counts. A compressor that keeps the frequent rows exact (`exact_top`) can have
    the larger plain error and the smaller weighted one."""
    import torch

    if counts is None:
        return None
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (weight.shape[0],) or c.sum() <= 0:
        return None
    with torch.no_grad():
        approx = module(torch.arange(weight.shape[0])).double().numpy()
    w = np.asarray(weight, dtype=np.float64)
    num = float((c * ((w - approx) ** 2).sum(1)).sum())
    den = float((c * (w ** 2).sum(1)).sum())
    return float(np.sqrt(num / max(den, 1e-30)))


# ---------------------------------------------------------------------------------------------
# Small helpers the compressors share (numpy only; torch stays inside the modules).

@contextmanager
def fit_threads(n: int | None) -> Iterator[None]:
    """Run a fit with at most `n` BLAS/OpenMP threads (None: leave the libraries' defaults).

    Each config's `threads` defaults to 1: on a shared 2-core machine the libraries' spinning worker
    threads fight other processes, and one thread was 4-35x faster there (30,522 x 384 Gram matrix
    0.14 s vs 1.37 s, 384 x 384 eigh 0.035 s vs 1.26 s). On an idle many-core machine pass None.
    """
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n):
        yield


def check_threads(n: int | None, *, method: str) -> None:
    if n is not None and (not isinstance(n, int) or n < 1):
        raise CompressError(f"{method}: threads must be a positive int or None (the libraries' default), got {n!r}")


def as_matrix(weight: np.ndarray, *, method: str) -> np.ndarray:
    """The pretrained [N, d] matrix as C-contiguous float32, or a CompressError saying what came."""
    w = np.asarray(weight)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise CompressError(f"{method}: expected the embedding matrix as a 2-D array [rows, dim], got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise CompressError(f"{method}: expected a float matrix, got dtype {w.dtype}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise CompressError(f"{method}: the matrix has NaN or infinite entries; fix the checkpoint before compressing")
    return w


def check_counts(counts: np.ndarray | None, rows: int, *, method: str) -> np.ndarray | None:
    """`counts` (training frequency per new id) must have one entry per row when given."""
    if counts is None:
        return None
    c = np.asarray(counts)
    if c.shape != (rows,):
        raise CompressError(f"{method}: counts must have one entry per row ({rows},), got shape {c.shape}")
    return c


def rank_for_share(rows: int, dim: int, *, share: float, k: int = 1) -> int:
    """Largest rank j with rows*j + k*j*dim <= share*rows*dim: the factorisation (coefficients
    [rows, j] plus k bases [j, dim]) keeps at most `share` of the matrix's parameters."""
    budget = share * rows * dim
    j = min(int(budget // (rows + k * dim)), dim)
    if j < 1:
        smallest = (rows + k * dim) / (rows * dim)
        raise CompressError(f"keep={share} leaves less than rank 1 for a {rows} x {dim} matrix with k={k}; "
                            f"use keep >= {smallest:.4g} or give the rank explicitly")
    return j


def lloyd_kmeans(points: np.ndarray, n_clusters: int, *, iterations: int, seed: int,
                 init_sample: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Lloyd) on float32 rows: returns (centers [n_clusters, p], labels [n]).

    Seeded by scikit-learn's k-means++ on a random sample of at most max(init_sample, 8 * n_clusters)
    rows; the iterations are a few BLAS calls each. (scikit-learn's own KMeans is much slower on a
    busy machine with few cores: its OpenMP threads spin; this stays within the 60 s budget.)
    Empty clusters are re-seeded with the rows farthest from their centers.
    """
    from sklearn.cluster import kmeans_plusplus

    x = np.ascontiguousarray(points, dtype=np.float32)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    if n <= n_clusters:
        # Every row is its own cluster; the spare centers repeat rows (they attract nothing new).
        centers = x[np.resize(np.arange(n), n_clusters)].copy()
        return centers, np.arange(n)
    sample = x if n <= max(init_sample, 8 * n_clusters) else x[rng.choice(n, max(init_sample, 8 * n_clusters), replace=False)]
    centers, _ = kmeans_plusplus(sample, n_clusters, random_state=int(rng.integers(2**31 - 1)))
    centers = centers.astype(np.float32)
    labels = np.full(n, -1)
    x2 = np.einsum("ij,ij->i", x, x)
    for _ in range(max(iterations, 1)):
        dist = (centers * centers).sum(1)[None, :] - 2.0 * (x @ centers.T)
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=n_clusters)
        sums = cluster_sums(x, labels, n_clusters)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
        if not filled.all():
            err = x2 + dist[np.arange(n), labels]
            far = np.argsort(err)[::-1][: int((~filled).sum())]
            centers[~filled] = x[far]
    return centers, labels


def cluster_sums(x: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """[n_clusters, p]: the sum of the rows of x in each cluster (a sparse one-hot product, O(n p))."""
    from scipy.sparse import csr_matrix

    onehot = csr_matrix((np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))),
                        shape=(n_clusters, len(labels)))
    return np.asarray(onehot @ x, dtype=np.float32)
