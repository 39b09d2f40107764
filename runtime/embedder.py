"""`Embedder`: sentence embeddings from an embslim feature-extraction bundle.

The bundle's graph does all of the model's work: the encoder, pooling over `attention_mask`
(mean, cls or max, as `task.embedding.pooling` records), any Dense layer and the L2
normalisation (`task.embedding.normalize`), and outputs `sentence_embedding` [batch, dim].
This class only runs that output; loading, verification, input checks and batching are
`BundleModel`'s (runtime/bundle_model.py). One `Embedder` can serve many threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from .bundle_model import BundleModel
from .errors import BundleError
from .texts import check_batch_size

__all__ = ["Embedder"]

_OUTPUT = "sentence_embedding"
# A normalising graph's probe row must have this L2 norm within this tolerance: float32
# division leaves ~1e-7; a graph that does not normalise is off by far more.
_NORM_TOLERANCE = 1e-3


class Embedder(BundleModel):
    """Sentence embeddings from an embslim feature-extraction bundle.

    Build it with `Embedder.from_bundle(path, variant="auto")` (the options, and the
    `BundleError`s, are `BundleModel.from_bundle`'s); a text-classification bundle is refused
    with a `BundleError` naming `Classifier`. At load the graph must have a
    `sentence_embedding` output of width `task.embedding.dim`.

        emb = Embedder.from_bundle("out/minilm-emb/bundle", variant="auto", threads=1)
        vectors = emb.encode(["how do I reset my password", "forgot my login"])
        vectors.shape                      # (2, emb.dim), float32
        float(vectors[0] @ vectors[1])     # cosine similarity when emb.normalize
    """

    task_type = "feature-extraction"
    _output = _OUTPUT
    _verb = "embeds"

    @property
    def dim(self) -> int:
        """Width of each embedding (`task.embedding.dim`)."""
        return int(self.manifest["task"]["embedding"]["dim"])

    @property
    def normalize(self) -> bool:
        """True when the graph L2-normalises each embedding (so a dot product is a cosine)."""
        return bool(self.manifest["task"]["embedding"]["normalize"])

    @property
    def pooling(self) -> str:
        """How the graph pools token embeddings: "mean", "cls" or "max"."""
        return str(self.manifest["task"]["embedding"]["pooling"])

    def encode(self, texts: Sequence[str] | str, *, batch_size: int = 32) -> np.ndarray:
        """Embed a text or a list of texts: float32 `[n, dim]`, one row per text, in order.

        A single str gives `[1, dim]`. Texts are run `batch_size` at a time, each batch padded
        to its own longest row, so the result does not depend on `batch_size` (beyond float
        rounding). Texts longer than `max_length` tokens are truncated. Rows have L2 norm 1
        when `normalize` is True.

        Raises `InputTypeError` for a non-string (or a non-iterable) input, `InputError` for
        an empty list, a tuple/list item (a text pair), a text over `max_chars` characters or
        a bad `batch_size`. A lone UTF-16 surrogate is embedded as U+FFFD, never an error.
        """
        items = self._single_texts(texts, caller="encode")
        check_batch_size(batch_size)
        vectors = self._run(items, None, batch_size=batch_size)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BundleError(
                f"{self.model_path.name}: output '{_OUTPUT}' has shape {vectors.shape}, expected "
                f"[batch, {self.dim}] (the manifest's task.embedding.dim); the model and manifest "
                "do not belong together: re-export the bundle"
            )
        return vectors.astype(np.float32, copy=False)

    # -- what BundleModel asks of a subclass ---------------------------------------------

    def _check_output(self, session: ort.InferenceSession) -> None:
        self._require_output(session, axes=("batch",), width=self.dim, width_axis="dim",
                             width_detail=f"task.embedding.dim {self.dim}", bundle_kind="an embedding bundle's")

    def _check_probe(self, output: np.ndarray) -> None:
        """A symbolic width is only known by running: check it, and the norm, on the probe."""
        if output.ndim != 2 or output.shape[-1] != self.dim:
            raise BundleError(
                f"{self.model_path.name}: output '{_OUTPUT}' has shape {list(output.shape)} on "
                f"a one-token probe, expected [1, {self.dim}] for the manifest's "
                f"task.embedding.dim {self.dim}; re-export the bundle"
            )
        if self.normalize:
            norm = float(np.linalg.norm(output[0].astype(np.float64)))
            if abs(norm - 1.0) > _NORM_TOLERANCE:
                raise BundleError(
                    f"{self.model_path.name}: the manifest says the embeddings are normalised, "
                    f"but a one-token probe's '{_OUTPUT}' has L2 norm {norm:.6g}; the model "
                    "and manifest do not belong together: re-export the bundle"
                )

    def _describe(self) -> list[str]:
        return [f"dim={self.dim}", f"pooling={self.pooling!r}", f"normalize={self.normalize}"]
