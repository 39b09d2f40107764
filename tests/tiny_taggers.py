"""Token-classification (tagger) test material shared by the report, card and CLI tests: a report
dict as the pipeline writes it for WNUT17 (issue 15), by hand, and a tiny exported tagger bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TYPES = {"person": 429, "location": 150, "group": 165, "corporation": 66, "creative-work": 142, "product": 127}


def _per_type(scale: float) -> dict[str, dict[str, float]]:
    base = {"person": 0.62, "location": 0.55, "group": 0.31, "corporation": 0.22, "creative-work": 0.18, "product": 0.12}
    return {t: {"precision": min(1.0, f * scale + 0.05), "recall": f * scale - 0.03, "f1": f * scale, "support": n}
            for (t, f), n in zip(base.items(), _TYPES.values())}


def _tag_variant(name: str, **overrides: Any) -> dict[str, Any]:
    base = {
        "name": name, "precision": "fp32", "description": "same fine-tune, full vocabulary", "file": f"/work/{name}/model.onnx",
        "total_params": 22_565_389, "embedding_params": 11_720_448, "onnx_bytes": 90_300_000,
        "onnx_embedding_bytes": 46_881_792, "reconstruction_error": None, "token_weighted_error": None,
        "f1": 0.4512, "recall": 0.3871, "word_accuracy": 0.9321, "n_eval": 1287, "n_entities": 1079,
        "per_type": _per_type(1.0), "agreement": 1.0, "max_logit_diff": 4.1e-6, "torch_f1": 0.4512,
        "latency_ms_p50": 9.8, "latency_ms_p95": 10.9, "latency_seq_len": 32, "peak_rss_mb": 190.0,
    }
    return base | overrides


def _tag_quantized(name: str, bits: str, **overrides: Any) -> dict[str, Any]:
    """A quantized row: entity F1, agreement and drop vs its fp32 file; no PyTorch parity."""
    row = _tag_variant(name, precision=bits, base="dep", description=f"fused, {bits} for arm64", **overrides)
    for key in ("recall", "word_accuracy", "agreement", "max_logit_diff", "torch_f1"):
        del row[key]
    return row


def tag_report(*, int4: bool = True, given: bool = False) -> dict[str, Any]:
    """What the pipeline writes for `--task token-classification` on WNUT17 (issue 15), by hand."""
    variants = [
        _tag_variant("unpruned"),
        _tag_variant("dep", description="DEP-pruned vocabulary", file="model.onnx", onnx_bytes=62_100_000,
                     total_params=15_512_077, embedding_params=4_667_136, onnx_embedding_bytes=18_668_544,
                     f1=0.4431, recall=0.3790, word_accuracy=0.9302, per_type=_per_type(0.98), torch_f1=0.4431,
                     latency_ms_p50=9.5, peak_rss_mb=161.0),
        _tag_quantized("dep int8-arm64", "int8", file="model.int8-arm64.onnx", onnx_bytes=15_900_000,
                       onnx_embedding_bytes=4_667_136, f1=0.4390, agreement_fp32=0.9962, f1_drop_vs_fp32=0.0041,
                       flagged=False, per_type=_per_type(0.97), latency_ms_p50=4.1, peak_rss_mb=99.0),
    ]
    if int4:
        variants.append(_tag_quantized("dep int4-arm64", "int4", file="model.int4-arm64.onnx", onnx_bytes=9_900_000,
                                       f1=0.4102, agreement_fp32=0.9811, f1_drop_vs_fp32=0.0329, flagged=True,
                                       per_type=_per_type(0.9), latency_ms_p50=6.0, peak_rss_mb=88.0))
    if given:
        for v in variants:
            v |= {"original_agreement": 0.991, "original_max_logit_diff": 0.8}
    return {
        "title": "embslim footprint report: wnut17",
        "created": "2026-12-05T10:00:00Z",
        "model": {"name": "dslim/bert-base-NER", "family": "bert", "hidden_size": 384, "vocab_size": 30522,
                  "task": "token-classification", "head": "new"},
        "task": {"name": "wnut17", "type": "token-classification", "is_pair": False, "n_labels": 13,
                 "labels": ["O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work", "B-group",
                            "I-group", "B-location", "I-location", "B-person", "I-person", "B-product", "I-product"],
                 "n_train": 3394, "n_train_used": 3394, "n_eval": 1287},
        "vocab": {"original_rows": 30522, "kept_rows": 12153, "embedding_params_before": 11_720_448,
                  "embedding_params_after": 4_667_136, "fallback": "nearest", "eval_tokens": 31000,
                  "eval_oov_tokens": 1302, "eval_oov_rate": 0.042, "eval_examples_with_oov": 611},
        "finetune": {"epochs": 3, "train_samples": 3394},
        "variants": variants,
        "notes": ["latency: batch 1, 32 tokens, 1 thread"],
    }


TINY_TAGS = ("O", "B-person", "I-person")


def make_tiny_tagger_bundle(root: Path) -> Path:
    """A tiny random tagger (fp32 model.onnx, tags O / B-person / I-person) exported with `export_model`
    into root/bundle (no report, no metrics); returns the bundle folder."""
    from tiny_models import make_tiny_model_dir

    from embslim.pipeline.bundle import BundleMeta, export_model
    from embslim.pipeline.model import load_classifier

    model_dir = make_tiny_model_dir(root / "model", head=None)
    lm = load_classifier(str(model_dir), labels=TINY_TAGS, task="token-classification")
    meta = BundleMeta(task_name="people", labels=TINY_TAGS, is_pair=False, max_length=32, source={"name": str(model_dir)},
                      input_names=lm.input_names, tokenizer_json=str(Path(lm.path) / "tokenizer.json"),
                      task_type="token-classification")
    export_model(lm.model, lm.tokenizer, root / "bundle", meta=meta)
    return root / "bundle"
