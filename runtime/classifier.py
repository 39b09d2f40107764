"""`Classifier`: classify texts (or text pairs) with an embslim text-classification bundle.

This is the part an app embeds, so it needs only onnxruntime, numpy and tokenizers. Loading,
verification, input checks and batching are `BundleModel`'s (runtime/bundle_model.py); this
class adds text pairs and how the graph's `logits` become labels and probabilities. One
`Classifier` can serve many threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .bundle_model import BundleModel
from .errors import BundleError, InputError, InputTypeError

# Re-exported: code written before the runtime had more than one class imports these from
# here (embslim.pipeline.probe and embslim.exporters.compare take session_options).
from .session import SESSION_CONFIG, session_options  # noqa: F401
from .texts import (  # noqa: F401
    DEFAULT_MAX_CHARS,
    as_list,
    check_batch_size,
    clean,
    describe,
    replace_lone_surrogates,
)

__all__ = ["Classifier", "Prediction", "replace_lone_surrogates", "softmax"]

_OUTPUT = "logits"

TextInput = Union[str, Sequence[str], Sequence[tuple[str, str]], Sequence[Sequence[str]]]


@dataclass(frozen=True)
class Prediction:
    """One example's result. `score` is the probability of `label` (the argmax)."""

    label: str
    score: float
    probabilities: dict[str, float]
    top_k: tuple[tuple[str, float], ...]  # (label, probability), best first


