"""manifest.py: reading, artifact lookup, variant selection per machine, verification."""

from __future__ import annotations

import hashlib

import pytest
from tiny_bundle import make_tiny_bundle

from embslim.runtime import BundleError
from embslim.runtime.manifest import (
    SCHEMA_VERSION,
    artifact,
    machine_targets,
    read_manifest,
    select_model_artifact,
    sha256_file,
    verify_artifact,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("m"))


def entry(file, variant, target="any"):
    return {"file": file, "variant": variant, "target": target, "bytes": 1, "sha256": "0" * 64}


X86_GENERIC = ("x86-64", "x86", "amd64")

MULTI = {
    "artifacts": [
        entry("model.onnx", "fp32"),
        entry("model.int8-arm64.onnx", "int8", "arm64"),
        entry("model.int8-arm64.ort", "int8", "arm64"),
        entry("model.int8-avx2.onnx", "int8", "avx2"),
        entry("model.int8-avx512-vnni.onnx", "int8", "avx512_vnni"),
        entry("tokenizer.json", "tokenizer"),
    ]
}


def test_sha256_file_streams_in_chunks(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 10_000  # 2.5 MiB: several 1 MiB chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_read_manifest(bundle):
    manifest = read_manifest(bundle)
    assert manifest["schema_version"] == SCHEMA_VERSION == 1
    assert manifest["task"]["labels"] == ["neg", "pos"]
    assert manifest["source_model"]["name"] == "tiny-random"  # unknown keys are kept


def test_verify_artifact_returns_the_path(bundle):
    manifest = read_manifest(bundle)
    assert verify_artifact(bundle, artifact(manifest, variant="fp32")) == bundle / "model.onnx"


def test_artifact_by_file_and_variant():
    assert artifact(MULTI, file="model.int8-avx2.onnx")["target"] == "avx2"
    assert artifact(MULTI, variant="int8", target="avx512-vnni")["file"].endswith("vnni.onnx")
    with pytest.raises(
        BundleError,
        match=r"^the bundle has 4 artifacts with variant 'int8': .*; pass target= or file= to "
        r"choose one$",
    ):
        artifact(MULTI, variant="int8")
    with pytest.raises(ValueError, match=r"exactly one of variant= or file="):
        artifact(MULTI)


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("aarch64", frozenset(), ("arm64",)),
        ("arm64", frozenset(), ("arm64",)),
        ("x86_64", frozenset({"avx2"}), ("avx2", "avx512-vnni", "avx512", *X86_GENERIC)),
        ("AMD64", frozenset({"avx512_vnni"}), ("avx512-vnni", "avx512", "avx2", *X86_GENERIC)),
        ("x86_64", frozenset({"avx2", "avx_vnni"}), ("avx512-vnni", "avx512", "avx2", *X86_GENERIC)),
        ("riscv64", frozenset(), ()),
    ],
)
def test_machine_targets(machine, flags, expected):
    assert machine_targets(machine, cpu_flags=flags) == expected


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("aarch64", "model.int8-arm64.onnx"),  # the .ort twin is never picked by "auto"
        ("arm64", "model.int8-arm64.onnx"),
        ("riscv64", "model.onnx"),
    ],
)
def test_auto_picks_by_machine(machine, expected):
    assert select_model_artifact(MULTI, variant="auto", machine=machine)["file"] == expected


def test_auto_on_x86_picks_an_x86_int8_model():
    picked = select_model_artifact(MULTI, variant="auto", machine="x86_64")["file"]
    assert picked in {"model.int8-avx2.onnx", "model.int8-avx512-vnni.onnx"}
    only_avx2 = {"artifacts": [a for a in MULTI["artifacts"] if "vnni" not in a["file"]]}
    assert select_model_artifact(only_avx2, variant="auto", machine="x86_64")["file"] == (
        "model.int8-avx2.onnx"
    )


def test_auto_without_a_matching_int8_falls_back_to_fp32():
    arm_only = {"artifacts": [a for a in MULTI["artifacts"] if "avx" not in a["file"]]}
    assert select_model_artifact(arm_only, variant="auto", machine="x86_64")["file"] == "model.onnx"
    fp32_only = {"artifacts": [entry("model.onnx", "fp32")]}
    assert select_model_artifact(fp32_only, variant="auto", machine="aarch64")["variant"] == "fp32"


def test_auto_prefers_dynamic_int8_over_static_int8_listed_first():
    static_first = {"artifacts": [entry("model.onnx", "fp32"),
                                  entry("model.int8-static-arm64.onnx", "int8-static", "arm64"),
                                  entry("model.int8-arm64.onnx", "int8", "arm64")]}
    assert select_model_artifact(static_first, variant="auto", machine="aarch64")["file"] == "model.int8-arm64.onnx"
    assert select_model_artifact(static_first, variant="int8-static", machine="aarch64")["file"] == (
        "model.int8-static-arm64.onnx"
    )
    # a target with only a static file still gets it (int8 for this machine beats fp32)
    static_only = {"artifacts": [entry("model.onnx", "fp32"), entry("model.int8-static-avx2.onnx", "int8-static", "avx2")]}
    assert select_model_artifact(static_only, variant="auto", machine="x86_64")["file"] == "model.int8-static-avx2.onnx"


def test_auto_takes_an_int8_model_built_for_any_target():
    generic = {"artifacts": [entry("model.onnx", "fp32"), entry("model.int8.onnx", "int8", "any")]}
    assert select_model_artifact(generic, variant="auto", machine="riscv64")["file"] == (
        "model.int8.onnx"
    )


def test_explicit_variant_shared_by_targets_picks_this_machines():
    assert select_model_artifact(MULTI, variant="int8", machine="aarch64")["file"] == (
        "model.int8-arm64.onnx"
    )
    assert select_model_artifact(MULTI, variant="fp32", machine="aarch64")["file"] == "model.onnx"
    with pytest.raises(
        BundleError,
        match=r"^the bundle has 3 artifacts with variant 'int8' and none is built for this "
        r"machine \(riscv64\): .*; pass file= to choose one$",
    ):
        select_model_artifact(MULTI, variant="int8", machine="riscv64")
    with pytest.raises(BundleError, match=r"no artifact with variant 'int4'; available: "):
        select_model_artifact(MULTI, variant="int4", machine="aarch64")


def test_file_overrides_variant():
    assert select_model_artifact(MULTI, variant="auto", file="model.int8-arm64.ort")["file"] == (
        "model.int8-arm64.ort"
    )


def test_sessions_ask_for_exact_int8_where_the_cpu_needs_it():
    """Without VNNI, x86's u8 x s8 kernel saturates: sessions ask ORT for u8 x u8 there, and only there."""
    from embslim.runtime.classifier import session_options
    from embslim.runtime.cpu import needs_exact_int8_rewrite

    def rewrite(options) -> bool:
        try:
            return options.get_session_config_entry("session.x64quantprecision") == "1"
        except RuntimeError:   # ORT: "SessionOptions does not have configuration with key"
            return False

    options = session_options(threads=2)
    assert rewrite(options) is needs_exact_int8_rewrite()
    assert options.intra_op_num_threads == 2
    assert rewrite(session_options(exact_int8=True)) and not rewrite(session_options(exact_int8=False))
