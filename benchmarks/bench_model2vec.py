"""model2vec's static classifier on the same task and training data, for benchmarks/bench_optimum.py.

A user after the smallest, fastest classifier may pick model2vec (MinishLab/model2vec) instead of a
transformer: distil the encoder into a static token-embedding table, then train a small head on
mean-pooled token vectors. This module does that with the same all-MiniLM-L6-v2 that embslim's
bundles start from and the same training sentences, and measures the result with the benchmark's
protocol:

1. `distill_minilm`: `model2vec.distill.distill` on the bundled MiniLM folder (offline; PCA to 256
   dims, SIF weighting: model2vec's defaults), saved once under the benchmark's work folder.
2. `train_classifier`: `model2vec.train.StaticModelForClassification.from_static_model(...).fit(texts,
   labels)` (its defaults: one hidden layer of 512, early stopping on a 10% validation split, seed 42).
3. `export_onnx`: the trained torch module to ONNX (`torch.onnx.export`, input_ids [batch, sequence]
   int64 -> logits [batch, labels] in the task's label order), the way model2vec's own
   `scripts/export_to_onnx.py` exports a StaticModel from torch; its tokenizer.json beside it. Then
   ONNX Runtime dynamic int8 with the Optimum arm64 settings (embslim.exporters.quantize, which also
   quantizes the 30k x 256 embedding Gather, as Optimum does).
4. `M2VRunner`: model2vec's tokenizer is not the bundles' BERT tokenizer (no [CLS]/[SEP], its own
   vocabulary), so it cannot run through embslim.runtime.Classifier; this runner tokenizes as
   `StaticModelForClassification.tokenize` does (no special tokens, truncation at 512, right padding
   with pad_id per batch) and runs the ONNX session with embslim's session options.
   Latency and peak RSS use the same fresh-process probe as every other row
   (embslim.pipeline.probe: warm-up, timed session runs at batch 1 on fixed ids, VmHWM): the ids are
   model2vec's own for the same latency text.

Needs `pip install -e '.[bench]'` (model2vec[distill,train]); bench_optimum skips these rows with one
line when it is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger("bench_model2vec")

PCA_DIMS = 256          # model2vec's default for distill()
MAX_TOKENS = 512        # StaticModelForClassification.tokenize truncates here


class Model2VecMissing(RuntimeError):
    """model2vec (with its distill and train extras) is not installed."""


def require_model2vec() -> str:
    """model2vec's version, or Model2VecMissing with the install line."""
    try:
        import model2vec
        from model2vec.distill import distill  # noqa: F401
        from model2vec.train import StaticModelForClassification  # noqa: F401
    except ImportError as e:
        raise Model2VecMissing(f"model2vec rows skipped: {e}; pip install -e '.[bench]' (model2vec[distill,train])") from e
    return str(model2vec.__version__)


def distill_minilm(out: Path, *, source: str = "default", pca_dims: int | None = PCA_DIMS) -> Path:
    """`source` (default: the bundled all-MiniLM-L6-v2; any local encoder folder) distilled into a
    StaticModel folder at `out`, reused when there."""
    from model2vec.distill import distill

    from embslim.pipeline.model import resolve_model

    if (out / "config.json").is_file():
        return out
    t0 = time.perf_counter()
    static = distill(model_name=resolve_model(source), pca_dims=pca_dims)
    static.save_pretrained(str(out))
    log.info("model2vec: distilled the bundled MiniLM into %d x %d vectors in %.0f s", *static.embedding.shape,
             time.perf_counter() - t0)
    return out


def train_classifier(base: Path, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str]):
    """StaticModelForClassification fitted on (texts, labels), model2vec's defaults."""
    from model2vec import StaticModel
    from model2vec.train import StaticModelForClassification

    clf = StaticModelForClassification.from_static_model(model=StaticModel.from_pretrained(str(base)))
    t0 = time.perf_counter()
    clf.fit(list(texts), [label_names[i] for i in labels])
    clf.eval()
    log.info("model2vec: classifier trained on %d sentences in %.0f s", len(texts), time.perf_counter() - t0)
    return clf


