"""Embedding compressors, fitted from the (DEP-pruned) pretrained matrix.

`COMPRESSORS` maps a method name to the module that implements it; `get(name)` imports that
module and returns its `COMPRESSOR` (a `embslim.pipeline.compress.base.Compressor`). Each module has a
frozen `Config` dataclass, `fit(weight, cfg, *, counts=None) -> Fitted` and
`from_spec(spec) -> nn.Module` (an empty module of the right shapes, for loading a checkpoint).
A test asserts that every entry here round-trips through export and `runtime/`.
"""

from __future__ import annotations

import importlib

from embslim.pipeline.compress.base import CompressError, Compressor, Fitted

# method name -> module in this package. Modules import torch, so they load on first use.
COMPRESSORS: dict[str, str] = {
    "subembed": "subembed",   # k-sub-embedding: Cartesian product of k shared tables (modulo | kmeans | kmeans-equal)
    "messi": "messi",         # projective clustering into k subspaces of dimension j
    "svd": "svd",             # rank-j factorisation (ALBERT-style; MESSI with k=1)
    "fourier": "fourier",     # PETE: Fourier features of the frequency-ranked id + an MLP
}


def get(name: str) -> Compressor:
    if name not in COMPRESSORS:
        raise CompressError(f"unknown compressor {name!r}; known: {', '.join(COMPRESSORS)}")
    return importlib.import_module(f"embslim.pipeline.compress.{COMPRESSORS[name]}").COMPRESSOR


__all__ = ["COMPRESSORS", "CompressError", "Compressor", "Fitted", "get"]
