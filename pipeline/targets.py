"""The target stage: fuse the bundle's fp32 graph, quantize it per CPU family (int8, optional
4-bit), optionally convert one variant to ORT's mobile format, and validate every artifact on the
task (accuracy and agreement against fp32, latency and memory in a fresh process).

Each artifact is added to the manifest with its target, so `embslim.runtime.Classifier.from_bundle(path,
variant="auto")` picks the one for the machine it runs on. A quantized variant whose accuracy
falls more than `max_drop` below fp32 fails the stage unless `allow_drop` is set, in which case
the report flags it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from embslim.pipeline.data import Split
from embslim.pipeline.validate import ValidateConfig

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

Target = Literal["arm64", "avx2", "avx512-vnni"]


# int8 targets quantized from the unfused model.onnx rather than the fused graph (Attention,
# SkipLayerNorm, BiasGelu). Fusion is decided per target by measurement: on an AVX512-VNNI CPU the
# unfused int8 graph of the SST-2 MiniLM bundles ran faster than the fused one (README "Below 0.5x",
# issue #16); arm64 and avx2 keep the fusion measured faster on the AVX2 CPU of issue #5 (an ARM
# core was not measured).
UNFUSED_INT8_TARGETS = frozenset({"avx512-vnni"})


class TargetsError(ValueError):
    """A target option is wrong."""


# The graph static int8 is quantized from. ORT's QDQ quantizer has no rule for the fused Attention
# op (its weights would stay fp32), so the choice is the unfused model.onnx or the graph fused
# without Attention (SkipLayerNorm, BiasGelu). Measured on an SST-2 DEP bundle (batch 1, 32 tokens,
# 1 thread, median of 5 fresh-process probes, a busy 2-core machine): unfused 9.2 ms, fused without
# Attention 12.8-13.1 ms, dynamic int8 of the fully fused graph 9.7 ms, fp32 12.0 ms.
STATIC_SOURCE: Literal["unfused", "fused-noattn"] = "unfused"


_TARGET_HINT = "--targets arm64 on the command line, targets = [\"arm64\"] in a config"


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str, *, where: str | None = None) -> int:
    """'8MB' -> 8000000, '7.5MiB' -> 7864320, '900000' -> 900000 (MB = 10^6 bytes, MiB = 2^20), for
    --max-bytes and max_bytes in a config file. Raises TargetsError (one line, after `where: ` when given)
    otherwise."""
    import re

    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else None
    if not found or unit not in _UNITS:
        raise TargetsError(f"{where + ': ' if where else ''}{text!r} is not a size; give bytes or a number with a "
                           "unit: 8MB, 7.5MiB, 900KB, 9000000")
    return int(float(found.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class TargetsConfig:
    # int8 per CPU family: arm64 for phones and ARM boards; avx2 / avx512-vnni for x86 servers.
    targets: tuple[Target, ...] = ("arm64",)
    # A 4-bit variant (MatMulNBits + GatherBlockQuantized) for the first target: the smallest bundle,
    # slower than int8 at MiniLM's size on these CPUs (DESIGN.md). It is quantized from a graph
    # fused WITHOUT the Attention op, so the Q/K/V projections take 4-bit too (a fused Attention's
    # weights can only fall back to int8).
    int4: bool = False
    # ORT transformer fusion (Attention, SkipLayerNorm, BiasGelu) before quantizing: smaller, faster
    # (except int8 for the targets in UNFUSED_INT8_TARGETS, whose unfused graph measured faster).
    fuse: bool = True
    # ORT format (.ort) of the first target's int8 model + required_operators.config.
    mobile: bool = False
    per_channel: bool = True          # per-tensor int8 costs MiniLM accuracy (DESIGN.md)
    include_embeddings: bool = True   # quantize the embedding tables too (the DEP table is ~18 MB at fp32)
    max_drop: float = 0.01            # accuracy (share) a quantized variant may lose against fp32
    allow_drop: bool = False          # keep a variant that loses more, flagged in the report
    # In a multi-variant run, also quantize every other variant (and the unpruned baseline) for the
    # first target (int8, plus 4-bit with int4) into its work folder, so the comparison report has
    # int8/4-bit bytes and accuracy for all of them. Their drops are flagged, never fatal.
    all_variants: bool = False
    # 4-bit settings (the int4 variant and the 4-bit groups of a mixed file); embslim.exporters.quantize
    # lists what ONNX Runtime 1.31 supports. rtn: no data, seconds. hqq: asymmetric only. gptq: uses
    # `calibration_texts` of the training text (in ORT 1.31.1 it gives RTN's weights: see quantize.py).
    int4_algorithm: Literal["rtn", "hqq", "gptq"] = "rtn"
    int4_block_size: int = 32          # power of two >= 16; smaller blocks: better SNR, more scale bytes
    int4_symmetric: bool = True        # False: a zero point per block (hqq needs False)
    int4_accuracy_level: int = 0       # MatMulNBits compute: 0 fp32 (ORT's default), 4 int8 activations
    int4_table_block_size: int | None = None   # 4-bit embedding tables' block length; None: int4_block_size
    # What runs the 4-bit MatMuls (QuantizeConfig.kernel): "matmulnbits" (ORT's 4-bit blocks and kernels;
    # block size, algorithm, accuracy_level apply) or "int8" (4-bit per output column stored as INT4, cast
    # to int8 at load and run by the int8 kernels: int8 speed and memory; rtn or gptq (embslim's), symmetric).
    int4_kernel: Literal["matmulnbits", "int8"] = "matmulnbits"
    calibration_texts: int = 128       # training texts (spread over the split) for gptq, the sensitivity pass, SmoothQuant
    # A mixed file (model.mixed-<first target>.onnx, variant "mixed"): some weight groups 4-bit, the rest
    # int8, chosen by per-group sensitivity (embslim.exporters.sensitivity). With max_bytes the least
    # sensitive groups go 4-bit until the file fits; without it, as many as keep the eval-split drop
    # within max_drop (the same budget every quantized file is held to).
    mixed: bool = False
    max_bytes: int | str | None = None   # bytes of the mixed ONNX file ("8MB" and the like read as --max-bytes); implies mixed
    # Static (calibrated, QDQ) int8 for every target too: model.int8-static-<target>.onnx, manifest
    # variant "int8-static". Its activation scales are fixed from `calibration_size` training texts,
    # so a text's label does not depend on the texts batched with it (dynamic int8's do: issue #16).
    # Off by default: calibration adds ~1 min per target, and variant="auto" keeps loading dynamic int8.
    static_int8: bool = False
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"   # measured: StaticQuantizeConfig
    calibration_size: int = 200
    # SmoothQuant (embslim.exporters.smooth) before dynamic int8 and the mixed file: activation outliers
    # moved into the weights, alpha picked by int8 output SNR on `calibration_texts` training texts
    # (or `smooth_alpha`). Those files are then quantized from the smoothed UNFUSED graph (the Mul in
    # front of Q/K/V stops the Attention fusion). Measured on the issue #14 embedder: mean cosine to
    # the original 0.9859 -> 0.9908 (int8). Off by default: it costs ~25 s per run and was not measured
    # on classifiers.
    smooth_quant: bool = False
    smooth_alpha: float | None = None   # implies smooth_quant

    def __post_init__(self) -> None:
        from embslim.exporters.quantize import TARGETS
        from embslim.pipeline.config_types import check_field_types

        check_field_types(self)
        object.__setattr__(self, "targets", tuple(self.targets))
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise TargetsError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise TargetsError(f"targets repeat: {self.targets}")
        if (self.int4 or self.mobile) and not self.targets:
            raise TargetsError(f"{'int4' if self.int4 else 'mobile'} needs at least one target ({_TARGET_HINT})")
        if not 0 <= self.max_drop <= 1:
            raise TargetsError(f"max_drop is a share in [0, 1] (0.01 = 1 point), got {self.max_drop}")
        if self.calibration_texts < 1:
            raise TargetsError(f"calibration_texts must be >= 1, got {self.calibration_texts}; 128 is the default")
        if isinstance(self.max_bytes, str):
            object.__setattr__(self, "max_bytes", parse_bytes(self.max_bytes, where="max_bytes"))
        if self.max_bytes is not None:
            if self.max_bytes < 1:
                raise TargetsError(f"max_bytes is the mixed file's size in bytes (> 0), got {self.max_bytes}; "
                                   "e.g. 8000000 (--max-bytes 8MB)")
            object.__setattr__(self, "mixed", True)
        if self.mixed and not self.targets:
            raise TargetsError(f"mixed and max_bytes need at least one target ({_TARGET_HINT})")
        try:   # the 4-bit settings are checked where they are used, with the same words; 4-bit files are the first target's
            from embslim.exporters.quantize import QuantizeConfig

            QuantizeConfig(target=self.targets[0] if self.int4 or self.mixed else "arm64", bits=4, **self.int4_settings)
        except ValueError as e:
            raise TargetsError(f"int4_{e}") from e
        if self.smooth_alpha is not None:
            if not 0 < self.smooth_alpha <= 1:
                raise TargetsError(f"smooth_alpha (SmoothQuant migration strength) must be in (0, 1], got "
                                   f"{self.smooth_alpha}; leave it out to pick it on the training texts")
            object.__setattr__(self, "smooth_quant", True)
        if self.smooth_quant and not self.targets:
            raise TargetsError(f"smooth_quant needs at least one target ({_TARGET_HINT})")
        if self.static_int8:
            from embslim.exporters.quantize import StaticQuantizeConfig

            try:
                StaticQuantizeConfig(target=self.targets[0] if self.targets else "arm64",
                                     calibration_method=self.calibration_method, calibration_size=self.calibration_size)
            except ValueError as e:
                raise TargetsError(str(e)) from e
            if not self.targets:
                raise TargetsError(f"static_int8 needs at least one target ({_TARGET_HINT})")

    @property
    def int4_settings(self) -> dict:
        """The 4-bit keyword arguments of `embslim.exporters.quantize.QuantizeConfig`."""
        return {"algorithm": self.int4_algorithm, "block_size": self.int4_block_size,
                "symmetric": self.int4_symmetric, "accuracy_level": self.int4_accuracy_level,
                "table_block_size": self.int4_table_block_size, "kernel": self.int4_kernel}


def smallest_mixed_bytes(model: str | Path, cfg: TargetsConfig) -> int:
    """About how small `model` (a float model.onnx) can get as a mixed file: its size with every weight
    group's float weights (`embslim.exporters.sensitivity.weight_groups`) replaced by their 4-bit
    blocks as `cfg` stores them, the rest (biases, norms, index tables) as they are. An estimate from
    the initializers, before any quantization: it errs high by a few percent (tests)."""
    from embslim.exporters.quantize import _load
    from embslim.exporters.sensitivity import weight_groups

    model = Path(model)
    groups = weight_groups(_load(model), include_embeddings=cfg.include_embeddings, block_size=cfg.int4_block_size,
                           symmetric=cfg.int4_symmetric, table_block_size=cfg.int4_table_block_size,
                           kernel=cfg.int4_kernel)
    return model.stat().st_size - sum(4 * g.params - g.int4_bytes for g in groups)


def unused_int4_settings(cfg: TargetsConfig) -> list[str]:
    """The int4_* settings of `cfg` that differ from their defaults while no 4-bit or mixed file is built."""
    if cfg.int4 or cfg.mixed:
        return []
    defaults = TargetsConfig()
    return [name for name in _int4_fields(cfg) if getattr(cfg, name) != getattr(defaults, name)]


def _int4_fields(cfg: TargetsConfig) -> list[str]:
    """The names of the int4_* settings, in declaration order."""
    return [f.name for f in fields(cfg) if f.name.startswith("int4_")]


# Settings that change how a rebuilt file is made: int8 files (every run) and 4-bit / mixed files (with
# int4 or mixed). `embslim quantize` takes them from its flags, not from the bundle's last build.
_INT8_SETTINGS = ("smooth_quant", "smooth_alpha", "fuse", "per_channel", "include_embeddings")


def _build_settings(*, int4: bool = True) -> list[str]:
    """The settings of how files are made (not which files): the int8 ones, then (`int4`) the int4_* ones."""
    return list(_INT8_SETTINGS) + (_int4_fields(TargetsConfig()) if int4 else [])


def inherited_settings(previous: dict | None, given: dict) -> dict:
    """What `embslim quantize` keeps of the bundle's last build (`previous`: its manifest's stages.targets):
    the settings of how files are made (SmoothQuant, fusion, per-channel, embeddings, every int4_* one) that
    the flags (`given`, TargetsConfig field -> value) leave out. Not which files (targets, int4, mixed,
    max_bytes, static_int8, mobile). A given smooth_quant or smooth_alpha takes the pair from the flags.
    Empty when `previous` is missing (a bundle written before targets were recorded)."""
    if not isinstance(previous, dict):
        return {}
    skip = set(given) | ({"smooth_quant", "smooth_alpha"} if {"smooth_quant", "smooth_alpha"} & set(given) else set())
    return {n: previous[n] for n in _build_settings() if n in previous and n not in skip}


def rebuild_differences(previous: dict | None, cfg: TargetsConfig) -> list[str]:
    """"name old -> new" for each setting of the bundle's last build (`previous`: its manifest's
    stages.targets) that `cfg` changes for the files `cfg` rebuilds: the int8 settings always, the
    int4_* ones when a 4-bit or mixed file is rebuilt. Empty when `previous` is missing."""
    if not isinstance(previous, dict):
        return []
    names = _build_settings(int4=cfg.int4 or cfg.mixed)
    defaults = TargetsConfig()
    out = []
    for name in names:
        old, new = previous.get(name, getattr(defaults, name)), getattr(cfg, name)
        if old != new:
            out.append(f"{name} {json.dumps(old)} -> {json.dumps(new)}")
    return out


def check_byte_budget(model: str | Path, cfg: TargetsConfig) -> None:
    """Raise TargetsError when `cfg.max_bytes` is below `smallest_mixed_bytes(model, cfg)`, so a budget no
    mix can meet fails in seconds, before fusion, calibration, scoring and the sensitivity pass."""
    if cfg.max_bytes is None or not cfg.targets:
        return
    floor = smallest_mixed_bytes(model, cfg)
    if floor > 1.1 * cfg.max_bytes:   # the estimate errs high; a budget near it is left to the real build
        given = f"{cfg.max_bytes / 1e6:.2f} MB" if cfg.max_bytes >= 10_000 else f"{cfg.max_bytes:,} bytes"
        raise TargetsError(f"max_bytes {given} is below the smallest mixed file this model can give (about "
                           f"{floor / 1e6:.2f} MB with every weight group at 4-bit); raise --max-bytes to at least "
                           f"{math.ceil(floor / 1e5) / 10:.1f}MB, or start from a smaller model (fewer kept rows, a "
                           "smaller MESSI tail)")


def build_targets(bundle: str | Path, split: Split, *, cfg: TargetsConfig, validate: ValidateConfig,
                  work: str | Path, scorer: Any, original_outputs: "np.ndarray | None" = None,
                  fp32: "tuple[np.ndarray, dict] | None" = None, calibration: Split | None = None) -> list[dict]:
    """Write the quantized (and mobile) artifacts into `bundle`, list them in its manifest, and
    return one metrics row per artifact for the report, judged by the task's `scorer`
    (`embslim.pipeline.scoring.scorer_for`). `original_outputs` (the user's model on `split`) adds
    each artifact's comparison with that model to its row. `fp32`: model.onnx's outputs on `split`
    and its task metrics when the caller has them already (`embslim run`'s validate stage), so they
    are not computed twice. `calibration`: the task's training split (or, in a text-only run, its
    corpus: `calibration_split`); `cfg.calibration_texts` of its texts (through the bundle's own
    tokenizer) calibrate GPTQ and the mixed file's sensitivity pass (without it the eval split's texts
    are used, and said so), and its texts calibrate the static int8 files (`cfg.static_int8`;
    TargetsError without it)."""
    from embslim.exporters.mobile import to_ort_format
    from embslim.exporters.onnx import shapes_for
    from embslim.exporters.optimize import OptimizeConfig, fuse_for_quantization
    from embslim.exporters.quantize import QuantizeConfig, quantize
    from embslim.pipeline.bundle import add_artifacts, artifact_entry
    from embslim.pipeline.probe import measure
    from embslim.pipeline.validate import latency_ids

    bundle, work = Path(bundle), Path(work)
    if not cfg.targets:
        return []
    check_byte_budget(bundle / "model.onnx", cfg)
    unused = unused_int4_settings(cfg)
    if unused:
        log.warning("%s set, but this run builds no 4-bit file: add --int4 or --mixed (int4 = true / mixed = true) "
                    "for them to apply", ", ".join(unused))
    if cfg.static_int8 and (calibration is None or not len(calibration)):
        raise TargetsError("static_int8 calibrates on the task's training texts, and this run has none: pass "
                           "--train (labels are not needed), or drop --static-int8")
    fp32_model = scorer.load(bundle, "model.onnx")   # maybe the bundle being written
    shapes = shapes_for(fp32_model.max_length)   # every check stays within the inputs the bundle accepts
    if cfg.fuse:
        log.info("fusing model.onnx (ORT transformer optimizer%s)", ", and once without Attention for 4-bit" if cfg.int4 else "")
    # bits -> the fused graph that precision is quantized from (unfused model.onnx without fusion)
    fused = fuse_for_quantization(bundle / "model.onnx", work, int4=cfg.int4 or cfg.mixed,
                                  cfg=OptimizeConfig(config_json=str(bundle / "config.json"), validation_shapes=shapes)
                                  ) if cfg.fuse else {}
    for bits, result in fused.items():
        log.info("fused for %d-bit: %s", bits, ", ".join(f"{k} x{v}" for k, v in result.fused.items()) or "nothing")
    plans = [QuantizeConfig(target=t, per_channel=cfg.per_channel, include_embeddings=cfg.include_embeddings,
                            validation_shapes=shapes) for t in cfg.targets]
    if cfg.int4:
        plans.append(QuantizeConfig(target=cfg.targets[0], bits=4, include_embeddings=cfg.include_embeddings,
                                    validation_shapes=shapes, **cfg.int4_settings))
    feeds = None
    if (cfg.int4 and cfg.int4_algorithm == "gptq") or cfg.mixed or cfg.smooth_quant:
        if calibration is None or not len(calibration):
            log.warning("no training text for calibration: using the eval split's texts (the sensitivity ranking "
                        "then sees the data it is judged on)")
        feeds = model_feeds(fp32_model, calibration if calibration is not None and len(calibration) else split,
                                  n=cfg.calibration_texts)

    smoothed = None
    if cfg.smooth_quant:
        from embslim.exporters.smooth import smooth_for_int8

        log.info("SmoothQuant: %s on %d calibration batches", f"alpha {cfg.smooth_alpha}" if cfg.smooth_alpha
                 else "picking alpha by int8 output SNR", len(feeds))
        smoothed = smooth_for_int8(bundle / "model.onnx", work / "model.smoothed.onnx", feeds, cfg=plans[0],
                                   alpha=cfg.smooth_alpha)
        log.info("SmoothQuant: %s", f"alpha {smoothed.alpha} on {smoothed.groups} MatMul inputs" if smoothed.alpha
                 else "no alpha beat the plain graph; int8 is quantized as without it")
    smooth_graph = smoothed.path if smoothed is not None and smoothed.alpha else None   # what int8 / mixed read
    rows = []
    if fp32 is None:
        fp32_outputs = scorer.outputs(fp32_model, split, batch_size=validate.batch_size,
                                      desc="model.onnx: eval (fp32 reference)")
        fp32_metrics = scorer.metrics(fp32_model, fp32_outputs, split, batch_size=validate.batch_size)
    else:
        fp32_outputs, fp32_metrics = fp32
    ids = latency_ids(bundle / "tokenizer.json", split.texts, seq_len=validate.latency_seq_len,
                      max_length=fp32_model.max_length) if validate.measure else None
    for i, plan in enumerate(plans, start=1):
        smoothed_int8 = plan.bits == 8 and smooth_graph is not None
        unfused = smoothed_int8 or (plan.bits == 8 and plan.target in UNFUSED_INT8_TARGETS)
        source = None if unfused else fused.get(plan.bits)
        graph = smooth_graph if smoothed_int8 else source.path if source else bundle / "model.onnx"
        log.info("[%d/%d] %s: quantize, then accuracy on %d examples%s", i, len(plans), plan.file_name, len(split),
                 " and latency/memory" if ids is not None else "")
        q = quantize(graph, bundle / plan.file_name, cfg=plan, calibration=feeds)
        entries = [artifact_entry(bundle, plan.file_name, variant=plan.variant, target=plan.target)]
        if cfg.mobile and plan.bits == 8 and plan.target == cfg.targets[0]:
            ort_path, ops = to_ort_format(bundle / plan.file_name, work / "mobile",
                                          target_platform="arm" if plan.target == "arm64" else "amd64", shapes=shapes)
            for src in (ort_path, ops):
                shutil.move(str(src), bundle / src.name)
            entries += [artifact_entry(bundle, ort_path.name, variant=f"{plan.variant}-ort", target=plan.target),
                        artifact_entry(bundle, ops.name, variant="required-operators", target=plan.target)]
        add_artifacts(bundle, entries)
        check = scorer.quantized(bundle, plan.file_name, split, fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics,
                                 max_drop=cfg.max_drop, allow_drop=cfg.allow_drop, batch_size=validate.batch_size,
                                 original=original_outputs)
        row = {"name": f"{plan.variant}-{plan.target}", "precision": plan.variant, "file": plan.file_name,
               "description": f"{'fused, ' if source else ''}{_smooth_words(smoothed) if plan.bits == 8 else ''}"
                              f"{plan.variant} for {plan.target}"
                              + (f" (FLAGGED: {scorer.primary} drop above max_drop)" if check["flagged"] else ""),
               "onnx_bytes": q.bytes_out, **check, "quantized_ops": q.quantized}
        if plan.bits == 4:
            row["int4"] = q.int4_settings
        elif smoothed is not None:
            row["smooth_quant"] = smoothed.to_json()
        if ids is not None:
            row |= measure(bundle / plan.file_name, ids, runs=validate.latency_runs, threads=validate.threads)
        rows.append(row)
        if cfg.mobile and plan.bits == 8 and plan.target == cfg.targets[0]:
            ort_file = Path(plan.file_name).with_suffix(".ort").name
            ort_check = scorer.quantized(bundle, ort_file, split, fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics,
                                         max_drop=cfg.max_drop, allow_drop=cfg.allow_drop, batch_size=validate.batch_size,
                                         original=original_outputs)
            row = {"name": f"{plan.variant}-{plan.target}-ort", "precision": plan.variant, "file": ort_file,
                   "description": f"ORT mobile format of {plan.file_name}", "onnx_bytes": (bundle / ort_file).stat().st_size,
                   **{k: v for k, v in ort_check.items() if k not in ("accuracy_drop_vs_fp32", "flagged")}}
            rows.append(row | (measure(bundle / ort_file, ids, runs=validate.latency_runs, threads=validate.threads)
                               if ids is not None else {}))
    if cfg.mixed:
        source = fused.get(4)
        graph = smooth_graph or (source.path if source else bundle / "model.onnx")
        row = build_mixed(bundle, graph, split, feeds=feeds, cfg=cfg, shapes=shapes, scorer=scorer,
                          fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics, validate=validate,
                          original_outputs=original_outputs, ids=ids, work=work,
                          graph_words=_smooth_words(smoothed) if smooth_graph else "fused, " if source else "")
        if smoothed is not None:
            row["smooth_quant"] = smoothed.to_json()
        rows.append(row)
    if cfg.static_int8:
        rows += _static_rows(bundle, split, cfg=cfg, validate=validate, work=work, scorer=scorer, shapes=shapes,
                             calibration=calibration, fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics,
                             original_outputs=original_outputs, ids=ids, max_length=fp32_model.max_length)
    return rows


def _smooth_words(smoothed: Any) -> str:
    """How a row's description names the SmoothQuant graph it was quantized from ('' without one)."""
    return f"SmoothQuant alpha {smoothed.alpha}, unfused, " if smoothed is not None and smoothed.alpha else ""


