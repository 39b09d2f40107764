"""Read and check a bundle's `manifest.json`, and find and verify the files it lists.

A bundle is a directory; `manifest.json` says which task it solves (`task.type`: a
text-classification bundle's labels and whether it takes single texts or text pairs, a
feature-extraction bundle's `task.embedding` dim, pooling and normalisation, a
token-classification bundle's tag names in id order; max_length), which
tokenizer file and pad id to use, and lists every artifact as
`{file, variant, target, bytes, sha256}`. This module only reads that data: it never
imports or executes anything the manifest names, and it refuses artifact paths that point
outside the bundle directory.

Every failure is a `BundleError` that names the file, what was expected, what was found and
what to do (usually: re-export or re-download the bundle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import BundleError

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "TASK_TYPES",
    "artifact",
    "machine_targets",
    "read_manifest",
    "select_model_artifact",
    "sha256_file",
    "task_type",
    "verify_artifact",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

# `task.type`, named as Optimum's TasksManager (and embslim.pipeline.tasks) names tasks, and the
# embslim.runtime class that loads such bundles. Manifests written before `task.type` existed
# are text-classification bundles.
TASK_TYPES: dict[str, str] = {
    "text-classification": "Classifier",
    "feature-extraction": "Embedder",
    "token-classification": "Tagger",
}
DEFAULT_TASK_TYPE = "text-classification"
# Tasks whose bundles take one text per example (Optimum exports them without text pairs).
_SINGLE_TEXT_TASKS = ("feature-extraction", "token-classification")
# How a feature-extraction graph pools token embeddings into `sentence_embedding`
# (sentence-transformers' 1_Pooling/config.json modes the pipeline exports).
POOLINGS = ("mean", "cls", "max")

_CHUNK = 1 << 20  # 1 MiB: large enough to hash at disk speed, small enough to never matter for RSS.
_FIX = "re-export the bundle (or re-download it)"

# x86 quantization targets, best first. Dynamic-int8 models are portable across x86 CPUs
# (the target only changed quantizer settings), so any of them beats falling back to fp32.
_X86_TARGETS = ("avx512-vnni", "avx512", "avx2", "x86-64", "x86", "amd64")
_ARM_MACHINES = frozenset({"aarch64", "arm64", "armv8", "armv8l", "aarch64_be"})
_X86_MACHINES = frozenset({"x86_64", "amd64", "x64", "i386", "i686", "x86"})


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so big models never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# In every folder embslim is still writing (pipeline.bundle.staged_output); removed on commit.
STAGING_MARKER = ".embslim-staging"


def read_manifest(bundle_dir: str | os.PathLike[str], *, staging: bool = False) -> dict[str, Any]:
    """Load `<bundle_dir>/manifest.json` and check every key the runtime relies on.

    All problems are collected and reported in one `BundleError`, so a broken exporter is
    fixed in one round trip rather than one key at a time. A folder carrying embslim's staging
    marker (`STAGING_MARKER`: a bundle still being written, or left by a command that was killed)
    is refused unless `staging` is True, which only embslim's own validation of the folder it is
    writing passes.
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        what = "is a file, not a directory" if bundle.exists() else "does not exist"
        raise BundleError(
            f"bundle directory {str(bundle)!r} {what}; pass the folder that holds "
            f"{MANIFEST_FILE}, model.onnx and tokenizer.json"
        )
    if not staging and (bundle / STAGING_MARKER).exists():
        raise BundleError(
            f"{str(bundle)!r} is an unfinished bundle (the staging folder of an embslim command that is still "
            "running or did not finish); it is never loaded: run the command again, which removes it, or delete it"
        )
    path = bundle / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise BundleError(
            f"{path}: no {MANIFEST_FILE} in the bundle directory; is {str(bundle)!r} an "
            f"embslim bundle? {_FIX}"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot be read ({e}); {_FIX}") from e
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
            f"(char {e.pos}); the file is corrupted or was edited by hand: {_FIX}"
        ) from e
    if not isinstance(manifest, dict):
        raise BundleError(
            f"{path}: expected a JSON object at the top level, got "
            f"{type(manifest).__name__}; {_FIX}"
        )

    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(
            f"{path}: 'schema_version' must be the integer {SCHEMA_VERSION}, got {version!r}; "
            f"{_FIX}"
        )
    if version != SCHEMA_VERSION:
        hint = (
            "upgrade embslim's runtime to read this bundle"
            if version > SCHEMA_VERSION
            else "re-export the bundle with this version of embslim"
        )
        raise BundleError(
            f"{path}: schema_version {version} is not supported; this runtime reads "
            f"schema_version {SCHEMA_VERSION}: {hint}"
        )

    problems = _check_manifest(manifest, bundle)
    if problems:
        raise BundleError(f"{path} is incomplete or invalid: " + "; ".join(problems) + f"; {_FIX}")
    return manifest


