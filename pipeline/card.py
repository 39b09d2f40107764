"""The bundle's model card: README.md in the Hugging Face model-card format.

A YAML header the Hub reads (`library_name`, `pipeline_tag`, `base_model`, `language`, `license`,
`tags`), then what was done to the source model (DEP, compressor, fine-tune, quantization), the
footprint and accuracy of every model file in the bundle as the report measured them, and how to
load the bundle with `embslim.runtime`, Optimum and transformers' `pipeline()`.

Everything comes from data already in the bundle (manifest.json, the report dict) plus the
source model's own README.md header, read with `yaml.safe_load` (never executing anything) for
its `language` and `license`. The card is written like the report: not listed in the manifest's
artifacts (those are the files the runtime loads and checks), replaced atomically.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embslim.pipeline.report import MISSING, _atomic_write, _diff, _fmt, _md_cell

log = logging.getLogger(__name__)

CARD_FILE = "README.md"


class CardError(ValueError):
    """The bundle lacks what the card is made from (manifest, report rows), or its task is unknown."""


@dataclass(frozen=True)
class CardTask:
    """What a card says about one task: the Hub's pipeline tag and the classes that load it."""

    pipeline_tag: str
    optimum_class: str     # optimum.onnxruntime
    runtime_class: str     # embslim.runtime
    runtime_call: str      # the runtime method the usage example calls


# Keyed by the manifest's task type, named as Optimum's TasksManager names tasks (DESIGN.md).
# Bundles without a type are text classifiers (the only kind before task types existed).
TASKS: dict[str, CardTask] = {
    "text-classification": CardTask("text-classification", "ORTModelForSequenceClassification", "Classifier", "predict"),
    "feature-extraction": CardTask("feature-extraction", "ORTModelForFeatureExtraction", "Embedder", "embed"),
    "token-classification": CardTask("token-classification", "ORTModelForTokenClassification", "Tagger", "predict"),
}
# Source-card fields copied as they are: they describe the weights, which the bundle inherits.
_INHERITED = ("language", "license", "license_name", "license_link")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def source_card_header(source_dir: str | Path | None) -> dict[str, Any]:
    """The YAML header of `source_dir`/README.md as a dict; {} when there is none or it is not
    a YAML mapping (a warning says why). Parsed with yaml.safe_load: data only, no code."""
    import yaml

    if source_dir is None:
        return {}
    readme = Path(source_dir) / CARD_FILE
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}   # a source without a card (local folders often have none)
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}
    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        log.warning("ignoring the YAML header of %s: %s", readme, str(err).replace("\n", " "))
        return {}
    if not isinstance(header, dict):
        log.warning("ignoring the YAML header of %s: expected a mapping, got %s", readme, type(header).__name__)
        return {}
    return header


def _is_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists() or name.count("/") > 1