def spread(total: int, n: int) -> list[int]:
    """min(n, total) indices in [0, total), evenly spaced and increasing (all of them when n >= total)."""
    if n >= total:
        return list(range(total))
    return [(i * total) // n for i in range(n)]


def record_targets(bundle: str | Path, rows: list[dict], cfg: TargetsConfig) -> list[dict]:
    """After `embslim quantize` rebuilt files in `bundle` (`build_targets`' `rows`): the manifest's
    `stages.targets` becomes `cfg`, its metrics and report.json's rows for the same files are replaced
    (where the old row stood, else after the bundle variant's rows), and the report is re-rendered
    (report.md, report.html, plots), so it shows the new files' SmoothQuant and mixed-precision
    sections, not the ones they replaced. An .ort file converted from an int8 file that was rebuilt
    (and not converted again) is removed; other quantized files stay, named in a report note and in
    `stages.targets.kept_from_earlier_runs`, with the settings each was built with in
    `stages.kept_built_with` (file -> targets settings). Rows are named as `embslim run` names them ("<bundle
    variant> int8-arm64", `base` = the bundle variant). Returns the renamed rows."""
    import json
    from dataclasses import asdict

    from embslim.pipeline.bundle import manifest_path, write_json_atomic
    from embslim.pipeline.report import write_report

    bundle = Path(bundle)
    manifest = json.loads(manifest_path(bundle).read_text(encoding="utf-8"))
    chosen = (manifest.get("stages") or {}).get("bundle_variant")
    if chosen:
        rows = [r | {"name": f"{chosen} {r['name']}", "base": chosen} for r in rows]
    files = {r.get("file") for r in rows}
    # an .ort converted from an int8 file that was just rebuilt (without --mobile) no longer matches it
    stale = {a["file"] for a in manifest.get("artifacts") or [] if str(a.get("file", "")).endswith(".ort")
             and a["file"] not in files and a["file"][:-4] + ".onnx" in files}
    for name in stale:
        (bundle / name).unlink(missing_ok=True)
    if stale and not any(str(a.get("file", "")).endswith(".ort") and a["file"] not in stale
                         for a in manifest.get("artifacts") or []):
        stale.add("required_operators.config")   # the operator list for a reduced ORT build of the .ort
        (bundle / "required_operators.config").unlink(missing_ok=True)
    manifest["artifacts"] = [a for a in manifest.get("artifacts") or [] if a.get("file") not in stale]
    kept = [a["file"] for a in manifest["artifacts"] if a.get("variant") != "fp32" and a.get("file") not in files]
    files |= stale
    stages = manifest.setdefault("stages", {})
    # the settings each kept file was built with: an earlier quantize's record of it, else the last build's
    last = {k: v for k, v in (stages.get("targets") or {}).items() if k != "kept_from_earlier_runs"}
    history = stages.pop("kept_built_with", None) or {}
    if kept:
        stages["kept_built_with"] = {f: history.get(f, last) for f in kept}
    stages["targets"] = asdict(cfg) | {"kept_from_earlier_runs": kept}
    manifest["metrics"] = {k: v for k, v in (manifest.get("metrics") or {}).items()
                           if not (isinstance(v, dict) and v.get("file") in files)} | {r["name"]: r for r in rows}
    write_json_atomic(manifest_path(bundle), manifest)
    report_file = bundle / "report.json"
    if not report_file.is_file():
        return rows
    report = json.loads(report_file.read_text(encoding="utf-8"))
    old = [v for v in report.get("variants") or [] if isinstance(v, dict)]
    at = next((i for i, v in enumerate(old) if v.get("file") in files), None)
    if at is None:
        own = [i for i, v in enumerate(old) if chosen is not None and chosen in (v.get("name"), v.get("base"))]
        at = own[-1] + 1 if own else len(old)
    kept_before = [v for v in old[:at] if v.get("file") not in files]
    kept_after = [v for v in old[at:] if v.get("file") not in files]
    report["variants"] = kept_before + rows + kept_after
    notes = report.get("notes") if isinstance(report.get("notes"), list) else []
    report["notes"] = notes + [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: embslim quantize rebuilt "
        f"{', '.join(sorted(r['file'] for r in rows))}"
        + (f"; removed {', '.join(sorted(stale))} (converted from the int8 file it replaced)" if stale else "")
        + (f"; kept from an earlier run, still quantized from the same model.onnx: {', '.join(kept)}" if kept else "")
        + "."]
    write_report(report, bundle)
    return rows


def model_feeds(model: Any, split: Split, *, n: int, batch_size: int = 16) -> list[dict]:
    """`n` texts (or pairs) of `split`, spread evenly over it in order (a split sorted by label, as
    CLINC150's training texts are, gives every part), as feed dicts through `model`'s own tokenizer
    (an `embslim.runtime` class loaded from the bundle): graph input name -> int64 [batch, sequence],
    `batch_size` texts per feed, each padded to its longest row as the runtime pads."""
    picks = spread(len(split), n)
    texts = [split.texts[i] for i in picks]
    pairs = [split.pairs[i] for i in picks] if split.pairs is not None else None
    return [model._encode(texts[i:i + batch_size], None if pairs is None else pairs[i:i + batch_size])
            for i in range(0, len(texts), batch_size)]


def build_mixed(bundle: Path, source: Path, split: Split, *, feeds: list[dict], cfg: TargetsConfig,
                shapes: tuple, scorer: Any, fp32_outputs: "np.ndarray", fp32_metrics: dict, validate: ValidateConfig,
                original_outputs: "np.ndarray | None", ids: Any, work: Path, graph_words: str = "fused, ") -> dict:
    """model.mixed-<first target>.onnx: measure each weight group's 4-bit sensitivity on `feeds`
    (embslim.exporters.sensitivity), then take groups to 4-bit (least noise per byte saved first) until
    the file is at most `cfg.max_bytes`, or, without max_bytes, the most groups whose file stays
    within `cfg.max_drop` of fp32 on `split` (bisection over that order, each candidate built and
    scored on the task). Returns the report row with the per-group table. Raises TargetsError when
    even every group at 4-bit exceeds max_bytes."""
    from embslim.exporters.quantize import QuantizeConfig, _load, matmul_hessians, quantize
    from embslim.exporters.sensitivity import choose_int4_groups, int4_order, measure_sensitivity
    from embslim.pipeline.bundle import add_artifacts, artifact_entry
    from embslim.pipeline.probe import measure

    target = cfg.targets[0]
    base_cfg = QuantizeConfig(target=target, per_channel=cfg.per_channel, include_embeddings=cfg.include_embeddings,
                              validation_shapes=shapes, int4_nodes=(), **cfg.int4_settings)
    log.info("mixed precision: 4-bit sensitivity of each weight group on %d calibration batches", len(feeds))
    hessians = None   # kernel 'int8' GPTQ's input statistics: once for the sensitivity pass and every candidate file
    if base_cfg.kernel == "int8" and base_cfg.algorithm == "gptq":
        hessians = matmul_hessians(_load(source), feeds)
    sens = measure_sensitivity(source, feeds, cfg=base_cfg, hessians=hessians)
    order = int4_order(sens)
    by_name = {r.group.name: r for r in sens}
    file = base_cfg.file_name

    def build(names: list[str]) -> Any:
        nodes = tuple(n for g in names for n in by_name[g].group.nodes)
        q = quantize(source, bundle / file, cfg=replace(base_cfg, int4_nodes=nodes), calibration=feeds, hessians=hessians)
        add_artifacts(bundle, [artifact_entry(bundle, file, variant="mixed", target=target)])
        return q

    def score(q: Any) -> dict:
        return scorer.quantized(bundle, file, split, fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics,
                                max_drop=cfg.max_drop, allow_drop=True, batch_size=validate.batch_size,
                                original=original_outputs)

    drop_key = f"{scorer.primary}_drop_vs_fp32"
    if cfg.max_bytes is not None:
        log.info("mixed: %s first with no group at 4-bit (all int8), the size the byte budget starts from", file)
        base = build([])
        chosen = choose_int4_groups(sens, base_bytes=base.bytes_out, max_bytes=cfg.max_bytes)
        if chosen:
            log.info("mixed: %s with %d of %d groups at 4-bit, to fit %.2f MB", file, len(chosen), len(sens),
                     cfg.max_bytes / 1e6)
        q = build(chosen) if chosen else base
        rest = [r.group.name for r in order if r.group.name not in chosen]
        while q.bytes_out > cfg.max_bytes and rest:   # the estimate was short: one more group at a time
            chosen.append(rest.pop(0))
            q = build(chosen)
        if q.bytes_out > cfg.max_bytes:
            raise TargetsError(f"max_bytes {cfg.max_bytes / 1e6:.2f} MB is below the smallest mixed file "
                               f"({q.bytes_out / 1e6:.2f} MB with every weight group at 4-bit); raise --max-bytes to at "
                               f"least {q.bytes_out / 1e6 + 0.01:.2f}MB, or start from a smaller model (fewer kept rows, "
                               "a smaller MESSI tail)")
        check = score(q)
        budget = {"kind": "bytes", "max_bytes": cfg.max_bytes}
    else:   # accuracy budget: the longest prefix of `order` within max_drop (bisection: drops grow with the prefix)
        lo, hi, best = 0, len(order), None
        while lo <= hi:
            mid = (lo + hi) // 2
            q = build([r.group.name for r in order[:mid]])
            check = score(q)
            log.info("mixed: %d of %d groups at 4-bit -> %.2f MB, %s drop %.2f pts%s", mid, len(order),
                     q.bytes_out / 1e6, scorer.primary, 100 * check.get(drop_key, float("nan")),
                     " (over max_drop)" if check["flagged"] else "")
            if not check["flagged"]:   # the scorer's own gate: drop <= max_drop
                best, lo = (mid, q, check), mid + 1
            else:
                hi = mid - 1
        mid, q, check = best if best is not None else (0, None, None)
        chosen = [r.group.name for r in order[:mid]]
        if best is None or q.int4_node_names != tuple(n for g in chosen for n in by_name[g].group.nodes):
            q = build(chosen)   # the last file built was another candidate: rebuild the chosen one
            check = score(q)
        budget = {"kind": "drop", "max_drop": cfg.max_drop,
                  "note": "groups chosen by the eval split's metric, which the row reports too"}
    if check.get("flagged") and not cfg.allow_drop:   # the gate every quantized file passes: raises, as for the others
        check = scorer.quantized(bundle, file, split, fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics,
                                 max_drop=cfg.max_drop, allow_drop=False, batch_size=validate.batch_size,
                                 original=original_outputs)
    table = [r.to_json() | {"precision": "int4" if r.group.name in chosen else "int8"} for r in sens]
    row = {"name": f"mixed-{target}", "precision": "mixed", "file": file,
           "description": f"{graph_words}{len(chosen)} of {len(sens)} weight groups 4-bit, the rest int8, for {target}"
                          + (f" (FLAGGED: {scorer.primary} drop above max_drop)" if check.get("flagged") else ""),
           "onnx_bytes": q.bytes_out, **check, "quantized_ops": q.quantized, "int4": q.int4_settings or base_cfg.int4_settings,
           "mixed": {"budget": budget, "calibration_batches": len(feeds), "groups": table,
                     "int4_groups": chosen, "measure": "SNR of the task output, the group alone at 4-bit, rest fp32"}}
    if ids is not None:
        row |= measure(bundle / file, ids, runs=validate.latency_runs, threads=validate.threads)
    return row


def calibration_split(task: Any) -> Split:
    """The texts static int8 calibrates on: the task's training split, or, in a run given only
    unlabelled text (--text), that text (single-text tasks)."""
    if len(task.train) or task.is_pair:
        return task.train
    return Split(tuple(task.corpus), None, None)


def _static_rows(bundle: Path, split: Split, *, cfg: TargetsConfig, validate: ValidateConfig, work: Path, scorer: Any,
                 shapes: tuple, calibration: Split, fp32_outputs: Any, fp32_metrics: dict,
                 original_outputs: Any, ids: Any, max_length: int) -> list[dict]:
    """Static int8 per target (`cfg.static_int8`), one row each like the dynamic files', plus
    `batch_flips` from the scorer. Quantized from STATIC_SOURCE (see there)."""
    import json

    from embslim.exporters.optimize import OptimizeConfig, optimize
    from embslim.exporters.quantize import (StaticQuantizeConfig, calibration_feeds, graph_input_names,
                                            quantize_static_int8)
    from embslim.pipeline.bundle import add_artifacts, artifact_entry
    from embslim.pipeline.probe import measure

    source = bundle / "model.onnx"
    if STATIC_SOURCE == "fused-noattn" and cfg.fuse:
        source = work / "model.fused-noattn.onnx"
        if not source.is_file():   # fuse_for_quantization wrote it only with int4
            optimize(bundle / "model.onnx", source, cfg=OptimizeConfig(config_json=str(bundle / "config.json"),
                                                                       validation_shapes=shapes, attention=False))
    manifest = json.loads((bundle / "manifest.json").read_text())
    inputs = graph_input_names(source)
    feeds = calibration_feeds(bundle / manifest["tokenizer"]["file"], list(calibration.texts)[:cfg.calibration_size],
                              pairs=list(calibration.pairs)[:cfg.calibration_size] if calibration.pairs is not None else None,
                              input_names=inputs, max_length=max_length, pad_id=int(manifest["tokenizer"]["pad_id"]),
                              same_length=cfg.calibration_method != "minmax")
    rows = []
    for target in cfg.targets:
        plan = StaticQuantizeConfig(target=target, calibration_method=cfg.calibration_method,
                                    calibration_size=cfg.calibration_size, per_channel=cfg.per_channel,
                                    include_embeddings=cfg.include_embeddings, validation_shapes=shapes)
        log.info("%s: static int8 (%s, %d calibration texts), then accuracy on %d examples", plan.file_name,
                 plan.calibration_method, len(feeds), len(split))
        q = quantize_static_int8(source, bundle / plan.file_name, feeds, cfg=plan)
        add_artifacts(bundle, [artifact_entry(bundle, plan.file_name, variant=plan.variant, target=plan.target)])
        check = scorer.quantized(bundle, plan.file_name, split, fp32_outputs=fp32_outputs, fp32_metrics=fp32_metrics,
                                 max_drop=cfg.max_drop, allow_drop=cfg.allow_drop, batch_size=validate.batch_size,
                                 original=original_outputs)
        row = {"name": f"{plan.variant}-{plan.target}", "precision": plan.variant, "file": plan.file_name,
               "description": f"{'fused without Attention, ' if source != bundle / 'model.onnx' else ''}static int8 "
                              f"(QDQ, {plan.calibration_method} calibration) for {plan.target}"
                              + (f" (FLAGGED: {scorer.primary} drop above max_drop)" if check["flagged"] else ""),
               "onnx_bytes": q.bytes_out, **check, "quantized_ops": q.quantized}
        if ids is not None:
            row |= measure(bundle / plan.file_name, ids, runs=validate.latency_runs, threads=validate.threads)
        rows.append(row)
    return rows
