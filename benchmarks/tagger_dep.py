"""What does DEP cost a tagger on WNUT17's test set, and what do --keep-top and --text buy back?

Input: the bundles of `embslim run --config configs/wnut17-ner.toml --seed S` (one per seed; each
trains the DEP variant and the unpruned baseline with the same budget and keeps both, the unpruned
one in `<bundle>.work/`). For every bundle this scores on the TEST file, under ONNX Runtime through
`embslim.runtime.Tagger` (seqeval entity F1):

1. the files the run built: the unpruned model.onnx, the bundle's DEP model.onnx and its int8 file;
2. a curve of entity F1 against kept rows: the run's fine-tuned unpruned tagger pruned afterwards
   with DEP for each --keep-top N, counting the training text alone and with --text (unlabelled
   in-domain text; here the dev sentences' words, never the test set's), each exported and scored.
   Pruning after fine-tuning equals pruning before it up to weight decay on rows the training
   text never reads (AdamW's update of those rows is decay alone: ~1e-4 of their size over 3
   epochs); the run's own DEP file (point 1) checks it.

The recommended setting is the smallest point whose F1, mean over seeds, is within --budget
points of the unpruned model's mean. Writes results.json, results.md and f1_vs_kept_rows.png to
--out, and prints the tables:

    python benchmarks/tagger_dep.py --bundles out/wnut17-s1 out/wnut17-s2 --data-root ../shared/data \\
        --test wnut17/test.conll --text-from wnut17/dev.conll --keep-top 0 10000 20000 25000 \\
        --fallback nearest unk --out out/tagger-dep
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
from pathlib import Path

log = logging.getLogger("tagger_dep")


def _score(bundle: Path, file: str, split, scorer) -> dict:
    from embslim.pipeline.validate import ValidateConfig, validate_artifact

    metrics, _ = validate_artifact(bundle, file, split, cfg=ValidateConfig(measure=False), scorer=scorer)
    return {k: metrics[k] for k in ("f1", "entity_precision", "recall", "per_type", "onnx_bytes")}


def _curve(bundle: Path, test, scorer, *, train_texts, extra: dict[str, tuple[str, ...]], keep_tops: list[int],
           fallbacks: list[str], pretrained) -> list[dict]:
    """Entity F1 on `test` of the run's fine-tuned unpruned tagger, DEP-pruned per setting."""
    from embslim.pipeline.bundle import BundleMeta, export_model
    from embslim.pipeline.embedding import apply_pruning, embedding_bytes, load_checkpoint
    from embslim.pipeline.vocab import PruneConfig, oov_stats, prune

    trained, tokenizer, meta = load_checkpoint(bundle.with_name(bundle.name + ".work") / "checkpoint-unpruned")
    meta = BundleMeta.from_json(meta)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for text_name, texts in extra.items():
            for fallback, n in ((f, n) for f in fallbacks for n in keep_tops):
                vocab = prune(tokenizer, train_texts, weight=pretrained, cfg=PruneConfig(keep_top=n, fallback=fallback),
                              extra_texts=texts)
                model = copy.deepcopy(trained)
                apply_pruning(model, vocab)
                folder = Path(tmp) / f"{len(points)}"
                export_model(model, tokenizer, folder, meta=meta)
                oov = oov_stats(vocab, tokenizer, test.texts, None)
                point = {"text": text_name, "fallback": fallback, "keep_top": n, "kept_rows": vocab.size,
                         "embedding_bytes": embedding_bytes(model), "test_oov_rate": oov["eval_oov_rate"],
                         **_score(folder, "model.onnx", test, scorer)}
                log.info("%s: text %s, fallback %s, keep-top %d: %d rows, test OOV %.2f%%, entity F1 %.2f", bundle.name,
                         text_name, fallback, n, vocab.size, 100 * point["test_oov_rate"], 100 * point["f1"])
                points.append(point)
    return points


