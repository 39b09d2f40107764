"""Hugging Face `datasets` as task data: folders written by `save_to_disk` (a Dataset or a
DatasetDict, absolute or relative paths) load through `load_from_disk`, and `ClassLabel` names
become the labels, up to the bundle; JSONL/CSV files with a `text` column need no --text-column."""

from __future__ import annotations

import json
import logging

import pytest

datasets = pytest.importorskip("datasets", reason="the `datasets` package (dev extra) is not installed")

from embslim.pipeline.cli import main
from embslim.pipeline.data import DataConfig, DataError, load_task
from embslim.runtime.manifest import read_manifest

NAMES = ["sad", "happy"]   # ClassLabel order deliberately not alphabetical
TEXTS = {0: ["the movie was bad", "boring and dull", "awful acting", "a tedious mess", "weak and flat"],
         1: ["a great movie", "charming and funny", "brilliant acting", "a lovely story", "warm and moving"]}


def _dataset(n: int = 4):
    rows = [(t, y) for y in (0, 1) for t in TEXTS[y]] * n
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features)


def test_a_saved_dataset_dict_keeps_its_class_label_names(tmp_path, caplog):
    ds = datasets.DatasetDict({"train": _dataset(), "validation": _dataset(1)})
    ds.save_to_disk(str(tmp_path / "sentiment"))
    with caplog.at_level(logging.INFO, logger="embslim.pipeline.data"):
        task = load_task(DataConfig(dataset=str(tmp_path / "sentiment")))
    assert set(task.label_names) == {"sad", "happy"}
    assert [task.label_names[y] for y in task.eval.labels[:5]] == ["sad"] * 5
    assert task.name == "sentiment" and len(task.train) == 40 and len(task.eval) == 10
    assert any("text column 'text'" in r.getMessage() for r in caplog.records), "says which text column it used"


def test_a_saved_dataset_by_relative_path_is_a_folder_not_a_hub_name(tmp_path, monkeypatch):
    _dataset().save_to_disk(str(tmp_path / "data" / "x"))
    monkeypatch.chdir(tmp_path)
    task = load_task(DataConfig(dataset="data/x"))   # once read as hub name "data" with config "x"
    assert set(task.label_names) == set(NAMES) and len(task.train) + len(task.eval) == 40
    task = load_task(DataConfig(dataset="x"), data_root=str(tmp_path / "data"))
    assert set(task.label_names) == set(NAMES)


def test_a_damaged_saved_dataset_is_one_line(tmp_path):
    folder = tmp_path / "broken"
    _dataset().save_to_disk(str(folder))
    (folder / "state.json").write_text("{not json")
    with pytest.raises(DataError, match=r"could not load dataset .* from local folder .*broken.*save_to_disk"):
        load_task(DataConfig(dataset=str(folder)))


@pytest.mark.parametrize("relative", [False, True])
def test_run_on_saved_datasets_bundles_the_class_label_names(tmp_path, monkeypatch, tiny_model_dir, relative):
    datasets.DatasetDict({"train": _dataset(), "validation": _dataset(1)}).save_to_disk(str(tmp_path / "dd"))
    monkeypatch.chdir(tmp_path)
    source = "dd" if relative else str(tmp_path / "dd")
    out = tmp_path / "bundle"
    assert main(["run", "--model", str(tiny_model_dir), "--dataset", source, "--out", str(out), "--max-steps", "1",
                 "--batch-size", "8", "--max-length", "16", "--no-measure", "--targets", "", "--no-baseline"]) == 0
    assert set(read_manifest(out)["task"]["labels"]) == set(NAMES)
    assert set(json.loads((out / "config.json").read_text())["id2label"].values()) == set(NAMES)


def test_jsonl_and_csv_with_a_text_column_need_no_flag(tmp_path):
    rows = [{"text": t, "label": NAMES[y]} for y in (0, 1) for t in TEXTS[y]]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    for name in ("t.jsonl", "t.csv"):
        task = load_task(DataConfig(train=str(tmp_path / name)))
        assert len(task.train) + len(task.eval) == 10
    with pytest.raises(DataError, match=r"no column 'sentence'; columns are \['body', 'label'\]; set --text-column"):
        (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x", "label": "a"}) + "\n")
        load_task(DataConfig(train=str(tmp_path / "b.jsonl")))
