"""`Tagger` on a token-classification bundle exported by embslim (a tiny random BERT tagger):
per-token outputs, batching, the aggregation rules, input errors, threads, refusals and repr.

The equality with transformers' pipeline on Optimum's model is tests/exporters/test_tagger_dropin.py;
the aggregation rules are also checked here on hand-made scores, without a model.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle, make_tiny_embedding_bundle, read_manifest_json, write_manifest

from embslim.runtime import (
    BundleError,
    Classifier,
    Embedder,
    InputError,
    InputTypeError,
    Tagger,
    TokenOutput,
    load_bundle,
)
from embslim.runtime.spans import entities

MAX_LENGTH = 16
TEXTS = [
    "Ada Lovelace lives in London",
    "the movie was good in paris, very charming",
    "Café crème à São Paulo 😀",
    "  extra   spaces\tand\nnewlines ",
    "good " * 40,  # truncated at MAX_LENGTH tokens
    "",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("torch")
    from tagger_bundle import make_tagger_bundle

    return make_tagger_bundle(tmp_path_factory.mktemp("tagger"), family="bert", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def tagger(bundle) -> Tagger:
    return Tagger.from_bundle(bundle, threads=1, max_chars=500)


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# -- token_outputs and tokenize -------------------------------------------------------------


def test_token_outputs_shapes_dtypes_and_offsets(tagger):
    outs = tagger.token_outputs(TEXTS)
    assert len(outs) == len(TEXTS) and all(isinstance(o, TokenOutput) for o in outs)
    for text, o in zip(TEXTS, outs):
        n = len(o.input_ids)
        assert 2 <= n <= MAX_LENGTH
        assert o.input_ids.dtype == np.int64 and o.input_ids.shape == (n,)
        assert o.offsets.dtype == np.int64 and o.offsets.shape == (n, 2)
        assert o.special.dtype == np.bool_ and o.special.shape == (n,)
        assert o.logits.dtype == np.float32 and o.logits.shape == (n, len(tagger.labels))
        assert o.special[0] and o.special[-1] and not o.special[1:-1].any()  # [CLS] ... [SEP]
        assert (o.offsets[o.special] == 0).all()
        starts, ends = o.offsets[~o.special].T
        assert (0 <= starts).all() and (starts < ends).all() and (ends <= len(text)).all()
        assert (np.diff(starts) >= 0).all()
        for s, e in o.offsets[~o.special]:
            assert text[s:e].strip() == text[s:e]  # offsets never include a space
        for array in (o.input_ids, o.offsets, o.special, o.logits):
            assert not array.flags.writeable
    assert len(outs[4].input_ids) == MAX_LENGTH  # truncated, [SEP] kept
    assert len(outs[5].input_ids) == 2  # "" is [CLS] [SEP]


def test_logits_are_the_graphs_rows_for_each_text_alone(tagger, bundle):
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for o in tagger.token_outputs(TEXTS, batch_size=4):
        feeds = {"input_ids": o.input_ids[None], "attention_mask": np.ones_like(o.input_ids)[None],
                 "token_type_ids": np.zeros_like(o.input_ids)[None]}  # fmt: skip
        (want,) = session.run(["logits"], feeds)
        np.testing.assert_allclose(o.logits, want[0], atol=1e-5)


def test_results_do_not_depend_on_batch_size(tagger):
    one = tagger.token_outputs(TEXTS, batch_size=1)
    for batch_size in (2, 5, 64):
        other = tagger.token_outputs(TEXTS, batch_size=batch_size)
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a.input_ids, b.input_ids)
            np.testing.assert_array_equal(a.offsets, b.offsets)
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
        for strategy in ("none", "simple", "first"):
            got = tagger.tag(TEXTS, aggregation_strategy=strategy, batch_size=batch_size)
            want = tagger.tag(TEXTS, aggregation_strategy=strategy, batch_size=1)
            assert [[{k: v for k, v in e.items() if k != "score"} for e in t] for t in got] == [
                [{k: v for k, v in e.items() if k != "score"} for e in t] for t in want
            ]


def test_tokenize_is_token_outputs_without_the_model(tagger):
    for a, b in zip(tagger.tokenize(TEXTS), tagger.token_outputs(TEXTS)):
        assert a.logits is None
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.special, b.special)
    assert len(tagger.tokenize("one text")) == 1


def test_lone_surrogates_are_tagged_and_offsets_index_the_text_as_given(tagger):
    lone = "so cute \ud83d and good"
    assert tagger.tag(lone, aggregation_strategy="none", ignore_labels=()) == tagger.tag(
        "so cute \ufffd and good", aggregation_strategy="none", ignore_labels=()
    )
    # a pair written as two code points is one character for the tokenizer, two in the text
    split = "a \ud83d\ude00 good film"
    joined = "a \U0001f600 good film"
    o_split, o_joined = tagger.token_outputs([split, joined])
    np.testing.assert_array_equal(o_split.input_ids, o_joined.input_ids)
    shift = np.where(o_joined.offsets >= 3, 1, 0) * ~o_joined.special[:, None]
    np.testing.assert_array_equal(o_split.offsets, o_joined.offsets + shift)
    for e in tagger.tag(split, aggregation_strategy="none", ignore_labels=()):
        if e["word"] != "[UNK]" and e["word"] != "\U0001f600":
            assert split[e["start"]:e["end"]].lower() == e["word"].removeprefix("##")


# -- tag ------------------------------------------------------------------------------------


def test_tag_returns_transformers_shaped_entities(tagger):
    found = tagger.tag(TEXTS[:2], aggregation_strategy="none", ignore_labels=())
    assert len(found) == 2
    first = found[0]
    assert len(first) == len(tagger.tokenize(TEXTS[0])[0].input_ids) - 2  # specials left out
    for e in first:
        assert list(e) == ["entity", "score", "index", "word", "start", "end"]
        assert e["entity"] in tagger.labels and isinstance(e["score"], float) and 0 < e["score"] <= 1
        assert isinstance(e["index"], int) and isinstance(e["start"], int)
    grouped = tagger.tag(TEXTS[0])  # a single str: that text's entities; "simple", O ignored
    assert grouped and all(list(e) == ["entity_group", "score", "word", "start", "end"] for e in grouped)
    assert all(e["entity_group"] != "O" and "-" not in e["entity_group"][:2] for e in grouped)
    assert tagger.tag(TEXTS[0], aggregation_strategy="SIMPLE") == grouped  # any case, as transformers


def test_scores_are_softmax_of_the_logits(tagger):
    o = tagger.token_outputs(TEXTS[0])[0]
    probs = np.exp(o.logits.astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    for e in tagger.tag(TEXTS[0], aggregation_strategy="none", ignore_labels=()):
        j = tagger.labels.index(e["entity"])
        assert e["score"] == pytest.approx(probs[e["index"], j], abs=1e-6)
        assert j == int(np.argmax(o.logits[e["index"]]))


def test_ignore_labels(tagger):
    every = tagger.tag(TEXTS[1], aggregation_strategy="none", ignore_labels=())
    kept = tagger.tag(TEXTS[1], aggregation_strategy="none", ignore_labels=["O", "B-group"])
    assert kept == [e for e in every if e["entity"] not in ("O", "B-group")]
    groups = tagger.tag(TEXTS[1], ignore_labels=("group",))  # entity_group names too
    assert all(e["entity_group"] != "group" for e in groups)


# -- the aggregation rules, on hand-made scores ----------------------------------------------

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC")


def _run(text, tokens, tags, *, strategy, word_aware=True, ignore=("O",), confidence=None):
    """entities() for tokens given as (token, start, end) with one tag each (score 0.9, or the
    confidence given per token), framed by [CLS]/[SEP]."""
    vocab = {t: i + 10 for i, (t, _, _) in enumerate(tokens)}
    ids = np.array([1] + [vocab[t] for t, _, _ in tokens] + [2])
    offsets = np.array([(0, 0)] + [(s, e) for _, s, e in tokens] + [(0, 0)])
    special = np.array([True] + [False] * len(tokens) + [True])
    scores = np.full((len(ids), len(LABELS)), 0.0, dtype=np.float32)
    for row, tag in enumerate(tags, start=1):
        p = 0.9 if confidence is None else confidence[row - 1]
        scores[row] = (1 - p) / (len(LABELS) - 1)
        scores[row, LABELS.index(tag)] = p
    by_id = {i: t for t, i in vocab.items()}
    return entities(
        text, input_ids=ids, scores=scores, offsets=offsets, special=special, labels=LABELS,
        strategy=strategy, ignore_labels=ignore, id_to_token=by_id.get,
        tokens_to_string=lambda ts: " ".join(ts).replace(" ##", ""), unk_id=None,
        subword_prefix=word_aware,
    )  # fmt: skip


TEXT = "Ada Lovelace in Paris"
TOKENS = [("ada", 0, 3), ("love", 4, 8), ("##lace", 8, 12), ("in", 13, 15), ("paris", 16, 21)]


def test_simple_groups_b_then_i_of_one_tag():
    found = _run(TEXT, TOKENS, ["B-PER", "I-PER", "I-PER", "O", "B-LOC"], strategy="simple")
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in found] == [
        ("PER", "ada lovelace", 0, 12), ("LOC", "paris", 16, 21)]  # fmt: skip
    assert found[0]["score"] == pytest.approx(0.9)


def test_a_b_tag_starts_a_new_group_and_bare_tags_continue():
    found = _run(TEXT, TOKENS, ["B-PER", "B-PER", "I-PER", "MISC", "MISC"], strategy="simple")
    assert [(e["entity_group"], e["start"], e["end"]) for e in found] == [
        ("PER", 0, 3), ("PER", 4, 12), ("MISC", 13, 21)]  # fmt: skip


def test_word_strategies_give_a_word_one_tag():
    tags = ["B-PER", "B-LOC", "I-PER", "O", "B-LOC"]  # "love" and "##lace" disagree
    simple = _run(TEXT, TOKENS, tags, strategy="simple")
    assert [(e["entity_group"], e["start"], e["end"]) for e in simple] == [
        ("PER", 0, 3), ("LOC", 4, 8), ("PER", 8, 12), ("LOC", 16, 21)]  # fmt: skip
    first = _run(TEXT, TOKENS, tags, strategy="first")  # "love"'s B-LOC wins
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in first] == [
        ("PER", "ada", 0, 3), ("LOC", "lovelace", 4, 12), ("LOC", "paris", 16, 21)]  # fmt: skip
    sure = [0.9, 0.5, 0.95, 0.9, 0.9]  # "##lace" is surer: max takes its I-PER
    most = _run(TEXT, TOKENS, tags, strategy="max", confidence=sure)
    assert [(e["entity_group"], e["start"], e["end"]) for e in most] == [
        ("PER", 0, 12), ("LOC", 16, 21)]  # fmt: skip
    average = _run(TEXT, TOKENS, tags, strategy="average", confidence=sure)
    assert average[1]["score"] == pytest.approx(0.9)  # paris: a one-token word
    assert [e["entity_group"] for e in average] == ["PER", "LOC"]  # mean(0.05, 0.95) > 0.5/2


def test_without_a_subword_prefix_the_whitespace_heuristic_decides():
    text = "Ada Love-lace"
    tokens = [("Ada", 0, 3), ("Love", 4, 8), ("-", 8, 9), ("lace", 9, 13)]
    found = _run(text, tokens, ["B-PER", "B-LOC", "O", "I-PER"], strategy="first", word_aware=False)
    # "-" and "lace" follow a non-space: subwords of "Love", which takes B-LOC for all three
    assert [(e["entity_group"], e["start"], e["end"]) for e in found] == [("PER", 0, 3), ("LOC", 4, 13)]


def test_none_keeps_every_token_with_its_index():
    found = _run(TEXT, TOKENS, ["B-PER", "I-PER", "I-PER", "O", "B-LOC"], strategy="none")
    assert [(e["entity"], e["index"], e["word"]) for e in found] == [
        ("B-PER", 1, "ada"), ("I-PER", 2, "love"), ("I-PER", 3, "##lace"), ("B-LOC", 5, "paris")]  # fmt: skip


# -- input errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["tag", "token_outputs", "tokenize"])
def test_bad_inputs(tagger, call):
    method = getattr(tagger, call)
    with pytest.raises(InputTypeError, match=r"texts\[1\] is int \(3\), expected str"):
        method(["ok", 3])
    with pytest.raises(InputTypeError, match=rf"{call}\(\) expects texts as a str or a list of str, got None"):
        method(None)
    with pytest.raises(InputError, match=rf"{call}\(\) got an empty list of texts"):
        method([])
    with pytest.raises(InputError, match=r"texts\[0\] is a tuple, but this bundle tags single texts"):
        method([("a", "b")])
    with pytest.raises(InputError, match=r"texts\[0\] has 501 characters, more than max_chars=500"):
        method(["x" * 501])


def test_bad_options(tagger):
    with pytest.raises(InputError, match=r"batch_size must be a positive int, got 0"):
        tagger.tag(["a"], batch_size=0)
    with pytest.raises(InputError, match=r"batch_size must be a positive int, got True"):
        tagger.token_outputs(["a"], batch_size=True)
    with pytest.raises(InputError, match=r"aggregation_strategy 'longest' is not one of none, simple, "
                                         r"first, average, max"):  # fmt: skip
        tagger.tag("a", aggregation_strategy="longest")
    with pytest.raises(InputTypeError, match=r"aggregation_strategy must be a str"):
        tagger.tag("a", aggregation_strategy=None)
    with pytest.raises(InputTypeError, match=r"ignore_labels must be a list or tuple of tag names, "
                                             r"got str \('O'\)"):  # fmt: skip
        tagger.tag("a", ignore_labels="O")
    with pytest.raises(InputTypeError, match=r"ignore_labels\[1\] is int \(0\)"):
        tagger.tag("a", ignore_labels=["O", 0])


# -- threads, loading, refusals, repr ---------------------------------------------------------


def test_one_tagger_serves_many_threads(tagger):
    texts = [f"{t} number {i}" for i in range(12) for t in TEXTS[:4]]
    want = tagger.tag(texts, aggregation_strategy="first", batch_size=3)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results[k] = tagger.tag(texts, aggregation_strategy="first", batch_size=1 + k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results.values():
        assert [[(e["entity_group"], e["start"], e["end"]) for e in t] for t in got] == [
            [(e["entity_group"], e["start"], e["end"]) for e in t] for t in want
        ]


def test_load_bundle_picks_tagger_and_repr(bundle, tagger):
    model = load_bundle(bundle, threads=1)
    assert isinstance(model, Tagger) and model.task_type == "token-classification"
    assert model.labels == tagger.labels == tuple(read_manifest_json(bundle)["task"]["labels"])
    assert repr(model) == (
        f"Tagger(model='model.onnx', variant='fp32', labels={list(model.labels)!r}, "
        f"max_length={MAX_LENGTH})"
    )


@pytest.mark.parametrize("cls", [Classifier, Embedder])
def test_other_classes_name_tagger(bundle, cls):
    with pytest.raises(BundleError) as error:
        cls.from_bundle(bundle)
    assert one_line(error) == (
        f"{str(bundle)!r} is a token-classification bundle; load it with "
        f"embslim.runtime.Tagger.from_bundle(...), not {cls.__name__} (or with "
        "embslim.runtime.load_bundle(...), which picks the class from the manifest)"
    )


def test_tagger_refuses_other_bundles(tmp_path):
    clf = make_tiny_bundle(tmp_path / "clf")
    emb = make_tiny_embedding_bundle(tmp_path / "emb")
    for path, kind, cls in ((clf, "text-classification", "Classifier"),
                            (emb, "feature-extraction", "Embedder")):  # fmt: skip
        with pytest.raises(BundleError) as error:
            Tagger.from_bundle(path)
        assert one_line(error) == (
            f"{str(path)!r} is a {kind} bundle; load it with embslim.runtime.{cls}.from_bundle(...), "
            "not Tagger (or with embslim.runtime.load_bundle(...), which picks the class from the "
            "manifest)"
        )


def test_a_tagger_manifest_with_pairs_is_refused(bundle, tmp_path):
    paired = shutil.copytree(bundle, tmp_path / "paired")
    manifest = read_manifest_json(paired)
    manifest["task"]["pair"] = True
    write_manifest(paired, manifest)
    with pytest.raises(BundleError, match=r"'task\.pair' must be false for a token-classification bundle"):
        Tagger.from_bundle(paired)


def test_labels_that_do_not_fit_the_graph_are_refused(bundle, tmp_path):
    fewer = shutil.copytree(bundle, tmp_path / "fewer")
    manifest = read_manifest_json(fewer)
    manifest["task"]["labels"] = manifest["task"]["labels"][:3]
    write_manifest(fewer, manifest)
    with pytest.raises(BundleError, match=r"output 'logits' has shape \['batch', 'sequence', 13\]|"
                                          r"output 'logits' has shape \[1, 1, 13\]"):  # fmt: skip
        Tagger.from_bundle(fewer)
