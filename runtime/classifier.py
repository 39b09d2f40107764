"""`Classifier`: load a bundle and classify texts with ONNX Runtime.

This is the part an app embeds, so it needs only onnxruntime, numpy and tokenizers.
`Classifier.from_bundle` reads the manifest, picks the model variant, checks the sha256 of
the model and tokenizer files, and configures the tokenizer once (padding off, truncation at
the bundle's max_length). After that the object is read-only: `predict`, `logits` and
`encode` keep no per-call state on `self`, and ONNX Runtime's `InferenceSession.run` and the
tokenizer's `encode_batch` are thread-safe, so one `Classifier` can serve many threads.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .errors import BundleError, InputError, InputTypeError
from .manifest import read_manifest, select_model_artifact, verify_artifact
from .tokens import load_tokenizer, pad_batch

__all__ = ["Classifier", "Prediction", "check_bundle_token_ids", "replace_lone_surrogates"]

logger = logging.getLogger(__name__)

# What the graph may ask for, and the integer types we can feed it.
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INPUT_DTYPES = {"tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}
_OUTPUT = "logits"

# A text is truncated to max_length tokens anyway, but the tokenizer reads all of it first:
# 100,000 characters (~15,000 words) took ~0.17 s with the MiniLM tokenizer on this project's
# 2-core machine, so a 100 MB string would hold a thread (and its memory) for minutes.
# Anything longer is almost certainly a mistake (a whole file read as one "text"), so it is
# refused with a message, not silently clipped.
DEFAULT_MAX_CHARS = 100_000

# A UTF-16 surrogate code point (U+D800..U+DFFF) cannot be encoded as UTF-8, and tokenizers
# refuses such a str with a bare TypeError. They reach Python when a client cuts an emoji in
# half ("so cute \ud83d" in JSON), from os.fsdecode/surrogateescape, or from WTF-8 bytes.
_SURROGATE = re.compile("[\ud800-\udfff]")

TextInput = Union[str, Sequence[str], Sequence[tuple[str, str]], Sequence[Sequence[str]]]


@dataclass(frozen=True)
class Prediction:
    """One example's result. `score` is the probability of `label` (the argmax)."""

    label: str
    score: float
    probabilities: dict[str, float]
    top_k: tuple[tuple[str, float], ...]  # (label, probability), best first


