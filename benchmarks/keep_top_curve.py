"""How many rows must DEP keep for a trained classifier to stay itself? Agreement with the given model
(and gold accuracy) against kept rows, for several --keep-top values and both fallback metrics.

A model kept as trained (`embslim run --no-finetune`) cannot relearn what the fallback changes: each
eval token the task's text never used is read through its nearest kept row. This measures that cost
in PyTorch (ORT agrees to 1e-5 on these graphs), on the eval split, without exporting anything:

    python benchmarks/keep_top_curve.py --model out/sst2-user-model --text out/sst2-train.txt \
        --eval sst2/dev.tsv --data-root ../shared/data --keep-top 0 5000 10000 15000 20000

Figures with these settings are in the README ("Bring the model you have").
"""

from __future__ import annotations

import argparse
import copy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned sequence classifier (folder or hub id)")
    p.add_argument("--text", action="append", required=True, help="unlabelled task text, as `embslim run --text`")
    p.add_argument("--eval", required=True, help="labelled eval file, as `embslim run --eval`")
    p.add_argument("--data-root")
    p.add_argument("--keep-top", type=int, nargs="+", default=[0, 5000, 10000, 15000, 20000])
    p.add_argument("--metrics", nargs="+", default=["l2", "cosine"], choices=["l2", "cosine"])
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()

    import numpy as np

    from embslim.pipeline.data import DataConfig
    from embslim.pipeline.embedding import apply_pruning
    from embslim.pipeline.finetune import FinetuneConfig, predict_logits
    from embslim.pipeline.model import get_word_embeddings
    from embslim.pipeline.run import RunConfig, load_inputs
    from embslim.pipeline.vocab import PruneConfig, prune

    cfg = RunConfig(model=args.model, data=DataConfig(texts=tuple(args.text), eval=args.eval),
                    finetune=FinetuneConfig(enabled=False))
    task, loaded = load_inputs(cfg, data_root=args.data_root)
    gold = np.asarray(task.eval.labels)
    ref = predict_logits(loaded.model, loaded.tokenizer, task.eval.texts, task.eval.pairs, max_length=args.max_length,
                         batch_size=64, desc="the given model").argmax(-1)
    weight = get_word_embeddings(loaded.model).weight.detach().numpy()
    print(f"given model: {100 * (ref == gold).mean():.2f}% on {len(gold)} eval examples\n")
    print("| metric | keep-top | kept rows | agreement with the given model % | accuracy % |")
    print("|---|---:|---:|---:|---:|")
    for metric in args.metrics:
        for keep_top in args.keep_top:
            model = copy.deepcopy(loaded.model)
            vocab = prune(loaded.tokenizer, task.train.texts, task.train.pairs, weight=weight,
                          cfg=PruneConfig(keep_top=keep_top, metric=metric), extra_texts=task.texts)
            apply_pruning(model, vocab)
            pred = predict_logits(model, loaded.tokenizer, task.eval.texts, task.eval.pairs, max_length=args.max_length,
                                  batch_size=64, desc=f"keep-top {keep_top}").argmax(-1)
            print(f"| {metric} | {keep_top:,} | {vocab.size:,} | {100 * (pred == ref).mean():.2f} | "
                  f"{100 * (pred == gold).mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
