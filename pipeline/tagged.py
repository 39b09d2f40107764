"""Word-tagged data for token classification (NER / PII tagging): read it, normalise its tags to BIO,
align word tags to sub-word tokens, and score predicted tags at the entity level.

Formats (`read_tagged`):
- CoNLL: one word per line with its tag in the LAST column (``token<TAB>tag``, ``token tag``, or the
  CoNLL-2003 layout ``token POS chunk tag``), a blank line between sentences, ``-DOCSTART-`` lines
  skipped. Every line of a file must have the same number of columns.
- JSONL: one sentence per line, ``{"tokens": [...], "tags": [...]}`` (``ner_tags`` is read as ``tags``),
  tags as strings.

Tag schemes (`to_bio`): BIO (IOB2), IOB1 (an entity starts with ``I-``; ``B-`` only between two
adjacent entities of one type) and IOBES / BILOU (``S-``/``U-`` single, ``E-``/``L-`` last) are
all rewritten to BIO, the scheme seqeval's default mode and transformers' pipeline read. "auto"
picks IOBES when ``S-``/``E-``/``U-``/``L-`` tags occur, IOB1 when entities start with ``I-`` and
every ``B-`` follows a word of its own type, BIO otherwise. A tag that breaks its scheme (BIO's
``I-person`` after ``O``, an ``E-`` with no open entity) is a `DataError` naming the file and line.

Labels to sub-words (`first_token_index`): a sentence's words are joined with single spaces (the
text the runtime gets), and the word starting at character c is labelled on the first token whose
offset span covers c; the word's other sub-tokens and the special tokens get -100 and are ignored
by the loss (the "first sub-token" convention of BERT's NER fine-tuning and transformers'
token-classification examples). Offsets come from the fast tokenizer's offset mapping on the
joined text, so training sees exactly the tokens the runtime and Optimum see on raw text, for
WordPiece and byte-level BPE alike (no `add_prefix_space` difference for RoBERTa's first word).
Predictions are read back from the same token of each word (transformers' "first" aggregation).

Entity scores (`entity_scores`) are seqeval's (`seqeval.metrics`, default conlleval-style mode).
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from embslim.pipeline.data import DataError, Split, TaskData
from embslim.pipeline.texts import TAGGED_EXTENSIONS

log = logging.getLogger(__name__)

TAGGED_FORMATS = ("conll", "jsonl")
SCHEMES = ("auto", "bio", "iob1", "iobes")
IGNORE = -100   # the label torch's cross-entropy (and transformers' heads) ignore
_TAG = re.compile(r"^(?P<prefix>[BIESUL])-(?P<type>\S+)$")

# (words, tags as written, "file:line" of the sentence's first word)
Sentence = tuple[tuple[str, ...], tuple[str, ...], str]


def tagged_task(task: TaskData, requested: str | None) -> str | None:
    """The task a run's data asks for: `requested` (--task), or token-classification for word-tagged
    data (CoNLL / tagged JSONL), else None (inferred from the model). Raises DataError (one line) when
    word-tagged data meets a task that takes whole texts."""
    from embslim.pipeline.tasks import get_task

    if task.eval.words is None:
        return requested
    if requested is not None and not get_task(requested).token_level:
        raise DataError(f"the data is word-tagged (CoNLL / tagged JSONL), which --task {requested} does not take; "
                        "pass --task token-classification")
    return requested or "token-classification"


def check_words(task: TaskData, task_name: str, *, model: str, asked: bool) -> None:
    """DataError (one line) when `task_name` is token classification and the data holds whole texts.
    `asked`: the task came from --task, not from the model's head."""
    from embslim.pipeline.tasks import get_task

    if get_task(task_name).token_level and task.eval.words is None:
        raise DataError(f"{'--task token-classification' if asked else f'model {model!r} is a token classifier, which'} "
                        "needs word-tagged data (CoNLL 'word<TAB>tag' lines, or JSONL with \"tokens\" and \"tags\"), but "
                        "the data holds whole texts; pass .conll --train/--eval files, or another model / --task")


def is_tagged_file(path: Path) -> bool:
    """True for a CoNLL file (by extension) or a JSONL file whose first record has "tokens"."""
    if path.suffix.lower() in TAGGED_EXTENSIONS:
        return True
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open("r", encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        return False
                    return isinstance(first, dict) and "tokens" in first
    return False


def read_tagged(path: str | Path, fmt: Literal["auto", "conll", "jsonl"] = "auto") -> list[Sentence]:
    """Sentences of a CoNLL or JSONL file (module docstring), tags as written. DataError (one line,
    naming the line) for a ragged line, a word with whitespace, a tag count that differs from the
    word count, or a file with no sentence."""
    path = Path(path)
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "conll"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start} is not valid UTF-8; re-save the file as UTF-8") from e
    sentences = _read_jsonl(path, text) if fmt == "jsonl" else _read_conll(path, text)
    if not sentences:
        raise DataError(f"{path}: no tagged sentences; expected CoNLL lines 'word<TAB>tag' with a blank line between "
                        'sentences, or JSONL {"tokens": [...], "tags": [...]}')
    return sentences


