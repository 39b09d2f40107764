"""torch -> ONNX for a (pruned) sequence classifier, validated against PyTorch.

The exported graph's contract is data (`OnnxContract`): it takes the ORIGINAL tokenizer's
`input_ids`, `attention_mask` and, for families that use them, `token_type_ids` (int64,
[batch, sequence], both axes dynamic), and returns the task's outputs: `logits` [batch, labels]
for a classifier; `token_embeddings` [batch, sequence, hidden], `sentence_embedding` [batch, dim]
and `last_hidden_state` (an Identity alias of token_embeddings, the name Optimum's
ORTModelForFeatureExtraction reads) for a sentence encoder. The DEP remap is an
int32 Gather inside the graph. After export the graph is validated on shapes that differ from
the tracing input: names, then shapes, then values; every failure is collected and one
`OnnxValidationError` is raised, so a bad export never becomes a bundle.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class OnnxValidationError(ValueError):
    """The exported graph disagrees with PyTorch (names, shapes or values)."""


# (batch, sequence) shapes checked after export and after each graph rewrite; both differ from the
# (2, 8) tracing input.
DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((4, 19), (1, 128))


def shapes_for(max_length: int, shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES) -> tuple[tuple[int, int], ...]:
    """`shapes` for a bundle that accepts at most `max_length` tokens: the long shape (128) at
    max_length, so checks run on the longest input the bundle accepts, and no shape past it (a
    position table trimmed to max_length has no rows beyond)."""
    return tuple((b, max_length if s == 128 else min(s, max_length)) for b, s in shapes)


@dataclass(frozen=True)
class OnnxContract:
    input_names: tuple[str, ...]
    output_names: tuple[str, ...] = ("logits",)
    opset: int = 17
    atol: float = 1e-4                 # max |output difference| vs PyTorch
    validation_shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES
    output_axes: Mapping[str, Mapping[int, str]] = field(default_factory=lambda: {"logits": {0: "batch"}})

    def __post_init__(self) -> None:
        if "input_ids" not in self.input_names:
            raise ValueError(f"input_names must include 'input_ids', got {self.input_names}")
        if self.opset < 14:
            raise ValueError(f"opset {self.opset} is too old for these models; use 14 or newer (17 is the default)")


@dataclass
class ValidationReport:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    max_abs_diff: float = 0.0

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def add(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append((what, ok, detail))
        log.info("\t-[%s] %s%s", "✓" if ok else "x", what, f" ({detail})" if detail else "")

    def failures(self) -> str:
        return "; ".join(f"{what}: {detail}" for what, ok, detail in self.checks if not ok)


# Graph outputs that are another output under a second name: (the model's attribute it copies).
_ALIASES = {"last_hidden_state": "token_embeddings"}


def _output(result: object, name: str) -> "torch.Tensor":
    return getattr(result, _ALIASES.get(name, name))


def _outputs_module(model: "PreTrainedModel", input_names: Sequence[str], output_names: Sequence[str]) -> "torch.nn.Module":
    """Positional-argument wrapper so torch.onnx names the inputs in the contract's order and
    returns the contract's outputs in order (an alias as an Identity of the output it names)."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = self.model(**dict(zip(input_names, args)))
            outs = tuple(_output(result, n).clone() if n in _ALIASES else _output(result, n) for n in output_names)
            return outs if len(outs) > 1 else outs[0]

    return Outputs()


def graph_input_names(model: "PreTrainedModel", input_names: Sequence[str]) -> tuple[str, ...]:
    """The graph's inputs: the contract's, less token_type_ids for a model with one token type
    (type_vocab_size 1, e.g. RoBERTa): such a model has no row for type 1, and the runtime feeds
    only the inputs the graph declares."""
    if int(getattr(model.config, "type_vocab_size", 2) or 0) <= 1:
        return tuple(n for n in input_names if n != "token_type_ids")
    return tuple(input_names)