def _check_manifest(manifest: Mapping[str, Any], bundle: Path) -> list[str]:
    problems: list[str] = []
    task = manifest.get("task")
    if not isinstance(task, dict):
        problems.append(f"'task' must be an object, got {_kind(task)}")
    else:
        kind = task.get("type", DEFAULT_TASK_TYPE)
        if not isinstance(kind, str) or not kind:
            problems.append(
                f"'task.type' must be a task name such as {DEFAULT_TASK_TYPE!r}, got {kind!r}"
            )
        embedding = kind == "feature-extraction"
        labels = task.get("labels")
        if (
            not isinstance(labels, list)
            or not (labels or embedding)
            or not all(isinstance(label, str) for label in labels)
        ):
            what = (
                "a list of strings (empty for a feature-extraction bundle)"
                if embedding
                else "a non-empty list of strings"
            )
            problems.append(f"'task.labels' must be {what}, got {labels!r}")
        elif len(set(labels)) != len(labels):
            problems.append(f"'task.labels' has duplicates: {labels!r}")
        if not isinstance(task.get("pair"), bool):
            problems.append(f"'task.pair' must be true or false, got {task.get('pair')!r}")
        elif kind in _SINGLE_TEXT_TASKS and task["pair"]:
            problems.append(f"'task.pair' must be false for a {kind} bundle, got true")
        if embedding:
            problems += _check_embedding(task.get("embedding"))
        if not _is_positive_int(task.get("max_length")):
            problems.append(
                f"'task.max_length' must be a positive integer, got {task.get('max_length')!r}"
            )

    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict):
        problems.append(f"'tokenizer' must be an object, got {_kind(tok)}")
    else:
        if not isinstance(tok.get("file"), str) or not tok.get("file"):
            problems.append(f"'tokenizer.file' must be a file name, got {tok.get('file')!r}")
        else:
            problems += _check_file_name(tok["file"], bundle, where="'tokenizer.file'")
        pad_id = tok.get("pad_id")
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
            problems.append(f"'tokenizer.pad_id' must be a non-negative integer, got {pad_id!r}")

    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        problems.append(f"'artifacts' must be a non-empty list, got {_kind(artifacts)}")
        return problems
    for i, entry in enumerate(artifacts):
        where = f"'artifacts[{i}]'"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be an object, got {_kind(entry)}")
            continue
        missing = [k for k in ("file", "variant", "target", "bytes", "sha256") if k not in entry]
        if missing:
            problems.append(f"{where} lacks {', '.join(missing)}")
            continue
        for key in ("file", "variant", "target"):
            if not isinstance(entry[key], str) or not entry[key]:
                problems.append(f"{where}.{key} must be a non-empty string, got {entry[key]!r}")
        if isinstance(entry["file"], str) and entry["file"]:
            problems += _check_file_name(entry["file"], bundle, where=f"{where}.file")
        size = entry["bytes"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(f"{where}.bytes must be a non-negative integer, got {size!r}")
        digest = entry["sha256"]
        if not (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest.lower())
        ):
            problems.append(f"{where}.sha256 must be 64 hex digits, got {digest!r}")
    return problems


