"""MESSI: the rows of the embedding matrix clustered onto k subspaces of dimension j (projective clustering).

Maalouf et al., "Deep learning meets projective clustering" (ICLR 2021), steps 1-4:
  1. (k, j)-projective clustering by EM: assign each row x to the subspace c with the smallest
     residual ||x - x V_c^T V_c||^2 (V_c: j orthonormal rows), refit each V_c to its rows by their
     top-j right singular vectors; repeat until the assignment stops changing (or a step gains less
     than `tol`). Several restarts, each from a k-means clustering of the rows' directions; the
     lowest total residual wins.
  2-3. Per cluster, the rank-j factorisation: coefficients x V_c^T (one j-vector per token) and V_c.
  4. The module: per-token coefficients C [N, j] (float parameter), per-token cluster ids [N]
     (int32 buffer), bases B [k, j, d] (float parameter): E_hat[t] = C[t] @ B[cluster[t]].
  (5. fine-tuning is pipeline/finetune.py's job: C and B are ordinary parameters.)

The forward is the paper's appendix A (a sparse U [N, k*j] times V [k*j, d]) without storing the
zeros: gather the token's j coefficients, place them in its cluster's block of a k*j vector
(Equal/Cast/Mul against the cluster id), one MatMul with B viewed as [k*j, d]. It exports as
Gather, Equal, Cast, Mul, Reshape and MatMul, and int8 dynamic quantization takes the Gather on C
and the MatMul on B. It costs k*j*d multiply-adds per token (~1% of MiniLM's body at k=5, j=64).

`exact_top=K` makes a head/tail hybrid (adaptive-input style): the K most frequent ids (DEP's new ids
are ranked by training frequency, so new ids < K) keep their exact rows, and MESSI is fitted on the
other N-K rows alone. On SST-2 the 1,000 most frequent of 11,575 kept ids carry 77% of the training
tokens, so at a tight byte budget the rows that are read most stay exact and the long tail is
compressed harder. `keep` then counts the exact rows too: j is the largest rank whose whole module
(K*d exact + (N-K)*j coefficients + k*j*d bases) fits in keep * N * d.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.pipeline.compress.base import (
    CompressError,
    Compressor,
    Fitted,
    check_spec,
    check_threads,
    lloyd_kmeans,
    rank_for_share,
    relative_error,
    run_fit,
)
from embslim.pipeline.compress.svd import DEFAULT_SHARE, basis_from_gram

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    # 5 subspaces: the MESSI paper's RoBERTa MNLI point (k=5) and the DESIGN's measured k=5/k=10 points.
    k: int = 5
    j: int | None = None              # subspace dimension; give this or `keep`, not both
    keep: float | None = None  # share of the N x d parameters to keep (0.4 keeps 40%); picks the largest j
                                      # with N*j + k*j*d within it. Neither given: svd.DEFAULT_SHARE (0.4).
    # EM is a local search: a few k-means-seeded restarts cost seconds and the best one is kept.
    restarts: int = 3
    # A cap only: EM stops on its own (assignment unchanged, or a step gains < tol); on MiniLM (k=5,
    # j=144) each restart stopped after 7-8 steps.
    iterations: int = 50
    # Stop when a step improves the total residual by less than this share. On MiniLM, running on to
    # full convergence took 14 more steps for 0.25% of residual (error 0.5072 -> 0.5064).
    tol: float = 1e-3
    kmeans_iterations: int = 20       # Lloyd steps of each restart's k-means start
    seed: int = 0
    threads: int | None = 1           # BLAS threads for the fit; see base.fit_threads for why 1
    # Keep exact rows for the `exact_top` most frequent ids (new ids < exact_top) and fit MESSI on the
    # rest; 0 = plain MESSI. See the module docstring.
    exact_top: int = 0
    # Keep exact every row the task's text uses (count > 0; DEP ranks them first) and fit MESSI on the
    # rest: with a vocabulary that keeps every row (prune.keep_top >= the vocabulary), words the text
    # never used keep a compressed row of their own instead of falling back to another word's.
    exact_seen: bool = False

    def __post_init__(self) -> None:
        check_threads(self.threads, method="messi")
        if not isinstance(self.exact_top, int) or self.exact_top < 0:
            raise CompressError(f"messi: exact_top must be an int >= 0 (0 = no exact rows), got {self.exact_top!r}")
        if self.exact_seen and self.exact_top:
            raise CompressError(f"messi: give exact_top ({self.exact_top}) or exact_seen, not both")
        if not isinstance(self.k, int) or self.k < 1:
            raise CompressError(f"messi: k (number of subspaces) must be an int >= 1, got {self.k!r}; k=1 is plain SVD")
        if self.j is not None and self.keep is not None:
            raise CompressError(f"messi: give j ({self.j}) or keep ({self.keep}), not both; "
                                "set one of them to None")
        if self.j is not None and (not isinstance(self.j, int) or self.j < 1):
            raise CompressError(f"messi: j (subspace dimension) must be a positive int, got {self.j!r}")
        if self.keep is not None and not 0.0 < self.keep <= 1.0:
            raise CompressError(f"messi: keep is the share of parameters kept, in (0, 1]; got {self.keep} "
                                "(0.4 keeps 40% of the matrix)")
        if self.restarts < 1 or self.iterations < 1 or self.kmeans_iterations < 1:
            raise CompressError(f"messi: restarts, iterations and kmeans_iterations must be >= 1, got "
                                f"{self.restarts}, {self.iterations}, {self.kmeans_iterations}")
        if not 0.0 <= self.tol < 1.0:
            raise CompressError(f"messi: tol is a relative improvement in [0, 1), got {self.tol}")

    def j_for(self, rows: int, dim: int) -> int:
        """The subspace dimension for an N x d matrix (N = rows, exact rows included)."""
        tail = rows - self.exact_top
        if tail < 1:
            raise CompressError(f"messi: exact_top={self.exact_top} keeps every one of the {rows} rows exact; "
                                f"use exact_top < {rows}, or no compressor (plain DEP)")
        if self.k > tail:
            raise CompressError(f"messi: k={self.k} subspaces for only {tail} rows; use k <= {tail}")
        if self.j is not None:
            if self.j > dim:
                raise CompressError(f"messi: j={self.j} exceeds the embedding dimension {dim}; use j <= {dim}")
            return self.j
        share = DEFAULT_SHARE if self.keep is None else self.keep
        if not self.exact_top:
            return rank_for_share(rows, dim, share=share, k=self.k)
        left = share * rows * dim - self.exact_top * dim
        if left < tail + self.k * dim:
            need = (self.exact_top * dim + tail + self.k * dim) / (rows * dim)
            raise CompressError(f"messi: keep={share} is spent on the {self.exact_top} exact rows before rank 1 of the "
                                f"other {tail}; use keep >= {need:.4g} or a smaller exact_top")
        return rank_for_share(tail, dim, share=left / (tail * dim), k=self.k)


class MessiEmbedding(nn.Module):
    """new ids -> coeff[ids] @ basis[cluster[ids]], written as one MatMul with the stacked bases.

    With exact_top = K > 0, ids < K read `exact` [K, d] and ids >= K read the MESSI rows of id - K."""

    # Parameters that start as the pretrained rows themselves (not an approximation): fine-tuning
    # trains them at the base rate like DEP's table, not at finetune.embedding_lr_scale.
    base_rate_parameters = ("exact",)

    def __init__(self, rows: int, dim: int, k: int, j: int, exact_top: int = 0) -> None:
        super().__init__()
        tail = rows - exact_top
        self.exact_top = exact_top
        self.exact = nn.Parameter(torch.zeros(exact_top, dim)) if exact_top else None
        self.coeff = nn.Parameter(torch.zeros(tail, j))
        self.basis = nn.Parameter(torch.zeros(k, j, dim))
        self.register_buffer("cluster", torch.zeros(tail, dtype=torch.int32))
        # Not saved: rebuilt from k. Compared with each token's cluster id to place its coefficients.
        self.register_buffer("cluster_ids", torch.arange(k, dtype=torch.int32), persistent=False)
        self.embedding_dim = dim
        self.spec: dict[str, Any] = {"type": "messi", "rows": rows, "dim": dim, "k": k, "j": j}
        if exact_top:
            self.spec["exact_top"] = exact_top

    def _messi(self, ids: torch.Tensor) -> torch.Tensor:
        coeff = F.embedding(ids, self.coeff)                                        # [..., j]
        onehot = (self.cluster[ids].unsqueeze(-1) == self.cluster_ids).to(coeff.dtype)  # [..., k]
        spread = (onehot.unsqueeze(-1) * coeff.unsqueeze(-2)).flatten(-2)           # [..., k*j], one block nonzero
        return spread @ self.basis.reshape(-1, self.embedding_dim)                  # [..., d]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.exact_top:
            return self._messi(ids)
        # Both branches run on every id (clamped into range) and Where picks: plain Gather/Sub/Clip
        # ops, no data-dependent shapes, so the graph exports and quantizes like the plain module.
        tail = self._messi((ids - self.exact_top).clamp(min=0))
        head = F.embedding(ids.clamp(max=self.exact_top - 1), self.exact)
        return torch.where((ids < self.exact_top).unsqueeze(-1), head, tail)


def _grams(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[k, d, d] float64: X_c^T X_c of each cluster's rows (the M-step only needs these)."""
    grams = np.zeros((k, x.shape[1], x.shape[1]))
    for c in range(k):
        rows = x[labels == c]
        grams[c] = rows.T @ rows
    return grams


