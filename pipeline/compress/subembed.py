"""k-sub-embedding: every token's vector is the concatenation of k rows, one from each of k small tables.

"Reconstructing word embeddings via scattered k-sub-embedding" (ICLR 2022 submission; arXiv
2308.08688). The d columns are cut into k slices (when d % k != 0 the first d % k slices get one
extra column); table i has M rows of slice i's width, and token t reads row codes[t, i] of table i.
M rows per table give M**k distinct tuples, so M >= ceil(N ** (1/k)); every token must get its own
tuple (the paper's requirement 1), which is checked after assignment.

Assignments (`Config.assignment`):
  modulo        Algorithm 1: codes[t, i] is the i-th base-M digit of the new id t, (t // M**i) % M.
  kmeans        Algorithm 2, recursive clustering: level i splits each group of tokens that share
                their first i indices by their slice i. The paper clusters each group on its own and
                numbers the clusters 0..M-1, but row m of table i is shared by every group, so here
                the M centres of level i are one k-means of slice i over all rows, and each group's
                tokens are assigned to them with at most M**(k-1-i) tokens per centre (so that the
                remaining levels can still tell them apart). The last level (capacity 1) is an optimal
                assignment per group (scipy's linear_sum_assignment): every tuple is distinct.
  kmeans-equal  the same with equal cluster sizes: within each group every centre takes
                floor(n/M) or ceil(n/M) tokens (the paper's "equal cluster size" variant, its best
                at small M).
Capacity-constrained assignment is greedy: rows propose to their nearest centre with room left,
the closest proposers win, the rest try their next choice (vectorised over all groups at once).

Tables start at the least-squares solution for the fixed assignment: the mean of the slices
assigned to each row (a row no token uses gets the mean of the whole slice). The module is one
Gather on the int32 codes [N, k], one Gather per table and a Concat: plain ONNX, and int8 dynamic
quantization takes the table Gathers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

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
    cluster_sums,
    lloyd_kmeans,
    relative_error,
    run_fit,
)

log = logging.getLogger(__name__)

Assignment = Literal["modulo", "kmeans", "kmeans-equal"]
ASSIGNMENTS: tuple[str, ...] = get_args(Assignment)


@dataclass(frozen=True)
class Config:
    # k=2 is the mildest product: M = ceil(sqrt(N)) rows per table, ~0.6% of MiniLM's 30,522 x 384
    # matrix. Each extra table cuts parameters further and reconstructs worse.
    k: int = 2
    M: int | None = None              # rows per table; None: the smallest with M**k >= rows
    # The paper's best at small M was clustering with equal cluster sizes; modulo ignores the
    # pretrained rows (DESIGN: untrained modulo k=3 fell to the majority class on SST-2).
    assignment: Assignment = "kmeans-equal"
    kmeans_iterations: int = 25       # Lloyd steps per level; the centres settle well before (fit < 60 s on MiniLM)
    seed: int = 0
    threads: int | None = 1           # BLAS threads for the fit; see base.fit_threads for why 1

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise CompressError(f"subembed: k (number of tables) must be an int >= 1, got {self.k!r}")
        if self.M is not None and (not isinstance(self.M, int) or self.M < 1):
            raise CompressError(f"subembed: M (rows per table) must be a positive int or None for the smallest "
                                f"that works, got {self.M!r}")
        if self.assignment not in ASSIGNMENTS:
            raise CompressError(f"subembed: unknown assignment {self.assignment!r}; use one of {', '.join(ASSIGNMENTS)}")
        if not isinstance(self.kmeans_iterations, int) or self.kmeans_iterations < 1:
            raise CompressError(f"subembed: kmeans_iterations must be an int >= 1, got {self.kmeans_iterations!r}")
        check_threads(self.threads, method="subembed")


def smallest_m(rows: int, k: int) -> int:
    """The smallest M with M**k >= rows."""
    m = max(1, round(rows ** (1.0 / k)))
    while m**k < rows:
        m += 1
    while m > 1 and (m - 1) ** k >= rows:
        m -= 1
    return m


def slice_widths(dim: int, k: int) -> list[int]:
    """k slice widths summing to dim; the first dim % k slices are one column wider."""
    return [dim // k + (1 if i < dim % k else 0) for i in range(k)]


def modulo_codes(rows: int, k: int, m: int) -> np.ndarray:
    """Algorithm 1: codes[t, i] = (t // M**i) % M, the i-th base-M digit of the new id t."""
    ids = np.arange(rows, dtype=np.int64)
    # Beyond M**i >= rows every digit is 0; capping the divisor keeps it inside int64.
    return np.stack([(ids // min(m**i, rows)) % m for i in range(k)], axis=1)


def check_unique(codes: np.ndarray) -> None:
    """Every row must have its own tuple of indices (the paper's requirement 1)."""
    tuples, counts = np.unique(codes, axis=0, return_counts=True)
    if (counts > 1).any():
        dup = int(np.flatnonzero(counts > 1)[0])
        rows = np.flatnonzero((codes == tuples[dup]).all(axis=1))[:2]
        raise CompressError(f"subembed: {int((counts[counts > 1]).sum())} rows share their tuple of table indices with "
                            f"another row (e.g. rows {rows[0]} and {rows[1]} both read {tuple(int(c) for c in tuples[dup])}); "
                            "every row needs its own tuple: use a larger M")


class SubEmbedding(nn.Module):
    """new ids -> concat_i table_i[codes[ids, i]]."""

    def __init__(self, rows: int, dim: int, k: int, m: int) -> None:
        super().__init__()
        self.register_buffer("codes", torch.zeros(rows, k, dtype=torch.int32))
        self.tables = nn.ModuleList(nn.Embedding(m, width) for width in slice_widths(dim, k))
        self.embedding_dim = dim
        self.spec: dict[str, Any] = {"type": "subembed", "rows": rows, "dim": dim, "k": k, "M": m}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = F.embedding(ids, self.codes)                                  # [..., k] int32
        return torch.cat([table(codes[..., i]) for i, table in enumerate(self.tables)], dim=-1)


def _greedy_assign(cost: np.ndarray, group: np.ndarray, cap: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Assign `rows` to columns of cost [n, M] with at most cap[g] rows per (group g, column).

    Each round every unassigned row proposes to its best column not tried yet; per (group, column)
    the closest proposers fill the room left and the others move on. A column that turns a row away
    is full for good, so each row tries each column at most once (<= M rounds). Returns labels [n]
    (-1 for rows not in `rows`, or turned away everywhere)."""
    n, m = cost.shape
    labels = np.full(n, -1, np.int64)
    pref = np.argsort(cost[rows], axis=1)
    tried = np.zeros(len(rows), np.int64)
    taken = np.empty(0, np.int64)                  # sorted (group * M + column) of every filled place
    pending = np.arange(len(rows))                 # positions into `rows`
    while len(pending):
        choice = pref[pending, tried[pending]]
        who = rows[pending]
        key = group[who] * m + choice
        order = np.lexsort((cost[who, choice], key))
        key_s, pend_s, choice_s = key[order], pending[order], choice[order]
        pos = np.arange(len(key_s))
        rank = pos - np.maximum.accumulate(np.where(np.r_[True, key_s[1:] != key_s[:-1]], pos, 0))
        used = np.searchsorted(taken, key_s, "right") - np.searchsorted(taken, key_s, "left")
        ok = rank < cap[group[rows[pend_s]]] - used
        labels[rows[pend_s[ok]]] = choice_s[ok]
        taken = np.sort(np.concatenate([taken, key_s[ok]]))
        turned = pend_s[~ok]
        tried[turned] += 1
        pending = turned[tried[turned] < m]
    return labels


def _distinct_per_group(cost: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Last level: within each group (at most M rows) give every row its own column, at least total cost."""
    from scipy.optimize import linear_sum_assignment

    labels = np.empty(len(cost), np.int64)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        members = order[lo:hi]
        r, c = linear_sum_assignment(cost[members])
        labels[members[r]] = c
    return labels


def kmeans_codes(x: np.ndarray, k: int, m: int, *, equal: bool, iterations: int, seed: int) -> np.ndarray:
    """Algorithm 2 with shared centres per level and capacities that keep every tuple distinct (module docstring)."""
    n = len(x)
    bounds = np.cumsum([0, *slice_widths(x.shape[1], k)])
    codes = np.zeros((n, k), np.int64)
    group = np.zeros(n, np.int64)                  # id of the tuple prefix codes[:, :i]
    everyone = np.arange(n)
    for i in range(k):
        part = np.ascontiguousarray(x[:, bounds[i]:bounds[i + 1]])
        centers, _ = lloyd_kmeans(part, m, iterations=iterations, seed=seed + i)
        cost = (np.einsum("ij,ij->i", part, part)[:, None] - 2.0 * (part @ centers.T)
                + (centers * centers).sum(1)[None, :])
        n_groups = int(group.max()) + 1
        if i == k - 1:
            labels = _distinct_per_group(cost, group)
        elif equal:
            sizes = np.bincount(group, minlength=n_groups)
            labels = _greedy_assign(cost, group, sizes // m, everyone[(sizes // m)[group] > 0])
            left = np.flatnonzero(labels < 0)       # n % m per group; every centre there holds floor(n/m)
            labels[left] = _greedy_assign(cost, group, np.ones(n_groups, np.int64), left)[left]
        else:
            labels = _greedy_assign(cost, group, np.full(n_groups, min(m ** (k - 1 - i), n), np.int64), everyone)
        codes[:, i] = labels
        group = np.unique(group * m + labels, return_inverse=True)[1].ravel()
    return codes


def table_means(x: np.ndarray, codes: np.ndarray, m: int) -> list[np.ndarray]:
    """Least squares for fixed codes: row r of table i is the mean of slice i over the tokens reading it."""
    bounds = np.cumsum([0, *slice_widths(x.shape[1], codes.shape[1])])
    tables = []
    for i in range(codes.shape[1]):
        part = np.ascontiguousarray(x[:, bounds[i]:bounds[i + 1]])
        counts = np.bincount(codes[:, i], minlength=m)
        table = np.repeat(part.mean(0, keepdims=True), m, axis=0)   # rows nobody reads: the slice mean
        used = counts > 0
        table[used] = cluster_sums(part, codes[:, i], m)[used] / counts[used, None]
        tables.append(table.astype(np.float32))
    return tables


def fit(weight: np.ndarray, cfg: Config, *, counts: np.ndarray | None = None) -> Fitted:
    """Assign every row a distinct tuple of table rows, then set the tables to the slice means.
    `counts` is accepted for the common signature and not used."""
    return run_fit("subembed", _fit, weight, cfg, counts)


def _fit(x: np.ndarray, cfg: Config) -> Fitted:
    start = time.perf_counter()
    rows, dim = x.shape
    if cfg.k > dim:
        raise CompressError(f"subembed: k={cfg.k} tables need at least one column each but the matrix has {dim}; "
                            f"use k <= {dim}")
    need = smallest_m(rows, cfg.k)
    m = need if cfg.M is None else cfg.M
    if m**cfg.k < rows:
        raise CompressError(f"subembed: k={cfg.k} tables of M={m} rows give {m**cfg.k} distinct tuples for {rows} rows; "
                            f"use M >= {need} (the smallest with M**{cfg.k} >= {rows}) or leave M unset")
    if cfg.assignment == "modulo" or cfg.k == 1:   # k=1 is the plain table: nothing to cluster
        codes = modulo_codes(rows, cfg.k, m)
    else:
        codes = kmeans_codes(x, cfg.k, m, equal=cfg.assignment == "kmeans-equal",
                             iterations=cfg.kmeans_iterations, seed=cfg.seed)
    check_unique(codes)
    module = SubEmbedding(rows, dim, cfg.k, m)
    with torch.no_grad():
        module.codes.copy_(torch.from_numpy(codes.astype(np.int32)))
        for table, init in zip(module.tables, table_means(x, codes, m)):
            table.weight.copy_(torch.from_numpy(init))
    params = m * dim
    err = relative_error(x, module)
    seconds = time.perf_counter() - start
    log.info("subembed %s k=%d M=%d: %d params (%.2f%% of the matrix), reconstruction error %.4f, %.1f s",
             cfg.assignment, cfg.k, m, params, 100 * params / (rows * dim), err, seconds)
    info = {"k": cfg.k, "M": m, "widths": slice_widths(dim, cfg.k), "assignment": cfg.assignment,
            "share": params / (rows * dim),
            "rows_used": [len(np.unique(codes[:, i])) for i in range(cfg.k)]}
    return Fitted(module=module, spec=dict(module.spec), params=params, reconstruction_error=err,
                  fit_seconds=seconds, info=info)


def from_spec(spec: dict[str, Any]) -> nn.Module:
    check_spec(spec, "subembed", ("rows", "dim", "k", "M"))
    return SubEmbedding(int(spec["rows"]), int(spec["dim"]), int(spec["k"]), int(spec["M"]))


COMPRESSOR = Compressor("subembed", Config, fit, from_spec)
