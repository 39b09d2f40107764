"""Word-tagged data (embslim.pipeline.tagged): CoNLL / JSONL reading, tag schemes to BIO, one-line
errors naming the line, word tags to sub-word tokens, entity scores (seqeval)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embslim.pipeline.data import DataConfig, DataError, load_task
from embslim.pipeline.tagged import (IGNORE, detect_scheme, entity_scores, first_token_index, read_tagged, to_bio,
                                     token_labels, word_predictions)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TRAIN = "John\tB-person\nlives\tO\nin\tO\nNew\tB-location\nYork\tI-location\n\nParis\tB-location\nrocks\tO\n"
EVAL = "Mary\tB-person\nsaw\tO\nLondon\tB-location\n"


def test_conll_tab_space_and_conll2003_layouts_read_the_same(tmp_path):
    tab = read_tagged(write(tmp_path / "a.conll", TRAIN))
    space = read_tagged(write(tmp_path / "b.conll", TRAIN.replace("\t", " ")))
    conll03 = read_tagged(write(tmp_path / "c.conll", "-DOCSTART- -X- -X- O\n\n" + "\n".join(
        f"{w} NNP B-NP {t}" if w else "" for w, t in (ln.split("\t") if ln else ("", "") for ln in TRAIN.split("\n")))))
    assert [s[:2] for s in tab] == [s[:2] for s in space] == [s[:2] for s in conll03]
    assert tab[0][0] == ("John", "lives", "in", "New", "York") and tab[1][1] == ("B-location", "O")
    assert tab[1][2].endswith("a.conll:7")   # where the sentence starts, for messages


def test_jsonl_tokens_and_tags(tmp_path):
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in (
        {"tokens": ["John", "lives"], "tags": ["B-person", "O"]}, {"tokens": ["Paris"], "ner_tags": ["B-location"]})))
    assert [s[:2] for s in read_tagged(path)] == [(("John", "lives"), ("B-person", "O")), (("Paris",), ("B-location",))]


def test_schemes_are_detected_and_rewritten_to_bio():
    iob1 = [(("a", "b", "c", "d"), ("I-per", "I-per", "B-per", "O"), "f:1")]
    iobes = [(("a", "b", "c", "d"), ("B-loc", "E-loc", "S-per", "O"), "f:1")]
    bilou = [(("a", "b", "c"), ("B-loc", "L-loc", "U-per"), "f:1")]
    bio = [(("a", "b", "c"), ("B-per", "I-per", "B-per"), "f:1")]
    assert [detect_scheme(s) for s in (iob1, iobes, bilou, bio)] == ["iob1", "iobes", "iobes", "bio"]
    assert to_bio(iob1[0][1], "iob1", where="f:1") == ("B-per", "I-per", "B-per", "O")
    assert to_bio(iobes[0][1], "iobes", where="f:1") == ("B-loc", "I-loc", "B-per", "O")
    assert to_bio(bilou[0][1], "iobes", where="f:1") == ("B-loc", "I-loc", "B-per")
    assert to_bio(bio[0][1], "bio", where="f:1") == bio[0][1]


@pytest.mark.parametrize("text, scheme, line, words", [
    ("a\tO\nb\tB-per\nc\nd\tO\n", "auto", 3, "column"),                       # ragged: no tag
    ("a\tO\tX\nb\tB-per\n", "auto", 2, "column"),                             # ragged: fewer columns than line 1
    ("a\tO\nb\tB-per\nc\tO\nd\tI-loc\n\ne\tB-loc\n", "bio", 4, "follows 'O'"),  # I- after O breaks BIO
    ("a\tB-per\nb\tI-per\nc\tO\nd\tI-per\n\ne\tB-loc\n", "auto", 4, "BIO"),     # mixed B-/I- starts: not IOB1 either
    ("a\tB-per\nb\tPERSON\n", "auto", 2, "is not O"),                          # not a tag
    ("a\tB-per\nb\tE-per\n\nc\tE-loc\n", "iobes", 4, "IOBES"),                 # E- with no open entity
    ("a\tS-per\nb\tB-loc\nc\tI-loc\n", "iobes", 3, "ends inside"),            # entity never closed
])
def test_bad_conll_is_one_line_naming_the_line(tmp_path, text, scheme, line, words):
    path = write(tmp_path / "bad.conll", text)
    with pytest.raises(DataError) as e:
        load_task(DataConfig(train=str(path), eval=str(path), tag_scheme=scheme))
    message = str(e.value)
    assert "\n" not in message and f"bad.conll:{line}" in message and words in message


def test_eval_type_never_seen_in_training_names_the_line(tmp_path):
    train = write(tmp_path / "train.conll", TRAIN)
    dev = write(tmp_path / "dev.conll", "Acme\tB-corporation\nsells\tO\n\nMary\tB-person\n")
    with pytest.raises(DataError, match=r"dev\.conll:1: eval tag 'B-corporation'.*never occurs"):
        load_task(DataConfig(train=str(train), eval=str(dev)))


def test_all_o_training_data_and_jsonl_class_ids_are_refused(tmp_path):
    with pytest.raises(DataError, match="every tag is O"):
        load_task(DataConfig(train=str(write(tmp_path / "o.conll", "a\tO\nb\tO\n\nc\tO\n"))))
    ids = write(tmp_path / "ids.jsonl", json.dumps({"tokens": ["a", "b"], "tags": [1, 0]}))
    with pytest.raises(DataError, match=r"ids\.jsonl:1: tags must be strings"):
        load_task(DataConfig(train=str(ids)))


def test_load_task_builds_bio_tag_ids_and_joined_texts(tmp_path):
    task = load_task(DataConfig(train=str(write(tmp_path / "train.conll", TRAIN)), eval=str(write(tmp_path / "dev.conll", EVAL))))
    assert task.label_names == ("O", "B-location", "I-location", "B-person", "I-person")
    assert task.train.texts[0] == "John lives in New York" and task.train.labels is None
    assert [task.label_names[i] for i in task.train.tags[0]] == ["B-person", "O", "O", "B-location", "I-location"]
    assert task.eval.words == (("Mary", "saw", "London"),)
    assert task.summary()["label_counts"]["eval"] == {"O": 1, "B-location": 1, "I-location": 0, "B-person": 1, "I-person": 0}


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    from tokenizers import Tokenizer

    from tiny_models import build_wordpiece

    tok = Tokenizer.from_file(str(build_wordpiece(tmp_path_factory.mktemp("wp") / "tokenizer.json")))
    tok.no_padding()
    return tok


def test_words_are_labelled_on_their_first_sub_token(wordpiece):
    words = ("Parisian", "movies", "ok")   # "parisian" -> several word pieces
    enc = wordpiece.encode(" ".join(words))
    offsets, special = np.array(enc.offsets), np.array(enc.special_tokens_mask, bool)
    first = first_token_index(offsets, special, words)
    assert [enc.tokens[i] for i in first] == ["p", "movie", "o"] or all(enc.offsets[i][0] == s for i, s in zip(first, (0, 9, 16)))
    labels = token_labels(offsets, special, words, [3, 0, 1])
    assert [labels[i] for i in first] == [3, 0, 1]
    assert sum(x != IGNORE for x in labels) == 3 and labels[0] == IGNORE and labels[-1] == IGNORE
    logits = np.eye(5, dtype=np.float32)[[0] * len(labels)]
    logits[first[2]] = np.eye(5)[4]
    assert word_predictions(logits, first).tolist() == [0, 0, 4]


def test_a_word_cut_by_truncation_has_no_token(wordpiece):
    words = ("movie",) * 40
    wordpiece.enable_truncation(10)
    try:
        enc = wordpiece.encode(" ".join(words))
    finally:
        wordpiece.no_truncation()
    first = first_token_index(np.array(enc.offsets), np.array(enc.special_tokens_mask, bool), words)
    assert (first[:8] >= 0).all() and (first[8:] == -1).all()
    assert word_predictions(np.ones((10, 3), np.float32), first)[8:].tolist() == [0] * 32


def test_entity_scores_are_seqeval_micro_and_per_type():
    names = ("O", "B-loc", "I-loc", "B-per", "I-per")
    gold = [[3, 4, 0, 1], [1, 2]]          # per, loc | loc
    pred = [[3, 4, 0, 0], [1, 0]]          # per right, loc missed | loc cut short (wrong span)
    got = entity_scores(gold, pred, names)
    assert got["entity_precision"] == pytest.approx(1 / 2) and got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(0.4) and got["n_entities"] == 3 and got["n_eval"] == 2
    assert got["per_type"]["per"]["f1"] == 1.0 and got["per_type"]["loc"]["support"] == 2
    assert got["word_accuracy"] == pytest.approx(4 / 6)


def test_a_conll_file_given_as_text_gives_its_sentences(tmp_path):
    from embslim.pipeline.texts import TextError, read_texts

    assert read_texts([write(tmp_path / "dev.conll", TRAIN)]) == ["John lives in New York", "Paris rocks"]
    with pytest.raises(TextError, match=r"--text .*bad\.conll:2: 1 column"):
        read_texts([write(tmp_path / "bad.conll", "a\tO\nb\n")])