def _check_embedding(spec: object) -> list[str]:
    """`task.embedding` of a feature-extraction bundle: {"dim", "pooling", "normalize"}."""
    if not isinstance(spec, dict):
        return [
            f"'task.embedding' must be an object like "
            f'{{"dim": 384, "pooling": "mean", "normalize": true}}, got {_kind(spec)}'
        ]
    problems = []
    if not _is_positive_int(spec.get("dim")):
        problems.append(f"'task.embedding.dim' must be a positive integer, got {spec.get('dim')!r}")
    if spec.get("pooling") not in POOLINGS:
        problems.append(
            f"'task.embedding.pooling' must be one of {', '.join(POOLINGS)}, "
            f"got {spec.get('pooling')!r}"
        )
    if not isinstance(spec.get("normalize"), bool):
        problems.append(
            f"'task.embedding.normalize' must be true or false, got {spec.get('normalize')!r}"
        )
    return problems


def task_type(manifest: Mapping[str, Any]) -> str:
    """The manifest's `task.type` (Optimum's task name); "text-classification" when it has none
    (manifests written before embslim had other tasks)."""
    task = manifest.get("task")
    kind = task.get("type", DEFAULT_TASK_TYPE) if isinstance(task, Mapping) else None
    return kind if isinstance(kind, str) and kind else DEFAULT_TASK_TYPE


def _check_file_name(name: str, bundle: Path, *, where: str) -> list[str]:
    """Artifact names are plain paths inside the bundle: never absolute, never `..`."""
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        return [f"{where} {name!r} points outside the bundle directory"]
    return []


