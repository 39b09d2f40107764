"""Fine-tune a sequence classifier (pruned or not) on a task with the Hugging Face Trainer.

The Trainer is used as is, so the same call runs on one CPU here and under `accelerate launch`
or `torchrun` on many GPUs. Batches are padded per batch (DataCollatorWithPadding): on SST-2
that nearly doubles throughput over fixed-length padding. Each epoch is evaluated and the best
checkpoint (by accuracy) is what comes back.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from embslim.pipeline.data import Split, subsample

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class FinetuneError(ValueError):
    """A fine-tuning option is wrong."""


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun or `accelerate launch` (their RANK and
    WORLD_SIZE variables); (0, 1) when launched alone. Every rank trains; rank 0 alone writes."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank()[0] == 0


@contextlib.contextmanager
def _trainer_dir(work_dir: str | None, name: str) -> Iterator[str]:
    """The Trainer's output folder. Alone: a temporary folder. Under a launcher: one folder every
    rank names alike (`<work>/.trainer-<name>`), since the best epoch is saved by rank 0 and loaded
    by every rank; rank 0 removes it once all ranks are done."""
    rank, world = process_rank()
    if world == 1 or work_dir is None:
        with tempfile.TemporaryDirectory(dir=work_dir, prefix=f".trainer-{name}-") as tmp:
            yield tmp
        return
    folder = Path(work_dir) / f".trainer-{''.join(c if c.isalnum() or c in '+-_.' else '_' for c in name)}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield str(folder)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class FinetuneConfig:
    # False (--no-finetune, or epochs = 0 with no max_steps): keep the given model's trained weights;
    # only variants that distil learn, from the given model, for `epochs` (1 when 0) or max_steps.
    enabled: bool = True
    epochs: float = 1.0
    max_steps: int = -1               # > 0 overrides epochs (quick runs, tests)
    batch_size: int = 32
    learning_rate: float = 5e-5       # 1 epoch at 5e-5 gave 83.83% on 8k SST-2 sentences (DESIGN.md)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128             # tokens; longer inputs are truncated (the bundle records it)
    max_train_samples: int | None = None   # seeded subsample for quick runs
    seed: int = 42
    evaluate_each_epoch: bool = True  # and keep the best epoch's weights
    # Distillation (variants with distill=true): loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student),
    # Hinton et al.'s form; T=2 softens the teacher's near-one-hot logits enough to carry its ranking.
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    # Sentence embeddings (feature-extraction) distil with 1 - cosine(student, teacher) ("cosine") or
    # the mean squared error of the vectors ("mse", sentence-transformers' MSELoss for model distillation).
    distill_loss: Literal["cosine", "mse"] = "cosine"
    # Learning-rate multiplier for a COMPRESSED word embedding's parameters (k-sub tables, MESSI
    # coefficients and bases, SVD factors, PETE's MLP); a plain table (DEP, unpruned) keeps the base
    # rate. A compressed embedding starts far from the pretrained rows (k-sub reconstructs ~5% of
    # them) and has to move much further than the encoder in one short fine-tune.
    embedding_lr_scale: float = 1.0
    # Train only a compressed word embedding (encoder and head frozen). None: only when a variant
    # distils from a model that is kept as trained (--no-finetune), whose encoder and head ARE the
    # teacher's own weights, so the embedding is the one thing that differs from the teacher.
    embedding_only: bool | None = None

    def __post_init__(self) -> None:
        from embslim.pipeline.config_types import check_field_types

        check_field_types(self)
        if self.epochs < 0:
            raise FinetuneError(f"epochs must be >= 0 (0: no fine-tuning, as --no-finetune), got {self.epochs}")
        if self.epochs == 0 and self.max_steps <= 0:
            object.__setattr__(self, "enabled", False)
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise FinetuneError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.distill_loss not in ("cosine", "mse"):
            raise FinetuneError(f"distill_loss must be cosine or mse, got {self.distill_loss!r}")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise FinetuneError("distill_alpha must be in [0, 1] and distill_temperature > 0")
        if not 0 < self.embedding_lr_scale <= 1000:
            raise FinetuneError(f"embedding_lr_scale must be in (0, 1000], got {self.embedding_lr_scale}; 1 trains "
                                "the embedding at the base learning rate")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise FinetuneError(f"max_train_samples must be >= 1, got {self.max_train_samples}")


class _Encoded:
    """A torch-style dataset of tokenized examples (lists of ids; the collator pads per batch)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, split: Split, max_length: int,
                 teacher_logits: np.ndarray | None = None, *, token_level: bool = False) -> None:
        tagged = split.words is not None
        enc = tokenizer(list(split.texts), list(split.pairs) if split.pairs is not None else None,
                        truncation=True, max_length=max_length, padding=False,
                        return_offsets_mapping=tagged, return_special_tokens_mask=tagged)
        labels: Sequence | None = split.labels
        if tagged:   # word tags on each word's first sub-token (embslim.pipeline.tagged)
            from embslim.pipeline.tagged import token_labels

            labels = None if split.tags is None else [
                token_labels(np.asarray(enc["offset_mapping"][i]), np.asarray(enc["special_tokens_mask"][i], bool),
                             split.words[i], split.tags[i]) for i in range(len(split))]
            enc = {k: v for k, v in enc.items() if k not in ("offset_mapping", "special_tokens_mask")}
        self.features = [{k: enc[k][i] for k in enc} | ({"labels": labels[i]} if labels is not None else {})
                         for i in range(len(split))]
        if teacher_logits is not None:
            if token_level:   # per-token teacher logits [n_tokens, labels] per text, concatenated in text order
                ends = np.cumsum([len(f["input_ids"]) for f in self.features])
                teacher_logits = np.split(teacher_logits, ends[:-1])
            for f, t in zip(self.features, teacher_logits):
                f["teacher_logits"] = t.tolist()

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def _accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _entity_f1(names: Sequence[str]):
    """compute_metrics for a tagger: seqeval's entity F1 over each word's first sub-token (the
    tokens whose label is not -100), as "f1"; the best epoch is kept by it."""
    from embslim.pipeline.tagged import IGNORE, entity_scores

    def compute(eval_pred) -> dict:
        logits, labels = eval_pred
        pred = np.argmax(logits, axis=-1)
        gold = [[int(t) for t in row if t != IGNORE] for row in labels]
        got = [[int(p) for p, t in zip(prow, row) if t != IGNORE] for prow, row in zip(pred, labels)]
        return {"f1": entity_scores(gold, got, names)["f1"]}

    return compute


