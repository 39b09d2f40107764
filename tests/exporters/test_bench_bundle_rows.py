"""benchmarks/bench_optimum.py measures a bundle's own quantized files as shipped ("(bundle)" rows),
not the files the benchmark quantizes itself under the same names."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_optimum  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundle_rows_are_the_bundles_files(tiny_bundle, tmp_path):
    from embslim.exporters.quantize import QuantizeConfig, quantize
    from embslim.pipeline.bundle import add_artifacts, artifact_entry

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    for f in bundle.glob("model.*.onnx"):
        f.unlink()
    # per-tensor int8: bytes the benchmark's own (per-channel, fused) model.int8-arm64.onnx cannot have
    quantize(bundle / "model.onnx", bundle / "model.int8-arm64.onnx",
             cfg=QuantizeConfig(target="arm64", per_channel=False))
    add_artifacts(bundle, [artifact_entry(bundle, "model.int8-arm64.onnx", variant="int8", target="arm64")])
    max_length = json.loads((bundle / "manifest.json").read_text())["task"]["max_length"]
    models = bench_optimum.prepare_ours("t", bundle, tmp_path / "work", max_length=max_length)
    by_name = {m.name: m for m in models}
    shipped, own = by_name["t int8-arm64 (bundle)"], by_name["t int8-arm64"]
    assert _sha(shipped.folder / shipped.file) == _sha(bundle / "model.int8-arm64.onnx")
    assert _sha(own.folder / own.file) != _sha(bundle / "model.int8-arm64.onnx")
    manifest = {a["file"]: a for a in json.loads((bundle / "manifest.json").read_text())["artifacts"]}
    assert manifest["model.int8-arm64.onnx"]["sha256"] == _sha(bundle / "model.int8-arm64.onnx")   # untouched
