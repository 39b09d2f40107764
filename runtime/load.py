"""`load_bundle`: the right runtime class for a bundle, read from its manifest's `task.type`.

An app that serves whatever bundle it is given (the sample service and CLI) calls this instead
of choosing between `Classifier`, `Embedder` and `Tagger` itself.
"""

from __future__ import annotations

import os
from typing import Any, Union

from .bundle_model import BundleModel
from .classifier import Classifier
from .embedder import Embedder
from .manifest import read_manifest, task_type
from .tagger import Tagger

__all__ = ["RUNTIME_CLASSES", "check_bundle_token_ids", "load_bundle"]

# task.type -> the class that loads it (a plain registry; TASK_TYPES in manifest.py also names
# the tasks this runtime has no class for yet, for the refusal message).
RUNTIME_CLASSES: dict[str, type[BundleModel]] = {
    Classifier.task_type: Classifier,
    Embedder.task_type: Embedder,
    Tagger.task_type: Tagger,
}

AnyModel = Union[Classifier, Embedder, Tagger]


def runtime_class(path: str | os.PathLike[str], *, staging: bool = False) -> type[BundleModel]:
    """The class that loads the bundle at `path`; `BundleError` (one line) when the manifest is
    invalid or its task has no class in this runtime."""
    manifest = read_manifest(path, staging=staging)
    cls = RUNTIME_CLASSES.get(task_type(manifest))
    if cls is None:
        BundleModel._check_task(manifest, where=str(path))  # raises, naming what is missing
    return cls  # type: ignore[return-value]


def load_bundle(path: str | os.PathLike[str], **kwargs: Any) -> AnyModel:
    """Load a bundle with the class its manifest's `task.type` calls for.

    Returns a `Classifier` for a text-classification bundle (and for manifests without
    `task.type`), an `Embedder` for a feature-extraction bundle, a `Tagger` for a
    token-classification bundle. `kwargs` are `from_bundle`'s (variant, file, threads, verify,
    max_chars, memory_arena, staging). Raises `BundleError` as `from_bundle` does, and for a
    task this runtime has no class for.
    """
    cls = runtime_class(path, staging=bool(kwargs.get("staging", False)))
    return cls.from_bundle(path, **kwargs)  # type: ignore[return-value]


def check_bundle_token_ids(path: str | os.PathLike[str]) -> list[str]:
    """Load every ONNX model artifact of a bundle with its tokenizer (what `embslim inspect`
    calls), with the class its task calls for: raises the `BundleError` `from_bundle` would
    raise for any of them, e.g. token ids past the graph's vocabulary; returns the model files
    checked."""
    cls = runtime_class(path)
    manifest = read_manifest(path)
    checked = []
    for entry in manifest["artifacts"]:
        name = str(entry.get("file", ""))
        if name.endswith((".onnx", ".ort")) and entry.get("variant") not in ("tokenizer", "config"):
            cls.from_bundle(path, file=name, threads=1, verify=False)
            checked.append(name)
    return checked
