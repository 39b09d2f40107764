"""Benchmark: our fused + quantized bundles against Optimum's export + int8 and model2vec's static
classifier, side by side, in one run.

The full run (issue #16; the machine running nothing else; `pip install -c constraints.txt -e '.[bench]'`
first for the model2vec rows), on the bundles of `embslim run --config configs/sst2-edge.toml
--data-root ../shared/data --out out/sst2-edge`:

    .venv/bin/python benchmarks/bench_optimum.py --baseline out/sst2-edge \\
        --bundle messi-head1000=out/sst2-edge --bundle messi-head500=out/sst2-edge.work/dep+messi-head500 \\
        --bundle dep=out/sst2-edge.work/dep --data-root ../shared/data --out out/bench-edge

A quick check of the whole path (a few minutes; accuracy on 200 sentences, one short latency round):
add `--max-eval 200 --rounds 1 --runs 5 --warmup 2 --threads 1 --no-model2vec-full`.

--baseline is a fine-tuned checkpoint folder (embslim's `checkpoint-unpruned`) or a bundle from
`embslim run`, whose `<bundle>.work/checkpoint-unpruned` is used. Its unpruned model is exported
with Optimum (`main_export`, task text-classification) and quantized with Optimum's
`ORTQuantizer` (`AutoQuantizationConfig.arm64` and `.avx512_vnni`, dynamic, per channel); the
same fp32 export also goes through our 4-bit path ("ORT 4-bit of the baseline" in DESIGN.md).
Each --bundle's model.onnx is fused (embslim.exporters.optimize) and quantized with embslim.exporters.quantize:
int8 for arm64 and avx2, and 4-bit; with --bundle-files (default) the quantized files the bundle ships are
measured too, as they are (its run's targets, 4-bit settings and mixed file); with --static-int8 (default) also static int8 (QDQ, calibrated on the
first 200 training texts, MinMax) for arm64 and avx2, from the unfused graph.
With --model2vec (default) the bundled MiniLM is distilled with model2vec and its classifier trained on the
same training sentences as the baseline (its embslim_meta.json's max_train_samples and seed), and with
--model2vec-full on the whole --train split too; fp32 and ORT dynamic int8 rows each
(benchmarks/bench_model2vec.py, which says how they are run).

Measured for every model, on this machine:
- bytes of the model file (each bundle also ships a ~0.5-0.7 MB tokenizer.json, Optimum's too);
- accuracy on the eval split through embslim.runtime.Classifier (stock tokenizer, per-batch padding) at
  batch 32 and batch 1, label agreement with the fp32 model it came from, and the labels that differ
  between batch 1 and batch 32 ("flips": dynamic int8's per-batch activation scales; issue #16);
- latency at batch 1 and --seq-len tokens with 1 and 2 intra-op threads: each round launches a
  fresh process per model (embslim.pipeline.probe: warm-up, then --runs timed runs), the model order
  rotating every round so drift hits all models alike; p50/p95 are the medians over rounds;
- peak RSS (VmHWM) of those fresh processes at 1 thread (model load + inference).

Ratios are against Optimum int8 (arm64). The table's header names the CPU and its int8-relevant flags
(cpu_info: /proc/cpuinfo). Writes bench.json, bench.md and frontier.png (accuracy against bytes, the
Pareto-optimal embslim files marked, Optimum and model2vec as reference stars) to --out. This is not a
test: it takes minutes, and on a shared machine its timings are noisy (say so when quoting them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:   # bench_model2vec beside this file
    sys.path.insert(0, str(REPO / "benchmarks"))

log = logging.getLogger("bench_optimum")

REFERENCE = "optimum int8-arm64"


@dataclass
class Model:
    """One file to measure, inside a folder that embslim.runtime.Classifier can load."""

    name: str
    folder: Path            # has manifest.json listing `file` and `fp32_file`
    file: str
    fp32_file: str          # the fp32 model it came from (agreement is measured against it)
    family: str             # "optimum" or the bundle's name
    precision: str
    notes: str = ""
    metrics: dict = field(default_factory=dict)
    # "embslim": run through embslim.runtime.Classifier; "model2vec": bench_model2vec.M2VRunner (its own
    # tokenizer), with its own latency ids for the same text
    runner: str = "embslim"
    latency_ids: list[int] | None = None
    extra_bytes: int = 0     # what else the model needs to run that other rows do not count (none so far)

    @property
    def path(self) -> Path:
        return self.folder / self.file


# -- preparing the models ---------------------------------------------------------------------

def _checkpoint_dir(baseline: Path) -> Path:
    from embslim.pipeline.embedding import SPEC_FILE

    if (baseline / SPEC_FILE).is_file():
        return baseline
    candidate = baseline.with_name(baseline.name + ".work") / "checkpoint-unpruned"
    if (candidate / SPEC_FILE).is_file():
        return candidate
    raise SystemExit(f"--baseline {baseline}: neither a checkpoint folder (with {SPEC_FILE}) nor a bundle with "
                     f"{candidate}; pass the checkpoint-unpruned folder that `embslim run` writes")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _register(folder: Path, file: str, *, variant: str, target: str = "any") -> None:
    from embslim.pipeline.bundle import add_artifacts, artifact_entry

    add_artifacts(folder, [artifact_entry(folder, file, variant=variant, target=target)])


def prepare_optimum(baseline: Path, work: Path) -> list[Model]:
    """Optimum's fp32 export and int8 (arm64, avx512-vnni) of the unpruned fine-tuned model, plus
    our 4-bit of that same export, in one folder with a manifest built from the checkpoint's meta."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from embslim.exporters.quantize import QuantizeConfig, quantize
    from embslim.pipeline.bundle import BundleMeta, artifact_entry, write_manifest, write_tokenizer_and_config
    from embslim.pipeline.embedding import load_checkpoint

    ckpt = _checkpoint_dir(baseline)
    model, tokenizer, meta = load_checkpoint(ckpt)
    if meta is None:
        raise SystemExit(f"{ckpt} has no embslim_meta.json (task labels, max_length); re-run `embslim run`")
    hf = work / "optimum-src"
    shutil.rmtree(hf, ignore_errors=True)
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    folder = work / "optimum"
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    main_export(str(hf), output=str(folder / "export"), task="text-classification")
    log.info("Optimum export in %.0f s", time.perf_counter() - t0)
    _link(folder / "export" / "model.onnx", folder / "model.onnx")
    bundle_meta = BundleMeta.from_json(meta)
    write_tokenizer_and_config(model, tokenizer, folder, meta=bundle_meta)
    write_manifest(folder, meta=bundle_meta, pad_id=int(tokenizer.pad_token_id or 0),
                   artifacts=[artifact_entry(folder, f, variant=v) for f, v in
                              (("model.onnx", "fp32"), ("tokenizer.json", "tokenizer"))],
                   stages={"source": str(ckpt)}, metrics={})
    models = [Model("optimum fp32", folder, "model.onnx", "model.onnx", "optimum", "fp32",
                    "main_export, opset default")]
    for target, make in (("arm64", AutoQuantizationConfig.arm64), ("avx512-vnni", AutoQuantizationConfig.avx512_vnni)):
        t0 = time.perf_counter()
        out = folder / f"q-{target}"
        ORTQuantizer.from_pretrained(folder / "export", file_name="model.onnx").quantize(
            quantization_config=make(is_static=False, per_channel=True), save_dir=out)
        file = f"model.int8-{target}.onnx"
        _link(out / "model_quantized.onnx", folder / file)
        _register(folder, file, variant="int8", target=target)
        log.info("Optimum int8 %s in %.0f s", target, time.perf_counter() - t0)
        models.append(Model(f"optimum int8-{target}", folder, file, "model.onnx", "optimum", "int8",
                            f"ORTQuantizer, AutoQuantizationConfig.{make.__name__}(is_static=False, per_channel=True)"))
    cfg = QuantizeConfig(target="arm64", bits=4)
    quantize(folder / "model.onnx", folder / cfg.file_name, cfg=cfg)
    _register(folder, cfg.file_name, variant="int4", target="arm64")
    models.append(Model("baseline int4", folder, cfg.file_name, "model.onnx", "optimum", "int4",
                        "Optimum's fp32 export, embslim.exporters.quantize bits=4 (MatMulNBits + 4-bit Gather, unfused)"))
    return models


