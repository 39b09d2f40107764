"""Tests for embslim.pipeline.data: every format and every bad-input message on tiny files; counts on the real data."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from embslim.pipeline.data import DataConfig, DataError, Split, TaskData, load_task, subsample, synthetic_sentiment

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def tsv(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> Path:
    return write(path, header + "\n" + "".join(f"{t}\t{l}\n" for t, l in rows))


TRAIN = [("good film ", "1"), ("bad film", "0"), (" great fun", "1"), ("dull", "0")]


# --- formats -------------------------------------------------------------------------------------------------


def test_tsv_int_labels_strip_and_name(tmp_path: Path) -> None:
    train = tsv(tmp_path / "mytask" / "train.tsv", TRAIN)
    dev = tsv(tmp_path / "mytask" / "dev.tsv", [("fine ", "1"), ("meh", "0")])
    task = load_task(DataConfig(train=str(train), eval=str(dev)))
    assert task.name == "mytask"
    assert task.label_names == ("0", "1")
    assert task.train.texts == ("good film", "bad film", "great fun", "dull")
    assert task.train.labels == (1, 0, 1, 0)
    assert task.eval.texts == ("fine", "meh") and task.eval.labels == (1, 0)
    assert task.train.pairs is None and not task.is_pair
    assert len(task.train) == 4 and len(task.eval) == 2


def test_int_labels_sorted_numerically(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", [("a", "10"), ("b", "2"), ("c", "-1"), ("d", "2")])
    task = load_task(DataConfig(train=str(train), eval=str(train)))
    assert task.label_names == ("-1", "2", "10")
    assert task.train.labels == (2, 1, 0, 1)


def test_string_labels_sorted(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", [("a", "pos"), ("b", "neg"), ("c", "1"), ("d", "neutral")])
    task = load_task(DataConfig(train=str(train), eval=str(train), name="custom"))
    assert task.name == "custom"
    assert task.label_names == ("1", "neg", "neutral", "pos")  # one non-int label -> all are names
    assert task.train.labels == (3, 1, 0, 2)


def test_bom_is_dropped(tmp_path: Path) -> None:
    train = write(tmp_path / "t.tsv", "\ufeffsentence\tlabel\nhello\t1\nbye\t0\n".encode("utf-8"))
    task = load_task(DataConfig(train=str(train), eval=str(train)))
    assert task.train.texts == ("hello", "bye")


def test_tsv_keeps_quote_characters(tmp_path: Path) -> None:
    train = write(tmp_path / "t.tsv", 'sentence\tlabel\nhe said " hi " to me\t1\n"open quote\t0\n')
    task = load_task(DataConfig(train=str(train), eval=str(train)))
    assert task.train.texts == ('he said " hi " to me', '"open quote')


def test_csv_with_quotes(tmp_path: Path) -> None:
    train = write(tmp_path / "t.csv", 'text,label\n"hello, world",yes\n"she said ""no""",no\nplain,yes\n')
    task = load_task(DataConfig(train=str(train), eval=str(train), text_column="text"))
    assert task.train.texts == ("hello, world", 'she said "no"', "plain")
    assert task.label_names == ("no", "yes") and task.train.labels == (1, 0, 1)


def test_jsonl_int_and_str_labels(tmp_path: Path) -> None:
    recs = [{"sentence": "a", "label": 1}, {"sentence": "b", "label": "0"}, {"sentence": "c", "label": 0}]
    train = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n\n")
    task = load_task(DataConfig(train=str(train), eval=str(train)))
    assert task.label_names == ("0", "1") and task.train.labels == (1, 0, 0)


def test_json_list(tmp_path: Path) -> None:
    recs = [{"q": "what time", "intent": "time"}, {"q": "weather today", "intent": "weather"}]
    train = write(tmp_path / "t.json", json.dumps(recs))
    task = load_task(DataConfig(train=str(train), eval=str(train), text_column="q", label_column="intent"))
    assert task.label_names == ("time", "weather") and task.train.texts == ("what time", "weather today")


def test_pair_columns(tmp_path: Path) -> None:
    body = "Quality\t#1 String\t#2 String\n1\tA cat sat .\tThe cat sat .\n0\tIt rains .\tI ran \" fast .\n"
    train = write(tmp_path / "mrpc" / "train.tsv", b"\xef\xbb\xbf" + body.encode())
    cfg = DataConfig(train=str(train), eval=str(train), text_column="#1 String", text_pair_column="#2 String",
                     label_column="Quality")
    task = load_task(cfg)
    assert task.is_pair
    assert task.train.texts == ("A cat sat .", "It rains .")
    assert task.train.pairs == ("The cat sat .", 'I ran " fast .')
    assert task.train.labels == (1, 0)


