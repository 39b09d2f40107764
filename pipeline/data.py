"""Task data: load a labelled text (or text-pair) classification task into plain tuples.

One verb, ``load_task(cfg)``, reads TSV/CSV/JSONL/JSON files, the CLINC150 ``data_full.json`` layout, a
generated sentiment task, or (when ``datasets`` is installed) a Hugging Face dataset, and returns a
:class:`TaskData` whose labels are indices into ``label_names``. Every bad-input problem raises
:class:`DataError` with one line naming the file, the line and the fix. Standard library only.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

logger = logging.getLogger(__name__)

FORMATS = ("auto", "tsv", "csv", "jsonl", "json", "clinc150", "conll")
_EXTENSIONS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
_INT = re.compile(r"[+-]?\d+")
SYNTHETIC = "synthetic-sentiment"


class DataError(ValueError):
    """The task data or its configuration is unusable; the message says what to fix."""


@dataclass(frozen=True)
class DataConfig:
    """Where the task data comes from and which columns hold text, pair text and label."""

    train: str | None = None  # train file (TSV/CSV/JSONL/JSON) or CLINC150 data_full.json
    eval: str | None = None  # None -> a seeded split of train, so a single file is enough to start
    dataset: str | None = None  # "synthetic-sentiment" or a Hugging Face name ("glue/sst2", "glue:sst2")
    # auto: by extension; .conll/.bio/.iob and JSONL with "tokens" are word-tagged (token classification)
    format: Literal["auto", "tsv", "csv", "jsonl", "json", "clinc150", "conll"] = "auto"
    # None: "sentence" (GLUE's name for single-sentence tasks), else "text" (the usual JSONL/CSV and
    # `datasets` name), whichever the data has; the log says which was used.
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str = "label"
    eval_fraction: float = 0.1  # only when eval is None; 10% keeps most data for training
    seed: int = 0
    clinc_eval_split: Literal["val", "test"] = "val"  # val by default so test stays untouched while tuning
    name: str | None = None  # None -> the file's parent directory name, or the dataset name
    # Unlabelled task text (--text: files with one text per line, or folders of .txt files): DEP
    # counts it with the training text, and distillation learns the given model's outputs on it.
    # Alone (no train/dataset) it is enough for a model that is already trained (--no-finetune).
    texts: tuple[str, ...] = ()
    # Word-tagged data: the scheme of its tags (embslim.pipeline.tagged); auto tells BIO, IOB1 and
    # IOBES apart from the tags themselves, and every scheme is rewritten to BIO.
    tag_scheme: Literal["auto", "bio", "iob1", "iobes"] = "auto"

    def __post_init__(self) -> None:
        from embslim.pipeline.config_types import check_field_types

        check_field_types(self)
        object.__setattr__(self, "texts", tuple(str(t) for t in self.texts))
        if self.train is not None and self.dataset is not None:
            raise DataError(f"expected one of train (a file) or dataset (a name), got train={self.train!r} and "
                            f"dataset={self.dataset!r}; drop one of --train / --dataset")
        if self.train is None and self.dataset is None and not self.texts:
            raise DataError(f"no task data: pass --train FILE (labelled), --text FILE (unlabelled, for a model that is "
                            f"already trained) or --dataset {SYNTHETIC}")
        if self.eval is not None and self.dataset is not None:
            raise DataError(f"eval={self.eval!r} needs a train file or --text; drop --eval when using --dataset")
        if self.format not in FORMATS:
            raise DataError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise DataError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}; e.g. 0.1")
        if self.tag_scheme not in ("auto", "bio", "iob1", "iobes"):
            raise DataError(f"tag_scheme must be auto, bio, iob1 or iobes, got {self.tag_scheme!r}")
        if self.clinc_eval_split not in ("val", "test"):
            raise DataError(f"clinc_eval_split must be 'val' or 'test', got {self.clinc_eval_split!r}")
        columns = ([self.text_column] if self.text_column is not None else []) + [self.label_column] + (
            [self.text_pair_column] if self.text_pair_column else [])
        if not all(columns) or len(set(columns)) != len(columns):
            raise DataError(
                f"text, pair and label columns must be non-empty and distinct, got {columns}; "
                "check --text-column / --text-pair-column / --label-column"
            )


@dataclass(frozen=True)
class Split:
    """One split: texts, optional pair texts and label indices, all the same length. `labels` is
    None for unlabelled text (held-out --text lines); the run then takes the given model's
    predictions as the reference labels."""

    texts: tuple[str, ...]
    pairs: tuple[str, ...] | None
    labels: tuple[int, ...] | None
    # Token classification (embslim.pipeline.tagged): each text's words (the text is them joined by
    # single spaces) and their BIO tag ids; `labels` is None then.
    words: tuple[tuple[str, ...], ...] | None = None
    tags: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if ((self.labels is not None and len(self.texts) != len(self.labels))
                or (self.pairs is not None and len(self.pairs) != len(self.texts))
                or (self.words is not None and len(self.words) != len(self.texts))
                or (self.tags is not None and (self.words is None or [len(t) for t in self.tags] != [len(w) for w in self.words]))):
            raise DataError(
                f"a Split needs equally long texts/pairs/labels, got {len(self.texts)}/"
                f"{None if self.pairs is None else len(self.pairs)}/{None if self.labels is None else len(self.labels)}"
            )

    def with_labels(self, labels: Sequence[int]) -> "Split":
        return Split(self.texts, self.pairs, tuple(int(x) for x in labels))

    @property
    def labelled(self) -> bool:
        """True when the split has gold labels: sentence labels, or word tags."""
        return self.labels is not None or self.tags is not None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TaskData:
    """A loaded task: train and eval splits sharing one label vocabulary, plus unlabelled task text.

    `train` is empty and `label_names` is () when only unlabelled text was given (--text); `texts`
    is that text minus the held-out lines (which are `eval` when no eval file was given)."""

    name: str
    train: Split
    eval: Split
    label_names: tuple[str, ...]
    is_pair: bool
    texts: tuple[str, ...] = ()
    eval_labels_source: str = "gold"   # "gold", or "model" once the given model's predictions fill them in

    def summary(self) -> dict[str, Any]:
        """JSON-able overview for reports: sizes and per-split label counts by name."""

        def counts(split: Split) -> dict[str, int] | None:
            if split.labels is None and split.tags is None:
                return None
            c = Counter(split.labels if split.tags is None else (t for tags in split.tags for t in tags))
            return {name: c.get(i, 0) for i, name in enumerate(self.label_names)}

        return {
            "name": self.name, "is_pair": self.is_pair, "n_train": len(self.train), "n_eval": len(self.eval),
            "n_texts": len(self.texts), "n_labels": len(self.label_names), "label_names": list(self.label_names),
            "label_counts": {"train": counts(self.train), "eval": counts(self.eval)},
            "eval_labels": self.eval_labels_source,
        }

    @property
    def corpus(self) -> tuple[str, ...]:
        """Every text the task may learn from, unlabelled: training texts (first of each pair) + --text."""
        return self.train.texts + self.texts


# A BIO / IOBES tag or "O", as a CoNLL file's last column holds it (hints for files read the wrong way).
_TAG = re.compile(r"^(O|[BIESL]-\S+)$")

# A raw row before labels are indexed: (text, pair or None, label string, "file:line" for messages).
_Row = tuple[str, str | None, str, str]


def load_task(cfg: DataConfig, *, data_root: str | None = None) -> TaskData:
    """Load the task ``cfg`` describes; relative paths are tried under ``data_root`` first, then the cwd."""
    task = _load_labelled(cfg, data_root=data_root) if cfg.train is not None or cfg.dataset is not None else None
    if not cfg.texts:
        assert task is not None  # guaranteed by DataConfig
        return task
    from embslim.pipeline.texts import read_texts

    texts = read_texts([str(_resolve(p, data_root, folders=True)) for p in cfg.texts])
    if task is not None:
        return replace(task, texts=tuple(texts))
    # Unlabelled text only: hold some lines out to measure the OOV rate and the agreement with the
    # given model, unless a (labelled) eval file is given.
    if cfg.eval is not None:
        eval_path = _resolve(cfg.eval, data_root)
        if _is_tagged(eval_path, cfg.format):   # a trained tagger, judged on a tagged eval file
            return replace(_load_tagged(cfg, None, data_root=data_root, name=cfg.name or eval_path.resolve().parent.name
                                        or "task"), texts=tuple(texts))
        eval_rows = _read_rows(eval_path, _detect(eval_path, cfg.format), cfg)
        labelled = _build(cfg.name or eval_path.resolve().parent.name or "task", eval_rows, eval_rows,
                          train_src=str(eval_path), eval_src=str(eval_path), cfg=cfg, training=False)
        return TaskData(labelled.name, Split((), None, ()), labelled.eval, labelled.label_names, labelled.is_pair,
                        texts=tuple(texts))
    if len(texts) < 2:
        raise DataError(f"--text gave {len(texts)} line(s); at least 2 are needed to hold some out for evaluation, "
                        "or pass --eval FILE")
    order = list(range(len(texts)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = min(max(1, round(len(texts) * cfg.eval_fraction)), len(texts) - 1)
    held = set(order[:n_eval])
    logger.info("--text: %d lines; %d held out for evaluation (seeded %.0f%%)", len(texts), n_eval, 100 * cfg.eval_fraction)
    return TaskData(cfg.name or "texts", Split((), None, ()),
                    Split(tuple(texts[i] for i in sorted(held)), None, None), (), False,
                    texts=tuple(t for i, t in enumerate(texts) if i not in held))


def match_labels(task: TaskData, model_labels: Sequence[str], *, model: str, training: bool) -> TaskData:
    """`task` with its label indices re-pointed at `model_labels` (a kept head's id2label order).

    Labels are matched by name, never by position in the file: a data label equals a model label
    when their strings are equal (integer-looking names match as strings, "1" = "1"). Data whose
    labels are all integers that are not the model's names (GLUE's 0/1 for a model with
    negative/positive) holds class ids, as `datasets` and transformers store labels: integer i is
    the model's id i (a model saved without names, LABEL_0, LABEL_1, ..., is the same case). Every
    data label must be one of the model's; when `training`, every model label must also occur in
    the data (a head trained on no example of a class would be ruined for it). Raises DataError
    listing both sets otherwise."""
    model_labels = [str(x) for x in model_labels]
    index = {name: i for i, name in enumerate(model_labels)}
    data_labels = set(task.label_names)
    if (not data_labels <= set(index) and data_labels and all(_INT.fullmatch(n) for n in data_labels)
            and all(0 <= int(n) < len(model_labels) for n in data_labels)):
        index = {str(i): i for i in range(len(model_labels))}
        logger.info("data labels %s are class ids of the model: %s", sorted(data_labels, key=int),
                    ", ".join(f"{i} = {name}" for i, name in enumerate(model_labels)))
    used = set()
    for split in (task.train, task.eval):
        if split.labels is not None:
            used |= {task.label_names[i] for i in split.labels}
        for tags in split.tags or ():
            used |= {task.label_names[i] for i in tags}
    unknown = sorted(used - set(index))
    # A tagger's I- tags of a rare type may be absent from a small training set without harm; only
    # sentence classifiers must see every class they keep.
    missing = sorted(set(index) - used) if training and task.train.labels else []
    if unknown or missing:
        problem = (f"data label(s) {unknown} are not among the model's" if unknown
                   else f"model label(s) {missing} never occur in the training data")
        raise DataError(f"{problem}: model {model!r} has labels {model_labels}, the data has {sorted(used)}; "
                        "rename the data's labels to the model's" + (", or pass --new-head to train a fresh head for the "
                                                                      "data's labels" if training else ""))
    order = [index[name] for name in task.label_names]

    def move(split: Split) -> Split:
        if split.tags is not None:
            return replace(split, tags=tuple(tuple(order[i] for i in tags) for tags in split.tags))
        return split if split.labels is None else split.with_labels([order[i] for i in split.labels])

    return replace(task, train=move(task.train), eval=move(task.eval), label_names=tuple(model_labels))


def _load_labelled(cfg: DataConfig, *, data_root: str | None) -> TaskData:
    if cfg.dataset is not None:
        if cfg.dataset == SYNTHETIC:
            task = synthetic_sentiment(seed=cfg.seed)
            return task if cfg.name is None else TaskData(cfg.name, task.train, task.eval, task.label_names, False)
        return _load_hf(cfg, data_root=data_root)
    assert cfg.train is not None  # guaranteed by DataConfig
    train_path = _resolve(cfg.train, data_root)
    name = cfg.name or train_path.resolve().parent.name or "task"
    if _is_tagged(train_path, cfg.format):
        return _load_tagged(cfg, train_path, data_root=data_root, name=name)
    train_fmt = _detect(train_path, cfg.format)
    if train_fmt == "clinc150":
        if cfg.eval is not None:
            raise DataError(f"{train_path} is a CLINC150 file with its own eval splits; drop --eval and use "
                            "--clinc-eval-split val|test")
        train_rows, eval_rows = _read_clinc(train_path, cfg.clinc_eval_split)
        eval_src = f"{train_path} ({cfg.clinc_eval_split}+oos_{cfg.clinc_eval_split})"
    else:
        train_rows = _read_rows(train_path, train_fmt, cfg)
        if cfg.eval is not None:
            eval_path = _resolve(cfg.eval, data_root)
            if _is_tagged(eval_path, cfg.format):
                raise DataError(f"{eval_path} is word-tagged data (CoNLL, or JSONL with \"tokens\"/\"tags\") but the "
                                f"training data {train_path} is not; a tagger needs a tagged --train file too "
                                "(or --format conll), a classifier a labelled --eval file")
            eval_fmt = _detect(eval_path, cfg.format)
            if eval_fmt == "clinc150":
                raise DataError(f"{eval_path} is a CLINC150 file; pass it as --train, not --eval")
            eval_rows, eval_src = _read_rows(eval_path, eval_fmt, cfg), str(eval_path)
        else:
            train_rows, eval_rows = _seeded_split(train_rows, cfg.eval_fraction, seed=cfg.seed, source=train_path)
            eval_src = f"{train_path} (seeded {cfg.eval_fraction:.0%} split)"
    return _build(name, train_rows, eval_rows, train_src=str(train_path), eval_src=eval_src, cfg=cfg)


def _is_tagged(path: Path, fmt: str) -> bool:
    from embslim.pipeline.tagged import is_tagged_file

    return fmt == "conll" or (fmt in ("auto", "jsonl") and is_tagged_file(path))


def _load_tagged(cfg: DataConfig, train: Path | None, *, data_root: str | None, name: str) -> TaskData:
    from embslim.pipeline.tagged import load_tagged

    eval_path = _resolve(cfg.eval, data_root) if cfg.eval is not None else None
    if eval_path is not None and not _is_tagged(eval_path, cfg.format):
        raise DataError(f"{eval_path} is not word-tagged data (CoNLL, or JSONL with \"tokens\"/\"tags\") but the "
                        f"training data {train} is; pass a tagged --eval file")
    fmt = "conll" if cfg.format == "conll" else "auto"
    return load_tagged(train, eval_path, fmt=fmt, scheme=cfg.tag_scheme, name=name, eval_fraction=cfg.eval_fraction,
                       seed=cfg.seed)


def subsample(split: Split, n: int | None, *, seed: int) -> Split:
    """Seeded random subset of ``n`` rows in original order; ``None`` or ``n >= len(split)`` returns it as is."""
    if n is None or n >= len(split):
        return split
    if n <= 0:
        raise DataError(f"subsample size must be a positive int or None, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(split)), n))
    pairs = None if split.pairs is None else tuple(split.pairs[i] for i in keep)
    labels = None if split.labels is None else tuple(split.labels[i] for i in keep)
    words = None if split.words is None else tuple(split.words[i] for i in keep)
    tags = None if split.tags is None else tuple(split.tags[i] for i in keep)
    return Split(tuple(split.texts[i] for i in keep), pairs, labels, words=words, tags=tags)


_OPENERS = ("the movie was|this film is|i found the plot|honestly the acting was|the soundtrack felt|overall the "
            "story is|my friends said it was|the ending was|the dialogue sounded|for me the pacing was").split("|")
_POSITIVE = "good great wonderful delightful brilliant moving charming excellent enjoyable fantastic clever".split()
_NEGATIVE = "bad awful boring dull terrible clumsy tedious disappointing painful weak forgettable annoying".split()
_INTENSIFIERS = ("", "", "really ", "very ", "truly ")
_CLOSERS = ("", "", ".", " , i think.", " from start to finish.", " in every scene.")


def synthetic_sentiment(n_train: int = 2000, n_eval: int = 400, *, seed: int = 0) -> TaskData:
    """Generated English sentiment task (templates x sentiment words, ~20% negated); deterministic per seed."""
    if n_train < 1 or n_eval < 1:
        raise DataError(f"synthetic_sentiment needs n_train >= 1 and n_eval >= 1, got {n_train} and {n_eval}")
    rng = random.Random(seed)

    def make(n: int) -> Split:
        texts, labels = [], []
        for _ in range(n):
            positive = rng.random() < 0.5
            negated = rng.random() < 0.2  # "not good" is negative: the model must read more than one word
            word = rng.choice(_POSITIVE if positive != negated else _NEGATIVE)
            opener, closer = rng.choice(_OPENERS), rng.choice(_CLOSERS)
            middle = "not " if negated else rng.choice(_INTENSIFIERS)
            texts.append(f"{opener} {middle}{word}{closer}")
            labels.append(int(positive))
        return Split(tuple(texts), None, tuple(labels))

    return TaskData(SYNTHETIC, make(n_train), make(n_eval), ("negative", "positive"), False)


def _resolve(path: str, data_root: str | None, *, folders: bool = False) -> Path:
    p = Path(path).expanduser()
    tried = [p]
    ok = (lambda q: q.exists()) if folders else (lambda q: q.is_file())
    if data_root is not None and not p.is_absolute():
        rooted = Path(data_root).expanduser() / p
        if ok(rooted):
            return rooted
        tried.insert(0, rooted)
    if not ok(p):
        raise DataError(f"data file not found: {' or '.join(map(str, tried))}; check the path (or --data-root)")
    return p


def _detect(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = _EXTENSIONS.get(path.suffix.lower())
    if ext is None and _is_tagged(path, "auto"):
        return "conll"
    if ext is None:
        raise DataError(f"cannot tell the format of {path} from its extension {path.suffix!r}; expected one of "
                        f"{', '.join(sorted(_EXTENSIONS))} or pass --format {'|'.join(FORMATS[1:])}")
    if ext == "json":
        top = _load_json(path)
        if isinstance(top, dict) and "train" in top and "oos_train" in top:
            return "clinc150"
    return ext


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: byte 0x{data[e.start]:02x} is not valid UTF-8; re-save the file as "
                        "UTF-8") from e


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_decode(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the file or pass the right --format") from e


def _read_rows(path: Path, fmt: str, cfg: DataConfig) -> list[_Row]:
    if fmt in ("tsv", "csv"):
        records: Iterable[tuple[str, dict[str, Any]]] = _delimited(path, fmt)
    elif fmt == "jsonl":
        records = _jsonl(path)
    else:
        top = _load_json(path)
        if not isinstance(top, list):
            raise DataError(f"{path}: expected a JSON list of objects, got a {type(top).__name__}; use JSONL, a "
                            "list of {column: value} objects, or --format clinc150 for CLINC150 data_full.json")
        records = ((f"{path} record {i}", r) for i, r in enumerate(top, start=1))
    records = list(records)
    cfg = _with_text_column(cfg, records[0][1] if records else {}, str(path))
    rows = [_to_row(rec, where, cfg) for where, rec in records]
    if not rows:
        raise DataError(f"{path}: no data rows; expected at least one labelled example")
    return rows


def _delimited(path: Path, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    text = _decode(path)
    if fmt == "tsv":  # GLUE TSVs hold bare '"' characters, so no quoting at all
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty; expected a header line and data rows")
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} {fmt.upper()} fields like the "
                                f"header, got {len(row)}; fix the row (a stray tab, comma or quote?)")
            yield f"{path}:{reader.line_num}", dict(zip(header, row))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({e}); fix the quoting") from e


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for n, line in enumerate(_decode(path).splitlines(), start=1):
        if line.strip():
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); expected one object per line") from e


_TEXT_COLUMNS = ("sentence", "text")   # tried in this order when --text-column is not given


def _with_text_column(cfg: DataConfig, first: Any, source: str) -> DataConfig:
    """`cfg` with its text column settled: the one given, else the first of _TEXT_COLUMNS the data has."""
    if cfg.text_column is not None:
        return cfg
    found = next((c for c in _TEXT_COLUMNS if isinstance(first, dict) and c in first), _TEXT_COLUMNS[0])
    if isinstance(first, dict) and found in first:
        logger.info("%s: text column %r (pass --text-column to choose another)", source, found)
    return replace(cfg, text_column=found)


def _to_row(rec: Any, where: str, cfg: DataConfig) -> _Row:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object of columns, got a {type(rec).__name__}")
    flags = (("--text-column", cfg.text_column), ("--text-pair-column", cfg.text_pair_column),
             ("--label-column", cfg.label_column))
    for flag, column in flags:
        if column is not None and column not in rec:
            hint = ""
            if any(_TAG.match(str(c)) for c in list(rec)[-1:]):   # a header row that ends in a tag: word-tagged lines
                hint = " (for word-tagged CoNLL lines, 'word<TAB>tag', pass --format conll)"
            raise DataError(f"{where}: no column {column!r}; columns are {list(rec)}; set {flag}{hint}")
    text = _text(rec[cfg.text_column], where, cfg.text_column)
    pair = None if cfg.text_pair_column is None else _text(rec[cfg.text_pair_column], where, cfg.text_pair_column)
    label = rec[cfg.label_column]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise DataError(f"{where}: label must be an int or a string, got {label!r}; check --label-column")
    label = str(label).strip()
    if not label:
        raise DataError(f"{where}: empty label in column {cfg.label_column!r}; fill it in or drop the row")
    return text, pair, label, where


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: column {column!r} must be non-empty text, got {value!r}; fix or drop the row")
    return value.strip()


def _read_clinc(path: Path, eval_split: str) -> tuple[list[_Row], list[_Row]]:
    top = _load_json(path)
    if not isinstance(top, dict):
        raise DataError(f"{path}: expected the CLINC150 object {{'train': [...], 'oos_train': [...], ...}}, got a "
                        f"{type(top).__name__}; use --format json or jsonl for record lists")

    def rows(key: str) -> list[_Row]:
        if not isinstance(top.get(key), list) or not top[key]:
            raise DataError(f"{path}: CLINC150 split {key!r} is missing or empty; expected a list of [text, intent]")
        out: list[_Row] = []
        for i, item in enumerate(top[key], start=1):
            where = f"{path} {key}[{i}]"
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise DataError(f"{where}: expected [text, intent] strings, got {item!r}")
            out.append((_text(item[0], where, "text"), None, _text(item[1], where, "intent"), where))
        return out

    return rows("train") + rows("oos_train"), rows(eval_split) + rows(f"oos_{eval_split}")


def _seeded_split(rows: list[_Row], fraction: float, *, seed: int, source: Path) -> tuple[list[_Row], list[_Row]]:
    if len(rows) < 2:
        raise DataError(f"{source}: {len(rows)} row(s) cannot be split into train and eval; add data or pass --eval")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    eval_idx = set(order[:n_eval])
    return ([r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx])


def _build(name: str, train_rows: list[_Row], eval_rows: list[_Row], *, train_src: str, eval_src: str,
           cfg: DataConfig, training: bool = True) -> TaskData:
    if not eval_rows:
        raise DataError(f"{eval_src}: eval split has no rows; expected at least one labelled example")
    _check_labels(train_rows, eval_rows, train_src=train_src, cfg=cfg, training=training)
    raw = {r[2] for r in train_rows}
    as_int = all(_INT.fullmatch(x) for x in raw)
    key = (lambda s: int(s) if _INT.fullmatch(s) else s) if as_int else (lambda s: s)
    names = tuple(str(k) for k in sorted({key(x) for x in raw}))
    index = {k: i for i, k in enumerate(sorted({key(x) for x in raw}))}
    unseen = sorted({r[2] for r in eval_rows if key(r[2]) not in index})
    if unseen:
        raise DataError(f"{eval_src}: eval label(s) {unseen[:5]}{' ...' if len(unseen) > 5 else ''} never occur in "
                        f"training data {train_src}; fix the data or check --label-column ({cfg.label_column!r})")
    is_pair = train_rows[0][1] is not None

    def split(rows: list[_Row], which: str, src: str) -> Split:
        s = Split(tuple(r[0] for r in rows), tuple(r[1] or "" for r in rows) if is_pair else None,
                  tuple(index[key(r[2])] for r in rows))
        if training or which == "eval":   # eval-only data (--text + --eval) has no training split to speak of
            logger.info("%s %s: %d rows, %d labels (%s)", name, which, len(s), len(set(s.labels)), src)
        return s

    return TaskData(name, split(train_rows, "train", train_src), split(eval_rows, "eval", eval_src), names, is_pair)


# Label cells that mean "no label" in exported spreadsheets and dataframes, not a class of their own.
_MISSING_LABELS = {"nan", "none", "null", "na", "n/a", "<na>", "nat"}


def _rows_text(rows: list[str]) -> str:
    return ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _check_labels(train_rows: list[_Row], eval_rows: list[_Row], *, train_src: str, cfg: DataConfig,
                  training: bool = True) -> None:
    """Refuse label sets that cannot train a classifier: missing labels (NaN, None, null, ...) and,
    when the rows train (`training`), a single class (a one-class model is 100% accurate and useless)."""
    missing = [r for r in train_rows + eval_rows if r[2].strip().lower() in _MISSING_LABELS]
    if missing:
        values = ", ".join(sorted({repr(r[2]) for r in missing}))
        raise DataError(f"{len(missing)} row(s) have a missing label ({values}) in column {cfg.label_column!r}: "
                        f"{_rows_text([r[3] for r in missing])}; fill in the labels or drop those rows")
    classes = {r[2] for r in train_rows}
    if training and len(classes) < 2:
        raise DataError(f"{train_src}: every training row has the label {next(iter(classes))!r}; a classifier needs at "
                        f"least two classes: add examples of the other classes or check --label-column ({cfg.label_column!r})")


def _load_hf(cfg: DataConfig, *, data_root: str | None = None) -> TaskData:
    """A Hugging Face dataset: a folder written by `save_to_disk` (a Dataset or a DatasetDict; a
    relative path is tried under `data_root`, then the cwd), another local folder of data files,
    or a hub name ("glue/sst2", "glue:sst2") when the hub is reachable. `ClassLabel` columns give
    their names as the labels."""
    name = cfg.dataset or ""
    try:
        import datasets  # optional: only this path needs it
    except ImportError as e:
        raise DataError(f"dataset {name!r} is not built in (known: {SYNTHETIC}); loading it from Hugging Face needs "
                        "`pip install datasets`, or pass --train/--eval files") from e
    local = _local_dataset(name, data_root)
    try:
        if local is not None and _is_saved_dataset(local):
            ds = datasets.load_from_disk(str(local))
        elif local is not None:
            ds = datasets.load_dataset(str(local))
        else:
            from embslim.pipeline.model import hub_unreachable

            reason = None if os.environ.get("HF_DATASETS_OFFLINE") == "1" else hub_unreachable()
            if reason:
                raise DataError(f"dataset {name!r} is not a local folder (under --data-root or here), and {reason}; "
                                "pass the folder written by save_to_disk, or --train/--eval files")
            path, sep, config = name.partition(":")
            if not sep and path.count("/") == 1:  # "glue/sst2" -> ("glue", "sst2")
                path, config = path.split("/")
            ds = datasets.load_dataset(path, config or None)
    except DataError:
        raise
    except Exception as e:  # network, unknown name, missing config, damaged folder: one user-facing problem
        where = f"local folder {local}" if local is not None else "the Hugging Face hub"
        raise DataError(f"could not load dataset {name!r} from {where} ({type(e).__name__}: {str(e)[:200]}); check "
                        "the name (e.g. glue:sst2) or the folder (one written by save_to_disk, or data files)") from e
    if isinstance(ds, datasets.Dataset):   # save_to_disk of one split: it is the training data
        ds = datasets.DatasetDict({"train": ds})
    if "train" not in ds:
        raise DataError(f"dataset {name!r} has no 'train' split, only {list(ds)}; rename the training split to 'train'")
    label_names = _class_label_names(ds["train"].features.get(cfg.label_column))
    first = next(iter(ds["train"]), {})
    cfg = _with_text_column(cfg, first, f"{name}[train]")

    def rows(split: str) -> list[_Row]:
        out = []
        for i, rec in enumerate(ds[split], start=1):
            where = f"{name}[{split}] row {i}"
            if label_names is not None and cfg.label_column in rec:
                rec = dict(rec)
                value = rec[cfg.label_column]
                if not (isinstance(value, int) and 0 <= value < len(label_names)):
                    raise DataError(f"{where}: label {value!r} is not a class of {cfg.label_column!r} "
                                    f"({len(label_names)} names: {label_names[:5]}...); drop unlabelled rows (-1) "
                                    "or use a split that has labels")
                rec[cfg.label_column] = label_names[value]
            out.append(_to_row(rec, where, cfg))
        return out

    train_rows = rows("train")
    eval_name = next((s for s in ("validation", "test") if s in ds), None)
    if eval_name is None:
        train_rows, eval_rows = _seeded_split(train_rows, cfg.eval_fraction, seed=cfg.seed, source=Path(name))
        eval_src = f"{name}[train] (seeded {cfg.eval_fraction:.0%} split)"
    else:
        eval_rows, eval_src = rows(eval_name), f"{name}[{eval_name}]"
    task_name = cfg.name or (local.name if local is not None else re.split(r"[/:]", name)[-1])
    return _build(task_name, train_rows, eval_rows, train_src=f"{name}[train]", eval_src=eval_src, cfg=cfg)


def _local_dataset(name: str, data_root: str | None) -> Path | None:
    """The local folder `name` names (under data_root first, then the cwd), or None for a hub name."""
    for base in ([Path(data_root).expanduser()] if data_root else []) + [Path.cwd()]:
        p = Path(name).expanduser()
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            return p
    return None


def _is_saved_dataset(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _class_label_names(feature: Any) -> list[str] | None:
    """A `datasets.ClassLabel`'s names (read by attribute, so `datasets` need not be imported here)."""
    names = getattr(feature, "names", None)
    return [str(n) for n in names] if type(feature).__name__ == "ClassLabel" and names else None
