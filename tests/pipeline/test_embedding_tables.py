"""The bundle's smaller tables. prune.trim_positions: the position table cut to max_length rows, on
tiny BERT, DistilBERT and RoBERTa models (same logits for every input the runtime can send,
checkpoints and bundles reload). The DEP remap: int16 when the kept rows fit, int32 beyond."""

from __future__ import annotations

import numpy as np
import pytest

from embslim.pipeline.bundle import BundleMeta, export_model
from embslim.pipeline.embedding import PositionError, load_checkpoint, save_checkpoint, trim_positions
from embslim.pipeline.finetune import predict_logits
from embslim.pipeline.model import load_classifier
from embslim.runtime import Classifier
from tiny_models import make_tiny_model_dir

TEXTS = ["a good film", "the plot was a mess and the acting was flat but the music was lovely " * 2,
         "not bad", "boring"]


@pytest.mark.parametrize(("family", "rows"), [("bert", 16), ("distilbert", 16), ("roberta", 17)])
def test_trimmed_table_gives_the_same_logits_up_to_max_length(family, rows, tmp_path):
    lm = load_classifier(str(make_tiny_model_dir(tmp_path / family, family=family)), labels=["neg", "pos"])
    lm.model.eval()
    before = predict_logits(lm.model, lm.tokenizer, TEXTS, max_length=16, batch_size=2)
    full = lm.model.config.max_position_embeddings
    cut = trim_positions(lm.model, 16)
    # RoBERTa numbers positions from padding_idx + 1 (pad id 0 here), so it keeps padding_idx + 1 more rows.
    assert cut == full - rows and lm.model.config.max_position_embeddings == rows
    table = lm.model.get_submodule(lm.family.word_embeddings.rpartition(".")[0]).position_embeddings
    assert table.num_embeddings == rows
    np.testing.assert_allclose(predict_logits(lm.model, lm.tokenizer, TEXTS, max_length=16, batch_size=2), before, atol=1e-6)
    assert trim_positions(lm.model, 16) == 0                    # already trimmed: nothing more to cut

    save_checkpoint(lm.model, lm.tokenizer, tmp_path / "ckpt")
    model, tokenizer, _ = load_checkpoint(tmp_path / "ckpt")
    np.testing.assert_allclose(predict_logits(model, tokenizer, TEXTS, max_length=16, batch_size=2), before, atol=1e-6)


def test_trimmed_bundle_runs_under_the_runtime(tmp_path, tiny_model_dir):
    lm = load_classifier(str(tiny_model_dir), labels=["neg", "pos"])
    lm.model.eval()
    ref = predict_logits(lm.model, lm.tokenizer, TEXTS, max_length=16, batch_size=4)
    trim_positions(lm.model, 16)
    meta = BundleMeta(task_name="tiny", labels=("neg", "pos"), is_pair=False, max_length=16, source={"name": "tiny"},
                      input_names=lm.input_names, tokenizer_json=str(tiny_model_dir / "tokenizer.json"))
    export_model(lm.model, lm.tokenizer, tmp_path / "bundle", meta=meta)
    clf = Classifier.from_bundle(tmp_path / "bundle")
    # The second text has over 16 tokens: the runtime truncates it, so the 16-row table suffices.
    np.testing.assert_allclose(clf.logits(TEXTS, batch_size=4), ref, atol=1e-4)


def test_relative_position_models_are_refused(tmp_path, tiny_model_dir):
    lm = load_classifier(str(tiny_model_dir), labels=["neg", "pos"])
    lm.model.config.position_embedding_type = "relative_key"
    with pytest.raises(PositionError, match=r"'relative_key' has no absolute position table to trim; leave prune.trim_positions off"):
        trim_positions(lm.model, 16)


def test_remap_trains_as_int32_and_exports_as_int16_when_the_rows_fit():
    import torch

    from embslim.pipeline.embedding import CheckpointError, RemappedEmbedding, export_index_dtypes, index_dtype

    assert index_dtype(11575) == torch.int16 and index_dtype(32768) == torch.int16
    assert index_dtype(32769) == torch.int32 and index_dtype(250_002) == torch.int32
    big = RemappedEmbedding(torch.tensor([0, 40_000, 2]), torch.nn.Embedding(40_001, 4))
    small = RemappedEmbedding(torch.tensor([3, 0, 2]), torch.nn.Embedding(4, 4))
    model = torch.nn.ModuleList([big, small])
    assert big.remap.dtype == small.remap.dtype == torch.int32, "DDP broadcasts buffers; gloo/NCCL have no int16"
    with export_index_dtypes(model):
        assert small.remap.dtype == torch.int16 and big.remap.dtype == torch.int32
        torch.testing.assert_close(small(torch.tensor([[0, 1]])), small.inner.weight[[3, 0]].unsqueeze(0))
        assert big(torch.tensor([1])).shape == (1, 4)
    assert small.remap.dtype == torch.int32 and "remap" in dict(small.named_buffers())
    torch.testing.assert_close(small(torch.tensor([[0, 1]])), small.inner.weight[[3, 0]].unsqueeze(0))
    with pytest.raises(CheckpointError, match=r"the remap points outside the 4 rows of the embedding \(values 0..7\)"):
        RemappedEmbedding(torch.tensor([7, 0]), torch.nn.Embedding(4, 4))


def test_a_checkpoint_with_an_int16_remap_still_loads(tmp_path, tiny_model_dir):
    """Checkpoints written while the remap trained as int16 keep loading (and resuming)."""
    import torch
    from safetensors.torch import load_file, save_file

    from embslim.pipeline.embedding import apply_pruning
    from embslim.pipeline.model import get_word_embeddings
    from embslim.pipeline.vocab import prune

    lm = load_classifier(str(tiny_model_dir), labels=["neg", "pos"])
    apply_pruning(lm.model, prune(lm.tokenizer, TEXTS, weight=get_word_embeddings(lm.model).weight.detach().numpy()))
    lm.model.eval()
    ref = predict_logits(lm.model, lm.tokenizer, TEXTS, max_length=16, batch_size=2)
    save_checkpoint(lm.model, lm.tokenizer, tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    key = next(k for k in state if k.endswith("word_embeddings.remap"))
    assert state[key].dtype == torch.int32
    state[key] = state[key].to(torch.int16)                      # as an older checkpoint has it
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    model, tokenizer, _ = load_checkpoint(tmp_path / "ckpt")
    assert get_word_embeddings(model).remap.dtype == torch.int32
    np.testing.assert_allclose(predict_logits(model, tokenizer, TEXTS, max_length=16, batch_size=2), ref, atol=1e-6)
