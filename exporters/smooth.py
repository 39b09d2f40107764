"""SmoothQuant for dynamic int8: move activation outliers into the weights before quantizing.

Dynamic int8 (ONNX Runtime's `quantize_dynamic`) gives each MatMul input ONE activation scale per
batch. A few channels of a transformer's hidden states run 10-100x larger than the rest, so that
scale is set by them and every other channel keeps a handful of int8 levels. Measured on the
bundled MiniLM as an embedder (the tail64 bundle of issue #14, 4,500 CLINC150 test texts): fp32
0.9935 mean cosine to the original, weight-only int8 (per channel) 0.9930, full dynamic int8
0.9859. The activations, not the weights, lose it, spread over every layer.

SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization
for Large Language Models", arXiv:2211.10438, eq. 4) rescales each input channel j of a linear
layer, X W = (X diag(s)^-1) (diag(s) W), with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

so channel ranges even out in X and the weights, which int8 quantizes per output channel, take
the difference. Here X's ranges are the mean over calibration batches of each batch's per-channel
max |x| (the quantity a dynamic scale sees), and diag(s)^-1 is a `Mul` by a constant [K] vector in
front of the MatMuls that read X (one Mul per distinct input, shared by Q, K and V). It is not folded
into the LayerNorm before it: in a post-LN encoder that LayerNorm also feeds the residual Add. The
fp32 result is unchanged (to float rounding); only what int8 does with it changes.

Which MatMuls: those with a 2-D float weight after the graph's first normalization node, i.e. the
encoder's (the embedding stage's, e.g. a MESSI basis reading gathered coefficients, has
channels that are exactly zero for some tokens and is left alone). Channel ranges are floored at
1% of their median so that a channel calibration never saw active cannot blow up.

alpha ("migration strength") is picked by measurement when not given (`smooth_for_int8`): each
candidate in SMOOTH_ALPHAS is smoothed, quantized as the target will be, and scored by the SNR of
the task output (logits, else sentence_embedding) against fp32 on the calibration feeds; alpha 0
(no smoothing) competes too, so a model that smoothing does not help keeps its plain graph.
Probed on the issue #14 bundle (ranges from 512 corpus texts; int8 mean cosine to the original on
the 4,500 in-scope CLINC150 test texts): alpha 0.5 0.9801, 0.65 0.9901, 0.75 0.9914, 0.85 0.9908,
unsmoothed 0.9859; `embslim run --config configs/clinc150-embed.toml` picks 0.75 and gets 0.9908.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import onnx

    from embslim.exporters.quantize import QuantizeConfig

log = logging.getLogger(__name__)

SMOOTH_ALPHAS = (0.5, 0.65, 0.75, 0.85)
_NORMS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
          "SkipSimplifiedLayerNormalization")
_RANGE_FLOOR = 0.01   # channel ranges below this share of their median are raised to it


class SmoothError(ValueError):
    """Smoothing cannot be applied as asked."""


@dataclass(frozen=True)
class SmoothResult:
    path: Path                 # the smoothed fp32 graph (a copy of the input when alpha is None)
    alpha: float | None        # the migration strength used; None: no candidate beat the plain graph
    groups: int                # MatMul inputs rescaled (each shared by its MatMuls)
    output: str                # the output the candidates were scored on
    snr_db: dict[float, float] = field(default_factory=dict)   # alpha (0 = plain) -> int8 output SNR vs fp32

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "groups": self.groups, "scored_on": self.output,
                "int8_snr_db": {str(a): round(v, 2) for a, v in self.snr_db.items()},
                "method": "SmoothQuant (Xiao et al. 2023), alpha picked by int8 output SNR on calibration text"}


def smoothable_inputs(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """MatMul input tensor -> names of the MatMuls reading it with a 2-D float initializer as weight,
    for every MatMul after the first normalization node (graph order). Empty when the graph has no
    normalization node."""
    from embslim.exporters.quantize import _FLOAT_TYPES

    floats = {i.name for i in model.graph.initializer if i.data_type in _FLOAT_TYPES and len(i.dims) == 2}
    groups: dict[str, list[str]] = {}
    seen_norm = False
    for node in model.graph.node:
        seen_norm = seen_norm or node.op_type in _NORMS
        if seen_norm and node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in floats:
            groups.setdefault(node.input[0], []).append(node.name)
    return groups


def activation_ranges(model: "onnx.ModelProto", feeds: Sequence[dict[str, np.ndarray]],
                      tensors: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-channel range of each tensor in `tensors` over `feeds`: the mean over feeds of the max |x|
    over that feed's rows (all positions, padding included, as a dynamic scale sees them). Returns
    name -> float64 [channels]. Raises SmoothError when `feeds` is empty."""
    from embslim.exporters.quantize import tensor_values

    if not feeds:
        raise SmoothError("activation ranges need at least one calibration feed")
    total = {name: None for name in tensors}
    for _, values in tensor_values(model, tensors, feeds):
        for name, x in zip(tensors, values):
            peak = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0).astype(np.float64)
            total[name] = peak if total[name] is None else total[name] + peak
    return {name: value / len(feeds) for name, value in total.items()}


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha <= 1:
        raise SmoothError(f"alpha (migration strength) must be in (0, 1], got {alpha}; SmoothQuant uses 0.5-0.85")


