"""Issue #15's "done when": a token-classification bundle is a drop-in for Optimum + transformers.

The bundle loads in `optimum.onnxruntime.ORTModelForTokenClassification` and, through
`transformers.pipeline("token-classification", ...)`, gives the same entities as
`embslim.runtime.Tagger.tag`: tag, start, end and word equal, score within 1e-4, for every
aggregation strategy, on 40 WNUT-17 test sentences (tokens joined with single spaces) plus
hand-written texts (accents, emoji, runs of spaces, tabs and newlines, special tokens typed in,
texts past max_length). Both tokenizer kinds: a tiny random BERT with WordPiece (a "word aware"
tokenizer for transformers: `continuing_subword_prefix`) and a tiny random RoBERTa with a
byte-level BPE trained here (transformers' whitespace heuristic).
"""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("optimum.onnxruntime")

from tagger_bundle import make_tagger_bundle  # noqa: E402  (tests/runtime is on the path)

from embslim.runtime import Tagger  # noqa: E402

N_SENTENCES = 40
HAND_WRITTEN = [
    "Ada Lovelace lives in London and works at the Bank of Paris",
    "Café crème, déjà vu à São Paulo: ÉNORME DÉCEPTION",
    "emoji 😀👍🏽 at AMC Theatres !! #blessed",
    "  two  spaces,   three   spaces and trailing ones   ",
    "tabs\tbetween\twords and\nnewlines\r\ninside",
    "@john_doe RT : Apple's iPhone 12 vs. Windows-11 (beta)",
    "typed special tokens [CLS] <s> </s> [SEP] <unk>",
    "naïve façade in Zürich, İstanbul and Straße",
    " ".join(["the rain in london is very slow"] * 10),  # past max_length: truncated
    "",
    "!",
]


