"""`embslim run --task token-classification` end to end on tiny random taggers (WordPiece BERT and
byte-level BPE RoBERTa): CoNLL in, a bundle out that `Tagger` loads, entity F1 per file, parity
with PyTorch, a kept tagger head, every compressor, and one-line refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tiny_models import make_tiny_bpe_model_dir, make_tiny_model_dir

from embslim.pipeline.cli import main
from embslim.runtime import Tagger, load_bundle

FAST = ["--batch-size", "8", "--max-length", "32", "--no-measure", "--targets", ""]
PLACES, PEOPLE = ("paris", "london"), ("mom", "she", "he")
FILLER = "the weather was good at it and with my money play song call".split()


def _sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences whose entities a tiny model can learn from the word alone: places and people."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, rng.randint(2, 5))]
        words.insert(rng.randint(0, len(words)), (rng.choice(PLACES), "B-location"))
        if rng.random() < 0.6:
            words.insert(rng.randint(0, len(words)), (rng.choice(PEOPLE), "B-person"))
        out.append(words)
    return out


def _conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("conll")
    return _conll(folder / "train.conll", _sentences(120, 0)), _conll(folder / "dev.conll", _sentences(30, 1))


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_tagger_bundle_round_trips_through_export_and_the_runtime(family, data, tmp_path):
    maker = make_tiny_model_dir if family == "bert" else make_tiny_bpe_model_dir
    model = maker(tmp_path / "m")
    train, dev = data
    out = tmp_path / "b"
    code = main(["run", "--model", str(model), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--epochs", "3", "--learning-rate", "5e-3", *FAST])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["variants"]}
    assert report["model"]["task"] == "token-classification" and set(rows) == {"dep", "unpruned"}
    for row in rows.values():
        assert row["agreement"] == 1.0 and row["max_logit_diff"] < 1e-4 and row["torch_f1"] == row["f1"]
        assert row["n_eval"] == 30 and row["n_entities"] == 30 + sum(1 for ln in dev.read_text().split("\n") if "B-person" in ln)
    assert rows["dep"]["f1"] > 0.5, "places and people are learnable from the word alone"
    assert set(rows["dep"]["per_type"]) == {"location", "person"}
    tagger = load_bundle(out)
    assert isinstance(tagger, Tagger) and tagger.labels == ("O", "B-location", "I-location", "B-person", "I-person")
    text = "the weather in  paris was good"
    spans = tagger.tag(text, aggregation_strategy="first")
    assert all(text[s["start"]:s["end"]] == s["word"].strip() or family == "roberta" for s in spans)
    assert any(s["entity_group"] == "location" and text[s["start"]:s["end"]] == "paris" for s in spans), spans
    assert "Entity F1 per type" in (out / "report.md").read_text()
    from embslim.pipeline.embedding import load_checkpoint

    checkpoint, _, meta = load_checkpoint(tmp_path / "b.work" / "checkpoint-dep")   # what `embslim export` reads
    assert type(checkpoint).__name__.endswith("ForTokenClassification") and meta["task_type"] == "token-classification"
    # `embslim validate` scores the bundle on another tagged file, parity against the checkpoint included
    assert main(["validate", str(out), "--train", str(train), "--eval", str(dev), "--no-measure",
                 "--checkpoint", str(tmp_path / "b.work" / "checkpoint-dep"), "--json", str(tmp_path / "v.json")]) == 0
    validated = json.loads((tmp_path / "v.json").read_text())
    assert validated["f1"] == rows["dep"]["f1"] and validated["agreement"] == 1.0


def test_every_compressor_round_trips_for_a_tagger(data, tmp_path):
    model = make_tiny_model_dir(tmp_path / "m")
    train, dev = data
    out = tmp_path / "b"
    variants = ["dep", "svd:rank=8", "messi:k=2,j=4", "subembed", "fourier"]
    code = main(["run", "--model", str(model), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--task", "token-classification", "--max-steps", "4", "--no-baseline",
                 *[a for v in variants for a in ("--variant", v)], *FAST])
    assert code == 0
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["variants"]}
    assert len(rows) == len(variants)
    assert all(r["agreement"] == 1.0 and r["max_logit_diff"] < 1e-4 for r in rows.values()), rows


def test_a_kept_tagger_head_keeps_its_labels_without_finetuning(data, tmp_path):
    labels = {0: "O", 1: "B-person", 2: "I-person", 3: "B-location", 4: "I-location"}   # not the data's order
    model = make_tiny_model_dir(tmp_path / "m", num_labels=5, head="token", id2label=labels)
    _, dev = data
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(" ".join(w for w, _ in s) for s in _sentences(40, 2)) + "\n")
    out = tmp_path / "b"
    assert main(["run", "--model", str(model), "--text", str(texts), "--eval", str(dev), "--out", str(out),
                 "--no-finetune", *FAST]) == 0
    assert Tagger.from_bundle(out).labels == tuple(labels.values())
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["variants"]}
    assert rows["unpruned"]["original_agreement"] == 1.0 and "f1" in rows["dep"]


@pytest.mark.parametrize(("make", "flags", "pattern"), [
    ("csv", ["--task", "token-classification"], r"--task token-classification needs word-tagged data"),
    ("conll", ["--task", "text-classification"], r"the data is word-tagged .* pass --task token-classification"),
    ("ragged", [], r"train\.conll:2: 1 column\(s\)"),
])
def test_bad_tagger_inputs_exit_2_with_one_line(tmp_path, capsys, make, flags, pattern):
    import re

    model = make_tiny_model_dir(tmp_path / "m")
    if make == "csv":
        train = tmp_path / "train.csv"
        train.write_text("sentence,label\n" + "".join(f"paris is good {i},a\nmom is bad {i},b\n" for i in range(6)))
    else:
        train = _conll(tmp_path / "train.conll", _sentences(10, 0))
        if make == "ragged":
            lines = train.read_text().split("\n")
            lines[1] = lines[1].split("\t")[0]
            train.write_text("\n".join(lines))
    code = main(["run", "--model", str(model), "--train", str(train), "--out", str(tmp_path / "b"), *flags, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert re.search(pattern, err), err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.work").exists()


def test_quantized_tagger_files_are_scored_and_load(data, tmp_path):
    model = make_tiny_model_dir(tmp_path / "m")
    train, dev = data
    out = tmp_path / "b"
    fast = [a for a in FAST if a not in ("--targets", "")]
    assert main(["run", "--model", str(model), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--task", "token-classification", "--max-steps", "4", "--no-baseline", "--targets", "arm64,avx2",
                 "--int4", "--mobile", "--allow-drop", *fast]) == 0
    rows = [r for r in json.loads((out / "report.json").read_text())["variants"] if r.get("base")]
    assert {r["precision"] for r in rows} >= {"int8", "int4"} and len(rows) >= 4
    for r in rows:
        assert 0 <= r["f1"] <= 1 and 0 < r["agreement_fp32"] <= 1 and "per_type" in r
        assert r["f1_drop_vs_fp32"] == pytest.approx(rows[0]["f1"] - r["f1"] + rows[0]["f1_drop_vs_fp32"])
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["file"].endswith((".onnx", ".ort")) and entry["variant"] != "fp32":
            tagger = Tagger.from_bundle(out, file=entry["file"])
            assert len(tagger.token_outputs(["paris is good"])[0].logits) == 5


def test_a_fresh_head_follows_the_run_seed(tiny_model_dir, data):
    """Two loads with one seed give one initial head (a rerun is the same run); another seed, another."""
    from embslim.pipeline.data import DataConfig
    from embslim.pipeline.finetune import FinetuneConfig
    from embslim.pipeline.run import RunConfig, load_inputs

    def head(seed: int):
        cfg = RunConfig(model=str(tiny_model_dir), data=DataConfig(train=str(data[0]), eval=str(data[1])),
                        finetune=FinetuneConfig(seed=seed))
        return load_inputs(cfg)[1].model.classifier.weight.detach().clone()

    first = head(3)
    assert (head(3) == first).all() and not (head(4) == first).all()
