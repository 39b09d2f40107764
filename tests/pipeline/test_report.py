"""Tests for embslim.pipeline.report: the footprint report bundle (JSON, Markdown, HTML, plots) and compare_reports."""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from tiny_taggers import tag_report

from embslim.pipeline.report import (
    MISSING,
    ReportError,
    compare_reports,
    plot_accuracy_vs_size,
    plot_size_breakdown,
    render_html,
    render_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_FILES = {"report.json", "report.md", "report.html", "plots/size_breakdown.png", "plots/accuracy_vs_size.png"}


def _variant(name: str, **overrides: Any) -> dict[str, Any]:
    base = {
        "name": name, "description": "same fine-tune, full vocabulary", "file": f"{name}/model.onnx",
        "precision": "fp32", "total_params": 22_713_602, "embedding_params": 11_720_448,
        "onnx_bytes": 90_900_000, "onnx_embedding_bytes": 46_881_792,
        "accuracy": 0.8383, "macro_f1": None, "torch_accuracy": 0.8383, "agreement": 1.0, "max_logit_diff": 3.1e-6,
        "latency_ms_p50": 9.4, "latency_ms_p95": 10.2, "latency_seq_len": 32, "peak_rss_mb": 187.0,
        "reconstruction_error": None,
    }
    return {**base, **overrides}


def _report(n_variants: int = 2) -> dict[str, Any]:
    variants = [
        _variant("unpruned"),
        # 4,444,800 embedding params after DEP: the ONNX file loses 4 * (11,720,448 - 4,444,800) bytes.
        _variant("dep", description="DEP-pruned vocabulary", total_params=15_437_954, embedding_params=4_444_800,
                 onnx_bytes=61_797_408, onnx_embedding_bytes=17_779_200, accuracy=0.8349, macro_f1=0.8347,
                 torch_accuracy=0.8349, agreement=0.9966, latency_ms_p50=9.1, latency_ms_p95=9.9, peak_rss_mb=160.2),
        _variant("dep-int8", description="DEP + int8 dynamic quantization", precision="int8",
                 total_params=15_437_954, embedding_params=4_444_800, onnx_bytes=15_600_000,
                 onnx_embedding_bytes=4_444_800, accuracy=0.8314, macro_f1=0.8311, agreement=0.9885,
                 max_logit_diff=0.21, latency_ms_p50=4.2, latency_ms_p95=4.8, peak_rss_mb=98.5,
                 reconstruction_error=0.0123),
    ][:n_variants]
    return {
        "title": "embslim footprint report: sst2",
        "created": "2026-11-22T01:00:00Z",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "family": "bert", "hidden_size": 384,
                  "vocab_size": 30522},
        "task": {"name": "sst2", "is_pair": False, "n_labels": 2, "labels": ["0", "1"], "n_train": 67349,
                 "n_train_used": 4000, "n_eval": 872},
        "vocab": {
            "original_rows": 30522, "kept_rows": 11575, "kept_fraction": 0.379,
            "embedding_params_before": 11_720_448, "embedding_params_after": 4_444_800,
            "fallback": "nearest", "keep_top": 0,
            "eval_tokens": 21943, "eval_oov_tokens": 465, "eval_oov_rate": 0.0212, "eval_examples_with_oov": 309,
        },
        "finetune": {"epochs": 1, "train_samples": 4000, "seconds": {"unpruned": 95.2, "pruned": 93.1}},
        "variants": variants,
        "notes": ["latency: batch 1, 32 tokens, 1 thread, median of 200 runs"],
    }


def _table_row(markdown: str, name: str) -> list[str]:
    """The cells of the Variants table row for `name`."""
    for line in markdown.splitlines():
        if line.startswith(f"| {name} |"):
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError(f"no table row for {name!r} in:\n{markdown}")


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


@pytest.mark.parametrize("n_variants", [2, 3])
def test_write_report_writes_every_file_and_nothing_else(tmp_path: Path, n_variants: int) -> None:
    report = _report(n_variants)
    paths = write_report(report, tmp_path / "bundle")

    assert set(paths) == {"json", "md", "html", "size_plot", "accuracy_plot"}
    assert all(p.is_file() for p in paths.values())
    assert _files_under(tmp_path / "bundle") == EXPECTED_FILES  # no stray temp files
    _assert_png(paths["size_plot"])
    _assert_png(paths["accuracy_plot"])
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == report
    assert paths["md"].read_text(encoding="utf-8") == render_markdown(report)


def test_write_report_twice_overwrites_in_place(tmp_path: Path) -> None:
    write_report(_report(2), tmp_path)
    paths = write_report(_report(3), tmp_path)
    assert "dep-int8" in paths["md"].read_text(encoding="utf-8")
    assert _files_under(tmp_path) == EXPECTED_FILES


def test_markdown_vocab_section() -> None:
    md = render_markdown(_report(2))
    assert "## Vocabulary (DEP)" in md
    assert "Kept rows: 11,575 of 30,522 (37.9% kept)" in md
    assert "Embedding params: 11.72M -> 4.44M (62.1% saved)" in md
    assert "Eval OOV rate: 2.12% (465 of 21,943 eval tokens)" in md
    assert "Eval examples with OOV: 309 of 872 (35.4%)" in md
    assert "Fallback for dropped tokens: nearest" in md


def test_markdown_without_vocab_skips_the_section() -> None:
    report = _report(2)
    del report["vocab"]
    md = render_markdown(report)
    assert "Vocabulary" not in md
    assert "## Variants" in md


def test_markdown_variants_table_numbers() -> None:
    md = render_markdown(_report(3))
    header = _table_row(md, "variant")
    assert len(header) == 15
    ref, dep, int8 = _table_row(md, "unpruned"), _table_row(md, "dep"), _table_row(md, "dep-int8")
    col = {name: i for i, name in enumerate(header)}

    assert ref[col["ONNX MB"]] == "90.9" and ref[col["embedding MB"]] == "46.9"
    assert int8[col["ONNX MB"]] == "15.6" and int8[col["embedding MB"]] == "4.44"  # 2 decimals under 10
    assert ref[col["params (M)"]] == "22.71" and dep[col["embedding params (M)"]] == "4.44"
    assert ref[col["accuracy %"]] == "83.83" and dep[col["accuracy %"]] == "83.49"
    assert ref[col["macro-F1 %"]] == MISSING and dep[col["macro-F1 %"]] == "83.47"
    assert ref[col["Δ accuracy (pts)"]] == "+0.00"
    assert dep[col["Δ accuracy (pts)"]] == "-0.34"  # 0.8349 - 0.8383
    assert int8[col["Δ accuracy (pts)"]] == "-0.69"  # 0.8314 - 0.8383
    assert dep[col["agreement with PyTorch %"]] == "99.66"
    assert ref[col["size vs ref"]] == "1.00x"
    assert dep[col["size vs ref"]] == "0.68x"  # 61,797,408 / 90,900,000
    assert int8[col["size vs ref"]] == "0.17x"
    assert int8[col["p50 ms"]] == "4.20" and ref[col["peak RSS MB"]] == "187.0"


