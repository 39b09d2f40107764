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
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Iterator

from embslim.runtime.manifest import SCHEMA_VERSION, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class BundleExistsError(FileExistsError):
    """The destination exists and --force was not given."""


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(tmp, 0o644)   # mkstemp makes 0600; a bundle is meant to be read by others
    os.replace(tmp, path)


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


@dataclass(frozen=True)
class BundleMeta:
    """What a bundle says about its task and source, besides the models themselves."""

    task_name: str
    labels: tuple[str, ...]
    is_pair: bool
    max_length: int
    source: dict                      # name, family, weights_sha256
    input_names: tuple[str, ...]
    tokenizer_json: str | None = None  # the source's original tokenizer.json (vocabulary unchanged)
    task_type: str = "text-classification"   # Optimum's task name (embslim.pipeline.tasks)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BundleMeta":
        """From to_json's dict; other keys (a checkpoint's run fingerprint, fine-tune summary) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}
                   | {"labels": tuple(data["labels"]), "input_names": tuple(data["input_names"])})


def write_tokenizer_and_config(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: Path,
                               *, meta: BundleMeta) -> None:
    """The ORIGINAL tokenizer.json (its vocabulary unchanged: the graph remaps ids itself) and the HF
    config with id2label, which Optimum's ORTModelForSequenceClassification needs to load the folder.

    Both tell the truth about the bundle: config.json's `architectures` names the class the graph was
    exported from (e.g. BertForSequenceClassification, even when the source was a bare BertModel),
    and every tokenizer file truncates at the bundle's max_length, where the runtime truncates and
    the validation measured (`model_max_length` in tokenizer_config.json; tokenizer.json's own
    truncation and fixed padding, when switched on, lowered to it), so Optimum and transformers
    consumers never feed the graph more positions than it has (optimum#1777, transformers#5983)."""
    folder.mkdir(parents=True, exist_ok=True)
    saved_max = tokenizer.model_max_length
    tokenizer.model_max_length = meta.max_length
    try:
        tokenizer.save_pretrained(folder)   # tokenizer_config.json etc. for AutoTokenizer users
    finally:
        tokenizer.model_max_length = saved_max
    if meta.tokenizer_json and Path(meta.tokenizer_json).is_file():
        _write_tokenizer_json(Path(meta.tokenizer_json), folder / "tokenizer.json", max_length=meta.max_length)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)


def _write_tokenizer_json(src: Path, dst: Path, *, max_length: int) -> None:
    """Copy `src` unchanged, unless its truncation or fixed padding reaches past `max_length`:
    then only those lengths are lowered (ids of every text within max_length stay the same)."""
    data = json.loads(src.read_text(encoding="utf-8"))
    trunc, pad = data.get("truncation"), data.get("padding")
    changed = False
    if isinstance(trunc, dict) and int(trunc.get("max_length", 0)) > max_length:
        trunc["max_length"], changed = max_length, True
    fixed = isinstance(pad, dict) and isinstance(pad.get("strategy"), dict) and "Fixed" in pad["strategy"]
    if fixed and int(pad["strategy"]["Fixed"]) > max_length:
        pad["strategy"]["Fixed"], changed = max_length, True
    if not changed:
        shutil.copyfile(src, dst)
        return
    dst.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def artifact_entry(folder: Path, file: str, *, variant: str, target: str = "any") -> dict:
    path = folder / file
    return {"file": file, "variant": variant, "target": target, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(folder: Path, *, meta: BundleMeta, pad_id: int, artifacts: list[dict], stages: dict,
                   metrics: dict) -> dict:
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": {"name": meta.task_name, "type": meta.task_type, "labels": list(meta.labels), "pair": meta.is_pair,
                 "max_length": meta.max_length},
        "source_model": meta.source,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(folder / "tokenizer.json"),
                      "pad_id": pad_id, "input_names": list(meta.input_names)},
        "stages": stages,
        "artifacts": artifacts,
        "metrics": metrics,
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def export_model(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: str | Path, *,
                 meta: BundleMeta, opset: int = 17, atol: float = 1e-4, stages: dict | None = None) -> list[dict]:
    """Write tokenizer, config and a validated fp32 model.onnx into `folder`, plus a manifest
    without metrics. Raises OnnxValidationError (and writes no manifest) if parity fails."""
    from embslim.exporters.onnx import OnnxContract, export_onnx, validate_onnx
    from embslim.pipeline.embedding import export_index_dtypes

    folder = Path(folder)
    write_tokenizer_and_config(model, tokenizer, folder, meta=meta)
    contract = OnnxContract(input_names=meta.input_names, opset=opset, atol=atol)
    with export_index_dtypes(model):
        export_onnx(model, folder / "model.onnx", contract=contract)
        validate_onnx(model, folder / "model.onnx", contract=contract, max_length=meta.max_length)
    artifacts = [artifact_entry(folder, f, variant=v) for f, v in
                 (("model.onnx", "fp32"), ("tokenizer.json", "tokenizer"), ("config.json", "config"))]
    write_manifest(folder, meta=meta, pad_id=int(tokenizer.pad_token_id or 0), artifacts=artifacts,
                   stages=stages or {}, metrics={})
    return artifacts


def add_artifacts(folder: str | Path, entries: list[dict]) -> dict:
    """List more files (e.g. quantized variants, `artifact_entry(...)`) in an existing bundle's
    manifest, replacing entries for the same file; the manifest is rewritten atomically."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; export the bundle first (embslim.pipeline.bundle.export_model)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = {e["file"] for e in entries}
    manifest["artifacts"] = [e for e in manifest.get("artifacts", []) if e.get("file") not in files] + list(entries)
    write_json_atomic(path, manifest)
    return manifest