def card_header(manifest: dict[str, Any], report: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML fields, in the order the Hub shows them."""
    task = _task(manifest)
    name = str((manifest.get("source_model") or {}).get("name") or "")
    header: dict[str, Any] = {"library_name": "onnx", "pipeline_tag": task.pipeline_tag}
    if name and not _is_local(name):   # the Hub wants a hub id here; a local folder is named in the text
        header["base_model"] = name
    header |= {k: source[k] for k in _INHERITED if source.get(k)}
    variants = {a.get("variant") for a in manifest.get("artifacts") or []}
    tags = ["onnx", "embslim", task.pipeline_tag]
    tags += ["dep-pruned"] if report.get("vocab") else []
    method = _chosen_method(manifest)
    tags += [method] if method not in (None, "table") else []
    tags += [t for v, t in (("int8", "int8"), ("int4", "4-bit")) if v in variants]
    header["tags"] = list(dict.fromkeys(tags))
    return header


def _task(manifest: dict[str, Any]) -> CardTask:
    kind = (manifest.get("task") or {}).get("type") or "text-classification"
    if kind not in TASKS:
        raise CardError(f"no model-card template for task type {kind!r}; known: {', '.join(TASKS)}")
    return TASKS[kind]


def _chosen_method(manifest: dict[str, Any]) -> str | None:
    stages = manifest.get("stages") or {}
    info = (stages.get("compress") or {}).get(stages.get("bundle_variant"))
    return info.get("method") if isinstance(info, dict) else None


def footprint_rows(manifest: dict[str, Any], report: dict[str, Any]) -> list[list[str]]:
    """One row per model file of the bundle (fp32, int8, 4-bit, .ort), from the report's
    measurements, then the unpruned baseline (not in the bundle) for scale."""
    by_file = {v.get("file"): v for v in report.get("variants") or [] if isinstance(v, dict)}
    fp32 = by_file.get("model.onnx") or {}
    rows = []
    for entry in manifest.get("artifacts") or []:
        file = entry.get("file", "")
        if not file.endswith((".onnx", ".ort")):
            continue
        v = by_file.get(file, {})
        rows.append([f"`{file}`", str(entry.get("variant", MISSING)), str(entry.get("target", MISSING)),
                     _fmt(entry.get("bytes"), "mb"), _fmt(v.get("accuracy"), "pct"),
                     _fmt(_diff(v.get("accuracy"), fp32.get("accuracy")), "delta") if v is not fp32 else "",
                     _fmt(v.get("latency_ms_p50"), "adaptive"), _fmt(v.get("peak_rss_mb"), "adaptive")])
    base = next((v for v in report.get("variants") or [] if isinstance(v, dict) and v.get("name") == "unpruned"), None)
    if base:
        rows.append(["unpruned baseline (not in the bundle)", str(base.get("precision") or "fp32"), "any",
                     _fmt(base.get("onnx_bytes"), "mb"), _fmt(base.get("accuracy"), "pct"),
                     _fmt(_diff(base.get("accuracy"), fp32.get("accuracy")), "delta"),
                     _fmt(base.get("latency_ms_p50"), "adaptive"), _fmt(base.get("peak_rss_mb"), "adaptive")])
    return rows


_TABLE_HEAD = ("file", "precision", "target", "MB", "accuracy %", "Δ vs model.onnx (pts)", "p50 ms", "peak RSS MB")


def _done_lines(manifest: dict[str, Any], report: dict[str, Any], source_name: str) -> list[str]:
    stages = manifest.get("stages") or {}
    chosen = stages.get("bundle_variant") or MISSING
    lines = [f"**Source model**: `{source_name}` ({(manifest.get('source_model') or {}).get('family', MISSING)})."]
    vocab = report.get("vocab") or {}
    if vocab:
        lines.append(f"**Vocabulary pruning (DEP)**: the embedding keeps the {_fmt(vocab.get('kept_rows'), 'int')} of "
                     f"{_fmt(vocab.get('original_rows'), 'int')} token rows the training text uses; other ids go to the "
                     f"`{vocab.get('fallback') or MISSING}` kept row inside the graph, so the original tokenizer.json is "
                     f"used unchanged (eval OOV rate {_fmt(vocab.get('eval_oov_rate'), 'pct')}%).")
    info = (stages.get("compress") or {}).get(chosen) or {}
    method = info.get("method")
    if method and method != "table":
        opts = ", ".join(f"{k}={v}" for k, v in (info.get("options") or {}).items())
        lines.append(f"**Embedding compression**: `{method}`" + (f" ({opts})" if opts else "")
                     + (", distilled from the fine-tuned DEP model" if info.get("distill") else "") + ".")
    elif method == "table":
        lines.append("**Embedding compression**: none (the pruned table is kept as it is).")
    ft = report.get("finetune") or {}
    if ft:
        bits = [f"{k.replace('_', ' ')} {ft[k]}" for k in ("epochs", "max_steps", "batch_size", "learning_rate",
                                                           "max_length", "seed") if ft.get(k) is not None]
        if ft.get("enabled") is False:   # --no-finetune: the given trained model, kept as it is
            distilled = [n for n, sec in (ft.get("seconds") or {}).items() if sec]
            lines.append("**Fine-tuning**: none; the given model's trained weights and its own head are kept "
                         "(`--no-finetune`)" + (f"; {', '.join(f'`{n}`' for n in distilled)} learned from the given "
                                                "model's logits (distillation, no labels)" if distilled else "") + ".")
        else:
            lines.append(f"**Fine-tuning**: on {_fmt(ft.get('train_samples'), 'int')} training examples; "
                         + ", ".join(bits) + ".")
    export = stages.get("export") or {}
    lines.append(f"**Export**: ONNX opset {export.get('opset', MISSING)} with {export.get('exporter', MISSING)}; "
                 "outputs checked against PyTorch before the bundle was written.")
    quantized = [a for a in manifest.get("artifacts") or [] if a.get("variant") in ("int8", "int4", "int8-ort")]
    if quantized:
        lines.append("**Quantization** (ONNX Runtime): " + ", ".join(f"`{a['file']}` ({a['variant']} for {a['target']})"
                                                                     for a in quantized)
                     + "; each was checked for accuracy against `model.onnx` on the eval split.")
    else:
        lines.append("**Quantization**: none; `model.onnx` is float32.")
    return lines


def _usage(manifest: dict[str, Any], task: CardTask) -> list[str]:
    pair = bool((manifest.get("task") or {}).get("pair"))
    quantized = next((a["file"] for a in manifest.get("artifacts") or []
                      if a.get("variant") == "int8" and str(a.get("file", "")).endswith(".onnx")), None)
    example = '[("A man is playing a guitar.", "Someone plays music.")]' if pair else '["I loved every minute of it."]'
    hf_example = ('{"text": "A man is playing a guitar.", "text_pair": "Someone plays music."}' if pair
                  else '"I loved every minute of it."')
    runtime = ["```python", f"from embslim.runtime import {task.runtime_class}", "",
               f'model = {task.runtime_class}.from_bundle("path/to/bundle")   # model.onnx; '
               'variant="auto" picks the file built for this CPU',
               f"print(model.{task.runtime_call}({example}))", "```"]
    optimum = ["```python", f"from optimum.onnxruntime import {task.optimum_class}", "from transformers import AutoTokenizer", "",
               'tokenizer = AutoTokenizer.from_pretrained("path/to/bundle")',
               f'model = {task.optimum_class}.from_pretrained("path/to/bundle"'
               + (f', file_name="{quantized}")' if quantized else ")"), "```"]
    hf = ["```python", "from transformers import pipeline", "",
          f'pipe = pipeline("{task.pipeline_tag}", model=model, tokenizer=tokenizer)   # the Optimum model above',
          f"print(pipe({hf_example}))", "```"]
    return (["### embslim runtime (onnxruntime, numpy and tokenizers only)", "", *runtime, "",
             "### Optimum", "", *optimum, "",
             "Any model file of the table loads this way: pass its name as `file_name` (default `model.onnx`)."
             " The int8 and 4-bit files use ONNX Runtime's contrib operators: run them with ONNX Runtime.", "",
             "### transformers `pipeline()`", "", *hf, ""])


def render_card(manifest: dict[str, Any], report: dict[str, Any], *, source: dict[str, Any] | None = None) -> str:
    """The whole card as text. `source` is the source model's card header (source_card_header)."""
    import yaml

    task = _task(manifest)
    header = card_header(manifest, report, source or {})
    info = manifest.get("task") or {}
    source_name = str((manifest.get("source_model") or {}).get("name") or MISSING)
    labels = [str(x) for x in info.get("labels") or []]
    n_eval = (report.get("task") or {}).get("n_eval")
    shown = ", ".join(f"`{x}`" for x in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
    out = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
           f"# {info.get('name', MISSING)} classifier from {source_name.rsplit('/', 1)[-1]}, slimmed by embslim", "",
           f"A {task.pipeline_tag} model for the task **{info.get('name', MISSING)}** "
           f"({'sentence pairs' if info.get('pair') else 'single texts'}; {len(labels)} labels: {shown}), "
           f"built from `{source_name}` by embslim and exported to ONNX. "
           f"Inputs are truncated at {info.get('max_length', MISSING)} tokens.", "",
           "## What was done", "", *[f"- {line}" for line in _done_lines(manifest, report, source_name)], "",
           "## Footprint and accuracy", "",
           (f"Accuracy on the task's eval split ({_fmt(n_eval, 'int')} examples) under ONNX Runtime (CPU); "
            "MB = 10^6 bytes; latency at batch 1 on the build machine, one thread. "
            "`report.md` in this folder has every measurement."
            + (" The eval texts had no gold labels: accuracy here is agreement with the given model's labels."
               if (report.get("task") or {}).get("eval_labels") == "model" else "")
            + (" `report.md` also gives each file's agreement with the given model."
               if any("original_agreement" in v for v in report.get("variants") or []) else "")
            if report.get("variants") else
            "Sizes from manifest.json (MB = 10^6 bytes). This bundle has no report, so no accuracy yet: "
            "`embslim validate` measures it."), "",
           "| " + " | ".join(_TABLE_HEAD) + " |", "|---|---|---|" + "---:|" * (len(_TABLE_HEAD) - 3)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in footprint_rows(manifest, report)]
    out += ["", "## How to use", "", *_usage(manifest, task)]
    return "\n".join(out)


def write_card(bundle: str | Path, *, report: dict[str, Any] | None = None, source_dir: str | Path | None = None,
               rows: list[dict[str, Any]] | tuple = ()) -> Path:
    """Write README.md (the model card) into `bundle` from its manifest.json and `report` (default:
    the bundle's report.json, if any). `rows` are metrics rows of files measured since (e.g. by
    `embslim quantize`), which replace the report's rows for the same file. `source_dir` (default:
    the manifest's source model when it is a local folder or the bundled default) gives the
    source card's language and license."""
    bundle = Path(bundle)
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CardError(f"cannot read {bundle / 'manifest.json'} for the model card: {err}; write the manifest first") from err
    if report is None:
        try:
            report = json.loads((bundle / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}   # a bundle from `embslim export` has no report: sizes only
    if not isinstance(report, dict) or not isinstance(report.get("variants", []), list):
        raise CardError("the model card needs the report dict with its 'variants' (as write_report takes it)")
    if rows:
        files = {r.get("file") for r in rows}
        report = report | {"variants": [v for v in report.get("variants", []) if v.get("file") not in files] + list(rows)}
    if source_dir is None:
        source_dir = _local_source((manifest.get("source_model") or {}).get("name"))
    text = render_card(manifest, report, source=source_card_header(source_dir))
    path = _atomic_write(bundle / CARD_FILE, text.encode("utf-8"))
    log.info("wrote the model card %s", CARD_FILE)
    return path


def _local_source(name: Any) -> Path | None:
    """The source model's folder when the manifest names a local folder or the bundled default."""
    from embslim.pipeline.model import ModelError, resolve_model

    if not isinstance(name, str) or not name:
        return None
    try:
        folder = Path(resolve_model(name)).expanduser()
    except ModelError:   # the default model's package is not installed
        return None
    return folder if folder.is_dir() else None