def _plot(curves: dict[str, list[dict]], unpruned: float, budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, pts in curves.items():
        ax.plot([p["kept_rows"] for p in pts], [100 * p["f1"] for p in pts], "o-", label=f"DEP: {name} fallback")
    ax.axhline(100 * unpruned, color="k", lw=1, label=f"unpruned ({100 * unpruned:.2f})")
    ax.axhspan(100 * (unpruned - budget), 100 * unpruned, color="k", alpha=0.08, label=f"within {100 * budget:.1f} pt")
    ax.set_xlabel("kept embedding rows (of 30,522)")
    ax.set_ylabel("WNUT17 test entity F1 (mean of seeds)")
    ax.set_title("DEP on a tagger: entity F1 vs kept rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", nargs="+", required=True, help="bundles of configs/wnut17-ner.toml runs, one per seed")
    p.add_argument("--data-root")
    p.add_argument("--train", default="wnut17/train.conll", help="the runs' training file (DEP counts its text)")
    p.add_argument("--test", required=True, help="tagged test file (CoNLL)")
    p.add_argument("--text-from", help="tagged file whose words are the unlabelled in-domain --text (e.g. dev)")
    p.add_argument("--keep-top", type=int, nargs="*", default=[0, 10000, 20000, 25000],
                   help="--keep-top values of the curve; none: score the runs' files only")
    p.add_argument("--fallback", nargs="+", default=["nearest"], choices=["nearest", "unk"],
                   help="where DEP sends ids the counted text never used: the nearest kept row, or [UNK]'s row")
    p.add_argument("--budget", type=float, default=0.01, help="F1 share the recommended point may lose (0.01 = 1 pt)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import numpy as np

    from embslim.pipeline.data import DataConfig, load_task
    from embslim.pipeline.model import get_word_embeddings, load_classifier
    from embslim.pipeline.scoring import TokenClassificationScorer
    from embslim.pipeline.tagged import read_tagged
    from embslim.runtime.manifest import read_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundles = [Path(b) for b in args.bundles]
    manifest = read_manifest(bundles[0])
    task = load_task(DataConfig(train=args.train, eval=args.test), data_root=args.data_root)
    if tuple(task.label_names) != tuple(manifest["task"]["labels"]):
        raise SystemExit(f"the test file's tags {task.label_names} are not the bundle's {manifest['task']['labels']}")
    extra = {"train": ()}
    if args.text_from:
        path = Path(args.data_root or ".") / args.text_from
        extra[f"train + {path.stem} text"] = tuple(" ".join(words) for words, _, _ in read_tagged(path))
    pretrained = get_word_embeddings(load_classifier(manifest["source_model"]["name"], labels=task.label_names,
                                                     task="token-classification").model).weight.detach().numpy()
    results = {"test": args.test, "budget": args.budget, "seeds": {}}
    for bundle in bundles:
        scorer = TokenClassificationScorer(task.label_names)
        report = json.loads((bundle / "report.json").read_text())
        rows = {r["name"]: r for r in report["variants"]}
        files = {"unpruned": Path(rows["unpruned"]["file"]), "dep (bundle)": bundle / "model.onnx"}
        files |= {f"dep {r['name'].split(' ', 1)[1]}": bundle / r["file"] for r in report["variants"]
                  if r.get("base") == "dep" and r["file"].endswith(".onnx")}
        built = {name: _score(f.parent, f.name, task.eval, scorer) for name, f in files.items()}
        for name, m in built.items():
            log.info("%s: %s test entity F1 %.2f", bundle.name, name, 100 * m["f1"])
        curve = _curve(bundle, task.eval, scorer, train_texts=task.train.texts, extra=extra, keep_tops=args.keep_top,
                       fallbacks=args.fallback, pretrained=pretrained) if args.keep_top else []
        results["seeds"][bundle.name] = {"files": built, "curve": curve}
        (out / "results.json").write_text(json.dumps(results, indent=2))

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    seeds = list(results["seeds"].values())
    files = {name: mean([s["files"][name]["f1"] for s in seeds]) for name in seeds[0]["files"]}
    unpruned = files["unpruned"]
    curves: dict[str, list[dict]] = {}
    for i, point in enumerate(seeds[0]["curve"]):
        f1s = [s["curve"][i]["f1"] for s in seeds]
        curves.setdefault(f"{point['text']}, {point['fallback']}", []).append(point | {"f1": mean(f1s), "f1_per_seed": f1s})
    within = [pt for pts in curves.values() for pt in pts if pt["f1"] >= unpruned - args.budget]
    best = min(within, key=lambda pt: pt["kept_rows"]) if within else None
    results |= {"mean_files": files, "mean_curves": curves, "recommended": best}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if curves:
        _plot(curves, unpruned, args.budget, out / "f1_vs_kept_rows.png")

    lines = [f"{args.test}: entity F1 under ONNX Runtime, mean of {len(seeds)} seed(s) ({', '.join(results['seeds'])})", "",
             "| file | MB | entity F1 | per seed | Δ vs unpruned (pts) |", "|---|---:|---:|---:|---:|"]
    for name, f1 in files.items():
        per = " / ".join(f"{100 * s['files'][name]['f1']:.2f}" for s in seeds)
        lines.append(f"| {name} | {seeds[0]['files'][name]['onnx_bytes'] / 1e6:.2f} | {100 * f1:.2f} | {per} | "
                     f"{100 * (f1 - unpruned):+.2f} |")
    lines += [] if not curves else ["", "| DEP counted on, fallback | --keep-top | kept rows | embedding MB (fp32) | test OOV % | entity F1 | per seed | "
              "Δ vs unpruned (pts) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, pts in curves.items():
        for pt in pts:
            lines.append(f"| {name} | {pt['keep_top']:,} | {pt['kept_rows']:,} | {pt['embedding_bytes'] / 1e6:.2f} | "
                         f"{100 * pt['test_oov_rate']:.2f} | {100 * pt['f1']:.2f} | "
                         f"{' / '.join(f'{100 * x:.2f}' for x in pt['f1_per_seed'])} | {100 * (pt['f1'] - unpruned):+.2f} |")
    lines += [] if not curves else ["", f"recommended (fewest rows within {100 * args.budget:.1f} pt of unpruned): "
              + (f"counted on {best['text']}, --fallback {best['fallback']}, --keep-top {best['keep_top']} ({best['kept_rows']:,} rows, "
                 f"F1 {100 * best['f1']:.2f})" if best else "none within the budget")]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
