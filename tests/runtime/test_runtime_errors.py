"""Every error the runtime raises, with its message pinned."""

from __future__ import annotations

import shutil

import pytest
from tiny_bundle import make_tiny_bundle, read_manifest_json, write_manifest

from embslim.runtime import BundleError, Classifier, InputError
from embslim.runtime.errors import InputTypeError

HEX = "[0-9a-f]{64}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def bundle(tmp_path, pristine):
    """A private copy to damage."""
    return shutil.copytree(pristine, tmp_path / "bundle")


@pytest.fixture(scope="module")
def clf(pristine):
    return Classifier.from_bundle(pristine)


@pytest.fixture(scope="module")
def pair_clf(tmp_path_factory):
    return Classifier.from_bundle(make_tiny_bundle(tmp_path_factory.mktemp("pair"), pair=True))


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


# -- bundle errors ---------------------------------------------------------------------


def test_tampered_model_fails_the_sha256_check(bundle):
    flip_byte(bundle / "model.onnx")
    with pytest.raises(
        BundleError,
        match=rf"^model\.onnx: sha256 mismatch: manifest says {HEX}, file has {HEX}; the bundle "
        r"was modified or corrupted — re-export the bundle \(or re-download it\)$",
    ):
        Classifier.from_bundle(bundle)


def test_tampered_tokenizer_fails_the_sha256_check(bundle):
    text = (bundle / "tokenizer.json").read_text(encoding="utf-8")
    (bundle / "tokenizer.json").write_text(text.replace('"great"', '"GREAT"'), encoding="utf-8")
    with pytest.raises(
        BundleError, match=rf"^tokenizer\.json: sha256 mismatch: manifest says {HEX}"
    ):
        Classifier.from_bundle(bundle)


def test_truncated_model_fails_the_size_check(bundle):
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[:-10])
    with pytest.raises(
        BundleError,
        match=rf"^model\.onnx: size mismatch: manifest says {len(data)} bytes, file has "
        rf"{len(data) - 10} bytes; the bundle was truncated, modified or corrupted — re-export",
    ):
        Classifier.from_bundle(bundle)


def test_missing_model_file(bundle):
    (bundle / "model.onnx").unlink()
    with pytest.raises(
        BundleError, match=r"^model\.onnx: listed in manifest\.json but missing from .*re-export"
    ):
        Classifier.from_bundle(bundle)
    with pytest.raises(BundleError, match=r"^model\.onnx: named in the manifest but missing"):
        Classifier.from_bundle(bundle, verify=False)


def test_missing_manifest(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(
        BundleError,
        match=r"manifest\.json: no manifest\.json in the bundle directory; is .* an embslim "
        r"bundle\? re-export the bundle",
    ):
        Classifier.from_bundle(bundle)


def test_missing_bundle_directory(tmp_path):
    with pytest.raises(BundleError, match=r"bundle directory '.*nowhere' does not exist; pass"):
        Classifier.from_bundle(tmp_path / "nowhere")


def test_corrupt_manifest_json(bundle):
    (bundle / "manifest.json").write_text('{"schema_version": 1,\n  "task": {', encoding="utf-8")
    with pytest.raises(
        BundleError,
        match=r"manifest\.json is not valid JSON: .* at line 2 column \d+ \(char \d+\); the file "
        r"is corrupted or was edited by hand: re-export",
    ):
        Classifier.from_bundle(bundle)


def test_newer_schema_version(bundle):
    manifest = read_manifest_json(bundle)
    manifest["schema_version"] = 2
    write_manifest(bundle, manifest)
    with pytest.raises(
        BundleError,
        match=r"schema_version 2 is not supported; this runtime reads schema_version 1: "
        r"upgrade embslim",
    ):
        Classifier.from_bundle(bundle)


def test_missing_keys_are_all_reported_at_once(bundle):
    manifest = read_manifest_json(bundle)
    del manifest["task"]["labels"]
    del manifest["tokenizer"]["pad_id"]
    del manifest["artifacts"][0]["sha256"]
    write_manifest(bundle, manifest)
    with pytest.raises(
        BundleError,
        match=r"is incomplete or invalid: 'task\.labels' must be a non-empty list of strings, "
        r"got None; 'tokenizer\.pad_id' must be a non-negative integer, got None; "
        r"'artifacts\[0\]' lacks sha256; re-export",
    ):
        Classifier.from_bundle(bundle)


def test_artifact_outside_the_bundle_is_refused(bundle):
    manifest = read_manifest_json(bundle)
    manifest["artifacts"][0]["file"] = "../elsewhere/model.onnx"
    write_manifest(bundle, manifest)
    with pytest.raises(
        BundleError, match=r"'artifacts\[0\]'\.file '\.\./elsewhere/model\.onnx' points outside"
    ):
        Classifier.from_bundle(bundle)


def test_unknown_variant_lists_the_available_ones(pristine):
    with pytest.raises(
        BundleError,
        match=r"^the bundle has no artifact with variant 'int4'; available: variant 'fp32' "
        r"\(target any, model\.onnx\) \(model files only\); pick one of those, or \"auto\", or re-export",
    ):
        Classifier.from_bundle(pristine, variant="int4")
    with pytest.raises(BundleError, match=r"^the bundle has no artifact with variant 'tokenizer'"):
        Classifier.from_bundle(pristine, variant="tokenizer")   # a file of the bundle, not a model to load


def test_unknown_file(pristine):
    with pytest.raises(BundleError, match=r"no artifact with file 'model\.q4\.onnx'; available:"):
        Classifier.from_bundle(pristine, file="model.q4.onnx")


def test_tokenizer_without_checksum_cannot_be_verified(bundle):
    manifest = read_manifest_json(bundle)
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["file"] != "tokenizer.json"]
    write_manifest(bundle, manifest)
    with pytest.raises(
        BundleError,
        match=r"tokenizer\.json: not listed in the manifest's artifacts with a sha256, so it "
        r"cannot be verified; re-export the bundle, or pass verify=False",
    ):
        Classifier.from_bundle(bundle)
    assert Classifier.from_bundle(bundle, verify=False).labels == ("neg", "pos")


