"""Compare two ONNX files of the same classifier on random inputs: values, SNR and labels.

Graph rewrites (fusion, quantization, ORT format) must keep the exported contract: the same
inputs (the ORIGINAL tokenizer's int64 `input_ids` etc., `[batch, sequence]`) and `logits`
`[batch, labels]`. `compare_onnx` feeds both files the same random batches, on shapes that differ
from the (2, 8) tracing input, and reports names, shapes, max |difference|, the signal-to-noise
ratio of the new logits against the reference and how often the argmax agrees. It never raises on
values: the caller decides what is acceptable (an atol for fusion; SNR and task accuracy for
lossy steps, which random logits alone cannot judge).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from embslim.exporters.onnx import DEFAULT_SHAPES, ValidationReport, _dummy_inputs

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


@dataclass
class Comparison(ValidationReport):
    """What `compare_onnx` found; `checks` holds (what, ok, detail) for names and shapes."""

    snr_db: float = float("inf")      # 10 log10(sum ref^2 / sum (ref - new)^2) over every batch
    agreement: float = 1.0            # share of rows whose argmax is the same
    n_rows: int = 0

    def to_json(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "snr_db": self.snr_db, "agreement": self.agreement,
                "n_rows": self.n_rows, "checks": [list(c) for c in self.checks]}


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of `other` against `reference` (inf when they are equal)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(other, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def input_vocab_size(model: "onnx.ModelProto", *, default: int | None = None) -> int:
    """How many token ids the graph accepts: rows of the table the `input_ids` Gather reads
    (the int32 remap after DEP, the embedding itself otherwise)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) > 1 and node.input[1] == "input_ids":
            table = inits.get(node.input[0])
            if table is not None and table.dims:
                return int(table.dims[0])
        if node.op_type == "EmbedLayerNormalization" and node.input and node.input[0] == "input_ids":
            table = inits.get(node.input[2]) if len(node.input) > 2 else None
            if table is not None and table.dims:
                return int(table.dims[0])
    if default is None:
        raise ValueError("cannot tell the vocabulary size from the graph (no Gather reads 'input_ids' from an "
                         "initializer); pass vocab_size=")
    return default


def _session(path: Path, threads: int = 1, *, exact_int8: bool | None = None):
    import onnxruntime as ort

    from embslim.runtime.classifier import session_options

    opts = session_options(threads, exact_int8=exact_int8)   # the runtime's kernels: a diff here is what an app sees
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_onnx(reference: str | Path, candidate: str | Path, *,
                 shapes: Sequence[tuple[int, int]] | None = None, vocab_size: int | None = None,
                 seed: int = 1, exact_int8: bool | None = None) -> Comparison:
    """Run both files on the same random batches (ragged right padding, both token types).
    exact_int8: the runtime's x86 u8 x u8 rewrite of s8-weight int8 layers
    (embslim.runtime.session.SESSION_CONFIG) for both files; None (default) applies it where the
    runtime does (x86 without VNNI), False turns it off, e.g. to compare a .onnx with its .ort, where
    ORT cannot apply that graph rewrite. shapes=None: embslim.exporters.onnx.DEFAULT_SHAPES; callers
    that know the bundle's max_length pass embslim.exporters.onnx.shapes_for(max_length)."""
    import onnx

    reference, candidate = Path(reference), Path(candidate)
    out = Comparison()
    ref_sess, new_sess = _session(reference, exact_int8=exact_int8), _session(candidate, exact_int8=exact_int8)
    ref_in = tuple(i.name for i in ref_sess.get_inputs())
    new_in = tuple(i.name for i in new_sess.get_inputs())
    out.add("input names", set(ref_in) == set(new_in), f"expected {ref_in}, got {new_in}")
    ref_out = tuple(o.name for o in ref_sess.get_outputs())
    new_out = tuple(o.name for o in new_sess.get_outputs())
    out.add("output names", ref_out == new_out, f"expected {ref_out}, got {new_out}")
    if not out.ok:
        return out
    if vocab_size is None and reference.suffix == ".onnx":
        vocab_size = input_vocab_size(onnx.load(str(reference), load_external_data=False))
    if vocab_size is None:
        raise ValueError(f"pass vocab_size= to compare {reference.name}: only .onnx files say it themselves")
    # the task's output: a classifier's logits (a tagger's per token), a sentence encoder's sentence_embedding
    primary = next((n for n in ("logits", "sentence_embedding") if n in ref_out), ref_out[0])
    refs, news = [], []
    for i, shape in enumerate(DEFAULT_SHAPES if shapes is None else shapes):
        feed = _dummy_inputs(tuple(shape), ref_in, vocab_size, seed=seed + i)
        ref = ref_sess.run([primary], feed)[0]
        new = new_sess.run([primary], feed)[0]
        if ref.shape != new.shape:
            out.add(f"shape at {tuple(shape)}", False, f"expected {ref.shape}, got {new.shape}")
            continue
        out.add(f"shape at {tuple(shape)}", True, f"{new.shape}")
        out.max_abs_diff = max(out.max_abs_diff, float(np.abs(ref - new).max()))
        # one row per prediction: a text's logits / embedding, or a tagger's token (padding rows included:
        # both files compute them, from the same masked attention)
        refs.append(ref.reshape(-1, ref.shape[-1]))
        news.append(new.reshape(-1, new.shape[-1]))
    if refs:
        ref_all, new_all = np.concatenate(refs), np.concatenate(news)
        out.snr_db = snr_db(ref_all, new_all)
        out.agreement = float((ref_all.argmax(-1) == new_all.argmax(-1)).mean())
        out.n_rows = int(ref_all.shape[0])
    return out
