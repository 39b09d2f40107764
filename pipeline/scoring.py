"""How each task's ONNX files are judged: the scorer the validate and targets stages ask.

A scorer loads a file through the runtime class an app would use (`Classifier`, `Embedder`),
runs it over a split, and turns the outputs into the task's metrics and comparisons:

- text-classification: accuracy and F1 on the labels, label agreement and max |Δlogit| with the
  same model in PyTorch, with the given model, and (quantized files) with the fp32 file;
- feature-extraction: cosine between the file's sentence embeddings and the original model's on
  held-out texts (mean, 1st percentile, min), intent accuracy by nearest neighbour (k = 1,
  cosine; index and queries from a labelled dataset such as CLINC150) and ROC-AUC of pair cosine
  against a paraphrase label (MRPC), max |Δ| with the same model in PyTorch;
- token-classification: entity-level precision / recall / F1 (seqeval) overall and per entity
  type on the split's word tags, token agreement and max |Δlogit| with PyTorch.

The stages hold no `if task == ...`: they call the methods below (`scorer_for` picks the class).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embslim.exporters.quantize import DROP_ADVICE
from embslim.pipeline.data import Split

if TYPE_CHECKING:
    from embslim.pipeline.data import TaskData
    from embslim.pipeline.validate import ValidateConfig

log = logging.getLogger(__name__)


class QualityDropError(ValueError):
    """A quantized file lost more of the task metric than `max_drop` allows."""


def _batched(fn: Any, texts: Sequence[str], pairs: Sequence[str] | None, *, batch_size: int, desc: str,
             width: int) -> np.ndarray:
    """`fn(texts, pairs)` one batch per call, so a long eval logs progress (the batches and their
    padding are those of a single call)."""
    from embslim.pipeline.logs import progress

    texts = list(texts)
    pairs = list(pairs) if pairs is not None else None
    starts = range(0, len(texts), batch_size)
    chunks = [fn(texts[i:i + batch_size], pairs[i:i + batch_size] if pairs is not None else None)
              for i in progress(starts, total=len(starts), desc=desc, logger=log)]
    return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)


def _encode(model: Any, texts: Sequence[str], *, batch_size: int, desc: str) -> np.ndarray:
    """`model.encode` (an `embslim.runtime.Embedder`) of `texts` in batches, with a progress line every 10 s."""
    return _batched(lambda t, _: model.encode(t, batch_size=batch_size), texts, None, batch_size=batch_size,
                    desc=desc, width=model.dim)


# ---------------------------------------------------------------- text-classification

@dataclass(frozen=True)
class ClassificationScorer:
    """Accuracy / F1 on the split's labels; parity by argmax agreement and max |Δlogit|."""

    n_labels: int
    primary: str = "accuracy"

    def load(self, bundle: str | Path, file: str) -> Any:
        from embslim.runtime import Classifier

        return Classifier.from_bundle(bundle, file=file, threads=None, staging=True)   # maybe the bundle being written

    def outputs(self, model: Any, split: Split, *, batch_size: int, desc: str) -> np.ndarray:
        return _batched(lambda t, p: model.logits(t, p, batch_size=batch_size), split.texts, split.pairs,
                        batch_size=batch_size, desc=desc, width=len(model.labels))

    def metrics(self, model: Any, outputs: np.ndarray, split: Split, *, batch_size: int) -> dict:
        from embslim.pipeline.validate import task_metrics

        return task_metrics(outputs, split.labels, n_labels=self.n_labels)

    def parity(self, outputs: np.ndarray, torch_outputs: np.ndarray, split: Split) -> dict:
        from embslim.pipeline.validate import parity, task_metrics

        return parity(outputs, torch_outputs) | {
            "torch_accuracy": task_metrics(torch_outputs, split.labels, n_labels=self.n_labels)["accuracy"]}

    def against_original(self, outputs: np.ndarray, original: np.ndarray | None) -> dict:
        from embslim.pipeline.validate import against_original

        return against_original(outputs, original)

    def parity_problems(self, metrics: dict, cfg: "ValidateConfig") -> list[str]:
        problems = []
        if metrics.get("max_logit_diff", 0.0) > cfg.parity_atol:
            problems.append(f"max |logit difference| vs PyTorch {metrics['max_logit_diff']:.2e} > {cfg.parity_atol:g}")
        if metrics.get("agreement", 1.0) < cfg.min_agreement:
            problems.append(f"prediction agreement with PyTorch {100 * metrics['agreement']:.2f}% < "
                            f"{100 * cfg.min_agreement:.2f}%")
        return problems

    def quantized(self, bundle: str | Path, file: str, split: Split, *, fp32_outputs: np.ndarray, fp32_metrics: dict,
                  max_drop: float, allow_drop: bool, batch_size: int, original: np.ndarray | None) -> dict:
        """A quantized file's row: accuracy, agreement with fp32, drop (QuantizationAccuracyError
        past `max_drop` unless `allow_drop`)."""
        from embslim.exporters.quantize import check_quantized

        check = check_quantized(bundle, file, split, n_labels=self.n_labels, max_drop=max_drop, allow_drop=allow_drop,
                                batch_size=batch_size, fp32_logits=fp32_outputs, original_logits=original,
                                batch_flips=True)
        return {"accuracy": check["accuracy"], "agreement_fp32": check["agreement"],
                "accuracy_drop_vs_fp32": check["drop"], "flagged": check["flagged"],
                **{k: check[k] for k in ("original_agreement", "original_max_logit_diff", "batch_flips",
                                         "batch_flips_batch_size") if k in check}}

    def first_rows(self, n: int) -> "ClassificationScorer":
        """The scorer for the eval split's first `n` rows alone (what arm64 validation runs): this one."""
        return self

    def summary(self, m: dict) -> str:
        return (f"accuracy {100 * m['accuracy']:.2f}%"
                + (f", agreement with the given model {100 * m['original_agreement']:.2f}% (max |dlogit| "
                   f"{m['original_max_logit_diff']:.1e})" if "original_agreement" in m else "")
                + (f", agreement with its PyTorch model {100 * m['agreement']:.2f}% (max |dlogit| "
                   f"{m['max_logit_diff']:.1e})" if "agreement" in m else ""))


