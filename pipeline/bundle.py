"""The bundle directory: staging, manifest and the tokenizer/config files beside the models.

Every command's output (a bundle, a checkpoint, a vocabulary, a report folder) is written into a
staging folder beside the destination and renamed into place only once complete (`staged_output`),
so a failure never leaves a half-written output. The rules for `--out`:

- it may not exist; with `--force` it may be an empty folder or an earlier output of the same kind
  (`OUTPUT_KINDS`: a bundle is a folder whose manifest.json is embslim's); anything else (a user's
  folder, a file, a path under a file, an unwritable place) is refused before anything is written;
- a staging folder is `.<out>.partial-<pid>-<hex>` holding the marker file `.embslim-staging`; it
  never holds a loadable `manifest.json`: the manifest is written as `.manifest.staged.json` and
  renamed last, after the folder itself (`expose_manifest` is for the one caller, `embslim run`,
  that validates the staged bundle with the runtime before committing it);
- stale staging folders of dead processes (name pattern + marker) are removed by the next write.

The manifest records the sha256 and size of every artifact; `runtime/` verifies them before loading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Iterator

from embslim.runtime.manifest import SCHEMA_VERSION, STAGING_MARKER, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGED_MANIFEST = ".manifest.staged.json"   # the manifest's name until the bundle is committed
# In every staging folder: what stale-folder cleanup looks for, and what makes the runtime refuse it.
WORK_MARKER = ".embslim-work"               # in `embslim run`'s <out>.work folder


class BundleExistsError(FileExistsError):
    """The destination exists and --force was not given."""


class OutputError(ValueError):
    """`--out` cannot be written or may not be replaced."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_embslim_manifest(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and isinstance(data.get("artifacts"), list)


def _has_json(folder: Path, name: str, *keys: str) -> bool:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


# What an earlier output of each kind looks like; `--force` replaces only these (or an empty folder).
OUTPUT_KINDS = {
    "bundle": ("a bundle (a folder with embslim's manifest.json)", lambda p: _is_embslim_manifest(p / MANIFEST)),
    "checkpoint": ("a checkpoint (a folder written by `embslim finetune`)",
                   lambda p: _has_json(p, "embslim_embedding.json", "inner")),
    "vocab": ("a vocabulary folder (written by `embslim prune`)", lambda p: _has_json(p, "vocab.json", "kept_ids", "remap")),
    "report": ("a report folder (written by `embslim report --out` or `compare`)",
               lambda p: _has_json(p, "report.json", "variants") and not (p / MANIFEST).exists()),
    "work": ("embslim's work folder (written by `embslim run`)",
             lambda p: (p / WORK_MARKER).is_file() or _has_json(p, "vocab.json", "kept_ids", "remap")),
}