def bundle_files(name: str, bundle: Path, folder: Path) -> list[Model]:
    """The quantized files `embslim run` wrote into `bundle` (every model artifact of its manifest
    but model.onnx: int8 per target, 4-bit with the run's settings, the mixed file, static int8, .ort),
    measured as shipped, linked into `folder` (which holds the bundle's manifest.json already)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    models = []
    for a in manifest["artifacts"]:
        file = a["file"]
        if file == "model.onnx" or not file.endswith((".onnx", ".ort")):
            continue
        if not (folder / file).exists():
            _link(bundle / file, folder / file)
        models.append(Model(f"{name} {a['variant']}-{a['target']} (bundle)", folder, file, "model.onnx", name,
                            str(a["variant"]), "as `embslim run` wrote it into the bundle"))
    return models


def _linked_bundle(bundle: Path, folder: Path) -> Path:
    """`folder`, emptied, holding links to `bundle`'s manifest, tokenizer, config and fp32 model."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in ("manifest.json", "tokenizer.json", "config.json", "model.onnx"):
        _link(bundle / f, folder / f)
    return folder


def prepare_ours(name: str, bundle: Path, work: Path, *, max_length: int,
                 calibration_texts: Sequence[str] = (), own_files: bool = True) -> list[Model]:
    """fp32 as exported, then fused and quantized: int8 arm64, int8 avx2, 4-bit; with
    `calibration_texts`, also static int8 (QDQ) for arm64 and avx2 from the unfused graph (what
    `embslim run --static-int8` writes); with `own_files`, also the quantized files the bundle
    itself ships (`bundle_files`: e.g. its mixed int8/4-bit file and 4-bit with the run's settings)."""
    from embslim.exporters.onnx import shapes_for
    from embslim.exporters.optimize import OptimizeConfig, fuse_for_quantization
    from embslim.exporters.quantize import (QuantizeConfig, StaticQuantizeConfig, calibration_feeds,
                                            graph_input_names, quantize, quantize_static_int8)

    shapes = shapes_for(max_length)   # never past max_length: a trimmed position table has no rows beyond
    folder = _linked_bundle(bundle, work / f"ours-{name}")
    models = [Model(f"{name} fp32", folder, "model.onnx", "model.onnx", name, "fp32", "as exported")]
    # a folder of their own: the files quantized below take the same names (model.int8-arm64.onnx)
    own = bundle_files(name, bundle, _linked_bundle(bundle, work / f"ours-{name}-bundle")) if own_files else []
    fused = fuse_for_quantization(folder / "model.onnx", folder, int4=True,
                                  cfg=OptimizeConfig(validation_shapes=shapes))
    for target, bits in (("arm64", 8), ("avx2", 8), ("arm64", 4)):
        cfg = QuantizeConfig(target=target, bits=bits, validation_shapes=shapes)
        source = fused[cfg.bits]
        result = quantize(source.path, folder / cfg.file_name, cfg=cfg)
        _register(folder, cfg.file_name, variant=cfg.variant, target=cfg.target)
        fusions = ", ".join(f"{k} x{v}" for k, v in source.fused.items())
        models.append(Model(f"{name} {cfg.variant}-{cfg.target}", folder, cfg.file_name, "model.onnx", name,
                            cfg.variant, f"fused ({fusions}); weight bytes {result.weight_bytes}"))
    if calibration_texts:
        manifest = json.loads((folder / "manifest.json").read_text())
        source = folder / "model.onnx"   # unfused: as fast as dynamic int8 here (pipeline.targets.STATIC_SOURCE)
        fed = set(graph_input_names(source))
        inputs = [i for i in ("input_ids", "attention_mask", "token_type_ids") if i in fed]
        for target in ("arm64", "avx2"):
            cfg = StaticQuantizeConfig(target=target, validation_shapes=shapes)
            feeds = calibration_feeds(folder / "tokenizer.json", list(calibration_texts)[:cfg.calibration_size],
                                      input_names=inputs, max_length=max_length,
                                      pad_id=int(manifest["tokenizer"]["pad_id"]),
                                      same_length=cfg.calibration_method != "minmax")
            result = quantize_static_int8(source, folder / cfg.file_name, feeds, cfg=cfg)
            _register(folder, cfg.file_name, variant=cfg.variant, target=cfg.target)
            models.append(Model(f"{name} {cfg.variant}-{cfg.target}", folder, cfg.file_name, "model.onnx", name,
                                cfg.variant, f"unfused; QDQ, {cfg.calibration_method} calibration on {len(feeds)} "
                                             f"training texts; weight bytes {result.weight_bytes}"))
    return models + own


