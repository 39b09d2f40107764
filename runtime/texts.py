"""The text-input rules every runtime class applies before tokenizing.

A call takes one `str` or an iterable of them; anything else is an `InputTypeError` that names
the position and the type it got. Texts over `max_chars` characters are refused (the tokenizer
reads all of a text before truncating it), and UTF-16 surrogates that are not part of a pair are
replaced with U+FFFD, as browsers do. These helpers keep no state: they are safe from any thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from .errors import InputError, InputTypeError

__all__ = [
    "DEFAULT_MAX_CHARS",
    "as_list",
    "check_batch_size",
    "check_max_chars",
    "check_strings",
    "clean",
    "describe",
    "replace_lone_surrogates",
]

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


def clean(texts: list[str]) -> list[str]:
    """`replace_lone_surrogates` on every text."""
    return [replace_lone_surrogates(t) for t in texts]


def as_list(value: Any, *, name: str, caller: str) -> list[Any]:
    """A str as a one-item list, any other iterable (not bytes, a mapping or a set) as a list.

    Raises `InputTypeError` for other types and `InputError` for an empty iterable.
    """
    if isinstance(value, str):
        return [value]
    if (
        isinstance(value, (bytes, bytearray, Mapping, AbstractSet))
        or not isinstance(value, Iterable)
    ):
        raise InputTypeError(
            f"{caller}() expects {name} as a str or a list of str, got {describe(value)}; "
            f"pass e.g. {caller}(['a great movie'])"
        )
    items = list(value)
    if not items:
        raise InputError(
            f"{caller}() got an empty list of {name}; pass at least one text, "
            f"e.g. {caller}(['a great movie'])"
        )
    return items


def check_strings(items: Sequence[Any], *, name: str) -> None:
    """`InputTypeError` naming the first item that is not a str."""
    for i, item in enumerate(items):
        if not isinstance(item, str):
            hint = "decode it first" if isinstance(item, (bytes, bytearray)) else (
                "convert it with str() or drop the example"
            )
            raise InputTypeError(f"{name}[{i}] is {describe(item)}, expected str; {hint}")


def check_max_chars(max_chars: int | None) -> None:
    """`ValueError` unless `max_chars` is a positive int or None."""
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ValueError(
            f"max_chars must be a positive integer or None (no limit), got {max_chars!r}"
        )


def check_batch_size(batch_size: int) -> None:
    """`InputError` unless `batch_size` is a positive int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")


def describe(value: Any) -> str:
    """`type (repr)` of a value, cut to 40 characters, for error messages."""
    if value is None:
        return "None"
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} ({shown})"