def test_side_by_side_puts_quantized_files_beside_their_model(tmp_path: Path) -> None:
    report = _report(3)
    assert "## Side by side" not in render_markdown(report)       # no row names a base model
    report["variants"][2] |= {"base": "dep"}
    report["variants"].append(_variant("dep int4-arm64", precision="int4", base="dep", onnx_bytes=7_900_000,
                                       accuracy=0.8300, latency_ms_p50=6.0))
    md = render_markdown(report)
    assert "## Side by side" in md
    side = md.split("## Side by side")[1].split("## All files")[0]
    header = _table_row(side, "variant")
    rows = {r[0]: r for r in (_table_row(side, n) for n in ("unpruned", "dep"))}
    col = {name: i for i, name in enumerate(header)}
    dep = rows["dep"]
    assert (dep[col["fp32 MB"]], dep[col["int8 MB"]], dep[col["4-bit MB"]]) == ("61.8", "15.6", "7.90")
    assert (dep[col["int8 accuracy %"]], dep[col["4-bit accuracy %"]], dep[col["Δ fp32 (pts)"]]) == ("83.14", "83.00", "-0.34")
    assert rows["unpruned"][col["int8 MB"]] == MISSING
    assert rows["unpruned"][col["token-weighted error"]] == MISSING   # no compressor, no error
    assert len([l for l in side.splitlines() if l.startswith("| ")]) == 3   # header and the two models only
    plot_accuracy_vs_size(report, tmp_path / "acc.png")           # the grouped plot renders
    assert (tmp_path / "acc.png").read_bytes().startswith(PNG_MAGIC)


def test_markdown_ratios_notes_finetune_and_plots() -> None:
    md = render_markdown(_report(3))
    assert "## Ratios vs unpruned" in md
    assert "- dep: 0.68x ONNX size, 0.38x embedding bytes" in md
    assert "-0.34 pts accuracy" in md
    assert "latency: batch 1, 32 tokens, 1 thread, median of 200 runs" in md
    assert "| seconds.unpruned | 95.2 |" in md
    report = _report(3)
    report["finetune"]["max_steps"] = -1     # transformers' default: the epochs decide
    assert "| max_steps | none (epochs decide) |" in render_markdown(report)
    assert "![Size breakdown](plots/size_breakdown.png)" in md
    assert "![Accuracy vs size](plots/accuracy_vs_size.png)" in md
    assert "Model: sentence-transformers/all-MiniLM-L6-v2 (bert, hidden 384, vocab 30,522)" in md


def test_markdown_escapes_table_pipes() -> None:
    report = _report(2)
    report["variants"][1]["name"] = "dep|int8"
    row = _table_row(render_markdown(report), "dep\\|int8")
    assert len(row) == 15