# ---------------------------------------------------------------- feature-extraction

@dataclass(frozen=True)
class EmbeddingProbes:
    """Labelled data the embedding metrics run on besides the held-out texts: a kNN index and its
    queries (intent labels: same label = correct), and text pairs with a 0/1 paraphrase label."""

    knn_index: Split | None = None
    knn_queries: Split | None = None
    knn_source: str = ""
    pairs: Split | None = None
    pairs_source: str = ""
    # the queries are these rows of the eval split: their embeddings are taken from the eval outputs
    queries_in_eval: tuple[int, ...] | None = None

    def describe(self) -> dict:
        out: dict = {}
        if self.knn_index is not None and self.knn_queries is not None:
            out["knn"] = {"source": self.knn_source, "n_index": len(self.knn_index), "n_queries": len(self.knn_queries),
                          "k": 1}
        if self.pairs is not None:
            out["pairs"] = {"source": self.pairs_source, "n_pairs": len(self.pairs)}
        return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two float [n, dim] arrays (0 for an all-zero row)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def cosine_stats(a: np.ndarray, b: np.ndarray, prefix: str = "cosine") -> dict:
    """Mean, 1st percentile and min of the row-wise cosine of `a` and `b`."""
    c = cosine_rows(a, b)
    if not len(c):
        return {}
    return {f"{prefix}_mean": float(c.mean()), f"{prefix}_p1": float(np.percentile(c, 1)), f"{prefix}_min": float(c.min())}


def knn_accuracy(index: np.ndarray, index_labels: Sequence[int], queries: np.ndarray,
                 query_labels: Sequence[int]) -> float:
    """Share of queries whose nearest index vector (cosine, k = 1) has the query's label."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    index, queries = unit(index.astype(np.float32)), unit(queries.astype(np.float32))
    labels = np.asarray(index_labels)
    hits = 0
    for s in range(0, len(queries), 1024):   # [1024, n_index] similarities at a time
        nearest = np.argmax(queries[s:s + 1024] @ index.T, axis=1)
        hits += int((labels[nearest] == np.asarray(query_labels[s:s + 1024])).sum())
    return hits / max(1, len(queries))


def pair_auc(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> float:
    """ROC-AUC (scikit-learn) of the pairs' cosine against their 0/1 label."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), cosine_rows(a, b)))


