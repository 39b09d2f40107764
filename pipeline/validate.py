"""Validate an exported model under ONNX Runtime: task accuracy, parity with PyTorch, latency, memory.

Task metrics are measured through the runtime class an app runs (`embslim.runtime.Classifier` or
`Embedder`: stock tokenizer, per-batch padding, the graph's own remap); what is measured per task
is `embslim.pipeline.scoring`'s. Parity compares those logits with PyTorch's
on the same batches. Latency and peak RSS come from a fresh process per model (embslim.pipeline.probe),
so one model's memory never inflates another's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embslim.pipeline.data import Split

if TYPE_CHECKING:
    from embslim.runtime import Classifier

log = logging.getLogger(__name__)


class ValidationFailed(ValueError):
    """An artifact failed a check the user asked for (parity or agreement)."""


@dataclass(frozen=True)
class ValidateConfig:
    batch_size: int = 32
    max_eval_samples: int | None = None   # None: the whole eval split
    latency_seq_len: int = 32             # a typical sentence; DESIGN's reference figures use 32
    latency_runs: int = 200               # median of 200 after 20 warm-up runs is stable to ~2% here
    threads: int = 1                      # phones and boards: measure the single-core case
    parity_atol: float = 1e-4             # max |ONNX - PyTorch| logit difference for fp32
    min_agreement: float = 1.0            # share of predictions equal to PyTorch's (fp32: all of them)
    measure: bool = True                  # latency + RSS probes (about 10 s per model)
    # feature-extraction metrics on labelled data (paths under --data-root, else the cwd):
    # kNN intent accuracy (k = 1, cosine): the file's train split is the index, its eval split the
    # queries (e.g. clinc150/data_full.json); None: the run's own --train / eval splits when labelled.
    knn_data: str | None = None
    # ROC-AUC of pair cosine against a 0/1 label: a file of labelled text pairs (e.g. mrpc/dev.tsv).
    pair_data: str | None = None
    pair_columns: tuple[str, ...] = ()   # (text, pair, label) columns of pair_data; () tries GLUE's and MRPC's names
    knn_ignore_labels: tuple[str, ...] = ("oos",)   # classes left out of kNN (CLINC150's out-of-scope)

    def __post_init__(self) -> None:
        from embslim.pipeline.config_types import check_field_types

        check_field_types(self)
        if self.batch_size < 1 or self.latency_seq_len < 2 or self.latency_runs < 1:
            raise ValueError("batch_size >= 1, latency_seq_len >= 2 and latency_runs >= 1 are required")
        if self.pair_columns and len(self.pair_columns) != 3:
            raise ValueError(f"pair_columns names (text, pair, label) columns, got {list(self.pair_columns)}")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError(f"min_agreement is a share in [0, 1], got {self.min_agreement}")


def task_metrics(logits: np.ndarray, labels: Sequence[int], *, n_labels: int) -> dict:
    """Accuracy; macro-F1 for more than two labels, F1 of class 1 for two (GLUE's MRPC convention)."""
    from sklearn.metrics import f1_score

    pred = np.argmax(logits, axis=-1)
    y = np.asarray(labels)
    out = {"accuracy": float((pred == y).mean()) if len(y) else float("nan"), "n_eval": int(len(y))}
    if n_labels > 2:
        out["macro_f1"] = float(f1_score(y, pred, average="macro", labels=list(range(n_labels)), zero_division=0))
    else:
        out["f1"] = float(f1_score(y, pred, pos_label=1, zero_division=0))
    return out


def parity(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> dict:
    return {"agreement": float((onnx_logits.argmax(-1) == torch_logits.argmax(-1)).mean()),
            "max_logit_diff": float(np.abs(onnx_logits - torch_logits).max())}


def against_original(logits: np.ndarray, original_logits: np.ndarray | None) -> dict:
    """Label agreement and max |logit difference| with the ORIGINAL (given, trained) model on the same
    eval texts: the main metric when a trained model is shrunk as it is (`--no-finetune`); {} without one."""
    if original_logits is None:
        return {}
    got = parity(logits, original_logits)
    return {"original_agreement": got["agreement"], "original_max_logit_diff": got["max_logit_diff"]}


def latency_ids(tokenizer_json: str | Path, texts: Sequence[str], *, seq_len: int,
                max_length: int | None = None) -> list[int]:
    """Exactly `seq_len` real token ids ([CLS] ... [SEP]) made from the eval texts; never more than
    the bundle's `max_length` when given: the runtime would truncate there, and a trimmed position
    table (prune.trim_positions) has no rows beyond it."""
    from tokenizers import Tokenizer

    if max_length is not None:
        seq_len = min(seq_len, max_length)
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(seq_len)
    joined = " ".join(texts[:64])
    ids = tok.encode(joined).ids
    if len(ids) < seq_len:
        raise ValidationFailed(f"the eval texts give only {len(ids)} tokens; lower latency_seq_len below that")
    return ids


def eval_logits(clf: "Classifier", split: Split, *, batch_size: int, desc: str) -> np.ndarray:
    """`clf.logits` over the whole split, one batch per call so a long eval shows progress
    (embslim.pipeline.logs.progress); the batches and their padding are those of a single call."""
    from embslim.pipeline.scoring import ClassificationScorer

    return ClassificationScorer(len(clf.labels)).outputs(clf, split, batch_size=batch_size, desc=desc)


def validate_artifact(bundle: str | Path, file: str, split: Split, *, cfg: ValidateConfig, scorer: Any,
                      torch_outputs: np.ndarray | None = None,
                      original_outputs: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Metrics for one ONNX file of a bundle (or of any folder with manifest.json + tokenizer.json),
    run through the runtime class an app would use: the task's metrics on `split` (the `scorer`,
    `embslim.pipeline.scoring.scorer_for`), parity with `torch_outputs` (the same model in PyTorch)
    and the comparison with `original_outputs` (the model the user gave, before pruning), each when
    given; latency and peak RSS in a fresh process when `cfg.measure`."""
    bundle = Path(bundle)
    model = scorer.load(bundle, file)
    outputs = scorer.outputs(model, split, batch_size=cfg.batch_size, desc=f"{file}: eval")
    metrics = scorer.metrics(model, outputs, split, batch_size=cfg.batch_size) | {
        "file": file, "onnx_bytes": (bundle / file).stat().st_size}
    if torch_outputs is not None:
        metrics |= scorer.parity(outputs, torch_outputs, split)
    metrics |= scorer.against_original(outputs, original_outputs)
    if cfg.measure:
        from embslim.pipeline.probe import measure

        log.info("%s: latency and memory in a fresh process (%d runs)", file, cfg.latency_runs)
        ids = latency_ids(bundle / "tokenizer.json", split.texts, seq_len=cfg.latency_seq_len, max_length=model.max_length)
        metrics |= measure(bundle / file, ids, runs=cfg.latency_runs, threads=cfg.threads)
    log.info("%s: %s%s", file, scorer.summary(metrics),
             f", p50 {metrics['latency_ms_p50']:.2f} ms, peak RSS {metrics['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in metrics else "")
    return metrics, outputs


def check_parity(name: str, metrics: dict, *, cfg: ValidateConfig, scorer: Any) -> None:
    """Raise one ValidationFailed naming every failed check (never downgraded to a warning)."""
    problems = scorer.parity_problems(metrics, cfg)
    if problems:
        raise ValidationFailed(f"{name} failed validation: " + "; ".join(problems))


# Batch size a label must not depend on: the benchmark's and validation's default batch.
FLIP_BATCH_SIZE = 32


def label_flips(logits_a: np.ndarray, logits_b: np.ndarray) -> int:
    """How many examples get a different argmax label in two float `[n, labels]` logits of the same
    texts (e.g. one file run at batch 1 and at batch 32). ValueError when the shapes differ."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"label_flips needs two [n, labels] arrays of one shape, got {a.shape} and {b.shape}")
    return int((a.argmax(-1) != b.argmax(-1)).sum())


def batch_flips(clf: "Classifier", split: Split, *, batch_size: int = FLIP_BATCH_SIZE,
                logits: np.ndarray | None = None) -> dict:
    """Labels of `split` that change between batch 1 and `batch_size` through `clf` (the runtime
    `Classifier`, per-batch padding): 0 for fp32 and static int8 files; dynamic int8 (ONNX Runtime's
    `quantize_dynamic`) computes each activation scale from the batch it runs on, so a few labels
    move with the texts batched beside them. `logits`: `clf`'s logits at `batch_size` when the
    caller has them already. Returns {"batch_flips": int, "batch_flips_batch_size": int}."""
    pairs = list(split.pairs) if split.pairs is not None else None
    at_batch = logits if logits is not None else clf.logits(list(split.texts), pairs, batch_size=batch_size)
    one = clf.logits(list(split.texts), pairs, batch_size=1)
    return {"batch_flips": label_flips(one, at_batch), "batch_flips_batch_size": batch_size}
