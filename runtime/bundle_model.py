"""`BundleModel`: what every runtime class does with a bundle before its task-specific step.

`from_bundle` reads and checks the manifest, refuses a bundle of another task (one line naming
the class that loads it), picks the model variant, checks the sha256 of the model and tokenizer
files, configures the tokenizer once (padding off, truncation at the bundle's max_length) and
opens the ONNX Runtime session; the constructor checks the graph's inputs, lets the subclass
check its output, and probes the graph with the tokenizer's largest token id. Calls validate
their texts, tokenize and pad them one batch at a time and run the one graph output the class
needs (`_output`). A subclass adds only how that output becomes results: `Classifier` turns
`logits` into labels, `Embedder` returns `sentence_embedding` rows, `Tagger` turns per-token
`logits` into spans (it reads each batch's encodings too, through `_batches`).

After loading the object is read-only: no call keeps state on `self`, and ONNX Runtime's
`InferenceSession.run` and the tokenizer's `encode_batch` are thread-safe, so one instance
can serve many threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from .errors import BundleError, InputError
from .manifest import TASK_TYPES, read_manifest, select_model_artifact, task_type, verify_artifact
from .session import check_token_ids, graph_inputs, graph_outputs, open_session
from .texts import DEFAULT_MAX_CHARS, as_list, check_max_chars, check_strings, clean
from .tokens import load_tokenizer, pad_batch

__all__ = ["BundleModel", "batch_dependent"]

logger = logging.getLogger(__name__)

# What this runtime can load; TASK_TYPES may name classes a newer runtime has.
_BUILT = ("Classifier", "Embedder", "Tagger")

Model = TypeVar("Model", bound="BundleModel")


class BundleModel:
    """Base of the runtime classes; build a subclass with `Subclass.from_bundle(path)`.

    A subclass sets `task_type` (the manifest's `task.type` it loads), `_output` (the graph
    output it runs) and `_verb` (what it does to texts, for messages), and overrides
    `_check_output` (the output's name and shape, at load) and `_describe` (for repr).
    """

    task_type: ClassVar[str] = ""
    _output: ClassVar[str] = ""
    _verb: ClassVar[str] = "takes"
    # True: every session run takes one text (from_bundle(..., batch_invariant=True) on a file
    # whose activations are quantized per batch); set once at load, read-only afterwards.
    batch_invariant: bool = False

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
        check_max_chars(max_chars)
        self.model_path: Path = Path(model_path)
        type(self)._check_task(manifest, where=str(self.model_path.parent))
        task = manifest["task"]
        self.manifest: dict[str, Any] = dict(manifest)
        self.max_length: int = int(task["max_length"])
        self.task_name: str = str(task.get("name", ""))
        # label / tag names in output order (() for an embedder); read by _check_output below
        self.labels: tuple[str, ...] = tuple(task.get("labels") or ())
        self.artifact: dict[str, Any] = dict(artifact) if artifact is not None else {}
        self.max_chars: int | None = max_chars
        self._pad_id: int = int(manifest["tokenizer"]["pad_id"])
        self._session = session
        self._tokenizer = tokenizer
        self._input_dtypes = graph_inputs(session, self.model_path)
        self._check_output(session)
        probe = check_token_ids(
            session,
            tokenizer,
            self._input_dtypes,
            output=self._output,
            model_path=self.model_path,
            tokenizer_file=str(manifest["tokenizer"].get("file", "tokenizer.json")),
            pad_id=self._pad_id,
        )
        self._check_probe(probe)

    @classmethod
    def from_bundle(
        cls: type[Model],
        path: str | os.PathLike[str],
        *,
        variant: str = "fp32",
        file: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        max_chars: int | None = DEFAULT_MAX_CHARS,
        memory_arena: bool = True,
        staging: bool = False,
        batch_invariant: bool = False,
    ) -> Model:
        """Load a bundle directory.

        variant: "fp32", "int8", ... as listed in the manifest, or "auto" (an int8 artifact
            built for this machine's CPU if the bundle has one, else fp32).
        file: load this artifact file instead of choosing by variant.
        threads: ONNX Runtime intra-op threads (None = ORT's default, all cores).
        verify: check the model's and tokenizer's size and sha256 against the manifest
            first (hashing a 12 MB model takes ~10 ms; turn it off only for trusted files).
        max_chars: refuse (with `InputError`) any text longer than this many characters;
            None disables the check. Texts longer than max_length tokens but under this
            limit are truncated, as usual.
        memory_arena: ONNX Runtime's CPU memory arena. On (the default), the activation
            memory of the largest batch so far stays reserved for reuse, which suits a
            script; False frees it after every run, which a long-running service wants so
            that memory goes back to its resting level after a burst (with glibc, together
            with `malloc_trim`; see sample_apps/service/memory.py).
        staging: also load a folder embslim is still writing (its own validation stages);
            otherwise such a folder is refused with a BundleError.
        batch_invariant: run a file whose activations are quantized per batch one text at a
            time, whatever `batch_size` a call passes, so a text's output never depends on the
            texts sent with it. Dynamic int8 (variant "int8", ONNX Runtime's
            `quantize_dynamic`, also inside "int4" files and their ".ort" forms) computes each
            activation scale from the whole batch it runs on: on an SST-2 bundle 9-15 of 872
            dev labels differ between batch 1 and batch 32. One run per text also pads
            nothing: on those 872 sentences (2 cores) batch 1 took 8.4 s and batch 32 13.1 s.
            fp32 and static int8 ("int8-static", scales fixed at calibration) are
            batch-invariant already and keep their batching. The instance's
            `batch_invariant` says whether it is in effect.

        Raises `BundleError` (one line) for a missing, damaged, tampered or incompatible
        bundle, and for a bundle of another task (naming the class that loads it);
        `ValueError` for a bad `threads`, `max_chars` or `batch_invariant`.
        """
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        check_max_chars(max_chars)
        if not isinstance(batch_invariant, bool):
            raise ValueError(f"batch_invariant must be True or False, got {batch_invariant!r}")
        bundle = Path(path)
        manifest = read_manifest(bundle, staging=staging)
        cls._check_task(manifest, where=str(bundle))  # before hashing anything
        entry = select_model_artifact(manifest, variant=variant, file=file)
        tok_entry = _tokenizer_entry(manifest)
        if verify:
            model_path = verify_artifact(bundle, entry)
            if tok_entry is None:
                raise BundleError(
                    f"{manifest['tokenizer']['file']}: not listed in the manifest's artifacts "
                    "with a sha256, so it cannot be verified; re-export the bundle, or pass "
                    "verify=False if you trust the files"
                )
            tok_path = verify_artifact(bundle, tok_entry)
        else:
            model_path = bundle / entry["file"]
            tok_path = bundle / manifest["tokenizer"]["file"]
        for p in (model_path, tok_path):
            if not p.is_file():
                raise BundleError(
                    f"{p.name}: named in the manifest but missing from {str(bundle)!r}; "
                    "re-export the bundle (or re-download it)"
                )
        tokenizer = load_tokenizer(tok_path, max_length=int(manifest["task"]["max_length"]))
        session = open_session(model_path, threads=threads, memory_arena=memory_arena)
        logger.debug("loaded %s (variant %s) from %s", entry["file"], entry["variant"], bundle)
        model = cls(
            session,
            tokenizer,
            manifest=manifest,
            model_path=model_path,
            artifact=entry,
            max_chars=max_chars,
        )
        model.batch_invariant = batch_invariant and batch_dependent(entry)
        return model

    @property
    def input_names(self) -> tuple[str, ...]:
        """Inputs the graph declares: a subset of input_ids, attention_mask, token_type_ids."""
        return tuple(self._input_dtypes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model_path.name!r}, "
            f"variant={self.artifact.get('variant')!r}, {', '.join(self._describe())}, "
            f"max_length={self.max_length})"
        )

    # -- what a subclass provides ---------------------------------------------------------

    def _check_output(self, session: ort.InferenceSession) -> None:
        """Raise `BundleError` unless the graph declares `_output` as the class needs it."""
        raise NotImplementedError

    def _require_output(self, session: ort.InferenceSession, *, axes: tuple[str, ...], width: int, width_axis: str,
                        width_detail: str, bundle_kind: str = "") -> None:
        """Raise `BundleError` unless the graph declares `_output` as [*axes, width] (a symbolic
        width passes here; `_check_probe` sees it). `width_axis` names the last axis in the
        message ("labels", "dim"), `width_detail` where the width comes from ("3 labels"),
        `bundle_kind` the bundle ("an embedding bundle's") when the message should say what
        its graph outputs."""
        outputs = graph_outputs(session)
        name = self._output
        if name not in outputs:
            says = f"{bundle_kind} graph outputs '{name}' [{', '.join((*axes, width_axis))}]: " if bundle_kind else ""
            raise BundleError(f"{self.model_path.name}: the graph has no '{name}' output (it has "
                              f"{', '.join(outputs)}); {says}re-export the bundle")
        shape = outputs[name].shape
        if len(shape) != len(axes) + 1 or (isinstance(shape[-1], int) and shape[-1] != width):
            raise BundleError(f"{self.model_path.name}: output '{name}' has shape {shape}, expected "
                              f"[{', '.join((*axes, str(width)))}] for the manifest's {width_detail}; re-export the bundle")

    def _check_probe(self, output: np.ndarray) -> None:
        """Check `_output` of a one-token run (e.g. its width); nothing by default."""

    def _describe(self) -> list[str]:
        """The task-specific `name=value` parts of repr()."""
        return []

    # -- the task check -------------------------------------------------------------------

    @classmethod
    def _check_task(cls, manifest: Mapping[str, Any], *, where: str) -> None:
        """`BundleError` (one line) when the manifest's task.type is not this class's."""
        kind = task_type(manifest)
        if kind == cls.task_type:
            return
        wanted = TASK_TYPES.get(kind)
        if wanted in _BUILT:
            raise BundleError(
                f"{where!r} is a {kind} bundle; load it with embslim.runtime.{wanted}"
                f".from_bundle(...), not {cls.__name__} (or with embslim.runtime.load_bundle"
                "(...), which picks the class from the manifest)"
            )
        loads = ", ".join(f"{t} bundles with {c}" for t, c in TASK_TYPES.items() if c in _BUILT)
        if wanted is not None:
            raise BundleError(
                f"{where!r} is a {kind} bundle, which needs embslim.runtime.{wanted}; this "
                f"runtime has no {wanted} yet (it loads {loads}): upgrade embslim when it ships "
                f"{wanted}"
            )
        raise BundleError(
            f"{where!r} is a bundle of task {kind!r}, which this runtime does not know (it "
            f"loads {loads}); upgrade embslim, or re-export the bundle for one of those tasks"
        )

    # -- internals (no state is written here: safe to run from many threads) --------------

    def _single_texts(self, texts: Any, *, caller: str) -> list[str]:
        """Validate a str or an iterable of str; return them with lone surrogates replaced."""
        items = as_list(texts, name="texts", caller=caller)
        for i, item in enumerate(items):
            if isinstance(item, (tuple, list)):
                raise InputError(
                    f"texts[{i}] is a {type(item).__name__}, but this bundle {self._verb} "
                    f"single texts{self._task_hint()}; pass one string per example, "
                    "e.g. ['a great movie']"
                )
        self._check_texts(items, name="texts")
        return clean(items)

    def _check_texts(self, items: Sequence[Any], *, name: str) -> None:
        check_strings(items, name=name)
        for i, item in enumerate(items):
            self._check_length(item, name=f"{name}[{i}]")

    def _check_length(self, text: str, *, name: str) -> None:
        if self.max_chars is not None and len(text) > self.max_chars:
            raise InputError(
                f"{name} has {len(text):,} characters, more than max_chars={self.max_chars:,}; "
                f"only the first {self.max_length} tokens are used anyway, so send the start "
                f"of the text, or raise the limit with {type(self).__name__}.from_bundle(..., "
                "max_chars=N)"
            )

    def _task_hint(self) -> str:
        return f" (task {self.task_name!r})" if self.task_name else ""

    def _encode(self, firsts: list[str], seconds: list[str] | None) -> dict[str, np.ndarray]:
        """Tokenize and pad to the batch's longest row: the feed dict for the session."""
        return pad_batch(
            self._encodings(firsts, seconds), pad_id=self._pad_id, dtypes=self._input_dtypes
        )

    def _encodings(self, firsts: list[str], seconds: list[str] | None) -> list[Encoding]:
        """The tokenizer's encodings (truncated at max_length, not padded), one per text."""
        batch: list[Any] = firsts if seconds is None else list(zip(firsts, seconds))
        return self._tokenizer.encode_batch(batch)

    def _batches(
        self, firsts: list[str], seconds: list[str] | None, *, batch_size: int
    ) -> Iterator[tuple[list[Encoding], np.ndarray]]:
        """(encodings, `_output`) for each run of `batch_size` texts, in input order; each batch
        is padded to its own longest row, so output rows past a text's tokens are padding."""
        if self.batch_invariant:
            batch_size = 1
        for start in range(0, len(firsts), batch_size):
            stop = start + batch_size
            second = None if seconds is None else seconds[start:stop]
            encodings = self._encodings(firsts[start:stop], second)
            feeds = pad_batch(encodings, pad_id=self._pad_id, dtypes=self._input_dtypes)
            (out,) = self._session.run([self._output], feeds)
            yield encodings, out

    def _run(self, firsts: list[str], seconds: list[str] | None, *, batch_size: int) -> np.ndarray:
        """`_output` for every text, `batch_size` texts per session run (each batch padded to
        its own longest row), concatenated in input order."""
        chunks = [out for _, out in self._batches(firsts, seconds, batch_size=batch_size)]
        return np.concatenate(chunks, axis=0)


def batch_dependent(entry: Mapping[str, Any]) -> bool:
    """Whether an artifact's outputs can depend on the batch it runs in beyond float rounding:
    every quantized variant except static int8 ("int8-static..."), whose activation scales are
    fixed at calibration. Dynamic int8 ("int8", "int8-ort") computes activation scales per batch;
    "int4" and "mixed" (int8 / 4-bit by layer) files use dynamic int8 for what is not 4-bit. fp32
    and non-model entries are not."""
    variant = str(entry.get("variant", "")).lower()
    return variant.startswith(("int", "mixed")) and not variant.startswith("int8-static")


def _tokenizer_entry(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The artifact entry that pins tokenizer.json's size and sha256, if the manifest has one."""
    name = manifest["tokenizer"]["file"]
    for entry in manifest["artifacts"]:
        if entry.get("file") == name:
            return entry
    digest = manifest["tokenizer"].get("sha256")
    if isinstance(digest, str):
        entry = {"file": name, "sha256": digest}
        if isinstance(manifest["tokenizer"].get("bytes"), int):
            entry["bytes"] = manifest["tokenizer"]["bytes"]
        return entry
    return None
