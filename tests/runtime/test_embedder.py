"""`Embedder` on tiny feature-extraction bundles: equal to a numpy recomputation of the graph
(mean, cls and max pooling, with and without the Dense layer and L2 normalisation), the same
input checks and bundle checks as `Classifier`, refusal across classes, threads, variant="auto".
"""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
from tiny_bundle import (
    artifact_entry,
    initializers,
    make_tiny_bundle,
    make_tiny_embedding_bundle,
    read_manifest_json,
    with_token_ids,
    write_manifest,
)
from tokenizers import Tokenizer

from embslim.runtime import (
    BundleError,
    Classifier,
    Embedder,
    InputError,
    check_bundle_token_ids,
    load_bundle,
)
from embslim.runtime.errors import InputTypeError
from embslim.runtime.manifest import machine_targets

HEX = "[0-9a-f]{64}"
TEXTS = [
    "a great movie",
    "the plot was boring and the acting was awful",
    "I love this film!",
    "not good",
    "Café crème, déjà vu",  # words the tiny vocabulary lacks: [UNK]
    "good " * 30,  # truncated at max_length
    "ok",
]


def reference(bundle, texts, *, file="model.onnx"):
    """The graph recomputed in numpy from its initializers, one unpadded text at a time."""
    manifest = read_manifest_json(bundle)
    spec, max_length = manifest["task"]["embedding"], manifest["task"]["max_length"]
    w = initializers(bundle, file)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    rows = []
    for text in texts:
        enc = tok.encode(text)
        tokens = w["word_emb"][enc.ids] + w["type_emb"][enc.type_ids]  # [seq, hidden]
        pooled = {"mean": tokens.mean(axis=0), "cls": tokens[0], "max": tokens.max(axis=0)}[
            spec["pooling"]
        ]
        if "dense_w" in w:
            pooled = pooled @ w["dense_w"] + w["dense_b"]
        if spec["normalize"]:
            pooled = pooled / max(np.linalg.norm(pooled), 1e-12)
        rows.append(pooled)
    return np.stack(rows)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_embedding_bundle(tmp_path_factory.mktemp("emb"), pooling="mean", dim=3)


@pytest.fixture(scope="module")
def emb(pristine):
    return Embedder.from_bundle(pristine, threads=1, max_chars=200)


@pytest.fixture
def bundle(tmp_path, pristine):
    """A private copy to damage."""
    return shutil.copytree(pristine, tmp_path / "bundle")


@pytest.fixture(scope="module")
def classification_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("clf"))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message, repr(message)
    return message


