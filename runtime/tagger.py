"""`Tagger`: token tags and entity spans from an embslim token-classification bundle.

The bundle's graph outputs `logits` [batch, sequence, n_labels] (one row per token, tag names
in id order in `task.labels`, BIO such as "O", "B-person", "I-person"). This class keeps each
text's encoding beside its rows: `token_outputs` gives ids, character offsets, the special-token
mask and logits per text; `tag` turns them into entities exactly as transformers'
`TokenClassificationPipeline` does (runtime/spans.py). Loading, verification, input checks and
batching are `BundleModel`'s (runtime/bundle_model.py). One `Tagger` can serve many threads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding

from .bundle_model import BundleModel
from .errors import BundleError, InputError, InputTypeError
from .spans import AGGREGATION_STRATEGIES, entities, softmax32
from .texts import as_list, check_batch_size, describe

__all__ = ["TokenOutput", "Tagger"]

logger = logging.getLogger(__name__)

_OUTPUT = "logits"
# Texts tokenized per `encode_batch` call by `tokenize` (no model run): bounds the transient
# Encoding objects, as `batch_size` does for the calls that run the model.
_TOKENIZE_CHUNK = 256


@dataclass(frozen=True, eq=False)
class TokenOutput:
    """One text's tokens after truncation at the bundle's max_length (no padding rows).

    input_ids: int64 [n], the tokenizer's ids, special tokens included.
    offsets: int64 [n, 2], (start, end) character offsets into the text as it was given
        (the tokenizer's offset mapping); (0, 0) for special tokens.
    special: bool [n], True for the tokens the post-processor added ([CLS], [SEP], <s>, </s>).
    logits: float32 [n, n_labels], the graph's rows for those tokens; None from `tokenize`.

    The arrays are read-only. Compared by identity (`eq=False`): compare the arrays.
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    special: np.ndarray
    logits: np.ndarray | None


class Tagger(BundleModel):
    """Token classification (NER, PII, POS tagging) with an embslim token-classification bundle.

    Build it with `Tagger.from_bundle(path, variant="auto")` (the options, and the
    `BundleError`s, are `BundleModel.from_bundle`'s); a text-classification bundle is refused
    with a `BundleError` naming `Classifier`, a feature-extraction one naming `Embedder`. At load
    the graph must have a `logits` output [batch, sequence, len(labels)].

        tagger = Tagger.from_bundle("out/ner/bundle", variant="auto", threads=1)
        tagger.tag("Ada Lovelace lives in London")
        # [{'entity_group': 'person', 'score': 0.98, 'word': 'ada lovelace', 'start': 0, 'end': 12},
        #  {'entity_group': 'location', 'score': 0.97, 'word': 'london', 'start': 22, 'end': 28}]

    Results follow transformers' `pipeline("token-classification", aggregation_strategy=...)`
    (`TokenClassificationPipeline`, v4.57): the same strategies, keys, scores and offsets.
    Texts longer than max_length tokens are truncated (the pipeline's `stride` is not
    supported); a lone UTF-16 surrogate is tagged as U+FFFD, offsets still index the text as
    given.
    """

    task_type = "token-classification"
    _output = _OUTPUT
    _verb = "tags"

    def __init__(self, *args: Any, **kwargs: Any) -> None:   # BundleModel's arguments
        super().__init__(*args, **kwargs)
        model = self._tokenizer.model
        # transformers: a "word aware" tokenizer has a continuing_subword_prefix (WordPiece's
        # "##"); others (byte-level BPE, Unigram) get its whitespace heuristic.
        self._subword_prefix = bool(getattr(model, "continuing_subword_prefix", None))
        self._unk_id = _unk_id(self._tokenizer)

    # -- public API ---------------------------------------------------------------------------

    def token_outputs(self, texts: Sequence[str] | str, *, batch_size: int = 32) -> list[TokenOutput]:
        """Each text's tokens and logits: one `TokenOutput` per text, in input order.

        Texts run `batch_size` at a time, each batch padded to its own longest row; the rows
        returned are the text's own tokens only, so results do not depend on `batch_size`
        (beyond float rounding).

        Raises `InputTypeError` for a non-string (or non-iterable) input, `InputError` for an
        empty list, a tuple/list item (a text pair), a text over `max_chars` characters or a
        bad `batch_size`.
        """
        originals, cleaned = self._texts(texts, caller="token_outputs")
        check_batch_size(batch_size)
        return [
            _token_output(enc, rows, original, text)
            for (enc, rows), original, text in zip(
                self._rows(cleaned, batch_size=batch_size), originals, cleaned
            )
        ]

    def tokenize(self, texts: Sequence[str] | str) -> list[TokenOutput]:
        """`token_outputs` without running the model: `logits` is None. Same input checks."""
        originals, cleaned = self._texts(texts, caller="tokenize")
        out: list[TokenOutput] = []
        for start in range(0, len(cleaned), _TOKENIZE_CHUNK):
            stop = start + _TOKENIZE_CHUNK
            encodings = self._encodings(cleaned[start:stop], None)
            for enc, original, text in zip(encodings, originals[start:stop], cleaned[start:stop]):
                out.append(_token_output(enc, None, original, text))
        return out

    @overload
    def tag(self, texts: str, *, aggregation_strategy: str = ..., batch_size: int = ...,
            ignore_labels: Iterable[str] = ...) -> list[dict[str, Any]]: ...  # fmt: skip

    @overload
    def tag(self, texts: Sequence[str], *, aggregation_strategy: str = ..., batch_size: int = ...,
            ignore_labels: Iterable[str] = ...) -> list[list[dict[str, Any]]]: ...  # fmt: skip

    def tag(
        self,
        texts: Sequence[str] | str,
        *,
        aggregation_strategy: str = "simple",
        batch_size: int = 32,
        ignore_labels: Iterable[str] = ("O",),
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Entities of a text (a list of dicts), or of each text of a list (a list of lists).

        aggregation_strategy, as transformers' token-classification pipeline:
            "none": one entity per token: {"entity", "score", "index", "word", "start", "end"}
                (`index`: the token's position, special tokens counted);
            "simple": adjacent tokens with the same tag join (a "B-" tag starts a new one):
                {"entity_group", "score" (mean of the tokens'), "word", "start", "end"};
            "first" / "average" / "max": as "simple", after the tokens of each word take one
                tag: the first token's, the tag of the averaged scores, or the most confident
                token's.
        `score` is a softmax probability (a Python float), `start`/`end` character offsets into
        the text as given (`text[start:end]`), `word` the tokenizer's decoding of the tokens
        (transformers' `convert_tokens_to_string`; lower-cased for an uncased vocabulary).
        ignore_labels: entities with these tags (or groups) are left out; () keeps all.

        `word` keeps transformers' quirks, so results compare one to one: with a byte-level BPE
        tokenizer a word strategy's words are decoded twice (in `aggregate_word` and again in
        `group_sub_entities`), so non-ASCII characters may come out as U+FFFD there; use
        `text[start:end]` for the exact text. The unknown token (whose `word` is the text under
        it, and never a subword) is tokenizer.json's model `unk_token` (`unk_id` for Unigram);
        transformers reads it from tokenizer_config.json. They agree for every bundle tested;
        they would differ only for a byte-level BPE whose tokenizer.json model has no unk_token
        (roberta-base's), on a text that types "<unk>" literally.

        Raises what `token_outputs` raises, and `InputError` for an unknown strategy or
        `InputTypeError` for ignore_labels that are not strings.
        """
        strategy = _strategy(aggregation_strategy)
        ignored = _ignore_labels(ignore_labels)
        originals, cleaned = self._texts(texts, caller="tag")
        check_batch_size(batch_size)
        found: list[list[dict[str, Any]]] = []
        for (enc, rows), original, text in zip(
            self._rows(cleaned, batch_size=batch_size), originals, cleaned
        ):
            spans = entities(
                text,
                input_ids=np.asarray(enc.ids),
                scores=softmax32(rows),
                offsets=np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2),
                special=np.asarray(enc.special_tokens_mask, dtype=bool),
                labels=self.labels,
                strategy=strategy,
                ignore_labels=ignored,
                id_to_token=self._tokenizer.id_to_token,
                tokens_to_string=self._tokens_to_string,
                unk_id=self._unk_id,
                subword_prefix=self._subword_prefix,
            )
            positions = _positions(original, text)
            found.append([_plain(e, positions) for e in spans])
        return found[0] if isinstance(texts, str) else found

    # -- what BundleModel asks of a subclass -----------------------------------------------

    def _check_output(self, session: ort.InferenceSession) -> None:
        n = len(self.labels)
        self._require_output(session, axes=("batch", "sequence"), width=n, width_axis="labels",
                             width_detail=f"{n} labels", bundle_kind="a token-classification bundle's")

    def _check_probe(self, output: np.ndarray) -> None:
        """A symbolic label axis is only known by running: check it on the probe."""
        if output.ndim != 3 or output.shape[-1] != len(self.labels):
            raise BundleError(
                f"{self.model_path.name}: output '{_OUTPUT}' has shape {list(output.shape)} on "
                f"a one-token probe, expected [1, sequence, {len(self.labels)}] for the "
                f"manifest's {len(self.labels)} labels; re-export the bundle"
            )

    def _describe(self) -> list[str]:
        return [f"labels={list(self.labels)!r}"]

    # -- internals (no state is written here: safe to run from many threads) --------------

    def _texts(self, texts: Any, *, caller: str) -> tuple[list[str], list[str]]:
        """(texts as given, texts as tokenized: lone surrogates replaced), after the checks."""
        originals = as_list(texts, name="texts", caller=caller)
        return originals, self._single_texts(originals, caller=caller)

    def _rows(self, texts: list[str], *, batch_size: int) -> Iterator[tuple[Encoding, np.ndarray]]:
        """(encoding, float32 logits [n, n_labels]) per text, in order: its rows, no padding."""
        for encodings, out in self._batches(texts, None, batch_size=batch_size):
            if out.ndim != 3 or out.shape[-1] != len(self.labels):
                raise BundleError(
                    f"{self.model_path.name}: output '{_OUTPUT}' has shape {out.shape}, expected "
                    f"[batch, sequence, {len(self.labels)}] for labels {list(self.labels)}; the "
                    "model and manifest do not belong together: re-export the bundle"
                )
            for row, enc in enumerate(encodings):
                yield enc, out[row, : len(enc.ids)].astype(np.float32, copy=False)

    def _tokens_to_string(self, tokens: list[str]) -> str:
        """transformers' `convert_tokens_to_string` of a fast tokenizer: the tokenizer.json
        decoder on the token strings, or the tokens joined by spaces when it has none."""
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def _strategy(value: Any) -> str:
    if not isinstance(value, str):
        raise InputTypeError(
            f"aggregation_strategy must be a str, one of {', '.join(AGGREGATION_STRATEGIES)}; "
            f"got {describe(value)}"
        )
    name = value.lower()  # transformers reads AggregationStrategy[value.upper()]
    if name not in AGGREGATION_STRATEGIES:
        raise InputError(
            f"aggregation_strategy {value!r} is not one of {', '.join(AGGREGATION_STRATEGIES)} "
            "(transformers' token-classification strategies); e.g. aggregation_strategy='simple'"
        )
    return name


def _ignore_labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InputTypeError(
            f"ignore_labels must be a list or tuple of tag names, got {describe(value)}; "
            "e.g. ignore_labels=('O',), or () to keep every tag"
        )
    labels = tuple(value)
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise InputTypeError(f"ignore_labels[{i}] is {describe(label)}, expected a tag name (str)")
    return labels


def _unk_id(tokenizer: Any) -> int | None:
    """The id of the tokenizer model's unknown token (WordPiece/BPE `unk_token`, Unigram
    `unk_id`), or None when it has none (byte-level BPE usually): transformers' `unk_token_id`
    for tokenizers whose tokenizer.json and tokenizer_config.json agree."""
    state = json.loads(tokenizer.model.__getstate__())
    if isinstance(state.get("unk_id"), int):
        return int(state["unk_id"])
    token = state.get("unk_token")
    return tokenizer.token_to_id(token) if isinstance(token, str) else None


def _positions(original: str, text: str) -> list[int] | None:
    """For each index of `text` (the tokenized form of `original`) and its end, the index in
    `original`; None when they are the same (no surrogate pair was joined)."""
    if len(original) == len(text):
        return None
    positions = []
    j = 0
    for _ in text:
        positions.append(j)
        pair = (
            "\ud800" <= original[j] <= "\udbff"
            and j + 1 < len(original)
            and "\udc00" <= original[j + 1] <= "\udfff"
        )
        j += 2 if pair else 1
    positions.append(len(original))
    return positions


def _token_output(
    enc: Encoding, rows: np.ndarray | None, original: str, text: str
) -> TokenOutput:
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    positions = _positions(original, text)
    if positions is not None:
        offsets = np.asarray(positions, dtype=np.int64)[offsets]
    arrays = (
        np.asarray(enc.ids, dtype=np.int64),
        offsets,
        np.asarray(enc.special_tokens_mask, dtype=bool),
        None if rows is None else np.array(rows, dtype=np.float32),
    )
    for a in arrays:
        if a is not None:
            a.setflags(write=False)
    return TokenOutput(*arrays)


def _plain(entity: dict[str, Any], positions: list[int] | None) -> dict[str, Any]:
    """JSON-ready values (Python float and int), offsets mapped to the text as given."""
    out = dict(entity)
    out["score"] = float(entity["score"])
    if "index" in out:
        out["index"] = int(out["index"])
    if positions is not None:
        out["start"], out["end"] = positions[out["start"]], positions[out["end"]]
    return out
