"""The two errors an app embedding the runtime needs to tell apart.

`BundleError`: the bundle on disk is missing, corrupt, tampered with or from an
incompatible exporter. The fix is on the packaging side (re-export or re-download).
`InputError`: the call was wrong (empty list, a non-string, a pair where a single text
was expected...). The fix is in the calling code. Both are `ValueError`s so a caller
that only catches `ValueError` still sees them; `InputTypeError` is also a `TypeError`
because a non-string text is a type error in the usual Python sense.
"""

from __future__ import annotations

__all__ = ["BundleError", "InputError", "InputTypeError"]


class BundleError(ValueError):
    """The bundle directory or its manifest is missing, corrupt or inconsistent."""


class InputError(ValueError):
    """The texts (or options) given to `Classifier.predict` / `logits` / `encode` are invalid."""


class InputTypeError(InputError, TypeError):
    """An input has the wrong Python type (e.g. `None` or `3` where a `str` was expected)."""