def wnut_sentences(data: Path, n: int) -> list[str]:
    """The first `n` sentences of WNUT-17's test split, tokens joined with single spaces."""
    sentences: list[str] = []
    words: list[str] = []
    with open(data / "wnut17" / "test.conll", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                words.append(line.split("\t")[0])
                continue
            if words:
                sentences.append(" ".join(words))
                words = []
            if len(sentences) == n:
                break
    return sentences


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    if not (shared_data / "wnut17" / "test.conll").is_file():
        pytest.skip(f"WNUT-17 not found at {shared_data / 'wnut17'} (../shared/data beside the repo)")
    found = wnut_sentences(shared_data, N_SENTENCES)
    assert len(found) == N_SENTENCES
    return found + HAND_WRITTEN


@pytest.fixture(scope="module", params=["bert", "roberta"])
def bundle(request, tmp_path_factory) -> Path:
    return make_tagger_bundle(tmp_path_factory.mktemp(f"tagger-{request.param}"), family=request.param)


@pytest.fixture(scope="module")
def reference(bundle):
    """pipeline(strategy) -> transformers' token-classification pipeline on Optimum's model."""
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForTokenClassification.from_pretrained(bundle, file_name="model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(bundle)

    def make(strategy: str):
        return pipeline("token-classification", model=model, tokenizer=tokenizer,
                        aggregation_strategy=strategy)  # fmt: skip

    return make


@pytest.fixture(scope="module")
def tagger(bundle) -> Tagger:
    return Tagger.from_bundle(bundle, threads=1)


def _compare(got: list[dict], want: list[dict], *, key: str, text: str) -> None:
    assert len(got) == len(want), (text, got, want)
    for g, w in zip(got, want):
        where = (text, g, w)
        assert g[key] == w[key], where
        assert (g["start"], g["end"]) == (w["start"], w["end"]), where
        assert g["word"] == w["word"], where
        assert g["score"] == pytest.approx(float(w["score"]), abs=1e-4), where
        if key == "entity":
            assert g["index"] == w["index"], where
        assert list(g) == list(w), where  # the same keys, in transformers' order


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_tag_equals_transformers_pipeline_on_optimum(tagger, reference, texts, strategy):
    with warnings.catch_warnings():  # the pipeline warns per token for non word-aware tokenizers
        warnings.simplefilter("ignore", UserWarning)
        want = reference(strategy)(texts)
    got = tagger.tag(texts, aggregation_strategy=strategy, batch_size=8)
    key = "entity" if strategy == "none" else "entity_group"
    for text, g, w in zip(texts, got, want):
        _compare(g, w, key=key, text=text)
    assert sum(len(g) for g in got) > len(texts)  # the tiny model tags: the comparison is not empty
    if strategy != "none":
        groups = {e["entity_group"] for g in got for e in g}
        assert "creative-work" in groups and "O" not in groups  # B-/I- stripped, O ignored
    # a single str gives that text's list, as the pipeline does
    assert tagger.tag(texts[0], aggregation_strategy=strategy) == got[0]


def _fold(text: str) -> str:
    """What an uncased WordPiece vocabulary sees: lower case, accents stripped, no spaces."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn" and not c.isspace())


def _irregular(text: str, tokens, start: int, end: int) -> bool:
    """Byte-level BPE tokens whose offsets do not tile the words of the text: a lone "Ġ" (the
    first space of a run), which trim_offsets makes zero-width after its space; a token that is
    only whitespace (a tab, a newline); the byte tokens of one character (e.g. "É", "“"), whose
    offsets overlap. transformers' whitespace heuristic makes such tokens words of their own, so
    spans over them may start or end beside a space or inside a character's bytes; the drop-in
    test above shows that Tagger gives the same spans."""
    inside = (~tokens.special) & (tokens.offsets[:, 0] >= start) & (tokens.offsets[:, 1] <= end)
    spans = sorted(tuple(p) for p in tokens.offsets[inside].tolist())
    return any(a == b or not text[a:b].strip() for a, b in spans) or any(
        nxt[0] < prev[1] for prev, nxt in zip(spans, spans[1:])
    )


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_spans_slice_the_text_at_word_boundaries(tagger, texts, strategy):
    """`text[start:end]` is the entity's words: no leading or trailing space, the decoded
    `word` equals the slice (folded as an uncased vocabulary sees it), and (word strategies)
    it starts and ends where a word does, except a word cut by max_length. Byte-level BPE
    spans over irregular tokens (`_irregular`) are left to the drop-in comparison."""
    checked = 0
    for text, found, tokens in zip(texts, tagger.tag(texts, aggregation_strategy=strategy),
                                   tagger.tokenize(texts)):  # fmt: skip
        truncated = len(tokens.input_ids) == tagger.max_length
        last_end = int(tokens.offsets[~tokens.special][-1, 1]) if (~tokens.special).any() else 0
        for e in found:
            start, end = e["start"], e["end"]
            piece = text[start:end]
            if _irregular(text, tokens, start, end):
                assert not tagger._subword_prefix, (text, e)  # never with WordPiece
                continue
            checked += 1
            assert piece and piece == piece.strip(), (text, e)
            if tagger._subword_prefix:  # WordPiece, uncased: lower case, accents stripped
                assert _fold(e["word"].removeprefix("##")) == _fold(piece), (text, e)
            elif "\ufffd" not in e["word"]:  # byte-level BPE: the decoded bytes, space before
                # (U+FFFD: transformers decodes a word strategy's words twice, in aggregate_word
                # and again in group_sub_entities, which garbles non-ASCII byte-level text;
                # Tagger's `word` is the same, `text[start:end]` is the text)
                assert e["word"].strip() == piece, (text, e)
            if strategy == "simple" or (truncated and end == last_end):
                continue
            assert start == 0 or not (text[start - 1].isalnum() and piece[0].isalnum()), (text, e)
            assert end == len(text) or not (text[end].isalnum() and piece[-1].isalnum()), (text, e)
    assert checked > 100