def export_onnx(clf, folder: Path, label_names: Sequence[str]) -> dict:
    """model.onnx (input_ids -> logits in `label_names` order), model.int8.onnx and tokenizer.json in
    `folder`; returns {"pad_id", "parity_max_abs_diff"} (ONNX vs torch on a few training-like texts)."""
    import onnxruntime as ort
    import torch

    from embslim.exporters.quantize import QuantizeConfig, quantize

    order = [list(clf.classes_).index(name) for name in label_names]

    class Ordered(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("order", torch.tensor(order, dtype=torch.int64))

        def forward(self, input_ids):
            return self.inner(input_ids).index_select(1, self.order)

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    module = Ordered(clf).eval()
    sample = clf.tokenize(["a gripping , funny film", "dull"])
    with torch.no_grad():
        torch.onnx.export(module, (sample,), str(folder / "model.onnx"), input_names=["input_ids"],
                          output_names=["logits"], dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                                                 "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        probe = clf.tokenize(["the plot is thin but the acting is great", "no .", "an utterly boring , pointless mess"])
        expected = module(probe).numpy()
    got = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input_ids": probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > 1e-4:
        raise RuntimeError(f"model2vec ONNX export differs from torch by {diff:.2e} (> 1e-4)")
    clf.tokenizer.save(str(folder / "tokenizer.json"))
    quantize(folder / "model.onnx", folder / "model.int8.onnx", cfg=QuantizeConfig(target="arm64"))
    meta = {"pad_id": int(clf.pad_id), "labels": list(label_names), "parity_max_abs_diff": diff}
    (folder / "m2v.json").write_text(json.dumps(meta, indent=2))
    return meta


@dataclass
class M2VRunner:
    """Classify with a model2vec ONNX file (see the module docstring)."""

    folder: Path
    file: str = "model.onnx"

    def __post_init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from embslim.runtime.session import session_options

        meta = json.loads((self.folder / "m2v.json").read_text())
        self.pad_id = int(meta["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.session = ort.InferenceSession(str(self.folder / self.file), session_options(None),
                                            providers=["CPUExecutionProvider"])

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids[:MAX_TOKENS] for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def logits(self, texts: Sequence[str], *, batch_size: int) -> np.ndarray:
        """float32 [n, labels], `batch_size` texts per run, each batch padded to its longest row."""
        out = []
        for start in range(0, len(texts), batch_size):
            rows = self.ids(texts[start:start + batch_size])
            batch = np.full((len(rows), max(1, max(len(r) for r in rows))), self.pad_id, dtype=np.int64)
            for i, r in enumerate(rows):
                batch[i, :len(r)] = r
            out.append(self.session.run(["logits"], {"input_ids": batch})[0])
        return np.concatenate(out).astype(np.float32)

    def latency_ids(self, texts: Sequence[str], *, seq_len: int) -> list[int]:
        """model2vec's ids for the text the other rows' latency ids come from (the first 64 eval texts
        joined, embslim.pipeline.validate.latency_ids), cut to `seq_len` tokens."""
        ids = self.ids([" ".join(texts[:64])])[0]
        return ids[:seq_len]


def prepare(work: Path, train_rows: Sequence[tuple[str, Sequence[str], Sequence[int]]],
            label_names: Sequence[str], *, source: str = "default",
            pca_dims: int | None = PCA_DIMS) -> list[tuple[str, Path, dict]]:
    """Distil `source` once, then for each (name, texts, labels) train, export and quantize into
    work/<name>; returns (name, folder, export info) per row."""
    base = distill_minilm(work / "m2v-base", source=source, pca_dims=pca_dims)
    out = []
    for name, texts, labels in train_rows:
        clf = train_classifier(base, texts, labels, label_names)
        folder = work / name
        info = export_onnx(clf, folder, label_names) | {"train_sentences": len(texts)}
        (folder / "m2v.json").write_text(json.dumps(info, indent=2))
        out.append((name, folder, info))
    return out
