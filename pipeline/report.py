"""The footprint report: what vocabulary pruning and embedding compression saved, and what it cost.

Input is a plain JSON-able dict the pipeline builds (model, task, optional `vocab`, free-form
`finetune`, a list of `variants`, `notes`). The first variant is the reference: every delta and
ratio is measured against it. `write_report` turns the dict into a bundle directory:

    report.json  report.md  report.html  plots/size_breakdown.png  plots/accuracy_vs_size.png
    (an embedding report: also plots/cosine_vs_size.png)

What differs between tasks (the columns, per-variant details, ratio-line deltas, plotted metric,
a few sentences, what makes two bundles comparable) is one `ReportView` per task in
`REPORT_VIEWS`, picked by `model.task` (then `task.type`); reports without a view of their own
render as text classification. A text-classification report shows accuracy, agreement and logit
differences; a feature-extraction (sentence-embedding) report shows cosine to the original
model, kNN accuracy and pair AUC; a token-classification (tagger) report shows entity F1 (seqeval),
precision, recall and word accuracy, token agreement, and a table of entity F1 per entity type.

Everything is rendered in memory first and each file is written to a temporary name and moved
into place with `os.replace`, so a crash never leaves a half-written report. `report.html`
embeds its plots as base64 and opens anywhere on its own. Missing metrics render as "–" and are
left out of the plots. `compare_reports` merges several bundles into one report dict.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

log = logging.getLogger(__name__)

MISSING = "–"  # en dash: what a missing or non-finite metric renders as
# Where the plots live inside a bundle; report.md links them by these relative paths. Every report
# has the first two; a task's view may add more (an embedding report adds cosine_plot).
PLOT_FILES = {"size_plot": "plots/size_breakdown.png", "accuracy_plot": "plots/accuracy_vs_size.png",
              "cosine_plot": "plots/cosine_vs_size.png"}
_SIZE_TITLE = "Size breakdown"
_EMB_COLOR, _REST_COLOR, _UNKNOWN_COLOR = "#d95f02", "#7570b3", "#bbbbbb"


class ReportError(ValueError):
    """The report dict is malformed, or a report to read or compare is missing or unreadable."""


# ---------------------------------------------------------------- number formatting


def _num(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric, boolean or NaN/inf values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _adaptive(value: float) -> str:
    """1 decimal, or 2 under 10: 90.9, 46.9, 4.44."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def runs_int4_as_int8(row: Any) -> bool:
    """Whether a report or manifest row is a file whose 4-bit MatMul weights run on the int8 kernels
    (`int4.kernel` "int8": INT4 on disk, cast to int8 when ONNX Runtime loads the file)."""
    return isinstance(row, dict) and (row.get("int4") or {}).get("kernel") == "int8"


def _fmt(value: Any, kind: str) -> str:
    """Format one metric; `kind` is one of mb, params, pct, pct1, delta, ratio, sci, int, f4 (cosine,
    AUC), f6 (cosine near 1), delta4 (f4's differences), g3, adaptive."""
    x = _num(value)
    if x is None:
        return MISSING
    if kind == "mb":
        return _adaptive(x / 1e6)
    if kind == "params":
        return f"{x / 1e6:.2f}"
    if kind == "pct":
        return f"{x * 100:.2f}"
    if kind == "pct1":
        return f"{x * 100:.1f}"
    if kind == "delta":
        return f"{x * 100:+.2f}"
    if kind == "ratio":
        return f"{x:.2f}x"
    if kind == "sci":
        return "0" if x == 0 else f"{x:.1e}"
    if kind == "int":
        return f"{round(x):,}"
    if kind == "f4":
        return f"{x:.4f}"
    if kind == "f6":
        return f"{x:.6f}"
    if kind == "delta4":
        return f"{x:+.4f}"
    if kind == "g3":
        return f"{x:.3g}"
    return _adaptive(x)


