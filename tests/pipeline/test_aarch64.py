"""embslim.pipeline.aarch64: config and cache-key logic, EmulationUnavailable messages, and (slow) a real
emulated aarch64 run of a tiny bundle whose predictions must equal x86's."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

from embslim.pipeline import aarch64
from embslim.pipeline.aarch64 import (
    CACHE_ENV,
    DEFAULT_CACHE,
    EmulationUnavailable,
    EmulatorConfig,
    cache_key,
    ensure_environment,
    host_versions,
    validate_arm64,
)
from embslim.pipeline.data import Split

VERSIONS = {"onnxruntime": "1.31.1", "numpy": "2.4.6", "tokenizers": "0.22.2"}


def _fake_qemu(path: Path, version: str = "10.0.2") -> Path:
    path.write_text(f"#!/bin/sh\necho 'qemu-aarch64 version {version} (fake)'\n")
    path.chmod(0o755)
    return path


def _fake_cached_env(cache: Path, cfg: EmulatorConfig, *, qemu_version: str = "10.0.2") -> Path:
    """What a finished build leaves in the cache, without building anything."""
    env_dir = cache / cache_key(cfg, host_versions())
    (env_dir / "root").mkdir(parents=True)
    (env_dir / "site").mkdir()
    (env_dir / "env.json").write_text(json.dumps({"key": env_dir.name}))
    (cache / "qemu").mkdir()
    _fake_qemu(cache / "qemu" / "qemu-aarch64", qemu_version)
    (cache / "qemu" / "qemu.json").write_text(json.dumps({"qemu_version": f"qemu-aarch64 version {qemu_version}"}))
    return env_dir


def test_config_rejects_unknown_cpu_python_and_empty_qemu():
    with pytest.raises(ValueError, match=r"cpu must be one of neoverse-n1, .*'max' is refused"):
        EmulatorConfig(cpu="max")
    with pytest.raises(ValueError, match=r"python_version must be one Debian ships for arm64: 3.11, 3.13; got '3.12'"):
        EmulatorConfig(python_version="3.12")
    with pytest.raises(ValueError, match="qemu must be a path"):
        EmulatorConfig(qemu=" ")


def test_cache_key_follows_python_and_wheel_versions():
    key = cache_key(EmulatorConfig(), VERSIONS)
    assert key == f"py3.11-onnxruntime1.31.1-numpy2.4.6-tokenizers0.22.2-r{aarch64.RECIPE}"
    assert cache_key(EmulatorConfig(cpu="cortex-a72"), VERSIONS) == key  # the CPU is chosen at run time
    assert cache_key(EmulatorConfig(python_version="3.13"), VERSIONS) != key
    assert cache_key(EmulatorConfig(), VERSIONS | {"onnxruntime": "1.32.0"}) != key
    assert "/" not in cache_key(EmulatorConfig(), VERSIONS | {"numpy": "2.0/local"})
    assert set(host_versions()) == {"onnxruntime", "numpy", "tokenizers"}


def test_cache_env_variable_replaces_only_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert EmulatorConfig().resolved_cache_dir() == tmp_path / "from-env"
    assert EmulatorConfig(cache_dir=str(tmp_path / "mine")).resolved_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    assert EmulatorConfig().resolved_cache_dir() == Path(DEFAULT_CACHE).expanduser()


def test_unwritable_cache_dir_is_unavailable_with_a_hint(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a path below a regular file cannot be created, even by root
    expected = rf"cache directory {blocker}/cache is not writable .*set {CACHE_ENV}"
    with pytest.raises(EmulationUnavailable, match=expected):
        ensure_environment(EmulatorConfig(cache_dir=str(blocker / "cache")))


def test_missing_qemu_binary_is_unavailable(tmp_path):
    cfg = EmulatorConfig(cache_dir=str(tmp_path / "cache"), qemu=str(tmp_path / "no-such-qemu"))
    with pytest.raises(EmulationUnavailable, match=r"qemu binary .*no-such-qemu not found or not executable; "
                                                   r"install qemu-user-static"):
        ensure_environment(cfg)


def test_qemu_that_does_not_say_its_version_is_unavailable(tmp_path):
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(EmulationUnavailable, match=r"--version gave 'hello', expected 'qemu-aarch64 version N.N'"):
        ensure_environment(EmulatorConfig(cache_dir=str(tmp_path / "cache"), qemu=str(fake)))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the build path is for x86-64 hosts")
def test_building_without_apt_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(EmulationUnavailable, match=r"^apt-get not found: .*Debian-based host"):
        ensure_environment(EmulatorConfig(cache_dir=str(tmp_path / "cache")))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-built left behind


def test_a_complete_cache_is_reused_without_building(monkeypatch, tmp_path):
    cfg = EmulatorConfig(cache_dir=str(tmp_path / "cache"), cpu="cortex-a72")
    env_dir = _fake_cached_env(tmp_path / "cache", cfg)
    monkeypatch.setattr(aarch64, "_build", lambda *a, **k: pytest.fail("a complete cache must not be rebuilt"))
    env = ensure_environment(cfg)
    assert (env.root, env.site, env.qemu) == (env_dir / "root", env_dir / "site", tmp_path / "cache/qemu/qemu-aarch64")
    assert env.command(["-c", "pass"])[:5] == [str(env.qemu), "-cpu", "cortex-a72", "-L", str(env.root)]
    assert env.command(["-c", "pass"])[5:] == [str(env_dir / "root/usr/bin/python3.11"), "-c", "pass"]
    assert not (env.root / "proc").exists()  # qemu >= 8 emulates /proc/cpuinfo itself


def test_qemu_7_gets_an_arm_cpuinfo_for_the_chosen_cpu(monkeypatch, tmp_path):
    cfg = EmulatorConfig(cache_dir=str(tmp_path / "cache"), cpu="cortex-a72")
    _fake_cached_env(tmp_path / "cache", cfg, qemu_version="7.2.19")
    monkeypatch.setattr(aarch64, "_build", lambda *a, **k: pytest.fail("a complete cache must not be rebuilt"))
    env = ensure_environment(cfg)
    cpuinfo = (env.root / "proc" / "cpuinfo").read_text()
    assert cpuinfo.count("processor\t:") == (os.cpu_count() or 1)
    assert "CPU part\t: 0xd08" in cpuinfo and "CPU implementer\t: 0x41" in cpuinfo


def test_a_cache_folder_without_env_json_is_rebuilt(monkeypatch, tmp_path):
    cfg = EmulatorConfig(cache_dir=str(tmp_path / "cache"))
    env_dir = _fake_cached_env(tmp_path / "cache", cfg)
    (env_dir / "env.json").unlink()
    calls = []

    def build(*args, **kwargs):
        calls.append(kwargs)
        raise EmulationUnavailable("stopped before building")

    monkeypatch.setattr(aarch64, "_build", build)
    with pytest.raises(EmulationUnavailable, match="stopped before building"):
        ensure_environment(cfg)
    assert not env_dir.exists() and calls == [{"need_env": True, "need_qemu": False, "explicit_qemu": None}]


def test_a_crash_under_emulation_fails_validation_loudly(monkeypatch, tmp_path):
    from tiny_bundle import make_tiny_bundle

    from embslim.pipeline.validate import ValidationFailed

    crashing = tmp_path / "qemu-crash"
    crashing.write_text("#!/bin/sh\necho 'Illegal instruction in onnxruntime' >&2\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    env = aarch64.ArmEnv(root=tmp_path, site=tmp_path, qemu=crashing, cpu="neoverse-n1", python_version="3.11",
                         qemu_version="qemu-aarch64 version 10.0.2")
    monkeypatch.setattr(aarch64, "ensure_environment", lambda cfg: env)
    bundle = make_tiny_bundle(tmp_path / "bundle")
    split = Split(texts=("a great movie", "awful"), pairs=None, labels=(1, 0))
    with pytest.raises(ValidationFailed, match=r"model.onnx: the emulated evaluation failed under emulated aarch64 "
                                               r"\(killed by SIGSEGV\): Illegal instruction in onnxruntime"):
        validate_arm64(bundle, split, file="model.onnx", n=2)


def test_an_emulated_run_past_its_timeout_is_killed_and_fails(monkeypatch, tmp_path):
    from tiny_bundle import make_tiny_bundle

    from embslim.pipeline.validate import ValidationFailed

    hanging = tmp_path / "qemu-hang"
    hanging.write_text("#!/bin/sh\nsleep 60 &\nwait\n")  # a child keeps the pipes open: the group must die
    hanging.chmod(0o755)
    env = aarch64.ArmEnv(root=tmp_path, site=tmp_path, qemu=hanging, cpu="neoverse-n1", python_version="3.11",
                         qemu_version="qemu-aarch64 version 10.0.2")
    monkeypatch.setattr(aarch64, "ensure_environment", lambda cfg: env)
    split = Split(texts=("a great movie",), pairs=None, labels=(1,))
    started = time.perf_counter()
    with pytest.raises(ValidationFailed, match=r"model.onnx: the emulated evaluation took over 1 s under emulation; "
                                               r"pass a larger timeout or a smaller n"):
        validate_arm64(make_tiny_bundle(tmp_path / "bundle"), split, file="model.onnx", timeout=1)
    assert time.perf_counter() - started < 30


def test_qemu_version_parsing():
    assert aarch64._qemu_major("1:10.0.2+ds-2+deb13u1~bpo12+1") == 10
    assert aarch64._qemu_major("1:7.2+dfsg-7+deb12u18+b3") == 7
    assert aarch64._qemu_major("qemu-aarch64 version 7.2.19 (Debian 1:7.2+dfsg-7)") == 7
    assert aarch64._qemu_major("nonsense") == 0


def test_pip_platform_tags_cover_every_older_glibc():
    flags = aarch64._pip_platform_flags(EmulatorConfig(), aarch64.RELEASES["3.11"])
    tags = [flags[i + 1] for i, f in enumerate(flags) if f == "--platform"]
    assert tags[0] == "manylinux_2_36_aarch64" and tags[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_28_aarch64" in tags  # onnxruntime 1.31's wheel
    assert "manylinux_2_16_aarch64" not in tags


# -- the real thing ---------------------------------------------------------------------------

TEXTS = ("the movie was great", "awful boring plot", "i love this film !", "it is not very good, but fun",
         "i hate the acting", "a good film and a great plot", "boring", "this was not awful")


@pytest.fixture(scope="module")
def arm_env():
    try:
        return ensure_environment(EmulatorConfig())
    except EmulationUnavailable as e:
        pytest.skip(f"emulated aarch64 environment unavailable: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("pair", [False, True])
def test_tiny_bundle_under_emulation_predicts_like_x86(arm_env, tmp_path, pair):
    from tiny_bundle import make_tiny_bundle

    from embslim.runtime import Classifier

    bundle = make_tiny_bundle(tmp_path / "bundle", pair=pair)
    texts = TEXTS * 3  # 24 examples in batches of 5: padded batches, a ragged last one
    pairs = tuple(reversed(texts)) if pair else None
    split = Split(texts=texts, pairs=pairs, labels=tuple(i % 2 for i in range(len(texts))))
    x86 = Classifier.from_bundle(bundle).logits(list(texts), list(pairs) if pairs else None, batch_size=5)

    report = validate_arm64(bundle, split, file="model.onnx", n=20, batch_size=5, x86_logits=x86,
                            latency_runs=0 if pair else 2)

    assert report["n_eval"] == 20 and report["agreement"] == 1.0
    assert report["max_logit_diff"] < 1e-5  # fp32: ARM and x86 kernels agree to rounding
    assert report["accuracy"] == report["x86_accuracy"]
    assert report["onnxruntime"] == host_versions()["onnxruntime"]
    assert "not from a device" in report["note"]
    timing_keys = {k for k in report if "latency" in k or "rss" in k or "seconds" in k}
    assert timing_keys and all(k.startswith("emulated_") for k in timing_keys)
    if not pair:
        assert report["emulated_latency_seq_len"] == 32 and report["emulated_peak_rss_mb"] > 0
