"""Transformer fusion with ONNX Runtime's optimizer, checked against the unfused graph.

`optimize(model_in, model_out, cfg=OptimizeConfig())` runs
`onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`, which rewrites the
encoder into ORT's fused operators: Attention, SkipLayerNormalization and BiasGelu (measured on
all-MiniLM-L6-v2 exports, DESIGN.md). EmbedLayerNormalization does not fuse once the word
embedding is ours (a remap Gather, a compressor's ops); that costs nothing measurable, and the
rest of the graph fuses as usual.

The fused Attention takes the attention mask as per-row lengths, so it assumes RIGHT padding
(what `embslim.runtime.Classifier` and Hugging Face tokenizers do); the parity check feeds ragged,
right-padded batches.

After fusion the two files are compared on shapes other than the tracing input (names, then
shapes, then values); any failure raises one `OptimizationError` and deletes the output, so a
bad fusion never reaches a bundle. `OptimizeResult.fused` says which fusions happened.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from embslim.exporters.compare import Comparison, compare_onnx
from embslim.exporters.onnx import DEFAULT_SHAPES

log = logging.getLogger(__name__)

# config.json keys per family (BERT/RoBERTa spell them one way, DistilBERT another).
_HEADS_KEYS = ("num_attention_heads", "n_heads")
_HIDDEN_KEYS = ("hidden_size", "dim")


class OptimizationError(ValueError):
    """The fused graph disagrees with the unfused one, or the fusion could not run."""


@dataclass(frozen=True)
class OptimizeConfig:
    # None: read from the Hugging Face config.json beside the model (or `config_json`).
    num_heads: int | None = None
    hidden_size: int | None = None
    config_json: str | None = None
    # "bert" covers BERT, RoBERTa, DistilBERT and MiniLM encoders in ORT's optimizer.
    model_type: Literal["bert"] = "bert"
    # Fused kernels reorder float sums (softmax, layer norm): measured ~1e-6 on MiniLM logits.
    # 1e-4 is the export contract's tolerance; a wrong fusion is off by far more.
    atol: float = 1e-4
    validation_shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES
    # Fuse self-attention into ORT's Attention op (fastest). False keeps the Q/K/V projections as
    # plain MatMuls, which 4-bit quantization can take (a fused Attention's weights fall back to int8).
    attention: bool = True

    def __post_init__(self) -> None:
        for name in ("num_heads", "hidden_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None (read it from config.json), got {value!r}")
        if self.num_heads and self.hidden_size and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                             "check the model's config.json (e.g. all-MiniLM-L6-v2: 12 heads, hidden 384)")
        if self.model_type != "bert":
            raise ValueError(f"model_type must be 'bert' (ORT's fusion for BERT-like encoders), got {self.model_type!r}")
        if not self.atol > 0:
            raise ValueError(f"atol must be > 0, got {self.atol}; 1e-4 is the export contract's tolerance")
        if not self.validation_shapes or any(len(s) != 2 or min(s) < 1 for s in self.validation_shapes):
            raise ValueError(f"validation_shapes must be (batch, sequence) pairs >= 1, got {self.validation_shapes!r}")


@dataclass(frozen=True)
class OptimizeResult:
    path: Path
    fused: dict[str, int]            # fused operator type -> how many (only those > 0)
    num_heads: int
    hidden_size: int
    bytes_in: int
    bytes_out: int
    comparison: Comparison
    seconds: float

    def to_json(self) -> dict:
        return {"file": self.path.name, "fused": dict(self.fused), "num_heads": self.num_heads,
                "hidden_size": self.hidden_size, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "max_abs_diff": self.comparison.max_abs_diff, "seconds": round(self.seconds, 2)}


def _shape_from_config(model_in: Path, cfg: OptimizeConfig) -> tuple[int, int]:
    heads, hidden = cfg.num_heads, cfg.hidden_size
    if heads and hidden:
        return heads, hidden
    path = Path(cfg.config_json) if cfg.config_json else model_in.parent / "config.json"
    if not path.is_file():
        raise OptimizationError(f"num_heads/hidden_size not given and {path} not found; pass "
                                "OptimizeConfig(num_heads=..., hidden_size=...) or config_json= (the model's "
                                "Hugging Face config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OptimizationError(f"{path} is not a readable JSON config ({e}); pass num_heads= and hidden_size=") from e
    heads = heads or next((int(data[k]) for k in _HEADS_KEYS if k in data), None)
    hidden = hidden or next((int(data[k]) for k in _HIDDEN_KEYS if k in data), None)
    if not heads or not hidden:
        raise OptimizationError(f"{path} has no {' / '.join(_HEADS_KEYS)} or {' / '.join(_HIDDEN_KEYS)}; "
                                "pass num_heads= and hidden_size=")
    return heads, hidden


def optimize(model_in: str | Path, model_out: str | Path, *, cfg: OptimizeConfig) -> OptimizeResult:
    """Fuse `model_in` into `model_out` (weights inside the file) and check it still agrees."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_in, model_out = Path(model_in), Path(model_out)
    if not model_in.is_file():
        raise OptimizationError(f"{model_in} not found; pass an exported model.onnx")
    if model_in.resolve() == model_out.resolve():
        raise OptimizationError(f"model_out must differ from model_in ({model_in}): the check compares the two files")
    heads, hidden = _shape_from_config(model_in, cfg)
    t0 = time.perf_counter()
    try:
        # opt_level=None keeps the optimizer's default for "bert" (ORT's basic, hardware-independent
        # rewrites such as constant folding, then the Python fusions); nothing CPU-specific is baked in.
        from onnxruntime.transformers.fusion_options import FusionOptions

        options = FusionOptions(cfg.model_type)
        options.enable_attention = cfg.attention
        fused_model = optimize_model(str(model_in), model_type=cfg.model_type, num_heads=heads, hidden_size=hidden,
                                     optimization_options=options)
    except Exception as e:  # the optimizer raises bare asserts and KeyErrors on graphs it cannot read
        raise OptimizationError(f"ONNX Runtime's optimizer failed on {model_in.name}: {type(e).__name__}: {e}") from e
    fused = {op: int(n) for op, n in fused_model.get_fused_operator_statistics().items() if n}
    model_out.parent.mkdir(parents=True, exist_ok=True)
    fused_model.save_model_to_file(str(model_out))
    seconds = time.perf_counter() - t0
    log.info("fused %s -> %s in %.1f s: %s", model_in.name, model_out.name, seconds,
             ", ".join(f"{op} x{n}" for op, n in fused.items()) or "nothing fused")
    if cfg.attention and "Attention" not in fused and "MultiHeadAttention" not in fused:
        log.warning("no attention was fused in %s (num_heads=%d, hidden_size=%d): the graph is valid but not faster; "
                    "check num_heads and hidden_size against the model's config.json", model_in.name, heads, hidden)

    comparison = compare_onnx(model_in, model_out, shapes=cfg.validation_shapes)
    if comparison.ok:
        comparison.add("values", comparison.max_abs_diff <= cfg.atol,
                       f"max |diff| {comparison.max_abs_diff:.2e}, atol {cfg.atol:g}")
    if not comparison.ok:
        model_out.unlink(missing_ok=True)
        raise OptimizationError(f"fused {model_in.name} does not match the unfused graph: {comparison.failures()}; "
                                "the fused file was deleted: ship the unfused model, or report the graph")
    return OptimizeResult(path=model_out, fused=fused, num_heads=heads, hidden_size=hidden,
                          bytes_in=model_in.stat().st_size, bytes_out=model_out.stat().st_size,
                          comparison=comparison, seconds=seconds)


def fuse_for_quantization(model_in: str | Path, out_dir: str | Path, *, int4: bool,
                          cfg: OptimizeConfig = OptimizeConfig()) -> dict[int, OptimizeResult]:
    """The fused graphs the quantizers start from, keyed by weight bits: 8 -> fully fused
    (model.fused.onnx), and with `int4` also 4 -> fused WITHOUT the Attention op
    (model.fused-noattn.onnx), so the Q/K/V projections can take 4-bit too."""
    out_dir = Path(out_dir)
    graphs = {8: optimize(model_in, out_dir / "model.fused.onnx", cfg=cfg)}
    if int4:
        graphs[4] = optimize(model_in, out_dir / "model.fused-noattn.onnx", cfg=replace(cfg, attention=False))
    return graphs