def _collator(tokenizer: PreTrainedTokenizerBase, tagged: bool):
    """Pads each batch to its longest row: DataCollatorWithPadding, or for a tagger
    DataCollatorForTokenClassification (labels padded with -100) with per-token teacher logits
    padded by zero rows (the distillation loss masks them with attention_mask)."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if not tagged:
        return DataCollatorWithPadding(tokenizer)
    pad = DataCollatorForTokenClassification(tokenizer)

    def collate(features: list[dict]) -> dict:
        import torch

        teacher = [f["teacher_logits"] for f in features] if "teacher_logits" in features[0] else None
        batch = pad([{k: v for k, v in f.items() if k != "teacher_logits"} for f in features])
        if teacher is not None:
            width, n = len(teacher[0][0]), batch["input_ids"].shape[1]
            batch["teacher_logits"] = torch.tensor([t + [[0.0] * width] * (n - len(t)) for t in teacher])
        return batch

    return collate


def _distill_trainer(alpha: float, temperature: float, *, output: str = "logits", distance: str = "cosine") -> type:
    """A Trainer whose loss mixes the labels' cross-entropy with the teacher's softened logits, or,
    for a sentence encoder (`output` "sentence_embedding"), is the distance of its sentence
    embeddings to the teacher's: 1 - cosine, or the mean squared error (`distance`)."""
    import torch.nn.functional as F
    from transformers import Trainer

    class DistillTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            teacher = inputs.pop("teacher_logits", None)
            if teacher is None:   # the eval split carries no teacher logits: plain cross-entropy there
                return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            outputs = model(**inputs)
            if output != "logits":
                student = getattr(outputs, output)
                dist = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean() if distance == "cosine" \
                    else F.mse_loss(student, teacher)
                return (dist, outputs) if return_outputs else dist
            student, target = outputs.logits, teacher
            if student.dim() == 3:   # a tagger: per-token logits; padding positions left out
                mask = inputs["attention_mask"].bool()
                student, target = student[mask], target[mask]
            kl = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(target / temperature, -1),
                          reduction="batchmean") * temperature ** 2
            # Unlabelled text (or alpha = 1): the teacher's logits are the whole target.
            loss = kl if outputs.loss is None or alpha == 1 else (1 - alpha) * outputs.loss + alpha * kl
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def compressed_embedding_parameters(model: PreTrainedModel) -> list:
    """The parameters of a compressed word embedding (RemappedEmbedding whose inner module is not a
    plain nn.Embedding table); [] for a plain or DEP-pruned table. Parameters a module names in its
    `base_rate_parameters` (exact pretrained rows, e.g. MESSI's `exact_top` head) are left out: they
    train at the base rate, as DEP's table does."""
    from torch import nn

    from embslim.pipeline.embedding import RemappedEmbedding
    from embslim.pipeline.model import get_word_embeddings

    emb = get_word_embeddings(model)
    if isinstance(emb, RemappedEmbedding) and not isinstance(emb.inner, nn.Embedding):
        exempt = set(getattr(emb.inner, "base_rate_parameters", ()))
        return [p for name, p in emb.inner.named_parameters() if p.requires_grad and name not in exempt]
    return []


