"""Every registered compressor round-trips through the pipeline on a tiny model: fit on the pruned
matrix, swap in behind the remap, checkpoint save/load, ONNX export, and `runtime/` predictions
equal to PyTorch's. A new registry entry is covered automatically (with its default options)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embslim.pipeline.bundle import BundleMeta, export_model
from embslim.pipeline.compress import COMPRESSORS, CompressError, get
from embslim.pipeline.embedding import apply_pruning, embedding_params, load_checkpoint, replace_inner, save_checkpoint
from embslim.pipeline.finetune import predict_logits
from embslim.pipeline.model import get_word_embeddings, load_classifier
from embslim.pipeline.vocab import prune
from embslim.runtime import Classifier

# Options for a 32-wide tiny model where a default does not fit; every other entry uses its defaults.
TINY_OPTIONS: dict[str, dict] = {"fourier": {"epochs": 20}}


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_compressor_round_trips_through_export_and_runtime(name, tmp_path, tiny_model_dir, tiny_task):
    lm = load_classifier(str(tiny_model_dir), labels=list(tiny_task.label_names))
    vocab = prune(lm.tokenizer, tiny_task.train.texts, weight=get_word_embeddings(lm.model).weight.detach().numpy())
    apply_pruning(lm.model, vocab)
    table = get_word_embeddings(lm.model).inner.weight.detach().numpy()
    compressor = get(name)
    options = {k: v for k, v in TINY_OPTIONS.get(name, {}).items() if k in {f for f in compressor.config.__dataclass_fields__}}
    fitted = compressor.fit(table, compressor.config(**options), counts=vocab.counts)
    assert 0 <= fitted.reconstruction_error < 1.5 and fitted.params > 0
    assert fitted.spec["type"] == name
    replace_inner(lm.model, fitted.module)
    assert embedding_params(lm.model) == fitted.params
    lm.model.eval()

    save_checkpoint(lm.model, lm.tokenizer, tmp_path / "ckpt")
    model, tokenizer, _ = load_checkpoint(tmp_path / "ckpt")
    texts = list(tiny_task.eval.texts[:9]) + ["words the training text never used: weather in paris"]
    ref = predict_logits(lm.model, lm.tokenizer, texts, max_length=32, batch_size=4)
    np.testing.assert_allclose(predict_logits(model, tokenizer, texts, max_length=32, batch_size=4), ref, atol=1e-6)

    meta = BundleMeta(task_name="tiny", labels=tuple(tiny_task.label_names), is_pair=False, max_length=32,
                      source={"name": "tiny"}, input_names=lm.input_names, tokenizer_json=str(tiny_model_dir / "tokenizer.json"))
    export_model(model, tokenizer, tmp_path / "bundle", meta=meta)
    clf = Classifier.from_bundle(tmp_path / "bundle")
    np.testing.assert_allclose(clf.logits(texts, batch_size=4), ref, atol=1e-4)


def test_unknown_compressor_lists_the_known_ones():
    with pytest.raises(CompressError, match=r"unknown compressor 'pq'; known: subembed, messi, svd, fourier"):
        get("pq")


def test_replace_inner_needs_a_pruned_model(tiny_model_dir):
    from embslim.pipeline.embedding import CheckpointError

    lm = load_classifier(str(tiny_model_dir), labels=["a", "b"])
    with pytest.raises(CheckpointError, match="compress after pruning"):
        replace_inner(lm.model, torch.nn.Embedding(3, 32))