def _dummy_inputs(shape: tuple[int, int], input_names: Sequence[str], vocab_size: int, *, seed: int,
                  type_vocab_size: int = 2) -> dict[str, np.ndarray]:
    """Random ids with ragged padding, so masks and type ids (within the model's types) are exercised."""
    rng = np.random.default_rng(seed)
    batch, seq = shape
    ids = rng.integers(0, vocab_size, size=shape, dtype=np.int64)
    mask = np.ones(shape, dtype=np.int64)
    for b in range(1, batch):
        mask[b, max(1, seq - b * max(1, seq // (2 * batch))):] = 0
    ids[mask == 0] = 0
    types = np.zeros(shape, dtype=np.int64)
    types[:, seq // 2:] = min(1, max(0, type_vocab_size - 1))
    types[mask == 0] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {n: values[n] for n in input_names}


def _types(model: "PreTrainedModel") -> int:
    return int(getattr(model.config, "type_vocab_size", 2) or 1)


def export_onnx(model: "PreTrainedModel", out_path: str | Path, *, contract: OnnxContract) -> Path:
    """Export `model` to `out_path` (fp32, weights inside the file) and return the path."""
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # A new wrapper is in training mode, and torch.onnx restores that mode on everything under it
    # after export: set eval first, or the caller's model comes back with dropout on.
    names = graph_input_names(model, contract.input_names)
    wrapper = _outputs_module(model, names, contract.output_names).eval()
    vocab = int(model.config.vocab_size)
    dummy = _dummy_inputs((2, 8), names, vocab, seed=0, type_vocab_size=_types(model))
    args = tuple(torch.from_numpy(dummy[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {n: dict(a) for n, a in contract.output_axes.items()}
    t0 = time.perf_counter()
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about constants in transformers' mask code; validation below is the real check.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, args, str(out_path), input_names=list(names),
                          output_names=list(contract.output_names), dynamic_axes=axes,
                          opset_version=contract.opset, dynamo=False, do_constant_folding=True)
    log.info("exported %s (%.1f MB) in %.1f s", out_path.name, out_path.stat().st_size / 1e6, time.perf_counter() - t0)
    return out_path


def validate_onnx(model: "PreTrainedModel", onnx_path: str | Path, *, contract: OnnxContract,
                  max_length: int | None = None) -> ValidationReport:
    """Compare ONNX Runtime with PyTorch on shapes other than the tracing input; raise on any failure."""
    import onnxruntime as ort
    import torch

    report = ValidationReport()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_in = tuple(i.name for i in session.get_inputs())
    got_out = tuple(o.name for o in session.get_outputs())
    names = graph_input_names(model, contract.input_names)
    report.add("input names", set(got_in) == set(names), f"expected {names}, got {got_in}")
    report.add("output names", got_out == contract.output_names, f"expected {contract.output_names}, got {got_out}")
    if report.ok:
        shapes = shapes_for(max_length, contract.validation_shapes) if max_length else contract.validation_shapes
        for i, shape in enumerate(shapes):
            feed = _dummy_inputs(shape, names, int(model.config.vocab_size), seed=i + 1, type_vocab_size=_types(model))
            got = dict(zip(contract.output_names, session.run(list(contract.output_names), feed)))
            with torch.inference_mode():
                result = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
            for out_name, onnx_out in got.items():
                ref = _output(result, out_name).float().numpy()
                what = f"{out_name} at {shape}" if len(got) > 1 else f"at {shape}"
                if onnx_out.shape != ref.shape:
                    report.add(f"shape {what}", False, f"expected {ref.shape}, got {onnx_out.shape}")
                    continue
                diff = float(np.abs(onnx_out - ref).max())
                report.max_abs_diff = max(report.max_abs_diff, diff)
                report.add(f"values {what}", diff <= contract.atol, f"max |diff| {diff:.2e}, atol {contract.atol:g}")
    if not report.ok:
        raise OnnxValidationError(f"ONNX export of {Path(onnx_path).name} does not match PyTorch: {report.failures()}")
    return report
