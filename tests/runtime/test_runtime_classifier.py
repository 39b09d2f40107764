"""Classifier numerics and input plumbing on the tiny bundle: no network, no torch."""

from __future__ import annotations

import platform
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tiny_bundle import (
    CLS_ID,
    FILE_PADDING,
    PAD_ID,
    SEP_ID,
    VOCAB,
    artifact_entry,
    build_tokenizer,
    make_tiny_bundle,
    read_manifest_json,
    tiny_logits,
    write_manifest,
)

from embslim.runtime import Classifier, Prediction
from embslim.runtime.classifier import softmax
from embslim.runtime.manifest import machine_targets

TEXTS = [
    "A great movie!",
    "the plot was boring",
    "i hate it",
    "Very, very good acting and a fun plot, but the film was not great",
    "zebra",  # out of vocabulary -> [UNK]
]
MAX_LENGTH = 12


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("single"), max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_bundle(
        tmp_path_factory.mktemp("pair"), pair=True, labels=("entail", "neutral", "contra")
    )


@pytest.fixture(scope="module")
def clf(single):
    return Classifier.from_bundle(single, threads=1)


@pytest.fixture(scope="module")
def pair_clf(pair):
    return Classifier.from_bundle(pair, threads=1)


def reference(bundle, texts, pairs=None, *, max_length=MAX_LENGTH):
    """Tokenize each example ALONE (no padding at all) and run the graph in numpy."""
    tok = build_tokenizer()
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    rows = []
    for i, text in enumerate(texts):
        enc = tok.encode(text) if pairs is None else tok.encode(text, pairs[i])
        rows.append(tiny_logits(bundle, enc.ids, enc.type_ids))
    return np.stack(rows)


def ids_of(*tokens):
    return [VOCAB.index(t) for t in tokens]


def test_attributes(clf, single):
    assert clf.labels == ("neg", "pos")
    assert clf.max_length == MAX_LENGTH
    assert clf.is_pair is False
    assert clf.model_path == single / "model.onnx"
    assert clf.manifest["task"]["name"] == "tiny"
    assert clf.artifact["variant"] == "fp32"
    assert set(clf.input_names) == {"input_ids", "attention_mask", "token_type_ids"}