def clinc(path: Path) -> Path:
    data = {
        "train": [["set an alarm", "alarm"], ["wake me at 7", "alarm"], ["play jazz", "play_music"]],
        "oos_train": [["how tall is everest", "oos"]],
        "val": [["alarm for 8", "alarm"]], "oos_val": [["who won", "oos"]],
        "test": [["music please", "play_music"], ["alarm now", "alarm"]], "oos_test": [["sky color", "oos"]],
    }
    return write(path, json.dumps(data))


def test_clinc150_autodetect_and_splits(tmp_path: Path) -> None:
    path = clinc(tmp_path / "clinc150" / "data_full.json")
    task = load_task(DataConfig(train=str(path)))
    assert task.name == "clinc150"
    assert task.label_names == ("alarm", "oos", "play_music")
    assert len(task.train) == 4 and task.train.labels == (0, 0, 2, 1)
    assert task.eval.texts == ("alarm for 8", "who won")
    test = load_task(DataConfig(train=str(path), clinc_eval_split="test"))
    assert test.eval.labels == (2, 0, 1)


def test_clinc150_rejects_eval_file(tmp_path: Path) -> None:
    path = clinc(tmp_path / "data_full.json")
    with pytest.raises(DataError, match=r"CLINC150 file with its own eval splits.*--clinc-eval-split"):
        load_task(DataConfig(train=str(path), eval=str(path)))


def test_clinc150_format_on_wrong_layout(tmp_path: Path) -> None:
    path = write(tmp_path / "list.json", json.dumps([{"sentence": "a", "label": 1}]))
    with pytest.raises(DataError, match=r"list\.json: expected the CLINC150 object .*got a list"):
        load_task(DataConfig(train=str(path), format="clinc150"))
    partial = write(tmp_path / "partial.json", json.dumps({"train": [["a", "x"]], "oos_train": []}))
    with pytest.raises(DataError, match=r"CLINC150 split 'oos_train' is missing or empty"):
        load_task(DataConfig(train=str(partial)))