def test_unloadable_model(bundle):
    (bundle / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(BundleError, match=r"^model\.onnx: onnxruntime \S+ cannot load it \("):
        Classifier.from_bundle(bundle, verify=False)


def test_unloadable_tokenizer(bundle):
    (bundle / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    with pytest.raises(BundleError, match=r"tokenizer\.json: not a loadable Hugging Face"):
        Classifier.from_bundle(bundle, verify=False)


def test_labels_that_do_not_match_the_model(bundle):
    manifest = read_manifest_json(bundle)
    manifest["task"]["labels"] = ["a", "b", "c"]
    write_manifest(bundle, manifest)
    with pytest.raises(
        BundleError,
        match=r"^model\.onnx: output 'logits' has shape \['batch', 2\], expected \[batch, 3\] "
        r"for the manifest's 3 labels; re-export",
    ):
        Classifier.from_bundle(bundle)


def test_bad_threads(pristine):
    with pytest.raises(ValueError, match=r"threads must be a positive integer or None, got 0"):
        Classifier.from_bundle(pristine, threads=0)


# -- input errors ----------------------------------------------------------------------


def test_empty_list(clf):
    with pytest.raises(
        InputError,
        match=r"^predict\(\) got an empty list of texts; pass at least one text, "
        r"e\.g\. predict\(\['a great movie'\]\)$",
    ):
        clf.predict([])
    with pytest.raises(InputError, match=r"^logits\(\) got an empty list of texts"):
        clf.logits([])


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["fine", 3], r"^texts\[1\] is int \(3\), expected str; convert it with str\(\) or drop"),
        ([None], r"^texts\[0\] is None, expected str; convert it with str\(\)"),
        (["ok", b"bytes"], r"^texts\[1\] is bytes \(b'bytes'\), expected str; decode it first$"),
    ],
)
def test_non_string_elements(clf, texts, message):
    with pytest.raises(InputTypeError, match=message) as info:
        clf.predict(texts)
    assert isinstance(info.value, TypeError) and isinstance(info.value, InputError)


@pytest.mark.parametrize("texts", [3, None, {"a": 1}])
def test_texts_that_are_not_a_list(clf, texts):
    with pytest.raises(
        InputTypeError, match=r"^predict\(\) expects texts as a str or a list of str, got "
    ):
        clf.predict(texts)


def test_pair_bundle_given_single_strings(pair_clf):
    with pytest.raises(
        InputError,
        match=r"^texts\[0\] is a single str, but this bundle classifies text pairs "
        r"\(task 'tiny-pair'\); pass \(text, text_pair\) tuples, e\.g\. ",
    ):
        pair_clf.predict(["premise only"])
    with pytest.raises(InputError, match=r"^texts\[0\] is a single str"):
        pair_clf.logits(["premise only"])


def test_pair_bundle_given_malformed_pairs(pair_clf):
    with pytest.raises(InputError, match=r"^texts\[1\] has 3 items, expected a \(text, text_"):
        pair_clf.predict([("a", "b"), ("a", "b", "c")])
    with pytest.raises(InputTypeError, match=r"^texts\[0\]\[1\] is None, expected str"):
        pair_clf.predict([("a", None)])
    with pytest.raises(InputTypeError, match=r"^texts\[0\] is int \(7\), expected a \(text,"):
        pair_clf.predict([7])
    with pytest.raises(InputError, match=r"^logits\(\) got 2 texts but 1 pairs; pass one second"):
        pair_clf.logits(["a", "b"], ["c"])
    with pytest.raises(InputTypeError, match=r"^pairs\[0\] is int \(5\), expected str"):
        pair_clf.logits(["a"], [5])


def test_single_bundle_given_pairs(clf):
    with pytest.raises(
        InputError,
        match=r"^texts\[0\] is a tuple, but this bundle classifies single texts \(task 'tiny'\); "
        r"pass one string per example",
    ):
        clf.predict([("premise", "hypothesis")])
    with pytest.raises(
        InputError,
        match=r"^logits\(\) got pairs=, but this bundle classifies single texts \(task 'tiny'\); "
        r"drop pairs=$",
    ):
        clf.logits(["premise"], ["hypothesis"])


@pytest.mark.parametrize("top_k", [0, 3, -1])
def test_top_k_out_of_range(clf, top_k):
    with pytest.raises(
        InputError,
        match=rf"^top_k must be between 1 and 2 \(the number of labels\), got {top_k}; "
        r"use top_k=2 to rank every label$",
    ):
        clf.predict(["fine"], top_k=top_k)


def test_top_k_wrong_type(clf):
    with pytest.raises(InputTypeError, match=r"^top_k must be an int between 1 and 2, got str"):
        clf.predict(["fine"], top_k="2")


@pytest.mark.parametrize("batch_size", [0, -4, 2.5])
def test_bad_batch_size(clf, batch_size):
    with pytest.raises(InputError, match=r"^batch_size must be a positive int, got "):
        clf.predict(["fine"], batch_size=batch_size)