@dataclass(frozen=True)
class EmbeddingScorer:
    """Cosine to the original model, kNN accuracy and pair AUC (`EmbeddingProbes`); parity by max |Δ|."""

    probes: EmbeddingProbes = EmbeddingProbes()
    min_cosine: float = 0.99    # a quantized file whose mean cosine to its fp32 file is lower is flagged (no kNN data)

    @property
    def primary(self) -> str:
        return "knn_accuracy" if self.probes.knn_index is not None else "cosine_mean"

    def load(self, bundle: str | Path, file: str) -> Any:
        from embslim.runtime import Embedder

        return Embedder.from_bundle(bundle, file=file, threads=None, staging=True)   # maybe the bundle being written

    def outputs(self, model: Any, split: Split, *, batch_size: int, desc: str) -> np.ndarray:
        return _encode(model, split.texts, batch_size=batch_size, desc=desc)

    def metrics(self, model: Any, outputs: np.ndarray, split: Split, *, batch_size: int) -> dict:
        p = self.probes
        out: dict = {"n_eval": len(split)}
        if p.knn_index is not None and p.knn_queries is not None:
            index = self.outputs(model, p.knn_index, batch_size=batch_size,
                                 desc=f"kNN index ({len(p.knn_index)} texts)")
            queries = (outputs[list(p.queries_in_eval)] if p.queries_in_eval is not None and len(outputs) == len(split)
                       else self.outputs(model, p.knn_queries, batch_size=batch_size,
                                         desc=f"kNN queries ({len(p.knn_queries)} texts)"))
            out["knn_accuracy"] = knn_accuracy(index, p.knn_index.labels, queries, p.knn_queries.labels)
        if p.pairs is not None:
            a = self.outputs(model, p.pairs, batch_size=batch_size, desc="pairs, first texts")
            b = _encode(model, list(p.pairs.pairs or ()), batch_size=batch_size, desc="pairs, second texts")
            out["pair_auc"] = pair_auc(a, b, p.pairs.labels)
        return out

    def parity(self, outputs: np.ndarray, torch_outputs: np.ndarray, split: Split) -> dict:
        return {"max_abs_diff": float(np.abs(outputs - torch_outputs).max()) if len(outputs) else 0.0,
                "cosine_min_torch": float(cosine_rows(outputs, torch_outputs).min()) if len(outputs) else 1.0}

    def against_original(self, outputs: np.ndarray, original: np.ndarray | None) -> dict:
        return {} if original is None else cosine_stats(outputs, original)

    def parity_problems(self, metrics: dict, cfg: "ValidateConfig") -> list[str]:
        if metrics.get("max_abs_diff", 0.0) > cfg.parity_atol:
            return [f"max |sentence embedding difference| vs PyTorch {metrics['max_abs_diff']:.2e} > {cfg.parity_atol:g}"]
        return []

    def quantized(self, bundle: str | Path, file: str, split: Split, *, fp32_outputs: np.ndarray, fp32_metrics: dict,
                  max_drop: float, allow_drop: bool, batch_size: int, original: np.ndarray | None) -> dict:
        """A quantized file's row: cosine to the fp32 file and to the original model, kNN accuracy
        and pair AUC; its kNN accuracy may drop at most `max_drop` below fp32's (without kNN data,
        its mean cosine to fp32 must reach 1 - max_drop); QualityDropError otherwise unless `allow_drop`."""
        model = self.load(bundle, file)
        outputs = self.outputs(model, split, batch_size=batch_size, desc=f"{file}: eval")
        row = self.metrics(model, outputs, split, batch_size=batch_size) | cosine_stats(outputs, fp32_outputs, "cosine_fp32")
        row |= self.against_original(outputs, original)
        if "knn_accuracy" in row:
            fp32 = fp32_metrics["knn_accuracy"]
            row["knn_drop_vs_fp32"] = fp32 - row["knn_accuracy"]
            bad = row["knn_drop_vs_fp32"] > max_drop
            why = (f"kNN accuracy {100 * row['knn_accuracy']:.2f}% is {100 * row['knn_drop_vs_fp32']:.2f} points "
                   f"below model.onnx ({100 * fp32:.2f}%)")
        else:
            bad = row.get("cosine_fp32_mean", 1.0) < 1 - max_drop
            why = f"mean cosine to model.onnx {row.get('cosine_fp32_mean', 1.0):.4f} < {1 - max_drop:.4f}"
        row["flagged"] = bool(bad)
        log.info("%s: %s", file, self.summary(row))
        if bad and not allow_drop:
            raise QualityDropError(f"{file}: {why}; at most {100 * max_drop:.2f} allowed. {DROP_ADVICE}")
        return row

    def first_rows(self, n: int) -> "EmbeddingScorer":
        """The scorer for the eval split's first `n` rows alone, with only the metrics that come from
        those rows' outputs (arm64 validation runs just them, under emulation): kNN keeps the queries
        that are among those rows (the index is still encoded by the model `metrics` is given); kNN
        whose queries are another data set's, and pair AUC, are left out."""
        p = self.probes
        keep = ([j for j, row in enumerate(p.queries_in_eval) if row < n]
                if p.queries_in_eval is not None and p.knn_index is not None and p.knn_queries is not None else [])
        if not keep:
            return replace(self, probes=EmbeddingProbes())
        queries = Split(tuple(p.knn_queries.texts[j] for j in keep), None, tuple(p.knn_queries.labels[j] for j in keep))
        return replace(self, probes=EmbeddingProbes(p.knn_index, queries, p.knn_source,
                                                    queries_in_eval=tuple(p.queries_in_eval[j] for j in keep)))

    def summary(self, m: dict) -> str:
        parts = []
        if "cosine_mean" in m:
            parts.append(f"cosine to the original mean {m['cosine_mean']:.4f} (p1 {m['cosine_p1']:.4f}, min "
                         f"{m['cosine_min']:.4f})")
        if "cosine_fp32_mean" in m:
            parts.append(f"cosine to fp32 mean {m['cosine_fp32_mean']:.4f} (min {m['cosine_fp32_min']:.4f})")
        if "knn_accuracy" in m:
            parts.append(f"kNN accuracy {100 * m['knn_accuracy']:.2f}%")
        if "pair_auc" in m:
            parts.append(f"pair AUC {m['pair_auc']:.4f}")
        if "max_abs_diff" in m:
            parts.append(f"max |d| vs its PyTorch model {m['max_abs_diff']:.1e}")
        return ", ".join(parts) or "no metrics"