def test_encode_pads_per_batch_and_ignores_the_files_fixed_padding(clf):
    feeds = clf.encode(["A great movie!", "i hate it"])
    # [CLS] a great movie ! [SEP] is 6 tokens: the batch is 6 wide, not the file's 16.
    assert feeds["input_ids"].shape == (2, 6)
    assert feeds["input_ids"][0].tolist() == [CLS_ID, *ids_of("a", "great", "movie", "!"), SEP_ID]
    assert feeds["input_ids"][1].tolist() == [CLS_ID, *ids_of("i", "hate", "it"), SEP_ID, PAD_ID]
    assert feeds["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0]]
    assert feeds["token_type_ids"].tolist() == [[0] * 6, [0] * 6]
    assert all(a.dtype == np.int64 for a in feeds.values())
    assert clf.encode("fun")["input_ids"].shape == (1, 3) != (1, FILE_PADDING)


def test_wordpiece_and_unknown_tokens(clf):
    ids = clf.encode(["Movies zebra"])["input_ids"][0].tolist()
    assert ids == [CLS_ID, *ids_of("movie", "##s", "[UNK]"), SEP_ID]


def test_logits_match_numpy_recomputation(clf, single):
    got = clf.logits(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(got, reference(single, TEXTS), atol=1e-5, rtol=0)


def test_predictions_match_numpy_recomputation(clf, single):
    probs = softmax(reference(single, TEXTS))
    preds = clf.predict(TEXTS, top_k=2)
    assert [p.label for p in preds] == [clf.labels[i] for i in probs.argmax(axis=1)]
    for pred, row in zip(preds, probs):
        assert isinstance(pred, Prediction)
        assert pred.score == pytest.approx(row.max(), abs=1e-6)
        assert pred.probabilities == pytest.approx(dict(zip(clf.labels, row)), abs=1e-6)
        assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        assert [label for label, _ in pred.top_k] == [clf.labels[i] for i in np.argsort(-row)]
        assert pred.top_k[0] == (pred.label, pred.score)
        assert pred.top_k[0][1] >= pred.top_k[1][1]


def test_a_text_alone_equals_the_same_text_in_a_padded_batch(clf):
    short = "i hate it"
    alone = clf.logits([short])[0]
    batched = clf.logits([TEXTS[3], short, "fun"])  # padded to the long text's length
    np.testing.assert_allclose(batched[1], alone, atol=1e-5, rtol=0)
    assert clf.encode([TEXTS[3], short])["attention_mask"][1].sum() == 5


def test_batch_size_does_not_change_results(clf):
    full = clf.logits(TEXTS, batch_size=32)
    for bs in (1, 2, 3):
        np.testing.assert_allclose(clf.logits(TEXTS, batch_size=bs), full, atol=1e-5, rtol=0)


def test_truncation_at_max_length(clf, single):
    long_text = " ".join(["very"] * 40) + " good"
    feeds = clf.encode([long_text, "fun"])
    assert feeds["input_ids"].shape == (2, MAX_LENGTH)
    row = feeds["input_ids"][0].tolist()
    assert row[0] == CLS_ID and row[-1] == SEP_ID and row[1:-1] == ids_of("very") * (MAX_LENGTH - 2)
    np.testing.assert_allclose(
        clf.logits([long_text]), reference(single, [long_text]), atol=1e-5, rtol=0
    )


def test_longer_max_length_in_the_manifest_overrides_the_files_truncation(tmp_path):
    # The file truncates at 16; a bundle with max_length 20 must see 20 tokens.
    bundle = make_tiny_bundle(tmp_path, max_length=20)
    clf = Classifier.from_bundle(bundle)
    assert clf.encode(" ".join(["fun"] * 30))["input_ids"].shape == (1, 20)


def test_pairs(pair_clf, pair):
    firsts = ["A great movie!", "i hate it", " ".join(["very"] * 20)]
    seconds = ["the plot was boring", "fun", "good"]
    feeds = pair_clf.encode(firsts, seconds)
    assert feeds["input_ids"][1].tolist()[:7] == [
        CLS_ID, *ids_of("i", "hate", "it"), SEP_ID, *ids_of("fun"), SEP_ID
    ]
    assert feeds["token_type_ids"][1].tolist()[:7] == [0, 0, 0, 0, 0, 1, 1]
    # longest_first: the long first text is cut, the short second text survives whole.
    assert feeds["input_ids"][2].tolist()[-3:] == [SEP_ID, *ids_of("good"), SEP_ID]
    assert feeds["input_ids"].shape[1] == MAX_LENGTH

    expected = reference(pair, firsts, seconds)
    np.testing.assert_allclose(pair_clf.logits(firsts, seconds), expected, atol=1e-5, rtol=0)
    # predict takes (text, text_pair) tuples or lists; logits takes them too.
    as_tuples = list(zip(firsts, seconds))
    np.testing.assert_allclose(pair_clf.logits(as_tuples), expected, atol=1e-5, rtol=0)
    preds = pair_clf.predict([list(p) for p in as_tuples], top_k=3)
    probs = softmax(expected)
    for pred, row in zip(preds, probs):
        assert pred.probabilities == pytest.approx(dict(zip(pair_clf.labels, row)), abs=1e-6)
        assert len(pred.top_k) == 3


def test_accepted_input_forms(clf):
    one = clf.predict("A great movie!")
    assert isinstance(one, list) and len(one) == 1
    assert clf.predict(("A great movie!",))[0] == one[0]
    assert clf.predict(np.array(["A great movie!"]))[0] == one[0]
    assert clf.predict(t for t in ["A great movie!"])[0] == one[0]


def test_softmax_is_numerically_stable():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, atol=1e-12)


def test_one_classifier_shared_between_threads(clf):
    texts = [f"{w} movie" for w in ("great", "bad", "fun", "awful", "boring", "good")] * 5
    expected = clf.logits(texts, batch_size=4)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: clf.logits(texts, batch_size=4), range(32)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_auto_falls_back_to_fp32_without_int8(single):
    clf = Classifier.from_bundle(single, variant="auto")
    assert clf.artifact["variant"] == "fp32"
    assert clf.model_path.name == "model.onnx"


def test_auto_picks_the_int8_artifact_for_this_machine(tmp_path, single):
    bundle = tmp_path / "b"
    shutil.copytree(single, bundle)
    target = (machine_targets() or ("any",))[0]
    # A stand-in "int8" file (a copy of fp32): only the selection is under test here.
    shutil.copy(bundle / "model.onnx", bundle / f"model.int8-{target}.onnx")
    manifest = read_manifest_json(bundle)
    manifest["artifacts"].append(
        artifact_entry(bundle, f"model.int8-{target}.onnx", variant="int8", target=target)
    )
    write_manifest(bundle, manifest)
    clf = Classifier.from_bundle(bundle, variant="auto")
    assert clf.model_path.name == f"model.int8-{target}.onnx", platform.machine()
    assert Classifier.from_bundle(bundle).model_path.name == "model.onnx"  # default stays fp32
    by_file = Classifier.from_bundle(bundle, file=f"model.int8-{target}.onnx")
    assert by_file.artifact["variant"] == "int8"


def test_verify_false_skips_the_checksums(tmp_path, single):
    bundle = tmp_path / "b"
    shutil.copytree(single, bundle)
    manifest = read_manifest_json(bundle)
    manifest["artifacts"][0]["sha256"] = "0" * 64
    write_manifest(bundle, manifest)
    clf = Classifier.from_bundle(bundle, verify=False)
    assert clf.predict("great")[0].label in clf.labels