def check_output(out: str | Path, *, kind: str = "bundle", force: bool = False, flag: str = "--out") -> Path:
    """Refuse, before anything is written, an `out` that may not be (re)placed: a file, a path under a
    file, an unwritable parent, or an existing folder that is not empty and not an earlier output of
    `kind` (or is one, without `force`). Returns the resolved path."""
    what, looks_ours = OUTPUT_KINDS[kind]
    out = Path(out).expanduser().resolve()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"{flag} {out} is a file, not a folder; choose another {flag} (nothing was written)")
        empty = not any(out.iterdir())
        if not (empty or looks_ours(out) or (out / STAGING_MARKER).is_file()):
            raise OutputError(f"{flag} {out} exists and is not {what}; embslim replaces only its own outputs, even with "
                              f"--force: choose a new or empty folder for {flag} (nothing was written)")
        if not force:
            raise BundleExistsError(f"{out} already exists; pass --force to replace it or choose another {flag}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {out}: {parent} is a file, not a folder; choose another {flag} (nothing was written)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: {parent} is not writable; choose a writable {flag} (nothing was written)")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove `.<out>.partial-*` / `.<out>.old-*` folders beside `out` that carry embslim's staging
    marker and whose process is gone (a kill, a power cut). Nothing else is touched."""
    removed = []
    for p in out.parent.glob(f".{out.name}.*-*"):
        if not (p.name.startswith((f".{out.name}.partial-", f".{out.name}.old-")) and p.is_dir() and not p.is_symlink()):
            continue
        try:
            pid = int(json.loads((p / STAGING_MARKER).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue   # no marker: not ours, leave it
        if pid != os.getpid() and _alive(pid):
            continue   # another embslim process is writing it now
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        log.info("removed stale staging folder %s", p)
    return removed


def _mark(folder: Path, out: Path) -> None:
    (folder / STAGING_MARKER).write_text(json.dumps({"pid": os.getpid(), "out": str(out)}))


@contextlib.contextmanager
def staged_output(out: str | Path, *, kind: str | None = "bundle", force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder (mode from the umask, like any new folder); on success it
    replaces `out`, on any failure it is deleted. `out` is checked first (`check_output`), except
    with kind=None: embslim's own work files, replaced whatever they hold."""
    out = check_output(out, kind=kind, force=force) if kind is not None else Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    stage = out.with_name(f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(stage)   # 0o777 & ~umask, unlike mkdtemp's 0o700 (which would survive the rename)
    try:
        _mark(stage, out)
        yield stage
        _commit(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.debug("%s written to %s", kind or "output", out)


def _commit(stage: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`, then its staged manifest to manifest.json (the
    last step: a folder only ever looks like a bundle once complete), then drop the marker."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(out, old)
        with contextlib.suppress(OSError):
            _mark(old, out)
    moved = False
    try:
        os.replace(stage, out)
        moved = True
        if (out / STAGED_MANIFEST).is_file():
            os.replace(out / STAGED_MANIFEST, out / MANIFEST)
    except BaseException:   # not committed after all: the new folder goes, the previous output comes back
        if moved:
            shutil.rmtree(out, ignore_errors=True)
        if old is not None:
            os.replace(old, out)
            with contextlib.suppress(OSError):
                (out / STAGING_MARKER).unlink()
        raise
    with contextlib.suppress(OSError):
        (out / STAGING_MARKER).unlink()
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staged_bundle(out: str | Path, *, force: bool = False) -> contextlib.AbstractContextManager[Path]:
    """`staged_output` for a bundle."""
    return staged_output(out, kind="bundle", force=force)


def manifest_path(folder: str | Path) -> Path:
    """Where `folder`'s manifest is: manifest.json, or the staged name inside a staging folder."""
    folder = Path(folder)
    if (folder / STAGING_MARKER).is_file() and not (folder / MANIFEST).is_file():
        return folder / STAGED_MANIFEST
    return folder / MANIFEST


def expose_manifest(folder: str | Path) -> None:
    """Give a staging folder its manifest.json now, so embslim's validation can load the staged
    bundle (`Classifier.from_bundle(..., staging=True)`). The staging marker stays until the commit,
    so a folder a kill leaves behind is still refused by the runtime and `inspect`; the next write
    removes it."""
    folder = Path(folder)
    if (folder / STAGED_MANIFEST).is_file():
        os.replace(folder / STAGED_MANIFEST, folder / MANIFEST)


def copy_bundle(bundle: str | Path, stage: Path) -> None:
    """Copy a bundle's files into a staging folder to change them there (`embslim quantize`); its
    manifest is loadable in the copy at once, since the runtime validates the new variants from it."""
    bundle = Path(bundle)
    for src in sorted(bundle.rglob("*")):   # one file at a time, so a full disk is one OSError naming its file
        dst = stage / src.relative_to(bundle)
        if src.is_dir():
            dst.mkdir(exist_ok=True)
        elif src.name != STAGING_MARKER:
            shutil.copy2(src, dst)


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a bundle is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    # feature-extraction: {"dim", "pooling", "normalize", "dense"} (the runtime's Embedder reads it)
    embedding: dict | None = None

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
    # A sentence encoder names its encoder's class (BertModel), which Optimum and sentence-transformers load.
    model.config.architectures = [getattr(model, "architecture", type(model).__name__)]
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
                 "max_length": meta.max_length} | ({"embedding": meta.embedding} if meta.embedding else {}),
        "source_model": meta.source,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(folder / "tokenizer.json"),
                      "pad_id": pad_id, "input_names": list(meta.input_names)},
        "stages": stages,
        "artifacts": artifacts,
        "metrics": metrics,
    }
    write_json_atomic(manifest_path(folder), manifest)
    return manifest


def export_model(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: str | Path, *,
                 meta: BundleMeta, opset: int = 17, atol: float = 1e-4, stages: dict | None = None) -> list[dict]:
    """Write tokenizer, config and a validated fp32 model.onnx (the outputs of the bundle's task,
    `embslim.pipeline.tasks`) into `folder`, plus a manifest without metrics; a sentence encoder
    also gets the sentence-transformers files that let the folder load with
    `SentenceTransformer(folder, backend="onnx")`. Raises OnnxValidationError (and writes no
    manifest) if parity fails."""
    from embslim.exporters.onnx import OnnxContract, export_onnx, validate_onnx
    from embslim.pipeline.embedding import export_index_dtypes
    from embslim.pipeline.tasks import get_task

    folder = Path(folder)
    task = get_task(meta.task_type)
    write_tokenizer_and_config(model, tokenizer, folder, meta=meta)
    extra = []
    if getattr(model, "spec", None) is not None:   # a SentenceEncoder: its pooling as sentence-transformers files
        from embslim.pipeline.sentence import write_sentence_transformers_files

        extra = write_sentence_transformers_files(folder, model.spec, hidden=int(model.config.hidden_size),
                                                  max_length=meta.max_length)
    contract = OnnxContract(input_names=meta.input_names, output_names=tuple(task.outputs), output_axes=task.outputs,
                            opset=opset, atol=atol)
    with export_index_dtypes(model):
        export_onnx(model, folder / "model.onnx", contract=contract)
        validate_onnx(model, folder / "model.onnx", contract=contract, max_length=meta.max_length)
    artifacts = [artifact_entry(folder, f, variant=v) for f, v in
                 (("model.onnx", "fp32"), ("tokenizer.json", "tokenizer"), ("config.json", "config"))]
    artifacts += [artifact_entry(folder, f, variant="sentence-transformers") for f in extra]
    write_manifest(folder, meta=meta, pad_id=int(tokenizer.pad_token_id or 0), artifacts=artifacts,
                   stages=stages or {}, metrics={})
    return artifacts


def add_artifacts(folder: str | Path, entries: list[dict]) -> dict:
    """List more files (e.g. quantized variants, `artifact_entry(...)`) in an existing bundle's
    manifest, replacing entries for the same file; the manifest is rewritten atomically."""
    folder = Path(folder)
    path = manifest_path(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; export the bundle first (embslim.pipeline.bundle.export_model)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = {e["file"] for e in entries}
    manifest["artifacts"] = [e for e in manifest.get("artifacts", []) if e.get("file") not in files] + list(entries)
    write_json_atomic(path, manifest)
    return manifest



def make_work_dir(work: str | Path, *, remove_trainers: bool = True) -> Path:
    """Create `embslim run`'s `<out>.work` folder (marked as embslim's), and remove the `.trainer-*`
    folders a killed fine-tune left in it (`remove_trainers`: not under a multi-process launcher,
    whose ranks share one such folder). Called only once the run's inputs have been checked."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).touch()
    for p in work.glob(".trainer-*") if remove_trainers else ():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed a killed fine-tune's %s", p)
    return work