def load_probes(task: "TaskData", cfg: "ValidateConfig", *, data_root: str | None = None,
                clinc_eval_split: str = "test") -> EmbeddingProbes:
    """The labelled data of the embedding metrics: kNN from `cfg.knn_data` (its train split is the
    index, its eval split the queries) or else from the run's own labelled train and eval splits;
    pairs from `cfg.pair_data` (a file of text pairs with two labels, read whole). Classes named in
    `cfg.knn_ignore_labels` (CLINC150's "oos") are left out of kNN. Raises DataError in one line."""
    from embslim.pipeline.data import DataConfig, DataError, load_task

    def keep_rows(split: Split, names: Sequence[str]) -> list[int]:
        ignored = {i for i, n in enumerate(names) if n in cfg.knn_ignore_labels}
        return [i for i, y in enumerate(split.labels or ()) if y not in ignored]

    def take(split: Split, rows: list[int]) -> Split:
        return Split(tuple(split.texts[i] for i in rows), None, tuple(split.labels[i] for i in rows))

    index = queries = None
    rows_in_eval: tuple[int, ...] | None = None
    source = ""
    if cfg.knn_data is not None:
        try:
            data = load_task(DataConfig(train=cfg.knn_data, clinc_eval_split=clinc_eval_split), data_root=data_root)
        except DataError as e:
            raise DataError(f"--knn-data {cfg.knn_data}: kNN needs labelled texts (a text and a label column, or "
                            f"CLINC150's data_full.json); {e}") from e
        index, queries = take(data.train, keep_rows(data.train, data.label_names)), take(data.eval, keep_rows(data.eval, data.label_names))
        source = cfg.knn_data
    elif task.train.labels is not None and len(task.train) and task.eval.labels is not None:
        rows = keep_rows(task.eval, task.label_names)
        index, queries, rows_in_eval = take(task.train, keep_rows(task.train, task.label_names)), take(task.eval, rows), tuple(rows)
        source = f"{task.name} (index: its train split, queries: its eval split)"
    pairs, pairs_source = None, ""
    if cfg.pair_data is not None:
        data = _load_pairs(cfg, data_root=data_root)
        if not data.is_pair or len(data.label_names) != 2:
            raise DataError(f"pair_data {cfg.pair_data!r} must hold text pairs with two labels (0/1, e.g. mrpc/dev.tsv); "
                            f"got {'pairs' if data.is_pair else 'single texts'} with labels {list(data.label_names)[:5]}")
        pairs, pairs_source = data.eval, cfg.pair_data
    if index is not None and (not len(index) or not len(queries)):
        raise DataError(f"kNN data {source!r} has no index or no queries left once {list(cfg.knn_ignore_labels)} are left out")
    return EmbeddingProbes(index, queries, source, pairs, pairs_source, rows_in_eval)