class Classifier:
    """A text (or text-pair) classifier loaded from an embslim bundle.

    Build it with `Classifier.from_bundle(path)`; the constructor takes an already-open
    session and configured tokenizer (see `from_bundle`) and is meant for tests and tools.
    """

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
        _check_max_chars(max_chars)
        task = manifest["task"]
        self.manifest: dict[str, Any] = dict(manifest)
        self.labels: tuple[str, ...] = tuple(task["labels"])
        self.max_length: int = int(task["max_length"])
        self.is_pair: bool = bool(task["pair"])
        self.task_name: str = str(task.get("name", ""))
        self.model_path: Path = Path(model_path)
        self.artifact: dict[str, Any] = dict(artifact) if artifact is not None else {}
        self.max_chars: int | None = max_chars
        self._pad_id: int = int(manifest["tokenizer"]["pad_id"])
        self._session = session
        self._tokenizer = tokenizer
        self._input_dtypes = _graph_inputs(session, self.model_path)
        _check_graph_output(session, self.model_path, n_labels=len(self.labels))
        _check_token_ids(
            session,
            tokenizer,
            self._input_dtypes,
            model_path=self.model_path,
            tokenizer_file=str(manifest["tokenizer"].get("file", "tokenizer.json")),
            pad_id=self._pad_id,
        )

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        variant: str = "fp32",
        file: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        max_chars: int | None = DEFAULT_MAX_CHARS,
        memory_arena: bool = True,
        staging: bool = False,
    ) -> Classifier:
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
        """
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        _check_max_chars(max_chars)
        bundle = Path(path)
        manifest = read_manifest(bundle, staging=staging)
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
        session = _open_session(model_path, threads=threads, memory_arena=memory_arena)
        logger.debug("loaded %s (variant %s) from %s", entry["file"], entry["variant"], bundle)
        return cls(
            session,
            tokenizer,
            manifest=manifest,
            model_path=model_path,
            artifact=entry,
            max_chars=max_chars,
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """Inputs the graph declares: a subset of input_ids, attention_mask, token_type_ids."""
        return tuple(self._input_dtypes)

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
        _check_batch_size(batch_size)
        return self._logits(firsts, seconds, batch_size=batch_size)

    def predict(
        self, texts: TextInput, *, batch_size: int = 32, top_k: int = 1
    ) -> list[Prediction]:
        """Classify a text, a list of texts, or (pair bundles) a list of (text, text_pair).

        Always returns a list, one `Prediction` per input, in input order.
        """
        firsts, seconds = self._split(texts, None, caller="predict")
        _check_batch_size(batch_size)
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

    def __repr__(self) -> str:
        kind = "pair" if self.is_pair else "single"
        return (
            f"Classifier(model={self.model_path.name!r}, variant={self.artifact.get('variant')!r}, "
            f"labels={list(self.labels)!r}, {kind}, max_length={self.max_length})"
        )

    # -- internals (no state is written here: safe to run from many threads) --------------

    def _encode(self, firsts: list[str], seconds: list[str] | None) -> dict[str, np.ndarray]:
        batch: list[Any] = firsts if seconds is None else list(zip(firsts, seconds))
        encodings = self._tokenizer.encode_batch(batch)
        return pad_batch(encodings, pad_id=self._pad_id, dtypes=self._input_dtypes)

    def _logits(
        self, firsts: list[str], seconds: list[str] | None, *, batch_size: int
    ) -> np.ndarray:
        chunks = []
        for start in range(0, len(firsts), batch_size):
            stop = start + batch_size
            second = None if seconds is None else seconds[start:stop]
            feeds = self._encode(firsts[start:stop], second)
            (out,) = self._session.run([_OUTPUT], feeds)
            chunks.append(out)
        logits = np.concatenate(chunks, axis=0)
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
        items = _as_list(texts, name="texts", caller=caller)
        if pairs is not None:
            if not self.is_pair:
                raise InputError(
                    f"{caller}() got pairs=, but this bundle classifies single texts"
                    f"{self._task_hint()}; drop pairs="
                )
            seconds = _as_list(pairs, name="pairs", caller=caller)
            if len(seconds) != len(items):
                raise InputError(
                    f"{caller}() got {len(items)} texts but {len(seconds)} pairs; pass one "
                    "second text per text"
                )
            self._check_texts(items, name="texts")
            self._check_texts(seconds, name="pairs")
            return _clean(items), _clean(seconds)
        if not self.is_pair:
            for i, item in enumerate(items):
                if isinstance(item, (tuple, list)):
                    raise InputError(
                        f"texts[{i}] is a {type(item).__name__}, but this bundle classifies "
                        f"single texts{self._task_hint()}; pass one string per example, "
                        "e.g. ['a great movie']"
                    )
            self._check_texts(items, name="texts")
            return _clean(items), None
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
                    f"texts[{i}] is {_describe(item)}, expected a (text, text_pair) tuple of "
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
                        f"texts[{i}][{j}] is {_describe(part)}, expected str; convert it with "
                        "str() or drop the example"
                    )
                self._check_length(part, name=f"texts[{i}][{j}]")
            firsts.append(replace_lone_surrogates(item[0]))
            seconds_.append(replace_lone_surrogates(item[1]))
        return firsts, seconds_

    def _check_texts(self, items: Sequence[Any], *, name: str) -> None:
        _check_strings(items, name=name)
        for i, item in enumerate(items):
            self._check_length(item, name=f"{name}[{i}]")

    def _check_length(self, text: str, *, name: str) -> None:
        if self.max_chars is not None and len(text) > self.max_chars:
            raise InputError(
                f"{name} has {len(text):,} characters, more than max_chars={self.max_chars:,}; "
                f"only the first {self.max_length} tokens are used anyway, so send the start "
                "of the text, or raise the limit with Classifier.from_bundle(..., max_chars=N)"
            )

    def _task_hint(self) -> str:
        return f" (task {self.task_name!r})" if self.task_name else ""


def replace_lone_surrogates(text: str) -> str:
    """`text` with every unpaired UTF-16 surrogate replaced by U+FFFD, as browsers do.

    A high surrogate followed by a low one ("\\ud83d\\ude00", e.g. from CESU-8 bytes) is
    joined into the character it encodes (U+1F600); any other surrogate code point becomes
    U+FFFD (the replacement character, which BERT tokenizers map to [UNK] or drop). Texts
    without surrogates are returned as they are, at the cost of one regex scan.
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _clean(texts: list[str]) -> list[str]:
    return [replace_lone_surrogates(t) for t in texts]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row max so large logits cannot overflow."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _as_list(value: Any, *, name: str, caller: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if (
        isinstance(value, (bytes, bytearray, Mapping, AbstractSet))
        or not isinstance(value, Iterable)
    ):
        raise InputTypeError(
            f"{caller}() expects {name} as a str or a list of str, got {_describe(value)}; "
            f"pass e.g. {caller}(['a great movie'])"
        )
    items = list(value)
    if not items:
        raise InputError(
            f"{caller}() got an empty list of {name}; pass at least one text, "
            f"e.g. {caller}(['a great movie'])"
        )
    return items