def _read_conll(path: Path, text: str) -> list[Sentence]:
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = ""
    columns = None
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if words:
                sentences.append((tuple(words), tuple(tags), start))
                words, tags = [], []
            continue
        cells = line.split("\t") if "\t" in line else line.split()
        cells = [c.strip() for c in cells]
        if cells[0] == "-DOCSTART-":
            continue
        if columns is None:
            columns = len(cells)
            if columns < 2:
                raise DataError(f"{path}:{n}: {line!r} has no tag; expected 'word<TAB>tag' (or 'word tag', or CoNLL-2003's "
                                "'word POS chunk tag') with a blank line between sentences")
        if len(cells) != columns or not all(cells):
            raise DataError(f"{path}:{n}: {len(cells)} column(s) ({line!r}) where the file's first line has {columns}; "
                            "every line needs the word first and the tag last, with one tab (or space) between columns")
        if not words:
            start = f"{path}:{n}"
        words.append(cells[0])
        tags.append(cells[-1])
    if words:
        sentences.append((tuple(words), tuple(tags), start))
    return sentences


def _read_jsonl(path: Path, text: str) -> list[Sentence]:
    sentences: list[Sentence] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg}); one object per line") from e
        if not isinstance(rec, dict) or "tokens" not in rec or not ({"tags", "ner_tags"} & set(rec)):
            raise DataError(f'{where}: expected an object with "tokens" and "tags" lists, got '
                            f"{list(rec) if isinstance(rec, dict) else type(rec).__name__}")
        words, tags = rec["tokens"], rec.get("tags", rec.get("ner_tags"))
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) or not words:
            raise DataError(f'{where}: "tokens" and "tags" must be non-empty lists of one length, got '
                            f"{len(words) if isinstance(words, list) else words!r} and {len(tags) if isinstance(tags, list) else tags!r}")
        if not all(isinstance(t, str) for t in tags):
            raise DataError(f'{where}: tags must be strings such as "B-person" (got {tags[:3]!r}); write the tag names, '
                            "not class ids")
        if not all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in words):
            bad = next(w for w in words if not (isinstance(w, str) and w and not any(c.isspace() for c in w)))
            raise DataError(f"{where}: token {bad!r} is empty or holds whitespace; a token is one word")
        sentences.append((tuple(words), tuple(tags), where))
    return sentences


def detect_scheme(sentences: Sequence[Sentence]) -> str:
    """"iobes", "iob1" or "bio" (module docstring); the tags are not checked here (`to_bio` does)."""
    starts_with_i = False
    b_after_other = False
    for _, tags, _ in sentences:
        prev_type = None
        for tag in tags:
            m = _TAG.match(tag)
            if m and m["prefix"] in "ESUL":
                return "iobes"
            kind = m["type"] if m else None
            if m and m["prefix"] == "I" and kind != prev_type:
                starts_with_i = True
            if m and m["prefix"] == "B" and kind != prev_type:
                b_after_other = True
            prev_type = kind
    return "iob1" if starts_with_i and not b_after_other else "bio"


