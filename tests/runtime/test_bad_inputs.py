"""The runtime's part of the bad-input matrix (issue #12): every bad call or bundle raises
the right exception type with a one-line message; texts with lone UTF-16 surrogates are
classified as if each lone surrogate were U+FFFD (item 10), never a TypeError.

Items: 3 (token ids past the graph's vocabulary, caught at load), 10 (surrogates),
12 (size caps: max_chars, batch_size), 14 (types and ranges of every argument).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from tiny_bundle import VOCAB, make_tiny_bundle, read_manifest_json, write_manifest

from embslim.runtime import BundleError, Classifier, InputError, check_bundle_token_ids
from embslim.runtime.errors import InputTypeError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def clf(pristine):
    return Classifier.from_bundle(pristine, threads=1, max_chars=50)


@pytest.fixture(scope="module")
def pair_clf(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("bad-inputs-pair"), pair=True)
    return Classifier.from_bundle(bundle, threads=1, max_chars=50)


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.strip() == message, repr(message)
    return message


# -- bad calls ------------------------------------------------------------------------------

SINGLE = [
    # (id, call on a single-text classifier, exception type, message pattern)
    ("none", lambda c: c.predict(None), InputTypeError,
     r"^predict\(\) expects texts as a str or a list of str, got None; pass e\.g\. "),
    ("int", lambda c: c.predict(3), InputTypeError, r"got int \(3\)"),
    ("bytes", lambda c: c.predict(b"abc"), InputTypeError, r"got bytes \(b'abc'\)"),
    ("dict", lambda c: c.predict({"text": "a"}), InputTypeError, r"got dict "),
    ("set", lambda c: c.predict({"a"}), InputTypeError, r"got set "),
    ("empty-list", lambda c: c.predict([]), InputError,
     r"^predict\(\) got an empty list of texts; pass at least one text"),
    ("none-item", lambda c: c.predict(["ok", None]), InputTypeError,
     r"^texts\[1\] is None, expected str; convert it with str\(\) or drop the example$"),
    ("bytes-item", lambda c: c.predict([b"x"]), InputTypeError,
     r"^texts\[0\] is bytes \(b'x'\), expected str; decode it first$"),
    ("float-item", lambda c: c.predict([1.5]), InputTypeError, r"^texts\[0\] is float \(1\.5\)"),
    ("tuple-for-single", lambda c: c.predict([("a", "b")]), InputError,
     r"^texts\[0\] is a tuple, but this bundle classifies single texts \(task 'tiny'\)"),
    ("pairs-kw-for-single", lambda c: c.logits(["a"], pairs=["b"]), InputError,
     r"^logits\(\) got pairs=, but this bundle classifies single texts \(task 'tiny'\); drop "),
    ("encode-none", lambda c: c.encode(None), InputTypeError, r"^encode\(\) expects texts as "),
    ("logits-empty", lambda c: c.logits([]), InputError, r"^logits\(\) got an empty list"),
    # item 12: sizes
    ("over-max-chars", lambda c: c.predict(["ok", "x" * 51]), InputError,
     r"^texts\[1\] has 51 characters, more than max_chars=50; only the first 12 tokens "),
    ("over-max-chars-encode", lambda c: c.encode("y" * 51), InputError,
     r"^texts\[0\] has 51 characters, more than max_chars=50"),
    ("batch-size-0", lambda c: c.predict("ok", batch_size=0), InputError,
     r"^batch_size must be a positive int, got 0$"),
    ("batch-size-bool", lambda c: c.logits("ok", batch_size=True), InputError,
     r"^batch_size must be a positive int, got True$"),
    ("batch-size-str", lambda c: c.predict("ok", batch_size="8"), InputError,
     r"^batch_size must be a positive int, got '8'$"),
    # item 14: ranges and types of options
    ("top-k-0", lambda c: c.predict("ok", top_k=0), InputError,
     r"^top_k must be between 1 and 2 \(the number of labels\), got 0; use top_k=2 "),
    ("top-k-3", lambda c: c.predict("ok", top_k=3), InputError, r"got 3; use top_k=2"),
    ("top-k-huge", lambda c: c.predict("ok", top_k=10**30), InputError, r"^top_k must be between"),
    ("top-k-bool", lambda c: c.predict("ok", top_k=True), InputTypeError,
     r"^top_k must be an int between 1 and 2, got bool \(True\)$"),
    ("top-k-str", lambda c: c.predict("ok", top_k="1"), InputTypeError, r"got str \('1'\)$"),
    ("top-k-float", lambda c: c.predict("ok", top_k=1.0), InputTypeError, r"got float \(1\.0\)$"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "kind", "pattern"), [row[1:] for row in SINGLE],
                         ids=[row[0] for row in SINGLE])  # fmt: skip
def test_bad_call_on_a_single_text_bundle(clf, call, kind, pattern):
    _raises_one_line(clf, call, kind, pattern)


def _raises_one_line(clf, call, kind, pattern) -> None:
    """`call(clf)` raises exactly `kind`, whose message on one line matches `pattern`."""
    with pytest.raises(kind) as info:
        call(clf)
    assert type(info.value) is kind
    assert re.search(pattern, one_line(info.value)), str(info.value)


PAIR = [
    ("single-str", lambda c: c.predict(["just one"]), InputError,
     r"^texts\[0\] is a single str, but this bundle classifies text pairs \(task 'tiny-pair'\)"),
    ("one-part", lambda c: c.predict([("a",)]), InputError,
     r"^texts\[0\] has 1 items, expected a \(text, text_pair\) pair of two str$"),
    ("three-parts", lambda c: c.predict([("a", "b", "c")]), InputError, r"^texts\[0\] has 3 items"),
    ("none-part", lambda c: c.predict([("a", None)]), InputTypeError,
     r"^texts\[0\]\[1\] is None, expected str"),
    ("int-item", lambda c: c.predict([5]), InputTypeError,
     r"^texts\[0\] is int \(5\), expected a \(text, text_pair\) tuple of two str$"),
    ("count-mismatch", lambda c: c.logits(["a", "b"], pairs=["x"]), InputError,
     r"^logits\(\) got 2 texts but 1 pairs; pass one second text per text$"),
    ("pair-over-max-chars", lambda c: c.predict([("a", "z" * 51)]), InputError,
     r"^texts\[0\]\[1\] has 51 characters, more than max_chars=50"),
    ("pairs-kw-over-max-chars", lambda c: c.logits(["a"], pairs=["z" * 51]), InputError,
     r"^pairs\[0\] has 51 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "kind", "pattern"), [row[1:] for row in PAIR],
                         ids=[row[0] for row in PAIR])  # fmt: skip
def test_bad_call_on_a_pair_bundle(pair_clf, call, kind, pattern):
    _raises_one_line(pair_clf, call, kind, pattern)


LOAD = [
    ("threads-0", {"threads": 0}, ValueError,
     r"^threads must be a positive integer or None, got 0$"),
    ("threads-str", {"threads": "2"}, ValueError, r"got '2'$"),
    ("threads-bool", {"threads": True}, ValueError, r"got True$"),
    ("max-chars-0", {"max_chars": 0}, ValueError,
     r"^max_chars must be a positive integer or None \(no limit\), got 0$"),
    ("max-chars-bool", {"max_chars": True}, ValueError, r"got True$"),
    ("unknown-variant", {"variant": "int3"}, BundleError,
     r"^the bundle has no artifact with variant 'int3'; available: "),
    ("unknown-file", {"file": "nope.onnx"}, BundleError,
     r"^the bundle has no artifact with file 'nope\.onnx'"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "kind", "pattern"), [row[1:] for row in LOAD],
                         ids=[row[0] for row in LOAD])  # fmt: skip
def test_bad_from_bundle_arguments(pristine, kwargs, kind, pattern):
    with pytest.raises(kind) as info:
        Classifier.from_bundle(pristine, **kwargs)
    assert type(info.value) is kind
    assert re.search(pattern, one_line(info.value)), str(info.value)


def test_a_missing_bundle_directory(tmp_path):
    with pytest.raises(BundleError) as info:
        Classifier.from_bundle(tmp_path / "nope")
    assert re.search(r"^bundle directory '.*nope' does not exist; pass the folder",
                     one_line(info.value))  # fmt: skip


# -- item 3: token ids past the graph's input_ids range, refused at load ------------------


def _edit_tokenizer(bundle, edit):
    path = bundle / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    manifest = read_manifest_json(bundle)
    for entry in manifest["artifacts"]:
        if entry["file"] == "tokenizer.json":
            raw = path.read_bytes()
            entry["bytes"], entry["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    write_manifest(bundle, manifest)


def _vocab_ids(data):
    data["model"]["vocab"]["great"] = 40
    data["model"]["vocab"]["good"] = 34


def _added_token(data):  # tokenizers numbers it len(vocab), one past the graph's table
    data["added_tokens"].append({"id": 50, "content": "[NEW]", "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False,
                                 "special": True})  # fmt: skip


def _template_id(data):
    data["post_processor"]["special_tokens"]["[CLS]"]["ids"] = [60]


def _sep_id(data):
    data["post_processor"]["special_tokens"]["[SEP]"]["ids"] = [70]


N = len(VOCAB)
TOKEN_IDS = [
    ("vocab-entries", _vocab_ids, None,
     rf"^tokenizer\.json \(model\.vocab\): the largest token id is 40 \('great'; 2 id\(s\) >= "
     rf"{N}\), but model\.onnx accepts input_ids 0\.\.{N - 1} \(a vocabulary of {N}\): the "
     r"tokenizer does not belong to this model; re-export the bundle with the model's own "
     r"tokenizer\.json \(or re-download it\)$"),
    ("added-token", _added_token, None,
     rf"^tokenizer\.json \(added_tokens\): the largest token id is {N} \('\[NEW\]'; 1 id\(s\) "
     rf">= {N}\), but model\.onnx accepts input_ids 0\.\.{N - 1}"),
    ("post-processor-id", _template_id, None,
     r"^tokenizer\.json \(post_processor\): the largest token id is 60 \('\[CLS\]'"),
    ("manifest-pad-id", None, 99,
     r"^manifest\.json tokenizer\.pad_id: the largest token id is 99 \('\[PAD\]'"),
    ("post-processor-sep", _sep_id, None,
     r"^tokenizer\.json \(post_processor\): the largest token id is 70 \('\[SEP\]'"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "pad_id", "pattern"), [row[1:] for row in TOKEN_IDS],
                         ids=[row[0] for row in TOKEN_IDS])  # fmt: skip
def test_token_ids_past_the_graph_fail_at_load(pristine, tmp_path, edit, pad_id, pattern):
    bundle = shutil.copytree(pristine, tmp_path / "bundle")
    if edit is not None:
        _edit_tokenizer(bundle, edit)
    if pad_id is not None:
        manifest = read_manifest_json(bundle)
        manifest["tokenizer"]["pad_id"] = pad_id
        write_manifest(bundle, manifest)
    for load in (Classifier.from_bundle, check_bundle_token_ids):  # the app's and inspect's path
        with pytest.raises(BundleError) as info:
            load(bundle)
        assert re.search(pattern, one_line(info.value)), str(info.value)


def test_a_bundle_that_fits_passes_the_check(pristine):
    assert check_bundle_token_ids(pristine) == ["model.onnx"]


# -- item 10: lone surrogates are U+FFFD, never an error ----------------------------------

SURROGATES = [
    ("cut-emoji", "so cute \ud83d", "so cute \ufffd"),
    ("lone-low", "\ude00 great movie", "\ufffd great movie"),
    ("two-lone-highs", "good \ud83d\ud83d", "good \ufffd\ufffd"),
    ("surrogateescape-bytes", "bad \udcff\udcfe film", "bad \ufffd\ufffd film"),
    ("joined-pair", "fun \ud83d\ude00", "fun \U0001f600"),
]


@pytest.mark.parametrize(("text", "same_as"), [row[1:] for row in SURROGATES],
                         ids=[row[0] for row in SURROGATES])  # fmt: skip
def test_lone_surrogates_are_replacement_characters(clf, text, same_as):
    assert clf.predict([text, "ok"]) == clf.predict([same_as, "ok"])
    np.testing.assert_array_equal(clf.logits(text), clf.logits(same_as))
    for name, array in clf.encode(text).items():
        np.testing.assert_array_equal(array, clf.encode(same_as)[name], err_msg=name)


def test_lone_surrogates_in_pairs(pair_clf):
    got = pair_clf.predict([("so cute \ud83d", "\ude00 fine")])
    assert got == pair_clf.predict([("so cute \ufffd", "\ufffd fine")])
    np.testing.assert_array_equal(pair_clf.logits(["a \ud83d"], pairs=["b"]),
                                  pair_clf.logits(["a \ufffd"], pairs=["b"]))  # fmt: skip