def _ratio(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    return x / y if x is not None and y else None


def _diff(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    return x - y if x is not None and y is not None else None


# ---------------------------------------------------------------- content shared by md and html


def _check(report: Any) -> list[dict[str, Any]]:
    """Return the variants, or raise ReportError saying what is wrong with the dict."""
    if not isinstance(report, dict):
        raise ReportError(f"expected the report as a dict, got {type(report).__name__}")
    variants = report.get("variants")
    if not isinstance(variants, list) or not variants:
        raise ReportError("report['variants'] must be a non-empty list of dicts; the first is the reference")
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
            raise ReportError(f"report['variants'][{i}] must be a dict with a non-empty string 'name', got {v!r}")
    dupes = [n for n, c in Counter(v["name"] for v in variants).items() if c > 1]
    if dupes:
        raise ReportError(f"variant names must be unique, got duplicates {dupes}; rename them")
    return variants


def _model_text(model: dict[str, Any], view: "ReportView | None" = None) -> str:
    extras = [str(model["family"])] if model.get("family") else []
    extras += [f"{k} {_fmt(model.get(f), 'int')}" for k, f in (("hidden", "hidden_size"), ("vocab", "vocab_size"))
               if _num(model.get(f)) is not None]
    more = (view or _view(model, {})).model_parts(model)
    text = ", ".join(extras) + ("; " if extras and more else "") + ", ".join(more)
    return str(model.get("name", MISSING)) + (f" ({text})" if text else "")


def _task_text(task: dict[str, Any], view: "ReportView | None" = None) -> str:
    parts = (view or _view({}, task)).task_parts(task)
    return str(task.get("name", MISSING)) + (f" ({'; '.join(parts)})" if parts else "")


def _classification_task_parts(task: dict[str, Any]) -> list[str]:
    # The default type goes unsaid, so reports read the same before and after the pipeline wrote it.
    parts = [str(task["type"])] if task.get("type") and task["type"] != "text-classification" else []
    parts += [("sentence pairs" if task["is_pair"] else "single sentences")] if "is_pair" in task else []
    if _num(task.get("n_labels")) is not None:
        labels = task.get("labels") or []
        parts.append(f"{task['n_labels']} labels" + (f" ({', '.join(map(str, labels))})" if labels else ""))
    if _num(task.get("n_train_used")) is not None:
        parts.append(f"train {_fmt(task['n_train_used'], 'int')} of {_fmt(task.get('n_train'), 'int')} used")
    if _num(task.get("n_eval")) is not None:
        parts.append(f"eval {_fmt(task['n_eval'], 'int')}")
    return parts


def _embedding_task_parts(task: dict[str, Any]) -> list[str]:
    parts = [str(task.get("type") or "feature-extraction")]
    corpus = sum(_num(task.get(k)) or 0 for k in ("n_train", "n_texts"))   # the training split's texts and --text lines
    if corpus:
        parts.append(f"corpus {_fmt(corpus, 'int')} texts")
    if _num(task.get("n_eval")) is not None:
        parts.append(f"eval {_fmt(task['n_eval'], 'int')} held-out texts")
    knn, pairs = task.get("knn"), task.get("pairs")
    if isinstance(knn, dict):
        parts.append(f"kNN {knn.get('source') or MISSING} (index {_fmt(knn.get('n_index'), 'int')}, "
                     f"queries {_fmt(knn.get('n_queries'), 'int')}, k={knn.get('k', 1)})")
    if isinstance(pairs, dict):
        parts.append(f"pairs {pairs.get('source') or MISSING} ({_fmt(pairs.get('n_pairs'), 'int')} pairs)")
    return parts


def _embedding_model_parts(model: dict[str, Any]) -> list[str]:
    parts = [f"{model['pooling']} pooling"] if model.get("pooling") else []
    if _num(model.get("dense")):
        parts.append(f"{_fmt(model['dense'], 'int')} Dense")
    if isinstance(model.get("normalize"), bool):
        parts.append("normalized" if model["normalize"] else "not normalized")
    if _num(model.get("embedding_dim")) is not None:
        parts.append(f"{_fmt(model['embedding_dim'], 'int')}-d embeddings")
    return parts


def _header_lines(report: dict[str, Any]) -> list[str]:
    model, task = report.get("model") or {}, report.get("task") or {}
    lines = [f"Created: {report['created']}"] if report.get("created") else []
    sources = [s for s in report.get("sources") or [] if isinstance(s, dict)]
    if len(sources) > 1:   # a comparison: every bundle's own model and task, never just the first one's
        for s in sources:
            view = _view(s.get("model") or {}, s.get("task") or {})
            what = [f"model {_model_text(s['model'], view)}"] if s.get("model") else []
            what += [f"task {_task_text(s['task'], view)}"] if s.get("task") else []
            lines.append(f"Bundle {s.get('name', MISSING)}: " + ("; ".join(what) or MISSING)
                         + (f" [{s['path']}]" if s.get("path") else ""))
        return lines + [str(w) for w in report.get("warnings") or []]
    view = _view(model, task)
    if model:
        lines.append(f"Model: {_model_text(model, view)}")
    if task:
        lines.append(f"Task: {_task_text(task, view)}")
    return lines + [str(w) for w in report.get("warnings") or []]


def _vocab_lines(vocab: dict[str, Any], n_eval: Any) -> list[str]:
    orig, kept = vocab.get("original_rows"), vocab.get("kept_rows")
    frac = _ratio(kept, orig)
    frac = frac if frac is not None else _num(vocab.get("kept_fraction"))
    before, after = vocab.get("embedding_params_before"), vocab.get("embedding_params_after")
    saved = _ratio(_diff(before, after), before)
    oov = _num(vocab.get("eval_oov_rate"))
    oov = oov if oov is not None else _ratio(vocab.get("eval_oov_tokens"), vocab.get("eval_tokens"))
    with_oov = vocab.get("eval_examples_with_oov")
    of_eval = f" of {_fmt(n_eval, 'int')} ({_fmt(_ratio(with_oov, n_eval), 'pct1')}%)" if _num(n_eval) else ""
    lines = [
        f"Kept rows: {_fmt(kept, 'int')} of {_fmt(orig, 'int')} ({_fmt(frac, 'pct1')}% kept)",
        f"Embedding params: {_fmt(before, 'params')}M -> {_fmt(after, 'params')}M ({_fmt(saved, 'pct1')}% saved)",
        f"Eval OOV rate: {_fmt(oov, 'pct')}% ({_fmt(vocab.get('eval_oov_tokens'), 'int')} of "
        f"{_fmt(vocab.get('eval_tokens'), 'int')} eval tokens)",
        f"Eval examples with OOV: {_fmt(with_oov, 'int')}{of_eval}",
        f"Fallback for dropped tokens: {vocab.get('fallback') or MISSING}",
    ]
    if vocab.get("keep_top"):
        top = min(vocab["keep_top"], vocab.get("original_rows") or vocab["keep_top"])
        lines.append(f"Always kept: the first {_fmt(top, 'int')} tokens of the vocabulary ([unusedN] slots aside)"
                     if top < (vocab.get("original_rows") or top + 1) else
                     "Always kept: every token of the vocabulary ([unusedN] slots aside), ranked by the task text's counts")
    if _num(vocab.get("eval_unseen_tokens")) is not None and vocab.get("eval_unseen_tokens") != vocab.get("eval_oov_tokens"):
        lines.append(f"Eval tokens the task's text never used: {_fmt(vocab['eval_unseen_tokens'], 'int')} "
                     f"({_fmt(vocab.get('eval_unseen_rate'), 'pct')}%; in {_fmt(vocab.get('eval_examples_with_unseen'), 'int')}"
                     f"{of_eval.split(' (')[0] if of_eval else ''} examples): they read a kept row the text did not train "
                     "or rank (a compressed one in a head/tail variant)")
    return lines


# ---------------------------------------------------------------- what each task's report shows, as data
#
# A task's report differs from another's only in the tables below: its columns, the per-variant
# details, the deltas of the ratio lines, the plotted metric and a few sentences. The renderer
# reads them and holds no `if task == ...` branch. A report picks its view by `model.task` (then
# `task.type`); reports of other or no task render as text classification, the only kind embslim
# wrote before task types existed.

Show = Literal["always", "if_key", "if_value"]


@dataclass(frozen=True)
class Column:
    """One table column: its header, the variant field it shows and how it is formatted."""

    head: str
    key: str                        # the variant's field
    kind: str = "adaptive"          # a _fmt kind, or "text" for a field shown as it is
    vs_ref: Literal["diff", "ratio"] | None = None    # the field's difference / ratio to the reference row's
    of: Literal["fp32", "int8", "int4"] = "fp32"      # side by side: the model's own row or one of its quantized files
    # always: every report has the column; if_key: dropped when no row carries the key (fields only
    # some runs write); if_value: dropped when no row has a value (metrics a run may not measure).
    show: Show = "always"


@dataclass(frozen=True)
class Detail:
    """One figure of a variant's detail line (or a ratio line's delta): `text` with {} = the value."""

    key: str
    text: str
    kind: str   # a _fmt kind, or "flag": `text` itself when the field is True


@dataclass(frozen=True)
class PlotMetric:
    """What a metric-vs-size scatter plots: the field, its axis and how the reference line reads."""

    key: str
    axis: str               # y-axis label
    title: str              # the figure's title
    caption: str            # report.md's image alt text and report.html's figure caption
    noun: str               # "no variant has both a size and {noun}"
    kind: str = "pct"       # _fmt kind of the reference line's value
    scale: float = 100.0    # plotted value = field * scale (shares as %)
    unit: str = "%"


@dataclass(frozen=True)
class ReportView:
    """Everything about a report that depends on its task."""

    columns: tuple[Column, ...]              # the Variants ("All files") table
    side_columns: tuple[Column, ...]         # the side-by-side table (each model with its quantized files)
    details: tuple[Detail, ...]              # task figures in each variant's detail line
    deltas: tuple[Detail, ...]               # ratio lines: these fields' differences to the reference
    plots: dict[str, tuple[PlotMetric, ...]]   # plot key -> metrics tried in turn; the first with data is plotted
    intro: Callable[[dict[str, Any], str], str]   # (report, reference name) -> the Variants paragraph
    side_intro: str                          # {ref} = the reference variant's name
    training_heading: str                    # heading of the free-form `finetune` table
    task_parts: Callable[[dict[str, Any]], list[str]]    # the task's description in the header
    model_parts: Callable[[dict[str, Any]], list[str]]   # task-specific model fields after family, hidden, vocab
    task_key: Callable[[dict[str, Any]], tuple[str, ...]]   # what two comparable bundles share
    incomparable: str                        # why compare_reports refuses two bundles of different task_key
    compare_warnings: tuple[tuple[str, str], ...]   # (task field, warning with {values}) when bundles differ in it
    measures: str = "accuracy"               # what its figures are, in compare_reports' refusal to mix task types
    # Sections of the task's own after the variants' details, as _sections returns them: (heading, kind, payload).
    sections: Callable[[list[dict[str, Any]]], list[tuple[str, str, Any]]] = lambda variants: []


_COMMON_DETAILS = (Detail("reconstruction_error", "embedding reconstruction error {}", "g3"),
                   Detail("token_weighted_error", "token-weighted {}", "g3"),
                   Detail("latency_seq_len", "latency at {} tokens", "int"))
_SIZE_COLUMNS = (Column("variant", "name", "text"), Column("precision", "precision", "text"),
                 Column("params (M)", "total_params", "params"), Column("embedding params (M)", "embedding_params", "params"),
                 Column("ONNX MB", "onnx_bytes", "mb"), Column("embedding MB", "onnx_embedding_bytes", "mb"))
_SPEED_COLUMNS = (Column("p50 ms", "latency_ms_p50"), Column("p95 ms", "latency_ms_p95"), Column("peak RSS MB", "peak_rss_mb"),
                  Column("size vs ref", "onnx_bytes", "ratio", vs_ref="ratio"))
# A newer task's tables drop what no row measured (latency and memory under --no-measure too);
# classification keeps its columns, so its reports read as they always have.
_SPEED_COLUMNS_IF_MEASURED = tuple(replace(c, show="if_value") for c in _SPEED_COLUMNS)


def _classification_intro(report: dict[str, Any], ref: str) -> str:
    return f"Reference for Δ accuracy and ratios: {ref}. MB = 10^6 bytes; accuracy and agreement on the eval split."


def _classification_key(task: dict[str, Any]) -> tuple[str, ...]:
    """Name, type, single/pair and label set."""
    labels = task.get("labels") or []
    return (str(task.get("name")), str(task.get("type") or "text-classification"), str(task.get("is_pair")),
            json.dumps(sorted(map(str, labels)) or task.get("n_labels")))


_CLASSIFICATION = ReportView(
    columns=(*_SIZE_COLUMNS, Column("accuracy %", "accuracy", "pct"), Column("macro-F1 %", "macro_f1", "pct"),
             Column("Δ accuracy (pts)", "accuracy", "delta", vs_ref="diff"),
             Column("agreement with PyTorch %", "agreement", "pct"), Column("max |Δlogit| vs PyTorch", "max_logit_diff", "sci"),
             # label agreement with the model the user gave: only runs that kept a trained model (--no-finetune) have it
             Column("agrees with given model %", "original_agreement", "pct", show="if_key"),
             Column("max |Δlogit| vs given model", "original_max_logit_diff", "sci", show="if_key"),
             # labels that change between batch 1 and batch 32 (dynamic int8: issue #16); quantized rows only
             Column("batch flips (b1 vs b32)", "batch_flips", "int", show="if_key"),
             *_SPEED_COLUMNS),
    side_columns=(Column("variant", "name", "text"), Column("embedding params (M)", "embedding_params", "params"),
                  Column("reconstruction error", "reconstruction_error"), Column("token-weighted error", "token_weighted_error"),
                  Column("fp32 MB", "onnx_bytes", "mb"), Column("int8 MB", "onnx_bytes", "mb", of="int8"),
                  Column("4-bit MB", "onnx_bytes", "mb", of="int4"), Column("fp32 accuracy %", "accuracy", "pct"),
                  Column("Δ fp32 (pts)", "accuracy", "delta", vs_ref="diff"),
                  Column("int8 accuracy %", "accuracy", "pct", of="int8"), Column("4-bit accuracy %", "accuracy", "pct", of="int4"),
                  Column("fp32 p50 ms", "latency_ms_p50"), Column("int8 p50 ms", "latency_ms_p50", of="int8"),
                  Column("fp32 peak RSS MB", "peak_rss_mb"), Column("int8 peak RSS MB", "peak_rss_mb", of="int8")),
    details=(Detail("torch_accuracy", "PyTorch accuracy {}%", "pct"),),
    deltas=(Detail("accuracy", "{} pts accuracy", "delta"),),
    plots={"accuracy_plot": (PlotMetric("accuracy", "accuracy (%)", "Accuracy vs ONNX size", "Accuracy vs size",
                                        "an accuracy"),)},
    intro=_classification_intro,
    side_intro=("Each model with its quantized files; Δ fp32 is against {ref}. The token-weighted error weighs each "
                "embedding row by how often the training text uses it. Every row is detailed in the table below."),
    training_heading="Fine-tuning",
    task_parts=_classification_task_parts,
    model_parts=lambda model: [],
    task_key=_classification_key,
    incomparable="their accuracies are not comparable: compare bundles built for the same task and labels",
    compare_warnings=(("n_eval", "Warning: the eval splits differ in size ({values} examples); accuracy deltas between "
                                 "bundles mix model and eval-set differences."),),
)


def _embedding_intro(report: dict[str, Any], ref: str) -> str:
    task = report.get("task") or {}
    knn, pairs = task.get("knn"), task.get("pairs")
    n_eval = f"{_fmt(task['n_eval'], 'int')} " if _num(task.get("n_eval")) is not None else ""
    text = (f"Reference for Δ kNN and ratios: {ref}. MB = 10^6 bytes. Cosine: between each file's sentence embeddings "
            f"and the original model's (PyTorch, unpruned) on the {n_eval}held-out texts (1 = identical; p1 = 1st "
            "percentile).")
    if isinstance(knn, dict):
        text += (f" kNN accuracy: nearest neighbour by cosine, k = {knn.get('k', 1)}, on {knn.get('source') or MISSING} "
                 f"(index {_fmt(knn.get('n_index'), 'int')} texts, {_fmt(knn.get('n_queries'), 'int')} queries).")
    if isinstance(pairs, dict):
        text += (f" Pair AUC: ROC-AUC of pair cosine against the paraphrase label on {pairs.get('source') or MISSING} "
                 f"({_fmt(pairs.get('n_pairs'), 'int')} pairs).")
    return text + " max |Δ| vs PyTorch: the same variant's embeddings, ONNX against PyTorch."


def _embedding_key(task: dict[str, Any]) -> tuple[str, ...]:
    """Type and the kNN and pair sets: those figures are comparable across corpora; the cosine
    figures' held-out texts are each corpus's own (a warning says so when the corpora differ)."""
    knn = task.get("knn") if isinstance(task.get("knn"), dict) else {}
    pairs = task.get("pairs") if isinstance(task.get("pairs"), dict) else {}
    return (str(task.get("type") or "feature-extraction"),
            json.dumps([knn.get(k) for k in ("source", "n_index", "n_queries", "k")]),
            json.dumps([pairs.get(k) for k in ("source", "n_pairs")]))


_COSINE_PLOT = PlotMetric("cosine_mean", "mean cosine to the original model", "Cosine to the original model vs ONNX size",
                          "Cosine vs size", "a cosine", kind="f4", scale=1.0, unit="")
_EMBEDDING = ReportView(
    columns=(*_SIZE_COLUMNS, Column("cosine mean vs original", "cosine_mean", "f4", show="if_value"),
             Column("cosine p1 vs original", "cosine_p1", "f4", show="if_value"),
             Column("cosine min vs original", "cosine_min", "f4", show="if_value"),
             Column("kNN accuracy %", "knn_accuracy", "pct", show="if_value"),
             Column("Δ kNN (pts)", "knn_accuracy", "delta", vs_ref="diff", show="if_value"),
             Column("pair AUC", "pair_auc", "f4", show="if_value"),
             Column("max |Δ| vs PyTorch", "max_abs_diff", "sci", show="if_value"),
             *_SPEED_COLUMNS_IF_MEASURED),
    side_columns=(Column("variant", "name", "text"), Column("embedding params (M)", "embedding_params", "params"),
                  Column("reconstruction error", "reconstruction_error", show="if_value"),
                  Column("token-weighted error", "token_weighted_error", show="if_value"),
                  Column("fp32 MB", "onnx_bytes", "mb"), Column("int8 MB", "onnx_bytes", "mb", of="int8", show="if_value"),
                  Column("4-bit MB", "onnx_bytes", "mb", of="int4", show="if_value"),
                  Column("fp32 cosine mean", "cosine_mean", "f4", show="if_value"),
                  Column("int8 cosine mean", "cosine_mean", "f4", of="int8", show="if_value"),
                  Column("4-bit cosine mean", "cosine_mean", "f4", of="int4", show="if_value"),
                  Column("fp32 kNN %", "knn_accuracy", "pct", show="if_value"),
                  Column("Δ fp32 kNN (pts)", "knn_accuracy", "delta", vs_ref="diff", show="if_value"),
                  Column("int8 kNN %", "knn_accuracy", "pct", of="int8", show="if_value"),
                  Column("4-bit kNN %", "knn_accuracy", "pct", of="int4", show="if_value"),
                  Column("fp32 p50 ms", "latency_ms_p50", show="if_value"),
                  Column("int8 p50 ms", "latency_ms_p50", of="int8", show="if_value"),
                  Column("fp32 peak RSS MB", "peak_rss_mb", show="if_value"),
                  Column("int8 peak RSS MB", "peak_rss_mb", of="int8", show="if_value")),
    details=(Detail("cosine_min_torch", "min cosine vs PyTorch {}", "f6"),
             Detail("cosine_fp32_mean", "cosine vs its fp32 file: mean {}", "f4"), Detail("cosine_fp32_min", "min {}", "f4"),
             Detail("knn_drop_vs_fp32", "kNN drop vs its fp32 file {} pts", "pct"),
             Detail("flagged", "FLAGGED: its drop vs fp32 is past the allowed maximum", "flag")),
    deltas=(Detail("knn_accuracy", "{} pts kNN accuracy", "delta"), Detail("pair_auc", "{} pair AUC", "delta4")),
    plots={"accuracy_plot": (PlotMetric("knn_accuracy", "kNN accuracy, k = 1 (%)", "kNN accuracy vs ONNX size",
                                        "kNN accuracy vs size", "a kNN accuracy"), _COSINE_PLOT),
           "cosine_plot": (_COSINE_PLOT,)},
    intro=_embedding_intro,
    side_intro=("Each model with its quantized files; cosine is against the original model, Δ fp32 kNN against {ref}. "
                "Every row is detailed in the table below."),
    training_heading="Training",
    task_parts=_embedding_task_parts,
    model_parts=_embedding_model_parts,
    task_key=_embedding_key,
    incomparable=("their kNN accuracy and pair AUC are not comparable: compare bundles evaluated on the same kNN and "
                  "pair sets"),
    measures="embedding cosine/kNN",
    compare_warnings=(("name", "Warning: the corpora differ ({values}); each bundle's cosine figures are on its own "
                               "held-out texts, so cosine deltas between bundles mix model and corpus differences."),
                      ("n_eval", "Warning: the held-out sets differ in size ({values} texts); cosine deltas between "
                                 "bundles mix model and held-out-set differences.")),
)



def entity_types(tags: Sequence[Any]) -> list[str]:
    """The entity types of a BIO / IOB2 / BIOES tag set, in first-seen order: ["O", "B-person",
    "I-person", "B-location"] -> ["person", "location"]. A tag without a prefix (other than O) is
    its own type."""
    types = (str(t).split("-", 1)[1] if str(t)[:2] in ("B-", "I-", "E-", "S-", "L-", "U-") else str(t)
             for t in tags if str(t) != "O")
    return list(dict.fromkeys(types))


def _tagging_task_parts(task: dict[str, Any]) -> list[str]:
    parts = [str(task.get("type") or "token-classification")]
    parts += [("sentence pairs" if task["is_pair"] else "single sentences")] if "is_pair" in task else []
    tags = [str(t) for t in task.get("labels") or []]
    n_tags = _num(task.get("n_labels")) or len(tags)
    if n_tags:
        types = entity_types(tags)
        parts.append(f"{_fmt(n_tags, 'int')} tags" + (f" over {len(types)} entity types ({', '.join(types)})"
                                                       if types else ""))
    if _num(task.get("n_train_used")) is not None:
        parts.append(f"train {_fmt(task['n_train_used'], 'int')} of {_fmt(task.get('n_train'), 'int')} sentences used")
    if _num(task.get("n_eval")) is not None:
        parts.append(f"eval {_fmt(task['n_eval'], 'int')} sentences")
    return parts


def _tagging_intro(report: dict[str, Any], ref: str) -> str:
    task, variants = report.get("task") or {}, _check(report)
    n_eval = next((v["n_eval"] for v in variants if _num(v.get("n_eval")) is not None), task.get("n_eval"))
    n_entities = next((v["n_entities"] for v in variants if _num(v.get("n_entities")) is not None), None)
    split = ", ".join(f"{_fmt(n, 'int')} {what}" for n, what in ((n_eval, "sentences"), (n_entities, "gold entities"))
                      if _num(n) is not None)
    return (f"Reference for Δ entity F1 and ratios: {ref}. MB = 10^6 bytes. Entity F1, P and R: entity-level micro "
            f"averages (seqeval, default mode) on the eval split{f' ({split})' if split else ''}; an entity counts when "
            "its type and its span both match. Word accuracy: share of words whose tag is right. Token agreement: "
            "argmax agreement over every non-padding token.")


def _tagging_key(task: dict[str, Any]) -> tuple[str, ...]:
    """Name, type and tag set: entity F1 is comparable only on one eval split with one tag set."""
    return (str(task.get("name")), str(task.get("type") or "token-classification"),
            json.dumps(sorted(map(str, task.get("labels") or [])) or task.get("n_labels")))


def _per_type_section(variants: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """Entity F1 per type: one row per file, one column per type (most gold entities first), its
    support in the header. Types no row has are left out; a row without a type shows the dash."""
    rows = [(v, v["per_type"]) for v in variants if isinstance(v.get("per_type"), dict) and v["per_type"]]
    if not rows:
        return []
    support: dict[str, set[float]] = {}
    for _, per_type in rows:
        for name, m in per_type.items():
            n = _num(m.get("support")) if isinstance(m, dict) else None
            support.setdefault(str(name), set()).update([n] if n is not None else [])
    types = sorted(support, key=lambda t: (-max(support[t], default=0), t))
    # One eval split: the support is the same in every row. Bundles compared on splits of other sizes
    # may differ: then the header gives the range.
    head = ["variant", *(f"{t} (n={_fmt(min(support[t]), 'int')})" if len(support[t]) == 1 else
                         f"{t} (n={_fmt(min(support[t]), 'int')}-{_fmt(max(support[t]), 'int')})" if support[t] else t
                         for t in types)]
    cells = [[v["name"], *(_fmt((per_type.get(t) or {}).get("f1") if isinstance(per_type.get(t), dict) else None, "pct")
                          for t in types)] for v, per_type in rows]
    return [("Entity F1 per type", "lines", ["Entity F1 % of each entity type (seqeval); n = its gold entities in the "
                                             "eval split. Rare types move most when a word's row is pruned or "
                                             "quantized."]),
            ("", "table", (head, cells))]


_TAGGING = ReportView(
    columns=(*_SIZE_COLUMNS, Column("entity F1 %", "f1", "pct"), Column("Δ entity F1 (pts)", "f1", "delta", vs_ref="diff"),
             Column("P %", "entity_precision", "pct", show="if_value"), Column("R %", "recall", "pct"),
             Column("word accuracy %", "word_accuracy", "pct", show="if_value"),
             Column("token agreement with PyTorch %", "agreement", "pct", show="if_value"),
             Column("max |Δlogit| vs PyTorch", "max_logit_diff", "sci", show="if_value"),
             Column("agrees with given model %", "original_agreement", "pct", show="if_key"),
             Column("max |Δlogit| vs given model", "original_max_logit_diff", "sci", show="if_key"),
             Column("F1 drop vs its fp32 (pts)", "f1_drop_vs_fp32", "pct", show="if_value"),
             *_SPEED_COLUMNS_IF_MEASURED),
    side_columns=(Column("variant", "name", "text"), Column("embedding params (M)", "embedding_params", "params"),
                  Column("reconstruction error", "reconstruction_error", show="if_value"),
                  Column("token-weighted error", "token_weighted_error", show="if_value"),
                  Column("fp32 MB", "onnx_bytes", "mb"), Column("int8 MB", "onnx_bytes", "mb", of="int8", show="if_value"),
                  Column("4-bit MB", "onnx_bytes", "mb", of="int4", show="if_value"),
                  Column("fp32 entity F1 %", "f1", "pct"), Column("Δ fp32 F1 (pts)", "f1", "delta", vs_ref="diff"),
                  Column("int8 entity F1 %", "f1", "pct", of="int8", show="if_value"),
                  Column("4-bit entity F1 %", "f1", "pct", of="int4", show="if_value"),
                  Column("fp32 p50 ms", "latency_ms_p50", show="if_value"),
                  Column("int8 p50 ms", "latency_ms_p50", of="int8", show="if_value"),
                  Column("fp32 peak RSS MB", "peak_rss_mb", show="if_value"),
                  Column("int8 peak RSS MB", "peak_rss_mb", of="int8", show="if_value")),
    details=(Detail("torch_f1", "PyTorch entity F1 {}%", "pct"),
             Detail("agreement_fp32", "token agreement with its fp32 file {}%", "pct"),
             Detail("flagged", "FLAGGED: its entity F1 drop vs fp32 is past the allowed maximum", "flag")),
    deltas=(Detail("f1", "{} pts entity F1", "delta"), Detail("word_accuracy", "{} pts word accuracy", "delta")),
    plots={"accuracy_plot": (PlotMetric("f1", "entity F1 (%)", "Entity F1 vs ONNX size", "Entity F1 vs size",
                                        "an entity F1"),)},
    intro=_tagging_intro,
    side_intro=("Each model with its quantized files; Δ fp32 F1 is against {ref}. The token-weighted error weighs each "
                "embedding row by how often the training text uses it. Every row is detailed in the table below."),
    training_heading="Fine-tuning",
    task_parts=_tagging_task_parts,
    model_parts=lambda model: [],
    task_key=_tagging_key,
    incomparable="their entity F1 scores are not comparable: compare bundles built for the same task and tag set",
    compare_warnings=(("n_eval", "Warning: the eval splits differ in size ({values} sentences); entity F1 deltas "
                                 "between bundles mix model and eval-set differences."),),
    measures="entity F1",
    sections=_per_type_section,
)

# Keyed by the task type, named as Optimum's TasksManager names tasks (DESIGN.md).
REPORT_VIEWS: dict[str, ReportView] = {"text-classification": _CLASSIFICATION, "feature-extraction": _EMBEDDING,
                                       "token-classification": _TAGGING}


def _task_type(model: dict[str, Any], task: dict[str, Any]) -> str:
    model, task = model if isinstance(model, dict) else {}, task if isinstance(task, dict) else {}
    return str(model.get("task") or task.get("type") or "text-classification")


def _view(model: dict[str, Any], task: dict[str, Any]) -> ReportView:
    """The report view of a bundle's task; text classification for tasks without one of their own."""
    return REPORT_VIEWS.get(_task_type(model, task), _CLASSIFICATION)


def _report_view(report: dict[str, Any]) -> ReportView:
    return _view(report.get("model") or {}, report.get("task") or {})


def _cell(col: Column, row: dict[str, Any], ref: dict[str, Any]) -> str:
    if col.kind == "text":   # a number is no text: a tagger's `precision` may be its entity precision (P %)
        value = row.get(col.key)
        return str(value) if value and not isinstance(value, (int, float)) else MISSING
    value = row.get(col.key)
    if col.vs_ref == "diff":
        value = _diff(value, ref.get(col.key))
    elif col.vs_ref == "ratio":
        value = _ratio(value, ref.get(col.key))
    return _fmt(value, col.kind)


def _table(columns: Sequence[Column], rows: list[dict[str, dict[str, Any]]],
           ref: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; each row maps a column's `of` to the variant it reads. Columns their
    `show` rule drops are left out."""
    cells = [[_cell(c, row.get(c.of) or {}, ref) for c in columns] for row in rows]
    keep = [i for i, c in enumerate(columns) if c.show == "always"
            or (c.show == "if_key" and any(c.key in (row.get(c.of) or {}) for row in rows))
            or (c.show == "if_value" and any(r[i] != MISSING for r in cells))]
    return [columns[i].head for i in keep], [[r[i] for i in keep] for r in cells]


_TEXT_COLUMNS = {"variant", "precision", "key", "value", "weight group"}  # left-aligned; the rest are numbers


def _detail_lines(variants: list[dict[str, Any]], view: ReportView) -> list[str]:
    lines = []
    for v in variants:
        bits = [str(v["description"])] if v.get("description") else []
        bits += [f"file {v['file']}"] if v.get("file") else []
        for d in (*view.details, *_COMMON_DETAILS):
            if d.kind == "flag":   # a description may say it already (classification's quantize step does)
                bits += [d.text] if v.get(d.key) is True and "FLAGGED" not in str(v.get("description")) else []
            elif _num(v.get(d.key)) is not None:
                bits.append(d.text.format(_fmt(v[d.key], d.kind)))
        if bits:
            lines.append(f"{v['name']}: " + "; ".join(bits))
    return lines


def _ratio_lines(variants: list[dict[str, Any]], view: ReportView) -> list[str]:
    ref, lines = variants[0], []
    for v in variants[1:]:
        parts = []
        for key, what in (("onnx_bytes", "ONNX size"), ("onnx_embedding_bytes", "embedding bytes"),
                          ("total_params", "params"), ("latency_ms_p50", "p50 latency")):
            r = _ratio(v.get(key), ref.get(key))
            if r is not None:
                parts.append(f"{r:.2f}x {what}")
        for d in view.deltas:
            delta = _diff(v.get(d.key), ref.get(d.key))
            if delta is not None:
                parts.append(d.text.format(_fmt(delta, d.kind)))
        lines.append(f"{v['name']}: " + (", ".join(parts) if parts else "no comparable metrics"))
    return lines


def _side_by_side(variants: list[dict[str, Any]], view: ReportView) -> tuple[list[str], list[list[str]]] | None:
    """One row per model with its quantized files beside it (rows with `base` name the model they
    were quantized from), or None when no model has a quantized row."""
    quantized: dict[str, dict[str, dict[str, Any]]] = {}
    for v in variants:
        if v.get("base") and v.get("precision") in ("int8", "int4") and not str(v.get("file", "")).endswith(".ort"):
            quantized.setdefault(v["base"], {}).setdefault(v["precision"], v)   # first target of each precision
    if not quantized:
        return None
    rows = [{"fp32": v, **quantized.get(v["name"], {})} for v in variants if not v.get("base")]
    return _table(view.side_columns, rows, variants[0])


def _mixed_sections(variants: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """For each mixed-precision row: its 4-bit settings and budget, then one table row per weight
    group (sensitivity SNR with the group alone at 4-bit, bytes it saves, the precision it got)."""
    out: list[tuple[str, str, Any]] = []
    for v in variants:
        mixed = v.get("mixed")
        if not isinstance(mixed, dict) or not isinstance(mixed.get("groups"), list):
            continue
        int4, budget = v.get("int4") or {}, mixed.get("budget") or {}
        cap = budget.get("max_bytes")
        if budget.get("kind") != "bytes":
            limit = f"a drop of at most {_fmt(budget.get('max_drop'), 'pct')} points on the eval split"
        else:
            limit = f"at most {cap / 1e6:.2f} MB ({cap:,} bytes)" if isinstance(cap, (int, float)) else \
                f"at most {MISSING} MB"
        if runs_int4_as_int8(v):
            matmuls = (f"{int4.get('algorithm', MISSING)}, one scale per output column, stored INT4 and run by the "
                       "int8 kernels")
        else:
            matmuls = (f"{int4.get('algorithm', MISSING)}, block {int4.get('block_size', MISSING)}, "
                       f"{'symmetric' if int4.get('symmetric') else 'asymmetric'}, accuracy_level "
                       f"{int4.get('accuracy_level', MISSING)}")
        intro = (f"{v.get('name')}: {len(mixed.get('int4_groups') or [])} of {len(mixed['groups'])} weight groups "
                 f"4-bit ({matmuls}; tables asymmetric, block "
                 f"{int4.get('table_block_size', int4.get('block_size', MISSING))}), the rest int8; budget {limit}. Sensitivity: "
                 f"{mixed.get('measure', 'SNR')} on {mixed.get('calibration_batches', MISSING)} calibration batches.")
        rows = [[str(g.get("group")), _fmt(g.get("snr_db"), "adaptive"), _fmt(g.get("bytes_saved"), "mb"),
                 str(g.get("precision"))] for g in mixed["groups"]]
        out += [(f"Mixed precision ({v.get('name')})", "lines", [intro]),
                ("", "table", (["weight group", "SNR dB", "4-bit saves MB", "precision"], rows))]
    return out


def _smooth_sections(variants: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """One section for the SmoothQuant graph the int8 (and mixed) files were quantized from: the
    alpha used, and each candidate's int8 output SNR on the calibration text (alpha 0: no smoothing)."""
    rows = [v for v in variants if isinstance(v.get("smooth_quant"), dict)]
    if not rows:
        return []
    lines = []
    for v in rows:   # each model is smoothed (and its alpha picked) on its own
        sq = v["smooth_quant"]
        picked = (f"alpha {sq['alpha']} ({sq.get('groups', MISSING)} MatMul inputs rescaled)" if sq.get("alpha")
                  else "plain graph kept (no alpha beat it)")
        scores = ", ".join(f"{'plain' if float(a) == 0 else a} {_fmt(x, 'adaptive')}"
                           for a, x in (sq.get("int8_snr_db") or {}).items())
        lines.append(f"{v.get('name')}: {picked}; int8 {sq.get('scored_on', 'output')} SNR vs fp32 on the calibration "
                     f"text by alpha (dB): {scores}")
    lines.append("Xiao et al. 2023 (arXiv:2211.10438): activation outliers moved into the weights before dynamic int8")
    return [("SmoothQuant", "bullets", lines)]


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, (list, tuple)):
        return [(prefix, ", ".join(map(str, data)))]
    text = MISSING if data is None else f"{data:.6g}" if isinstance(data, float) else str(data)
    return [(prefix or "value", text)]


def _sections(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(heading, kind, payload) in report order; kind is lines, bullets or table."""
    variants, view = _check(report), _report_view(report)
    out: list[tuple[str, str, Any]] = [("", "lines", _header_lines(report))]
    if isinstance(report.get("vocab"), dict):
        n_eval = (report.get("task") or {}).get("n_eval")
        out.append(("Vocabulary (DEP)", "bullets", _vocab_lines(report["vocab"], n_eval)))
    ref = variants[0]
    out.append(("Variants", "lines", [view.intro(report, ref["name"])]))
    side = _side_by_side(variants, view)
    if side:
        out.append(("Side by side", "lines", [view.side_intro.format(ref=ref["name"])]))
        out.append(("", "table", side))
        out.append(("All files", "lines", []))
    out.append(("", "table", _table(view.columns, [{"fp32": v} for v in variants], ref)))
    out.append(("", "bullets", _detail_lines(variants, view)))
    out += _mixed_sections(variants)
    out += _smooth_sections(variants)
    out += view.sections(variants)
    if len(variants) > 1:
        out.append((f"Ratios vs {ref['name']}", "bullets", _ratio_lines(variants, view)))
    if report.get("finetune"):
        ft = dict(report["finetune"])
        if isinstance(ft.get("max_steps"), int) and ft["max_steps"] < 0:   # transformers' "no step limit"
            ft["max_steps"] = "none (epochs decide)"
        out.append((view.training_heading, "table", (["key", "value"], [list(kv) for kv in _flatten(ft)])))
    if report.get("notes"):
        notes = report["notes"] if isinstance(report["notes"], list) else [report["notes"]]
        out.append(("Notes", "bullets", [str(n) for n in notes]))
    return out


# ---------------------------------------------------------------- markdown and html


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as GitHub-flavoured Markdown; plots are linked as plots/*.png."""
    _check(report)
    out = [f"# {_md_cell(str(report.get('title') or 'embslim footprint report'))}", ""]
    for heading, kind, payload in _sections(report):
        if heading:
            out += [f"## {_md_cell(heading)}", ""]
        if kind == "lines":
            out += [_md_cell(text) + "  " for text in payload] + [""]  # two spaces: a line break
        elif kind == "bullets" and payload:
            out += [f"- {_md_cell(text)}" for text in payload] + [""]
        elif kind == "table":
            head, rows = payload
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "|".join("---" if h in _TEXT_COLUMNS else "---:" for h in head) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows] + [""]
    out += ["## Plots", ""]
    for k, caption in _plot_captions(report).items():
        out += [f"![{caption}]({PLOT_FILES[k]})", ""] + ([_md_cell(_frontier_text(report, k)), ""] if k != "size_plot" else [])
    return "\n".join(out)


def _frontier_text(report: dict[str, Any], key: str) -> str:
    """One line naming the Pareto-optimal files of plot `key`, smallest first."""
    metric = _plot_metric(report, key)
    pts = [(v["name"], _num(v.get("onnx_bytes")), _num(v.get(metric.key))) for v in _check(report)]
    pts = [(n, x, y) for n, x, y in pts if x is not None and y is not None]
    front = pareto_front(pts)
    named = [f"{n} ({x / 1e6:.2f} MB, {_fmt(y, metric.kind)}{metric.unit})" for n, x, y in sorted(pts, key=lambda p: p[1])
             if n in front]
    return (f"Pareto frontier of {metric.noun.split(' ', 1)[-1]} against size (no other file is both smaller and better): "
            + ", ".join(named) + ".") if named else ""


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em}th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}.scroll{overflow-x:auto}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:.9em}"""


def _html_sections(report: dict[str, Any]) -> list[str]:
    e, out = html.escape, []
    for heading, kind, payload in _sections(report):
        if heading:
            out.append(f"<h2>{e(heading)}</h2>")
        if kind == "lines":
            out += [f"<p>{e(text)}</p>" for text in payload]
        elif kind == "bullets" and payload:
            out.append("<ul>" + "".join(f"<li>{e(text)}</li>" for text in payload) + "</ul>")
        elif kind == "table":
            head, rows = payload
            cell = ("<td>{}</td>", '<td class="num">{}</td>')
            body = "".join("<tr>" + "".join(cell[h not in _TEXT_COLUMNS].format(e(c)) for h, c in zip(head, row))
                           + "</tr>" for row in rows)
            out.append('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head)
                       + f"</tr></thead><tbody>{body}</tbody></table></div>")
    return out


def _html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    e, _ = html.escape, _check(report)
    title = str(report.get("title") or "embslim footprint report")
    figures = [f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
               f"<figcaption>{e(name)}</figcaption></figure>" for name, png in images.items()]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
        *_html_sections(report), *(["<h2>Plots</h2>", *figures] if figures else []), "</body></html>", ""])


def render_html(report: dict[str, Any], *, plots: dict[str, str]) -> str:
    """Self-contained HTML; `plots` maps a caption to a PNG file, which is embedded as base64."""
    images = {}
    for caption, path in plots.items():
        try:
            images[caption] = Path(path).read_bytes()
        except OSError as err:
            raise ReportError(f"plot {caption!r}: cannot read PNG {path}: {err}; write it first") from err
    return _html(report, images)


# ---------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_axis_off()


def _size_png(report: dict[str, Any]) -> bytes:
    from matplotlib.patches import Patch

    plt = _pyplot()
    rows = [(v["name"], _num(v.get("onnx_bytes")), _num(v.get("onnx_embedding_bytes"))) for v in _check(report)]
    rows = [(n, t / 1e6, None if emb is None else min(emb, t) / 1e6) for n, t, emb in rows if t is not None]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.5 * max(len(rows), 1)))
    ax.set_title("ONNX file size by variant")
    if not rows:
        _no_data(ax, "no ONNX sizes recorded")
        return _png(fig)
    top = max(t for _, t, _ in rows)
    for i, (_, total, emb) in enumerate(rows):
        if emb is None:
            ax.barh(i, total, color=_UNKNOWN_COLOR)
        else:
            ax.barh(i, emb, color=_EMB_COLOR)
            ax.barh(i, total - emb, left=emb, color=_REST_COLOR)
        ax.text(total + top * 0.01, i, f"{_adaptive(total)} MB", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [n for n, _, _ in rows])
    ax.invert_yaxis()  # first (reference) variant on top, as in the table
    ax.set_xlim(0, top * 1.18)
    ax.set_xlabel("MB (10^6 bytes)")
    handles = [Patch(color=_EMB_COLOR, label="embedding"), Patch(color=_REST_COLOR, label="rest of model")]
    if any(emb is None for _, _, emb in rows):
        handles.append(Patch(color=_UNKNOWN_COLOR, label="split unknown"))
    # Below the x label, so it never covers a bar or a total whatever the sizes are.
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return _png(fig)


def _plot_metric(report: dict[str, Any], key: str) -> PlotMetric:
    """The metric plot `key` shows: the first of the view's metrics that some sized variant has."""
    chain = _report_view(report).plots[key]
    return next((m for m in chain if any(_num(v.get("onnx_bytes")) is not None and _num(v.get(m.key)) is not None
                                         for v in _check(report))), chain[0])


