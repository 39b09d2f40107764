"""The whole job as a short list of stage calls: data -> model -> DEP -> fine-tune -> ONNX ->
validation -> bundle + report. Each stage logs one line when it starts and its time when it ends.

The unpruned baseline is fine-tuned with the same settings and validated the same way, so the
report's comparison is like for like. Work files (checkpoints, the baseline's ONNX) go to
`<out>.work/`; the bundle itself appears at `<out>` only when every stage has passed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from pipeline.data import DataConfig, TaskData, load_task
from pipeline.finetune import FinetuneConfig
from pipeline.validate import ValidateConfig
from pipeline.vocab import PruneConfig

if TYPE_CHECKING:
    from pipeline.bundle import BundleMeta
    from pipeline.model import LoadedModel

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or option is wrong."""


@dataclass(frozen=True)
class RunConfig:
    model: str = "default"            # bundled all-MiniLM-L6-v2; or a local folder / hub id
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    baseline: bool = True             # also fine-tune + validate the unpruned model for the report
    opset: int = 17


_SECTIONS = {"data": DataConfig, "prune": PruneConfig, "finetune": FinetuneConfig, "validate": ValidateConfig}


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(known))}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def config_from_dict(raw: Mapping[str, Any], *, where: str = "config") -> RunConfig:
    top = {k: v for k, v in raw.items() if k not in _SECTIONS}
    sections = {k: _build(cls, raw.get(k) or {}, f"[{k}] of {where}") for k, cls in _SECTIONS.items()}
    return _build(RunConfig, top | sections, where)


