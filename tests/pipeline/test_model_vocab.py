"""Model loading (local folders, families, errors) and DEP vocabulary pruning on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import make_tiny_model_dir
from embslim.pipeline.embedding import RemappedEmbedding, apply_pruning
from embslim.pipeline.model import ModelError, get_word_embeddings, load_classifier
from embslim.pipeline.vocab import PruneConfig, PrunedVocab, VocabError, count_ids, oov_stats, prune

TRAIN = ["the movie was good", "the plot was dull and slow", "a great film", "the acting was bad"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_classifier(str(tiny_model_dir), labels=["neg", "pos"])


def _weight(loaded) -> np.ndarray:
    return get_word_embeddings(loaded.model).weight.detach().numpy()


@pytest.mark.parametrize("family, inputs", [("bert", ("input_ids", "attention_mask", "token_type_ids")),
                                            ("distilbert", ("input_ids", "attention_mask")),
                                            ("roberta", ("input_ids", "attention_mask"))])
def test_families_load_from_local_folders(tmp_path, family, inputs):
    folder = make_tiny_model_dir(tmp_path / family, family=family)
    lm = load_classifier(str(folder), labels=["a", "b", "c"])
    assert lm.input_names == inputs
    assert lm.model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert get_word_embeddings(lm.model).num_embeddings == len(lm.tokenizer)
    assert lm.weights_sha256 and len(lm.weights_sha256) == 64


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"model folder .*nope.* does not exist; check the path given to --model"):
        load_classifier(str(tmp_path / "nope"), labels=["a", "b"])


def test_folder_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"model folder .* has no config\.json; copy the model.s config\.json into it"):
        load_classifier(str(tmp_path), labels=["a", "b"])


def test_prune_keeps_training_ids_and_specials_ordered_by_frequency(loaded):
    tok = loaded.tokenizer
    vocab = prune(tok, TRAIN, weight=_weight(loaded))
    counts = count_ids(tok, TRAIN)
    used = set(np.flatnonzero(counts)) | set(tok.all_special_ids)
    assert set(vocab.kept_ids.tolist()) == used
    assert vocab.n_train_ids == int((counts > 0).sum())
    # new row = frequency rank: counts never increase along the new ids
    assert np.all(np.diff(vocab.counts) <= 0)
    assert vocab.kept_ids[0] in (tok.cls_token_id, tok.sep_token_id, tok.convert_tokens_to_ids("the"))
    # remap is a permutation on kept ids
    np.testing.assert_array_equal(vocab.remap[vocab.kept_ids], np.arange(vocab.size))
    assert vocab.remap.dtype == np.int32 and vocab.remap.shape == (len(tok),)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_fallback_maps_unseen_ids_to_the_nearest_kept_row(loaded, metric):
    tok, weight = loaded.tokenizer, _weight(loaded)
    vocab = prune(tok, TRAIN, weight=weight, cfg=PruneConfig(fallback="nearest", metric=metric))
    unit = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)   # the [PAD] row is zero
    candidates = [i for i in vocab.kept_ids if i not in set(tok.all_special_ids)]
    unseen = sorted(set(range(len(tok))) - set(vocab.kept_ids.tolist()))
    for u in unseen[:20]:
        if metric == "l2":
            best = candidates[int(np.argmin(np.linalg.norm(weight[candidates] - weight[u], axis=1)))]
        else:
            best = candidates[int(np.argmax(unit[candidates] @ unit[u]))]
        assert vocab.remap[u] == vocab.remap[best]


def test_unk_fallback_and_keep_top_and_keep_text(loaded, tmp_path):
    tok, weight = loaded.tokenizer, _weight(loaded)
    vocab = prune(tok, TRAIN, weight=weight, cfg=PruneConfig(fallback="unk"))
    unseen = sorted(set(range(len(tok))) - set(vocab.kept_ids.tolist()))
    assert set(vocab.remap[unseen].tolist()) == {vocab.remap[tok.unk_token_id]}

    bigger = prune(tok, TRAIN, weight=weight, cfg=PruneConfig(keep_top=10))
    assert bigger.size >= vocab.size and set(range(10)) <= set(bigger.kept_ids.tolist())

    extra = tmp_path / "keep.txt"
    extra.write_text("weather in paris\n")
    kept = prune(tok, TRAIN, weight=weight, cfg=PruneConfig(keep_text=(str(extra),)))
    assert tok.convert_tokens_to_ids("paris") in set(kept.kept_ids.tolist())


def test_prune_errors_are_specific(loaded, tmp_path):
    with pytest.raises(VocabError, match="training split is empty"):
        prune(loaded.tokenizer, [], weight=_weight(loaded))
    with pytest.raises(VocabError, match=r"--keep-text .*missing.txt not found; pass a UTF-8 text file with one text per line"):
        prune(loaded.tokenizer, TRAIN, weight=_weight(loaded), cfg=PruneConfig(keep_text=(str(tmp_path / "missing.txt"),)))
    with pytest.raises(VocabError, match="fallback must be 'nearest' or 'unk'"):
        PruneConfig(fallback="zero")
    with pytest.raises(VocabError, match="metric must be 'l2' or 'cosine'"):
        PruneConfig(metric="dot")
    with pytest.raises(VocabError, match="do not belong together"):
        prune(loaded.tokenizer, TRAIN, weight=_weight(loaded)[:10])


def test_oov_stats_count_eval_tokens_outside_the_kept_set(loaded):
    tok = loaded.tokenizer
    vocab = prune(tok, TRAIN, weight=_weight(loaded))
    stats = oov_stats(vocab, tok, ["the movie was good", "the weather in paris"])
    # first: all kept; second: [CLS] the weather in paris [SEP], of which weather/in/paris are unseen
    assert stats["eval_tokens"] == 6 + 6
    assert stats["eval_oov_tokens"] == 3
    assert stats["eval_examples_with_oov"] == 1
    assert stats["eval_oov_rate"] == pytest.approx(3 / 12)


def test_vocab_save_load_round_trip(loaded, tmp_path):
    vocab = prune(loaded.tokenizer, TRAIN, weight=_weight(loaded))
    vocab.save(tmp_path)
    back = PrunedVocab.load(tmp_path)
    np.testing.assert_array_equal(back.remap, vocab.remap)
    np.testing.assert_array_equal(back.kept_ids, vocab.kept_ids)
    with pytest.raises(VocabError, match="run `embslim prune` first"):
        PrunedVocab.load(tmp_path / "elsewhere")


def test_pruned_model_matches_the_original_on_kept_tokens(tiny_model_dir):
    original = load_classifier(str(tiny_model_dir), labels=["neg", "pos"])
    pruned = load_classifier(str(tiny_model_dir), labels=["neg", "pos"])
    pruned.model.load_state_dict(original.model.state_dict())
    vocab = prune(pruned.tokenizer, TRAIN, weight=_weight(pruned))
    apply_pruning(pruned.model, vocab)
    assert isinstance(get_word_embeddings(pruned.model), RemappedEmbedding)
    enc = original.tokenizer(TRAIN, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = original.model.eval()(**enc).logits
        b = pruned.model.eval()(**enc).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
