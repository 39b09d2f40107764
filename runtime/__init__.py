"""embslim runtime: classify text with an embslim bundle (onnxruntime + numpy + tokenizers only).

    from embslim.runtime import Classifier

    clf = Classifier.from_bundle("out/demo/bundle", variant="auto", threads=1)
    pred = clf.predict("a gripping, beautifully acted film")[0]
    print(pred.label, round(pred.score, 3))          # e.g. "positive 0.973"
    clf.predict([("A man sleeps.", "A person rests.")])  # text-pair bundles take tuples

`Classifier.from_bundle` verifies the model's and tokenizer's sha256 against
`manifest.json` before loading. A damaged or incompatible bundle raises `BundleError`;
a bad call (empty list, non-string, pair/single mismatch, a text over `max_chars`
characters, 100,000 by default) raises `InputError`. Texts longer than the bundle's
max_length tokens are truncated. One `Classifier` can be shared between threads. This
package never imports torch, transformers or onnx.
"""

from __future__ import annotations

from .classifier import DEFAULT_MAX_CHARS, Classifier, Prediction
from .errors import BundleError, InputError, InputTypeError

__all__ = [
    "DEFAULT_MAX_CHARS",
    "BundleError",
    "Classifier",
    "InputError",
    "InputTypeError",
    "Prediction",
]
