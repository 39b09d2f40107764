"""The real all-MiniLM-L6-v2 on real task data (../shared/data), with small fine-tune budgets:
the same `embslim run` command on SST-2, CLINC150 (151 labels) and MRPC (sentence pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embslim.pipeline.cli import main
from embslim.runtime import Classifier
from embslim.runtime.manifest import read_manifest

pytestmark = pytest.mark.slow

QUICK = ["--max-length", "64", "--batch-size", "16", "--latency-runs", "20"]


@pytest.fixture(scope="module")
def sst2_bundle(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("sst2") / "bundle"
    assert main(["run", "--config", "configs/sst2-demo.toml", "--data-root", str(shared_data), "--out", str(out),
                 "--max-train-samples", "1000", "--targets", "arm64", "--no-int4", "--no-mobile", "--allow-drop", *QUICK]) == 0
    return out


def test_sst2_dep_keeps_under_40_percent_and_matches_pytorch(sst2_bundle):
    report = json.loads((sst2_bundle / "report.json").read_text())
    vocab = report["vocab"]
    assert vocab["original_rows"] == 30522
    assert vocab["train_distinct_ids"] == 11572          # the SST-2 training text's ids (issue #2)
    assert vocab["kept_rows"] <= 0.40 * 30522
    assert vocab["eval_examples_with_oov"] == 309         # DESIGN.md: 309 of 872 dev sentences
    for variant in (v for v in report["variants"] if v["precision"] == "fp32"):
        assert variant["agreement"] == 1.0 and variant["max_logit_diff"] <= 1e-4, variant["name"]
        assert variant["n_eval"] == 872
    by_name = {v["name"]: v for v in report["variants"]}
    dep, unpruned, int8 = by_name["dep"], by_name["unpruned"], by_name["dep int8-arm64"]
    assert dep["onnx_bytes"] < 0.75 * unpruned["onnx_bytes"]
    assert int8["onnx_bytes"] < 0.3 * dep["onnx_bytes"] and int8["agreement_fp32"] >= 0.9
    assert dep["embedding_params"] == vocab["kept_rows"] * 384


def test_optimum_loads_the_bundle_and_predicts_what_runtime_predicts(sst2_bundle, shared_data):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from embslim.pipeline.data import DataConfig, load_task
    from embslim.pipeline.model import resolve_model

    task = load_task(DataConfig(train="sst2/train.tsv", eval="sst2/dev.tsv"), data_root=str(shared_data))
    texts = list(task.eval.texts[:96])
    clf = Classifier.from_bundle(sst2_bundle)
    ours = [p.label for p in clf.predict(texts)]
    model = ORTModelForSequenceClassification.from_pretrained(sst2_bundle)
    stock = AutoTokenizer.from_pretrained(resolve_model("default"))   # the stock tokenizer, not the bundle's copy
    theirs = []
    for i in range(0, len(texts), 32):
        enc = stock(texts[i:i + 32], padding=True, truncation=True, max_length=clf.max_length, return_tensors="np")
        theirs += [model.config.id2label[int(k)] for k in np.argmax(model(**enc).logits, -1)]
    assert ours == theirs


def test_clinc150_151_labels_same_command(tmp_path, shared_data):
    out = tmp_path / "clinc"
    assert main(["run", "--train", "clinc150/data_full.json", "--data-root", str(shared_data), "--out", str(out),
                 "--max-steps", "10", "--no-baseline", "--no-measure", "--targets", "", *QUICK]) == 0
    manifest = read_manifest(out)
    assert len(manifest["task"]["labels"]) == 151 and "oos" in manifest["task"]["labels"]
    dep = manifest["metrics"]["dep"]
    assert dep["n_eval"] == 3100 and "macro_f1" in dep and dep["agreement"] == 1.0


def test_mrpc_sentence_pairs_same_command(tmp_path, shared_data):
    out = tmp_path / "mrpc"
    assert main(["run", "--train", "mrpc/train.tsv", "--eval", "mrpc/dev.tsv", "--data-root", str(shared_data),
                 "--text-column", "#1 String", "--text-pair-column", "#2 String", "--label-column", "Quality",
                 "--out", str(out), "--max-steps", "5", "--no-baseline", "--no-measure", "--targets", "", *QUICK]) == 0
    manifest = read_manifest(out)
    assert manifest["task"]["pair"] is True and manifest["metrics"]["dep"]["n_eval"] == 408
    assert "f1" in manifest["metrics"]["dep"]
    clf = Classifier.from_bundle(out)
    preds = clf.predict([("The cat sat on the mat .", "A cat was sitting on the mat .")])
    assert preds[0].label in ("0", "1") and abs(sum(preds[0].probabilities.values()) - 1) < 1e-6
