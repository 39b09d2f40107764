"""A tiny DEP bundle built with the real pipeline pieces, shared by the exporter tests.

The tiny tokenizer from tests/tiny_models.py, a random BERT with hidden size 128 (big enough that
4-bit weights visibly beat int8 on bytes, still ~1.8 MB fp32), trained for a few seconds on the
generated sentiment task so that label agreement between fp32 and quantized models means
something (a random model's logits differ by less than the quantization noise), then DEP-pruned
and exported with `embslim.pipeline.bundle.export_model` (which checks parity with PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

HIDDEN, HEADS, LAYERS = 128, 4, 2


class TinyBundle(NamedTuple):
    path: Path
    task: object            # embslim.pipeline.data.TaskData
    n_labels: int
    kept_rows: int
    original_rows: int


def _train(model, tokenizer, split, *, epochs: int = 5, lr: float = 2e-3, seed: int = 0) -> None:
    """A few epochs of AdamW: training loss ~0.1, eval accuracy well above chance. One torch thread:
    on a loaded 2-core machine more threads make this tiny model several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_loop(model, tokenizer, split, epochs=epochs, lr=lr, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train_loop(model, tokenizer, split, *, epochs: int, lr: float, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    enc = tokenizer(list(split.texts), padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor(split.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 32):
            idx = order[start:start + 32]
            loss = model(**{k: v[idx] for k, v in enc.items()}, labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def build_tiny_bundle(folder: Path, task) -> TinyBundle:
    import torch
    from tiny_models import make_tiny_model_dir
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    from embslim.pipeline.bundle import BundleMeta, export_model
    from embslim.pipeline.embedding import apply_pruning
    from embslim.pipeline.model import get_word_embeddings, load_classifier
    from embslim.pipeline.vocab import PruneConfig, prune

    src = make_tiny_model_dir(folder / "src")
    vocab_size = len(AutoTokenizer.from_pretrained(src))
    config = BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=4 * HIDDEN, max_position_embeddings=128, type_vocab_size=2,
                        num_labels=len(task.label_names))
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(src)   # same tokenizer, wider body

    loaded = load_classifier(str(src), labels=task.label_names)
    weight = get_word_embeddings(loaded.model).weight.detach().numpy()
    vocab = prune(loaded.tokenizer, task.train.texts, task.train.pairs, weight=weight, cfg=PruneConfig())
    apply_pruning(loaded.model, vocab)
    _train(loaded.model, loaded.tokenizer, task.train)
    meta = BundleMeta(task_name=task.name, labels=tuple(task.label_names), is_pair=task.is_pair, max_length=64,
                      source={"name": "tiny-bert-128", "family": "bert", "weights_sha256": None},
                      input_names=loaded.input_names, tokenizer_json=str(src / "tokenizer.json"))
    bundle = folder / "bundle"
    export_model(loaded.model, loaded.tokenizer, bundle, meta=meta)
    return TinyBundle(path=bundle, task=task, n_labels=len(task.label_names), kept_rows=vocab.size,
                      original_rows=vocab.original_size)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_task) -> TinyBundle:
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-dep-bundle"), tiny_task)


@pytest.fixture(scope="session")
def fused_model(tiny_bundle: TinyBundle):
    """model.fused.onnx beside model.onnx, and the OptimizeResult."""
    from embslim.exporters.optimize import OptimizeConfig, optimize

    cfg = OptimizeConfig(validation_shapes=((4, 19), (1, 64)))
    return optimize(tiny_bundle.path / "model.onnx", tiny_bundle.path / "model.fused.onnx", cfg=cfg)
