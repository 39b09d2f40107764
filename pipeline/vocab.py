"""DEP: Dynamic Embedding Pruning (arXiv 2309.08708), the vocabulary stage.

Count the token ids that the TRAINING text uses (plus any --keep-text corpora), keep those rows
and the special tokens, and build `remap[original_id] -> new_row`. The exported graph applies
that remap itself, so apps keep the stock tokenizer.

Two choices differ from the paper's reference code, both measured on SST-2 (DESIGN.md):
- only training text is counted (counting the eval split leaks it into the model);
- an id the training text never uses falls back to its nearest kept id (L2 distance of the
  pretrained rows; cosine on request) rather than to [UNK], at no run-time cost: it is the same
  remap table. Measured on SST-2 (8k fine-tune): L2 -0.34 pt, cosine -0.69, [UNK] -1.15.
Kept ids get new rows by descending training frequency, so a row number is a frequency rank
(what PETE's normalised id assumes).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_UNUSED = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")


class VocabError(ValueError):
    """A pruning option or input is wrong."""


@dataclass(frozen=True)
class PruneConfig:
    # nearest: unseen ids use the nearest kept row (SST-2, 8k fine-tune: -0.34 pt vs -1.15 for unk).
    fallback: Literal["nearest", "unk"] = "nearest"
    # How "nearest" is measured on the pretrained rows. On that SST-2 model L2 gave 83.49% dev and
    # cosine 83.14% (unpruned 83.83%): 3 sentences of 872 apart, so L2 is the default, not a law.
    metric: Literal["l2", "cosine"] = "l2"
    # Extra rows beyond the training vocabulary: the N first non-[unused] ids of the vocabulary,
    # which BERT WordPiece and BPE vocabularies order roughly by corpus frequency.
    keep_top: int = 0
    # Text files (one text per line) whose tokens are kept too, e.g. app-specific phrases.
    keep_text: tuple[str, ...] = field(default_factory=tuple)
    # Cut the position table to the bundle's max_length rows too: the runtime truncates every input
    # there, so the other rows are never read (MiniLM at max_length 64: 448 of 512 rows, 0.17 MB int8).
    # Off by default: the bundle then refuses nothing a longer max_length would have read.
    trim_positions: bool = False

    def __post_init__(self) -> None:
        from embslim.pipeline.config_types import check_field_types

        check_field_types(self)
        if self.fallback not in ("nearest", "unk"):
            raise VocabError(f"fallback must be 'nearest' or 'unk', got {self.fallback!r}")
        if self.metric not in ("l2", "cosine"):
            raise VocabError(f"metric must be 'l2' or 'cosine', got {self.metric!r}")
        if self.keep_top < 0:
            raise VocabError(f"keep_top must be >= 0, got {self.keep_top}")
        object.__setattr__(self, "keep_text", tuple(str(p) for p in self.keep_text))


@dataclass(frozen=True)
class PrunedVocab:
    kept_ids: np.ndarray     # int64 [V'], original id of each new row, most frequent first
    counts: np.ndarray       # int64 [V'], training count of each kept id
    remap: np.ndarray        # int32 [V], original id -> new row (kept or fallback)
    fallback: str
    n_train_ids: int         # distinct ids used by the training text (before specials/keep-top)

    @property
    def original_size(self) -> int:
        return int(self.remap.shape[0])

    @property
    def size(self) -> int:
        return int(self.kept_ids.shape[0])

    def stats(self, hidden_size: int) -> dict:
        return {
            "original_rows": self.original_size,
            "kept_rows": self.size,
            "kept_fraction": self.size / self.original_size,
            "train_distinct_ids": self.n_train_ids,
            "embedding_params_before": self.original_size * hidden_size,
            "embedding_params_after": self.size * hidden_size,
            "fallback": self.fallback,
        }

    def save(self, folder: str | Path) -> None:
        """vocab.json: plain data, readable and diffable (no pickles)."""
        from embslim.pipeline.bundle import write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"fallback": self.fallback, "n_train_ids": self.n_train_ids,
                "kept_ids": self.kept_ids.tolist(), "counts": self.counts.tolist(), "remap": self.remap.tolist()}
        write_json_atomic(folder / "vocab.json", data)

    @classmethod
    def load(cls, folder: str | Path) -> "PrunedVocab":
        path = Path(folder) / "vocab.json"
        if not path.is_file():
            raise VocabError(f"{path} not found; run `embslim prune` first or pass the folder it wrote")
        data = json.loads(path.read_text())
        return cls(kept_ids=np.asarray(data["kept_ids"], dtype=np.int64), counts=np.asarray(data["counts"], dtype=np.int64),
                   remap=np.asarray(data["remap"], dtype=np.int32), fallback=data["fallback"], n_train_ids=int(data["n_train_ids"]))


def token_ids(tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], pairs: Sequence[str] | None = None,
              *, batch_size: int = 4096) -> Iterable[list[int]]:
    """Token ids of each example as the model sees them: special tokens added, no padding, no truncation."""
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        pair_chunk = list(pairs[start:start + batch_size]) if pairs is not None else None
        enc = tokenizer(chunk, pair_chunk, add_special_tokens=True, truncation=False, padding=False)
        yield from enc["input_ids"]


def count_ids(tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for ids in token_ids(tokenizer, texts, pairs):
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
    return counts


def _read_keep_text(paths: Sequence[str]) -> list[str]:
    from embslim.pipeline.texts import TextError, read_texts

    try:
        return read_texts(paths, option="--keep-text")
    except TextError as e:
        raise VocabError(str(e)) from e


def _nearest_kept(weight: np.ndarray, kept: np.ndarray, targets: np.ndarray, *, metric: str,
                  chunk: int = 4096) -> np.ndarray:
    """For each target id, the kept id whose pretrained row is nearest (L2 distance or cosine)."""
    w = weight.astype(np.float32, copy=False)
    if metric == "cosine":
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    cand = w[kept]
    cand_sq = (cand * cand).sum(axis=1) if metric == "l2" else 0.0
    out = np.empty(len(targets), dtype=np.int64)
    for s in range(0, len(targets), chunk):
        # argmax of 2<x, c> - |c|^2 is the argmin of |x - c|^2; for unit rows it is the max cosine
        scores = 2 * (w[targets[s:s + chunk]] @ cand.T) - cand_sq
        out[s:s + chunk] = kept[np.argmax(scores, axis=1)]
    return out


def prune(tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], pairs: Sequence[str] | None = None,
          *, weight: np.ndarray, cfg: PruneConfig = PruneConfig(), extra_texts: Sequence[str] = ()) -> PrunedVocab:
    """Build the DEP vocabulary from the task's text: the training examples (`texts`, `pairs`) and
    unlabelled task text (`extra_texts`, --text), counted alike. `weight` is the pretrained [V, d]
    embedding matrix. DEP needs no labels: the ids the task's text uses are what it keeps."""
    vocab_size = len(tokenizer)
    if weight.shape[0] < vocab_size:
        raise VocabError(f"embedding has {weight.shape[0]} rows but the tokenizer has {vocab_size} ids; "
                         "the model and tokenizer do not belong together")
    if len(texts) == 0 and len(extra_texts) == 0:
        raise VocabError("no text to count: the training split is empty and no --text was given")
    counts = count_ids(tokenizer, texts, pairs) if len(texts) else np.zeros(len(tokenizer), dtype=np.int64)
    if len(extra_texts):
        counts += count_ids(tokenizer, extra_texts)
    n_train_ids = int((counts > 0).sum())
    if cfg.keep_text:
        counts += count_ids(tokenizer, _read_keep_text(cfg.keep_text))
    used = counts > 0
    used[tokenizer.all_special_ids] = True
    if cfg.keep_top:
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        general = [i for i, t in enumerate(tokens) if not _UNUSED.match(t or "")]
        used[general[:cfg.keep_top]] = True
    kept = np.flatnonzero(used)
    # Descending count; ties by original id (stable), so new row = frequency rank.
    kept = kept[np.lexsort((kept, -counts[kept]))]

    remap = np.full(weight.shape[0], -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    unseen = np.flatnonzero(remap < 0)
    if len(unseen) == 0:
        pass
    elif cfg.fallback == "unk":
        if tokenizer.unk_token_id is None:
            raise VocabError("fallback 'unk' needs a tokenizer with an unknown token; use --fallback nearest")
        remap[unseen] = remap[tokenizer.unk_token_id]
    else:
        specials = set(tokenizer.all_special_ids)
        candidates = np.asarray([i for i in kept if i not in specials], dtype=np.int64)
        remap[unseen] = remap[_nearest_kept(weight, candidates, unseen, metric=cfg.metric)]
    log.info("DEP: kept %d of %d rows (%.1f%%; %d used by the task's text), fallback=%s",
             len(kept), weight.shape[0], 100 * len(kept) / weight.shape[0], n_train_ids,
             f"nearest ({cfg.metric})" if cfg.fallback == "nearest" else cfg.fallback)
    return PrunedVocab(kept_ids=kept, counts=counts[kept], remap=remap.astype(np.int32),
                       fallback=cfg.fallback, n_train_ids=n_train_ids)


def oov_stats(vocab: PrunedVocab, tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str],
              pairs: Sequence[str] | None = None) -> dict:
    """Share of eval tokens outside the kept set (no padding is ever counted: nothing is padded here),
    and of eval tokens the task's text never used (`eval_unseen_*`: the same unless rows were kept
    without being used, e.g. by keep_top; those tokens read a kept but untrained, or compressed, row)."""
    kept = np.zeros(vocab.original_size, dtype=bool)
    kept[vocab.kept_ids] = True
    seen = np.zeros(vocab.original_size, dtype=bool)
    seen[vocab.kept_ids[np.asarray(vocab.counts) > 0]] = True
    n_tokens = n_oov = n_examples = n_unseen = n_unseen_examples = 0
    for ids in token_ids(tokenizer, texts, pairs):
        ids = np.asarray(ids)
        miss = int((~kept[ids]).sum())
        unseen = int((~seen[ids]).sum())
        n_tokens += len(ids)
        n_oov += miss
        n_examples += miss > 0
        n_unseen += unseen
        n_unseen_examples += unseen > 0
    return {"eval_tokens": n_tokens, "eval_oov_tokens": n_oov, "eval_oov_rate": n_oov / max(n_tokens, 1),
            "eval_examples_with_oov": n_examples, "eval_examples": len(texts),
            "eval_unseen_tokens": n_unseen, "eval_unseen_rate": n_unseen / max(n_tokens, 1),
            "eval_examples_with_unseen": n_unseen_examples}


def config_dict(cfg: PruneConfig) -> dict:
    return asdict(cfg)


# Options added after checkpoints were first fingerprinted: they join a fingerprint only when set,
# so `run --resume` still finds checkpoints made before the option existed.
_LATER_OPTIONS = {"trim_positions": False}


def fingerprint_dict(cfg: PruneConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if not (k in _LATER_OPTIONS and v == _LATER_OPTIONS[k])}
