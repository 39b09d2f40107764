"""The whole job as a short list of stage calls: data -> model -> DEP -> fine-tune -> ONNX ->
validation -> bundle + report. Each stage logs one line when it starts and its time when it ends.

The unpruned baseline is fine-tuned with the same settings and validated the same way, so the
report's comparison is like for like. Work files (checkpoints, the baseline's ONNX) go to
`<out>.work/`; the bundle itself appears at `<out>` only when every stage has passed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, get_origin, get_type_hints

from embslim.pipeline.config_types import ConfigError, _example, _fits, _type_name, check_field_types
from embslim.pipeline.data import DataConfig, TaskData, load_task
from embslim.pipeline.finetune import FinetuneConfig
from embslim.pipeline.targets import TargetsConfig
from embslim.pipeline.validate import ValidateConfig
from embslim.pipeline.vocab import PruneConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from embslim.pipeline.bundle import BundleMeta
    from embslim.pipeline.model import LoadedModel
    from embslim.pipeline.vocab import PrunedVocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantConfig:
    """One model to build from the DEP-pruned encoder: the pruned table alone, or a compressor."""

    name: str = "dep"
    method: str | None = None         # a key of embslim.pipeline.compress.COMPRESSORS; None keeps the pruned table
    options: dict = field(default_factory=dict)   # fields of that compressor's Config (it validates them)
    distill: bool = False             # fine-tune against the fine-tuned DEP model's logits too (needs a "dep" variant)

    def __post_init__(self) -> None:
        from embslim.pipeline.compress import COMPRESSORS

        if not self.name or self.name == "unpruned":
            raise ConfigError(f"variant name {self.name!r} is reserved or empty; name it after its method, e.g. 'dep+messi'")
        if self.method is not None and self.method not in COMPRESSORS:
            raise ConfigError(f"variant {self.name!r}: unknown method {self.method!r}; known: {', '.join(COMPRESSORS)}")
        if self.method is None and self.options:
            raise ConfigError(f"variant {self.name!r} has options but no method")
        if self.method is not None:   # check the options now, before a run creates anything
            from embslim.pipeline.compress import get

            compressor = get(self.method)
            try:
                compressor.config(**self.options)
            except TypeError as e:
                known = ", ".join(f.name for f in fields(compressor.config))
                raise ConfigError(f"variant {self.name!r}: {e}; {self.method} options are: {known}") from e


@dataclass(frozen=True)
class RunConfig:
    model: str = "default"            # bundled all-MiniLM-L6-v2; or a local folder / hub id
    # Optimum's task name; None infers it from the model's `architectures` (embslim.pipeline.tasks).
    task: str | None = None
    # A model with its own classification head keeps it and its labels (matched to the data's by
    # name); True trains a fresh head for the data's labels instead.
    new_head: bool = False
    # feature-extraction: how token embeddings become the sentence embedding. None: the model's own
    # sentence-transformers Pooling / Normalize modules (a plain encoder needs pooling).
    pooling: str | None = None        # mean | cls | max
    normalize: bool | None = None
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)   # int8 / 4-bit / .ort of the bundle's model
    variants: tuple[VariantConfig, ...] = (VariantConfig(),)
    bundle_variant: str | None = None  # which variant becomes the bundle's model.onnx (default: the first)
    baseline: bool = True             # also fine-tune + validate the unpruned model for the report
    opset: int = 17

    def __post_init__(self) -> None:
        check_field_types(self)
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"variants need distinct names, got {names}")
        if self.bundle_variant is not None and self.bundle_variant not in names:
            raise ConfigError(f"bundle_variant {self.bundle_variant!r} is not one of the variants {names}")
        from embslim.pipeline.tasks import TaskError, get_task

        try:
            task = get_task(self.task)
        except TaskError as e:
            raise ConfigError(str(e)) from e
        if (any(v.distill for v in self.variants) and "dep" not in names and self.finetune.enabled
                and not task.keeps_model):
            raise ConfigError("distillation uses the fine-tuned 'dep' variant as teacher: add a variant named 'dep' "
                              "(with --no-finetune the given model itself is the teacher)")
        if (self.pooling is not None or self.normalize is not None) and task.primary_output != "sentence_embedding":
            raise ConfigError(f"pooling / normalize shape sentence embeddings; they need --task feature-extraction "
                              f"(the run's task is {task.name})")
        if self.pooling is not None and self.pooling not in ("mean", "cls", "max"):
            raise ConfigError(f"pooling must be mean, cls or max, got {self.pooling!r}")

    @property
    def chosen(self) -> str:
        return self.bundle_variant or self.variants[0].name


_SECTIONS = {"data": DataConfig, "prune": PruneConfig, "finetune": FinetuneConfig, "validate": ValidateConfig,
             "targets": TargetsConfig}


def _build(cls: type, values: Any, where: str) -> Any:
    """`cls(**values)` after checking every key is a field of `cls` and every value has the field's type,
    so a wrong config says which key, what type it needs and an example, not Python's own message."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a table of options, got {type(values).__name__} {values!r}; "
                          f"e.g. {_first_example(cls)}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(str, unknown))} in {where}; known: {', '.join(sorted(known))}")
    hints = get_type_hints(cls)
    for key, value in values.items():
        if not _fits(value, hints[key]):
            f = known[key]
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
            example = (f"{key} = {json.dumps([value])}" if isinstance(value, str) and get_origin(hints[key]) is tuple
                       else _example(key, hints[key], default))
            raise ConfigError(f"{where}: {key} must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}; "
                              f"e.g. {example}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e
    except ValueError as e:   # the dataclass's own check: keep its type, say where the value came from
        if where.startswith("[") and not where.endswith("of flags"):
            try:
                err = type(e)(f"{where}: {e}")
            except TypeError:
                raise e from None
            raise err from e
        raise


def config_from_dict(raw: Mapping[str, Any], *, where: str = "config") -> RunConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table of options at the top level, got {type(raw).__name__}")
    top = {k: v for k, v in raw.items() if k not in _SECTIONS and k != "variants"}
    for key, cls in _SECTIONS.items():
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):   # None: an empty YAML section
            raise ConfigError(f"[{key}] of {where} must be a table of options, got {type(raw[key]).__name__} "
                              f"{raw[key]!r}; e.g. [{key}] then one option per line, like {_first_example(cls)}")
    sections = {k: _build(cls, raw.get(k) or {}, f"[{k}] of {where}") for k, cls in _SECTIONS.items()}
    if "variants" in raw:
        if not isinstance(raw["variants"], list) or not all(isinstance(v, Mapping) for v in raw["variants"]):
            raise ConfigError(f"variants in {where} must be a list of tables, got {raw['variants']!r}; "
                              'e.g. [[variants]] then name = "dep+messi" and method = "messi"')
        sections["variants"] = tuple(_build(VariantConfig, v, f"[[variants]] #{i + 1} of {where}")
                                     for i, v in enumerate(raw["variants"]))
    return _build(RunConfig, top | sections, where)