def load_config(path: str | Path) -> dict:
    """Read a TOML or YAML config file into a plain dict (values only; nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ConfigError("YAML configs need PyYAML: pip install pyyaml (or use TOML)") from e
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        return data
    raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")


@contextlib.contextmanager
def stage(n: int, total: int, what: str) -> Iterator[None]:
    log.info("[%d/%d] %s ...", n, total, what)
    t0 = time.perf_counter()
    yield
    log.info("[%d/%d] %s done in %.1f s", n, total, what, time.perf_counter() - t0)


def bundle_meta(loaded: "LoadedModel", task: TaskData, *, max_length: int) -> "BundleMeta":
    from pipeline.bundle import BundleMeta

    return BundleMeta(task_name=task.name, labels=tuple(task.label_names), is_pair=task.is_pair, max_length=max_length,
                      source={"name": loaded.name, "family": loaded.model.config.model_type, "weights_sha256": loaded.weights_sha256},
                      input_names=loaded.input_names, tokenizer_json=str(Path(loaded.path) / "tokenizer.json"))


def run(cfg: RunConfig, *, out: str | Path, force: bool = False, data_root: str | None = None,
        task: TaskData | None = None) -> Path:
    """Run every stage and write the bundle to `out`. Returns the bundle path."""
    from exporters.onnx import embedding_bytes
    from pipeline.bundle import BundleExistsError, export_model, staged_bundle, write_manifest
    from pipeline.embedding import apply_pruning, embedding_params, save_checkpoint
    from pipeline.finetune import finetune, predict_logits
    from pipeline.model import get_word_embeddings, load_classifier
    from pipeline.report import write_report
    from pipeline.validate import check_parity, validate_artifact
    from pipeline.vocab import oov_stats, prune

    out = Path(out).resolve()
    if out.exists() and not force:
        raise BundleExistsError(f"{out} already exists; pass --force to replace it or choose another --out")
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    total = 6
    t_start = time.perf_counter()

    with stage(1, total, "load task data and model"):
        task = task or load_task(cfg.data, data_root=data_root)
        loaded = load_classifier(cfg.model, labels=task.label_names)
        max_length = min(cfg.finetune.max_length, int(getattr(loaded.model.config, "max_position_embeddings", 512)))
        ft_cfg = replace(cfg.finetune, max_length=max_length)
        hidden = int(get_word_embeddings(loaded.model).embedding_dim)
        params_before = sum(p.numel() for p in loaded.model.parameters())
        baseline_model = copy.deepcopy(loaded.model) if cfg.baseline else None
        meta = bundle_meta(loaded, task, max_length=max_length)

    with stage(2, total, "prune the vocabulary (DEP)"):
        weight = get_word_embeddings(loaded.model).weight.detach().numpy()
        vocab = prune(loaded.tokenizer, task.train.texts, task.train.pairs, weight=weight, cfg=cfg.prune)
        vocab.save(work)
        vocab_stats = vocab.stats(hidden) | oov_stats(vocab, loaded.tokenizer, task.eval.texts, task.eval.pairs)
        vocab_stats["keep_top"] = cfg.prune.keep_top
        apply_pruning(loaded.model, vocab)
        log.info("eval OOV rate %.2f%% (%d of %d tokens; %d of %d examples)", 100 * vocab_stats["eval_oov_rate"],
                 vocab_stats["eval_oov_tokens"], vocab_stats["eval_tokens"], vocab_stats["eval_examples_with_oov"],
                 vocab_stats["eval_examples"])

    models = {"dep": loaded.model} | ({"unpruned": baseline_model} if baseline_model is not None else {})
    finetuned: dict[str, dict] = {}
    with stage(3, total, f"fine-tune ({', '.join(models)})"):
        for name, model in models.items():
            finetuned[name] = finetune(model, loaded.tokenizer, task.train, task.eval, cfg=ft_cfg, name=name, work_dir=str(work))
            save_checkpoint(model, loaded.tokenizer, work / f"checkpoint-{name}", meta=meta.to_json())

    stages = {"data": task.summary(), "prune": asdict(cfg.prune) | {"kept_rows": vocab.size},
              "finetune": finetuned, "export": {"opset": cfg.opset, "exporter": "torch.onnx (TorchScript)"}}
    with staged_bundle(out, force=force) as bundle:
        folders = {"dep": bundle} | ({"unpruned": work / "unpruned"} if baseline_model is not None else {})
        with stage(4, total, "export to ONNX and check parity with PyTorch"):
            artifacts = {name: export_model(models[name], loaded.tokenizer, folder, meta=meta, opset=cfg.opset,
                                            atol=cfg.validate.parity_atol, stages=stages)
                         for name, folder in folders.items()}

        with stage(5, total, "validate under ONNX Runtime (accuracy, parity, latency, memory)"):
            variants = []
            for name in ("unpruned", "dep"):
                if name not in models:
                    continue
                folder = folders[name]
                torch_logits = predict_logits(models[name], loaded.tokenizer, task.eval.texts, task.eval.pairs,
                                              max_length=max_length, batch_size=cfg.validate.batch_size)
                metrics, _ = validate_artifact(folder, "model.onnx", task.eval, n_labels=len(task.label_names),
                                               cfg=cfg.validate, torch_logits=torch_logits)
                check_parity(f"{name} model.onnx", metrics, cfg=cfg.validate)
                variants.append(metrics | {
                    "name": name, "precision": "fp32",
                    "description": "same fine-tune, full vocabulary" if name == "unpruned" else "DEP: training-text vocabulary, remap in graph",
                    "file": "model.onnx" if name == "dep" else str(folder / "model.onnx"),
                    "total_params": sum(p.numel() for p in models[name].parameters()),
                    "embedding_params": embedding_params(models[name]),
                    "onnx_embedding_bytes": embedding_bytes(folder / "model.onnx", rows=sorted({vocab.size, vocab.original_size})),
                })

        with stage(6, total, "write manifest and report"):
            metrics_by_name = {v["name"]: v for v in variants}
            write_manifest(bundle, meta=meta, pad_id=int(loaded.tokenizer.pad_token_id or 0), artifacts=artifacts["dep"],
                           stages=stages, metrics=metrics_by_name)
            report = {
                "title": f"embslim footprint report: {task.name}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": {"name": loaded.name, "family": loaded.model.config.model_type, "hidden_size": hidden,
                          "vocab_size": vocab.original_size, "total_params": params_before},
                "task": {"name": task.name, "is_pair": task.is_pair, "n_labels": len(task.label_names),
                         "labels": list(task.label_names)[:20], "n_train": len(task.train),
                         "n_train_used": finetuned["dep"]["train_examples"], "n_eval": len(task.eval)},
                "vocab": vocab_stats,
                "finetune": {"epochs": ft_cfg.epochs, "max_steps": ft_cfg.max_steps, "batch_size": ft_cfg.batch_size,
                             "learning_rate": ft_cfg.learning_rate, "max_length": max_length, "seed": ft_cfg.seed,
                             "train_samples": finetuned["dep"]["train_examples"],
                             "seconds": {k: v["seconds"] for k, v in finetuned.items()}},
                "variants": variants,
                "notes": [f"ONNX Runtime CPU; accuracy on the full eval split ({len(task.eval)} examples), batch {cfg.validate.batch_size} with per-batch padding.",
                          f"latency: batch 1, {cfg.validate.latency_seq_len} tokens, {cfg.validate.threads} thread(s), "
                          f"median and p95 of {cfg.validate.latency_runs} runs after warm-up, fresh process per model.",
                          "peak RSS: VmHWM of that fresh process (model load + inference).",
                          f"DEP vocabulary counted on the training split only ({len(task.train)} examples); unseen ids -> {cfg.prune.fallback}.",
                          f"total wall time {time.perf_counter() - t_start:.0f} s."],
            }
            write_report(report, bundle)
    return out