def prepare_model2vec(work: Path, task, *, train_samples: int | None, seed: int, full: bool) -> list[Model]:
    """model2vec's classifier on the bundles' training sentences (and on all of them with `full`);
    fp32 and int8 rows each (benchmarks/bench_model2vec.py). [] with one warning when model2vec is
    not installed."""
    import bench_model2vec as m2v

    from embslim.pipeline.data import subsample

    try:
        version = m2v.require_model2vec()
    except m2v.Model2VecMissing as e:
        log.warning("%s", e)
        return []
    train = subsample(task.train, train_samples, seed=seed)
    rows = [(f"m2v-{len(train)}", train.texts, train.labels)]
    if full and len(task.train) > len(train):
        rows.append((f"m2v-{len(task.train)}", task.train.texts, task.train.labels))
    models = []
    for name, folder, info in m2v.prepare(work, rows, task.label_names):
        n = info["train_sentences"]
        tok = (folder / "tokenizer.json").stat().st_size
        for file, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
            models.append(Model(f"model2vec {n:,} {precision}", folder, file, "model.onnx", name, precision,
                                f"model2vec {version}: distilled from the bundled MiniLM (PCA {m2v.PCA_DIMS}), "
                                f"StaticModelForClassification trained on {n:,} sentences"
                                + (", ORT dynamic int8 (arm64 settings)" if precision == "int8" else "")
                                + f"; its tokenizer.json {tok / 1e6:.2f} MB", runner="model2vec"))
    return models


