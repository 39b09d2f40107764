"""Runs INSIDE the emulated aarch64 Python: a JSON file's texts through one file of a bundle of any task.

`embslim.pipeline.aarch64.validate_arm64` starts it as `python -m embslim.pipeline._arm_eval SPEC.json` under
qemu. SPEC holds {bundle, file, texts, pairs (or null), batch_size}. The bundle is loaded with
`embslim.runtime.load_bundle` (the class its manifest's task.type calls for) and `OUTPUTS` gives the
task's primary output, batch by batch, as rows:

- text-classification: `Classifier.logits` (texts and pairs), [n, labels];
- feature-extraction: `Embedder.encode`, [n, dim] (pairs are not used);
- token-classification: `Tagger.token_outputs`' logits of every token, concatenated in text order,
  [total tokens, labels], and `token_counts` [n], each text's token count, for the host to check
  against its own tokenization.

The result is one JSON line on stdout: {task, outputs, token_counts (token-classification only),
machine, onnxruntime, load_seconds, eval_seconds}; after each batch a line
`progress DONE/TOTAL SECONDS` goes to stderr. Only the standard library, numpy and `runtime`
(onnxruntime, numpy, tokenizers) are imported: nothing else is installed in the emulated environment.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _logits(model: Any, texts: list[str], pairs: list[str] | None, batch: int) -> tuple[np.ndarray, None]:
    return model.logits(texts, pairs, batch_size=batch), None


def _embeddings(model: Any, texts: list[str], pairs: list[str] | None, batch: int) -> tuple[np.ndarray, None]:
    return model.encode(texts, batch_size=batch), None


def _token_logits(model: Any, texts: list[str], pairs: list[str] | None, batch: int) -> tuple[np.ndarray, list[int]]:
    outs = model.token_outputs(texts, batch_size=batch)
    return np.concatenate([o.logits for o in outs]), [len(o.logits) for o in outs]


# task.type (the runtime class's `task_type`) -> (model, texts, pairs, batch_size) -> (output rows,
# rows per text or None when each text gives one row); the same outputs the pipeline's scorers read.
OUTPUTS: dict[str, Callable[[Any, list[str], list[str] | None, int], tuple[np.ndarray, list[int] | None]]] = {
    "text-classification": _logits,
    "feature-extraction": _embeddings,
    "token-classification": _token_logits,
}


def evaluate(model: Any, texts: Sequence[str], pairs: Sequence[str] | None, *, batch_size: int,
             on_batch: Callable[[int], None] | None = None) -> dict:
    """{task, outputs, token_counts (token-classification only)} of `model` on `texts`: one call per
    batch of `batch_size`, the batches (and so the padding) of one call with that batch_size;
    `on_batch(texts done)` after each."""
    task = model.task_type
    if task not in OUTPUTS:
        raise ValueError(f"no arm64 evaluation for task {task!r}; known: {', '.join(OUTPUTS)}")
    texts = list(texts)
    rows: list[list[float]] = []
    counts: list[int] = []
    per_text = True
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        out, c = OUTPUTS[task](model, texts[start:stop], None if pairs is None else list(pairs[start:stop]), batch_size)
        rows += out.tolist()
        if c is not None:
            per_text = False
            counts += c
        if on_batch is not None:
            on_batch(min(stop, len(texts)))
    return {"task": task, "outputs": rows} | ({} if per_text else {"token_counts": counts})


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m embslim.pipeline._arm_eval SPEC.json")
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))

    import onnxruntime

    from embslim.runtime import load_bundle

    t0 = time.perf_counter()
    # The host verified the sha256 before starting us; hashing 90 MB under emulation adds nothing.
    model = load_bundle(spec["bundle"], file=spec["file"], threads=1, verify=False)
    t1 = time.perf_counter()
    texts = spec["texts"]

    def progress(done: int) -> None:
        print(f"progress {done}/{len(texts)} {time.perf_counter() - t1:.1f}", file=sys.stderr, flush=True)

    result = evaluate(model, texts, spec["pairs"], batch_size=int(spec["batch_size"]), on_batch=progress)
    t2 = time.perf_counter()
    print(json.dumps(result | {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__,
                               "load_seconds": round(t1 - t0, 2), "eval_seconds": round(t2 - t1, 2)}))


if __name__ == "__main__":
    main(sys.argv[1:])
