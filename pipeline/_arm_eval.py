"""Runs INSIDE the emulated aarch64 Python: classify a JSON file's texts with embslim.runtime.Classifier.

`embslim.pipeline.aarch64.validate_arm64` starts it as `python -m embslim.pipeline._arm_eval SPEC.json` under
qemu. SPEC holds {bundle, file, texts, pairs (or null), batch_size}; the result is one JSON
line on stdout: {logits, machine, onnxruntime, load_seconds, eval_seconds}; after each batch
a line `progress DONE/TOTAL SECONDS` goes to stderr. Only the standard
library and `runtime` (onnxruntime, numpy, tokenizers) are imported: nothing else is installed
in the emulated environment.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m embslim.pipeline._arm_eval SPEC.json")
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))

    import onnxruntime

    from embslim.runtime import Classifier

    t0 = time.perf_counter()
    # The host verified the sha256 before starting us; hashing 90 MB under emulation adds nothing.
    clf = Classifier.from_bundle(spec["bundle"], file=spec["file"], threads=1, verify=False)
    t1 = time.perf_counter()
    texts, pairs, batch = spec["texts"], spec["pairs"], int(spec["batch_size"])
    rows: list[list[float]] = []
    for start in range(0, len(texts), batch):  # the same batches as one clf.logits(..., batch_size=batch)
        stop = start + batch
        rows += clf.logits(texts[start:stop], None if pairs is None else pairs[start:stop],
                           batch_size=batch).tolist()
        print(f"progress {len(rows)}/{len(texts)} {time.perf_counter() - t1:.1f}", file=sys.stderr, flush=True)
    t2 = time.perf_counter()
    print(json.dumps({"logits": rows, "machine": platform.machine(),
                      "onnxruntime": onnxruntime.__version__, "load_seconds": round(t1 - t0, 2),
                      "eval_seconds": round(t2 - t1, 2)}))


if __name__ == "__main__":
    main(sys.argv[1:])
