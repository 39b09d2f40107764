"""PETE: Fourier features of the frequency-ranked new id, refined by a small MLP.

For a new id p of a table with V rows (DEP numbers new ids by descending training frequency, so
p is a frequency rank), the paper's features are

    x = 2 p / (V - 1) - 1
    T_i(p) = sin((floor(i/2) + 1) * pi * x)  for even i,  cos(...) for odd i,   i = 0 .. F-1

and the embedding is E(p) = MLP(T(p)) + T(p). We follow the paper's formula (its public code
normalises by sequence length instead). The residual needs F == d; with `proj=True` a learned
F -> d linear replaces the identity on the residual path, so any F works.

`exact_top=K` makes a hybrid: the K most frequent ids (new ids < K) keep exact, learned rows
(a K-row table, looked up with Gather on clamped ids and chosen with Where), the rest go
through the Fourier path. Nothing in the module has V rows: the ONNX graph holds Cast, Mul,
Sub, Sin, Cos, MatMul and, for the hybrid, Less, Clip, Gather and Where.

`fit` initialises the module from the pretrained rows: the exact rows are copied; the residual T
has norm sqrt(F/2), ~14 for F = 384, against ~1 for a MiniLM row, so the MLP must first cancel
it: the hidden layers start as orthogonal maps in GELU's near-linear range and the last layer is
solved by ridge least squares (with proj=True the residual P is solved jointly instead); then
Adam regresses the MLP on the MSE for a fixed number of epochs and is kept if it helped. Expect
a high error: a pretrained row is close to noise as a function of its frequency rank (on MiniLM
rows the best linear map of the 384 Fourier features leaves 0.965 of the norm), so PETE must win
its accuracy back in fine-tuning, and `exact_top` keeps the frequent rows exact. See `Config.proj`
before quantizing: the identity residual does not survive int8.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embslim.pipeline.compress.base import (
    CompressError,
    Compressor,
    Fitted,
    as_matrix,
    check_counts,
    check_threads,
    fit_threads,
    relative_error,
)

log = logging.getLogger(__name__)

Activation = Literal["gelu", "tanh"]
# Both are close to linear near zero (GELU(z) ~ z/2, tanh(z) ~ z), which the least-squares start
# relies on (ReLU is not: it drops half of T and the last layer could not cancel it).
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class Config:
    """Options of the Fourier (PETE) compressor; reconstruction errors quoted are on the first
    11,575 MiniLM rows (a stand-in for a DEP matrix), before fine-tuning."""

    # Fourier features F. None = the embedding dim d, so the paper's residual E = MLP(T) + T
    # type-checks with no extra parameters. Any other F needs proj=True.
    features: int | None = None
    # Hidden width. At least F so the MLP can cancel the residual T, which dwarfs a pretrained row
    # (norm ~14 vs ~1 on MiniLM); 384 on MiniLM = 296k parameters, 6.7% of an 11,575 x 384 table.
    hidden: int = 384
    # Hidden layers. One is the paper's "lightweight" MLP; two cost h*h more parameters and fit
    # MiniLM rows no better in our measurements (0.969 vs 0.967).
    depth: int = 1
    # GELU as in the paper's transformer; tanh for comparison. Both export to plain ONNX ops.
    activation: Activation = "gelu"
    # False = the paper's E = MLP(T) + T. True = E = MLP(T) + P T with a learned F x d matrix P
    # (needed when F != d). The identity residual makes the MLP cancel T (norm 14) to leave a row
    # of norm ~1, so int8 quantization noise on the MLP swamps the result (MiniLM: cosine to fp32
    # 0.43-0.82); with proj=True nothing cancels (0.997 with per-channel + reduce_range) and the fit
    # is better (0.952 vs 0.967), for F*d more parameters. Use proj=True for int8 bundles.
    proj: bool = False
    # Regression onto the pretrained rows: Adam on minibatches after the least-squares start, kept
    # only if it lowers the error. The start does the work: on MiniLM Adam moved the error by
    # <= 0.0001 (a row is close to noise as a function of its rank), so 2 epochs just check it.
    # The whole default fit: 7-11 s on 11,575 x 384 with 1 thread on the busy 2 shared cores.
    epochs: int = 2
    # Adam's step relative to each layer's weight RMS (the start mixes weights ~1e-3 and ~1).
    lr: float = 1e-2
    batch: int = 512            # ~23 steps per epoch on 11.5k rows; 256 gave the same error
    # Ridge of the least-squares start, x the Gram matrix's mean diagonal. None = 1e-6 with the
    # identity residual (cancelling T needs large last-layer weights: 1e-3 gave 1.50) and 1e-3
    # with proj (keeps the weights small enough for int8: cosine 0.86 -> 0.997 on MiniLM).
    ridge: float | None = None
    seed: int = 0               # weight init and minibatch order
    # Keep exact rows for the `exact_top` most frequent ids (new ids < exact_top): the hybrid the
    # paper suggests for tokens whose meaning a smooth function of their rank cannot carry.
    # 0 = pure PETE. Costs exact_top * d parameters.
    exact_top: int = 0
    threads: int | None = 1     # torch/BLAS threads for the fit; see base.fit_threads for why 1

    def __post_init__(self) -> None:
        check_threads(self.threads, method="fourier")
        if self.features is not None and (not isinstance(self.features, int) or self.features < 1):
            raise CompressError(f"features must be a positive int or None (= the embedding dim), got {self.features!r}")
        for name in ("hidden", "depth", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CompressError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise CompressError(f"epochs must be an int >= 0 (0 = least-squares start only), got {self.epochs!r}")
        if not isinstance(self.exact_top, int) or self.exact_top < 0:
            raise CompressError(f"exact_top must be an int >= 0 (0 = no exact rows), got {self.exact_top!r}")
        if self.activation not in ACTIVATIONS:
            raise CompressError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not self.lr > 0:
            raise CompressError(f"lr must be > 0, got {self.lr!r}")
        if self.ridge is not None and not self.ridge >= 0:
            raise CompressError(f"ridge must be >= 0 or None (= 1e-6, or 1e-3 with proj), got {self.ridge!r}")


def _check_shape(rows: int, dim: int, features: int, exact_top: int, proj: bool) -> None:
    if rows < 2:
        raise CompressError(f"the Fourier compressor needs at least 2 rows (x = 2p/(V-1) - 1 divides by V-1), "
                            f"got V={rows}; keep more tokens or use the plain table")
    if exact_top >= rows:
        raise CompressError(f"exact_top={exact_top} keeps every one of the {rows} rows exact; "
                            f"use exact_top < {rows}, or the plain table")
    if features != dim and not proj:
        raise CompressError(f"features={features} differs from the embedding dim {dim}, so the residual "
                            f"E = MLP(T) + T does not type-check; use features=None (= {dim}) or proj=True "
                            f"(a learned {features} -> {dim} linear on the residual path)")


class FourierEmbedding(nn.Module):
    """new ids -> E(p) = MLP(T(p)) + T(p) (or + proj(T(p))); ids < exact_top -> exact rows."""

    def __init__(self, rows: int, dim: int, *, features: int | None = None, hidden: int = 384, depth: int = 1,
                 activation: Activation = "gelu", exact_top: int = 0, proj: bool = False) -> None:
        super().__init__()
        n_features = dim if features is None else int(features)
        _check_shape(rows, dim, n_features, exact_top, proj)
        if activation not in ACTIVATIONS:
            raise CompressError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.rows = rows
        self.embedding_dim = dim
        self.features = n_features
        self.exact_top = exact_top
        self.scale = 2.0 / (rows - 1)
        # (m + 1) * pi for m = 0 .. ceil(F/2)-1: feature 2m is sin, 2m+1 is cos of the same frequency.
        # Derived from the spec, so not saved in checkpoints (persistent=False); still a graph constant.
        half = (n_features + 1) // 2
        self.register_buffer("freqs", torch.arange(1, half + 1, dtype=torch.float32) * math.pi, persistent=False)
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.proj = nn.Linear(n_features, dim, bias=False) if proj else None
        self.exact = nn.Parameter(torch.zeros(exact_top, dim)) if exact_top else None
        self.spec = {"type": "fourier", "rows": rows, "dim": dim, "features": n_features, "hidden": hidden,
                     "depth": depth, "activation": activation, "exact_top": exact_top, "proj": proj}

    def fourier_features(self, ids: torch.Tensor) -> torch.Tensor:
        """T(p): [...] int ids -> [..., F] float32 (Cast, Mul, Sub, Mul, Sin, Cos, interleave)."""
        x = ids.to(torch.float32) * self.scale - 1.0
        angles = x.unsqueeze(-1) * self.freqs
        t = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)
        if self.features % 2:
            t = t[..., : self.features]
        return t

    def residual(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.proj is None else self.proj(t)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.fourier_features(ids)
        out = self.mlp(t) + self.residual(t)
        if self.exact is None:
            return out
        # Every id goes through both paths and Where picks; clamping keeps the Gather in range.
        exact_rows = F.embedding(ids.clamp(max=self.exact_top - 1), self.exact)
        return torch.where((ids < self.exact_top).unsqueeze(-1), exact_rows, out)


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """An empty module whose state_dict matches a fitted one with the same spec."""
    if spec.get("type") != "fourier":
        raise CompressError(f"expected a spec with type 'fourier', got type {spec.get('type')!r}")
    missing = [k for k in ("rows", "dim", "features", "hidden", "depth", "activation", "exact_top", "proj") if k not in spec]
    if missing:
        raise CompressError(f"fourier spec lacks {', '.join(missing)}; rebuild it from the module's `spec` attribute")
    if spec["activation"] not in ACTIVATIONS:
        raise CompressError(f"fourier spec has activation {spec['activation']!r}; known: {', '.join(ACTIVATIONS)}")
    return FourierEmbedding(int(spec["rows"]), int(spec["dim"]), features=int(spec["features"]),
                            hidden=int(spec["hidden"]), depth=int(spec["depth"]), activation=spec["activation"],
                            exact_top=int(spec["exact_top"]), proj=bool(spec["proj"]))


# Standard deviation of every hidden pre-activation in the least-squares start: small, so the
# activation is close to linear (GELU(z) ~ z/2) and the last layer can cancel the residual T.
# MiniLM rows: 0.003 -> 0.965 (the linear limit), 0.01 -> 0.967, 0.03 -> 0.986; a plain random
# init (std ~0.5) -> 3.5 to 5.9; a bias shift into GELU's linear tail (z + 4) -> 0.971, but its
# constant offset wrecked int8 (every activation near the top of the uint8 range).
LINEAR_STD = 0.01


def _least_squares_start(module: FourierEmbedding, t: torch.Tensor, target: torch.Tensor, ridge: float) -> None:
    """Set the hidden layers, then solve the last Linear (and proj) by ridge least squares.

    With the identity residual the MLP must first cancel T (norm sqrt(F/2), ~14 for F = 384,
    against ~1 for a MiniLM row): the hidden layers become orthogonal maps scaled into the
    activation's near-linear range and the last layer solves for E - T. With proj the residual
    is solved jointly with the last layer on the default (random-feature) hidden layers instead.
    """
    with torch.no_grad():
        if module.proj is None:
            h = t
            for layer in module.mlp[:-1]:
                if isinstance(layer, nn.Linear):
                    nn.init.orthogonal_(layer.weight)
                    layer.bias.zero_()
                    layer.weight.mul_(LINEAR_STD / (h @ layer.weight.T).std().clamp_min(1e-12))
                h = layer(h)
        h = module.mlp[:-1](t).double()
        parts = [h] if module.proj is None else [h, t.double()]
        x = torch.cat([*parts, torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)
        rhs = (target if module.proj is not None else target - t).double()
        gram = x.T @ x
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        sol = torch.linalg.solve(gram, x.T @ rhs)          # [hidden (+ F) + 1, d]
        width = h.shape[1]
        module.mlp[-1].weight.copy_(sol[:width].T.float())
        module.mlp[-1].bias.copy_(sol[-1].float())
        if module.proj is not None:
            module.proj.weight.copy_(sol[width:-1].T.float())


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op pool is not governed by threadpoolctl: set it too, and restore it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _regress(module: FourierEmbedding, t: torch.Tensor, target: torch.Tensor, cfg: Config) -> bool:
    """Adam on the MSE of the Fourier rows; returns False if it did not beat the start (then undone)."""
    def mse() -> float:
        with torch.no_grad():
            return float(F.mse_loss(module.mlp(t) + module.residual(t), target))

    start_loss, start_state = mse(), {k: v.clone() for k, v in module.state_dict().items()}
    # One group per Linear with lr = cfg.lr x the layer's weight RMS: Adam moves each weight by
    # about its group's lr, and the least-squares start has hidden weights ~1e-3 next to last-layer
    # weights hundreds of times larger, so one absolute lr stalls one or wrecks the other.
    linears = [m for m in module.mlp if isinstance(m, nn.Linear)] + ([module.proj] if module.proj is not None else [])
    groups = [{"params": list(m.parameters()), "lr": cfg.lr * float(m.weight.detach().pow(2).mean().sqrt())} for m in linears]
    opt = torch.optim.Adam(groups)
    n = t.shape[0]
    per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * per_epoch
    # Linear warm-up over the first epoch (Adam's first steps move every weight by ~lr whatever
    # its gradient, which knocks the least-squares start off), then cosine decay to zero.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / per_epoch, 0.5 * (1 + math.cos(math.pi * s / max(total, 1)))))
    gen = torch.Generator().manual_seed(cfg.seed)
    module.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch):
            idx = order[i : i + cfg.batch]
            tb = t[idx]
            loss = F.mse_loss(module.mlp(tb) + module.residual(tb), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    module.eval()
    if mse() < start_loss:
        return True
    module.load_state_dict(start_state)
    return False


def fit(weight: np.ndarray, cfg: Config, *, counts: np.ndarray | None = None) -> Fitted:
    """Fit PETE to the rows of `weight` ([V, d], row p = new id p = frequency rank p)."""
    w = as_matrix(weight, method="fourier")
    rows, dim = w.shape
    counts = check_counts(counts, rows, method="fourier")
    features = dim if cfg.features is None else cfg.features
    if not cfg.proj and cfg.hidden < features:
        raise CompressError(f"hidden={cfg.hidden} < features={features}: the MLP cannot cancel the residual T "
                            f"to fit the pretrained rows; use hidden >= {features}, or proj=True (a learned residual)")
    k = cfg.exact_top

    start = time.perf_counter()
    # Seeded, and the caller's global RNG is left as it was.
    with fit_threads(cfg.threads), _torch_threads(cfg.threads), torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        module = FourierEmbedding(rows, dim, features=cfg.features, hidden=cfg.hidden, depth=cfg.depth,
                                  activation=cfg.activation, exact_top=k, proj=cfg.proj)
        with torch.no_grad():
            if k:
                module.exact.copy_(torch.from_numpy(w[:k]))
        untrained_error = relative_error(w, module)
        # Only rows >= exact_top go through the Fourier path, so only they are regressed.
        target = torch.from_numpy(w[k:])
        t = module.fourier_features(torch.arange(k, rows))
        ridge = cfg.ridge if cfg.ridge is not None else (1e-3 if cfg.proj else 1e-6)
        _least_squares_start(module, t, target, ridge)
        start_error = relative_error(w, module)
        improved = _regress(module, t, target, cfg) if cfg.epochs else False
    seconds = time.perf_counter() - start

    error = relative_error(w, module)
    n_params = sum(p.numel() for p in module.parameters())
    info: dict[str, Any] = {"untrained_error": untrained_error, "least_squares_error": start_error,
                            "adam_improved": improved, "param_fraction": n_params / (rows * dim),
                            "features": module.features}
    if counts is not None and k:
        c = np.asarray(counts, dtype=np.float64)
        info["exact_token_share"] = float(c[:k].sum() / max(c.sum(), 1e-12))
    log.info("fourier: %d x %d -> F=%d hidden=%d depth=%d exact_top=%d proj=%s, %d params (%.1f%% of the table), "
             "relative error %.4f (least-squares start %.4f%s, untrained %.4f), %.1f s",
             rows, dim, module.features, cfg.hidden, cfg.depth, k, cfg.proj, n_params, 100 * info["param_fraction"],
             error, start_error, "" if improved or not cfg.epochs else ", kept: Adam did not improve it",
             untrained_error, seconds)
    return Fitted(module=module, spec=dict(module.spec), params=n_params, reconstruction_error=error,
                  fit_seconds=seconds, info=info)


COMPRESSOR = Compressor("fourier", Config, fit, from_spec)