class Classifier(BundleModel):
    """A text (or text-pair) classifier loaded from an embslim text-classification bundle.

    Build it with `Classifier.from_bundle(path)` (see `BundleModel.from_bundle` for its
    options and errors); the constructor takes an already-open session and configured
    tokenizer and is meant for tests and tools. A feature-extraction bundle is refused with
    a `BundleError` naming `Embedder`.

    Labels and batches: a dynamic int8 file (variant "int8", what `variant="auto"` loads;
    ONNX Runtime's `quantize_dynamic`) computes its activation scales from the whole batch
    a call runs, so a borderline text's label can change with the texts sent beside it (on
    SST-2 dev, 9-15 of 872 labels differ between batch 1 and batch 32). A service that
    must give a text the same label whatever else a client sends loads the bundle with
    `from_bundle(..., batch_invariant=True)` (each text then runs alone), or loads the
    static int8 file (`variant="int8-static"`, from `embslim run --static-int8`), whose
    scales are fixed. fp32 files do not depend on the batch.
    """

    task_type = "text-classification"
    _output = _OUTPUT
    _verb = "classifies"

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        *,
        manifest: Mapping[str, Any],
        model_path: Path,
        artifact: Mapping[str, Any] | None = None,
        max_chars: int | None = DEFAULT_MAX_CHARS,
    ) -> None:
        self.is_pair: bool = bool(manifest["task"]["pair"])
        super().__init__(
            session,
            tokenizer,
            manifest=manifest,
            model_path=model_path,
            artifact=artifact,
            max_chars=max_chars,
        )

    def encode(
        self, texts: Sequence[str] | str, pairs: Sequence[str] | str | None = None
    ) -> dict[str, np.ndarray]:
        """Tokenize and pad to the batch's longest row: the feed dict for the ONNX session.

        Returns only the inputs the graph declares, as `[batch, seq]` int64 arrays.
        """
        firsts, seconds = self._split(texts, pairs, caller="encode")
        return self._encode(firsts, seconds)

    def logits(
        self,
        texts: Sequence[str] | str,
        pairs: Sequence[str] | str | None = None,
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Raw model outputs, float32 `[n, n_labels]`, computed `batch_size` texts at a time.

        For pair bundles pass `pairs` (one second text per text), or `texts` as a list of
        (text, text_pair) tuples as `predict` takes them.
        """
        firsts, seconds = self._split(texts, pairs, caller="logits")
        check_batch_size(batch_size)
        return self._logits(firsts, seconds, batch_size=batch_size)

    def predict(
        self, texts: TextInput, *, batch_size: int = 32, top_k: int = 1
    ) -> list[Prediction]:
        """Classify a text, a list of texts, or (pair bundles) a list of (text, text_pair).

        Always returns a list, one `Prediction` per input, in input order.
        """
        firsts, seconds = self._split(texts, None, caller="predict")
        check_batch_size(batch_size)
        n_labels = len(self.labels)
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise InputTypeError(
                f"top_k must be an int between 1 and {n_labels}, got {type(top_k).__name__} "
                f"({top_k!r})"
            )
        if not 1 <= top_k <= n_labels:
            raise InputError(
                f"top_k must be between 1 and {n_labels} (the number of labels), got {top_k}; "
                f"use top_k={n_labels} to rank every label"
            )
        probs = softmax(self._logits(firsts, seconds, batch_size=batch_size))
        order = np.argsort(-probs, axis=1, kind="stable")
        out: list[Prediction] = []
        for row, ranks in zip(probs, order):
            ranked = tuple((self.labels[j], float(row[j])) for j in ranks[:top_k])
            out.append(
                Prediction(
                    label=ranked[0][0],
                    score=ranked[0][1],
                    probabilities={label: float(p) for label, p in zip(self.labels, row)},
                    top_k=ranked,
                )
            )
        return out

    # -- what BundleModel asks of a subclass ---------------------------------------------

    def _check_output(self, session: ort.InferenceSession) -> None:
        n = len(self.labels)
        self._require_output(session, axes=("batch",), width=n, width_axis="labels", width_detail=f"{n} labels")

    def _describe(self) -> list[str]:
        return [f"labels={list(self.labels)!r}", "pair" if self.is_pair else "single"]

    # -- internals (no state is written here: safe to run from many threads) --------------

    def _logits(
        self, firsts: list[str], seconds: list[str] | None, *, batch_size: int
    ) -> np.ndarray:
        logits = self._run(firsts, seconds, batch_size=batch_size)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise BundleError(
                f"{self.model_path.name}: output 'logits' has shape {logits.shape}, expected "
                f"[batch, {len(self.labels)}] for labels {list(self.labels)}; the model and "
                "manifest do not belong together: re-export the bundle"
            )
        return logits.astype(np.float32, copy=False)

    def _split(
        self, texts: Any, pairs: Any, *, caller: str
    ) -> tuple[list[str], list[str] | None]:
        """Validate inputs; return (first texts, second texts or None)."""
        items = as_list(texts, name="texts", caller=caller)
        if pairs is not None:
            if not self.is_pair:
                raise InputError(
                    f"{caller}() got pairs=, but this bundle classifies single texts"
                    f"{self._task_hint()}; drop pairs="
                )
            seconds = as_list(pairs, name="pairs", caller=caller)
            if len(seconds) != len(items):
                raise InputError(
                    f"{caller}() got {len(items)} texts but {len(seconds)} pairs; pass one "
                    "second text per text"
                )
            self._check_texts(items, name="texts")
            self._check_texts(seconds, name="pairs")
            return clean(items), clean(seconds)
        if not self.is_pair:
            return self._single_texts(items, caller=caller), None
        firsts: list[str] = []
        seconds_: list[str] = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                raise InputError(
                    f"texts[{i}] is a single str, but this bundle classifies text pairs"
                    f"{self._task_hint()}; pass (text, text_pair) tuples, e.g. "
                    "[('A man is sleeping.', 'A person rests.')]"
                )
            if not isinstance(item, (tuple, list)):
                raise InputTypeError(
                    f"texts[{i}] is {describe(item)}, expected a (text, text_pair) tuple of "
                    "two str"
                )
            if len(item) != 2:
                raise InputError(
                    f"texts[{i}] has {len(item)} items, expected a (text, text_pair) pair of "
                    "two str"
                )
            for j, part in enumerate(item):
                if not isinstance(part, str):
                    raise InputTypeError(
                        f"texts[{i}][{j}] is {describe(part)}, expected str; convert it with "
                        "str() or drop the example"
                    )
                self._check_length(part, name=f"texts[{i}][{j}]")
            firsts.append(replace_lone_surrogates(item[0]))
            seconds_.append(replace_lone_surrogates(item[1]))
        return firsts, seconds_


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row max so large logits cannot overflow."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