def _check_strings(items: Sequence[Any], *, name: str) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            hint = "decode it first" if isinstance(item, (bytes, bytearray)) else (
                "convert it with str() or drop the example"
            )
            raise InputTypeError(f"{name}[{i}] is {_describe(item)}, expected str; {hint}")


def _check_max_chars(max_chars: int | None) -> None:
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ValueError(
            f"max_chars must be a positive integer or None (no limit), got {max_chars!r}"
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} ({shown})"


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


# ONNX Runtime session config every embslim session uses (app, validation, latency probe).
# "session.x64quantprecision": on x86 CPUs WITHOUT VNNI (SSE4.1/AVX2/AVX512F), ORT's u8 x s8 int8
# kernels use VPMADDUBSW, whose 16-bit pair sums saturate when weights leave [-64, 63]; with this
# entry ORT converts such layers to u8 x u8, which is exact. It changes nothing on ARM, on VNNI
# CPUs or for u8-weight (avx2 target) files. Without it an s8 (arm64 target) file's x86 labels
# differed from emulated aarch64 ORT on 3.5% of 200 SST-2 sentences.
SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}


def session_options(
    threads: int | None = None, *, exact_int8: bool = True, memory_arena: bool = True
) -> ort.SessionOptions:
    """ORT session options with SESSION_CONFIG and, when given, the intra-op thread count.
    exact_int8=False leaves out the x86 u8 x u8 rewrite, e.g. to compare a .onnx with its .ort
    file, to which ORT cannot apply it. memory_arena=False turns ORT's CPU arena off."""
    options = ort.SessionOptions()
    if not memory_arena:
        options.enable_cpu_mem_arena = False
    for key, value in SESSION_CONFIG.items():
        if exact_int8 or key != "session.x64quantprecision":
            options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def _open_session(
    model_path: Path, *, threads: int | None, memory_arena: bool = True
) -> ort.InferenceSession:
    options = session_options(threads, memory_arena=memory_arena)
    try:
        return ort.InferenceSession(
            os.fspath(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ORT raises its own exception types, not subclasses of one base
        raise BundleError(
            f"{model_path.name}: onnxruntime {ort.__version__} cannot load it ({e}); the file "
            "may be corrupted or need a newer onnxruntime: re-export the bundle or upgrade "
            "onnxruntime"
        ) from e


def _graph_inputs(session: ort.InferenceSession, model_path: Path) -> dict[str, np.dtype]:
    dtypes: dict[str, np.dtype] = {}
    for node in session.get_inputs():
        if node.name not in _KNOWN_INPUTS:
            raise BundleError(
                f"{model_path.name}: the graph takes an input {node.name!r} the runtime cannot "
                f"provide; expected only {', '.join(_KNOWN_INPUTS)}: re-export the bundle"
            )
        if node.type not in _INPUT_DTYPES:
            raise BundleError(
                f"{model_path.name}: input {node.name!r} is {node.type}, expected tensor(int64); "
                "re-export the bundle"
            )
        dtypes[node.name] = _INPUT_DTYPES[node.type]
    if "input_ids" not in dtypes:
        raise BundleError(
            f"{model_path.name}: the graph has no 'input_ids' input (it has "
            f"{', '.join(dtypes) or 'none'}); this is not a text classifier bundle: re-export it"
        )
    return dtypes


def _check_graph_output(session: ort.InferenceSession, model_path: Path, *, n_labels: int) -> None:
    outputs = {node.name: node for node in session.get_outputs()}
    if _OUTPUT not in outputs:
        raise BundleError(
            f"{model_path.name}: the graph has no 'logits' output (it has "
            f"{', '.join(outputs)}); re-export the bundle"
        )
    shape = outputs[_OUTPUT].shape
    if len(shape) != 2 or (isinstance(shape[-1], int) and shape[-1] != n_labels):
        raise BundleError(
            f"{model_path.name}: output 'logits' has shape {shape}, expected [batch, {n_labels}] "
            f"for the manifest's {n_labels} labels; re-export the bundle"
        )


# -- token ids against the graph ----------------------------------------------------------
#
# A tokenizer.json whose ids run past the model's vocabulary (a tokenizer from another model,
# or edited entries) loads fine and fails later, on the first text that uses such an id, with
# ORT's "Gather ... indices element out of data bounds". The runtime cannot read the graph's
# tables without `onnx`, so it asks the session instead: one probe run with the tokenizer's
# largest id (~1 ms for MiniLM). Only when that fails does it bisect, with one-token runs, for
# the largest id the graph accepts, so the message can give the graph's range.


def _tokenizer_ids(tokenizer: Tokenizer) -> list[tuple[int, str, str]]:
    """Every id the tokenizer can emit, as (id, token, where in tokenizer.json).

    Read through the tokenizer's API (vocabulary with added tokens, the post-processor's
    state), not `to_str()`, which prints a warning on stderr for a vocabulary with holes.
    """
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    found: list[tuple[int, str, str]] = [
        (int(i), str(t), "added_tokens" if t in added else "model.vocab")
        for t, i in tokenizer.get_vocab(with_added_tokens=True).items()
    ]

    def processor_ids(proc: Any) -> None:
        if not isinstance(proc, Mapping):
            return
        for sub in proc.get("processors") or []:  # "Sequence"
            processor_ids(sub)
        for spec in (proc.get("special_tokens") or {}).values():  # "TemplateProcessing"
            if isinstance(spec, Mapping):
                for j, i in enumerate(spec.get("ids") or []):
                    if _is_int(i):
                        tokens = spec.get("tokens") or []
                        name = tokens[j] if j < len(tokens) else spec.get("id")
                        found.append((int(i), str(name), "post_processor"))
        for key in ("cls", "sep"):  # "BertProcessing" / "RobertaProcessing": [token, id]
            pair = proc.get(key)
            if isinstance(pair, list) and len(pair) == 2 and _is_int(pair[1]):
                found.append((int(pair[1]), str(pair[0]), "post_processor"))

    if tokenizer.post_processor is not None:
        processor_ids(json.loads(tokenizer.post_processor.__getstate__()))
    return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _probe_feeds(
    session: ort.InferenceSession, dtypes: Mapping[str, np.dtype], token_id: int, pad_id: int
) -> dict[str, np.ndarray]:
    """A one-example feed whose first token is `token_id` (sized to any fixed dims)."""
    shapes = {node.name: node.shape for node in session.get_inputs()}
    feeds: dict[str, np.ndarray] = {}
    for name, dtype in dtypes.items():
        shape = shapes.get(name) or []
        batch = shape[0] if len(shape) == 2 and isinstance(shape[0], int) and shape[0] > 0 else 1
        seq = shape[1] if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0 else 1
        if name == "input_ids":
            row = np.full(seq, pad_id, dtype=np.int64)
            row[0] = token_id
        elif name == "attention_mask":
            row = np.zeros(seq, dtype=np.int64)
            row[0] = 1
        else:
            row = np.zeros(seq, dtype=np.int64)
        feeds[name] = np.tile(row, (batch, 1)).astype(dtype, copy=False)
    return feeds


def _check_token_ids(
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    dtypes: Mapping[str, np.dtype],
    *,
    model_path: Path,
    tokenizer_file: str,
    pad_id: int,
) -> None:
    """Raise `BundleError` (one line) if the tokenizer can emit an id the graph refuses.
    (Negative ids cannot occur: tokenizers stores ids as u32, the manifest check refuses a
    negative pad_id.)"""
    ids = _tokenizer_ids(tokenizer)
    ids.append((pad_id, "[PAD]", "manifest.json tokenizer.pad_id"))
    largest = max(ids)

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failing probe is expected: keep ORT's error log off stderr

    def runs(token_id: int) -> Exception | None:
        try:
            session.run([_OUTPUT], _probe_feeds(session, dtypes, token_id, pad_id=0), quiet)
        except Exception as e:  # ORT's exception types share no base class
            return e
        return None

    error = runs(largest[0])
    if error is None:
        return
    first = runs(0)
    if first is not None:
        raise BundleError(
            f"{model_path.name}: a one-token probe run fails ({_one_line(first)}); the model "
            "cannot classify anything: re-export the bundle (or re-download it)"
        )
    good, bad = 0, largest[0]  # invariant: `good` runs, `bad` fails
    while bad - good > 1:
        mid = (good + bad) // 2
        if runs(mid) is None:
            good = mid
        else:
            bad = mid
    outside = sorted({i for i, _, _ in ids if i > good})
    raise BundleError(
        f"{_where(largest, tokenizer_file)}: the largest token id is {largest[0]} "
        f"({largest[1]!r}; {len(outside)} id(s) >= {good + 1}), but {model_path.name} accepts "
        f"input_ids 0..{good} (a vocabulary of {good + 1}): the tokenizer does not belong to "
        "this model; re-export the bundle with the model's own tokenizer.json (or re-download it)"
    )


def _where(entry: tuple[int, str, str], tokenizer_file: str) -> str:
    return entry[2] if entry[2].startswith("manifest.json") else f"{tokenizer_file} ({entry[2]})"


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def check_bundle_token_ids(path: str | os.PathLike[str]) -> list[str]:
    """Load every ONNX model artifact of a bundle with its tokenizer (what `embslim inspect`
    calls): raises the `BundleError` `Classifier.from_bundle` would raise for any of them,
    e.g. token ids past the graph's vocabulary; returns the model files checked."""
    manifest = read_manifest(path)
    checked = []
    for entry in manifest["artifacts"]:
        name = str(entry.get("file", ""))
        if name.endswith((".onnx", ".ort")) and entry.get("variant") not in ("tokenizer", "config"):
            Classifier.from_bundle(path, file=name, threads=1, verify=False)
            checked.append(name)
    return checked