def _bases(grams: np.ndarray, j: int) -> np.ndarray:
    """M-step: [k, j, d], the best j-subspace of each cluster (zeros for an empty one)."""
    return np.stack([basis_from_gram(g, j) for g in grams])


def _residuals(x: np.ndarray, x2: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """[N, k] squared distance of every row to every subspace: ||x||^2 - ||x V_c^T||^2, one BLAS call."""
    k, j, d = bases.shape
    proj = (x @ bases.reshape(k * j, d).T).reshape(len(x), k, j)
    return np.maximum(x2[:, None] - np.einsum("nkj,nkj->nk", proj, proj), 0.0)


def _em(x: np.ndarray, x2: np.ndarray, labels: np.ndarray, cfg: Config, j: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """EM from an initial assignment: (labels, bases, total residual, steps).

    The Gram matrices are updated with only the rows that changed cluster, so after the first steps an
    M-step costs k small eigendecompositions and the E-step (one [N, d] x [d, k*j] product) dominates."""
    k = cfg.k
    grams = _grams(x, labels, k)
    total_prev = np.inf
    steps = 0
    for steps in range(1, cfg.iterations + 1):
        bases = _bases(grams, j)
        res = _residuals(x, x2, bases)
        new = res.argmin(1)
        best = res[np.arange(len(x)), new]
        empty = np.flatnonzero(np.bincount(new, minlength=k) == 0)
        if len(empty):
            # An emptied subspace restarts from the worst-fitted rows, j of them per subspace.
            worst = np.argsort(best)[::-1][: len(empty) * j]
            new[worst] = np.repeat(empty, j)[: len(worst)]
        total = float(best.sum())
        moved = np.flatnonzero(new != labels)
        if len(moved) > len(x) // 3:
            grams = _grams(x, new, k)
        else:
            for c in range(k):
                rows_in, rows_out = x[moved[new[moved] == c]], x[moved[labels[moved] == c]]
                grams[c] += rows_in.T @ rows_in - rows_out.T @ rows_out
        improved = total_prev - total if np.isfinite(total_prev) else np.inf
        log.debug("messi EM step %d: residual %.6g, %d rows moved", steps, total, len(moved))
        labels, total_prev = new, total
        if not len(empty) and (len(moved) == 0 or improved <= cfg.tol * total):
            break
    bases = _bases(grams, j)  # final M-step: the bases of the kept assignment
    res = _residuals(x, x2, bases)
    return labels, bases, float(res[np.arange(len(x)), labels].sum()), steps


def fit(weight: np.ndarray, cfg: Config, *, counts: np.ndarray | None = None) -> Fitted:
    """(k, j)-projective clustering of the rows, then per-cluster rank-j SVD. `counts` (the task
    text's count of each row, rows ranked by it) sets the exact head under `exact_seen`; the fit
    itself weighs every row alike."""
    if cfg.exact_seen:
        if counts is None:
            raise CompressError("messi: exact_seen needs the rows' counts in the task's text (embslim run passes them)")
        seen = int((np.asarray(counts) > 0).sum())
        if np.any(np.asarray(counts)[:seen] == 0):
            raise CompressError("messi: exact_seen needs rows ranked by count (DEP's order)")
        cfg = replace(cfg, exact_seen=False, exact_top=seen)
    return run_fit("messi", _fit, weight, cfg, counts)


def _fit(x: np.ndarray, cfg: Config) -> Fitted:
    start = time.perf_counter()
    full = x
    full_rows, dim = full.shape
    j = cfg.j_for(full_rows, dim)
    head, x = full[: cfg.exact_top], full[cfg.exact_top:]
    rows = x.shape[0]
    x2 = np.einsum("ij,ij->i", x, x)
    # k-means on the rows' directions: the subspaces pass through the origin, so a row's length says
    # nothing about its subspace. On MiniLM (k=5, 40%) it won every restart over raw k-means (best 0.501 vs 0.504).
    directions = x / np.maximum(np.sqrt(x2), 1e-12)[:, None]
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    runs = []
    for r in range(cfg.restarts):
        _, init = lloyd_kmeans(directions, cfg.k, iterations=cfg.kmeans_iterations, seed=cfg.seed + r)
        labels, bases, total, steps = _em(x, x2, init, cfg, j)
        runs.append({"residual": total, "em_steps": steps})
        if best is None or total < best[2]:
            best = (labels, bases, total)
    labels, bases, _ = best
    coeff = np.zeros((rows, j), np.float32)
    for c in range(cfg.k):
        mine = labels == c
        coeff[mine] = x[mine] @ bases[c].T
    module = MessiEmbedding(full_rows, dim, cfg.k, j, exact_top=cfg.exact_top)
    with torch.no_grad():
        module.coeff.copy_(torch.from_numpy(coeff))
        module.basis.copy_(torch.from_numpy(bases))
        module.cluster.copy_(torch.from_numpy(labels.astype(np.int32)))
        if cfg.exact_top:
            module.exact.copy_(torch.from_numpy(head))
    params = cfg.exact_top * dim + rows * j + cfg.k * j * dim
    err = relative_error(full, module)
    seconds = time.perf_counter() - start
    log.info("messi k=%d j=%d%s: %d params (%.1f%% of the matrix), reconstruction error %.4f, %.1f s (%d restarts)",
             cfg.k, j, f" exact_top={cfg.exact_top}" if cfg.exact_top else "", params,
             100 * params / (full_rows * dim), err, seconds, cfg.restarts)
    norm2 = float(x2.sum()) or 1.0
    info = {"k": cfg.k, "j": j, "exact_top": cfg.exact_top, "share": params / (full_rows * dim),
            "cluster_sizes": np.bincount(labels, minlength=cfg.k).tolist(),
            "restarts": [{"error": float(np.sqrt(run["residual"] / norm2)), "em_steps": run["em_steps"]} for run in runs]}
    return Fitted(module=module, spec=dict(module.spec), params=params, reconstruction_error=err,
                  fit_seconds=seconds, info=info)


def from_spec(spec: dict[str, Any]) -> nn.Module:
    check_spec(spec, "messi", ("rows", "dim", "k", "j"))
    return MessiEmbedding(int(spec["rows"]), int(spec["dim"]), int(spec["k"]), int(spec["j"]),
                          exact_top=int(spec.get("exact_top", 0)))


COMPRESSOR = Compressor("messi", Config, fit, from_spec)
