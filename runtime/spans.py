"""Per-token scores -> entities, as transformers' `TokenClassificationPipeline` makes them.

A port, with numpy and the `tokenizers` library only, of the post-processing in
transformers/pipelines/token_classification.py (v4.57): `gather_pre_entities` (drop special
tokens; a token's `word` is its vocabulary string, or the text under its offsets when it is the
unknown token; the `is_subword` rule), `aggregate` / `aggregate_words` / `aggregate_word`
(strategies "none", "simple", "first", "average", "max"), `group_entities` /
`group_sub_entities` (B-/I- handling) and the `ignore_labels` filter. Names, keys, key order
and float32 arithmetic are transformers' own, so `Tagger.tag` results compare one to one with
`pipeline("token-classification", ...)` on the same logits.

Everything here is a pure function of its arguments: safe from any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["AGGREGATION_STRATEGIES", "entities", "softmax32"]

# transformers' AggregationStrategy values, in its order.
AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")
_WORD_STRATEGIES = ("first", "average", "max")

Entity = dict[str, Any]


def softmax32(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row max: transformers' `postprocess`
    arithmetic, so equal logits give bit-equal scores."""
    x = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def entities(
    text: str,
    *,
    input_ids: np.ndarray,
    scores: np.ndarray,
    offsets: np.ndarray,
    special: np.ndarray,
    labels: Sequence[str],
    strategy: str,
    ignore_labels: Sequence[str],
    id_to_token: Callable[[int], str | None],
    tokens_to_string: Callable[[list[str]], str],
    unk_id: int | None,
    subword_prefix: bool,
) -> list[Entity]:
    """The entities of one text: transformers' `postprocess` for one chunk.

    text: the text the offsets index (as tokenized). input_ids int [n], scores float32
    [n, n_labels] (softmax), offsets int [n, 2], special bool [n] (the tokenizer's
    special_tokens_mask). `id_to_token` is `convert_ids_to_tokens`, `tokens_to_string`
    `convert_tokens_to_string`; `subword_prefix`: the tokenizer model has a
    `continuing_subword_prefix` (e.g. WordPiece's "##"), so a token is a subword when its
    string is longer or shorter than its text; otherwise transformers' fallback heuristic
    (no space just before or at the token's start) applies.
    """
    pre = _gather_pre_entities(
        text, input_ids, scores, offsets, special,
        id_to_token=id_to_token, unk_id=unk_id, subword_prefix=subword_prefix,
    )  # fmt: skip
    grouped = _aggregate(pre, strategy, labels=labels, tokens_to_string=tokens_to_string)
    return [
        e
        for e in grouped
        if e.get("entity", None) not in ignore_labels
        and e.get("entity_group", None) not in ignore_labels
    ]


def _gather_pre_entities(
    text: str,
    input_ids: np.ndarray,
    scores: np.ndarray,
    offsets: np.ndarray,
    special: np.ndarray,
    *,
    id_to_token: Callable[[int], str | None],
    unk_id: int | None,
    subword_prefix: bool,
) -> list[Entity]:
    pre: list[Entity] = []
    for idx, token_scores in enumerate(scores):
        if special[idx]:
            continue
        token_id = int(input_ids[idx])
        word = id_to_token(token_id)
        start, end = int(offsets[idx][0]), int(offsets[idx][1])
        word_ref = text[start:end]
        if subword_prefix:
            is_subword = len(word) != len(word_ref)  # type: ignore[arg-type]
        else:
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if token_id == unk_id:
            word = word_ref
            is_subword = False
        pre.append(
            {"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
             "is_subword": is_subword}
        )  # fmt: skip
    return pre


def _aggregate(
    pre: list[Entity],
    strategy: str,
    *,
    labels: Sequence[str],
    tokens_to_string: Callable[[list[str]], str],
) -> list[Entity]:
    if strategy in ("none", "simple"):
        found = []
        for p in pre:
            idx = p["scores"].argmax()
            found.append(
                {"entity": labels[idx], "score": p["scores"][idx], "index": p["index"],
                 "word": p["word"], "start": p["start"], "end": p["end"]}
            )  # fmt: skip
    else:
        found = _aggregate_words(pre, strategy, labels=labels, tokens_to_string=tokens_to_string)
    if strategy == "none":
        return found
    return _group_entities(found, tokens_to_string=tokens_to_string)


def _aggregate_words(
    pre: list[Entity],
    strategy: str,
    *,
    labels: Sequence[str],
    tokens_to_string: Callable[[list[str]], str],
) -> list[Entity]:
    """Tokens of one word (a token and the subwords after it) become one entity."""
    words: list[Entity] = []
    group: list[Entity] | None = None
    for p in pre:
        if group is None:
            group = [p]
        elif p["is_subword"]:
            group.append(p)
        else:
            words.append(_aggregate_word(group, strategy, labels, tokens_to_string))
            group = [p]
    if group is not None:
        words.append(_aggregate_word(group, strategy, labels, tokens_to_string))
    return words


def _aggregate_word(
    group: list[Entity],
    strategy: str,
    labels: Sequence[str],
    tokens_to_string: Callable[[list[str]], str],
) -> Entity:
    word = tokens_to_string([p["word"] for p in group])
    if strategy == "first":
        scores = group[0]["scores"]
        idx = scores.argmax()
        score = scores[idx]
    elif strategy == "max":
        best = max(group, key=lambda p: p["scores"].max())
        idx = best["scores"].argmax()
        score = best["scores"][idx]
    else:  # "average"
        average = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
        idx = average.argmax()
        score = average[idx]
    return {"entity": labels[idx], "score": score, "word": word, "start": group[0]["start"],
            "end": group[-1]["end"]}  # fmt: skip


def _tag(name: str) -> tuple[str, str]:
    """("B" or "I", the tag) of an entity name; a name without B-/I- continues ("I")."""
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def _group_entities(
    found: list[Entity], *, tokens_to_string: Callable[[list[str]], str]
) -> list[Entity]:
    """Adjacent entities with the same tag join, unless the next one is a B-."""
    groups: list[Entity] = []
    pending: list[Entity] = []
    for e in found:
        if not pending:
            pending.append(e)
            continue
        bi, tag = _tag(e["entity"])
        _, last_tag = _tag(pending[-1]["entity"])
        if tag == last_tag and bi != "B":
            pending.append(e)
        else:
            groups.append(_group_sub_entities(pending, tokens_to_string))
            pending = [e]
    if pending:
        groups.append(_group_sub_entities(pending, tokens_to_string))
    return groups


def _group_sub_entities(
    pending: list[Entity], tokens_to_string: Callable[[list[str]], str]
) -> Entity:
    scores = np.nanmean([e["score"] for e in pending])
    return {
        "entity_group": pending[0]["entity"].split("-", 1)[-1],
        "score": np.mean(scores),
        "word": tokens_to_string([e["word"] for e in pending]),
        "start": pending[0]["start"],
        "end": pending[-1]["end"],
    }
