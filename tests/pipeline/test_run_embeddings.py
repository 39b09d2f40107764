"""`embslim run --task feature-extraction` end to end on a tiny sentence-transformers model.

One run (module fixture) builds the bundle; the tests read what it wrote and load it the ways a
user would: embslim.runtime.Embedder, sentence-transformers' ONNX backend and Optimum's
ORTModelForFeatureExtraction, which must all give the same vectors.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from embslim.pipeline.cli import main
from tiny_models import make_tiny_sentence_model_dir

INTENTS = {"weather": ("what is the weather in {}", "will it rain in {}", "is there sun in {}"),
           "transfer": ("transfer money to {}", "send money to my {} bank", "move my balance to {}"),
           "music": ("play a song by {}", "play music from {}", "play the best {} song")}
PLACES = ("paris", "london", "mom", "card", "bank", "set", "story", "film")


def _texts(k: int) -> list[str]:
    return [t.format(p) for t, p in itertools.product(INTENTS[k], PLACES)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("emb")
    model = make_tiny_sentence_model_dir(root / "st", pooling="mean", dense=1, normalize=True)
    rows = [(t, k) for k in INTENTS for t in _texts(k)]
    held = rows[3::5]   # 5 is prime to the 8 places: every word of the held-out texts is in the training ones
    train = [r for r in rows if r not in held]
    (root / "train.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{k}\n" for t, k in train))
    (root / "eval.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{k}\n" for t, k in held))
    pairs = [(a, b, int(ka == kb)) for i, ((a, ka), (b, kb)) in enumerate(zip(rows, rows[5:] + rows[:5])) if i % 3 == 0]
    pairs += [(a, b, 0) for (a, _), (b, _) in zip(rows[:24:4], rows[24::4])]
    (root / "pairs.tsv").write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in pairs))
    out = root / "bundle"
    code = main(["run", "--task", "feature-extraction", "--model", str(model), "--train", str(root / "train.tsv"),
                 "--eval", str(root / "eval.tsv"), "--pair-data", str(root / "pairs.tsv"), "--out", str(out),
                 "--variant", "dep", "--variant", "svd:rank=4", "--variant", "svd+distill:rank=4",
                 "--epochs", "3", "--learning-rate", "5e-3", "--batch-size", "8", "--max-length", "32",
                 "--targets", "arm64", "--int4", "--mobile", "--allow-drop", "--no-measure"])
    assert code == 0
    return out


def test_inspect_describes_the_embedder(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "feature-extraction: 24-d sentence embeddings, mean pooling, normalised" in out
    assert "dep: cosine to the original mean" in out and "kNN accuracy" in out


def test_bundle_manifest_and_files(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    task = manifest["task"]
    assert task["type"] == "feature-extraction" and task["labels"] == []
    assert task["embedding"] == {"pooling": "mean", "normalize": True, "dense": 1, "source": "sentence-transformers",
                                 "dim": 24}
    files = {a["file"] for a in manifest["artifacts"]}
    assert {"model.onnx", "model.int8-arm64.onnx", "model.int8-arm64.ort", "model.int4-arm64.onnx", "modules.json",
            "1_Pooling/config.json", "2_Dense/model.safetensors"} <= files


def test_report_rows_carry_the_embedding_metrics(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["name"]: r for r in report["variants"]}
    assert list(rows)[0] == "unpruned"
    for name in ("unpruned", "dep", "dep+svd(rank=4)", "dep+svd(rank=4)+distill"):
        r = rows[name]
        assert 0 <= r["knn_accuracy"] <= 1 and 0 <= r["pair_auc"] <= 1
        assert -1 <= r["cosine_min"] <= r["cosine_p1"] <= r["cosine_mean"] <= 1 + 1e-6
        assert r["max_abs_diff"] < 1e-4
    assert rows["unpruned"]["cosine_min"] > 0.99999   # the given model itself
    # every eval word is in the corpus (the same templates), so DEP keeps every row the eval uses
    assert rows["dep"]["cosine_min"] > 0.99999
    svd, distilled = rows["dep+svd(rank=4)"], rows["dep+svd(rank=4)+distill"]
    assert distilled["cosine_mean"] > svd["cosine_mean"]
    quantized = [r for r in report["variants"] if r.get("base")]
    assert quantized and all("cosine_fp32_mean" in r and "knn_accuracy" in r for r in quantized)
    assert report["task"]["knn"]["n_index"] > 0 and report["task"]["pairs"]["n_pairs"] > 0
    assert report["model"]["pooling"] == "mean" and report["model"]["embedding_dim"] == 24
    warned = [n for n in report["notes"] if n.startswith("WARNING ")]   # svd rank 4 is far from the original
    assert warned and all("--keep-top 30522" in n for n in warned) and any("dep+svd(rank=4):" in n for n in warned)
    assert not any(n.startswith("WARNING dep:") for n in warned) and not any("latency" in n for n in report["notes"])


def _forty_texts() -> list[str]:
    return [t for k in INTENTS for t in _texts(k)][:36] + ["a", "what is it", "zebra quokka unseen words", "play"]


def test_embedder_equals_sentence_transformers_onnx_and_optimum(run_dir: Path) -> None:
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from embslim.runtime import Embedder

    texts = _forty_texts()
    assert len(texts) == 40
    ours = Embedder.from_bundle(run_dir).encode(texts)
    assert ours.dtype == np.float32 and ours.shape == (40, 24)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    st = SentenceTransformer(str(run_dir), backend="onnx", device="cpu", model_kwargs={"file_name": "model.onnx"})
    np.testing.assert_allclose(st.encode(texts), ours, atol=1e-5)

    # Optimum's class returns the token states (last_hidden_state); a user pools them and applies the
    # bundle's Dense and Normalize modules (as sentence-transformers does), which must give Embedder's vectors.
    from safetensors.numpy import load_file

    tok = AutoTokenizer.from_pretrained(run_dir)
    model = ORTModelForFeatureExtraction.from_pretrained(run_dir, file_name="model.onnx")
    enc = tok(texts, padding=True, return_tensors="np")
    hidden = np.asarray(model(**enc).last_hidden_state)
    mask = enc["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    dense = load_file(str(run_dir / "2_Dense" / "model.safetensors"))
    vec = np.tanh(pooled @ dense["linear.weight"].T + dense["linear.bias"])
    np.testing.assert_allclose(vec / np.linalg.norm(vec, axis=1, keepdims=True), ours, atol=1e-5)

    # The int8 file: sentence-transformers applies the Dense layer in fp32 torch, the graph in int8,
    # so the two agree to quantization error, not to 1e-5.
    int8 = Embedder.from_bundle(run_dir, file="model.int8-arm64.onnx").encode(texts)
    st8 = SentenceTransformer(str(run_dir), backend="onnx", device="cpu",
                              model_kwargs={"file_name": "model.int8-arm64.onnx"}).encode(texts)
    assert (st8 * int8).sum(1).min() > 0.999


def test_classifier_refuses_the_embedding_bundle(run_dir: Path) -> None:
    from embslim.runtime import BundleError, Classifier

    with pytest.raises(BundleError, match="Embedder") as e:
        Classifier.from_bundle(run_dir)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["pooling-without-task", "classifier-model", "plain-encoder", "bad-pair-data",
                                  "finetune-subcommand"])
def test_bad_embedding_runs_fail_in_one_line_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            case: str) -> None:
    from tiny_models import make_tiny_model_dir

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(_texts("music") + _texts("weather")) + "\n")
    st = make_tiny_sentence_model_dir(tmp_path / "st")
    out = tmp_path / "out"
    base = ["run", "--text", str(texts), "--out", str(out), "--no-measure", "--targets", ""]
    argv, expected = {
        "pooling-without-task": (base + ["--model", str(st), "--pooling", "cls"], "need --task feature-extraction"),
        "classifier-model": (base + ["--task", "feature-extraction", "--model",
                                     str(make_tiny_model_dir(tmp_path / "clf", head="sequence"))], "text-classification model"),
        "plain-encoder": (base + ["--task", "feature-extraction", "--model", str(make_tiny_model_dir(tmp_path / "enc"))],
                          "--pooling mean|cls|max"),
        "bad-pair-data": (base + ["--task", "feature-extraction", "--model", str(st), "--pair-data", str(texts)],
                          "--pair-data"),
        "finetune-subcommand": (["finetune", "--task", "feature-extraction", "--model", str(st), "--text", str(texts),
                                 "--out", str(out)], "kept as trained"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "out.work").exists()


def test_a_bundle_given_as_model_names_its_source(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("play a song\ncall mom\n")
    assert main(["run", "--task", "feature-extraction", "--model", str(run_dir), "--text", str(texts),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is an embslim bundle (ONNX files, no PyTorch weights); pass the model it was made from" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_int4_weights_on_the_int8_kernels_for_an_embedder(run_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """`embslim quantize --int4 --int4-kernel int8` on a sentence-embedding bundle: the graph (mean pooling,
    Dense, Normalize) goes to opset 21 for its INT4 weights, and Embedder loads the file."""
    import shutil

    import onnx

    from embslim.runtime import Embedder

    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir, bundle)
    code = main(["quantize", str(bundle), "--train", str(run_dir.parent / "train.tsv"),
                 "--eval", str(run_dir.parent / "eval.tsv"), "--targets", "arm64", "--int4", "--int4-kernel", "int8",
                 "--allow-drop", "--no-measure"])
    assert code == 0
    model = onnx.load(str(bundle / "model.int4-arm64.onnx"))
    assert sum(i.data_type == onnx.TensorProto.INT4 for i in model.graph.initializer) >= 12   # 2 layers x 6 MatMuls
    assert not any(n.op_type == "MatMulNBits" for n in model.graph.node)
    texts = _forty_texts()
    fp32 = Embedder.from_bundle(bundle, variant="fp32").encode(texts)
    int4 = Embedder.from_bundle(bundle, variant="int4").encode(texts)
    cosine = (fp32 * int4).sum(-1) / np.linalg.norm(fp32, axis=-1) / np.linalg.norm(int4, axis=-1)
    assert cosine.mean() > 0.95
    row = next(v for v in json.loads((bundle / "report.json").read_text())["variants"]
               if v.get("file") == "model.int4-arm64.onnx")
    assert row["int4"]["kernel"] == "int8"
    capsys.readouterr()
    assert main(["inspect", str(bundle)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "model.int4-arm64.onnx" in x)
    assert line.endswith("sha256 ok  (4-bit weights, run as int8: int8 speed and memory)")


def test_mixed_gptq_on_the_int8_kernels_gathers_its_hessians_once(run_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`embslim quantize --mixed --int4-kernel int8 --int4-algorithm gptq`: GPTQ's input statistics come from one
    pass over the calibration texts, shared by the sensitivity pass and every candidate file the bisection builds."""
    import shutil

    from embslim.exporters import quantize as quantize_module

    passes = []
    real = quantize_module.input_hessians

    def counted(model, tensors, feeds):   # the real function, counted
        passes.append(len(tensors))
        return real(model, tensors, feeds)

    monkeypatch.setattr(quantize_module, "input_hessians", counted)
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir, bundle)
    assert main(["quantize", str(bundle), "--train", str(run_dir.parent / "train.tsv"),
                 "--eval", str(run_dir.parent / "eval.tsv"), "--targets", "arm64", "--mixed", "--int4-kernel", "int8",
                 "--int4-algorithm", "gptq", "--allow-drop", "--no-measure"]) == 0
    row = next(v for v in json.loads((bundle / "report.json").read_text())["variants"]
               if v.get("file") == "model.mixed-arm64.onnx")
    assert (row["int4"]["kernel"], row["int4"]["algorithm"]) == ("int8", "gptq")
    assert len(row["mixed"]["groups"]) > 2                   # a bisection over them builds several files
    assert len(passes) == 1 and passes[0] >= 8               # one pass, every MatMul input of the 2-layer graph
