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

Loading also checks that every token id the tokenizer can emit (its vocabulary, added
tokens, post-processor ids and the manifest's pad_id) fits the graph's `input_ids` range,
with a one-token probe run; a tokenizer from another model is a `BundleError` at load,
not ORT's "indices element out of data bounds" on some later text.

Text input rule: texts may contain any Unicode. A UTF-16 surrogate code point that is not
part of a pair (what a client sends after cutting an emoji in half, e.g. JSON
"so cute \\ud83d") is replaced with U+FFFD, as browsers do; a high+low surrogate pair
written as two code points is joined into the character it encodes. `predict`, `logits`
and `encode` all apply this (`replace_lone_surrogates`), so such texts are classified,
never a TypeError.
"""

from __future__ import annotations

from .classifier import Classifier, Prediction, check_bundle_token_ids
from .errors import BundleError, InputError, InputTypeError
from .texts import DEFAULT_MAX_CHARS, replace_lone_surrogates

__all__ = [
    "DEFAULT_MAX_CHARS",
    "BundleError",
    "Classifier",
    "InputError",
    "InputTypeError",
    "Prediction",
    "check_bundle_token_ids",
    "replace_lone_surrogates",
]