def smooth(model: "onnx.ModelProto", ranges: dict[str, np.ndarray], alpha: float) -> "onnx.ModelProto":
    """A copy of `model` with every input in `ranges` (see `smoothable_inputs`) divided per channel by
    s = max|X|^alpha / max|W|^(1-alpha) through a new Mul, and the rows of the MatMul weights reading it
    multiplied by s. fp32 outputs are unchanged up to rounding. Raises SmoothError for alpha outside (0, 1]."""
    import onnx
    from onnx import numpy_helper

    _check_alpha(alpha)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    groups = smoothable_inputs(out)
    nodes = {n.name: n for n in out.graph.node}
    inserts = []
    for x, matmuls in groups.items():
        if x not in ranges:
            continue
        weights = [numpy_helper.to_array(inits[nodes[m].input[1]]) for m in matmuls]
        if len({w.shape[0] for w in weights}) != 1 or weights[0].shape[0] != ranges[x].shape[0]:
            continue   # not a per-channel scalable input (shapes disagree): leave it
        act = np.maximum(ranges[x], _RANGE_FLOOR * max(float(np.median(ranges[x])), 1e-12))
        wmax = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-8)
        s = (act ** alpha / wmax ** (1 - alpha)).astype(np.float64)
        scale_name, smoothed = f"{x}/smooth_scale_inv", f"{x}/smoothed"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), scale_name))
        for m, w in zip(matmuls, weights):
            node = nodes[m]
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
            node.input[0] = smoothed
        inserts.append((matmuls[0], onnx.helper.make_node("Mul", [x, scale_name], [smoothed], name=f"{x}/SmoothQuant")))
    for first, mul in inserts:   # right before the first reader: X is produced by then, every reader follows
        position = next(i for i, n in enumerate(out.graph.node) if n.name == first)
        out.graph.node.insert(position, mul)
    return out


def smooth_for_int8(model_in: str | Path, model_out: str | Path, feeds: Sequence[dict[str, np.ndarray]], *,
                    cfg: "QuantizeConfig", alpha: float | None = None,
                    alphas: Sequence[float] = SMOOTH_ALPHAS) -> SmoothResult:
    """Write `model_in` smoothed for dynamic int8 to `model_out` (fp32, weights inside). With `alpha`
    None, each of `alphas` (and no smoothing) is quantized with `cfg` (8-bit) and scored by the SNR
    of the task output against `model_in` on `feeds` (feed dicts: graph input -> int64 [batch,
    sequence], e.g. `embslim.pipeline.targets.model_feeds` of the training text); the best is written,
    or an unchanged copy when no alpha beats the plain graph. Raises SmoothError when the graph has
    nothing to smooth, `feeds` is empty or alpha is outside (0, 1]."""
    import onnx

    from embslim.exporters.compare import snr_db
    from embslim.exporters.quantize import _load, quantize
    from embslim.exporters.sensitivity import _primary_output, run_feeds

    model_in, model_out = Path(model_in), Path(model_out)
    if cfg.bits != 8 or cfg.mixed:
        cfg = replace(cfg, bits=8, int4_nodes=None)
    model = _load(model_in)
    groups = smoothable_inputs(model)
    if not groups:
        raise SmoothError(f"{model_in.name} has no MatMul with a float weight after a normalization node; "
                          "SmoothQuant applies to transformer encoders")
    candidates = [alpha] if alpha is not None else list(alphas)
    for a in candidates:   # before the ranges and reference runs, not after
        _check_alpha(a)
    ranges = activation_ranges(model, feeds, list(groups))
    reference = run_feeds(model, feeds)
    output = _primary_output([o.name for o in model.graph.output])
    model_out.parent.mkdir(parents=True, exist_ok=True)
    scores: dict[float, float] = {}
    with tempfile.TemporaryDirectory(dir=model_out.parent, prefix=".smooth-") as tmp:
        probe_int8 = Path(tmp) / "int8.onnx"
        for a in ([0.0] if alpha is None else []) + candidates:
            candidate = Path(tmp) / f"alpha-{a}.onnx"
            onnx.save(model if a == 0.0 else smooth(model, ranges, a), str(candidate))
            quantize(candidate, probe_int8, cfg=cfg)
            scores[a] = snr_db(reference, run_feeds(probe_int8, feeds))
            log.info("SmoothQuant alpha %s: int8 %s SNR %.2f dB on %d calibration batches",
                     a or "0 (plain)", output, scores[a], len(feeds))
        chosen = max(scores, key=scores.get)   # the first of equals: plain before any alpha
        os.replace(Path(tmp) / f"alpha-{chosen}.onnx", model_out)   # same folder: a rename, never half a file
    return SmoothResult(path=model_out, alpha=chosen or None, groups=len(groups) if chosen else 0,
                        output=output, snr_db=scores)