def _first_example(cls: type) -> str:
    f = fields(cls)[0]
    default = f.default if f.default is not MISSING else None
    return _example(f.name, get_type_hints(cls)[f.name], default)


def parse_variant(text: str) -> VariantConfig:
    """`dep`, `messi`, `messi:k=5,compression=0.4`, `subembed:assignment=kmeans,k=2` -> VariantConfig
    named `dep` or `dep+<method>` (a `+distill` suffix on the method turns distillation on)."""
    method, _, opts = text.partition(":")
    distill = method.endswith("+distill")
    method = method.removesuffix("+distill")
    options: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"variant option {item!r} in {text!r} must be key=value")
        options[key.strip()] = _scalar(value.strip())
    if method in ("dep", ""):
        return VariantConfig(name="dep", distill=distill)
    suffix = "".join(f",{k}={v}" for k, v in options.items())
    return VariantConfig(name=f"dep+{method}" + (f"({suffix[1:]})" if suffix else "") + ("+distill" if distill else ""),
                         method=method, options=options, distill=distill)


def _scalar(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


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
    from embslim.pipeline.bundle import BundleMeta

    from embslim.pipeline.tasks import get_task

    spec = getattr(loaded.model, "spec", None)   # a sentence encoder's pooling
    return BundleMeta(task_name=task.name, labels=tuple(task.label_names) if get_task(loaded.task).has_labels else (),
                      is_pair=task.is_pair, max_length=max_length, task_type=loaded.task,
                      embedding=spec.to_json() | {"dim": loaded.model.embedding_dim} if spec is not None else None,
                      source={"name": loaded.name, "family": loaded.model.config.model_type, "weights_sha256": loaded.weights_sha256},
                      input_names=loaded.input_names, tokenizer_json=str(Path(loaded.path) / "tokenizer.json"))


def _build_variants(pruned: "PreTrainedModel", vocab: "PrunedVocab", variants: tuple[VariantConfig, ...]) -> dict[str, dict]:
    """A copy of the pruned model per variant, with its compressor fitted from the pruned matrix."""
    from embslim.pipeline.compress import CompressError, get
    from embslim.pipeline.compress.base import token_weighted_error
    from embslim.pipeline.embedding import replace_inner
    from embslim.pipeline.model import get_word_embeddings

    weight = get_word_embeddings(pruned).inner.weight.detach().numpy()
    built = {}
    fits: dict[str, Any] = {}   # variants that differ only in distillation share one (deterministic) fit and its errors
    for v in variants:
        model = copy.deepcopy(pruned)
        info: dict[str, Any] = {"method": v.method or "table", "options": dict(v.options), "distill": v.distill}
        if v.method is not None:
            key = json.dumps([v.method, v.options], sort_keys=True)
            if key not in fits:
                compressor = get(v.method)
                try:
                    method_cfg = compressor.config(**v.options)
                except TypeError as e:
                    known = ", ".join(f.name for f in fields(compressor.config))
                    raise CompressError(f"variant {v.name!r}: {e}; {v.method} options are: {known}") from e
                fitted = compressor.fit(weight, method_cfg, counts=vocab.counts)
                fits[key] = (fitted, token_weighted_error(weight, fitted.module, vocab.counts))
            fitted, weighted = fits[key]
            replace_inner(model, copy.deepcopy(fitted.module))
            info |= {"reconstruction_error": fitted.reconstruction_error, "token_weighted_error": weighted,
                     "fit_seconds": round(fitted.fit_seconds, 2), "fit_info": fitted.info}
        built[v.name] = {"model": model, "config": v, "info": info}
    return built


def _describe(name: str, info: dict, *, keep: bool = False) -> str:
    if name == "unpruned":
        return "the given model, as it is" if keep else "same fine-tune, full vocabulary"
    if info["method"] == "table":
        return "DEP: task-text vocabulary, remap in graph" + (", no fine-tuning" if keep else "")
    opts = ", ".join(f"{k}={v}" for k, v in info["options"].items())
    teacher = "the given model on the corpus" if keep else "dep"
    return (f"DEP + {info['method']}" + (f" ({opts})" if opts else "")
            + (f", distilled from {teacher}" if info["distill"] else (", not trained (as fitted)" if keep else "")))


def _fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _task_digest(task: TaskData) -> str:
    """sha256 of the training and eval examples (texts, pairs, labels, word tags), for resuming."""
    h = hashlib.sha256()
    for split in (task.train, task.eval):
        # word tags only when present, so a classification run's digest is what it was before taggers
        h.update(json.dumps([split.texts, split.pairs, split.labels] + ([split.tags] if split.tags is not None else [])).encode())
    if task.texts:
        h.update(json.dumps(task.texts).encode())
    return h.hexdigest()


def _resume(model: "PreTrainedModel", folder: Path, fingerprint: str) -> dict | None:
    """Load a variant's fine-tuned weights from an earlier run's checkpoint when that run had the same
    inputs (model weights, data, vocabulary, compressor, fine-tune settings); None otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from embslim.pipeline.embedding import META_FILE

    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("run_fingerprint") != fingerprint or not isinstance(meta.get("finetune"), dict):
            return None
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    except (OSError, ValueError, RuntimeError, AttributeError, SafetensorError) as e:
        # missing, torn (a kill mid-write before writes were atomic), unreadable or mismatched: train again
        log.info("no usable checkpoint in %s (%s); fine-tuning again", folder, type(e).__name__)
        return None
    model.eval()
    return meta["finetune"] | {"resumed_from": str(folder)}


def load_inputs(cfg: RunConfig, *, task: TaskData | None = None, data_root: str | None = None
                ) -> tuple[TaskData, "LoadedModel"]:
    """The task data and the model, with the data's labels matched to a kept head's by name.
    Refuses (one line) a run that would keep an untrained head: --no-finetune on a bare encoder
    or with --new-head."""
    from embslim.pipeline.data import match_labels
    from embslim.pipeline.model import ModelError, load_classifier, load_sentence_model
    from embslim.pipeline.tagged import check_words, tagged_task
    from embslim.pipeline.tasks import get_task

    task = task or load_task(cfg.data, data_root=data_root)
    requested = tagged_task(task, cfg.task)
    if requested is not None and not get_task(requested).has_labels:   # a sentence encoder: no head, no labels to match
        return task, load_sentence_model(cfg.model, pooling=cfg.pooling, normalize=cfg.normalize)
    from transformers import set_seed

    set_seed(cfg.finetune.seed)   # a fresh head's initial weights follow the run's seed, so a rerun is the same run
    loaded = load_classifier(cfg.model, labels=task.label_names, task=requested, new_head=cfg.new_head)
    check_words(task, loaded.task, model=cfg.model, asked=cfg.task is not None)
    if not cfg.finetune.enabled and not loaded.kept_head:
        if cfg.new_head:
            raise ModelError(f"--no-finetune keeps the model as trained, but --new-head gives {cfg.model!r} a fresh, "
                             "untrained head; drop --new-head to keep its own head, or drop --no-finetune to train the "
                             "new head on labelled --train data")
        raise ModelError(f"--no-finetune keeps the model as trained, but {cfg.model!r} gets a fresh, untrained head (it "
                         f"has no {loaded.task} head); drop --no-finetune to fine-tune it on labelled --train "
                         "data, or pass a model fine-tuned for the task")
    if loaded.kept_head:
        task = match_labels(task, loaded.labels, model=cfg.model, training=cfg.finetune.enabled)
    elif (task.train.labels is not None or task.train.tags is not None) and len(task.train) == 0:
        raise ModelError(f"{cfg.model!r} gets a fresh head, which needs labelled --train data; --text alone is for "
                         "a model that is already trained (--no-finetune)")
    return task, loaded


def _training_plan(cfg: RunConfig, task: TaskData, variants: dict[str, dict], original: "PreTrainedModel | None",
                   ft_cfg: "FinetuneConfig") -> dict[str, tuple]:
    """variant name -> (train split, teacher, fine-tune config), or None for a variant used as it is.

    Fine-tuning on (default): every variant trains on the labelled split; a distilled one learns
    from the fine-tuned "dep" variant too. Off (--no-finetune): the given model's weights are kept,
    so DEP and the unpruned model are used as they are, and only distilled variants learn, from the
    given model's logits on the task's text (labels unused), and by default only in their compressed
    embedding: the encoder and head are the given model's own (FinetuneConfig.embedding_only)."""
    from embslim.pipeline.data import Split

    plan: dict[str, tuple | None] = {}
    if not ft_cfg.enabled:
        texts = Split(task.corpus, None, None) if not task.is_pair else Split(task.train.texts, task.train.pairs, None)
        distill_cfg = replace(ft_cfg, enabled=True, epochs=ft_cfg.epochs or 1.0, distill_alpha=1.0,
                              embedding_only=True if ft_cfg.embedding_only is None else ft_cfg.embedding_only)
        for name, v in variants.items():
            distill = v["config"] is not None and v["config"].distill
            plan[name] = (texts, original, distill_cfg) if distill else None
        return plan
    for name, v in variants.items():
        distill = v["config"] is not None and v["config"].distill
        plan[name] = (task.train, variants["dep"]["model"] if distill else None, ft_cfg)
    return plan


def _train_variants(variants: dict[str, dict], plan: dict[str, tuple | None], *, loaded: "LoadedModel",
                    task: TaskData, meta: "BundleMeta", work: Path, resume: bool, fingerprint_parts: dict) -> None:
    """Fine-tune (or distil) each variant in place per `plan`, teachers first; checkpoints go to
    `work` so `--resume` can reuse them."""
    from embslim.pipeline.embedding import save_checkpoint
    from embslim.pipeline.finetune import finetune, is_main_process
    from embslim.pipeline.tasks import get_task

    # A distilled variant's teacher ("dep" when fine-tuning) is trained first.
    order = sorted(variants, key=lambda n: (n != "dep", variants[n]["config"] is not None and variants[n]["config"].distill))
    for name in order:
        v = variants[name]
        if plan[name] is None:
            v["finetune"] = {"skipped": "the given model's weights, as trained", "train_examples": 0, "steps": 0,
                             "seconds": 0.0}
            continue
        split, teacher, ft_cfg = plan[name]
        folder = work / f"checkpoint-{_slug(name)}"
        # Same keys as before --no-finetune existed, so --resume still finds older checkpoints.
        v["fingerprint"] = _fingerprint(
            **{k: fingerprint_parts[k] for k in ("weights", "model", "data", "max_length")},
            finetune={k: x for k, x in asdict(ft_cfg).items() if k != "enabled"},
            prune=fingerprint_parts["prune"] if name != "unpruned" else None,
            kept=fingerprint_parts["kept"] if name != "unpruned" else None,
            variant=asdict(v["config"]) if v["config"] is not None else "unpruned",
            teacher=_teacher_fingerprint(teacher, variants, loaded))
        resumed = _resume(v["model"], folder, v["fingerprint"]) if resume else None
        if resumed is not None:
            log.info("fine-tune %s: resumed from %s (same inputs)", name, folder)
            v["finetune"] = resumed
            continue
        task_def = get_task(loaded.task)
        v["finetune"] = finetune(v["model"], loaded.tokenizer, split, task.eval, cfg=ft_cfg, name=name,
                                 work_dir=str(work), teacher=teacher, output=task_def.primary_output,
                                 label_names=task.label_names, token_level=task_def.token_level)
        if is_main_process():
            save_checkpoint(v["model"], loaded.tokenizer, folder,
                            meta=meta.to_json() | {"run_fingerprint": v["fingerprint"], "finetune": v["finetune"]})


def _teacher_fingerprint(teacher: "PreTrainedModel | None", variants: dict[str, dict], loaded: "LoadedModel") -> str | None:
    if teacher is None:
        return None
    if "dep" in variants and teacher is variants["dep"]["model"]:
        return variants["dep"]["fingerprint"]
    return loaded.weights_sha256 or loaded.name   # the given model itself (--no-finetune)



def _leave_process_group() -> None:
    """Destroy this rank's torch.distributed process group, if any, once fine-tuning is done (every rank,
    rank 0 too). A rank that left with its gloo group alive aborted at exit now and then ("terminate
    called without an active exception", SIGABRT) when the machine was busy, and torchrun then failed
    the run."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

@dataclass
class _Inputs:
    """What stage 1 loads and every later stage reads: the task, the model and what follows from them."""
    task: TaskData
    loaded: "LoadedModel"
    task_def: Any                  # pipeline.tasks.Task
    scorer: Any                    # pipeline.scoring's scorer for the task
    max_length: int
    ft_cfg: "FinetuneConfig"       # cfg.finetune with max_length clipped and fine-tuning off for kept models
    keep: bool                     # the given model is used as trained
    hidden: int
    params_before: int
    original: "PreTrainedModel | None"         # a copy of the given model (baseline, or kept head)
    original_outputs: Any = None                # its outputs on the eval texts, when every artifact is compared with it
    meta: "BundleMeta | None" = None


def _load_stage(cfg: RunConfig, *, task: TaskData | None, data_root: str | None, work: Path) -> _Inputs:
    """Stage 1: the task data, the model and the task's scorer; the work folder is created only once
    they are checked. A kept head's outputs on the eval texts become every artifact's reference (and the
    eval labels when the held-out text has none)."""
    from embslim.pipeline.bundle import make_work_dir
    from embslim.pipeline.finetune import predict_outputs, process_rank
    from embslim.pipeline.model import get_word_embeddings
    from embslim.pipeline.scoring import load_probes, scorer_for
    from embslim.pipeline.tasks import get_task

    task, loaded = load_inputs(cfg, task=task, data_root=data_root)
    task_def = get_task(loaded.task)
    # Sentence embeddings: only the kNN / pair data is labelled, and it is read before anything is written.
    scorer = scorer_for(loaded.task, n_labels=len(task.label_names), label_names=task.label_names,
                        probes=None if task_def.has_labels else
                        load_probes(task, cfg.validate, data_root=data_root, clinc_eval_split=cfg.data.clinc_eval_split))
    make_work_dir(work, remove_trainers=process_rank()[1] == 1)   # created only now the inputs are checked
    max_length = min(cfg.finetune.max_length, int(getattr(loaded.model.config, "max_position_embeddings", 512)))
    inputs = _Inputs(
        task=task, loaded=loaded, task_def=task_def, scorer=scorer, max_length=max_length,
        ft_cfg=replace(cfg.finetune, max_length=max_length, enabled=cfg.finetune.enabled and not task_def.keeps_model),
        keep=not cfg.finetune.enabled or task_def.keeps_model,
        hidden=int(get_word_embeddings(loaded.model).embedding_dim),
        params_before=sum(p.numel() for p in loaded.model.parameters()),
        original=copy.deepcopy(loaded.model) if cfg.baseline or loaded.kept_head else None)
    if loaded.kept_head:   # every artifact is compared with the model the user gave
        inputs.original_outputs = predict_outputs(
            inputs.original, loaded.tokenizer, task.eval.texts, task.eval.pairs, max_length=max_length,
            batch_size=cfg.validate.batch_size, output=task_def.primary_output,
            desc=f"the given model's {task_def.primary_output} on the eval texts")
        if not task.eval.labelled and task_def.has_labels:   # unlabelled held-out text: its labels are the reference
            inputs.task = replace(task, eval=task.eval.with_labels(inputs.original_outputs.argmax(-1)),
                                  eval_labels_source="model")
    inputs.meta = bundle_meta(loaded, inputs.task, max_length=max_length)
    return inputs


def _prune_stage(cfg: RunConfig, inputs: _Inputs, work: Path) -> tuple["PrunedVocab", dict, dict[str, dict]]:
    """Stage 2: DEP's vocabulary from the task's text (saved to `work`), the model pruned to it, and one
    model per variant with its compressor fitted. Returns (vocab, vocabulary stats, variants)."""
    from embslim.pipeline.embedding import apply_pruning, trim_positions
    from embslim.pipeline.model import get_word_embeddings
    from embslim.pipeline.vocab import oov_stats, prune

    task, model, tokenizer = inputs.task, inputs.loaded.model, inputs.loaded.tokenizer
    vocab = prune(tokenizer, task.train.texts, task.train.pairs, weight=get_word_embeddings(model).weight.detach().numpy(),
                  cfg=cfg.prune, extra_texts=task.texts)
    vocab.save(work)
    vocab_stats = vocab.stats(inputs.hidden) | oov_stats(vocab, tokenizer, task.eval.texts, task.eval.pairs)
    vocab_stats["keep_top"] = cfg.prune.keep_top
    log.info("eval OOV rate %.2f%% (%d of %d tokens; %d of %d examples)", 100 * vocab_stats["eval_oov_rate"],
             vocab_stats["eval_oov_tokens"], vocab_stats["eval_tokens"], vocab_stats["eval_examples_with_oov"],
             vocab_stats["eval_examples"])
    if vocab_stats["eval_unseen_tokens"] != vocab_stats["eval_oov_tokens"]:
        log.info("eval tokens the task's text never used: %.2f%% (%d; %d examples); kept rows serve them",
                 100 * vocab_stats["eval_unseen_rate"], vocab_stats["eval_unseen_tokens"],
                 vocab_stats["eval_examples_with_unseen"])
    apply_pruning(model, vocab)
    if cfg.prune.trim_positions:
        cut = trim_positions(model, inputs.max_length)
        vocab_stats["position_rows_cut"] = cut
        log.info("position table: %d of %d rows cut (inputs are truncated at %d tokens)",
                 cut, cut + int(model.config.max_position_embeddings), inputs.max_length)
    variants = _build_variants(model, vocab, cfg.variants)
    if cfg.baseline:
        # The given model: used as it is (--no-finetune), or fine-tuned like the others for the comparison.
        variants["unpruned"] = {"model": inputs.original, "config": None, "info": {"method": "full table"}}
    return vocab, vocab_stats, variants


def _stages_record(cfg: RunConfig, inputs: _Inputs, vocab: "PrunedVocab", variants: dict[str, dict]) -> dict:
    """The manifest's `stages`: what each stage did, as data."""
    loaded, task_def = inputs.loaded, inputs.task_def
    return {"data": inputs.task.summary(), "prune": asdict(cfg.prune) | {"kept_rows": vocab.size},
            "compress": {n: v["info"] for n, v in variants.items() if n != "unpruned"},
            "finetune": {n: v["finetune"] for n, v in variants.items()} | {"enabled": inputs.ft_cfg.enabled},
            "model": {"task": loaded.task, "head": "none" if not task_def.has_labels else "kept" if loaded.kept_head else "new"}
            | ({"embedding": inputs.meta.embedding} if inputs.meta.embedding else {}),
            "export": {"opset": cfg.opset, "exporter": "torch.onnx (TorchScript)"}}


def _validate_variants(cfg: RunConfig, inputs: _Inputs, variants: dict[str, dict], plan: dict[str, tuple | None],
                       bundle: Path) -> list[dict]:
    """Stage 5: each variant's model.onnx under ONNX Runtime (the unpruned baseline first) against its
    PyTorch model and the given model; one report row each. Keeps each variant's ORT outputs and metrics
    in `v["fp32"]`, the targets stage's reference for its quantized files."""
    from embslim.pipeline.embedding import embedding_bytes, embedding_params
    from embslim.pipeline.finetune import predict_outputs
    from embslim.pipeline.validate import check_parity, validate_artifact

    task, scorer = inputs.task, inputs.scorer
    rows = []
    for i, name in enumerate(sorted(variants, key=lambda n: n != "unpruned"), start=1):
        log.info("validate %d/%d: %s", i, len(variants), name)
        v = variants[name]
        if v["model"] is inputs.original and plan[name] is None and inputs.original_outputs is not None:
            torch_outputs = inputs.original_outputs   # the given model, untrained: its eval outputs are already here
        else:
            torch_outputs = predict_outputs(v["model"], inputs.loaded.tokenizer, task.eval.texts, task.eval.pairs,
                                            max_length=inputs.max_length, batch_size=cfg.validate.batch_size,
                                            output=inputs.task_def.primary_output)
        metrics, outputs = validate_artifact(v["folder"], "model.onnx", task.eval, scorer=scorer, cfg=cfg.validate,
                                             torch_outputs=torch_outputs, original_outputs=inputs.original_outputs)
        v["fp32"] = (outputs, metrics)
        check_parity(f"{name} model.onnx", metrics, cfg=cfg.validate, scorer=scorer)
        rows.append(metrics | {
            "name": name, "precision": "fp32", "description": _describe(name, v["info"], keep=inputs.keep),
            "file": "model.onnx" if v["folder"] == bundle else str(v["folder"] / "model.onnx"),
            "total_params": sum(p.numel() for p in v["model"].parameters()),
            "embedding_params": embedding_params(v["model"]),
            "onnx_embedding_bytes": embedding_bytes(v["model"]),
            "reconstruction_error": v["info"].get("reconstruction_error"),
            "token_weighted_error": v["info"].get("token_weighted_error"),
        })
    return rows


def _quantize_variants(cfg: RunConfig, inputs: _Inputs, variants: dict[str, dict], bundle: Path, work: Path) -> list[dict]:
    """Stage 6: the chosen variant's quantized files per `cfg.targets`, and with `all_variants` the
    other variants' int8 file for the first target; one report row each."""
    from embslim.pipeline.targets import build_targets, calibration_split

    common = {"scorer": inputs.scorer, "validate": cfg.validate, "original_outputs": inputs.original_outputs,
              "calibration": calibration_split(inputs.task)}
    rows = [r | {"name": f"{cfg.chosen} {r['name']}", "base": cfg.chosen} for r in
            build_targets(bundle, inputs.task.eval, cfg=cfg.targets, work=work, fp32=variants[cfg.chosen]["fp32"], **common)]
    if cfg.targets.all_variants and cfg.targets.targets:
        # the mixed file's byte budget is the bundle's: another variant's int8 body may not fit it
        others = replace(cfg.targets, targets=cfg.targets.targets[:1], mobile=False, allow_drop=True,
                         mixed=False, max_bytes=None)
        for name, v in variants.items():
            if v["folder"] != bundle:
                rows += [r | {"name": f"{name} {r['name']}", "base": name, "file": str(v["folder"] / r["file"])} for r in
                         build_targets(v["folder"], inputs.task.eval, cfg=others, work=work / f"targets-{_slug(name)}",
                                       fp32=v["fp32"], **common)]
    return rows


def run(cfg: RunConfig, *, out: str | Path, force: bool = False, data_root: str | None = None,
        task: TaskData | None = None, resume: bool = False) -> Path:
    """Run every stage and write the bundle to `out` (the chosen variant's model.onnx, plus a
    report over every variant and the unpruned baseline). Returns the bundle path.

    With `resume`, a variant whose checkpoint in `<out>.work/` came from the same inputs (model
    weights, data, vocabulary, compressor and its options, fine-tune settings, teacher) is loaded
    instead of fine-tuned again, so a run that died in a later stage restarts in minutes.
    With fine-tuning off (`cfg.finetune.enabled` False, --no-finetune) the given trained model is
    pruned and exported as it is, and every artifact is compared with it."""
    from embslim.pipeline.bundle import (check_output, export_model, expose_manifest, manifest_path, staged_bundle,
                                         write_manifest)
    from embslim.pipeline.card import write_card
    from embslim.pipeline.finetune import is_main_process, process_rank
    from embslim.pipeline.report import write_report
    from embslim.pipeline.vocab import fingerprint_dict

    out = check_output(out, force=force)   # nothing is created until the inputs below are checked
    work = check_output(out.with_name(out.name + ".work"), kind="work", force=True, flag="work folder")
    total = 7
    t_start = time.perf_counter()
    with stage(1, total, "load task data and model"):
        inputs = _load_stage(cfg, task=task, data_root=data_root, work=work)
    with stage(2, total, "prune the vocabulary (DEP) and fit compressors"):
        vocab, vocab_stats, variants = _prune_stage(cfg, inputs, work)
    plan = _training_plan(cfg, inputs.task, variants, inputs.original, inputs.ft_cfg)
    trained = [n for n in variants if plan[n] is not None]
    with stage(3, total, f"fine-tune ({', '.join(trained) or 'nothing: the given model is kept as trained'})"):
        _train_variants(variants, plan, loaded=inputs.loaded, task=inputs.task, meta=inputs.meta, work=work, resume=resume,
                        fingerprint_parts={"weights": inputs.loaded.weights_sha256, "model": inputs.loaded.name,
                                           "data": _task_digest(inputs.task), "max_length": inputs.max_length,
                                           "prune": fingerprint_dict(cfg.prune), "kept": vocab.kept_ids.tolist()})
    _leave_process_group()   # nothing after fine-tuning talks to the other ranks
    if not is_main_process():   # under torchrun / accelerate: every rank trained; rank 0 exports and writes
        log.info("rank %d of %d: fine-tuning done; rank 0 writes the bundle", *process_rank())
        return out

    stages = _stages_record(cfg, inputs, vocab, variants)
    with staged_bundle(out, force=force) as bundle:
        for name, v in variants.items():
            v["folder"] = bundle if name == cfg.chosen else work / _slug(name)
        with stage(4, total, "export to ONNX and check parity with PyTorch"):
            for i, (name, v) in enumerate(variants.items(), start=1):
                log.info("export %d/%d: %s", i, len(variants), name)
                v["artifacts"] = export_model(v["model"], inputs.loaded.tokenizer, v["folder"], meta=inputs.meta,
                                              opset=cfg.opset, atol=cfg.validate.parity_atol, stages=stages)
        expose_manifest(bundle)   # the runtime loads the staged bundle from here on
        with stage(5, total, "validate under ONNX Runtime (accuracy, parity, latency, memory)"):
            rows = _validate_variants(cfg, inputs, variants, plan, bundle)
        with stage(6, total, f"quantize for {', '.join(cfg.targets.targets) or 'no targets'}"
                              + (" (every variant)" if cfg.targets.all_variants and cfg.targets.targets else "")):
            rows += _quantize_variants(cfg, inputs, variants, bundle, work)
        with stage(7, total, "write manifest and report"):
            artifacts = json.loads(manifest_path(bundle).read_text())["artifacts"]   # fp32 + what the targets added
            write_manifest(bundle, meta=inputs.meta, pad_id=int(inputs.loaded.tokenizer.pad_token_id or 0),
                           artifacts=artifacts, stages=stages | {"bundle_variant": cfg.chosen, "targets": asdict(cfg.targets)},
                           metrics={r["name"]: r for r in rows})
            report = _report(cfg, inputs, vocab, vocab_stats, variants, rows, work=work,
                             seconds=time.perf_counter() - t_start)
            write_report(report, bundle)
            write_card(bundle, report=report, source_dir=inputs.loaded.path)
    return out


def _report(cfg: RunConfig, inputs: _Inputs, vocab: "PrunedVocab", vocab_stats: dict, variants: dict[str, dict],
            rows: list[dict], *, work: Path, seconds: float) -> dict:
    """report.json's content: the model, task, vocabulary, fine-tune settings, one row per artifact, notes."""
    from embslim.pipeline.sentence import SentenceEncoder

    task, loaded, task_def, ft_cfg = inputs.task, inputs.loaded, inputs.task_def, inputs.ft_cfg
    probes = getattr(inputs.scorer, "probes", None)
    probe_info = probes.describe() if probes is not None else {}
    ft = variants[cfg.chosen]["finetune"]
    corpus = (f"the training split ({len(task.train)} examples)" if len(task.train) else "") + (
        f"{' and ' if len(task.train) else ''}{len(task.texts)} --text lines" if task.texts else "")
    model = {"name": loaded.name, "family": loaded.model.config.model_type, "hidden_size": inputs.hidden,
             "vocab_size": vocab.original_size, "total_params": inputs.params_before, "task": loaded.task,
             "head": "none" if not task_def.has_labels else "kept (its own labels)" if loaded.kept_head else "new"}
    if isinstance(loaded.model, SentenceEncoder):
        model |= loaded.model.describe()
    return {
        "title": f"embslim footprint report: {task.name}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "task": {"name": task.name, "type": loaded.task, "is_pair": task.is_pair,
                 "n_labels": len(task.label_names) if task_def.has_labels else 0,
                 "labels": list(task.label_names)[:20] if task_def.has_labels else [], "n_train": len(task.train),
                 "n_texts": len(task.texts), "n_train_used": ft["train_examples"], "n_eval": len(task.eval),
                 "eval_labels": task.eval_labels_source} | probe_info,
        "vocab": vocab_stats,
        "finetune": {"enabled": ft_cfg.enabled, "epochs": ft_cfg.epochs, "max_steps": ft_cfg.max_steps,
                     "batch_size": ft_cfg.batch_size, "learning_rate": ft_cfg.learning_rate, "max_length": ft_cfg.max_length,
                     "seed": ft_cfg.seed, "train_samples": ft["train_examples"],
                     "seconds": {n: v["finetune"]["seconds"] for n, v in variants.items()}}
                    | ({"distill_loss": ft_cfg.distill_loss} if not task_def.has_labels else {}),
        "variants": rows,
        "notes": [f"bundle model.onnx = variant {cfg.chosen!r}; the other variants' ONNX files are in {work}."]
                 + _metric_notes(cfg, inputs, rows, probe_info)
                 + ([f"latency: batch 1, {cfg.validate.latency_seq_len} tokens, {cfg.validate.threads} thread(s), "
                     f"median and p95 of {cfg.validate.latency_runs} runs after warm-up, fresh process per model.",
                     "peak RSS: VmHWM of that fresh process (model load + inference)."] if cfg.validate.measure else [])
                 + [f"DEP vocabulary counted on {corpus}; unseen ids -> {cfg.prune.fallback}."]
                 + (["reconstruction error: ||E - E_hat||_F / ||E||_F of the compressed DEP matrix before fine-tuning."]
                    if any(r.get("reconstruction_error") is not None for r in rows) else [])
                 + [f"total wall time {seconds:.0f} s."]
                 + method_picks(rows, {n: v["info"]["method"] for n, v in variants.items()}, key=scorer_key(rows)),
    }


