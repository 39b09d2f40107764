"""Text -> the integer arrays the ONNX graph takes, with padding per batch.

The bundle ships the ORIGINAL Hugging Face `tokenizer.json`. Some of those files switch on
fixed padding (all-MiniLM-L6-v2 pads every input to 128) and their own truncation; loaded
as is, a 10-token sentence would cost 128 tokens of compute. So the runtime always turns the
file's padding off, sets truncation to the bundle's `max_length`, and pads each batch itself
to its longest row. That configuration happens once, when the bundle is loaded: afterwards
`Tokenizer.encode_batch` only reads the tokenizer and is safe to call from many threads.

(Named `tokens.py`, not `tokenize.py`, so it can never shadow the standard library's
`tokenize` module when a script runs from inside this directory.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from .errors import BundleError

__all__ = ["load_tokenizer", "pad_batch"]


def load_tokenizer(path: str | os.PathLike[str], *, max_length: int) -> Tokenizer:
    """Load a `tokenizer.json`, switch its padding off and truncate at `max_length`.

    Pairs are truncated `longest_first` (the Hugging Face default), so both texts keep a share.
    """
    try:
        tokenizer = Tokenizer.from_file(os.fspath(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise BundleError(
            f"{os.fspath(path)}: not a loadable Hugging Face tokenizer.json ({e}); "
            "re-export the bundle (or re-download it)"
        ) from e
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


def pad_batch(
    encodings: Sequence[Encoding],
    *,
    pad_id: int,
    dtypes: Mapping[str, np.dtype],
) -> dict[str, np.ndarray]:
    """Stack encodings into `[batch, longest]` arrays, padding with `pad_id` (mask 0).

    `dtypes` names the graph inputs to build (any of input_ids, attention_mask,
    token_type_ids) and their integer dtype; inputs the graph does not declare are not built.
    """
    longest = max((len(e.ids) for e in encodings), default=0)
    shape = (len(encodings), longest)
    ids = np.full(shape, pad_id, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    type_ids = np.zeros(shape, dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        type_ids[row, :n] = enc.type_ids
    built = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
    return {name: built[name].astype(dtype, copy=False) for name, dtype in dtypes.items()}