def test_html_embeds_plots_and_escapes_text(tmp_path: Path) -> None:
    report = _report(3)
    report["variants"][2]["name"] = "<script>alert('x')</script>"
    report["notes"].append("a & b <b>")
    paths = write_report(report, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")

    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "a &amp; b &lt;b&gt;" in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 2
    assert base64.b64decode(images[0]) == paths["size_plot"].read_bytes()
    assert base64.b64decode(images[1]) == paths["accuracy_plot"].read_bytes()
    assert "plots/" not in page  # nothing external: the page stands alone


def test_render_html_reads_plot_files(tmp_path: Path) -> None:
    report = _report(2)
    png = plot_size_breakdown(report, tmp_path / "size.png")
    page = render_html(report, plots={"Size breakdown": str(png)})
    assert page.count("data:image/png;base64,") == 1
    with pytest.raises(ReportError, match=r"cannot read PNG .*missing\.png"):
        render_html(report, plots={"Accuracy": str(tmp_path / "missing.png")})


def test_missing_metrics_render_as_dash_and_plots_skip_them(tmp_path: Path) -> None:
    report = _report(3)
    nothing = {k: None for k in ("precision", "total_params", "embedding_params", "onnx_bytes", "onnx_embedding_bytes",
                                 "accuracy", "macro_f1", "agreement", "max_logit_diff", "latency_ms_p50",
                                 "latency_ms_p95", "peak_rss_mb")}
    report["variants"][1] = {"name": "dep", **nothing}
    report["variants"][2]["onnx_embedding_bytes"] = None  # size known, split unknown
    report["variants"][2]["accuracy"] = float("nan")

    md = render_markdown(report)
    row = _table_row(md, "dep")
    assert row[1:] == [MISSING] * 14
    assert _table_row(md, "dep-int8")[8] == MISSING  # Δ accuracy of a NaN accuracy
    assert "- dep: no comparable metrics" in md

    paths = write_report(report, tmp_path)
    _assert_png(paths["size_plot"])
    _assert_png(paths["accuracy_plot"])


def test_plots_with_no_usable_data_still_write_a_png(tmp_path: Path) -> None:
    report = {"variants": [{"name": "only"}]}
    _assert_png(plot_size_breakdown(report, tmp_path / "s.png"))
    _assert_png(plot_accuracy_vs_size(report, tmp_path / "a.png"))
    assert MISSING in render_markdown(report)


@pytest.mark.parametrize(
    ("report", "match"),
    [
        ([], "expected the report as a dict"),
        ({"variants": []}, r"report\['variants'\] must be a non-empty list"),
        ({"variants": [{"accuracy": 0.9}]}, r"non-empty string 'name'"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, r"duplicates \['a'\]"),
    ],
)
def test_malformed_report_raises(report: Any, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        render_markdown(report)


def test_unserialisable_report_writes_nothing(tmp_path: Path) -> None:
    report = _report(2)
    report["finetune"]["callback"] = object()
    with pytest.raises(ReportError, match="JSON-serialisable"):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_replace_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("embslim.pipeline.report.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(_report(2), tmp_path)
    assert _files_under(tmp_path) == set()


def test_compare_reports_merges_and_prefixes_every_name(tmp_path: Path) -> None:
    a, b = _report(2), _report(3)
    b["variants"][2]["name"] = "int8-only-in-b"
    b["notes"] = ["run b used a different seed"]
    write_report(a, tmp_path / "run-a")
    write_report(b, tmp_path / "run-b")

    merged = compare_reports([tmp_path / "run-a", tmp_path / "run-b" / "report.json"])
    names = [v["name"] for v in merged["variants"]]
    assert names == ["run-a/unpruned", "run-a/dep", "run-b/unpruned", "run-b/dep", "run-b/int8-only-in-b"]
    assert [v["source"] for v in merged["variants"]] == ["run-a"] * 2 + ["run-b"] * 3
    assert merged["vocab"] == a["vocab"]
    assert "run-b: run b used a different seed" in merged["notes"]

    paths = write_report(merged, tmp_path / "compare")  # the merged dict is itself a valid report
    md = paths["md"].read_text(encoding="utf-8")
    assert _table_row(md, "run-b/dep")[8] == "-0.34"


def test_compare_reports_custom_names(tmp_path: Path) -> None:
    for d in ("x/out", "y/out"):
        write_report(_report(2), tmp_path / d)
    # bundles in folders of one name are told apart by their parent folders
    merged = compare_reports([tmp_path / "x/out", tmp_path / "y/out"])
    assert [v["name"] for v in merged["variants"]][::2] == ["x/out/unpruned", "y/out/unpruned"]
    with pytest.raises(ReportError, match=r"bundle names clash: .*pass one distinct name per report"):
        compare_reports([tmp_path / "x/out", tmp_path / "x/out"])
    merged = compare_reports([tmp_path / "x/out", tmp_path / "y/out"], names=["seed0", "seed1"])
    assert merged["variants"][0]["name"] == "seed0/unpruned"
    with pytest.raises(ReportError, match="got 1 names for 2 reports"):
        compare_reports([tmp_path / "x/out", tmp_path / "y/out"], names=["seed0"])


def test_compare_reports_missing_or_bad_report(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ReportError, match=re.escape(str(missing))):
        compare_reports([missing])
    bad = tmp_path / "bad" / "report.json"
    bad.parent.mkdir()
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ReportError, match=r"cannot read report .*bad"):
        compare_reports([bad])
    with pytest.raises(ReportError, match="at least one"):
        compare_reports([])


def test_report_dict_is_not_mutated(tmp_path: Path) -> None:
    report = _report(3)
    before = copy.deepcopy(report)
    write_report(report, tmp_path)
    assert report == before


# ---------------------------------------------------------------- compare on real bundles, plot labels, logs


def test_compare_refuses_reports_of_different_tasks(tmp_path: Path) -> None:
    write_report(_report(2), tmp_path / "sst2")
    for folder, change in (("clinc", {"name": "clinc150", "n_labels": 151, "labels": ["a", "b"]}),
                           ("relabelled", {"labels": ["neg", "pos"]}),
                           ("pairs", {"is_pair": True})):   # a tagger is another task type: see the tagging tests
        other = _report(2)
        other["task"] |= change
        write_report(other, tmp_path / folder)
        with pytest.raises(ReportError, match=r"^cannot compare bundles of different tasks \(sst2: sst2 .*, "
                                              rf"{folder}: .*\); their accuracies are not comparable"):
            compare_reports([tmp_path / "sst2", tmp_path / folder])


def test_compare_warns_in_the_header_when_eval_splits_differ(tmp_path: Path) -> None:
    other = _report(2)
    other["task"]["n_eval"] = 800
    write_report(_report(2), tmp_path / "a")
    write_report(other, tmp_path / "b")
    md = render_markdown(compare_reports([tmp_path / "a", tmp_path / "b"]))
    header = md.split("## ")[0]
    assert "Warning: the eval splits differ in size (a 872, b 800 examples)" in header


def _label_boxes(fig: Any) -> list[Any]:
    from matplotlib.text import Annotation, Text

    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    return [Text.get_window_extent(a, renderer) for a in [*ax.texts, *ax.artists] if isinstance(a, Annotation)]


def test_accuracy_plot_labels_never_overlap(tmp_path: Path) -> None:
    """Four bundles with the same model at the same size and accuracy: four labels, apart."""
    from embslim.pipeline.report import _pyplot, accuracy_figure

    for name in "abcd":
        write_report(_report(3), tmp_path / name)
    merged = compare_reports([tmp_path / n for n in "abcd"])
    fig = accuracy_figure(merged)
    try:
        boxes = _label_boxes(fig)
        assert len(boxes) == 12
        overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
        assert overlaps == []
    finally:
        _pyplot().close(fig)


FAST = ["--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--latency-runs", "3"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _write_task(folder: Path, task: Any) -> list[str]:
    from tiny_models import write_task_tsv

    train, dev = write_task_tsv(folder, task)
    return ["--train", str(train), "--eval", str(dev)]


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_task: Any):
    """Two real tiny-model bundles with int8 and 4-bit files; the second built with -v and no
    baseline. Returns (root, {bundle name: records its run logged})."""
    from embslim.pipeline.cli import main

    root = tmp_path_factory.mktemp("compare")
    data = _write_task(root / "data", tiny_task)
    levels = {name: logging.getLogger(name).level for name in ("", "embslim", "transformers", "optimum")}
    logs = {}
    try:
        for name, before, after in (("seed0", [], []), ("seed1", ["-v"], ["--seed", "1", "--no-baseline"])):
            handler = _Records()
            logging.getLogger().addHandler(handler)
            try:
                code = main([*before, "run", "--model", str(tiny_model_dir), *data, "--out", str(root / name),
                             "--targets", "arm64", "--int4", "--allow-drop", *FAST, *after])
            finally:
                logging.getLogger().removeHandler(handler)
            assert code == 0
            logs[name] = handler.records
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return root, logs


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def test_compare_two_real_bundles_shows_every_quantized_cell(two_bundles, capsys) -> None:
    from embslim.pipeline.cli import main
    from embslim.pipeline.report import _fmt, _pyplot, accuracy_figure, pareto_front

    root, _ = two_bundles
    assert main(["compare", str(root / "seed0"), str(root / "seed1"), "--out", str(root / "cmp")]) == 0
    md = (root / "cmp" / "report.md").read_text(encoding="utf-8")
    header = md.split("## ")[0]
    for name in ("seed0", "seed1"):   # both bundles' model and task, not just the first one's
        assert f"Bundle {name}: model {_manifest(root / name)['source_model']['name']} (bert, hidden 32, vocab 197); " \
               "task data (single sentences; 2 labels (negative, positive)" in header

    side = md.split("## Side by side")[1].split("## All files")[0]
    col = {c: i for i, c in enumerate(_table_row(side, "variant"))}
    rows = [line for line in side.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["seed0/unpruned", "seed0/dep", "seed1/dep"]
    for name in ("seed0", "seed1"):
        manifest = _manifest(root / name)
        size = {a["file"]: a["bytes"] for a in manifest["artifacts"]}
        metrics = manifest["metrics"]
        row = _table_row(side, f"{name}/dep")
        assert row[col["fp32 MB"]] == _fmt(size["model.onnx"], "mb")
        assert row[col["int8 MB"]] == _fmt(size["model.int8-arm64.onnx"], "mb") != MISSING
        assert row[col["4-bit MB"]] == _fmt(size["model.int4-arm64.onnx"], "mb") != MISSING
        assert row[col["int8 accuracy %"]] == f"{100 * metrics['dep int8-arm64']['accuracy']:.2f}"
        assert row[col["4-bit accuracy %"]] == f"{100 * metrics['dep int4-arm64']['accuracy']:.2f}"
        assert row[col["int8 p50 ms"]] != MISSING
    assert _table_row(side, "seed0/unpruned")[col["int8 MB"]] == MISSING   # the baseline was not quantized

    every = md.split("## All files")[1]
    for name in ("seed0/dep int8-arm64", "seed0/dep int4-arm64", "seed1/dep int8-arm64", "seed1/dep int4-arm64"):
        assert _table_row(every, name)[1] in ("int8", "int4")
    cmp_report = json.loads((root / "cmp" / "report.json").read_text(encoding="utf-8"))
    fig = accuracy_figure(cmp_report)
    try:
        boxes = _label_boxes(fig)
        # the three models are named, and so is each quantized file on the Pareto frontier
        points = [(v["name"], v["onnx_bytes"], v["accuracy"]) for v in cmp_report["variants"]
                  if v.get("onnx_bytes") is not None and v.get("accuracy") is not None]
        on_front = {n for n in pareto_front(points) if any(v["name"] == n and v.get("base") for v in cmp_report["variants"])}
        assert len(boxes) == 3 + len(on_front)
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[:i])
    finally:
        _pyplot().close(fig)

    # another task: one line, exit 2, nothing written
    other = root / "other-task"
    other.mkdir()
    report = json.loads((root / "seed1" / "report.json").read_text(encoding="utf-8"))
    report["task"] |= {"name": "clinc150", "n_labels": 3, "labels": ["a", "b", "c"]}
    (other / "report.json").write_text(json.dumps(report), encoding="utf-8")
    capsys.readouterr()
    assert main(["compare", str(root / "seed0"), str(other), "--out", str(root / "cmp-mixed")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("embslim compare: error: cannot compare bundles of different tasks (seed0: data")
    assert not (root / "cmp-mixed").exists()


def _third_party_info(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records
            if r.levelno == logging.INFO and not r.name.startswith("embslim")]


def test_run_log_has_no_library_info_lines_unless_verbose(two_bundles) -> None:
    _, logs = two_bundles
    quiet, verbose = logs["seed0"], logs["seed1"]
    assert _third_party_info(quiet) == []
    messages = [r.getMessage() for r in quiet]
    for line in ("export 1/2: dep", "validate 2/2: dep", "[1/2] model.int8-arm64.onnx: quantize",
                 "[2/2] model.int4-arm64.onnx: quantize"):
        assert any(m.startswith(line) for m in messages), line
    # -v brings ONNX Runtime's quantizer and optimizer INFO lines back (hundreds on MiniLM)
    noisy = _third_party_info(verbose)
    assert any(n.startswith("onnxruntime.quantization") for n in noisy)
    assert any(n.startswith("root: ") for n in noisy)
    assert len(noisy) > 50


def test_progress_logs_long_loops_in_a_log_file(caplog: pytest.LogCaptureFixture) -> None:
    from embslim.pipeline.logs import progress

    logger = logging.getLogger("embslim.test.progress")
    with caplog.at_level(logging.INFO, logger="embslim.test.progress"):
        assert list(progress(range(4), total=4, desc="model.onnx: eval", every=0.0, logger=logger)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines[:3]] == [f"model.onnx: eval: {i}/4 batch" for i in (1, 2, 3)]
    assert lines[3].startswith("model.onnx: eval: 4/4 batch done in")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embslim.test.progress"):
        list(progress(range(4), total=4, desc="short", logger=logger))   # well under 10 s: silent
        logger.setLevel(logging.WARNING)
        list(progress(range(4), total=4, desc="quiet", every=0.0, logger=logger))
    assert caplog.records == []


# ---------------------------------------------------------------- sentence-embedding (feature-extraction) reports


def _emb_variant(name: str, **overrides: Any) -> dict[str, Any]:
    base = {
        "name": name, "precision": "fp32", "description": "the given model, full vocabulary",
        "file": f"/work/{name}/model.onnx", "total_params": 22_713_216, "embedding_params": 11_720_448,
        "onnx_bytes": 90_900_000, "onnx_embedding_bytes": 46_881_792, "reconstruction_error": None,
        "token_weighted_error": None, "latency_ms_p50": 6.1, "latency_ms_p95": 6.9, "latency_seq_len": 32,
        "peak_rss_mb": 180.0, "cosine_mean": 1.0, "cosine_p1": 0.99999, "cosine_min": 0.99998,
        "knn_accuracy": 0.8711, "pair_auc": 0.8155, "max_abs_diff": 2.4e-7, "cosine_min_torch": 0.99999,
    }
    return base | overrides


def _quantized(name: str, precision: str, **overrides: Any) -> dict[str, Any]:
    """A quantized row: no PyTorch parity keys, its figures against the fp32 file it came from."""
    row = _emb_variant(name, precision=precision, base="dep", description=f"DEP + {precision}", **overrides)
    del row["max_abs_diff"], row["cosine_min_torch"]
    return row


def _emb_report(*, int4: bool = True) -> dict[str, Any]:
    """What the pipeline writes for `--task feature-extraction` (issue 14), by hand."""
    variants = [
        _emb_variant("unpruned"),
        _emb_variant("dep", description="DEP-pruned vocabulary", file="model.onnx", onnx_bytes=57_300_000,
                     total_params=14_340_000, embedding_params=3_340_032, onnx_embedding_bytes=13_360_128,
                     cosine_mean=0.99871, cosine_p1=0.9812, cosine_min=0.9433, knn_accuracy=0.8689, pair_auc=0.8141,
                     latency_ms_p50=5.8, peak_rss_mb=150.2),
        _quantized("dep int8-arm64", "int8", file="model.int8-arm64.onnx", onnx_bytes=15_100_000,
                   onnx_embedding_bytes=3_340_032, cosine_mean=0.99412, cosine_p1=0.9701, cosine_min=0.9302,
                   knn_accuracy=0.8671, pair_auc=0.8133, cosine_fp32_mean=0.99533, cosine_fp32_min=0.9611,
                   knn_drop_vs_fp32=0.0018, flagged=False, latency_ms_p50=2.9, latency_ms_p95=3.4, peak_rss_mb=95.5),
        _emb_variant("dep+messi+distill", description="DEP + MESSI, distilled from the given model on the corpus",
                     onnx_bytes=30_100_000, embedding_params=500_000, onnx_embedding_bytes=2_000_000,
                     reconstruction_error=0.412, token_weighted_error=0.203, cosine_mean=0.9801, cosine_p1=0.9102,
                     cosine_min=0.8511, knn_accuracy=0.8502, pair_auc=0.8010, max_abs_diff=3.1e-7),
    ]
    if int4:
        variants.append(_quantized("dep int4-arm64", "int4", file="model.int4-arm64.onnx", onnx_bytes=9_800_000,
                                   cosine_mean=0.9811, cosine_p1=0.93, cosine_min=0.90, knn_accuracy=0.8550,
                                   pair_auc=0.8050, cosine_fp32_mean=0.9822, cosine_fp32_min=0.91,
                                   knn_drop_vs_fp32=0.0139, flagged=True))
    return {
        "title": "embslim footprint report: clinc150-train",
        "created": "2026-12-01T10:00:00Z",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "family": "bert", "hidden_size": 384,
                  "vocab_size": 30522, "task": "feature-extraction", "head": "none", "pooling": "mean",
                  "normalize": True, "dense": 0, "embedding_dim": 384},
        "task": {"name": "clinc150-train", "type": "feature-extraction", "n_texts": 15000, "n_eval": 1000,
                 "n_labels": 0, "knn": {"source": "clinc150", "n_index": 15000, "n_queries": 4500, "k": 1},
                 "pairs": {"source": "mrpc-dev", "n_pairs": 408}},
        "vocab": {"original_rows": 30522, "kept_rows": 8698, "embedding_params_before": 11_720_448,
                  "embedding_params_after": 3_340_032, "fallback": "nearest", "eval_tokens": 12000,
                  "eval_oov_tokens": 60, "eval_oov_rate": 0.005, "eval_examples_with_oov": 55},
        "finetune": {"distill": {"loss": "cosine", "epochs": 1}},
        "variants": variants,
        "notes": ["latency: batch 1, 32 tokens, 1 thread"],
    }


_CLASSIFICATION_ONLY = ("accuracy %", "macro-F1 %", "Δ accuracy (pts)", "agreement with PyTorch %",
                        "max |Δlogit| vs PyTorch", "agrees with given model %")


def test_embedding_report_variants_table() -> None:
    md = render_markdown(_emb_report())
    every = md.split("## All files")[1]
    header = _table_row(every, "variant")
    assert header == ["variant", "precision", "params (M)", "embedding params (M)", "ONNX MB", "embedding MB",
                      "cosine mean vs original", "cosine p1 vs original", "cosine min vs original", "kNN accuracy %",
                      "Δ kNN (pts)", "pair AUC", "max \\|Δ\\| vs PyTorch", "p50 ms", "p95 ms", "peak RSS MB",
                      "size vs ref"]
    assert not any(h in header for h in _CLASSIFICATION_ONLY)
    col = {name: i for i, name in enumerate(header)}
    ref, dep, int8 = (_table_row(every, n) for n in ("unpruned", "dep", "dep int8-arm64"))
    assert [dep[col[c]] for c in ("cosine mean vs original", "cosine p1 vs original", "cosine min vs original")] \
        == ["0.9987", "0.9812", "0.9433"]
    assert (ref[col["kNN accuracy %"]], dep[col["kNN accuracy %"]], int8[col["kNN accuracy %"]]) == ("87.11", "86.89", "86.71")
    assert (ref[col["Δ kNN (pts)"]], dep[col["Δ kNN (pts)"]], int8[col["Δ kNN (pts)"]]) == ("+0.00", "-0.22", "-0.40")
    assert (dep[col["pair AUC"]], int8[col["pair AUC"]]) == ("0.8141", "0.8133")
    assert (dep[col["max \\|Δ\\| vs PyTorch"]], int8[col["max \\|Δ\\| vs PyTorch"]]) == ("2.4e-07", MISSING)  # fp32 only
    assert (dep[col["ONNX MB"]], dep[col["size vs ref"]], int8[col["size vs ref"]]) == ("57.3", "0.63x", "0.17x")
    assert int8[col["precision"]] == "int8" and int8[col["p50 ms"]] == "2.90"
    assert "Model: sentence-transformers/all-MiniLM-L6-v2 (bert, hidden 384, vocab 30,522; mean pooling, normalized, " \
           "384-d embeddings)" in md
    assert "Task: clinc150-train (feature-extraction; corpus 15,000 texts; eval 1,000 held-out texts; kNN clinc150 " \
           "(index 15,000, queries 4,500, k=1); pairs mrpc-dev (408 pairs))" in md
    assert "Reference for Δ kNN and ratios: unpruned." in md
    assert "on the 1,000 held-out texts" in md and "nearest neighbour by cosine, k = 1, on clinc150" in md
    assert "## Vocabulary (DEP)" in md and "Kept rows: 8,698 of 30,522 (28.5% kept)" in md
    assert "labels" not in md.split("## ")[0]   # no "0 labels" in the header


def test_embedding_report_side_by_side_details_and_ratios() -> None:
    md = render_markdown(_emb_report())
    side = md.split("## Side by side")[1].split("## All files")[0]
    header = _table_row(side, "variant")
    col = {name: i for i, name in enumerate(header)}
    dep = _table_row(side, "dep")
    assert (dep[col["fp32 MB"]], dep[col["int8 MB"]], dep[col["4-bit MB"]]) == ("57.3", "15.1", "9.80")
    assert (dep[col["fp32 cosine mean"]], dep[col["int8 cosine mean"]], dep[col["4-bit cosine mean"]]) \
        == ("0.9987", "0.9941", "0.9811")
    assert (dep[col["fp32 kNN %"]], dep[col["Δ fp32 kNN (pts)"]], dep[col["int8 kNN %"]], dep[col["4-bit kNN %"]]) \
        == ("86.89", "-0.22", "86.71", "85.50")
    assert _table_row(side, "dep+messi+distill")[col["token-weighted error"]] == "0.20"
    assert not any("accuracy" in h for h in header)
    assert "Δ fp32 kNN against unpruned" in md

    details = md.split("## Ratios")[0].split("## All files")[1]
    assert "- dep: DEP-pruned vocabulary; file model.onnx; min cosine vs PyTorch 0.999990; latency at 32 tokens" in details
    assert ("- dep int8-arm64: DEP + int8; file model.int8-arm64.onnx; cosine vs its fp32 file: mean 0.9953; min 0.9611; "
            "kNN drop vs its fp32 file 0.18 pts; latency at 32 tokens") in details
    assert "dep int4-arm64: DEP + int4; file model.int4-arm64.onnx; cosine vs its fp32 file: mean 0.9822; min 0.9100; " \
           "kNN drop vs its fp32 file 1.39 pts; FLAGGED: its drop vs fp32 is past the allowed maximum" in details
    assert "distilled from the given model on the corpus" in details
    assert "- dep: 0.63x ONNX size, 0.28x embedding bytes, 0.63x params, 0.95x p50 latency, -0.22 pts kNN accuracy, " \
           "-0.0014 pair AUC" in md
    assert "## Training" in md and "| distill.loss | cosine |" in md
    assert "## Fine-tuning" not in md


def test_embedding_report_drops_columns_with_no_data() -> None:
    report = _emb_report(int4=False)
    del report["task"]["knn"], report["task"]["pairs"]
    report["task"] |= {"n_train": 12000, "n_texts": 0}   # a corpus from --train: the training split's texts
    for v in report["variants"]:
        for key in ("knn_accuracy", "pair_auc", "max_abs_diff", "knn_drop_vs_fp32", "latency_ms_p50", "latency_ms_p95",
                    "peak_rss_mb"):   # no kNN or pair data, and --no-measure
            v.pop(key, None)
    md = render_markdown(report)
    every, side = md.split("## All files")[1], md.split("## Side by side")[1].split("## All files")[0]
    header, side_header = _table_row(every, "variant"), _table_row(side, "variant")
    assert not any(h in header for h in ("kNN accuracy %", "Δ kNN (pts)", "pair AUC", "max \\|Δ\\| vs PyTorch",
                                         "p50 ms", "p95 ms", "peak RSS MB"))
    assert "cosine mean vs original" in header and len(_table_row(every, "dep")) == len(header) == 10
    assert not any(h.startswith("4-bit") or "kNN" in h or h.endswith((" ms", " RSS MB")) for h in side_header)
    assert "int8 cosine mean" in side_header
    assert "(feature-extraction; corpus 12,000 texts; eval 1,000 held-out texts)" in md
    assert "kNN accuracy:" not in md and "Pair AUC:" not in md
    # with no kNN the accuracy plot shows the cosine, and says so
    assert "![Cosine vs size](plots/accuracy_vs_size.png)" in md


def test_embedding_report_writes_its_plots(tmp_path: Path) -> None:
    from embslim.pipeline.report import _pyplot, accuracy_figure, metric_figure

    report = _emb_report()
    paths = write_report(report, tmp_path)
    assert set(paths) == {"json", "md", "html", "size_plot", "accuracy_plot", "cosine_plot"}
    assert _files_under(tmp_path) == EXPECTED_FILES | {"plots/cosine_vs_size.png"}
    for key in ("size_plot", "accuracy_plot", "cosine_plot"):
        _assert_png(paths[key])
    md = paths["md"].read_text(encoding="utf-8")
    assert "![kNN accuracy vs size](plots/accuracy_vs_size.png)" in md
    assert "![Cosine vs size](plots/cosine_vs_size.png)" in md
    page = paths["html"].read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert [alt for alt, _ in images] == ["Size breakdown", "kNN accuracy vs size", "Cosine vs size"]
    assert base64.b64decode(images[2][1]) == paths["cosine_plot"].read_bytes()
    assert "cosine mean vs original" in page and "macro-F1" not in page

    for fig, title, ylabel, ref_line in (
            (accuracy_figure(report), "kNN accuracy vs ONNX size", "kNN accuracy, k = 1 (%)", "87.11%"),
            (metric_figure(report, "cosine_plot"), "Cosine to the original model vs ONNX size",
             "mean cosine to the original model", "1.0000")):
        try:
            ax = fig.axes[0]
            assert (ax.get_title(), ax.get_ylabel()) == (title, ylabel)
            assert len([c for c in ax.collections if c.get_gid() is None]) == 3   # fp32, int8, int4 points
            labels = ax.get_legend_handles_labels()[1]
            assert f"reference (unpruned): {ref_line}" in labels and labels[:3] == ["fp32", "int8", "int4"]
            assert any(label.startswith("Pareto frontier (") for label in labels)
        finally:
            _pyplot().close(fig)


def test_compare_two_embedding_reports(tmp_path: Path) -> None:
    other = _emb_report(int4=False)
    other["task"] |= {"name": "my-notes", "n_eval": 800}
    write_report(_emb_report(), tmp_path / "clinc")
    write_report(other, tmp_path / "notes")
    merged = compare_reports([tmp_path / "clinc", tmp_path / "notes"])
    assert [v["name"] for v in merged["variants"]][:3] == ["clinc/unpruned", "clinc/dep", "clinc/dep int8-arm64"]
    paths = write_report(merged, tmp_path / "cmp")
    md = paths["md"].read_text(encoding="utf-8")
    header = md.split("## ")[0]
    assert "Bundle notes: model sentence-transformers/all-MiniLM-L6-v2 (bert, hidden 384, vocab 30,522; mean pooling, " \
           "normalized, 384-d embeddings); task my-notes (feature-extraction; corpus 15,000 texts; eval 800 held-out" in header
    assert "Warning: the corpora differ (clinc clinc150-train, notes my-notes)" in header
    assert "Warning: the held-out sets differ in size (clinc 1000, notes 800 texts)" in header
    every = md.split("## All files")[1]
    col = {c: i for i, c in enumerate(_table_row(every, "variant"))}
    assert _table_row(every, "notes/dep int8-arm64")[col["Δ kNN (pts)"]] == "-0.40"
    side = md.split("## Side by side")[1].split("## All files")[0]
    assert _table_row(side, "notes/dep")[:3] == ["notes/dep", "3.34", MISSING]
    _assert_png(paths["cosine_plot"])


def test_compare_refuses_a_mix_of_task_types_and_other_knn_sets(tmp_path: Path, capsys) -> None:
    from embslim.pipeline.cli import main

    write_report(_emb_report(), tmp_path / "emb")
    write_report(_report(2), tmp_path / "sst2")
    other = _emb_report()
    other["task"]["knn"] = {"source": "banking77", "n_index": 10003, "n_queries": 3080, "k": 1}
    write_report(other, tmp_path / "banking")
    with pytest.raises(ReportError, match=r"^cannot compare bundles of different task types \(emb: feature-extraction, "
                                          r"sst2: text-classification\); accuracy and embedding cosine/kNN are "
                                          r"different measurements: compare bundles of one task type$"):
        compare_reports([tmp_path / "emb", tmp_path / "sst2"])
    with pytest.raises(ReportError, match=r"^cannot compare bundles of different tasks \(emb: clinc150-train .*kNN "
                                          r"clinc150 .*, banking: .*kNN banking77 .*\); their kNN accuracy and pair AUC "
                                          r"are not comparable"):
        compare_reports([tmp_path / "emb", tmp_path / "banking"])
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "sst2"), str(tmp_path / "emb"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embslim compare: error: cannot compare bundles of different task types (sst2: ")
    assert len(err.splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_reports_without_a_view_of_their_own_render_as_classification() -> None:
    from embslim.pipeline.report import REPORT_VIEWS

    assert set(REPORT_VIEWS) == {"text-classification", "feature-extraction", "token-classification"}
    report = _report(2)
    report["model"]["task"] = "question-answering"   # no view of its own: the layout reports had before tasks
    header = _table_row(render_markdown(report), "variant")
    assert "accuracy %" in header and "cosine mean vs original" not in header


def test_classification_header_leaves_the_default_type_unsaid() -> None:
    """The pipeline now writes task.type; a classifier's header reads as it did before it did."""
    report = _report(2)
    report["task"]["type"] = "text-classification"
    assert "Task: sst2 (single sentences; 2 labels (0, 1); train 4,000 of 67,349 used; eval 872)" in render_markdown(report)
    report["task"]["type"] = "token-classification"
    assert "Task: sst2 (token-classification; single sentences;" in render_markdown(report)


def test_an_embedding_report_without_knn_plots_cosine_once(tmp_path: Path) -> None:
    report = _emb_report()
    report["task"].pop("knn", None)
    for v in report["variants"]:
        v.pop("knn_accuracy", None)
    paths = write_report(report, tmp_path / "r")
    assert "cosine_plot" not in paths and not (tmp_path / "r" / "plots" / "cosine_vs_size.png").exists()
    md = paths["md"].read_text(encoding="utf-8")
    assert md.count("![Cosine vs size]") == 1 and "(plots/accuracy_vs_size.png)" in md


# ---------------------------------------------------------------- token-classification (tagger) reports


def test_tagging_report_variants_table() -> None:
    from embslim.pipeline.report import REPORT_VIEWS, _report_view

    report = tag_report()
    assert _report_view(report) is REPORT_VIEWS["token-classification"]
    md = render_markdown(report)
    every = md.split("## All files")[1]
    header = _table_row(every, "variant")
    assert header == ["variant", "precision", "params (M)", "embedding params (M)", "ONNX MB", "embedding MB",
                      "entity F1 %", "Δ entity F1 (pts)", "R %", "word accuracy %", "token agreement with PyTorch %",
                      "max \\|Δlogit\\| vs PyTorch", "F1 drop vs its fp32 (pts)", "p50 ms", "p95 ms", "peak RSS MB",
                      "size vs ref"]
    assert not any(h in header for h in _CLASSIFICATION_ONLY)   # no accuracy, no given-model columns without the keys
    col = {name: i for i, name in enumerate(header)}
    ref, dep, int8 = (_table_row(every, n) for n in ("unpruned", "dep", "dep int8-arm64"))
    assert (ref[col["entity F1 %"]], dep[col["entity F1 %"]], int8[col["entity F1 %"]]) == ("45.12", "44.31", "43.90")
    assert (dep[col["Δ entity F1 (pts)"]], int8[col["Δ entity F1 (pts)"]]) == ("-0.81", "-1.22")
    assert (dep[col["R %"]], dep[col["word accuracy %"]]) == ("37.90", "93.02")
    assert (dep[col["token agreement with PyTorch %"]], dep[col["max \\|Δlogit\\| vs PyTorch"]]) == ("100.00", "4.1e-06")
    # quantized rows: no PyTorch parity, their drop vs fp32 instead; fp32 rows have no drop
    assert [int8[col[c]] for c in ("R %", "word accuracy %", "token agreement with PyTorch %", "F1 drop vs its fp32 (pts)")] \
        == [MISSING, MISSING, MISSING, "0.41"]
    assert dep[col["F1 drop vs its fp32 (pts)"]] == MISSING and int8[col["precision"]] == "int8"
    assert "Task: wnut17 (token-classification; single sentences; 13 tags over 6 entity types (corporation, " \
           "creative-work, group, location, person, product); train 3,394 of 3,394 sentences used; eval 1,287 sentences)" in md
    assert "Reference for Δ entity F1 and ratios: unpruned." in md
    assert "(seqeval, default mode) on the eval split (1,287 sentences, 1,079 gold entities)" in md
    details = md.split("## Entity F1 per type")[0].split("## All files")[1]
    assert "- dep: DEP-pruned vocabulary; file model.onnx; PyTorch entity F1 44.31%" in details
    assert "- dep int8-arm64: fused, int8 for arm64; file model.int8-arm64.onnx; token agreement with its fp32 file " \
           "99.62%; latency" in details
    assert "dep int4-arm64: fused, int4 for arm64; file model.int4-arm64.onnx; token agreement with its fp32 file 98.11%; " \
           "FLAGGED: its entity F1 drop vs fp32 is past the allowed maximum" in details
    assert "- dep: 0.69x ONNX size, 0.40x embedding bytes, 0.69x params, 0.97x p50 latency, -0.81 pts entity F1, " \
           "-0.19 pts word accuracy" in md
    side = md.split("## Side by side")[1].split("## All files")[0]
    side_col = {c: i for i, c in enumerate(_table_row(side, "variant"))}
    assert [_table_row(side, "dep")[side_col[c]] for c in ("fp32 entity F1 %", "Δ fp32 F1 (pts)", "int8 entity F1 %",
                                                            "4-bit entity F1 %")] == ["44.31", "-0.81", "43.90", "41.02"]
    assert "accuracy %" not in md.replace("word accuracy %", "")


def test_tagging_report_per_type_table() -> None:
    md = render_markdown(tag_report())
    section = md.split("## Entity F1 per type")[1].split("## Ratios")[0]
    header = _table_row(section, "variant")
    # one column per type, most gold entities first, support in the header
    assert header == ["variant", "person (n=429)", "group (n=165)", "location (n=150)", "creative-work (n=142)",
                      "product (n=127)", "corporation (n=66)"]
    assert _table_row(section, "unpruned")[1:] == ["62.00", "31.00", "55.00", "18.00", "12.00", "22.00"]
    assert _table_row(section, "dep int4-arm64")[1] == "55.80"
    assert len([line for line in section.splitlines() if line.startswith("| ")]) == 5   # header and the four files


def test_tagging_report_missing_metrics_render_as_the_dash() -> None:
    report = tag_report(int4=False)
    dep = report["variants"][1]
    for key in ("f1", "recall", "word_accuracy", "agreement", "max_logit_diff", "torch_f1"):
        dep[key] = None
    dep["per_type"] = {"person": {"f1": float("nan"), "support": 429}}   # one type measured, its F1 not finite
    report["variants"][2]["per_type"].pop("product")
    for v in report["variants"]:   # --no-measure
        for key in ("latency_ms_p50", "latency_ms_p95", "peak_rss_mb"):
            v.pop(key)
    md = render_markdown(report)
    every = md.split("## All files")[1]
    header = _table_row(every, "variant")
    assert not any(h in header for h in ("p50 ms", "p95 ms", "peak RSS MB", "P %"))   # nothing measured: dropped
    col = {name: i for i, name in enumerate(header)}
    row = _table_row(every, "dep")
    assert [row[col[c]] for c in ("entity F1 %", "Δ entity F1 (pts)", "R %", "word accuracy %",
                                  "token agreement with PyTorch %")] == [MISSING] * 5
    section = md.split("## Entity F1 per type")[1]
    per_col = {c: i for i, c in enumerate(_table_row(section, "variant"))}
    assert _table_row(section, "dep")[1:] == [MISSING] * 6
    assert _table_row(section, "dep int8-arm64")[per_col["product (n=127)"]] == MISSING
    assert "- dep: 0.69x ONNX size, 0.40x embedding bytes, 0.69x params" in md and "pts entity F1" not in \
        md.split("- dep: ")[2].splitlines()[0]
    del report["variants"][0]["per_type"], report["variants"][1]["per_type"], report["variants"][2]["per_type"]
    assert "## Entity F1 per type" not in render_markdown(report)   # no row measured per type: no section


def test_tagging_report_given_model_and_entity_precision_columns() -> None:
    """Given-model columns appear with their keys; P % reads `entity_precision` (a row's `precision`
    is its dtype) and shows the dash for rows without it."""
    report = tag_report(int4=False, given=True)
    report["variants"][1]["entity_precision"] = 0.5321
    every = render_markdown(report).split("## All files")[1]
    header = _table_row(every, "variant")
    col = {name: i for i, name in enumerate(header)}
    assert {"agrees with given model %", "max \\|Δlogit\\| vs given model", "P %"} <= set(header)
    dep, int8 = _table_row(every, "dep"), _table_row(every, "dep int8-arm64")
    assert (dep[col["P %"]], dep[col["precision"]]) == ("53.21", "fp32")
    assert (int8[col["P %"]], int8[col["precision"]]) == (MISSING, "int8")
    assert dep[col["agrees with given model %"]] == "99.10"


def test_tagging_report_writes_its_plot_and_html(tmp_path: Path) -> None:
    from embslim.pipeline.report import _pyplot, accuracy_figure

    report = tag_report()
    paths = write_report(report, tmp_path)
    assert set(paths) == {"json", "md", "html", "size_plot", "accuracy_plot"}
    assert _files_under(tmp_path) == EXPECTED_FILES
    _assert_png(paths["accuracy_plot"])
    md = paths["md"].read_text(encoding="utf-8")
    assert "![Entity F1 vs size](plots/accuracy_vs_size.png)" in md
    page = paths["html"].read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert [alt for alt, _ in images] == ["Size breakdown", "Entity F1 vs size"]
    assert "<h2>Entity F1 per type</h2>" in page and "<th>creative-work (n=142)</th>" in page
    fig = accuracy_figure(report)
    try:
        ax = fig.axes[0]
        assert (ax.get_title(), ax.get_ylabel()) == ("Entity F1 vs ONNX size", "entity F1 (%)")
        assert len([c for c in ax.collections if c.get_gid() is None]) == 3   # fp32, int8, int4 points
        labels = ax.get_legend_handles_labels()[1]
        assert "reference (unpruned): 45.12%" in labels and labels[:3] == ["fp32", "int8", "int4"]
    finally:
        _pyplot().close(fig)


def test_compare_two_tagging_reports(tmp_path: Path) -> None:
    other = tag_report(int4=False)
    other["task"]["n_eval"] = 1000
    for v in other["variants"]:
        v["per_type"]["person"]["support"] = 350
    write_report(tag_report(), tmp_path / "seed0")
    write_report(other, tmp_path / "seed1")
    merged = compare_reports([tmp_path / "seed0", tmp_path / "seed1"])
    paths = write_report(merged, tmp_path / "cmp")
    md = paths["md"].read_text(encoding="utf-8")
    assert "Bundle seed1: model dslim/bert-base-NER (bert, hidden 384, vocab 30,522); task wnut17 (token-classification;" \
           in md.split("## ")[0]
    assert "Warning: the eval splits differ in size (seed0 1287, seed1 1000 sentences)" in md.split("## ")[0]
    every = md.split("## All files")[1]
    col = {c: i for i, c in enumerate(_table_row(every, "variant"))}
    assert _table_row(every, "seed1/dep int8-arm64")[col["Δ entity F1 (pts)"]] == "-1.22"
    per_type = md.split("## Entity F1 per type")[1]
    assert _table_row(per_type, "variant")[1] == "person (n=350-429)"   # the splits' supports differ
    assert _table_row(per_type, "seed1/dep")[0] == "seed1/dep"
    _assert_png(paths["accuracy_plot"])


def test_compare_refuses_taggers_mixed_with_other_tasks_or_tag_sets(tmp_path: Path, capsys) -> None:
    from embslim.pipeline.cli import main

    write_report(tag_report(), tmp_path / "ner")
    write_report(_report(2), tmp_path / "sst2")
    write_report(_emb_report(), tmp_path / "emb")
    with pytest.raises(ReportError, match=r"^cannot compare bundles of different task types \(ner: token-classification, "
                                          r"sst2: text-classification\); accuracy and entity F1 are different "
                                          r"measurements: compare bundles of one task type$"):
        compare_reports([tmp_path / "ner", tmp_path / "sst2"])
    with pytest.raises(ReportError, match=r"embedding cosine/kNN and entity F1 are different measurements"):
        compare_reports([tmp_path / "ner", tmp_path / "emb"])
    coarse = tag_report()
    coarse["task"] |= {"n_labels": 3, "labels": ["O", "B-PER", "I-PER"]}
    write_report(coarse, tmp_path / "persons")
    with pytest.raises(ReportError, match=r"^cannot compare bundles of different tasks \(ner: wnut17 .*, persons: wnut17 "
                                          r".*3 tags over 1 entity types \(PER\).*\); their entity F1 scores are not "
                                          r"comparable: compare bundles built for the same task and tag set$"):
        compare_reports([tmp_path / "ner", tmp_path / "persons"])
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "ner"), str(tmp_path / "sst2"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embslim compare: error: cannot compare bundles of different task types (ner: ")
    assert len(err.splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_entity_types_of_a_tag_set() -> None:
    from embslim.pipeline.report import entity_types

    assert entity_types(["O", "B-person", "I-person", "B-creative-work", "I-creative-work"]) == ["person", "creative-work"]
    assert entity_types(["O", "S-LOC", "B-LOC", "E-LOC", "PER"]) == ["LOC", "PER"]
    assert entity_types(["O"]) == []


def test_pareto_front_keeps_only_files_nothing_beats() -> None:
    from embslim.pipeline.report import pareto_front

    points = [("big-best", 90.0, 0.84), ("small", 15.0, 0.83), ("mid-worse", 60.0, 0.83),
              ("tiny-bad", 8.0, 0.70), ("tie-a", 15.0, 0.83)]
    assert pareto_front(points) == {"big-best", "small", "tie-a", "tiny-bad"}
    assert pareto_front([]) == set()


def test_markdown_names_the_pareto_frontier_under_each_metric_plot() -> None:
    # unpruned 90.9 MB 83.83%, dep 61.8 MB 83.49%, dep-int8 15.6 MB 83.14%: each is smaller and worse than
    # the one before, so all three are on the frontier; a fourth, bigger and worse than dep, is not.
    report = _report(3)
    report["variants"].append(_variant("dep-worse", onnx_bytes=70_000_000, accuracy=0.80))
    md = render_markdown(report)
    line = next(x for x in md.splitlines() if x.startswith("Pareto frontier of accuracy"))
    assert line.endswith("dep-int8 (15.60 MB, 83.14%), dep (61.80 MB, 83.49%), unpruned (90.90 MB, 83.83%).")
    assert "dep-worse" not in line