def _plot_keys(report: dict[str, Any]) -> list[str]:
    """The view's metric plots, less any that would show the same metric as an earlier one (an
    embedding report without kNN plots cosine once, not twice)."""
    keys, shown = [], set()
    for key in _report_view(report).plots:
        metric = _plot_metric(report, key).key
        if metric not in shown:
            keys.append(key)
            shown.add(metric)
    return keys


def _plot_captions(report: dict[str, Any]) -> dict[str, str]:
    """Plot key -> caption, for every plot the report's view writes, in report order."""
    return {"size_plot": _SIZE_TITLE} | {k: _plot_metric(report, k).caption for k in _plot_keys(report)}


def _pngs(report: dict[str, Any]) -> dict[str, bytes]:
    return {"size_plot": _size_png(report)} | {k: _png(metric_figure(report, k)) for k in _plot_keys(report)}


def _accuracy_png(report: dict[str, Any]) -> bytes:
    return _png(accuracy_figure(report))


def accuracy_figure(report: dict[str, Any]) -> Any:
    """The accuracy-vs-size matplotlib figure (the caller closes it); plot_accuracy_vs_size saves it.
    An embedding report plots kNN accuracy there (cosine to the original when it has no kNN)."""
    return metric_figure(report, "accuracy_plot")


def pareto_front(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Names of the Pareto-optimal points among (name, size, metric), where smaller size and higher
    metric are better: those that no other point matches or beats on both with one strictly
    better. Ties (same size and metric) are all kept."""
    return {n for n, x, y in points
            if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for _, x2, y2 in points)}


def metric_figure(report: dict[str, Any], key: str,
                  references: Sequence[tuple[str, float, float]] = ()) -> Any:
    """The figure of plot `key` of the report's view (a metric against ONNX size); the caller closes it.
    Every file built is a point; the Pareto-optimal ones (`pareto_front`) are ringed and joined by
    the frontier's step line. `references`: (name, bytes, metric as the report stores it, e.g. a
    share for accuracy) drawn as stars outside the frontier, e.g. Optimum's int8 file and a model2vec
    classifier in a benchmark."""
    plt = _pyplot()
    variants, metric = _check(report), _plot_metric(report, key)
    pts = [(v["name"], _num(v.get("onnx_bytes")), _num(v.get(metric.key))) for v in variants]
    pts = [(n, x / 1e6, y * metric.scale) for n, x, y in pts if x is not None and y is not None]
    fig, ax = plt.subplots(figsize=(9, 6) if len(pts) > 8 else (7, 4.5))
    ax.set_title(metric.title)
    if not pts:
        _no_data(ax, f"no variant has both a size and {metric.noun}")
        return fig
    # With quantized rows (those naming a `base` model) each precision gets a colour and only the
    # models are labelled, so a comparison of many variants stays readable.
    grouped = any(v.get("base") for v in variants)
    precision = {v["name"]: str(v.get("precision") or "fp32") if grouped else "" for v in variants}
    labelled = {v["name"] for v in variants if not v.get("base")}
    colors = {"": _REST_COLOR, "fp32": _REST_COLOR, "int8": _EMB_COLOR, "int4": "#1b9e77"}
    for prec in dict.fromkeys(precision[n] for n, _, _ in pts):
        sel = [(x, y) for n, x, y in pts if precision[n] == prec]
        ax.scatter([x for x, _ in sel], [y for _, y in sel], s=45, zorder=3, color=colors.get(prec, _UNKNOWN_COLOR),
                   label=prec or None)
    ref_value = _num(variants[0].get(metric.key))
    if ref_value is not None:
        ax.axhline(ref_value * metric.scale, ls="--", lw=1, color="#666", zorder=1,
                   label=f"reference ({variants[0]['name']}): {_fmt(ref_value, metric.kind)}{metric.unit}")
        # Below the axes, so it never covers a point or a label.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4, fontsize=9, frameon=False)
    front = pareto_front(pts)
    labelled |= front   # a quantized file on the frontier is named too
    if len(front) > 1:
        fx, fy = zip(*sorted((x, y) for n, x, y in pts if n in front))
        ax.step(fx, fy, where="post", lw=1.2, color="#444", alpha=0.7, zorder=2,
                label=f"Pareto frontier ({len(front)} of {len(pts)})")
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="#222", lw=1.1, zorder=4, gid="pareto")
    for name, x, y in references:
        ax.scatter([x / 1e6], [y * metric.scale], marker="*", s=150, color="#111", zorder=5, gid="reference")
        pts.append((name, x / 1e6, y * metric.scale))
        labelled.add(name)
    if front or references:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4, fontsize=9, frameon=False)
    ax.set_xlim(0, max(x for _, x, _ in pts) * 1.25)  # from 0, so the size gap reads honestly
    ax.margins(y=0.3)
    ax.set_xlabel("ONNX file size (MB)")
    ax.set_ylabel(metric.axis)
    ax.grid(alpha=0.3)
    _place_labels(fig, ax, [(n, x, y) for n, x, y in pts if n in labelled], fontsize=8 if grouped else 9)
    return fig


# Offsets (points) tried in turn for a point's label: right, then above and below at growing distance.
_LABEL_OFFSETS = [(6, 5), (6, -11)] + [(6, sign * step) for step in range(17, 200, 11) for sign in (1, -1)]


def _place_labels(fig: Any, ax: Any, points: list[tuple[str, float, float]], *, fontsize: int) -> list[Any]:
    """Annotate each point with its name at the first offset whose text box overlaps no label
    placed before (bundles compared side by side often share a size and an accuracy); a label
    with no free spot is drawn with a leader line at the last offset tried."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    texts = []
    for name, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        for dx, dy in _LABEL_OFFSETS:
            text = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               va="center", arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6}
                               if abs(dy) > 11 else None)
            box = Text.get_window_extent(text, renderer).expanded(1.0, 1.1)   # the text, not its leader line
            if not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:
            ax.add_artist(text)   # nowhere free: keep the last try rather than drop the name
        placed.append(box)
        texts.append(text)
    return texts


