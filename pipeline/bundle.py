"""The bundle directory: staging, manifest and the tokenizer/config files beside the models.

Everything is written into a staging folder next to the destination and renamed into place only
once complete (`staged_bundle`), so a failure never leaves a half-written bundle. The manifest
records the sha256 and size of every artifact; `runtime/` verifies them before loading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from runtime.manifest import SCHEMA_VERSION, sha256_file

if TYPE_CHECKING:
    from pipeline.data import TaskData
    from pipeline.model import LoadedModel

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class BundleExistsError(FileExistsError):
    """The destination exists and --force was not given."""


@contextlib.contextmanager
def staged_bundle(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on failure it is deleted."""
    out = Path(out).resolve()
    if out.exists() and not force:
        raise BundleExistsError(f"{out} already exists; pass --force to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log.info("bundle written to %s", out)


def write_tokenizer_and_config(loaded: "LoadedModel", folder: Path) -> None:
    """The ORIGINAL tokenizer.json (unchanged; the graph remaps ids itself) and the HF config
    with id2label, which Optimum's ORTModelForSequenceClassification needs to load the folder."""
    loaded.tokenizer.save_pretrained(folder)   # tokenizer_config.json etc. for AutoTokenizer users
    original = Path(loaded.path) / "tokenizer.json"
    if original.is_file():
        shutil.copyfile(original, folder / "tokenizer.json")
    loaded.model.config.save_pretrained(folder)


def artifact_entry(folder: Path, file: str, *, variant: str, target: str = "any") -> dict:
    path = folder / file
    return {"file": file, "variant": variant, "target": target, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(folder: Path, *, loaded: "LoadedModel", task: "TaskData", max_length: int,
                   artifacts: list[dict], stages: dict, metrics: dict) -> dict:
    tok = loaded.tokenizer
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": {"name": task.name, "labels": list(task.label_names), "pair": task.is_pair, "max_length": max_length},
        "source_model": {"name": loaded.name, "family": loaded.model.config.model_type, "weights_sha256": loaded.weights_sha256},
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(folder / "tokenizer.json"),
                      "pad_id": tok.pad_token_id, "input_names": list(loaded.input_names)},
        "stages": stages,
        "artifacts": artifacts,
        "metrics": metrics,
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=2)
    os.replace(tmp, folder / MANIFEST)
    return manifest