def _freeze_all_but_the_embedding(model: PreTrainedModel) -> list:
    """Stop gradients everywhere but the compressed word embedding's fitted parameters (a head/tail
    MESSI's exact rows freeze too: they are the teacher's own rows); returns the parameters frozen
    here, to thaw after training."""
    from embslim.pipeline.embedding import RemappedEmbedding
    from embslim.pipeline.model import get_word_embeddings

    emb = get_word_embeddings(model)
    keep = {id(p) for p in compressed_embedding_parameters(model)}
    if not keep or not isinstance(emb, RemappedEmbedding):
        raise FinetuneError("embedding_only trains a compressed embedding, but this model's embedding is a plain table; "
                            "use it with a compressed variant (messi, svd, subembed, fourier)")
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def _scaled_embedding_lr(trainer_cls: type, scaled: list, scale: float) -> type:
    """`trainer_cls` whose optimizer (the Trainer's own: same class, betas, decay groups) has the
    compressed embedding's parameters moved into groups of their own at `scale` x the base rate."""

    class ScaledEmbeddingLR(trainer_cls):
        def create_optimizer(self):
            optimizer = super().create_optimizer()
            ids = {id(p) for p in scaled}
            moved = []
            for group in optimizer.param_groups:
                keep = [p for p in group["params"] if id(p) not in ids]
                if len(keep) != len(group["params"]):
                    moved.append(({k: v for k, v in group.items() if k != "params"},
                                  [p for p in group["params"] if id(p) in ids]))
                    group["params"] = keep
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
            for options, params in moved:
                optimizer.add_param_group(options | {"params": params, "lr": options["lr"] * scale})
            return optimizer

    return ScaledEmbeddingLR


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: Split, eval_split: Split,
             *, cfg: FinetuneConfig, name: str = "model", work_dir: str | None = None,
             teacher: PreTrainedModel | None = None, output: str = "logits", label_names: Sequence[str] = (),
             token_level: bool = False) -> dict:
    """Train `model` in place; returns a JSON-able summary (examples, steps, seconds, per-epoch accuracy).
    With a `teacher`, its `output` on the training examples (logits; a sentence encoder's
    sentence_embedding) joins the loss, or is the whole loss without labels (see FinetuneConfig).
    Only a classifier with a labelled eval split is evaluated per epoch (best epoch kept): by
    accuracy, or for a tagger (`token_level`: per-token logits, word-tagged splits) by entity F1
    over `label_names`."""
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    train = subsample(train, cfg.max_train_samples, seed=cfg.seed)
    if not train.labelled and teacher is None:
        raise FinetuneError("the training text has no labels: fine-tuning on it needs a teacher (distillation)")
    teacher_logits = None
    if teacher is not None:
        teacher_logits = predict_outputs(teacher, tokenizer, train.texts, train.pairs, max_length=cfg.max_length,
                                         batch_size=64, output=output,
                                         desc=f"{name}: the teacher's {output} on {len(train)} training texts")
    if len(train) == 0:
        raise FinetuneError("the training split is empty")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tagged = token_level
    evaluate = (cfg.evaluate_each_epoch and cfg.max_steps <= 0 and eval_split.labelled and output == "logits"
                and (not tagged or bool(label_names)))
    with _trainer_dir(work_dir, name) as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=max(cfg.batch_size, 64),
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio,
            seed=cfg.seed,
            data_seed=cfg.seed,
            eval_strategy="epoch" if evaluate else "no",
            save_strategy="epoch" if evaluate else "no",
            save_total_limit=1,
            load_best_model_at_end=evaluate,
            metric_for_best_model="f1" if tagged else "accuracy",
            save_safetensors=True,
            logging_strategy="steps",
            logging_steps=max(1, math.ceil(len(train) / cfg.batch_size / 10)),
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            disable_tqdm=False,
            remove_unused_columns=teacher is None,  # keep teacher_logits for the distillation loss
        )
        trainer_cls = (_distill_trainer(cfg.distill_alpha, cfg.distill_temperature, output=output, distance=cfg.distill_loss)
                       if teacher is not None else Trainer)
        frozen = _freeze_all_but_the_embedding(model) if cfg.embedding_only else []
        scaled = compressed_embedding_parameters(model) if cfg.embedding_lr_scale != 1.0 else []
        if scaled:   # a plain table (DEP, unpruned) trains exactly as without the option
            trainer_cls = _scaled_embedding_lr(trainer_cls, scaled, cfg.embedding_lr_scale)
        trainer = trainer_cls(
            model=model, args=args,
            train_dataset=_Encoded(tokenizer, train, cfg.max_length, teacher_logits, token_level=tagged),
            eval_dataset=_Encoded(tokenizer, eval_split, cfg.max_length, token_level=tagged) if evaluate else None,
            data_collator=_collator(tokenizer, tagged),
            compute_metrics=_entity_f1(label_names) if tagged else _accuracy,
        )
        log.info("fine-tune %s: %d examples, batch %d, %s%s", name, len(train), cfg.batch_size,
                 f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epochs",
                 f"; compressed embedding ({sum(p.numel() for p in scaled):,} params) at "
                 f"{cfg.embedding_lr_scale:g}x lr {cfg.learning_rate:g}" if scaled else "")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_warning()
        t0 = time.perf_counter()
        try:
            result = trainer.train()
        finally:
            hf_logging.set_verbosity(verbosity)
            for p in frozen:
                p.requires_grad_(True)
        seconds = time.perf_counter() - t0
    model.eval()
    metric = "f1" if tagged else "accuracy"   # a tagger's epochs are judged by entity F1
    epochs = [{"epoch": h["epoch"], metric: h[f"eval_{metric}"]} for h in trainer.state.log_history if f"eval_{metric}" in h]
    log.info("fine-tune %s: %.0f s (%.1f examples/s), train loss %.4f%s", name, seconds,
             result.metrics.get("train_samples_per_second", 0.0), result.training_loss,
             "".join(f", epoch {e['epoch']:g}: {'entity F1 ' if tagged else ''}{100 * e[metric]:.2f}"
                     f"{'' if tagged else '%'}" for e in epochs))
    return {"config": asdict(cfg), "train_examples": len(train), "steps": result.global_step,
            "seconds": round(seconds, 1), "train_loss": result.training_loss, "eval_per_epoch": epochs}