# -- measuring --------------------------------------------------------------------------------

def measure_accuracy(models: Sequence[Model], split, *, n_labels: int) -> None:
    from embslim.pipeline.validate import label_flips, task_metrics
    from embslim.runtime import Classifier

    texts = list(split.texts)
    pairs = list(split.pairs) if split.pairs is not None else None
    cache: dict[tuple[Path, str, int], object] = {}

    def logits(m: Model, file: str, batch: int):
        key = (m.folder, file, batch)
        if key not in cache:
            if m.runner == "model2vec":
                from bench_model2vec import M2VRunner

                if pairs is not None:
                    raise SystemExit("the model2vec rows classify single texts; run with --no-model2vec on a pair task")
                cache[key] = M2VRunner(m.folder, file).logits(texts, batch_size=batch)
            else:
                clf = Classifier.from_bundle(m.folder, file=file, threads=None)
                cache[key] = clf.logits(texts, pairs, batch_size=batch)
        return cache[key]

    for m in models:
        t0 = time.perf_counter()
        for batch in (32, 1):
            got = logits(m, m.file, batch)
            ref = logits(m, m.fp32_file, batch)
            m.metrics[f"accuracy_b{batch}"] = task_metrics(got, split.labels, n_labels=n_labels)["accuracy"]
            m.metrics[f"agreement_b{batch}"] = float((got.argmax(-1) == ref.argmax(-1)).mean())
        # labels that change between batch 1 and batch 32 (dynamic int8's per-batch activation scales)
        m.metrics["batch_flips"] = label_flips(logits(m, m.file, 1), logits(m, m.file, 32))
        log.info("%-28s accuracy %.2f%% (batch 32) / %.2f%% (batch 1), %d batch flips in %.0f s", m.name,
                 100 * m.metrics["accuracy_b32"], 100 * m.metrics["accuracy_b1"], m.metrics["batch_flips"],
                 time.perf_counter() - t0)