def plot_size_breakdown(report: dict[str, Any], path: str | Path) -> Path:
    """Stacked horizontal bars per variant: embedding MB vs the rest of the ONNX file, with totals."""
    return _atomic_write(Path(path), _size_png(report))


def plot_accuracy_vs_size(report: dict[str, Any], path: str | Path) -> Path:
    """Scatter of accuracy (%) against ONNX size (MB), one labelled point per variant (an embedding
    report: kNN accuracy, or cosine to the original when it has no kNN)."""
    return _atomic_write(Path(path), _accuracy_png(report))


# ---------------------------------------------------------------- writing and merging


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write to a temp file next to `path`, then os.replace it in; never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the plots into `out_dir` (size_breakdown and
    accuracy_vs_size; an embedding report also cosine_vs_size); return their paths."""
    out, variants = Path(out_dir), _check(report)
    try:
        as_json = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ReportError(f"the report must be JSON-serialisable (dicts, lists, numbers, strings): {err}") from err
    # Render everything before touching the disk, so a bad report writes nothing at all.
    pngs, captions = _pngs(report), _plot_captions(report)
    markdown = render_markdown(report)
    page = _html(report, {captions[k]: png for k, png in pngs.items()})
    paths = {k: _atomic_write(out / PLOT_FILES[k], png) for k, png in pngs.items()}
    paths["md"] = _atomic_write(out / "report.md", markdown.encode("utf-8"))
    paths["html"] = _atomic_write(out / "report.html", page.encode("utf-8"))
    paths["json"] = _atomic_write(out / "report.json", as_json.encode("utf-8"))
    log.info("wrote footprint report to %s (%d variants)", out, len(variants))
    return {k: paths[k] for k in ("json", "md", "html", *pngs)}


def _load(path: str | Path) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    file = p / "report.json" if p.is_dir() else p
    if not file.is_file():
        raise ReportError(f"no report at {p}: expected a report.json file or a bundle directory containing one "
                          "(as written by write_report)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"cannot read report {file}: {err}") from err
    try:
        _check(data)
    except ReportError as err:
        raise ReportError(f"{file}: {err}") from err
    return file, data


def _bundle_labels(folders: list[Path]) -> list[str]:
    """Each bundle's folder name; where two share one, as many trailing path parts as tell them apart."""
    parts = [f.resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]   # the same folder twice: the caller says they clash