def predict_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                   pairs: Sequence[str] | None = None, *, max_length: int, batch_size: int = 32,
                   desc: str = "PyTorch logits for the parity check") -> np.ndarray:
    """PyTorch logits with per-batch padding, the same batching the runtime uses (for parity checks);
    `desc` names the loop in progress lines."""
    return predict_outputs(model, tokenizer, texts, pairs, max_length=max_length, batch_size=batch_size, desc=desc)


def predict_outputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                    pairs: Sequence[str] | None = None, *, max_length: int, batch_size: int = 32,
                    output: str = "logits", desc: str = "PyTorch outputs for the parity check") -> np.ndarray:
    """One output of `model` (`logits` [n, labels], or a sentence encoder's `sentence_embedding`
    [n, dim]; float32) over `texts`, with per-batch padding, the same batching the runtime uses.
    A per-token output (a tagger's logits) comes back as every text's non-padding tokens
    concatenated in order, [total tokens, labels]: what `Tagger.token_outputs` gives, stacked."""
    import torch

    from embslim.pipeline.logs import progress

    out = []
    model.eval()
    starts = range(0, len(texts), batch_size)
    with torch.inference_mode():
        for s in progress(starts, total=len(starts), desc=desc, logger=log):
            enc = tokenizer(list(texts[s:s + batch_size]), list(pairs[s:s + batch_size]) if pairs is not None else None,
                            truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            got = getattr(model(**enc), output).float().numpy()
            if got.ndim == 3:   # per-token outputs: each text's real tokens, concatenated in order
                got = got[enc["attention_mask"].numpy().astype(bool)]
            out.append(got)
    if out:
        return np.concatenate(out)
    width = model.config.num_labels if output == "logits" else getattr(model, "embedding_dim", model.config.hidden_size)
    return np.zeros((0, width), dtype=np.float32)
