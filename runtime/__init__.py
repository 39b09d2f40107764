"""embslim runtime: classify text with an embslim bundle (onnxruntime + numpy + tokenizers only).

    from runtime import Classifier

    clf = Classifier.from_bundle("out/demo/bundle", variant="auto", threads=1)
    pred = clf.predict("a gripping, beautifully acted film")[0]
    print(pred.label, round(pred.score, 3))          # e.g. "positive 0.973"
    clf.predict([("A man sleeps.", "A person rests.")])  # text-pair bundles take tuples

`Classifier.from_bundle` verifies the model's and tokenizer's sha256 against
`manifest.json` before loading. A damaged or incompatible bundle raises `BundleError`;
a bad call (empty list, non-string, pair/single mismatch) raises `InputError`. One
`Classifier` can be shared between threads. This package never imports torch,
transformers or onnx.
"""

from __future__ import annotations

from .classifier import Classifier, Prediction
from .errors import BundleError, InputError, InputTypeError

__all__ = ["BundleError", "Classifier", "InputError", "InputTypeError", "Prediction"]
