"""Fine-tuning options on a tiny model: the compressed embedding's learning-rate multiplier."""

from __future__ import annotations

import pytest
import torch

from embslim.pipeline.compress import get
from embslim.pipeline.data import subsample
from embslim.pipeline.embedding import apply_pruning, replace_inner
from embslim.pipeline.finetune import (
    FinetuneConfig,
    FinetuneError,
    _scaled_embedding_lr,
    compressed_embedding_parameters,
    finetune,
)
from embslim.pipeline.model import get_word_embeddings, load_classifier
from embslim.pipeline.vocab import prune


def _model(tiny_model_dir, tiny_task, method: str | None):
    lm = load_classifier(str(tiny_model_dir), labels=list(tiny_task.label_names))
    vocab = prune(lm.tokenizer, tiny_task.train.texts, weight=get_word_embeddings(lm.model).weight.detach().numpy())
    apply_pruning(lm.model, vocab)
    if method:
        table = get_word_embeddings(lm.model).inner.weight.detach().numpy()
        replace_inner(lm.model, get(method).fit(table, get(method).config(), counts=vocab.counts).module)
    return lm


def test_only_a_compressed_embedding_gets_the_scaled_rate(tiny_model_dir, tiny_task, tmp_path):
    from transformers import Trainer, TrainingArguments

    dep = _model(tiny_model_dir, tiny_task, None)
    assert compressed_embedding_parameters(dep.model) == []          # the plain pruned table trains at the base rate
    svd = _model(tiny_model_dir, tiny_task, "svd")
    scaled = compressed_embedding_parameters(svd.model)
    assert len(scaled) == 2                                          # the two SVD factors
    hybrid = _model(tiny_model_dir, tiny_task, None)
    table = get_word_embeddings(hybrid.model).inner.weight.detach().numpy()
    replace_inner(hybrid.model, get("messi").fit(table, get("messi").config(k=2, j=4, exact_top=10)).module)
    names = {id(p): n for n, p in get_word_embeddings(hybrid.model).inner.named_parameters()}
    assert sorted(names[id(p)] for p in compressed_embedding_parameters(hybrid.model)) == ["basis", "coeff"]  # exact rows: base rate
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, report_to=[], use_cpu=True)
    plain = Trainer(model=svd.model, args=args).create_optimizer()
    opt = _scaled_embedding_lr(Trainer, scaled, 20.0)(model=svd.model, args=args).create_optimizer()
    assert type(opt) is type(plain)                                  # the Trainer's own optimizer class
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert all(by_param[id(p)]["lr"] == pytest.approx(2e-3) for p in scaled)
    others = [g for g in opt.param_groups if not any(id(p) in {id(q) for q in scaled} for p in g["params"])]
    assert others and all(g["lr"] == pytest.approx(1e-4) for g in others)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(len(g["params"]) for g in plain.param_groups)
    decay = {id(p): g["weight_decay"] for g in plain.param_groups for p in g["params"]}
    assert all(by_param[i]["weight_decay"] == d for i, d in decay.items())   # decay groups as the Trainer set them


def test_scaled_rate_moves_the_compressed_embedding_further(tiny_model_dir, tiny_task):
    moved = {}
    for scale in (1.0, 30.0):
        lm = _model(tiny_model_dir, tiny_task, "svd")
        before = [p.detach().clone() for p in compressed_embedding_parameters(lm.model)]
        body = lm.model.classifier.weight.detach().clone()
        finetune(lm.model, lm.tokenizer, tiny_task.train, tiny_task.eval,
                 cfg=FinetuneConfig(max_steps=4, batch_size=8, max_length=32, learning_rate=1e-4,
                                    embedding_lr_scale=scale))
        moved[scale] = sum(float((p.detach() - b).norm()) for p, b in zip(compressed_embedding_parameters(lm.model), before))
        assert not torch.equal(lm.model.classifier.weight, body)    # the rest of the model trains too
    assert moved[30.0] > 5 * moved[1.0] > 0


def test_bad_scale_is_refused():
    with pytest.raises(FinetuneError, match="embedding_lr_scale must be in"):
        FinetuneConfig(embedding_lr_scale=0)


def test_distillation_with_per_epoch_evaluation(tiny_model_dir, tiny_task):
    """The eval split has no teacher logits; evaluating a distilled model each epoch must still work."""
    teacher = _model(tiny_model_dir, tiny_task, None)
    student = _model(tiny_model_dir, tiny_task, "svd")
    train = subsample(tiny_task.train, 16, seed=0)
    out = finetune(student.model, student.tokenizer, train, tiny_task.eval,
                   cfg=FinetuneConfig(epochs=1, batch_size=8, max_length=32), teacher=teacher.model)
    assert out["steps"] == 2 and len(out["eval_per_epoch"]) == 1
    assert 0 <= out["eval_per_epoch"][0]["accuracy"] <= 1
