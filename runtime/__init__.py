"""embslim runtime: run an embslim bundle (onnxruntime + numpy + tokenizers only).

Three kinds of bundle, told apart by `task.type` in their manifest.json:

    from embslim.runtime import Classifier, Embedder, Tagger, load_bundle

    # text-classification bundles: labels and probabilities
    clf = Classifier.from_bundle("out/demo/bundle", variant="auto", threads=1)
    pred = clf.predict("a gripping, beautifully acted film")[0]
    print(pred.label, round(pred.score, 3))          # e.g. "positive 0.973"
    clf.predict([("A man sleeps.", "A person rests.")])  # text-pair bundles take tuples

    # feature-extraction bundles: sentence embeddings, float32 [n, dim]
    emb = Embedder.from_bundle("out/minilm-emb/bundle", variant="auto", threads=1)
    vectors = emb.encode(["how do I reset my password", "forgot my login"])
    print(vectors.shape, float(vectors[0] @ vectors[1]))  # (2, 384), a cosine when emb.normalize

    # token-classification bundles: entities, as transformers' token-classification pipeline
    tagger = Tagger.from_bundle("out/ner/bundle", variant="auto", threads=1)
    tagger.tag("Ada Lovelace lives in London")  # [{"entity_group", "score", "word", "start", "end"}]
    tagger.token_outputs(["..."])                # per-token ids, offsets, special mask, logits

    model = load_bundle("out/any/bundle", variant="auto")  # the class the manifest calls for

`from_bundle` verifies the model's and tokenizer's sha256 against `manifest.json` before
loading. A damaged or incompatible bundle raises `BundleError`, and so does a bundle of another
task (`Classifier.from_bundle` on an embedding bundle names `Embedder`, on a token-classification
bundle `Tagger`, and so on); a bad call (empty list, non-string, pair/single mismatch, a text over
`max_chars` characters, 100,000 by default) raises `InputError`. Texts longer than the bundle's
max_length tokens are truncated. One `Classifier`, `Embedder` or `Tagger` can be shared between
threads. This package never imports torch, transformers or onnx.

Loading also checks that every token id the tokenizer can emit (its vocabulary, added
tokens, post-processor ids and the manifest's pad_id) fits the graph's `input_ids` range,
with a one-token probe run; a tokenizer from another model is a `BundleError` at load,
not ORT's "indices element out of data bounds" on some later text. An `Embedder` also checks
that the graph's `sentence_embedding` output has the manifest's `task.embedding.dim` columns.

Text input rule: texts may contain any Unicode. A UTF-16 surrogate code point that is not
part of a pair (what a client sends after cutting an emoji in half, e.g. JSON
"so cute \\ud83d") is replaced with U+FFFD, as browsers do; a high+low surrogate pair
written as two code points is joined into the character it encodes. `predict`, `logits`,
`encode`, `tag`, `token_outputs` and `tokenize` all apply this (`replace_lone_surrogates`), so
such texts are classified, embedded or tagged, never a TypeError (a Tagger's offsets still
index the text as given).
"""

from __future__ import annotations

from .bundle_model import BundleModel
from .classifier import Classifier, Prediction
from .embedder import Embedder
from .errors import BundleError, InputError, InputTypeError
from .load import check_bundle_token_ids, load_bundle
from .tagger import Tagger, TokenOutput
from .texts import DEFAULT_MAX_CHARS, replace_lone_surrogates

__all__ = [
    "DEFAULT_MAX_CHARS",
    "BundleError",
    "BundleModel",
    "Classifier",
    "Embedder",
    "InputError",
    "InputTypeError",
    "Prediction",
    "Tagger",
    "TokenOutput",
    "check_bundle_token_ids",
    "load_bundle",
    "replace_lone_surrogates",
]