# (text, pair, label) column names tried in order for pair_data when pair_columns is not given:
# GLUE's names in `datasets`, MRPC's own TSV, Quora's.
_PAIR_COLUMNS = (("sentence1", "sentence2", "label"), ("#1 String", "#2 String", "Quality"),
                 ("question1", "question2", "is_duplicate"), ("text", "text_pair", "label"))


def _load_pairs(cfg: "ValidateConfig", *, data_root: str | None) -> "TaskData":
    from embslim.pipeline.data import DataConfig, DataError, _detect, _resolve, load_task

    path = _resolve(str(cfg.pair_data), data_root)
    if _detect(path, "auto") == "clinc150":
        raise DataError(f"--pair-data {cfg.pair_data}: a CLINC150 file holds single texts, not pairs; pass a file of "
                        "labelled text pairs, e.g. mrpc/dev.tsv")

    tried = [tuple(cfg.pair_columns)] if cfg.pair_columns else list(_PAIR_COLUMNS)
    errors = []
    for text, pair, label in tried:
        try:
            return load_task(DataConfig(train=cfg.pair_data, eval=cfg.pair_data, text_column=text, text_pair_column=pair,
                                        label_column=label), data_root=data_root)
        except DataError as e:
            errors.append(str(e))
    found = [e for e in errors if "no column" not in e]   # the columns were there, the rows were wrong
    if found:
        raise DataError(f"--pair-data {cfg.pair_data}: {found[0]}")
    tried_names = "; ".join("/".join(c) for c in tried)
    raise DataError(f"--pair-data {cfg.pair_data}: no text-pair columns with a 0/1 label found (tried {tried_names}); "
                    'pass a file with such columns (e.g. mrpc/dev.tsv), or name them with pair_columns = '
                    '["text", "pair", "label"] under [validate] in a --config file')


# ---------------------------------------------------------------- token-classification

