"""Where should ids the training text never uses go? Compare DEP fallbacks on one fine-tuned model.

Takes the work folder of an `embslim run` (its `checkpoint-unpruned` is the fine-tuned full model;
DEP's kept rows train identically, so pruning it afterwards equals fine-tuning the pruned model),
re-prunes it with each fallback and reports dev accuracy (PyTorch; ORT agrees 100% on these
graphs). Usage:

    embslim run --config configs/sst2-demo.toml --data-root ../shared/data --out out/sst2-8k --max-train-samples 8000
    python benchmarks/dep_fallback.py --work out/sst2-8k.work --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="<out>.work folder of an embslim run with a baseline")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--train", default="sst2/train.tsv")
    p.add_argument("--eval", default="sst2/dev.tsv")
    p.add_argument("--model", help="pretrained model (default: the checkpoint's recorded source)")
    p.add_argument("--max-length", type=int, help="default: the checkpoint's recorded max length")
    args = p.parse_args()

    from embslim.pipeline.data import DataConfig, load_task
    from embslim.pipeline.embedding import apply_pruning, load_checkpoint
    from embslim.pipeline.finetune import predict_logits
    from embslim.pipeline.model import get_word_embeddings, load_classifier
    from embslim.pipeline.vocab import PruneConfig, prune

    task = load_task(DataConfig(train=args.train, eval=args.eval), data_root=args.data_root)
    full, tokenizer, meta = load_checkpoint(f"{args.work}/checkpoint-unpruned")
    meta = meta or {}
    source = args.model or meta.get("source", {}).get("name", "default")
    max_length = args.max_length or meta.get("max_length", 128)
    pretrained = get_word_embeddings(load_classifier(source, labels=list(task.label_names)).model)
    weight = pretrained.weight.detach().numpy()
    labels = np.asarray(task.eval.labels)

    def accuracy(model) -> float:
        logits = predict_logits(model, tokenizer, task.eval.texts, task.eval.pairs, max_length=max_length, batch_size=64)
        return float((logits.argmax(-1) == labels).mean())

    rows = {"unpruned": accuracy(full)}
    for name, cfg in (("unk", PruneConfig(fallback="unk")), ("nearest-cosine", PruneConfig(metric="cosine")),
                      ("nearest-l2", PruneConfig(metric="l2"))):
        model = copy.deepcopy(full)
        apply_pruning(model, prune(tokenizer, task.train.texts, task.train.pairs, weight=weight, cfg=cfg))
        rows[name] = accuracy(model)
    for name, acc in rows.items():
        print(f"{name:<16} {100 * acc:6.2f}%  {100 * (acc - rows['unpruned']):+.2f} pt")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