def test_seeded_split_deterministic_and_disjoint(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", [(f"text {i}", str(i % 3)) for i in range(50)])
    a = load_task(DataConfig(train=str(train), eval_fraction=0.2, seed=7))
    b = load_task(DataConfig(train=str(train), eval_fraction=0.2, seed=7))
    c = load_task(DataConfig(train=str(train), eval_fraction=0.2, seed=8))
    assert a == b
    assert len(a.eval) == 10 and len(a.train) == 40
    assert not set(a.train.texts) & set(a.eval.texts)
    assert set(a.train.texts) | set(a.eval.texts) == {f"text {i}" for i in range(50)}
    assert a.eval.texts != c.eval.texts
    assert a.label_names == ("0", "1", "2")  # from the whole file, so every eval label is known


def test_data_root_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tsv(tmp_path / "root" / "sst" / "train.tsv", TRAIN)
    tsv(tmp_path / "cwd" / "other.tsv", TRAIN[:2])
    monkeypatch.chdir(tmp_path / "cwd")
    task = load_task(DataConfig(train="sst/train.tsv", eval="other.tsv"), data_root=str(tmp_path / "root"))
    assert len(task.train) == 4 and len(task.eval) == 2 and task.name == "sst"


def test_summary_is_json(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", TRAIN)
    s = load_task(DataConfig(train=str(train), eval=str(train))).summary()
    assert json.loads(json.dumps(s)) == s
    assert s["n_train"] == 4 and s["n_labels"] == 2 and s["label_names"] == ["0", "1"]
    assert s["label_counts"]["train"] == {"0": 2, "1": 2}


def test_logs_one_line_per_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = tsv(tmp_path / "t.tsv", TRAIN)
    with caplog.at_level(logging.INFO, logger="embslim.pipeline.data"):
        load_task(DataConfig(train=str(train), eval=str(train)))
    msgs = [r.getMessage() for r in caplog.records if r.name == "embslim.pipeline.data" and " rows, " in r.getMessage()]
    assert len(msgs) == 2 and "train: 4 rows" in msgs[0] and "eval: 4 rows" in msgs[1]
    columns = [r.getMessage() for r in caplog.records if "text column" in r.getMessage()]
    assert columns and all("text column 'sentence'" in m for m in columns), "says which text column it used"


# --- errors --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nope\.tsv.*check the path \(or --data-root\)"):
        load_task(DataConfig(train=str(tmp_path / "nope.tsv")))
    with pytest.raises(DataError, match=r"root/x\.tsv or x\.tsv"):
        load_task(DataConfig(train="x.tsv"), data_root=str(tmp_path / "root"))


def test_missing_column_lists_columns(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", TRAIN, header="body\tlabel")
    with pytest.raises(DataError, match=r"t\.tsv:2: no column 'sentence'; columns are \['body', 'label'\]; "
                                        r"set --text-column"):
        load_task(DataConfig(train=str(train)))
    with pytest.raises(DataError, match=r"no column 'y'.*--label-column"):
        load_task(DataConfig(train=str(train), text_column="body", label_column="y"))
    with pytest.raises(DataError, match=r"no column 'pair'.*--text-pair-column"):
        load_task(DataConfig(train=str(train), text_column="body", text_pair_column="pair"))


def test_missing_column_jsonl(tmp_path: Path) -> None:
    train = write(tmp_path / "t.jsonl", json.dumps({"body": "a", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:1: no column 'sentence'; columns are \['body', 'label'\]"):
        load_task(DataConfig(train=str(train)))


def test_empty_split(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", TRAIN)
    empty = write(tmp_path / "dev.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match=r"dev\.tsv: no data rows"):
        load_task(DataConfig(train=str(train), eval=str(empty)))
    blank = write(tmp_path / "blank.tsv", "")
    with pytest.raises(DataError, match=r"blank\.tsv: file is empty"):
        load_task(DataConfig(train=str(blank)))
    with pytest.raises(DataError, match=r"blank\.jsonl: no data rows"):
        load_task(DataConfig(train=str(write(tmp_path / "blank.jsonl", "\n"))))


def test_unseen_eval_label(tmp_path: Path) -> None:
    train = tsv(tmp_path / "t.tsv", TRAIN)
    dev = tsv(tmp_path / "dev.tsv", [(f"x{i}", str(i)) for i in range(2, 10)])
    with pytest.raises(DataError, match=r"dev\.tsv: eval label\(s\) \['2', '3', '4', '5', '6'\] \.\.\. never occur "
                                        r"in training data .*t\.tsv; fix the data or check --label-column"):
        load_task(DataConfig(train=str(train), eval=str(dev)))


def test_undecodable_bytes_names_file_and_line(tmp_path: Path) -> None:
    train = write(tmp_path / "bad.tsv", b"sentence\tlabel\nfine\t1\ncaf\xe9 \xff\t0\n")
    with pytest.raises(DataError, match=r"bad\.tsv:3: byte 0xe9 is not valid UTF-8; re-save the file as UTF-8"):
        load_task(DataConfig(train=str(train)))


def test_ragged_row(tmp_path: Path) -> None:
    train = write(tmp_path / "r.tsv", "sentence\tlabel\nok\t1\ntoo\tmany\t0\n")
    with pytest.raises(DataError, match=r"r\.tsv:3: expected 2 TSV fields like the header, got 3"):
        load_task(DataConfig(train=str(train)))


def test_empty_label_and_text(tmp_path: Path) -> None:
    no_label = write(tmp_path / "l.tsv", "sentence\tlabel\nok\t1\nfine\t \n")
    with pytest.raises(DataError, match=r"l\.tsv:3: empty label in column 'label'"):
        load_task(DataConfig(train=str(no_label)))
    no_text = write(tmp_path / "x.tsv", "sentence\tlabel\n  \t1\n")
    with pytest.raises(DataError, match=r"x\.tsv:2: column 'sentence' must be non-empty text"):
        load_task(DataConfig(train=str(no_text)))


def test_bad_json_inputs(tmp_path: Path) -> None:
    bad_line = write(tmp_path / "b.jsonl", '{"sentence": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        load_task(DataConfig(train=str(bad_line)))
    not_list = write(tmp_path / "d.json", json.dumps({"rows": []}))
    with pytest.raises(DataError, match=r"d\.json: expected a JSON list of objects, got a dict"):
        load_task(DataConfig(train=str(not_list)))
    bool_label = write(tmp_path / "e.jsonl", json.dumps({"sentence": "a", "label": True}))
    with pytest.raises(DataError, match=r"e\.jsonl:1: label must be an int or a string, got True"):
        load_task(DataConfig(train=str(bool_label)))


def test_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "t.parquet", "x")
    with pytest.raises(DataError, match=r"cannot tell the format .*'\.parquet'.*--format"):
        load_task(DataConfig(train=str(path)))
    task = load_task(DataConfig(train=str(tsv(tmp_path / "t.data", TRAIN)), format="tsv"))
    assert len(task.train) + len(task.eval) == 4


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, r"no task data: pass --train FILE .*, --text FILE"),
        ({"train": "a.tsv", "dataset": "synthetic-sentiment"}, r"expected one of train .* drop one of --train / --dataset"),
        ({"dataset": "synthetic-sentiment", "eval": "b.tsv"}, r"needs a train file"),
        ({"train": "a.tsv", "eval_fraction": 1.0}, r"eval_fraction must be in \(0, 1\), got 1\.0"),
        ({"train": "a.tsv", "eval_fraction": 0.0}, r"eval_fraction must be in \(0, 1\)"),
        ({"train": "a.tsv", "format": "xml"}, r"format must be one of auto, tsv.*got 'xml'"),
        ({"train": "a.tsv", "clinc_eval_split": "dev"}, r"clinc_eval_split must be 'val' or 'test'"),
        ({"train": "a.tsv", "text_column": "label"}, r"non-empty and distinct.*--label-column"),
        ({"train": "a.tsv", "text_column": ""}, r"non-empty and distinct"),
    ],
)
def test_config_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        DataConfig(**kwargs)  # type: ignore[arg-type]


def test_hf_dataset_needs_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match=r"'glue:sst2' is not built in.*pip install datasets"):
        load_task(DataConfig(dataset="glue:sst2"))


def test_split_length_mismatch() -> None:
    with pytest.raises(DataError, match=r"equally long texts/pairs/labels, got 2/None/1"):
        Split(("a", "b"), None, (0,))


# --- subsample and synthetic ---------------------------------------------------------------------------------


def test_subsample() -> None:
    split = Split(tuple(f"t{i}" for i in range(20)), tuple(f"p{i}" for i in range(20)), tuple(i % 2 for i in range(20)))
    assert subsample(split, None, seed=0) is split
    assert subsample(split, 20, seed=0) is split and subsample(split, 99, seed=0) is split
    a, b, c = subsample(split, 5, seed=1), subsample(split, 5, seed=1), subsample(split, 5, seed=2)
    assert a == b and a != c and len(a) == 5
    assert a.pairs is not None
    for text, pair, label in zip(a.texts, a.pairs, a.labels):
        i = int(text[1:])
        assert pair == f"p{i}" and label == i % 2
    with pytest.raises(DataError, match=r"positive int or None, got 0"):
        subsample(split, 0, seed=0)


def test_synthetic_sentiment() -> None:
    a, b = synthetic_sentiment(200, 50, seed=3), synthetic_sentiment(200, 50, seed=3)
    assert a == b and a != synthetic_sentiment(200, 50, seed=4)
    assert isinstance(a, TaskData) and a.label_names == ("negative", "positive") and not a.is_pair
    assert len(a.train) == 200 and len(a.eval) == 50
    assert 60 < sum(a.train.labels) < 140
    negated = [(t, y) for t, y in zip(a.train.texts, a.train.labels) if " not " in t]
    assert negated and any(y == 1 for _, y in negated) and any(y == 0 for _, y in negated)
    assert all(t.split(" not ")[1].split()[0] not in ("good", "great") for t, y in negated if y == 1)
    task = load_task(DataConfig(dataset="synthetic-sentiment", seed=3))
    assert task.name == "synthetic-sentiment" and len(task.train) == 2000 and len(task.eval) == 400
    assert load_task(DataConfig(dataset="synthetic-sentiment", name="demo")).name == "demo"
    with pytest.raises(DataError, match=r"n_train >= 1"):
        synthetic_sentiment(0, 10)


# --- real data (../shared/data) ------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}")


@pytest.mark.slow
@needs_data
def test_real_sst2() -> None:
    task = load_task(DataConfig(train="sst2/train.tsv", eval="sst2/dev.tsv"), data_root=str(SHARED_DATA))
    assert (task.name, len(task.train), len(task.eval), task.label_names) == ("sst2", 67_349, 872, ("0", "1"))
    assert task.summary()["label_counts"]["eval"] == {"0": 428, "1": 444}
    assert not any(t != t.strip() for t in task.train.texts[:1000])


@pytest.mark.slow
@needs_data
def test_real_clinc150() -> None:
    task = load_task(DataConfig(train=str(SHARED_DATA / "clinc150" / "data_full.json")))
    assert (len(task.label_names), len(task.train), len(task.eval)) == (151, 15_100, 3_100)
    assert "oos" in task.label_names
    test = load_task(DataConfig(train=str(SHARED_DATA / "clinc150" / "data_full.json"), clinc_eval_split="test"))
    assert len(test.eval) == 5_500


@pytest.mark.slow
@needs_data
def test_real_mrpc() -> None:
    cfg = DataConfig(train=str(SHARED_DATA / "mrpc" / "train.tsv"), eval=str(SHARED_DATA / "mrpc" / "dev.tsv"),
                     text_column="#1 String", text_pair_column="#2 String", label_column="Quality")
    task = load_task(cfg)
    assert task.is_pair and task.train.pairs is not None
    assert (len(task.train), len(task.eval), task.label_names) == (3_668, 408, ("0", "1"))
    assert task.summary()["label_counts"]["train"] == {"0": 1_194, "1": 2_474}
    assert any('"' in t for t in task.train.texts)  # quote characters survive QUOTE_NONE
