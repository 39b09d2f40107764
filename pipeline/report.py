"""The footprint report: what vocabulary pruning and embedding compression saved, and what it cost.

Input is a plain JSON-able dict the pipeline builds (model, task, optional `vocab`, free-form
`finetune`, a list of `variants`, `notes`). The first variant is the reference: every delta and
ratio is measured against it. `write_report` turns the dict into a bundle directory:

    report.json  report.md  report.html  plots/size_breakdown.png  plots/accuracy_vs_size.png

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

MISSING = "–"  # en dash: what a missing or non-finite metric renders as
# Where the plots live inside a bundle; report.md links them by these relative paths.
PLOT_FILES = {"size_plot": "plots/size_breakdown.png", "accuracy_plot": "plots/accuracy_vs_size.png"}
_PLOT_TITLES = {"size_plot": "Size breakdown", "accuracy_plot": "Accuracy vs size"}
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


def _fmt(value: Any, kind: str) -> str:
    """Format one metric; `kind` is one of mb, params, pct, pct1, delta, ratio, sci, int, adaptive."""
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


def _model_text(model: dict[str, Any]) -> str:
    extras = [str(model["family"])] if model.get("family") else []
    extras += [f"{k} {_fmt(model.get(f), 'int')}" for k, f in (("hidden", "hidden_size"), ("vocab", "vocab_size"))
               if _num(model.get(f)) is not None]
    return str(model.get("name", MISSING)) + (f" ({', '.join(extras)})" if extras else "")


def _task_text(task: dict[str, Any]) -> str:
    parts = [str(task["type"])] if task.get("type") else []
    parts += [("sentence pairs" if task["is_pair"] else "single sentences")] if "is_pair" in task else []
    if _num(task.get("n_labels")) is not None:
        labels = task.get("labels") or []
        parts.append(f"{task['n_labels']} labels" + (f" ({', '.join(map(str, labels))})" if labels else ""))
    if _num(task.get("n_train_used")) is not None:
        parts.append(f"train {_fmt(task['n_train_used'], 'int')} of {_fmt(task.get('n_train'), 'int')} used")
    if _num(task.get("n_eval")) is not None:
        parts.append(f"eval {_fmt(task['n_eval'], 'int')}")
    return str(task.get("name", MISSING)) + (f" ({'; '.join(parts)})" if parts else "")


def _header_lines(report: dict[str, Any]) -> list[str]:
    model, task = report.get("model") or {}, report.get("task") or {}
    lines = [f"Created: {report['created']}"] if report.get("created") else []
    sources = [s for s in report.get("sources") or [] if isinstance(s, dict)]
    if len(sources) > 1:   # a comparison: every bundle's own model and task, never just the first one's
        for s in sources:
            what = [f"model {_model_text(s['model'])}"] if s.get("model") else []
            what += [f"task {_task_text(s['task'])}"] if s.get("task") else []
            lines.append(f"Bundle {s.get('name', MISSING)}: " + ("; ".join(what) or MISSING)
                         + (f" [{s['path']}]" if s.get("path") else ""))
        return lines + [str(w) for w in report.get("warnings") or []]
    if model:
        lines.append(f"Model: {_model_text(model)}")
    if task:
        lines.append(f"Task: {_task_text(task)}")
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
        lines.append(f"Always kept: the {_fmt(vocab['keep_top'], 'int')} most frequent tokens")
    return lines


_ORIGINAL_COLUMN = "agrees with given model %"   # label agreement with the model the user gave (--no-finetune)
_COLUMNS = ("variant", "precision", "params (M)", "embedding params (M)", "ONNX MB", "embedding MB",
            "accuracy %", "macro-F1 %", "Δ accuracy (pts)", "agreement with PyTorch %", "max |Δlogit| vs PyTorch",
            _ORIGINAL_COLUMN, "max |Δlogit| vs given model", "p50 ms", "p95 ms", "peak RSS MB", "size vs ref")
_TEXT_COLUMNS = {"variant", "precision", "key", "value"}  # left-aligned; the rest are numbers


def _variant_rows(variants: list[dict[str, Any]]) -> list[list[str]]:
    ref = variants[0]
    return [[v["name"], str(v.get("precision") or MISSING), _fmt(v.get("total_params"), "params"),
             _fmt(v.get("embedding_params"), "params"), _fmt(v.get("onnx_bytes"), "mb"),
             _fmt(v.get("onnx_embedding_bytes"), "mb"), _fmt(v.get("accuracy"), "pct"),
             _fmt(v.get("macro_f1"), "pct"), _fmt(_diff(v.get("accuracy"), ref.get("accuracy")), "delta"),
             _fmt(v.get("agreement"), "pct"), _fmt(v.get("max_logit_diff"), "sci"),
             _fmt(v.get("original_agreement"), "pct"), _fmt(v.get("original_max_logit_diff"), "sci"),
             _fmt(v.get("latency_ms_p50"), "adaptive"), _fmt(v.get("latency_ms_p95"), "adaptive"),
             _fmt(v.get("peak_rss_mb"), "adaptive"), _fmt(_ratio(v.get("onnx_bytes"), ref.get("onnx_bytes")), "ratio")]
            for v in variants]


def _detail_lines(variants: list[dict[str, Any]]) -> list[str]:
    lines = []
    for v in variants:
        bits = [str(v["description"])] if v.get("description") else []
        bits += [f"file {v['file']}"] if v.get("file") else []
        if _num(v.get("torch_accuracy")) is not None:
            bits.append(f"PyTorch accuracy {_fmt(v['torch_accuracy'], 'pct')}%")
        if _num(v.get("reconstruction_error")) is not None:
            bits.append(f"embedding reconstruction error {v['reconstruction_error']:.3g}")
        if _num(v.get("token_weighted_error")) is not None:
            bits.append(f"token-weighted {v['token_weighted_error']:.3g}")
        if _num(v.get("latency_seq_len")) is not None:
            bits.append(f"latency at {_fmt(v['latency_seq_len'], 'int')} tokens")
        if bits:
            lines.append(f"{v['name']}: " + "; ".join(bits))
    return lines


def _ratio_lines(variants: list[dict[str, Any]]) -> list[str]:
    ref, lines = variants[0], []
    for v in variants[1:]:
        parts = []
        for key, what in (("onnx_bytes", "ONNX size"), ("onnx_embedding_bytes", "embedding bytes"),
                          ("total_params", "params"), ("latency_ms_p50", "p50 latency")):
            r = _ratio(v.get(key), ref.get(key))
            if r is not None:
                parts.append(f"{r:.2f}x {what}")
        delta = _diff(v.get("accuracy"), ref.get("accuracy"))
        if delta is not None:
            parts.append(f"{_fmt(delta, 'delta')} pts accuracy")
        lines.append(f"{v['name']}: " + (", ".join(parts) if parts else "no comparable metrics"))
    return lines


_SIDE_COLUMNS = ("variant", "embedding params (M)", "reconstruction error", "token-weighted error", "fp32 MB", "int8 MB", "4-bit MB",
                 "fp32 accuracy %", "Δ fp32 (pts)", "int8 accuracy %", "4-bit accuracy %", "fp32 p50 ms",
                 "int8 p50 ms", "fp32 peak RSS MB", "int8 peak RSS MB")


def _side_by_side(variants: list[dict[str, Any]]) -> list[list[str]] | None:
    """One row per model with its quantized files beside it (rows with `base` name the model they
    were quantized from), or None when no model has a quantized row."""
    quantized: dict[str, dict[str, dict[str, Any]]] = {}
    for v in variants:
        if v.get("base") and v.get("precision") in ("int8", "int4") and not str(v.get("file", "")).endswith(".ort"):
            quantized.setdefault(v["base"], {}).setdefault(v["precision"], v)   # first target of each precision
    if not quantized:
        return None
    ref = variants[0]
    rows = []
    for v in variants:
        if v.get("base"):
            continue
        q8, q4 = quantized.get(v["name"], {}).get("int8", {}), quantized.get(v["name"], {}).get("int4", {})
        rows.append([v["name"], _fmt(v.get("embedding_params"), "params"), _fmt(v.get("reconstruction_error"), "adaptive"),
                     _fmt(v.get("token_weighted_error"), "adaptive"),
                     _fmt(v.get("onnx_bytes"), "mb"), _fmt(q8.get("onnx_bytes"), "mb"), _fmt(q4.get("onnx_bytes"), "mb"),
                     _fmt(v.get("accuracy"), "pct"), _fmt(_diff(v.get("accuracy"), ref.get("accuracy")), "delta"),
                     _fmt(q8.get("accuracy"), "pct"), _fmt(q4.get("accuracy"), "pct"),
                     _fmt(v.get("latency_ms_p50"), "adaptive"), _fmt(q8.get("latency_ms_p50"), "adaptive"),
                     _fmt(v.get("peak_rss_mb"), "adaptive"), _fmt(q8.get("peak_rss_mb"), "adaptive")])
    return rows


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, (list, tuple)):
        return [(prefix, ", ".join(map(str, data)))]
    text = MISSING if data is None else f"{data:.6g}" if isinstance(data, float) else str(data)
    return [(prefix or "value", text)]


def _sections(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(heading, kind, payload) in report order; kind is lines, bullets or table."""
    variants = _check(report)
    out: list[tuple[str, str, Any]] = [("", "lines", _header_lines(report))]
    if isinstance(report.get("vocab"), dict):
        n_eval = (report.get("task") or {}).get("n_eval")
        out.append(("Vocabulary (DEP)", "bullets", _vocab_lines(report["vocab"], n_eval)))
    ref = variants[0]
    out.append(("Variants", "lines", [f"Reference for Δ accuracy and ratios: {ref['name']}. "
                                      "MB = 10^6 bytes; accuracy and agreement on the eval split."]))
    side = _side_by_side(variants)
    if side:
        out.append(("Side by side", "lines", [f"Each model with its quantized files; Δ fp32 is against {ref['name']}. "
                                              "The token-weighted error weighs each embedding row by how often the "
                                              "training text uses it. Every row is detailed in the table below."]))
        out.append(("", "table", (list(_SIDE_COLUMNS), side)))
        out.append(("All files", "lines", []))
    head, rows = list(_COLUMNS), _variant_rows(variants)
    if not any("original_agreement" in v for v in variants):   # only runs that kept a trained model have it
        keep = [i for i, h in enumerate(head) if h not in (_ORIGINAL_COLUMN, "max |Δlogit| vs given model")]
        head, rows = [head[i] for i in keep], [[r[i] for i in keep] for r in rows]
    out.append(("", "table", (head, rows)))
    out.append(("", "bullets", _detail_lines(variants)))
    if len(variants) > 1:
        out.append((f"Ratios vs {ref['name']}", "bullets", _ratio_lines(variants)))
    if report.get("finetune"):
        out.append(("Fine-tuning", "table", (["key", "value"], [list(kv) for kv in _flatten(report["finetune"])])))
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
    out += ["## Plots", ""] + [f"![{_PLOT_TITLES[k]}]({p})" for k, p in PLOT_FILES.items()] + [""]
    return "\n".join(out)


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


