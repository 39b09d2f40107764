"""The bundle's model card: README.md in the Hugging Face model-card format.

A YAML header the Hub reads (`library_name`, `pipeline_tag`, `base_model`, `language`, `license`,
`tags`), then what was done to the source model (DEP, compressor, fine-tune, quantization), the
footprint and quality of every model file in the bundle as the report measured them, and how to
load the bundle. What differs by task is one `CardTask` per task in `TASKS`: a classifier's card
shows accuracy and loads with `embslim.runtime.Classifier`, Optimum and transformers'
`pipeline()`; a sentence-embedding card (pipeline tag `sentence-similarity`) shows cosine to the
original model, kNN accuracy and pair AUC and loads with `Embedder`, sentence-transformers (when
the bundle holds modules.json) and Optimum's feature-extraction model; a tagger's card shows entity
F1 per file and per entity type, what happens to words the task's text never used, and loads with
`Tagger` and Optimum's token-classification model in transformers' `pipeline()`.

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
from typing import Any, Callable

from embslim.pipeline.report import (MISSING, Column, _atomic_write, _cell, _fmt, _md_cell, _num, _per_type_section,
                                     runs_int4_as_int8,
                                     entity_types)

log = logging.getLogger(__name__)

CARD_FILE = "README.md"


class CardError(ValueError):
    """The bundle lacks what the card is made from (manifest, report rows), or its task is unknown."""


# ---------------------------------------------------------------- text classification (the defaults)


def _about_classifier(manifest: dict[str, Any], report: dict[str, Any], source_name: str) -> str:
    info = manifest.get("task") or {}
    labels = [str(x) for x in info.get("labels") or []]
    shown = ", ".join(f"`{x}`" for x in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
    return (f"A {_task(manifest).pipeline_tag} model for the task **{info.get('name', MISSING)}** "
            f"({'sentence pairs' if info.get('pair') else 'single texts'}; {len(labels)} labels: {shown}), "
            f"built from `{source_name}` by embslim and exported to ONNX. "
            f"Inputs are truncated at {info.get('max_length', MISSING)} tokens.")


def _classifier_table_intro(report: dict[str, Any]) -> str:
    if not report.get("variants"):
        return ("Sizes from manifest.json (MB = 10^6 bytes). This bundle has no report, so no accuracy yet: "
                "`embslim validate` measures it.")
    return (f"Accuracy on the task's eval split ({_fmt((report.get('task') or {}).get('n_eval'), 'int')} examples) "
            "under ONNX Runtime (CPU); MB = 10^6 bytes; latency at batch 1 on the build machine, one thread. "
            "`report.md` in this folder has every measurement."
            + (" The eval texts had no gold labels: accuracy here is agreement with the given model's labels."
               if (report.get("task") or {}).get("eval_labels") == "model" else "")
            + (" `report.md` also gives each file's agreement with the given model."
               if any("original_agreement" in v for v in report.get("variants") or []) else ""))


def _classifier_training(report: dict[str, Any]) -> str | None:
    ft = report.get("finetune") or {}
    if not ft:
        return None
    bits = [f"{k.replace('_', ' ')} {ft[k]}" for k in ("epochs", "max_steps", "batch_size", "learning_rate",
                                                       "max_length", "seed") if ft.get(k) is not None]
    if ft.get("enabled") is False:   # --no-finetune: the given trained model, kept as it is
        distilled = [n for n, sec in (ft.get("seconds") or {}).items() if sec]
        return ("**Fine-tuning**: none; the given model's trained weights and its own head are kept "
                "(`--no-finetune`)" + (f"; {', '.join(f'`{n}`' for n in distilled)} learned from the given "
                                       "model's logits (distillation, no labels)" if distilled else "") + ".")
    return f"**Fine-tuning**: on {_fmt(ft.get('train_samples'), 'int')} training examples; " + ", ".join(bits) + "."


def _classifier_usage(manifest: dict[str, Any], report: dict[str, Any], task: "CardTask", files: set[str]) -> list[str]:
    pair = bool((manifest.get("task") or {}).get("pair"))
    quantized = _int8_file(manifest)
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
             "### Optimum", "", *optimum, "", _ANY_FILE, "",
             "### transformers `pipeline()`", "", *hf, ""])


_ANY_FILE = ("Any model file of the table loads this way: pass its name as `file_name` (default `model.onnx`)."
             " The int8 and 4-bit files may use ONNX Runtime's contrib operators and its INT4 support: run them with "
             "ONNX Runtime.")


def _int8_file(manifest: dict[str, Any]) -> str | None:
    return next((a["file"] for a in manifest.get("artifacts") or []
                 if a.get("variant") == "int8" and str(a.get("file", "")).endswith(".onnx")), None)


@dataclass(frozen=True)
class CardTask:
    """What a card says about one task: the Hub's header fields, the classes that load it, the
    metric columns of the footprint table and the task's own sentences. The renderer reads these
    and holds no `if task == ...` branch; the defaults are text classification's."""

    pipeline_tag: str
    optimum_class: str     # optimum.onnxruntime
    runtime_class: str     # embslim.runtime
    runtime_call: str      # the runtime method the usage example calls
    title: str = "{task} classifier from {source}, slimmed by embslim"
    tags: tuple[str, ...] = ()          # after onnx, embslim and the pipeline tag
    library_name: str = "onnx"
    # The Hub's library when the bundle root holds modules.json (it loads in that library as it is).
    modules_library: str | None = None
    metrics: tuple[Column, ...] = (Column("accuracy %", "accuracy", "pct"),
                                   Column("Δ vs model.onnx (pts)", "accuracy", "delta", vs_ref="diff"))
    table_heading: str = "Footprint and accuracy"
    corpus: str = "the training text"   # what DEP counted tokens on
    distilled: str = "distilled from the fine-tuned DEP model"
    checked: str = "each was checked for accuracy against `model.onnx` on the eval split"
    export_note: str = ""   # after "outputs checked against PyTorch before the bundle was written."
    about: Callable[[dict[str, Any], dict[str, Any], str], str] = _about_classifier   # (manifest, report, source name)
    table_intro: Callable[[dict[str, Any]], str] = _classifier_table_intro          # (report)
    training: Callable[[dict[str, Any]], str | None] = _classifier_training         # (report) -> the training line
    usage: Callable[[dict[str, Any], dict[str, Any], "CardTask", set[str]], list[str]] = _classifier_usage
    # (manifest, report) -> Markdown lines after the footprint table (a tagger's per-type table)
    extra: Callable[[dict[str, Any], dict[str, Any]], list[str]] = lambda manifest, report: []



