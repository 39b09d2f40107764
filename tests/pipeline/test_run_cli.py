"""`embslim` end to end on a tiny model: the run command, the stage commands, bundle integrity,
runtime and Optimum agreement, and one-line errors for bad input (in process via main())."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from embslim.pipeline.cli import main
from tiny_models import write_task_tsv
from embslim.runtime import BundleError, Classifier
from embslim.runtime.manifest import read_manifest, sha256_file

FAST = ["--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--latency-runs", "3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_task):
    root = tmp_path_factory.mktemp("run")
    train, dev = write_task_tsv(root / "data", tiny_task)
    out = root / "bundle"
    code = main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--targets", "arm64,avx2", "--int4", "--mobile", "--static-int8", "--allow-drop", *FAST])
    assert code == 0
    return out, train, dev


def test_run_writes_a_complete_verified_bundle(tiny_run):
    out, _, _ = tiny_run
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "model.onnx", "tokenizer.json", "config.json", "report.json", "report.md", "report.html", "plots"} <= names
    manifest = read_manifest(out)
    for entry in manifest["artifacts"]:
        assert sha256_file(out / entry["file"]) == entry["sha256"]
        assert (out / entry["file"]).stat().st_size == entry["bytes"]
    assert manifest["task"]["labels"] == ["negative", "positive"] and manifest["task"]["max_length"] == 32
    assert set(manifest["metrics"]) == {"dep", "unpruned", "dep int8-arm64", "dep int8-arm64-ort", "dep int8-avx2",
                                        "dep int4-arm64", "dep int8-static-arm64", "dep int8-static-avx2"}
    files = {e["file"]: e for e in manifest["artifacts"]}
    assert files["model.int8-avx2.onnx"]["target"] == "avx2" and files["model.int8-arm64.ort"]["variant"] == "int8-ort"
    assert "required_operators.config" in files and "model.int4-arm64.onnx" in files
    int4_ops = {n.op_type for n in onnx.load(str(out / "model.int4-arm64.onnx")).graph.node}
    assert "MatMulNBits" in int4_ops and "Attention" not in int4_ops, "4-bit is built from the graph without fused Attention"
    assert "QAttention" in {n.op_type for n in onnx.load(str(out / "model.int8-arm64.onnx")).graph.node}
    assert manifest["metrics"]["dep int8-avx2"]["onnx_bytes"] < manifest["metrics"]["dep"]["onnx_bytes"] / 2
    dep = manifest["metrics"]["dep"]
    assert dep["agreement"] == 1.0 and dep["max_logit_diff"] <= 1e-4
    assert dep["latency_ms_p50"] > 0 and dep["peak_rss_mb"] > 10
    report = json.loads((out / "report.json").read_text())
    vocab = report["vocab"]
    assert vocab["kept_rows"] < vocab["original_rows"] and 0 <= vocab["eval_oov_rate"] < 1
    assert report["variants"][1]["onnx_bytes"] < report["variants"][0]["onnx_bytes"]
    # on this x86 machine "auto" picks the avx2 int8 artifact (the dynamic one, also with static files listed)
    assert Classifier.from_bundle(out, variant="auto").model_path.name == "model.int8-avx2.onnx"
    # static int8 (--static-int8): QDQ, calibrated on the training texts; its labels do not depend on the batch
    static = manifest["metrics"]["dep int8-static-avx2"]
    assert files["model.int8-static-avx2.onnx"]["variant"] == "int8-static" and static["file"] == "model.int8-static-avx2.onnx"
    assert static["batch_flips"] == 0 and static["batch_flips_batch_size"] == 32 and static["agreement_fp32"] >= 0.9
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out / "model.int8-static-arm64.onnx")).graph.node}
    assert all("batch_flips" in manifest["metrics"][k] for k in ("dep int8-arm64", "dep int8-avx2", "dep int4-arm64"))
    assert Classifier.from_bundle(out, variant="int8-static").model_path.name == "model.int8-static-avx2.onnx"
    assert "batch flips (b1 vs b32)" in (out / "report.md").read_text()
    assert "Kept rows" in (out / "report.md").read_text()
    assert not list(out.parent.glob(".bundle.partial-*")), "no staging folder left behind"


def test_runtime_and_optimum_predict_the_same_from_the_bundle(tiny_run, tiny_task):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    out, _, _ = tiny_run
    texts = list(tiny_task.eval.texts[:12])
    clf = Classifier.from_bundle(out)
    ours = clf.logits(texts)
    ort_model = ORTModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    theirs = ort_model(**enc).logits
    np.testing.assert_allclose(np.asarray(theirs), ours, atol=1e-5)
    assert [p.label for p in clf.predict(texts)] == [ort_model.config.id2label[int(i)] for i in np.argmax(theirs, -1)]


def test_stage_commands_compose_to_a_bundle(tmp_path, tiny_model_dir, tiny_run, capsys):
    _, train, dev = tiny_run
    data = ["--train", str(train), "--eval", str(dev)]
    assert main(["prune", "--model", str(tiny_model_dir), *data, "--out", str(tmp_path / "vocab")]) == 0
    stats = json.loads((tmp_path / "vocab" / "stats.json").read_text())
    assert stats["kept_rows"] < stats["original_rows"]
    assert main(["finetune", "--model", str(tiny_model_dir), "--vocab", str(tmp_path / "vocab"), *data,
                 "--max-steps", "2", "--max-length", "32", "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "b")]) == 0
    assert main(["validate", str(tmp_path / "b"), *data, "--checkpoint", str(tmp_path / "ckpt"), "--no-measure",
                 "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["agreement"] == 1.0 and metrics["max_logit_diff"] <= 1e-4
    assert main(["inspect", str(tmp_path / "b")]) == 0
    assert "sha256 ok" in capsys.readouterr().out


def test_compare_and_report_commands(tmp_path, tiny_run):
    import shutil

    out, _, _ = tiny_run
    shutil.copytree(out, tmp_path / "other")
    assert main(["compare", str(out), str(tmp_path / "other"), "--out", str(tmp_path / "cmp")]) == 0
    merged = json.loads((tmp_path / "cmp" / "report.json").read_text())
    names = [v["name"] for v in merged["variants"]]
    assert names[:2] == ["bundle/unpruned", "bundle/dep"] and len(names) == 2 * len(read_manifest(out)["metrics"])
    assert "other/dep int8-arm64" in names
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()


@pytest.mark.parametrize("args, message", [
    (["--train", "missing.tsv"], r"missing\.tsv.*check the path"),
    (["--text-column", "text"], r"no column 'text'; columns are \['sentence', 'label'\]; set --text-column"),
    (["--model", "/nonexistent/model"], r"model folder '/nonexistent/model' does not exist"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, tiny_model_dir, tiny_run, capsys, args, message):
    _, train, dev = tiny_run
    base = {"--model": str(tiny_model_dir), "--train": str(train), "--eval": str(dev)}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["run", *[x for kv in base.items() for x in kv], "--out", str(tmp_path / "b"), *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embslim run: error: ") and len(err.splitlines()) == 1
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "b").exists()


def test_existing_output_needs_force(tmp_path, tiny_model_dir, tiny_run, capsys):
    _, train, dev = tiny_run
    (tmp_path / "b").mkdir()
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev),
                 "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err


def test_failed_parity_leaves_no_bundle(tmp_path, tiny_model_dir, tiny_run, capsys, monkeypatch):
    """A validation failure inside the staged bundle: exit 3, no bundle, no staging folder."""
    import embslim.pipeline.validate as validate

    _, train, dev = tiny_run
    monkeypatch.setattr(validate.ValidateConfig, "__post_init__", lambda self: None)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model = "{tiny_model_dir}"\n[data]\ntrain = "{train}"\neval = "{dev}"\n'
                   '[finetune]\nmax_steps = 2\nmax_length = 32\n[validate]\nparity_atol = -1.0\nmeasure = false\n')
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "b")]) == 3
    assert "validation failed" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))


def test_tampered_bundle_is_refused(tmp_path, tiny_run):
    import shutil

    out, _, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Classifier.from_bundle(copy)
    assert main(["inspect", str(copy)]) == 2


def test_help_is_fast_in_a_real_subprocess():
    import time

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "embslim.pipeline.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "embslim" in proc.stdout
    assert time.perf_counter() - t0 < 5, "--help must not import torch/transformers"
    proc = subprocess.run([sys.executable, "-c", "import embslim.pipeline.cli, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False"


def test_unknown_hub_id_offline_is_one_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "embslim.pipeline.cli", "prune", "--model", "no-such-org/no-such-model",
                           "--dataset", "synthetic-sentiment", "--out", str(tmp_path / "v")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert "could not load model 'no-such-org/no-such-model': it is not a local folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_compares_compressed_and_distilled_variants(tmp_path, tiny_model_dir, tiny_run):
    _, train, dev = tiny_run
    out = tmp_path / "b"
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--no-baseline", "--no-measure", "--targets", "arm64", "--int4", "--all-variants", "--variant", "dep",
                 "--variant", "svd+distill:rank=8", "--variant", "subembed:assignment=modulo",
                 "--bundle-variant", "dep+svd(rank=8)+distill", "--mixed", "--smooth-quant", *FAST]) == 0
    manifest = read_manifest(out)
    assert manifest["stages"]["bundle_variant"] == "dep+svd(rank=8)+distill"
    fp32 = {"dep", "dep+svd(rank=8)+distill", "dep+subembed(assignment=modulo)"}
    # the mixed file (its budget is the bundle's) only for the bundle; SmoothQuant for every variant's int8
    assert set(manifest["metrics"]) == (fp32 | {f"{n} {q}-arm64" for n in fp32 for q in ("int8", "int4")}
                                        | {"dep+svd(rank=8)+distill mixed-arm64"})
    assert all("smooth_quant" in manifest["metrics"][f"{n} int8-arm64"] for n in fp32)
    for name in fp32 - {"dep+svd(rank=8)+distill"}:   # the others' quantized files sit in their work folders
        row = manifest["metrics"][f"{name} int8-arm64"]
        # smoothed int8 is quantized from the unfused graph, whose node overhead weighs on a model this tiny
        assert Path(row["file"]).is_file() and row["onnx_bytes"] < manifest["metrics"][name]["onnx_bytes"]
        assert row["quantized_ops"].get("MatMul", 0) > 0
        assert 0 <= row["agreement_fp32"] <= 1
    svd = manifest["metrics"]["dep+svd(rank=8)+distill"]
    assert svd["file"] == "model.onnx" and svd["agreement"] == 1.0
    assert svd["embedding_params"] < manifest["metrics"]["dep"]["embedding_params"]
    assert 0 < svd["reconstruction_error"] < 1
    assert manifest["stages"]["compress"]["dep+svd(rank=8)+distill"]["distill"] is True
    assert (out.with_name("b.work") / "dep+subembed_assignment=modulo_" / "model.onnx").is_file()
    assert "- svd: pick" not in (out / "report.md").read_text()   # one svd variant: nothing to pick between
    clf = Classifier.from_bundle(out)
    assert clf.predict("the movie was good")[0].label in ("negative", "positive")


def test_bad_variant_options_are_one_line(tmp_path, tiny_model_dir, tiny_run, capsys):
    _, train, dev = tiny_run
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(tmp_path / "b"),
                 "--variant", "messi:depth=3", *FAST]) == 2
    assert "messi options are: k, j, keep" in capsys.readouterr().err
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--out", str(tmp_path / "b"),
                 "--variant", "pq", *FAST]) == 2
    assert "unknown method 'pq'; known: subembed, messi, svd, fourier" in capsys.readouterr().err


def test_resume_reuses_checkpoints_with_the_same_inputs(tmp_path, tiny_model_dir, tiny_run, caplog):
    _, train, dev = tiny_run
    out = tmp_path / "r"
    args = ["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(out),
            "--targets", "", "--no-measure", "--variant", "dep", "--variant", "svd:rank=8", *FAST]
    assert main(args) == 0
    first = read_manifest(out)["metrics"]
    caplog.clear()
    with caplog.at_level("INFO", logger="embslim.pipeline.run"):
        assert main(args + ["--force", "--resume"]) == 0
    resumed = [r.getMessage() for r in caplog.records if "resumed from" in r.getMessage()]
    assert len(resumed) == 3                                  # dep, dep+svd(rank=8) and unpruned
    again = read_manifest(out)["metrics"]
    for name in first:                                        # the same weights: the same predictions
        assert again[name]["accuracy"] == first[name]["accuracy"]
    caplog.clear()
    with caplog.at_level("INFO", logger="embslim.pipeline.run"):      # another learning rate is another run
        assert main(args + ["--force", "--resume", "--learning-rate", "1e-4"]) == 0
    assert not [r for r in caplog.records if "resumed from" in r.getMessage()]


def test_method_picks_names_the_most_accurate_variant_per_method():
    from embslim.pipeline.run import method_picks

    rows = [{"name": "dep", "accuracy": 0.80, "embedding_params": 4_444_800},
            {"name": "dep+pete", "accuracy": 0.55, "embedding_params": 443_136},
            {"name": "dep+pete-top1000", "accuracy": 0.76, "embedding_params": 827_136},
            {"name": "dep+pete-top1000 int8-arm64", "base": "dep+pete-top1000", "accuracy": 0.99, "embedding_params": 1},
            {"name": "dep+svd", "accuracy": 0.79, "embedding_params": 2_666_857}]
    methods = {"dep": "table", "dep+pete": "fourier", "dep+pete-top1000": "fourier", "dep+svd": "svd"}
    assert method_picks(rows, methods) == [
        "fourier: pick dep+pete-top1000 (76.00% ORT accuracy, 827,136 embedding params); the others: dep+pete 55.00%"]



def test_method_picks_of_a_tagger_rank_by_entity_f1():
    from embslim.pipeline.run import method_picks, scorer_key

    rows = [{"name": "dep+svd", "f1": 0.41, "word_accuracy": 0.95, "embedding_params": 2_000_000},
            {"name": "dep+svd+distill", "f1": 0.44, "word_accuracy": 0.93, "embedding_params": 2_000_000}]
    assert scorer_key(rows) == "f1"
    assert method_picks(rows, {"dep+svd": "svd", "dep+svd+distill": "svd"}, key=scorer_key(rows)) == [
        "svd: pick dep+svd+distill (44.00% ORT entity F1, 2,000,000 embedding params); the others: dep+svd 41.00%"]
    assert scorer_key([{"accuracy": 0.9, "f1": 0.8}]) == "accuracy"   # a binary classifier still ranks by accuracy


def test_run_trims_positions_and_fits_a_head_tail_messi(tmp_path, tiny_model_dir, tiny_run):
    import onnx
    from onnx import numpy_helper

    _, train, dev = tiny_run
    out = tmp_path / "t"
    fast = [a if a != "32" else "16" for a in FAST]                 # max_length 16; latency runs at 16 tokens too
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--targets", "arm64", "--trim-positions", "--variant", "messi:k=2,j=4,exact_top=20", *fast]) == 0
    manifest = read_manifest(out)
    assert manifest["stages"]["prune"]["trim_positions"] is True
    tables = {i.name: numpy_helper.to_array(i).shape for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert [shape for name, shape in tables.items() if "position_embeddings" in name] == [(16, 32)]
    assert tables["model.bert.embeddings.word_embeddings.inner.exact"] == (20, 32)
    info = manifest["stages"]["compress"]["dep+messi(k=2,j=4,exact_top=20)"]["fit_info"]
    assert info["exact_top"] == 20 and info["j"] == 4
    row = manifest["metrics"]["dep+messi(k=2,j=4,exact_top=20)"]
    assert 0 <= row["token_weighted_error"] < 1 and 0 < row["reconstruction_error"] < 1
    unpruned = manifest["metrics"]["unpruned"]                       # the baseline keeps its whole table
    assert manifest["metrics"]["dep+messi(k=2,j=4,exact_top=20) int8-arm64"]["latency_seq_len"] == 16
    assert unpruned["onnx_bytes"] > manifest["metrics"]["dep+messi(k=2,j=4,exact_top=20)"]["onnx_bytes"]
    clf = Classifier.from_bundle(out)
    long_text = "the movie was good and the acting was fine " * 5    # past 16 tokens: truncated, still runs
    assert clf.predict(long_text)[0].label in ("negative", "positive")


def test_inspect_describes_a_tagger_and_compare_takes_two(tmp_path, capsys, monkeypatch):
    """inspect names the tag set and entity types of a tagger bundle (not "3 labels, single texts")."""
    import embslim.runtime
    from tiny_taggers import make_tiny_tagger_bundle, tag_report

    from embslim.pipeline.report import write_report

    bundle = make_tiny_tagger_bundle(tmp_path)
    if not hasattr(embslim.runtime, "Tagger"):   # inspect loads every model file with the runtime class (#12)
        monkeypatch.setattr(embslim.runtime, "check_bundle_token_ids", lambda path: [])
    capsys.readouterr()
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "task people (token-classification: one tag per word, 3 tags (O, B-person, I-person) over 1 entity type " \
           "(person), max_length 32)" in out
    assert "labels" not in out and "model.onnx" in out and "sha256 ok" in out

    for name in ("seed0", "seed1"):
        write_report(tag_report(), tmp_path / name)
    assert main(["compare", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert "## Entity F1 per type" in md and "| seed1/dep int4-arm64 |" in md
    assert "![Entity F1 vs size](plots/accuracy_vs_size.png)" in md