def _accuracy_png(report: dict[str, Any]) -> bytes:
    return _png(accuracy_figure(report))


def accuracy_figure(report: dict[str, Any]) -> Any:
    """The accuracy-vs-size matplotlib figure (the caller closes it); plot_accuracy_vs_size saves it."""
    plt = _pyplot()
    variants = _check(report)
    pts = [(v["name"], _num(v.get("onnx_bytes")), _num(v.get("accuracy"))) for v in variants]
    pts = [(n, x / 1e6, y * 100) for n, x, y in pts if x is not None and y is not None]
    fig, ax = plt.subplots(figsize=(9, 6) if len(pts) > 8 else (7, 4.5))
    ax.set_title("Accuracy vs ONNX size")
    if not pts:
        _no_data(ax, "no variant has both a size and an accuracy")
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
    ref_acc = _num(variants[0].get("accuracy"))
    if ref_acc is not None:
        ax.axhline(ref_acc * 100, ls="--", lw=1, color="#666", zorder=1,
                   label=f"reference ({variants[0]['name']}): {ref_acc * 100:.2f}%")
        # Below the axes, so it never covers a point or a label.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4, fontsize=9, frameon=False)
    ax.set_xlim(0, max(x for _, x, _ in pts) * 1.25)  # from 0, so the size gap reads honestly
    ax.margins(y=0.3)
    ax.set_xlabel("ONNX file size (MB)")
    ax.set_ylabel("accuracy (%)")
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
    """Scatter of accuracy (%) against ONNX size (MB), one labelled point per variant."""
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
    """Write report.json, report.md, report.html and the two plots into `out_dir`; return their paths."""
    out, variants = Path(out_dir), _check(report)
    try:
        as_json = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ReportError(f"the report must be JSON-serialisable (dicts, lists, numbers, strings): {err}") from err
    # Render everything before touching the disk, so a bad report writes nothing at all.
    pngs = {"size_plot": _size_png(report), "accuracy_plot": _accuracy_png(report)}
    markdown = render_markdown(report)
    page = _html(report, {_PLOT_TITLES[k]: png for k, png in pngs.items()})
    paths = {k: _atomic_write(out / PLOT_FILES[k], png) for k, png in pngs.items()}
    paths["md"] = _atomic_write(out / "report.md", markdown.encode("utf-8"))
    paths["html"] = _atomic_write(out / "report.html", page.encode("utf-8"))
    paths["json"] = _atomic_write(out / "report.json", as_json.encode("utf-8"))
    log.info("wrote footprint report to %s (%d variants)", out, len(variants))
    return {k: paths[k] for k in ("json", "md", "html", "size_plot", "accuracy_plot")}


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