def scorer_key(rows: list[dict]) -> str:
    """The metric method_picks ranks by: accuracy, else entity F1 (a tagger's rows have no `accuracy`;
    a binary classifier's `f1` comes after its accuracy), else kNN accuracy, else mean cosine to the original."""
    return next((k for k in ("accuracy", "f1", "knn_accuracy", "cosine_mean") if any(r.get(k) is not None for r in rows)),
                "accuracy")


def _metric_notes(cfg: RunConfig, inputs: _Inputs, rows: list[dict], probe_info: dict) -> list[str]:
    """The report's notes on how the metrics were measured: labelled tasks here, sentence embeddings'
    in `sentence.report_notes`."""
    from embslim.pipeline.sentence import report_notes

    task = inputs.task
    if not inputs.task_def.has_labels:
        return report_notes(probe_info, rows, n_eval=len(task.eval),
                            batch_size=cfg.validate.batch_size, knn_ignore_labels=cfg.validate.knn_ignore_labels)
    return ([f"ONNX Runtime CPU; accuracy on the full eval split ({len(task.eval)} examples), batch "
             f"{cfg.validate.batch_size} with per-batch padding"
             + ("; the eval texts have no gold labels, so accuracy = agreement with the given model's labels."
                if task.eval_labels_source == "model" else ".")]
            + (["fine-tuning off (--no-finetune): the given model's weights are kept; \"agrees with given model\" "
                "is each file's label agreement with the given PyTorch model on the eval texts, and \"max |Δlogit| "
                "vs given model\" the largest logit difference there."] if not inputs.ft_cfg.enabled else []))


def method_picks(rows: list[dict], methods: Mapping[str, str], *, key: str = "accuracy") -> list[str]:
    """One report line per compression method built in several variants: the variant to pick
    (highest fp32 ORT `key`: accuracy, entity F1, kNN accuracy or mean cosine), with the others'.
    `methods`: variant name -> method."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if not r.get("base") and r.get(key) is not None and r["name"] in methods:
            groups.setdefault(methods[r["name"]], []).append(r)
    what = {"accuracy": "ORT accuracy", "f1": "ORT entity F1", "knn_accuracy": "ORT kNN accuracy",
            "cosine_mean": "mean cosine x100"}[key]
    lines = []
    for method, members in groups.items():
        if len(members) > 1:
            best, *rest = sorted(members, key=lambda r: -r[key])
            lines.append(f"{method}: pick {best['name']} ({100 * best[key]:.2f}% {what}, "
                         f"{best['embedding_params']:,} embedding params); the others: "
                         + ", ".join(f"{r['name']} {100 * r[key]:.2f}%" for r in rest))
    return lines


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_.=" else "_" for c in name)
