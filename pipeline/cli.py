"""`embslim`: a thin argparse layer over the pipeline. Heavy imports happen inside the handlers,
so `embslim --help` answers at once. Every failure the user can fix is one line on stderr and a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

log = logging.getLogger("embslim")

EXIT_USER_ERROR = 2
EXIT_VALIDATION = 3


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task data")
    g.add_argument("--train", help="training file: TSV/CSV/JSONL/JSON, or CLINC150's data_full.json")
    g.add_argument("--eval", dest="eval_file", help="eval file (default: a seeded split of --train)")
    g.add_argument("--dataset", help="'synthetic-sentiment', or a Hugging Face datasets name (needs `datasets`)")
    g.add_argument("--format", choices=["auto", "tsv", "csv", "jsonl", "json", "clinc150"])
    g.add_argument("--text-column")
    g.add_argument("--text-pair-column")
    g.add_argument("--label-column")
    g.add_argument("--eval-fraction", type=float)
    g.add_argument("--clinc-eval-split", choices=["val", "test"])
    g.add_argument("--task-name", help="name used in reports (default: the data folder's name)")
    g.add_argument("--data-root", help="folder that relative data paths are resolved against (e.g. ../shared/data)")


def _data_overrides(a: argparse.Namespace) -> dict:
    pairs = {"train": a.train, "eval": a.eval_file, "dataset": a.dataset, "format": a.format, "text_column": a.text_column,
             "text_pair_column": a.text_pair_column, "label_column": a.label_column, "eval_fraction": a.eval_fraction,
             "clinc_eval_split": a.clinc_eval_split, "name": a.task_name}
    return {k: v for k, v in pairs.items() if v is not None}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML or YAML file with the same options (flags override it)")
    p.add_argument("--model", help="model folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    _add_data_args(p)
    g = p.add_argument_group("DEP vocabulary pruning")
    g.add_argument("--fallback", choices=["nearest", "unk"], help="where ids unseen in training go (default nearest)")
    g.add_argument("--keep-top", type=int, help="also keep the N first general tokens of the vocabulary")
    g.add_argument("--keep-text", action="append", help="text file whose tokens are kept too (repeatable)")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--epochs", type=float)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--max-length", type=int)
    g.add_argument("--max-train-samples", type=int)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("validation")
    g.add_argument("--latency-seq-len", type=int)
    g.add_argument("--latency-runs", type=int)
    g.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None, help="latency and RSS probes")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune and validate the unpruned model for comparison (default on)")


def _merge(raw: dict, a: argparse.Namespace) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section in ("data", "prune", "finetune", "validate"):
        raw.setdefault(section, {})
    raw["data"].update(_data_overrides(a))
    sections = {
        "prune": {"fallback": a.fallback, "keep_top": a.keep_top, "keep_text": a.keep_text},
        "finetune": {"epochs": a.epochs, "max_steps": a.max_steps, "batch_size": a.batch_size, "learning_rate": a.learning_rate,
                     "max_length": a.max_length, "max_train_samples": a.max_train_samples, "seed": a.seed},
        "validate": {"latency_seq_len": a.latency_seq_len, "latency_runs": a.latency_runs, "measure": a.measure},
    }
    for section, values in sections.items():
        raw[section].update({k: v for k, v in values.items() if v is not None})
    for key in ("model", "baseline"):
        if getattr(a, key) is not None:
            raw[key] = getattr(a, key)
    return raw


def _cmd_run(a: argparse.Namespace) -> int:
    from pipeline.run import config_from_dict, load_config, run

    raw = load_config(a.config) if a.config else {}
    out = a.out or raw.pop("out", None)
    raw.pop("out", None)
    if not out:
        raise ValueError("no output folder: pass --out DIR (or set out = \"DIR\" in the config file)")
    cfg = config_from_dict(_merge(raw, a), where=a.config or "flags")
    bundle = run(cfg, out=out, force=a.force, data_root=a.data_root)
    print(f"bundle: {bundle}\nreport: {bundle / 'report.md'}")
    return 0


def _cmd_prune(a: argparse.Namespace) -> int:
    from pipeline.data import DataConfig, load_task
    from pipeline.model import get_word_embeddings, load_classifier
    from pipeline.vocab import PruneConfig, oov_stats, prune

    task = load_task(DataConfig(**_data_overrides(a)), data_root=a.data_root)
    loaded = load_classifier(a.model or "default", labels=task.label_names)
    emb = get_word_embeddings(loaded.model)
    vocab = prune(loaded.tokenizer, task.train.texts, task.train.pairs, weight=emb.weight.detach().numpy(),
                  cfg=PruneConfig(fallback=a.fallback or "nearest", keep_top=a.keep_top or 0, keep_text=tuple(a.keep_text or ())))
    vocab.save(a.out)
    stats = vocab.stats(emb.embedding_dim) | oov_stats(vocab, loaded.tokenizer, task.eval.texts, task.eval.pairs)
    (Path(a.out) / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from runtime.manifest import read_manifest, verify_artifact

    manifest = read_manifest(a.bundle)
    for entry in manifest["artifacts"]:
        verify_artifact(a.bundle, entry)
    task = manifest["task"]
    print(f"bundle {a.bundle}: task {task['name']} ({len(task['labels'])} labels, {'pairs' if task['pair'] else 'single texts'}, "
          f"max_length {task['max_length']}); source {manifest['source_model']['name']}")
    for entry in manifest["artifacts"]:
        print(f"  {entry['file']:<32} {entry['variant']:<10} {entry['target']:<8} {entry['bytes'] / 1e6:8.2f} MB  sha256 ok")
    for name, m in manifest.get("metrics", {}).items():
        print(f"  {name}: accuracy {100 * m['accuracy']:.2f}%" + (f", p50 {m['latency_ms_p50']:.2f} ms" if "latency_ms_p50" in m else ""))
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from pipeline.report import compare_reports, write_report

    report = compare_reports([a.bundle])
    paths = write_report(report, a.out or a.bundle)
    print(f"report: {paths['md']}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from pipeline.report import compare_reports, write_report

    paths = write_report(compare_reports(a.bundles), a.out)
    print(f"comparison: {paths['md']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embslim", description="Prune and compress a text classifier's embedding, "
                                "export it to ONNX and validate it under ONNX Runtime.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="the whole pipeline: prune, fine-tune, export, validate, bundle, report")
    _add_run_args(r)
    r.add_argument("--out", help="bundle folder to write")
    r.add_argument("--force", action="store_true", help="replace --out if it exists")
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("prune", help="DEP only: count the training vocabulary and write vocab.json + stats.json")
    pr.add_argument("--model")
    _add_data_args(pr)
    pr.add_argument("--fallback", choices=["nearest", "unk"])
    pr.add_argument("--keep-top", type=int)
    pr.add_argument("--keep-text", action="append")
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=_cmd_prune)

    i = sub.add_parser("inspect", help="verify a bundle's checksums and summarise it")
    i.add_argument("bundle")
    i.set_defaults(func=_cmd_inspect)

    rp = sub.add_parser("report", help="re-render a bundle's report (report.json -> md, html, plots)")
    rp.add_argument("bundle")
    rp.add_argument("--out", help="folder for the report (default: the bundle)")
    rp.set_defaults(func=_cmd_report)

    c = sub.add_parser("compare", help="one report comparing several bundles")
    c.add_argument("bundles", nargs="+")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_cmd_compare)
    return p


# Errors whose message is the whole story: one line on stderr, exit 2 (3 for failed checks).
# Library code raises ValueError subclasses (DataError, ModelError, BundleError, ...) for these.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
_VALIDATION_ERRORS = ("ValidationFailed", "OnnxValidationError")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    try:
        code = args.func(args)
    except _USER_ERRORS as e:
        if args.verbose:
            log.exception("failed")
        kind = "validation failed" if type(e).__name__ in _VALIDATION_ERRORS else "error"
        print(f"embslim {args.command}: {kind}: {e}", file=sys.stderr)
        return EXIT_VALIDATION if kind == "validation failed" else EXIT_USER_ERROR
    log.debug("%s finished in %.1f s", args.command, time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