def compare_reports(paths: Sequence[str | Path], *, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge report.json files (or bundle dirs) into one report whose variants are all of theirs.

    With several inputs every variant name, and every quantized row's `base`, is prefixed with
    its bundle name ("run-a/dep", "run-a/dep int8-arm64"), so each row says where it comes from
    and quantized files stay beside their model; `names` overrides the bundle names (default:
    the directory holding each report.json). The reference for deltas is the first input's
    first variant. Reports of different task types (a classifier and an embedder) are refused in
    one line, and so are reports of different tasks by their view's `task_key` (classification:
    name, type, single/pair or label set; embeddings: the kNN and pair sets): their metrics are
    not on one scale. Differences that leave them comparable (eval-set size; an embedding
    bundle's corpus) become warnings in the header. One input keeps its names as they are.
    """
    if not paths:
        raise ReportError("compare_reports needs at least one report.json path or bundle directory")
    loaded = [_load(p) for p in paths]
    if names is not None and len(names) != len(loaded):
        raise ReportError(f"got {len(names)} names for {len(loaded)} reports; pass one name per report")
    labels = list(names) if names is not None else _bundle_labels([f.parent for f, _ in loaded])
    if len(set(labels)) != len(labels):
        raise ReportError(f"bundle names clash: {labels}; pass one distinct name per report")
    tasks = [r.get("task") if isinstance(r.get("task"), dict) else {} for _, r in loaded]
    views = [_report_view(r) for _, r in loaded]
    if any(v is not views[0] for v in views):
        types = ", ".join(f"{label}: {_task_type(r.get('model') or {}, task)}"
                          for label, (_, r), task in zip(labels, loaded, tasks))
        measures = [v.measures for v in REPORT_VIEWS.values() if v in views]   # in the table's order
        raise ReportError(f"cannot compare bundles of different task types ({types}); {' and '.join(measures)} are "
                          "different measurements: compare bundles of one task type")
    view = views[0]
    if len({view.task_key(task) for task in tasks}) > 1:
        described = ", ".join(f"{label}: {_task_text(task, view)}" for label, task in zip(labels, tasks))
        raise ReportError(f"cannot compare bundles of different tasks ({described}); {view.incomparable}")
    several = len(loaded) > 1

    def prefixed(label: str, name: str) -> str:
        return f"{label}/{name}" if several else name

    variants = [{**v, "name": prefixed(label, v["name"]), "source": label}
                | ({"base": prefixed(label, v["base"])} if v.get("base") else {})
                for label, (_, r) in zip(labels, loaded) for v in r["variants"]]
    first = loaded[0][1]
    notes = ["compared: " + ", ".join(f"{label} ({f})" for label, (f, _) in zip(labels, loaded))] if several else []
    warnings = []
    for field, text in view.compare_warnings:
        values = {label: task.get(field) for label, task in zip(labels, tasks)}
        if len(set(map(str, values.values()))) > 1:
            warnings.append(text.format(values=", ".join(f"{k} {v}" for k, v in values.items())))
            log.warning("compare_reports: %s", warnings[-1])
    notes += [f"{label}: {n}" for label, (_, r) in zip(labels, loaded) for n in (r.get("notes") or [])]
    merged: dict[str, Any] = {
        "title": "embslim footprint comparison: " + " vs ".join(labels) if several else first.get("title"),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": first.get("model") or {}, "task": first.get("task") or {},
        "variants": variants, "notes": notes, "warnings": warnings,
        "sources": [{"name": label, "path": str(f), "title": r.get("title"), "model": r.get("model") or {},
                     "task": r.get("task") or {}} for label, (f, r) in zip(labels, loaded)],
    }
    if not several:
        for key in ("finetune", "created"):
            if first.get(key):
                merged[key] = first[key]
    if all(r.get("vocab") == first.get("vocab") for _, r in loaded) and first.get("vocab"):
        merged["vocab"] = first["vocab"]
    return merged