# -- results ------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("dim", [None, 3], ids=["no-dense", "dense-3"])
def test_encode_equals_the_numpy_reference(tmp_path, pooling, normalize, dim):
    bundle = make_tiny_embedding_bundle(tmp_path, pooling=pooling, normalize=normalize, dim=dim)
    emb = Embedder.from_bundle(bundle, threads=1)
    got = emb.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), emb.dim)
    np.testing.assert_allclose(got, reference(bundle, TEXTS), rtol=0, atol=1e-5)
    norms = np.linalg.norm(got, axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    else:
        assert np.abs(norms - 1.0).max() > 0.1  # really not normalised
    assert (emb.pooling, emb.normalize, emb.dim) == (pooling, normalize, dim or 4)


def test_properties_and_repr(emb):
    assert emb.dim == 3 and emb.normalize is True and emb.pooling == "mean"
    assert emb.max_length == 12 and emb.task_type == "feature-extraction"
    assert emb.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert repr(emb) == (
        "Embedder(model='model.onnx', variant='fp32', dim=3, pooling='mean', normalize=True, "
        "max_length=12)"
    )


def test_a_single_str_is_one_row(emb):
    one = emb.encode("a great movie")
    assert one.shape == (1, 3) and one.dtype == np.float32
    np.testing.assert_array_equal(one, emb.encode(["a great movie"]))
    np.testing.assert_array_equal(one, emb.encode(("a great movie",)))
    np.testing.assert_array_equal(one, emb.encode(t for t in ["a great movie"]))
    np.testing.assert_array_equal(one, emb.encode(np.array(["a great movie"])))


@pytest.mark.parametrize("batch_size", [1, 2, 3, len(TEXTS), 100])
def test_batch_size_splitting_equals_one_batch(emb, batch_size):
    whole = emb.encode(TEXTS, batch_size=len(TEXTS))
    np.testing.assert_allclose(emb.encode(TEXTS, batch_size=batch_size), whole, rtol=0, atol=1e-6)


def test_rows_keep_input_order(emb):
    forward = emb.encode(TEXTS, batch_size=3)
    backward = emb.encode(TEXTS[::-1], batch_size=3)
    np.testing.assert_allclose(backward[::-1], forward, rtol=0, atol=1e-6)


def test_long_texts_are_truncated_at_max_length(emb):
    # [CLS] + 10 words + [SEP] = 12 tokens: the 11th word onwards changes nothing
    long = "good " * 10 + "awful boring bad hate " * 5
    np.testing.assert_array_equal(emb.encode(long), emb.encode("good " * 10))


def test_lone_surrogates_are_embedded_as_replacement_characters(emb):
    np.testing.assert_array_equal(emb.encode("so cute \ud83d"), emb.encode("so cute \ufffd"))
    np.testing.assert_array_equal(emb.encode("fun \ud83d\ude00"), emb.encode("fun \U0001f600"))


# -- bad calls ----------------------------------------------------------------------------

BAD_CALLS = [
    ("none", lambda e: e.encode(None), InputTypeError,
     r"^encode\(\) expects texts as a str or a list of str, got None; pass e\.g\. "
     r"encode\(\['a great movie'\]\)$"),
    ("int", lambda e: e.encode(3), InputTypeError, r"got int \(3\)"),
    ("bytes", lambda e: e.encode(b"abc"), InputTypeError, r"got bytes \(b'abc'\)"),
    ("dict", lambda e: e.encode({"text": "a"}), InputTypeError, r"got dict "),
    ("empty-list", lambda e: e.encode([]), InputError,
     r"^encode\(\) got an empty list of texts; pass at least one text"),
    ("none-item", lambda e: e.encode(["ok", None]), InputTypeError,
     r"^texts\[1\] is None, expected str; convert it with str\(\) or drop the example$"),
    ("bytes-item", lambda e: e.encode([b"x"]), InputTypeError,
     r"^texts\[0\] is bytes \(b'x'\), expected str; decode it first$"),
    ("tuple-item", lambda e: e.encode([("a", "b")]), InputError,
     r"^texts\[0\] is a tuple, but this bundle embeds single texts \(task 'tiny-emb'\); pass one "
     r"string per example"),
    ("over-max-chars", lambda e: e.encode(["ok", "x" * 201]), InputError,
     r"^texts\[1\] has 201 characters, more than max_chars=200; only the first 12 tokens are "
     r"used anyway, so send the start of the text, or raise the limit with "
     r"Embedder\.from_bundle\(\.\.\., max_chars=N\)$"),
    ("batch-size-0", lambda e: e.encode("ok", batch_size=0), InputError,
     r"^batch_size must be a positive int, got 0$"),
    ("batch-size-bool", lambda e: e.encode("ok", batch_size=True), InputError,
     r"^batch_size must be a positive int, got True$"),
    ("batch-size-str", lambda e: e.encode("ok", batch_size="8"), InputError,
     r"^batch_size must be a positive int, got '8'$"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "kind", "pattern"), [row[1:] for row in BAD_CALLS],
                         ids=[row[0] for row in BAD_CALLS])  # fmt: skip
def test_bad_calls_raise_one_line(emb, call, kind, pattern):
    with pytest.raises(kind) as error:
        call(emb)
    assert type(error.value) is kind
    assert re.search(pattern, one_line(error)), str(error.value)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8"])
def test_bad_max_chars_and_threads(pristine, bad):
    with pytest.raises(ValueError, match=r"^max_chars must be a positive integer or None"):
        Embedder.from_bundle(pristine, max_chars=bad)
    with pytest.raises(ValueError, match=r"^threads must be a positive integer or None"):
        Embedder.from_bundle(pristine, threads=bad)


# -- bundle checks ------------------------------------------------------------------------


def test_tampered_model_fails_the_sha256_check(bundle):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"^model\.onnx: sha256 mismatch: manifest says {HEX}, "
                       rf"file has {HEX}; the bundle was modified or corrupted") as error:  # fmt: skip
        Embedder.from_bundle(bundle)
    one_line(error)
    assert Embedder.from_bundle(bundle, verify=False).dim == 3  # verify=False skips the hash


def test_tampered_tokenizer_fails_the_sha256_check(bundle):
    text = (bundle / "tokenizer.json").read_text(encoding="utf-8")
    (bundle / "tokenizer.json").write_text(text.replace('"great"', '"GREAT"'), encoding="utf-8")
    with pytest.raises(BundleError, match=rf"^tokenizer\.json: sha256 mismatch: manifest says {HEX}"):
        Embedder.from_bundle(bundle)