def artifact(
    manifest: Mapping[str, Any],
    *,
    variant: str | None = None,
    file: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """The one artifact entry with this `file`, or this `variant` (and `target`, if given).

    Raises `BundleError` listing what the bundle has when nothing matches, or when a
    variant matches several entries and no `target` tells them apart.
    """
    if (variant is None) == (file is None):
        raise ValueError("artifact() needs exactly one of variant= or file=")
    entries: list[dict[str, Any]] = list(manifest.get("artifacts", []))
    if file is not None:
        found = [e for e in entries if e.get("file") == file]
        wanted = f"file {file!r}"
    else:
        found = [e for e in entries if e.get("variant") == variant]
        wanted = f"variant {variant!r}"
        if target is not None:
            found = [e for e in found if _norm_target(e.get("target")) == _norm_target(target)]
            wanted += f" with target {target!r}"
    if not found:
        raise BundleError(
            f"the bundle has no artifact with {wanted}; available: {describe_artifacts(entries)}; "
            "pick one of those, or re-export the bundle with the variant you need"
        )
    if len(found) > 1:
        raise BundleError(
            f"the bundle has {len(found)} artifacts with {wanted}: {describe_artifacts(found)}; "
            "pass target= or file= to choose one"
        )
    return found[0]


def describe_artifacts(entries: Iterable[Mapping[str, Any]]) -> str:
    """`variant 'fp32' (target any, model.onnx), ...` for error messages."""
    parts = [
        f"variant {e.get('variant')!r} (target {e.get('target')}, {e.get('file')})" for e in entries
    ]
    return ", ".join(parts) if parts else "none"


def machine_targets(
    machine: str | None = None, *, cpu_flags: frozenset[str] | None = None
) -> tuple[str, ...]:
    """Quantization targets that suit this machine, best first (normalised spelling).

    `machine` defaults to `platform.machine()`; `cpu_flags` to the flags in /proc/cpuinfo
    (embslim.runtime.cpu; used only to put avx512-vnni ahead of avx2 on CPUs with an int8 dot
    product: AVX512-VNNI, AVX-VNNI or AMX-INT8).
    """
    m = (machine if machine is not None else platform.machine()).lower()
    if m in _ARM_MACHINES:
        return ("arm64",)
    if m in _X86_MACHINES:
        from .cpu import cpu_flags as read_cpu_flags, has_int8_dot_product

        flags = read_cpu_flags() if cpu_flags is None else cpu_flags
        if has_int8_dot_product(flags, m):   # AVX512-VNNI, AVX-VNNI or AMX: the s8-weight files are exact and fast
            return _X86_TARGETS
        rest = tuple(t for t in _X86_TARGETS if t != "avx2")
        return ("avx2", *rest)
    return ()


def select_model_artifact(
    manifest: Mapping[str, Any],
    *,
    variant: str = "fp32",
    file: str | None = None,
    machine: str | None = None,
) -> dict[str, Any]:
    """The model artifact `Classifier.from_bundle` should load.

    - `file`: that exact artifact.
    - `variant="auto"`: an int8 ONNX artifact whose target suits this machine (arm64 on
      aarch64; avx512-vnni, avx2 or any x86 target on x86_64; then target "any"), else fp32.
    - any other variant: the artifact with that variant; if several share it (one per
      target), the one that suits this machine.
    """
    if file is not None:
        return artifact(manifest, file=file)
    entries: list[dict[str, Any]] = list(manifest.get("artifacts", []))
    preferred = (*machine_targets(machine), "any")
    if variant == "auto":
        int8 = [
            e
            for e in entries
            if str(e.get("variant", "")).lower().startswith("int8")
            and str(e.get("file", "")).endswith(".onnx")
        ]
        # per target, dynamic int8 ("int8") before other int8 kinds ("int8-static"), whatever
        # order the manifest lists them in: "auto" loads what it always loaded
        int8.sort(key=lambda e: str(e.get("variant", "")).lower() != "int8")
        for t in preferred:
            for e in int8:
                if _norm_target(e.get("target")) == t:
                    logger.debug("variant='auto' picked %s (target %s)", e["file"], e["target"])
                    return e
        logger.debug("variant='auto': no int8 artifact for this machine, using fp32")
        return artifact(manifest, variant="fp32")
    models = [e for e in entries if str(e.get("file", "")).endswith((".onnx", ".ort"))]   # not the tokenizer, configs
    found = [e for e in models if e.get("variant") == variant]
    if len(found) > 1:
        onnx_only = [e for e in found if str(e.get("file", "")).endswith(".onnx")]
        found = onnx_only or found
    if len(found) > 1:
        for t in preferred:
            for e in found:
                if _norm_target(e.get("target")) == t:
                    return e
        raise BundleError(
            f"the bundle has {len(found)} artifacts with variant {variant!r} and none is built "
            f"for this machine ({machine or platform.machine()}): {describe_artifacts(found)}; "
            "pass file= to choose one"
        )
    if len(found) == 1:
        return found[0]
    raise BundleError(
        f"the bundle has no artifact with variant {variant!r}; available: {describe_artifacts(models)} (model files "
        "only); pick one of those, or \"auto\", or re-export the bundle with the variant you need"
    )


def verify_artifact(bundle_dir: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    """Check an artifact's size, then its sha256, against the manifest; return its path."""
    path = Path(bundle_dir) / entry["file"]
    if not path.is_file():
        raise BundleError(
            f"{entry['file']}: listed in {MANIFEST_FILE} but missing from "
            f"{str(Path(bundle_dir))!r}; "
            f"the bundle is incomplete: {_FIX}"
        )
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(
            f"{entry['file']}: size mismatch: manifest says {entry['bytes']} bytes, file has "
            f"{size} bytes; the bundle was truncated, modified or corrupted — {_FIX}"
        )
    digest = sha256_file(path)
    if digest != str(entry["sha256"]).lower():
        raise BundleError(
            f"{entry['file']}: sha256 mismatch: manifest says {entry['sha256']}, file has "
            f"{digest}; the bundle was modified or corrupted — {_FIX}"
        )
    return path


def _norm_target(target: object) -> str:
    return str(target).strip().lower().replace("_", "-")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _kind(value: object) -> str:
    return "nothing (missing)" if value is None else type(value).__name__