# ---------------------------------------------------------------- sentence embeddings (feature-extraction)


def _embedding_model(manifest: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Pooling, normalize, dense and embedding_dim: the report's model fields, else the manifest's
    task.embedding (where the width is `dim`), which a bundle without a report has too."""
    model = report.get("model") or {}
    spec = (manifest.get("task") or {}).get("embedding") or {}
    spec = {"embedding_dim": spec.get("dim")} | spec if isinstance(spec, dict) else {}
    return {k: model[k] if model.get(k) is not None else spec.get(k)
            for k in ("pooling", "normalize", "dense", "embedding_dim")}


def _about_embedder(manifest: dict[str, Any], report: dict[str, Any], source_name: str) -> str:
    info, m = manifest.get("task") or {}, _embedding_model(manifest, report)
    what = [f"{_fmt(m['embedding_dim'], 'int')}-dimensional vectors"] if m["embedding_dim"] else []
    what += [f"{m['pooling']} pooling"] if m["pooling"] else []
    what += [f"{_fmt(m['dense'], 'int')} Dense layer{'s' if m['dense'] != 1 else ''}"] if m["dense"] else []
    what += [{True: "L2-normalized: the dot product is the cosine", False: "not normalized"}[m["normalize"]]] \
        if isinstance(m["normalize"], bool) else []
    described = f" ({'; '.join(what)})" if what else ""
    return (f"A sentence-embedding model{described}, built from `{source_name}` by embslim for texts like its corpus "
            f"**{info.get('name', MISSING)}**, and exported to ONNX. Its vectors live in the source model's space "
            "(same pooling and normalization), as close to the source model's as the cosine below says. "
            f"Inputs are truncated at {info.get('max_length', MISSING)} tokens.")


def _embedder_table_intro(report: dict[str, Any]) -> str:
    if not report.get("variants"):
        return ("Sizes from manifest.json (MB = 10^6 bytes). This bundle has no report, so no cosine or kNN "
                "figures yet: `embslim validate` measures them.")
    task = report.get("task") or {}
    knn, pairs = task.get("knn"), task.get("pairs")
    text = ("Cosine between each file's sentence embeddings and the original model's (PyTorch, unpruned) on "
            f"{_fmt(task.get('n_eval'), 'int')} held-out texts (1 = identical)")
    if isinstance(knn, dict):
        text += (f"; kNN accuracy: nearest neighbour by cosine (k = {knn.get('k', 1)}) on {knn.get('source') or MISSING}, "
                 f"{_fmt(knn.get('n_index'), 'int')} index texts and {_fmt(knn.get('n_queries'), 'int')} queries")
    if isinstance(pairs, dict):
        text += (f"; pair AUC: ROC-AUC of pair cosine against the paraphrase label on {pairs.get('source') or MISSING} "
                 f"({_fmt(pairs.get('n_pairs'), 'int')} pairs)")
    return (text + ". Under ONNX Runtime (CPU); MB = 10^6 bytes; latency at batch 1 on the build machine, one thread. "
            "`report.md` in this folder has every measurement (cosine 1st percentile, parity with PyTorch, each "
            "quantized file against its fp32 file).")


def _embedder_training(report: dict[str, Any]) -> str | None:
    distilled = [str(v["name"]) for v in report.get("variants") or []
                 if isinstance(v, dict) and str(v.get("name", "")).endswith("+distill") and not v.get("base")]
    return ("**Training**: none on labels (an embedding model has no head): the encoder and the kept embedding rows "
            "are the given model's weights" + (f"; {', '.join(f'`{n}`' for n in distilled)} learned from the given "
                                               "model's sentence embeddings on the corpus (distillation)"
                                               if distilled else "") + ".")


# How to pool the Optimum model's token embeddings (`last_hidden_state`), by 1_Pooling/config.json's mode.
_POOLING_CODE = {
    "mean": ['mask = inputs["attention_mask"][..., None]', "vectors = (hidden * mask).sum(1) / mask.sum(1)   # mean pooling"],
    "cls": ["vectors = hidden[:, 0]   # CLS pooling"],
    "max": ['vectors = np.where(inputs["attention_mask"][..., None] == 1, hidden, -np.inf).max(1)   # max pooling'],
}


def _embedder_usage(manifest: dict[str, Any], report: dict[str, Any], task: CardTask, files: set[str]) -> list[str]:
    m = _embedding_model(manifest, report)
    dim = _fmt(m["embedding_dim"], "int") if m["embedding_dim"] else "dim"
    texts = '["A man is playing a guitar.", "Someone plays music."]'
    runtime = ["```python", f"from embslim.runtime import {task.runtime_class}", "",
               f'emb = {task.runtime_class}.from_bundle("path/to/bundle", variant="auto")   # the file built for this CPU',
               f"vectors = emb.{task.runtime_call}({texts})   # float32 [n, {dim}]", "print(vectors.shape)", "```"]
    out = ["### embslim runtime (onnxruntime, numpy and tokenizers only)", "", *runtime, ""]
    if "modules.json" in files:
        st_file = _int8_file(manifest) or "model.onnx"
        out += ["### sentence-transformers", "", "```python", "from sentence_transformers import SentenceTransformer", "",
                f'model = SentenceTransformer("path/to/bundle", backend="onnx", model_kwargs={{"file_name": "{st_file}"}})',
                f"vectors = model.encode({texts})", "print(vectors.shape)", "```", "",
                "modules.json and its module folders at the bundle root (1_Pooling and any Dense and Normalize) give "
                "sentence-transformers the source model's own modules after the encoder.", ""]
    if m["dense"]:
        pooling = [f"# this model applies {_fmt(m['dense'], 'int')} Dense layer(s) after pooling: take its sentence "
                   "embeddings from Embedder or sentence-transformers above", "print(hidden.shape)"]
    elif m["pooling"] in _POOLING_CODE:
        pooling = [*_POOLING_CODE[m["pooling"]]]
        pooling += ["vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)   # L2 normalization"] if m["normalize"] else []
    else:
        pooling = ["# pool `hidden` over the attention mask as 1_Pooling/config.json says"]
    out += ["### Optimum", "", "```python", "import numpy as np",
            f"from optimum.onnxruntime import {task.optimum_class}", "from transformers import AutoTokenizer", "",
            'tokenizer = AutoTokenizer.from_pretrained("path/to/bundle")',
            f'model = {task.optimum_class}.from_pretrained("path/to/bundle", file_name="model.onnx")',
            f'inputs = tokenizer({texts}, padding=True, truncation=True, return_tensors="np")',
            "hidden = model(**inputs).last_hidden_state   # token embeddings [n, seq, hidden]", *pooling,
            *([] if m["dense"] else ["print(vectors.shape)"]), "```", "", _ANY_FILE, ""]
    return out


# ---------------------------------------------------------------- token classification (NER / PII tagging)


def _about_tagger(manifest: dict[str, Any], report: dict[str, Any], source_name: str) -> str:
    info = manifest.get("task") or {}
    tags = [str(x) for x in info.get("labels") or []]
    types = entity_types(tags)
    return (f"A token-classification (named-entity) model for the task **{info.get('name', MISSING)}**: it tags each "
            f"word with one of {len(tags)} tags"
            + (f" (BIO over {len(types)} entity types: {', '.join(f'`{t}`' for t in types)})" if types else "")
            + f", built from `{source_name}` by embslim and exported to ONNX. "
            f"Inputs are truncated at {info.get('max_length', MISSING)} tokens.")


def _tagger_table_intro(report: dict[str, Any]) -> str:
    if not report.get("variants"):
        return ("Sizes from manifest.json (MB = 10^6 bytes). This bundle has no report, so no entity F1 yet: "
                "`embslim validate` measures it.")
    task = report.get("task") or {}
    n_entities = next((v["n_entities"] for v in report["variants"] if _num(v.get("n_entities")) is not None), None)
    return (f"Entity F1, precision and recall: entity-level micro averages (seqeval, default mode: an entity counts "
            f"when its type and span both match) on the task's eval split ({_fmt(task.get('n_eval'), 'int')} sentences"
            + (f", {_fmt(n_entities, 'int')} gold entities" if n_entities is not None else "")
            + ") under ONNX Runtime (CPU); word accuracy: share of words tagged right. MB = 10^6 bytes; latency at "
            "batch 1 on the build machine, one thread. `report.md` in this folder has every measurement (token "
            "agreement with PyTorch, each quantized file against its fp32 file)."
            + (" `report.md` also gives each file's agreement with the given model."
               if any("original_agreement" in v for v in report["variants"]) else ""))


def _model_rows(manifest: dict[str, Any], report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's row of each model file of the bundle, named by its file, in the manifest's order."""
    by_file = {v.get("file"): v for v in report.get("variants") or [] if isinstance(v, dict)}
    return [by_file[a["file"]] | {"name": f"`{a['file']}`"} for a in manifest.get("artifacts") or []
            if str(a.get("file", "")).endswith((".onnx", ".ort")) and a.get("file") in by_file]


def _tagger_extra(manifest: dict[str, Any], report: dict[str, Any]) -> list[str]:
    out = []
    for heading, kind, payload in _per_type_section(_model_rows(manifest, report)):
        if kind == "lines":
            out += ["### " + heading, "", *payload, ""] if heading else [*payload, ""]
        else:
            head, rows = payload
            out += ["| " + " | ".join(_md_cell(h) for h in ["file", *head[1:]]) + " |",
                    "|---|" + "---:|" * (len(head) - 1), *("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows), ""]
    vocab = report.get("vocab") or {}
    if vocab:
        n_eval = (report.get("task") or {}).get("n_eval")
        where = {"nearest": "the nearest kept row (by embedding distance), inside the graph",
                 "unk": "the `[UNK]` row, inside the graph"}.get(str(vocab.get("fallback")), "a kept row")
        out += ["### Words the task's text never used", "",
                "DEP keeps only the token rows the training text uses; any other token id is read through "
                f"{where}, so the original tokenizer.json still works and a new word never fails, but it is read as a "
                "similar word the model saw. Entity names are often such rare words. On the eval split "
                f"{_fmt(vocab.get('eval_oov_rate'), 'pct')}% of tokens ({_fmt(vocab.get('eval_oov_tokens'), 'int')} of "
                f"{_fmt(vocab.get('eval_tokens'), 'int')}) fell back this way, in "
                f"{_fmt(vocab.get('eval_examples_with_oov'), 'int')} of {_fmt(n_eval, 'int')} sentences; the entity F1 "
                "above already includes them. For text far from the training text, expect more fallbacks (report.md's "
                "\"Vocabulary (DEP)\" section has the counts); a bundle built with `--keep-top N` keeps the vocabulary's "
                "first N tokens too.", ""]
    return out


def _tagger_usage(manifest: dict[str, Any], report: dict[str, Any], task: "CardTask", files: set[str]) -> list[str]:
    text = '"Jeff Bezos flew from Seattle to London"'
    runtime = ["```python", f"from embslim.runtime import {task.runtime_class}", "",
               f'tagger = {task.runtime_class}.from_bundle("path/to/bundle")   # model.onnx; variant="auto" picks the '
               "file built for this CPU",
               f'entities = tagger.{task.runtime_call}([{text}], aggregation_strategy="first")[0]   # one list per text',
               "for e in entities:   # the names and meaning of transformers' token-classification pipeline",
               '    print(e["entity_group"], round(e["score"], 3), e["word"], e["start"], e["end"])', "```"]
    optimum = ["```python", f"from optimum.onnxruntime import {task.optimum_class}",
               "from transformers import AutoTokenizer, pipeline", "",
               'tokenizer = AutoTokenizer.from_pretrained("path/to/bundle")',
               f'model = {task.optimum_class}.from_pretrained("path/to/bundle", file_name="model.onnx")',
               f'ner = pipeline("{task.pipeline_tag}", model=model, tokenizer=tokenizer, aggregation_strategy="first")',
               f"print(ner({text}))   # [{{'entity_group': ..., 'score': ..., 'word': ..., 'start': ..., 'end': ...}}, ...]",
               "```"]
    return ["### embslim runtime (onnxruntime, numpy and tokenizers only)", "", *runtime, "",
            "`aggregation_strategy` and the entity fields follow transformers' token-classification pipeline "
            "(`none` for one entry per sub-token, `simple`, `first`, `average`, `max`), so the two snippets' "
            "entities compare one to one. The model "
            "learnt each word's tag on its first sub-token, so `first` (a word's tag is its first sub-token's) reads "
            "it as trained; `simple` groups every sub-token's own tag.", "",
            "### Optimum and transformers `pipeline()`", "", *optimum, "", _ANY_FILE, ""]


# Keyed by the manifest's task type, named as Optimum's TasksManager names tasks (DESIGN.md).
# Bundles without a type are text classifiers (the only kind before task types existed). The
# pipeline tags are embslim.pipeline.tasks.TASKS's (a test holds them equal).
TASKS: dict[str, CardTask] = {
    "text-classification": CardTask("text-classification", "ORTModelForSequenceClassification", "Classifier", "predict"),
    "feature-extraction": CardTask(
        "sentence-similarity", "ORTModelForFeatureExtraction", "Embedder", "encode",
        title="{source} sentence embeddings, slimmed by embslim for {task}",
        tags=("sentence-transformers", "feature-extraction"), modules_library="sentence-transformers",
        metrics=(Column("cosine mean vs original", "cosine_mean", "f4"), Column("cosine min vs original", "cosine_min", "f4"),
                 Column("kNN accuracy %", "knn_accuracy", "pct", show="if_value"),
                 Column("Δ kNN vs model.onnx (pts)", "knn_accuracy", "delta", vs_ref="diff", show="if_value"),
                 Column("pair AUC", "pair_auc", "f4", show="if_value")),
        table_heading="Footprint and quality", corpus="the corpus",
        distilled="distilled from the given model's sentence embeddings on the corpus",
        checked="each was checked against `model.onnx` (cosine of their embeddings on the held-out texts) and the "
                "original model (cosine, kNN accuracy, pair AUC)",
        export_note=" The graph computes the pooling, any Dense layer and the normalization itself "
                    "(`sentence_embedding`) and also gives the token embeddings (`last_hidden_state`) that "
                    "sentence-transformers and Optimum pool.",
        about=_about_embedder, table_intro=_embedder_table_intro, training=_embedder_training, usage=_embedder_usage),
    "token-classification": CardTask(
        "token-classification", "ORTModelForTokenClassification", "Tagger", "tag",
        title="{task} tagger from {source}, slimmed by embslim", tags=("ner",),
        metrics=(Column("entity F1 %", "f1", "pct"), Column("Δ F1 vs model.onnx (pts)", "f1", "delta", vs_ref="diff"),
                 Column("precision %", "entity_precision", "pct", show="if_value"), Column("recall %", "recall", "pct", show="if_value"),
                 Column("word accuracy %", "word_accuracy", "pct", show="if_value")),
        table_heading="Footprint and entity F1",
        checked="each was checked for entity F1 and token agreement against `model.onnx` on the eval split",
        export_note=" The graph gives one row of tag logits per token (`logits`, [batch, sequence, tags]).",
        about=_about_tagger, table_intro=_tagger_table_intro, usage=_tagger_usage, extra=_tagger_extra),
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


def card_header(manifest: dict[str, Any], report: dict[str, Any], source: dict[str, Any], *,
                files: set[str] | None = None) -> dict[str, Any]:
    """The card's YAML fields, in the order the Hub shows them. `files`: the bundle root's file
    names (default: the manifest's artifacts)."""
    task = _task(manifest)
    name = str((manifest.get("source_model") or {}).get("name") or "")
    files = _artifact_files(manifest) if files is None else files
    library = task.modules_library if task.modules_library and "modules.json" in files else task.library_name
    header: dict[str, Any] = {"library_name": library, "pipeline_tag": task.pipeline_tag}
    if name and not _is_local(name):   # the Hub wants a hub id here; a local folder is named in the text
        header["base_model"] = name
    header |= {k: source[k] for k in _INHERITED if source.get(k)}
    variants = {a.get("variant") for a in manifest.get("artifacts") or []}
    tags = ["onnx", "embslim", task.pipeline_tag, *task.tags]
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


def _artifact_files(manifest: dict[str, Any]) -> set[str]:
    return {str(a.get("file")) for a in manifest.get("artifacts") or [] if isinstance(a, dict)}


def _chosen_method(manifest: dict[str, Any]) -> str | None:
    stages = manifest.get("stages") or {}
    info = (stages.get("compress") or {}).get(stages.get("bundle_variant"))
    return info.get("method") if isinstance(info, dict) else None


def footprint_table(manifest: dict[str, Any], report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per model file of the bundle (fp32, int8, 4-bit, .ort), from the
    report's measurements, then the unpruned baseline (not in the bundle) for scale. The metric
    columns are the task's (CardTask.metrics); Δ columns are against model.onnx."""
    task = _task(manifest)
    by_file = {v.get("file"): v for v in report.get("variants") or [] if isinstance(v, dict)}
    fp32 = by_file.get("model.onnx") or {}
    lines = []   # (the cells before the metrics, the variant row)
    for entry in manifest.get("artifacts") or []:
        file = entry.get("file", "")
        if file.endswith((".onnx", ".ort")):
            row = by_file.get(file, {})
            smooth = row.get("smooth_quant") if isinstance(row.get("smooth_quant"), dict) else {}
            notes = ([f"SmoothQuant alpha {smooth['alpha']}"] if smooth.get("alpha") else []) + (
                ["4-bit weights run as int8"] if runs_int4_as_int8(row) else [])
            precision = str(entry.get("variant", MISSING)) + (f" ({', '.join(notes)})" if notes else "")
            lines.append(([f"`{file}`", precision, str(entry.get("target", MISSING)), _fmt(entry.get("bytes"), "mb")],
                          row))
    base = next((v for v in report.get("variants") or [] if isinstance(v, dict) and v.get("name") == "unpruned"), None)
    if base:
        lines.append((["unpruned baseline (not in the bundle)", str(base.get("precision") or "fp32"), "any",
                       _fmt(base.get("onnx_bytes"), "mb")], base))
    metrics = [[("" if c.vs_ref and v is fp32 else _cell(c, v, fp32)) for c in task.metrics] for _, v in lines]
    keep = [i for i, c in enumerate(task.metrics) if c.show == "always" or any(m[i] not in (MISSING, "") for m in metrics)]
    head = ["file", "precision", "target", "MB", *(task.metrics[i].head for i in keep), "p50 ms", "peak RSS MB"]
    rows = [[*cells, *(m[i] for i in keep), _fmt(v.get("latency_ms_p50"), "adaptive"), _fmt(v.get("peak_rss_mb"), "adaptive")]
            for (cells, v), m in zip(lines, metrics)]
    return head, rows


def _done_lines(manifest: dict[str, Any], report: dict[str, Any], source_name: str) -> list[str]:
    task = _task(manifest)
    stages = manifest.get("stages") or {}
    chosen = stages.get("bundle_variant") or MISSING
    lines = [f"**Source model**: `{source_name}` ({(manifest.get('source_model') or {}).get('family', MISSING)})."]
    vocab = report.get("vocab") or {}
    info = (stages.get("compress") or {}).get(chosen) or {}
    if vocab:
        used = vocab.get("train_distinct_ids")
        kept_more = _num(used) is not None and _num(vocab.get("kept_rows")) is not None and vocab["kept_rows"] > used + 10
        lines.append(f"**Vocabulary pruning (DEP)**: the embedding keeps {_fmt(vocab.get('kept_rows'), 'int')} of "
                     f"{_fmt(vocab.get('original_rows'), 'int')} token rows"
                     + (f": the {_fmt(used, 'int')} {task.corpus} uses, and the first {_fmt(vocab.get('keep_top'), 'int')} "
                        "of the vocabulary (keep_top)" if kept_more else f", the ones {task.corpus} uses")
                     + f"; other ids go to the `{vocab.get('fallback') or MISSING}` kept row inside the graph, so the "
                     f"original tokenizer.json is used unchanged (eval OOV rate {_fmt(vocab.get('eval_oov_rate'), 'pct')}%).")
        if (info.get("options") or {}).get("exact_seen"):
            lines.append(f"**Head and tail**: the rows {task.corpus} uses stay exact; every other kept row is compressed "
                         "(below), so a word the corpus never used still has a row of its own.")
    method = info.get("method")
    if method and method != "table":
        opts = ", ".join(f"{k}={v}" for k, v in (info.get("options") or {}).items())
        lines.append(f"**Embedding compression**: `{method}`" + (f" ({opts})" if opts else "")
                     + (f", {task.distilled}" if info.get("distill") else "") + ".")
    elif method == "table":
        lines.append("**Embedding compression**: none (the pruned table is kept as it is).")
    training = task.training(report)
    lines += [training] if training else []
    export = stages.get("export") or {}
    lines.append(f"**Export**: ONNX opset {export.get('opset', MISSING)} with {export.get('exporter', MISSING)}; "
                 "outputs checked against PyTorch before the bundle was written." + task.export_note)
    quantized = [a for a in manifest.get("artifacts") or []
                 if str(a.get("file", "")).endswith((".onnx", ".ort")) and a.get("variant") != "fp32"]
    if quantized:
        kernels = {v.get("file") for v in report.get("variants") or [] if runs_int4_as_int8(v)}
        lines.append("**Quantization** (ONNX Runtime): " + ", ".join(
            f"`{a['file']}` ({a['variant']} for {a['target']}"
            + ("; its 4-bit weights are stored INT4, one scale per output column, and cast to int8 when ONNX Runtime "
               "loads the file: 4-bit on disk, int8 in memory and speed; opset 21, tested with onnxruntime 1.31.1"
               if a["file"] in kernels else "") + ")"
            for a in quantized) + f"; {task.checked}.")
    else:
        lines.append("**Quantization**: none; `model.onnx` is float32.")
    return lines


def render_card(manifest: dict[str, Any], report: dict[str, Any], *, source: dict[str, Any] | None = None,
                files: set[str] | None = None) -> str:
    """The whole card as text. `source` is the source model's card header (source_card_header);
    `files` the bundle root's file names (default: the manifest's artifacts), which say whether
    the bundle also loads in sentence-transformers (modules.json)."""
    import yaml

    task = _task(manifest)
    files = _artifact_files(manifest) if files is None else set(files)
    header = card_header(manifest, report, source or {}, files=files)
    info = manifest.get("task") or {}
    source_name = str((manifest.get("source_model") or {}).get("name") or MISSING)
    head, rows = footprint_table(manifest, report)
    out = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
           "# " + task.title.format(task=info.get("name", MISSING), source=source_name.rsplit("/", 1)[-1]), "",
           task.about(manifest, report, source_name), "",
           "## What was done", "", *[f"- {line}" for line in _done_lines(manifest, report, source_name)], "",
           f"## {task.table_heading}", "", task.table_intro(report), "",
           "| " + " | ".join(_md_cell(h) for h in head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    out += ["", *task.extra(manifest, report)]
    out += ["## How to use", "", *task.usage(manifest, report, task, files)]
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
    text = render_card(manifest, report, source=source_card_header(source_dir),
                       files={p.name for p in bundle.iterdir()})
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