def test_token_ids_past_the_graph_are_refused_at_load(pristine, tmp_path):
    bad = with_token_ids(pristine, tmp_path / "bad", {"great": 30600})
    with pytest.raises(BundleError) as error:
        Embedder.from_bundle(bad)
    assert one_line(error).startswith(
        "tokenizer.json (model.vocab): the largest token id is 30600 ('great'; 1 id(s) >= 34), "
        "but model.onnx accepts input_ids 0..33"
    )
    with pytest.raises(BundleError, match=r"the largest token id is 30600"):
        check_bundle_token_ids(bad)


def test_check_bundle_token_ids_loads_embedding_bundles(pristine):
    assert check_bundle_token_ids(pristine) == ["model.onnx"]


def _set_embedding(bundle, **changes):
    manifest = read_manifest_json(bundle)
    manifest["task"]["embedding"].update(changes)
    write_manifest(bundle, manifest)


def test_a_dim_that_does_not_match_the_graph(bundle):
    _set_embedding(bundle, dim=5)
    with pytest.raises(BundleError) as error:
        Embedder.from_bundle(bundle)
    assert one_line(error) == (
        "model.onnx: output 'sentence_embedding' has shape ['batch', 3], expected [batch, 5] for "
        "the manifest's task.embedding.dim 5; re-export the bundle"
    )


