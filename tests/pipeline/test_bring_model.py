"""Bring the model you have: an already fine-tuned classifier keeps its head and labels (matched to
the data's by name), `--no-finetune` bundles it as it is, `--text` prunes on unlabelled text, and
`--task` refuses models whose head does not fit. Tiny random BERT and RoBERTa models, in process."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from embslim.pipeline.cli import main
from embslim.runtime import Classifier
from embslim.runtime.manifest import read_manifest
from tiny_models import make_tiny_model_dir

INTENTS = {0: "weather", 1: "book_flight", 2: "play_music"}
WORDS = {"weather": "weather rain sun paris london", "book_flight": "transfer bank card money paris",
         "play_music": "play song music set alarm"}
FAST = ["--batch-size", "8", "--max-length", "32", "--no-measure", "--targets", ""]


def _texts(label: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = WORDS[label].split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 7))) for _ in range(n)]


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


@pytest.fixture(scope="module", params=["bert", "roberta"])
def classifier_dir(request, tmp_path_factory) -> Path:
    """A 'fine-tuned' 3-intent classifier with named labels (random weights: its predictions are what they are)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp(f"clf-{request.param}"), family=request.param, num_labels=3,
                               head="sequence", id2label=INTENTS, seed=1)


def _torch_predictions(model_dir: Path, texts: list[str]) -> list[str]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        logits = model(**tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
    return [model.config.id2label[int(i)] for i in logits.argmax(-1)]


def test_permuted_data_labels_keep_the_models_names_and_predictions(classifier_dir, tmp_path):
    # The data lists the labels in another order than the model's ids (and would sort differently).
    rows = [(t, y) for y in ("play_music", "weather", "book_flight") for t in _texts(y, 12, seed=len(y))]
    random.Random(0).shuffle(rows)
    train = _csv(tmp_path / "train.csv", rows[:24])
    dev = _csv(tmp_path / "dev.csv", rows[24:])
    out = tmp_path / "bundle"
    assert main(["run", "--model", str(classifier_dir), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--no-finetune", "--format", "csv", *FAST]) == 0
    manifest = read_manifest(out)
    assert manifest["task"]["labels"] == ["weather", "book_flight", "play_music"], "the model's id order, not the data's"
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(k): v for k, v in INTENTS.items()}
    texts = [t for t, _ in rows[24:]]
    ours = [p.label for p in Classifier.from_bundle(out).predict(texts)]
    theirs = _torch_predictions(classifier_dir, texts)
    assert ours == theirs, "the bundle predicts the same label NAME as the source model for every text"
    dep = manifest["metrics"]["dep"]
    assert dep["original_agreement"] == 1.0 and dep["original_max_logit_diff"] < 1e-4
    report = json.loads((out / "report.json").read_text())
    assert report["finetune"]["enabled"] is False and report["model"]["head"].startswith("kept")


def test_an_unknown_data_label_is_one_line_naming_both_sets(classifier_dir, tmp_path, capsys):
    rows = [(t, "weather") for t in _texts("weather", 8, 1)] + [(t, "cancel_order") for t in _texts("play_music", 8, 2)]
    train = _csv(tmp_path / "train.csv", rows)
    code = main(["run", "--model", str(classifier_dir), "--train", str(train), "--out", str(tmp_path / "b"), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert "['cancel_order']" in err and "['weather', 'book_flight', 'play_music']" in err and "--new-head" in err
    assert not (tmp_path / "b").exists()


def test_new_head_trains_a_fresh_head_for_the_datas_labels(classifier_dir, tmp_path):
    rows = [(t, y) for y in ("pos", "neg") for t in _texts("weather" if y == "pos" else "play_music", 10, len(y))]
    train = _csv(tmp_path / "train.csv", rows)
    out = tmp_path / "bundle"
    assert main(["run", "--model", str(classifier_dir), "--train", str(train), "--out", str(out), "--new-head",
                 "--max-steps", "2", "--no-baseline", *FAST]) == 0
    assert read_manifest(out)["task"]["labels"] == ["neg", "pos"]


def test_text_only_prunes_and_compares_with_the_given_model(classifier_dir, tmp_path):
    corpus = tmp_path / "app-texts"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(_texts("weather", 30, 3) + _texts("book_flight", 30, 4)) + "\n")
    (corpus / "b.txt").write_text("\n".join(_texts("play_music", 30, 5)) + "\n\n")
    out = tmp_path / "bundle"
    assert main(["run", "--model", str(classifier_dir), "--text", str(corpus), "--no-finetune", "--out", str(out),
                 "--variant", "dep", "--variant", "svd:rank=8", "--variant", "svd+distill:rank=8",
                 "--max-steps", "3", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["eval_labels"] == "model" and report["task"]["n_texts"] + report["task"]["n_eval"] == 90
    rows = {r["name"]: r for r in report["variants"]}
    assert rows["unpruned"]["accuracy"] == 1.0, "no gold labels: accuracy is agreement with the given model"
    assert all("original_agreement" in r for r in rows.values())
    ft = report["finetune"]["seconds"]
    stages = read_manifest(out)["stages"]["finetune"]
    assert stages["dep"]["steps"] == 0 and stages["dep+svd(rank=8)"]["steps"] == 0
    assert stages["dep+svd(rank=8)+distill"]["steps"] == 3, "only the distilled variant learns"
    assert set(ft) == set(rows) - {n for n in rows if " " in n}
    assert read_manifest(out)["task"]["labels"] == list(INTENTS.values())


def test_epochs_zero_in_a_config_is_no_finetune(classifier_dir, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(_texts("weather", 20, 6)) + "\n")
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{classifier_dir}"\n[data]\ntexts = ["{tmp_path / "t.txt"}"]\n[finetune]\nepochs = 0\n'
                      'max_length = 32\n[validate]\nmeasure = false\n[targets]\ntargets = []\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["finetune"]["enabled"] is False


@pytest.mark.parametrize(("head", "flags", "pattern"), [
    ("token", [], r"model '.*' is a token classifier, which needs word-tagged data \(CoNLL"),
    ("token", ["--task", "text-classification"], r"is a token-classification model .* the run's task is text-classification"),
    (None, ["--no-finetune"], r"--no-finetune keeps the model as trained, but .* no text-classification head"),
    ("sequence", ["--no-finetune", "--new-head"], r"--no-finetune keeps the model as trained, but .*--new-head"),
    (None, ["--task", "feature-extraction"], r"is a plain encoder \(no sentence-transformers modules.json\); pass --pooling"),
    ("sequence", ["--task", "feature-extraction", "--pooling", "mean"], r"is a text-classification model .* the run's task is feature-extraction"),
])
def test_a_head_that_does_not_fit_exits_2_with_one_line(tmp_path, capsys, head, flags, pattern):
    import re

    model = make_tiny_model_dir(tmp_path / "m", num_labels=2, head=head,
                                id2label={0: "negative", 1: "positive"} if head else None)
    train = _csv(tmp_path / "train.csv", [(t, y) for y in ("negative", "positive") for t in _texts("weather", 6, len(y))])
    code = main(["run", "--model", str(model), "--train", str(train), "--out", str(tmp_path / "b"), *flags, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert re.search(pattern, err), err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.work").exists()


def test_the_bundle_config_and_tokenizer_tell_the_truth(tiny_model_dir, tmp_path):
    train = _csv(tmp_path / "train.csv", [(t, y) for y in ("negative", "positive") for t in _texts("weather", 8, len(y))])
    out = tmp_path / "bundle"
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--out", str(out), "--max-steps", "1",
                 "--trim-positions", "--no-baseline", "--batch-size", "8", "--max-length", "24", "--no-measure",
                 "--targets", ""]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"], "the source was a bare BertModel"
    assert config["max_position_embeddings"] == 24
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 24
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == 24 and tok["padding"]["strategy"] == {"Fixed": 24}
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(out)(["the movie " * 40], truncation=True)["input_ids"][0]
    assert len(ids) == 24, "transformers' consumers truncate where the graph stops"
    assert np.isfinite(Classifier.from_bundle(out).logits(["the movie " * 40])).all()


def test_integer_data_labels_are_the_models_class_ids(tmp_path, capsys):
    """GLUE's 0/1 for a model saved with negative/positive: integer i is the model's id i."""
    model = make_tiny_model_dir(tmp_path / "m", head="sequence", id2label={0: "negative", 1: "positive"}, seed=2)
    rows = [(t, y) for y in ("1", "0") for t in _texts("weather", 8, int(y))]
    dev = _csv(tmp_path / "dev.csv", rows)
    (tmp_path / "t.txt").write_text("\n".join(t for t, _ in rows) + "\n")
    out = tmp_path / "bundle"
    assert main(["run", "--model", str(model), "--text", str(tmp_path / "t.txt"), "--eval", str(dev), "--no-finetune",
                 "--out", str(out), "--no-baseline", *FAST]) == 0
    assert read_manifest(out)["task"]["labels"] == ["negative", "positive"]
    report = json.loads((out / "report.json").read_text())
    texts = [t for t, _ in rows]
    gold = [{"0": "negative", "1": "positive"}[y] for _, y in rows]
    theirs = _torch_predictions(model, texts)
    expected = np.mean([a == b for a, b in zip(theirs, gold)])
    assert report["variants"][0]["accuracy"] == pytest.approx(expected), "dev accuracy scored against id i = name i"
    bad = _csv(tmp_path / "bad.csv", rows + [("rain sun", "2")])
    code = main(["run", "--model", str(model), "--text", str(tmp_path / "t.txt"), "--eval", str(bad), "--no-finetune",
                 "--out", str(tmp_path / "b2"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "data label(s) ['0', '1', '2'] are not among the model's" in err


def test_the_python_api_builds_the_same_configs_as_the_cli(classifier_dir, tmp_path):
    import embslim

    (tmp_path / "t.txt").write_text("\n".join(_texts("play_music", 20, 7) + _texts("weather", 20, 8)) + "\n")
    cfg = embslim.RunConfig(model=str(classifier_dir), data=embslim.DataConfig(texts=(str(tmp_path / "t.txt"),)),
                            finetune=embslim.FinetuneConfig(enabled=False, max_length=32),
                            validate=embslim.ValidateConfig(measure=False), targets=embslim.TargetsConfig(targets=()))
    out = embslim.run(cfg, out=tmp_path / "bundle")
    assert read_manifest(out)["task"]["labels"] == list(INTENTS.values())
    assert embslim.config_from_dict({"model": str(classifier_dir), "data": {"texts": [str(tmp_path / "t.txt")]},
                                     "finetune": {"epochs": 0, "max_length": 32}, "validate": {"measure": False},
                                     "targets": {"targets": []}}).finetune.enabled is False


@pytest.mark.parametrize(("make", "pattern"), [
    (lambda e: e.DataConfig(texts="train.txt"), r"DataConfig: texts must be a list of strings, got str 'train.txt'; "
                                                r"e\.g\. texts = \[\"train\.txt\"\]"),
    (lambda e: e.TargetsConfig(targets="arm64"), r"TargetsConfig: targets must be a list of values from 'arm64'"),
    (lambda e: e.FinetuneConfig(epochs="two"), r"FinetuneConfig: epochs must be a number, got str 'two'; e\.g\. epochs = 1\.0"),
    (lambda e: e.ValidateConfig(measure="no"), r"ValidateConfig: measure must be true or false"),
    (lambda e: e.PruneConfig(keep_top=1.5), r"PruneConfig: keep_top must be an integer, got float 1\.5"),
])
def test_the_python_api_configs_check_their_own_types(make, pattern):
    import embslim

    with pytest.raises(ValueError, match=pattern):
        make(embslim)


def test_a_name_that_is_neither_a_folder_nor_reachable_fails_at_once(tmp_path, capsys, monkeypatch):
    """Where the hub is cut off (as here), a mistyped folder name is one line, not ~30 s of retries."""
    import socket
    import time

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)   # the same answer on machines that do reach the hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    train = _csv(tmp_path / "train.csv", [(t, y) for y in ("a", "b") for t in _texts("weather", 6, len(y))])
    t0 = time.perf_counter()
    code = main(["run", "--model", "no-such-local-folder", "--train", str(train), "--out", str(tmp_path / "b"), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.perf_counter() - t0 < 10
    assert err.splitlines()[-1].endswith("pass --model with a local folder (./no-such-local-folder if it is one in "
                                         "this directory) or connect to the network")
    assert "Retrying" not in err and "Traceback" not in err