def to_bio(tags: Sequence[str], scheme: str, *, where: str) -> tuple[str, ...]:
    """`tags` of one sentence (scheme "bio", "iob1" or "iobes") rewritten to BIO; DataError naming
    the offending word's line (CoNLL; `where` is the sentence's first line) for a tag that breaks
    the scheme or is not O / B-x / I-x (/ E-x / S-x)."""
    out: list[str] = []
    prev = "O"          # the BIO tag written for the previous word
    open_kind = None    # IOBES: the type of an entity begun (B-/I-) and not yet closed (E-)
    allowed = "BI" if scheme in ("bio", "iob1") else "BIESUL"
    for i, tag in enumerate(tags):
        line = _line(where, i)
        m = _TAG.match(tag)
        if tag != "O" and (not m or m["prefix"] not in allowed):
            raise DataError(f"{line}: tag {tag!r} is not O or {'/'.join(p + '-TYPE' for p in allowed)} "
                            f"({scheme.upper()} tags); fix the tag or pass --tag-scheme")
        prefix, kind = (m["prefix"], m["type"]) if m else ("O", None)
        inside = prev != "O" and prev[2:] == kind   # the previous word is in an entity of this type
        if scheme == "iobes":
            if (prefix in "IEL") != (open_kind == kind and open_kind is not None) or (prefix not in "IEL" and open_kind):
                raise DataError(f"{line}: tag {tag!r} follows {tags[i - 1] if i else 'the sentence start'!r}; in IOBES "
                                f"an entity is S-x alone or B-x (I-x ...) E-x (pass --tag-scheme bio if the file is BIO)")
            open_kind = kind if prefix in "BI" else None
            bio = "O" if prefix == "O" else f"B-{kind}" if prefix in "BSU" else f"I-{kind}"
        elif prefix == "O":
            bio = "O"
        elif scheme == "bio":
            if prefix == "I" and not inside:
                raise DataError(f"{line}: tag {tag!r} continues an entity but follows {prev!r}; BIO entities start "
                                f"with B-{kind} (if the file is IOB1 or IOBES, pass --tag-scheme iob1|iobes)")
            bio = tag
        else:   # iob1
            if prefix == "B" and not inside:
                raise DataError(f"{line}: tag {tag!r} follows {prev!r}; in IOB1, B- only separates two adjacent "
                                f"{kind} entities (pass --tag-scheme bio if the file is BIO)")
            bio = f"B-{kind}" if prefix == "B" or not inside else f"I-{kind}"
        out.append(bio)
        prev = bio
    if open_kind is not None:
        raise DataError(f"{_line(where, len(tags) - 1)}: the sentence ends inside a {open_kind} entity (no E-{open_kind} closes it); fix the "
                        "tags or pass --tag-scheme bio")
    return tuple(out)


def _line(where: str, i: int) -> str:
    """The CoNLL line of word `i` of a sentence starting at `where` ("file:line"); JSONL: where + word."""
    path, _, n = where.rpartition(":")
    if path and n.isdigit() and not path.endswith(".jsonl") and not path.endswith(".ndjson"):
        return f"{path}:{int(n) + i}"
    return f"{where} (word {i + 1})"


def tag_names(entity_types: Sequence[str]) -> tuple[str, ...]:
    """The BIO tag set of `entity_types`: "O", then B-/I- of each type in sorted order (the order of
    the Hugging Face `wnut_17` and `conll2003` datasets' tag ids for their types)."""
    return ("O",) + tuple(f"{p}-{t}" for t in sorted(set(entity_types)) for p in "BI")


def entity_types(tags: Sequence[str]) -> list[str]:
    """The entity types named by BIO tag names ("B-person" -> "person"), in order, without repeats."""
    return list(dict.fromkeys(t[2:] for t in tags if t != "O"))


def tagged_split(sentences: Sequence[Sentence], index: dict[str, int], *, scheme: str) -> Split:
    """A Split of `sentences` (BIO tag ids from `index`); `texts` are the words joined by spaces."""
    words = tuple(w for w, _, _ in sentences)
    tags = tuple(tuple(index[t] for t in to_bio(tg, scheme, where=where)) for _, tg, where in sentences)
    return Split(tuple(" ".join(w) for w in words), None, None, words=words, tags=tags)