def measure_speed(models: Sequence[Model], ids: Sequence[int], *, threads: Sequence[int], rounds: int, runs: int,
                  warmup: int, latency_fp32: bool) -> None:
    """Interleaved rounds of fresh-process probes; the order rotates each round."""
    from embslim.pipeline.probe import measure

    timed = [m for m in models if latency_fp32 or m.precision != "fp32"]
    samples: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        shift = r % len(models)
        order = list(models[shift:]) + list(models[:shift])
        if r % 2:
            order.reverse()
        for t in threads:
            for m in order:
                if m not in timed and t != 1:
                    continue
                # fp32 models that are not timed still get a short probe for their peak RSS
                n = runs if m in timed else 5
                samples.setdefault((m.name, t), []).append(measure(m.path, m.latency_ids or ids, runs=n,
                                                                   warmup=min(warmup, n), threads=t))
        log.info("latency round %d/%d done", r + 1, rounds)
    for m in models:
        for t in threads:
            got = samples.get((m.name, t))
            if not got:
                continue
            if m in timed:
                p50s = [s["latency_ms_p50"] for s in got]
                m.metrics[f"p50_ms_t{t}"] = statistics.median(p50s)
                m.metrics[f"p95_ms_t{t}"] = statistics.median(s["latency_ms_p95"] for s in got)
                m.metrics[f"p50_ms_t{t}_spread"] = [min(p50s), max(p50s)]
            if t == 1:
                m.metrics["peak_rss_mb"] = statistics.median(s["peak_rss_mb"] for s in got)


# -- the machine ------------------------------------------------------------------------------

