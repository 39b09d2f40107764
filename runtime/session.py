"""The ONNX Runtime session of a bundle: its options, its inputs, and a load-time check that
every token id the tokenizer can emit fits the graph.

Shared by every runtime class (`Classifier`, `Embedder`) and by embslim's own validation and
latency probe, so all of them run the same kernels with the same settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .errors import BundleError

__all__ = [
    "SESSION_CONFIG",
    "check_token_ids",
    "graph_inputs",
    "graph_outputs",
    "open_session",
    "session_options",
]

# What the graph may ask for, and the integer types we can feed it.
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INPUT_DTYPES = {"tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}

# ONNX Runtime session config of embslim sessions (app, validation, latency probe).
# "session.x64quantprecision": on x86 CPUs WITHOUT an int8 dot-product instruction (SSE4.1, AVX2,
# AVX512F without VNNI), ORT's u8 x s8 int8 kernels use VPMADDUBSW, whose 16-bit pair sums saturate
# when weights leave [-64, 63]; with this entry ORT converts such layers to u8 x u8, which is exact.
# Without it an s8 (arm64 target) file's labels on such a CPU differed from emulated aarch64 ORT on
# 3.5% of 200 SST-2 sentences. On VNNI CPUs the u8 x s8 kernel is exact and the rewrite only slows
# int8 down (2.4x here), and on ARM there is nothing to rewrite, so it is set only where
# embslim.runtime.cpu.needs_exact_int8_rewrite() says the CPU needs it.
SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}


def session_options(
    threads: int | None = None, *, exact_int8: bool | None = None, memory_arena: bool = True
) -> ort.SessionOptions:
    """ORT session options with the intra-op thread count (when given) and SESSION_CONFIG's exact
    int8 rewrite where this CPU needs it (exact_int8=None, the default: x86 without VNNI, decided by
    embslim.runtime.cpu). exact_int8=True forces the rewrite on any x86 CPU; False leaves it out, e.g.
    to compare a .onnx with its .ort file, to which ORT cannot apply it. memory_arena=False turns
    ORT's CPU arena off."""
    from .cpu import needs_exact_int8_rewrite

    options = ort.SessionOptions()
    if not memory_arena:
        options.enable_cpu_mem_arena = False
    if exact_int8 is None:
        exact_int8 = needs_exact_int8_rewrite()
    for key, value in SESSION_CONFIG.items():
        if exact_int8 or key != "session.x64quantprecision":
            options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def open_session(
    model_path: Path, *, threads: int | None, memory_arena: bool = True
) -> ort.InferenceSession:
    """A CPU session on `model_path`; `BundleError` (one line) when ORT cannot load it."""
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


def graph_inputs(session: ort.InferenceSession, model_path: Path) -> dict[str, np.dtype]:
    """The graph's inputs and their integer dtypes; `BundleError` for any the runtime cannot
    build (a name other than input_ids/attention_mask/token_type_ids, or a non-integer type)."""
    dtypes: dict[str, np.dtype] = {}
    for node in session.get_inputs():
        if node.name not in KNOWN_INPUTS:
            raise BundleError(
                f"{model_path.name}: the graph takes an input {node.name!r} the runtime cannot "
                f"provide; expected only {', '.join(KNOWN_INPUTS)}: re-export the bundle"
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
            f"{', '.join(dtypes) or 'none'}); this is not a text model bundle: re-export it"
        )
    return dtypes


def graph_outputs(session: ort.InferenceSession) -> dict[str, Any]:
    """The graph's outputs by name (ORT NodeArg: .name, .type, .shape)."""
    return {node.name: node for node in session.get_outputs()}


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


def check_token_ids(
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    dtypes: Mapping[str, np.dtype],
    *,
    output: str,
    model_path: Path,
    tokenizer_file: str,
    pad_id: int,
) -> np.ndarray:
    """Raise `BundleError` (one line) if the tokenizer can emit an id the graph refuses.

    Runs only `output`. Returns that output for a one-token example of the largest id (what a
    runtime class may check further, e.g. its width). (Negative ids cannot occur: tokenizers
    stores ids as u32, the manifest check refuses a negative pad_id.)
    """
    ids = _tokenizer_ids(tokenizer)
    ids.append((pad_id, "[PAD]", "manifest.json tokenizer.pad_id"))
    largest = max(ids)

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failing probe is expected: keep ORT's error log off stderr

    def run(token_id: int) -> np.ndarray | Exception:
        try:
            feeds = _probe_feeds(session, dtypes, token_id, pad_id=0)
            return session.run([output], feeds, quiet)[0]
        except Exception as e:  # ORT's exception types share no base class
            return e

    probe = run(largest[0])
    if not isinstance(probe, Exception):
        return probe
    first = run(0)
    if isinstance(first, Exception):
        raise BundleError(
            f"{model_path.name}: a one-token probe run fails ({_one_line(first)}); the model "
            "cannot run on any text: re-export the bundle (or re-download it)"
        )
    good, bad = 0, largest[0]  # invariant: `good` runs, `bad` fails
    while bad - good > 1:
        mid = (good + bad) // 2
        if isinstance(run(mid), Exception):
            bad = mid
        else:
            good = mid
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