def load_tagged(train: Path | None, eval_path: Path | None, *, fmt: str = "auto", scheme: str = "auto",
                name: str, eval_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """Train and eval splits of word-tagged files (eval None: a seeded `eval_fraction` of train).
    The tag set is the training data's entity types in BIO; DataError (one line naming the line)
    for an eval entity type never seen in training, or any problem `read_tagged` / `to_bio` names."""
    if scheme not in SCHEMES:
        raise DataError(f"tag scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    train_rows = read_tagged(train, fmt) if train is not None else []
    eval_rows = read_tagged(eval_path, fmt) if eval_path is not None else None
    if eval_rows is None:
        if len(train_rows) < 2:
            raise DataError(f"{train}: {len(train_rows)} sentence(s) cannot be split into train and eval; pass --eval")
        order = list(range(len(train_rows)))
        random.Random(seed).shuffle(order)
        held = set(order[:min(max(1, round(len(train_rows) * eval_fraction)), len(train_rows) - 1)])
        eval_rows = [r for i, r in enumerate(train_rows) if i in held]
        train_rows = [r for i, r in enumerate(train_rows) if i not in held]
    schemes = {src: (detect_scheme(rows) if scheme == "auto" else scheme)
               for src, rows in ((train, train_rows), (eval_path, eval_rows)) if rows}
    types = sorted({t for _, tg, _ in train_rows for t in (_TAG.match(x)["type"] for x in tg if _TAG.match(x))})
    if train_rows and not types:
        raise DataError(f"{train}: every tag is O; a tagger needs entities to learn (check the tag column: it is the last one)")
    if not train_rows:   # eval-only tagged data (a trained tagger with --text): the eval file's own types
        types = sorted({t for _, tg, _ in eval_rows for t in (_TAG.match(x)["type"] for x in tg if _TAG.match(x))})
    names = tag_names(types)
    index = {t: i for i, t in enumerate(names)}
    for _, tg, where in eval_rows:
        for i, x in enumerate(tg):
            m = _TAG.match(x)
            if m and m["type"] not in types:
                split = "" if eval_path is not None else f" (the eval split is a seeded {eval_fraction:.0%} of it)"
                raise DataError(f"{_line(where, i)}: eval tag {x!r}: entity type {m['type']!r} never occurs in the "
                                f"training data {train}{split} (types: {', '.join(types)}); fix the tag, add training "
                                f"examples{' or pass --eval' if split else ''}")
    train_split = tagged_split(train_rows, index, scheme=schemes.get(train, "bio"))
    eval_split = tagged_split(eval_rows, index, scheme=schemes.get(eval_path, schemes.get(train, "bio")))
    for split, which, src in ((train_split, "train", train), (eval_split, "eval", eval_path or f"{train} (seeded split)")):
        if len(split):
            n_ent = sum(sum(1 for t in tg if names[t].startswith("B-")) for tg in split.tags or ())
            log.info("%s %s: %d sentences, %d words, %d entities (%s, %s tags)", name, which, len(split),
                     sum(len(w) for w in split.words or ()), n_ent, src, schemes.get(src, "bio").upper())
    return TaskData(name, train_split, eval_split, names, False)


# ---------------------------------------------------------------- labels to sub-words, and back

def word_starts(words: Sequence[str]) -> list[int]:
    """Character offset of each word in " ".join(words)."""
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    return starts


def first_token_index(offsets: np.ndarray, special: np.ndarray, words: Sequence[str]) -> np.ndarray:
    """int64 [n_words]: the index of the first token whose offset span covers each word's first
    character in " ".join(words) (module docstring), -1 for a word cut off by truncation.
    `offsets` int [n_tokens, 2] from the tokenizer's offset mapping; `special` bool [n_tokens]."""
    out = np.full(len(words), -1, dtype=np.int64)
    w = 0
    starts = word_starts(words)
    for t, ((s, e), sp) in enumerate(zip(offsets.tolist(), special.tolist())):
        if sp or e <= s:
            continue
        while w < len(starts) and starts[w] < s:
            w += 1   # a word whose first character no token covers (cannot happen with offsets covering the text)
        if w < len(starts) and s <= starts[w] < e:
            out[w] = t
            w += 1
    return out


def token_labels(offsets: np.ndarray, special: np.ndarray, words: Sequence[str], tags: Sequence[int]) -> list[int]:
    """Per-token training labels: each word's tag on its first token, IGNORE (-100) elsewhere."""
    labels = [IGNORE] * len(offsets)
    for word, t in enumerate(first_token_index(offsets, special, words)):
        if t >= 0:
            labels[t] = int(tags[word])
    return labels


def word_predictions(token_logits: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Tag id per word from its first token's logits; 0 ("O") for a word truncated away."""
    pred = np.zeros(len(first), dtype=np.int64)
    ok = first >= 0
    pred[ok] = token_logits[first[ok]].argmax(-1)
    return pred


def entity_scores(gold: Sequence[Sequence[int]], pred: Sequence[Sequence[int]], names: Sequence[str]) -> dict:
    """Entity-level micro precision / recall / F1 and per-type scores (seqeval's default mode), word
    accuracy, sentence and gold-entity counts, from BIO tag ids per sentence."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    y = [[names[t] for t in s] for s in gold]
    p = [[names[t] for t in s] for s in pred]
    report = classification_report(y, p, output_dict=True, zero_division=0)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in report.items() if k not in ("micro avg", "macro avg", "weighted avg")}
    n_words = sum(len(s) for s in gold)
    return {"f1": float(f1_score(y, p, zero_division=0)), "entity_precision": float(precision_score(y, p, zero_division=0)),
            "recall": float(recall_score(y, p, zero_division=0)),
            "word_accuracy": float(sum(a == b for g, q in zip(gold, pred) for a, b in zip(g, q)) / max(1, n_words)),
            "n_eval": len(gold), "n_entities": sum(v["support"] for v in per_type.values()), "per_type": per_type}