def test_a_symbolic_width_is_checked_by_the_probe_run(bundle):
    """A width ORT cannot infer (here a Reshape to [batch, -1]) is only known by running."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["pre" if o == "sentence_embedding" else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "minus_one"))
    model.graph.node.extend([
        helper.make_node("Shape", ["input_ids"], ["batch_dim"], end=1),
        helper.make_node("Concat", ["batch_dim", "minus_one"], ["flat"], axis=0),
        helper.make_node("Reshape", ["pre", "flat"], ["sentence_embedding"]),
    ])  # fmt: skip
    out = next(o for o in model.graph.output if o.name == "sentence_embedding")
    out.type.tensor_type.shape.dim[1].dim_param = "dim"
    onnx.save(model, str(bundle / "model.onnx"))
    manifest = read_manifest_json(bundle)
    manifest["artifacts"][0] = artifact_entry(bundle, "model.onnx", variant="fp32")
    manifest["task"]["embedding"]["dim"] = 8
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError) as error:
        Embedder.from_bundle(bundle)
    assert one_line(error) == (
        "model.onnx: output 'sentence_embedding' has shape [1, 3] on a one-token probe, expected "
        "[1, 8] for the manifest's task.embedding.dim 8; re-export the bundle"
    )
    _set_embedding(bundle, dim=3)  # the right width loads and embeds as before
    assert Embedder.from_bundle(bundle).encode(TEXTS).shape == (len(TEXTS), 3)


def test_normalize_in_the_manifest_but_not_in_the_graph(tmp_path):
    bundle = make_tiny_embedding_bundle(tmp_path, normalize=False)
    _set_embedding(bundle, normalize=True)
    with pytest.raises(BundleError, match=r"^model\.onnx: the manifest says the embeddings are "
                       r"normalised, but a one-token probe's 'sentence_embedding' has L2 norm "
                       r"[0-9.]+; the model and manifest do not belong together") as error:  # fmt: skip
        Embedder.from_bundle(bundle)
    one_line(error)


def test_a_graph_without_sentence_embedding(bundle, classification_bundle):
    shutil.copy(classification_bundle / "model.onnx", bundle / "model.onnx")
    manifest = read_manifest_json(bundle)
    manifest["artifacts"][0] = artifact_entry(bundle, "model.onnx", variant="fp32")
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError) as error:
        Embedder.from_bundle(bundle)
    assert one_line(error) == (
        "model.onnx: the graph has no 'sentence_embedding' output (it has logits); an embedding "
        "bundle's graph outputs 'sentence_embedding' [batch, dim]: re-export the bundle"
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("embedding"), r"'task\.embedding' must be an object like \{\"dim\": 384, "
                                       r"\"pooling\": \"mean\", \"normalize\": true\}, got nothing"),
        (lambda t: t["embedding"].update(pooling="sum"),
         r"'task\.embedding\.pooling' must be one of mean, cls, max, got 'sum'"),
        (lambda t: t["embedding"].update(dim=0), r"'task\.embedding\.dim' must be a positive integer, got 0"),
        (lambda t: t["embedding"].update(normalize="yes"),
         r"'task\.embedding\.normalize' must be true or false, got 'yes'"),
        (lambda t: t.update(pair=True), r"'task\.pair' must be false for a feature-extraction bundle"),
        (lambda t: t.pop("labels"), r"'task\.labels' must be a list of strings \(empty for a "
                                    r"feature-extraction bundle\), got None"),
        (lambda t: t.update(type=3), r"'task\.type' must be a task name such as "
                                     r"'text-classification', got 3"),
    ],
    ids=["no-embedding", "pooling", "dim", "normalize", "pair", "no-labels", "type-not-str"],
)  # fmt: skip
def test_invalid_embedding_manifests(bundle, edit, message):
    manifest = read_manifest_json(bundle)
    edit(manifest["task"])
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match=r"manifest\.json is incomplete or invalid: .*" + message) as error:
        Embedder.from_bundle(bundle)
    one_line(error)


# -- one class per task ---------------------------------------------------------------------


def test_classifier_refuses_an_embedding_bundle_naming_embedder(pristine):
    with pytest.raises(BundleError) as error:
        Classifier.from_bundle(pristine)
    assert one_line(error) == (
        f"{str(pristine)!r} is a feature-extraction bundle; load it with "
        "embslim.runtime.Embedder.from_bundle(...), not Classifier (or with "
        "embslim.runtime.load_bundle(...), which picks the class from the manifest)"
    )


def test_embedder_refuses_a_classification_bundle_naming_classifier(classification_bundle):
    with pytest.raises(BundleError) as error:
        Embedder.from_bundle(classification_bundle)
    assert one_line(error) == (
        f"{str(classification_bundle)!r} is a text-classification bundle; load it with "
        "embslim.runtime.Classifier.from_bundle(...), not Embedder (or with "
        "embslim.runtime.load_bundle(...), which picks the class from the manifest)"
    )


def test_a_manifest_without_task_type_is_text_classification(classification_bundle, tmp_path):
    assert "type" not in read_manifest_json(classification_bundle)["task"]  # written as before
    with pytest.raises(BundleError, match=r"is a text-classification bundle; load it with "
                                          r"embslim\.runtime\.Classifier"):  # fmt: skip
        Embedder.from_bundle(classification_bundle)
    typed = shutil.copytree(classification_bundle, tmp_path / "typed")
    manifest = read_manifest_json(typed)
    manifest["task"]["type"] = "text-classification"
    write_manifest(typed, manifest)
    assert Classifier.from_bundle(typed).labels == ("neg", "pos")


def _retyped(bundle, tmp_path, kind):
    dest = shutil.copytree(bundle, tmp_path / kind)
    manifest = read_manifest_json(dest)
    manifest["task"]["type"] = kind
    write_manifest(dest, manifest)
    return dest


def test_a_token_classification_bundle_names_tagger(classification_bundle, tmp_path):
    tagged = _retyped(classification_bundle, tmp_path, "token-classification")
    for cls in (Classifier, Embedder):
        with pytest.raises(BundleError) as error:
            cls.from_bundle(tagged)
        assert one_line(error) == (
            f"{str(tagged)!r} is a token-classification bundle; load it with "
            f"embslim.runtime.Tagger.from_bundle(...), not {cls.__name__} (or with "
            "embslim.runtime.load_bundle(...), which picks the class from the manifest)"
        )
    # load_bundle picks Tagger, which checks the graph: this one's logits have no token axis
    with pytest.raises(BundleError, match=r"output 'logits' has shape \['batch', 2\], expected "
                                          r"\[batch, sequence, 2\]"):  # fmt: skip
        load_bundle(tagged)


def test_an_unknown_task_type(classification_bundle, tmp_path):
    odd = _retyped(classification_bundle, tmp_path, "question-answering")
    with pytest.raises(BundleError) as error:
        load_bundle(odd)
    assert one_line(error).endswith(
        "is a bundle of task 'question-answering', which this runtime does not know (it loads "
        "text-classification bundles with Classifier, feature-extraction bundles with Embedder, "
        "token-classification bundles with Tagger); upgrade embslim, or re-export the bundle for one of those tasks"
    )


def test_the_constructor_refuses_another_task_too(emb, classification_bundle):
    clf = Classifier.from_bundle(classification_bundle)
    with pytest.raises(BundleError, match=r"is a text-classification bundle; load it with "):
        Embedder(clf._session, clf._tokenizer, manifest=clf.manifest, model_path=clf.model_path)


def test_load_bundle_picks_the_class_from_the_manifest(pristine, classification_bundle):
    model = load_bundle(pristine, threads=1, max_chars=50)
    assert type(model) is Embedder and model.max_chars == 50
    np.testing.assert_array_equal(model.encode(TEXTS[:3]), Embedder.from_bundle(pristine).encode(TEXTS[:3]))
    clf = load_bundle(classification_bundle, variant="auto")
    assert type(clf) is Classifier and clf.labels == ("neg", "pos")
    with pytest.raises(BundleError, match=r"bundle directory '.*nowhere' does not exist"):
        load_bundle(pristine.parent / "nowhere")


def test_staging_folders_are_refused(bundle):
    (bundle / ".embslim-staging").write_text("", encoding="utf-8")
    with pytest.raises(BundleError, match=r"is an unfinished bundle"):
        Embedder.from_bundle(bundle)
    assert Embedder.from_bundle(bundle, staging=True).dim == 3


# -- variants -------------------------------------------------------------------------------


def test_auto_picks_the_int8_artifact_for_this_machine(tmp_path):
    target = (machine_targets() or ("any",))[0]
    bundle = make_tiny_embedding_bundle(tmp_path, dim=3, int8_target=target)
    auto = Embedder.from_bundle(bundle, variant="auto")
    name = f"model_int8_{target.replace('-', '_')}.onnx"
    assert auto.model_path.name == name and auto.artifact["variant"] == "int8"
    # the stand-in int8 file has its own weights: its embeddings prove which file ran
    np.testing.assert_allclose(auto.encode(TEXTS), reference(bundle, TEXTS, file=name), atol=1e-5)
    fp32 = Embedder.from_bundle(bundle)
    assert fp32.model_path.name == "model.onnx"  # the default stays fp32
    np.testing.assert_allclose(fp32.encode(TEXTS), reference(bundle, TEXTS), atol=1e-5)
    assert Embedder.from_bundle(bundle, variant="int8").model_path.name == name
    assert Embedder.from_bundle(bundle, file=name).artifact["variant"] == "int8"


def test_auto_falls_back_to_fp32(pristine):
    assert Embedder.from_bundle(pristine, variant="auto").artifact["variant"] == "fp32"


def test_an_unknown_variant(pristine):
    with pytest.raises(BundleError, match=r"^the bundle has no artifact with variant 'int3'; "
                                          r"available: variant 'fp32'"):  # fmt: skip
        Embedder.from_bundle(pristine, variant="int3")


# -- threads --------------------------------------------------------------------------------


def test_one_embedder_shared_by_eight_threads(tmp_path):
    bundle = make_tiny_embedding_bundle(tmp_path, pooling="mean", dim=3)
    # threads=2: ORT's own intra-op pool also runs while 8 Python threads share the session.
    emb = Embedder.from_bundle(bundle, threads=2)
    rng = np.random.default_rng(0)
    words = "the a movie film plot acting is was it great good love fun bad awful boring".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 21))) for _ in range(60)]
    batches = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    singles = {t: emb.encode(t) for t in texts}
    batch_ref = [emb.encode(b) for b in batches]
    start = threading.Barrier(8)
    problems: list[str] = []

    def work(worker: int) -> None:
        try:
            start.wait(timeout=30)
            for call in range(300):
                k = (worker * 7919 + call) % len(texts)
                if call % 2:
                    if not np.array_equal(emb.encode(texts[k]), singles[texts[k]]):
                        problems.append(f"thread {worker} call {call}: text {k} differs")
                elif not np.array_equal(emb.encode(batches[k % len(batches)]), batch_ref[k % len(batches)]):
                    problems.append(f"thread {worker} call {call}: batch differs")
        except BaseException as e:  # noqa: BLE001 - reported below
            problems.append(f"thread {worker}: {e!r}")

    workers = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a worker thread hung"
    assert not problems, problems[:5]


def test_the_manifest_is_the_contract_the_pipeline_writes(pristine):
    """The keys an embedding bundle's manifest carries (the pipeline writes the same)."""
    task = json.loads((pristine / "manifest.json").read_text(encoding="utf-8"))["task"]
    assert task["type"] == "feature-extraction" and task["labels"] == [] and task["pair"] is False
    assert task["embedding"] == {"dim": 3, "pooling": "mean", "normalize": True}


def test_the_runtime_classes_are_also_top_level_names():
    import embslim
    from embslim.runtime import Classifier, Embedder, Tagger

    assert (embslim.Classifier, embslim.Embedder, embslim.Tagger) == (Classifier, Embedder, Tagger)
    assert {"Classifier", "Embedder", "Tagger"} <= set(embslim.__all__)