# /proc/cpuinfo flags that decide which int8 kernels ONNX Runtime runs on x86 (u8 x s8 VPMADDUBSW on
# AVX2, VNNI dot products, AMX tiles); "asimddp"/"i8mm" are their ARM counterparts.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "asimddp", "i8mm")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """{"model": CPU model name, "flags": the CPU_FLAGS this CPU has} from /proc/cpuinfo (or its
    text), parsed by embslim.runtime.cpu; {"model": platform.processor() or "unknown", "flags": []}
    where there is none."""
    from embslim.runtime.cpu import parse_cpuinfo, read_cpuinfo

    model, flags = parse_cpuinfo(read_cpuinfo() if cpuinfo is None else cpuinfo)
    return {"model": model or platform.processor() or "unknown", "flags": [f for f in CPU_FLAGS if f in flags]}


# -- reporting --------------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def ratios(models: Sequence[Model]) -> None:
    ref = next((m for m in models if m.name == REFERENCE), None)
    if ref is None:
        return
    for m in models:
        r = m.metrics
        r["bytes_vs_ref"] = _ratio(r["bytes"], ref.metrics["bytes"])
        r["accuracy_b32_vs_ref_pts"] = 100 * (r["accuracy_b32"] - ref.metrics["accuracy_b32"])
        r["accuracy_b1_vs_ref_pts"] = 100 * (r["accuracy_b1"] - ref.metrics["accuracy_b1"])
        for key in ("p50_ms_t1", "p50_ms_t2", "peak_rss_mb"):
            r[f"{key}_vs_ref"] = _ratio(r.get(key), ref.metrics.get(key))


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown(models: Sequence[Model], info: dict) -> str:
    lines = [
        "# embslim vs Optimum: size, accuracy, latency, memory",
        "",
        f"{info['created']} on {info['machine']} ({info['cpu_count']} CPUs; {info['note']}).  ",
        (f"CPU: {info['cpu']['model']}; int8-relevant flags: {', '.join(info['cpu']['flags']) or 'none of '}"
         + ("" if info['cpu']['flags'] else ", ".join(CPU_FLAGS)) + f". onnxruntime {info['onnxruntime']}.  "),
        (f"Eval: {info['task']} ({info['n_eval']} examples), through embslim.runtime.Classifier. Latency: batch 1, "
         f"{info['seq_len']} tokens, median over {info['rounds']} interleaved rounds of {info['runs']} runs, "
         f"each in a fresh process. MB = 10^6 bytes. Ratios vs **{REFERENCE}**."),
        "",
        ("| model | MB | × ref | tokenizer MB | acc % b32 | acc % b1 | Δ pts b1 | agree % b1 | flips b1/b32 | "
         "p50 ms 1t | p95 ms 1t | × ref | p50 ms 2t | × ref | peak RSS MB | × ref |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        r = m.metrics
        lines.append(" | ".join([
            f"| {m.name}", _fmt(r["bytes"] / 1e6, ".2f"), _fmt(r.get("bytes_vs_ref"), ".2f"),
            _fmt(r.get("tokenizer_bytes", 0) / 1e6, ".2f"),
            _fmt(100 * r["accuracy_b32"], ".2f"), _fmt(100 * r["accuracy_b1"], ".2f"),
            _fmt(r.get("accuracy_b1_vs_ref_pts"), "+.2f"), _fmt(100 * r["agreement_b1"], ".1f"),
            f"{r['batch_flips']} / {info['n_eval']}",
            _fmt(r.get("p50_ms_t1"), ".3g"), _fmt(r.get("p95_ms_t1"), ".3g"), _fmt(r.get("p50_ms_t1_vs_ref"), ".3g"),
            _fmt(r.get("p50_ms_t2"), ".3g"), _fmt(r.get("p50_ms_t2_vs_ref"), ".3g"),
            _fmt(r.get("peak_rss_mb"), ".0f"), _fmt(r.get("peak_rss_mb_vs_ref"), ".2f")]) + " |")
    lines += ["", ("Agreement is with the fp32 model each file came from. Flips: eval labels that differ between "
                   "batch 1 and batch 32 (dynamic int8 computes activation scales per batch; static int8 and fp32 "
                   "should show 0). MB is the model file; the tokenizer.json it also ships is the next column "
                   "(model2vec's is its own). fp32 rows are references; their latency is measured only with "
                   "--latency-fp32. model2vec rows run through their own runner (benchmarks/bench_model2vec.py) "
                   "with the same protocol; their latency ids are model2vec's tokens of the same text."), ""]
    lines += model2vec_summary(models)
    lines += [f"- **{m.name}**: `{m.path}`" + (f"; {m.notes}" if m.notes else "") for m in models]
    return "\n".join(lines) + "\n"


def frontier_plot(models: Sequence[Model], path: Path, info: dict) -> list[str]:
    """Accuracy (batch 32) against model-file bytes for every file measured: embslim's files coloured
    by precision, the Pareto-optimal ones ringed and joined (embslim.pipeline.report.pareto_front),
    Optimum's and model2vec's files as labelled stars (references, outside the frontier). Returns
    the numbered frontier lines ("1. 7.66 MB, 79.47%: name, ...") that bench.md lists under the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embslim.pipeline.report import _place_labels, pareto_front

    ours = [(m.name, m.metrics["bytes"] / 1e6, 100 * m.metrics["accuracy_b32"], m.precision) for m in models
            if m.runner == "embslim" and m.family != "optimum"]
    refs = [(m.name, m.metrics["bytes"] / 1e6, 100 * m.metrics["accuracy_b32"]) for m in models
            if m.family == "optimum" or m.runner == "model2vec"]
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = {"fp32": "#7570b3", "int8": "#d95f02", "int4": "#1b9e77", "mixed": "#e7298a", "int8-static": "#66a61e"}
    for prec in dict.fromkeys(p for *_, p in ours):
        sel = [(x, y) for _, x, y, p in ours if p == prec]
        ax.scatter(*zip(*sel), s=40, zorder=3, color=colors.get(prec, "#999"), label=prec)
    front = pareto_front([(n, x, y) for n, x, y, _ in ours])
    pts = sorted((x, y, n) for n, x, y, _ in ours if n in front)
    if pts:
        ax.step([x for x, _, _ in pts], [y for _, y, _ in pts], where="post", color="#444", lw=1.1, zorder=2,
                label=f"Pareto frontier of embslim's files ({len(pts)} files)")
        ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], s=110, facecolors="none", edgecolors="#222", zorder=4)
    for n, x, y in refs:
        ax.scatter([x], [y], marker="*", s=160, color="#111", zorder=5)
    ax.set_xlim(0, max([x for _, x, _, _ in ours] + [x for _, x, _ in refs]) * 1.15)
    # names of the frontier's files and of the references, placed so that no two overlap
    # Frontier points get numbers (bench.md lists them: files at one point share a number, e.g. a
    # bundle's own int8 file and the benchmark's identical one); references get their names.
    named: dict[tuple[float, float], list[str]] = {}
    for x, y, n in pts:
        named.setdefault((round(x, 2), round(y, 2)), []).append(n)
    for i, (x, y) in enumerate(named, start=1):
        ax.annotate(str(i), (x, y), xytext=(-12, 0), textcoords="offset points", fontsize=8, va="center", ha="right")
    _place_labels(fig, ax, refs, fontsize=7)
    ax.set_xlabel("model file (MB)")
    ax.set_ylabel(f"accuracy, batch 32 (%), {info['n_eval']} eval examples")
    ax.set_title("Accuracy vs size: every file measured (stars: Optimum and model2vec)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [f"{i}. {x:.2f} MB, {y:.2f}%: " + ", ".join(ns) for i, ((x, y), ns) in enumerate(named.items(), start=1)]


def model2vec_summary(models: Sequence[Model]) -> list[str]:
    """Plain sentences: where each model2vec int8 row wins and loses against the reference and
    against the most accurate embslim int8 file (batch 32): bytes with the tokenizer, accuracy,
    p50 latency at 1 thread, peak RSS."""
    ref = next((m for m in models if m.name == REFERENCE), None)
    ours = [m for m in models if m.runner == "embslim" and m.family != "optimum" and m.precision.startswith("int8")]
    best = max(ours, key=lambda m: m.metrics["accuracy_b32"], default=None)
    out = []
    for m in (m for m in models if m.runner == "model2vec" and m.precision == "int8"):
        r = m.metrics
        for other in (ref, best):
            if other is None:
                continue
            o = other.metrics
            wins, loses = [], []
            for label, mine, theirs in (
                    ("bytes with tokenizer", r["bytes"] + r.get("tokenizer_bytes", 0), o["bytes"] + o.get("tokenizer_bytes", 0)),
                    ("p50 latency", r.get("p50_ms_t1"), o.get("p50_ms_t1")),
                    ("peak RSS", r.get("peak_rss_mb"), o.get("peak_rss_mb"))):
                ratio = _ratio(mine, theirs)
                if ratio is not None:
                    (wins if ratio < 1 else loses).append(f"{label} {ratio:.3g}x")
            pts = 100 * (r["accuracy_b32"] - o["accuracy_b32"])
            (wins if pts > 0 else loses).append(f"accuracy {pts:+.2f} pts (b32)")
            out.append(f"- **{m.name} against {other.name}**: wins on {', '.join(wins) or 'nothing measured'}; "
                       f"loses on {', '.join(loses) or 'nothing measured'}.")
    return out + ([""] if out else [])


# -- main -------------------------------------------------------------------------------------

def _training_subsample(args: argparse.Namespace) -> tuple[int | None, int]:
    """(max_train_samples, seed) the baseline was fine-tuned with (its embslim_meta.json), so model2vec
    trains on the same sentences (embslim.pipeline.data.subsample); flags override."""
    meta_file = _checkpoint_dir(args.baseline) / "embslim_meta.json"
    config = {}
    if meta_file.is_file():
        config = (json.loads(meta_file.read_text()).get("finetune") or {}).get("config") or {}
    samples = args.train_samples if args.train_samples is not None else config.get("max_train_samples")
    seed = args.train_seed if args.train_seed is not None else int(config.get("seed", 42))
    return samples, seed


def _parse_bundle(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        p = Path(path)
        name = p.name if p.name != "bundle" else p.parent.name
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True,
                   help="fine-tuned checkpoint folder, or a bundle from `embslim run` (uses <bundle>.work/checkpoint-unpruned)")
    p.add_argument("--bundle", action="append", default=[], metavar="[NAME=]DIR",
                   help="an embslim bundle whose model.onnx to fuse and quantize (repeatable)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train", default="sst2/train.tsv")
    p.add_argument("--eval", default="sst2/dev.tsv")
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (fresh process per model each)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per probe, after warm-up")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-eval", type=int, default=None, help="first N eval examples only (quick checks)")
    p.add_argument("--latency-fp32", action=argparse.BooleanOptionalAction, default=False,
                   help="also time the fp32 references (slow)")
    p.add_argument("--bundle-files", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the quantized files each --bundle ships (its run's int8 targets, 4-bit "
                        "settings, mixed file), as they are")
    p.add_argument("--static-int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also static (QDQ, calibrated) int8 of each --bundle, arm64 and avx2 (default on)")
    p.add_argument("--model2vec", action=argparse.BooleanOptionalAction, default=True,
                   help="also model2vec's static classifier on the same training sentences (needs .[bench])")
    p.add_argument("--model2vec-full", action=argparse.BooleanOptionalAction, default=True,
                   help="and a second model2vec row trained on the whole --train split")
    p.add_argument("--train-samples", type=int, default=None,
                   help="training sentences of the model2vec row (default: the baseline's max_train_samples)")
    p.add_argument("--train-seed", type=int, default=None, help="their subsample seed (default: the baseline's seed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("root", "onnxruntime", "optimum", "embslim.exporters.compare", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    logging.getLogger("exporters").setLevel(logging.INFO)

    from embslim.pipeline.data import DataConfig, load_task
    from embslim.pipeline.validate import latency_ids

    t_start = time.perf_counter()
    task = load_task(DataConfig(train=args.train, eval=args.eval), data_root=args.data_root)
    if args.max_eval:
        from embslim.pipeline.data import Split

        e = task.eval
        n = args.max_eval
        task = type(task)(name=task.name, train=task.train, label_names=task.label_names, is_pair=task.is_pair,
                          eval=Split(texts=e.texts[:n], pairs=e.pairs[:n] if e.pairs is not None else None, labels=e.labels[:n]))
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    models = prepare_optimum(args.baseline, work)
    max_length = int(json.loads((models[0].folder / "manifest.json").read_text())["task"]["max_length"])
    calibration = list(task.train.texts) if args.static_int8 else []
    for text in args.bundle:
        name, path = _parse_bundle(text)
        models += prepare_ours(name, path, work, max_length=max_length, calibration_texts=calibration,
                               own_files=args.bundle_files)
    if args.model2vec:
        samples, seed = _training_subsample(args)
        models += prepare_model2vec(work / "model2vec", task, train_samples=samples, seed=seed, full=args.model2vec_full)
    for m in models:
        m.metrics["bytes"] = m.path.stat().st_size
        m.metrics["tokenizer_bytes"] = (m.folder / "tokenizer.json").stat().st_size
        if m.runner == "model2vec":
            from bench_model2vec import M2VRunner

            m.latency_ids = M2VRunner(m.folder, m.file).latency_ids(task.eval.texts, seq_len=args.seq_len)

    measure_accuracy(models, task.eval, n_labels=len(task.label_names))
    ids = latency_ids(models[0].folder / "tokenizer.json", task.eval.texts, seq_len=args.seq_len)
    measure_speed(models, ids, threads=args.threads, rounds=args.rounds, runs=args.runs, warmup=args.warmup,
                  latency_fp32=args.latency_fp32)
    ratios(models)

    import onnxruntime

    info = {"created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "task": task.name,
            "n_eval": len(task.eval), "seq_len": args.seq_len, "rounds": args.rounds, "runs": args.runs,
            "threads": args.threads, "baseline": str(args.baseline), "seconds": round(time.perf_counter() - t_start),
            "cpu": cpu_info(),
            "note": "shared machine, timings are noisy"}
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"info": info, "reference": REFERENCE,
            "models": [{"name": m.name, "file": str(m.path), "family": m.family, "precision": m.precision,
                        "notes": m.notes, **m.metrics} for m in models]}
    (args.out / "bench.json").write_text(json.dumps(data, indent=2))
    table = markdown(models, info)
    front = frontier_plot(models, args.out / "frontier.png", info)
    table += "\n## Accuracy against size\n\n![accuracy vs size, Pareto frontier](frontier.png)\n\n" + \
        "Pareto frontier of embslim's files (no other embslim file is both smaller and more accurate at batch 32), " \
        "numbered as in the plot:\n\n" + "\n".join(front) + "\n"
    (args.out / "bench.md").write_text(table)
    print(table)
    log.info("wrote %s and %s in %.0f s", args.out / "bench.json", args.out / "bench.md", time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