def _task_key(task: Any) -> tuple[str, str, str, str]:
    """What makes two tasks the same task: name, type, single/pair and label set."""
    task = task if isinstance(task, dict) else {}
    labels = task.get("labels") or []
    return (str(task.get("name")), str(task.get("type") or "text-classification"), str(task.get("is_pair")),
            json.dumps(sorted(map(str, labels)) or task.get("n_labels")))


def compare_reports(paths: Sequence[str | Path], *, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge report.json files (or bundle dirs) into one report whose variants are all of theirs.

    With several inputs every variant name, and every quantized row's `base`, is prefixed with
    its bundle name ("run-a/dep", "run-a/dep int8-arm64"), so each row says where it comes from
    and quantized files stay beside their model; `names` overrides the bundle names (default:
    the directory holding each report.json). The reference for deltas is the first input's
    first variant. Reports of different tasks (name, type, single/pair or label set) are
    refused: their accuracies are not on one scale. One input keeps its names as they are.
    """
    if not paths:
        raise ReportError("compare_reports needs at least one report.json path or bundle directory")
    loaded = [_load(p) for p in paths]
    if names is not None and len(names) != len(loaded):
        raise ReportError(f"got {len(names)} names for {len(loaded)} reports; pass one name per report")
    labels = list(names) if names is not None else _bundle_labels([f.parent for f, _ in loaded])
    if len(set(labels)) != len(labels):
        raise ReportError(f"bundle names clash: {labels}; pass one distinct name per report")
    keys = [_task_key(r.get("task")) for _, r in loaded]
    if len(set(keys)) > 1:
        tasks = ", ".join(f"{label}: {_task_text(r.get('task') or {})}" for label, (_, r) in zip(labels, loaded))
        raise ReportError(f"cannot compare bundles of different tasks ({tasks}); their accuracies are not "
                          "comparable: compare bundles built for the same task and labels")
    several = len(loaded) > 1

    def prefixed(label: str, name: str) -> str:
        return f"{label}/{name}" if several else name

    variants = [{**v, "name": prefixed(label, v["name"]), "source": label}
                | ({"base": prefixed(label, v["base"])} if v.get("base") else {})
                for label, (_, r) in zip(labels, loaded) for v in r["variants"]]
    first = loaded[0][1]
    notes = ["compared: " + ", ".join(f"{label} ({f})" for label, (f, _) in zip(labels, loaded))] if several else []
    warnings = []
    evals = {label: (r.get("task") or {}).get("n_eval") for label, (_, r) in zip(labels, loaded)}
    if len(set(map(str, evals.values()))) > 1:
        warnings.append("Warning: the eval splits differ in size (" + ", ".join(f"{k} {v}" for k, v in evals.items())
                        + " examples); accuracy deltas between bundles mix model and eval-set differences.")
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