@dataclass(frozen=True)
class TokenClassificationScorer:
    """Entity-level precision / recall / F1 (seqeval) on the split's word tags, per entity type;
    parity by argmax agreement and max |Δlogit| over every non-padding token.

    Outputs are the per-token logits of every text, concatenated in order ([total tokens,
    labels], what `Tagger.token_outputs` gives, stacked); each word is read from its first
    sub-token (embslim.pipeline.tagged). The token-to-word alignment of a split is computed once
    from the runtime's own tokenizer and kept (`_alignments`), so PyTorch outputs are scored on
    exactly the runtime's tokens."""

    label_names: tuple[str, ...]
    primary: str = "f1"
    _alignments: dict = field(default_factory=dict, compare=False, repr=False)

    def load(self, bundle: str | Path, file: str) -> Any:
        from embslim.runtime import Tagger

        return Tagger.from_bundle(bundle, file=file, threads=None, staging=True)   # maybe the bundle being written

    def outputs(self, model: Any, split: Split, *, batch_size: int, desc: str) -> np.ndarray:
        self._align(model, split)
        return _batched(lambda t, p: np.concatenate([o.logits for o in model.token_outputs(t, batch_size=batch_size)])
                        if t else np.zeros((0, len(self.label_names)), np.float32),
                        split.texts, None, batch_size=batch_size, desc=desc, width=len(self.label_names))

    def _align(self, model: Any, split: Split) -> tuple[np.ndarray, list[np.ndarray]]:
        """(token counts per text, first-token index of each word per text) for `split`."""
        from embslim.pipeline.tagged import first_token_index

        key = hash(split.texts)
        if key not in self._alignments:
            if split.words is None:
                raise ValueError("a token-classification eval split needs words and tags (a CoNLL or tagged JSONL file)")
            toks = model.tokenize(list(split.texts))
            self._alignments[key] = (np.array([len(t.input_ids) for t in toks], np.int64),
                                     [first_token_index(t.offsets, t.special, w) for t, w in zip(toks, split.words)])
        return self._alignments[key]

    def word_tags(self, outputs: np.ndarray, split: Split, model: Any = None) -> list[np.ndarray]:
        """Predicted tag ids per word of each text, from concatenated token `outputs`."""
        from embslim.pipeline.tagged import word_predictions

        counts, first = self._alignments[hash(split.texts)] if model is None else self._align(model, split)
        if int(counts.sum()) != len(outputs):
            raise ValueError(f"{len(outputs)} token rows for {int(counts.sum())} tokens of the split: the outputs come "
                             "from another tokenization or max_length")
        return [word_predictions(rows, f) for rows, f in zip(np.split(outputs, np.cumsum(counts)[:-1]), first)]

    def metrics(self, model: Any, outputs: np.ndarray, split: Split, *, batch_size: int) -> dict:
        from embslim.pipeline.tagged import entity_scores

        pred = self.word_tags(outputs, split, model)
        return entity_scores(split.tags, pred, self.label_names)

    def parity(self, outputs: np.ndarray, torch_outputs: np.ndarray, split: Split) -> dict:
        from embslim.pipeline.tagged import entity_scores
        from embslim.pipeline.validate import parity

        if outputs.shape != torch_outputs.shape:
            return {"agreement": 0.0, "max_logit_diff": float("inf"), "torch_tokens": int(len(torch_outputs))}
        return parity(outputs, torch_outputs) | {
            "torch_f1": entity_scores(split.tags, self.word_tags(torch_outputs, split), self.label_names)["f1"]}

    def against_original(self, outputs: np.ndarray, original: np.ndarray | None) -> dict:
        from embslim.pipeline.validate import against_original

        if original is not None and original.shape != outputs.shape:
            return {}
        return against_original(outputs, original)

    def parity_problems(self, metrics: dict, cfg: "ValidateConfig") -> list[str]:
        if "torch_tokens" in metrics:
            return [f"PyTorch gave {metrics['torch_tokens']} token rows where ONNX Runtime gave another count: the "
                    "bundle's tokenizer.json and the model's tokenizer disagree"]
        return ClassificationScorer.parity_problems(self, metrics, cfg)   # type: ignore[arg-type]

    def quantized(self, bundle: str | Path, file: str, split: Split, *, fp32_outputs: np.ndarray, fp32_metrics: dict,
                  max_drop: float, allow_drop: bool, batch_size: int, original: np.ndarray | None) -> dict:
        """A quantized file's row: entity F1 (and per type), token agreement with the fp32 file,
        the F1 drop; QualityDropError past `max_drop` (a share: 0.01 = 1 point) unless `allow_drop`."""
        model = self.load(bundle, file)
        outputs = self.outputs(model, split, batch_size=batch_size, desc=f"{file}: eval")
        row = self.metrics(model, outputs, split, batch_size=batch_size)
        row["agreement_fp32"] = float((outputs.argmax(-1) == fp32_outputs.argmax(-1)).mean()) if len(outputs) else 1.0
        row["f1_drop_vs_fp32"] = fp32_metrics["f1"] - row["f1"]
        row |= self.against_original(outputs, original)
        row["flagged"] = bool(row["f1_drop_vs_fp32"] > max_drop)
        log.info("%s: %s (%+.2f pts vs model.onnx)", file, self.summary(row), -100 * row["f1_drop_vs_fp32"])
        if row["flagged"] and not allow_drop:
            raise QualityDropError(f"{file}: entity F1 {100 * row['f1']:.2f} is {100 * row['f1_drop_vs_fp32']:.2f} points "
                                   f"below model.onnx ({100 * fp32_metrics['f1']:.2f}); at most {100 * max_drop:.2f} "
                                   f"allowed. {DROP_ADVICE}")
        return row

    def first_rows(self, n: int) -> "TokenClassificationScorer":
        """The scorer for the eval split's first `n` rows alone (what arm64 validation runs): this one
        (alignments are kept per split)."""
        return self

    def summary(self, m: dict) -> str:
        return (f"entity F1 {100 * m['f1']:.2f} (P {100 * m['entity_precision']:.2f}, R {100 * m['recall']:.2f}; "
                f"{m['n_entities']} entities)"
                + (f", token agreement with the given model {100 * m['original_agreement']:.2f}%" if "original_agreement" in m else "")
                + (f", token agreement with its PyTorch model {100 * m['agreement']:.2f}% (max |dlogit| "
                   f"{m['max_logit_diff']:.1e})" if "agreement" in m else ""))


def scorer_for(task: str | None, *, n_labels: int = 0, probes: EmbeddingProbes | None = None,
               label_names: Sequence[str] = ()) -> Any:
    """The scorer of `task` (Optimum's name; None = text-classification)."""
    from embslim.pipeline.tasks import get_task

    kind = get_task(task)
    if kind.primary_output == "sentence_embedding":
        return EmbeddingScorer(probes or EmbeddingProbes())
    if kind.token_level:
        return TokenClassificationScorer(tuple(label_names))
    return ClassificationScorer(n_labels)
