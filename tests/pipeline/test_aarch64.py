"""embslim.pipeline.aarch64: config and cache-key logic, EmulationUnavailable messages, the task-generic
evaluation (`_arm_eval` on x86, and `validate_arm64` with a stand-in "qemu" that runs the host's Python)
for a classifier, an embedder and a tagger, and (slow) real emulated aarch64 runs of tiny bundles of
each task whose outputs must equal x86's."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embslim.pipeline import _arm_eval, aarch64
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


# -- the task-generic plumbing, on x86 ----------------------------------------------------------

# Tiny-BERT words (tests/tiny_models.WORDS), tagged with WNUT-17 ids (tagger_bundle.WNUT_LABELS).
TAGGED = ((("the", "movie", "was", "great"), (0, 7, 0, 0)),
          (("i", "love", "this", "film", "and", "the", "music"), (0, 0, 0, 7, 0, 0, 7)),
          (("awful", "acting"), (0, 0)),
          (("the", "actors", "and", "the", "story", "are", "not", "very", "good"), (0, 1, 0, 0, 9, 10, 0, 0, 0)),
          (("plot",), (9,)))


def _tagged_split(copies: int = 1) -> Split:
    rows = TAGGED * copies
    return Split(texts=tuple(" ".join(w) for w, _ in rows), pairs=None, labels=None,
                 words=tuple(w for w, _ in rows), tags=tuple(t for _, t in rows))


@pytest.fixture(scope="module")
def tagger_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    from tagger_bundle import make_tagger_bundle

    return make_tagger_bundle(tmp_path_factory.mktemp("tagger"), max_length=12)  # 12: the long text is cut


def _host_python_env(tmp_path: Path) -> aarch64.ArmEnv:
    """An ArmEnv whose "qemu" drops qemu's own arguments and runs the host's Python: the whole host
    side of validate_arm64 (spec file, emulated command, JSON back, checks, metrics) without emulation."""
    fake = tmp_path / "qemu-host"
    fake.write_text(f'#!/bin/sh\nshift 5\nexec "{sys.executable}" "$@"\n')  # -cpu CPU -L ROOT PYTHON
    fake.chmod(0o755)
    return aarch64.ArmEnv(root=tmp_path, site=tmp_path, qemu=fake, cpu="neoverse-n1", python_version="3.11",
                          qemu_version="qemu-aarch64 version 10.0.2")


def test_arm_eval_gives_each_tasks_primary_output_in_batches(tmp_path):
    from tiny_bundle import make_tiny_bundle, make_tiny_embedding_bundle

    from embslim.runtime import load_bundle

    texts = list(TEXTS)
    clf = load_bundle(make_tiny_bundle(tmp_path / "clf", pair=True), threads=1)
    pairs = list(reversed(texts))
    done = []
    got = _arm_eval.evaluate(clf, texts, pairs, batch_size=3, on_batch=done.append)
    assert done == [3, 6, 8] and set(got) == {"task", "outputs"} and got["task"] == "text-classification"
    np.testing.assert_allclose(got["outputs"], clf.logits(texts, pairs, batch_size=3), rtol=0, atol=1e-6)

    emb = load_bundle(make_tiny_embedding_bundle(tmp_path / "emb", dim=6), threads=1)
    got = _arm_eval.evaluate(emb, texts, None, batch_size=5)
    assert got["task"] == "feature-extraction" and "token_counts" not in got
    assert np.asarray(got["outputs"]).shape == (8, 6)
    np.testing.assert_allclose(got["outputs"], emb.encode(texts, batch_size=5), rtol=0, atol=1e-6)


def test_arm_eval_gives_a_taggers_token_logits_and_counts(tagger_bundle):
    from embslim.runtime import load_bundle

    tagger = load_bundle(tagger_bundle, threads=1)
    texts = list(_tagged_split(2).texts)
    got = _arm_eval.evaluate(tagger, texts, None, batch_size=4)
    outs = tagger.token_outputs(texts, batch_size=4)
    assert got["task"] == "token-classification"
    assert got["token_counts"] == [len(o.input_ids) for o in outs] and max(got["token_counts"]) == 12
    np.testing.assert_allclose(got["outputs"], np.concatenate([o.logits for o in outs]), rtol=0, atol=1e-5)


def test_arm_eval_main_prints_one_json_line(tmp_path, capsys):
    from tiny_bundle import make_tiny_embedding_bundle

    bundle = make_tiny_embedding_bundle(tmp_path / "emb")
    spec = tmp_path / "eval.json"
    spec.write_text(json.dumps({"bundle": str(bundle), "file": "model.onnx", "texts": list(TEXTS[:3]),
                                "pairs": None, "batch_size": 2}))
    _arm_eval.main([str(spec)])
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["task"] == "feature-extraction" and len(result["outputs"]) == 3
    assert {"machine", "onnxruntime", "load_seconds", "eval_seconds"} <= set(result)
    assert [line.split()[:2] for line in err.splitlines()] == [["progress", "2/3"], ["progress", "3/3"]]


CLASSIFICATION_KEYS = {"file", "target", "accuracy", "n_eval", "f1", "x86_accuracy", "agreement", "max_logit_diff",
                       "x86_files", "emulated_eval_seconds", "emulated_load_seconds", "cpu", "qemu", "onnxruntime",
                       "note"}


def test_validate_arm64_keeps_the_classification_report(monkeypatch, tmp_path):
    from tiny_bundle import make_tiny_bundle

    monkeypatch.setattr(aarch64, "ensure_environment", lambda cfg: _host_python_env(tmp_path))
    split = Split(texts=TEXTS, pairs=None, labels=tuple(i % 2 for i in range(len(TEXTS))))
    report = validate_arm64(make_tiny_bundle(tmp_path / "bundle"), split, file="model.onnx", n=6, batch_size=4,
                            latency_runs=0)
    assert set(report) == CLASSIFICATION_KEYS
    assert report["n_eval"] == 6 and report["agreement"] == 1.0 and report["max_logit_diff"] == 0.0
    assert report["accuracy"] == report["x86_accuracy"] and report["x86_files"] == {}


def test_validate_arm64_judges_an_embedder_by_max_diff_and_cosine(monkeypatch, tmp_path):
    from tiny_bundle import make_tiny_embedding_bundle

    monkeypatch.setattr(aarch64, "ensure_environment", lambda cfg: _host_python_env(tmp_path))
    bundle = make_tiny_embedding_bundle(tmp_path / "bundle", int8_target="arm64")
    split = Split(texts=TEXTS, pairs=None, labels=None)
    report = validate_arm64(bundle, split, file="model_int8_arm64.onnx", n=5, batch_size=2, latency_runs=0)
    assert report["n_eval"] == 5 and report["max_abs_diff"] == 0.0
    assert report["cosine_min_x86"] == pytest.approx(1.0, abs=1e-6)
    assert "agreement" not in report and "accuracy" not in report
    other = report["x86_files"]["model.onnx"]   # another seed: a different model, so cosine < 1
    assert set(other) == {"cosine_min_with_emulated", "cosine_min_with_x86_model_int8_arm64.onnx"}
    assert other["cosine_min_with_emulated"] == pytest.approx(other["cosine_min_with_x86_model_int8_arm64.onnx"])
    assert other["cosine_min_with_emulated"] < 0.999


def test_validate_arm64_runs_knn_on_the_emulated_queries_only(monkeypatch, tmp_path):
    from tiny_bundle import make_tiny_embedding_bundle

    from embslim.pipeline.scoring import EmbeddingProbes, EmbeddingScorer

    monkeypatch.setattr(aarch64, "ensure_environment", lambda cfg: _host_python_env(tmp_path))
    labels = tuple(i % 2 for i in range(len(TEXTS)))
    index = Split(texts=TEXTS[:4], pairs=None, labels=labels[:4])
    queries = Split(texts=(TEXTS[1], TEXTS[6]), pairs=None, labels=(labels[1], labels[6]))
    pairs = Split(texts=TEXTS[:2], pairs=TEXTS[2:4], labels=(0, 1))
    probes = EmbeddingProbes(index, queries, "tiny", pairs, "tiny pairs", queries_in_eval=(1, 6))
    narrowed = EmbeddingScorer(probes).first_rows(5)
    assert narrowed.probes.queries_in_eval == (1,) and narrowed.probes.knn_queries.texts == (TEXTS[1],)
    assert narrowed.probes.pairs is None and narrowed.primary == "knn_accuracy"
    assert EmbeddingScorer(probes).first_rows(1).probes == EmbeddingProbes()  # no query among the rows
    assert EmbeddingScorer(EmbeddingProbes(index, queries, "other data")).first_rows(8).probes == EmbeddingProbes()

    bundle = make_tiny_embedding_bundle(tmp_path / "bundle")
    report = validate_arm64(bundle, Split(texts=TEXTS, pairs=None, labels=labels), file="model.onnx", n=5,
                            latency_runs=0, scorer=EmbeddingScorer(probes))
    assert 0.0 <= report["knn_accuracy"] <= 1.0 and "pair_auc" not in report


def test_validate_arm64_judges_a_tagger_by_entity_f1_and_token_agreement(monkeypatch, tmp_path, tagger_bundle):
    from embslim.runtime import Tagger

    monkeypatch.setattr(aarch64, "ensure_environment", lambda cfg: _host_python_env(tmp_path))
    split = _tagged_split(2)
    outs = Tagger.from_bundle(tagger_bundle).token_outputs(list(split.texts), batch_size=3)
    x86 = np.concatenate([o.logits for o in outs])   # the whole split's token rows: the first 7 texts' are used
    report = validate_arm64(tagger_bundle, split, file="model.onnx", n=7, batch_size=3, latency_runs=0, x86_logits=x86)
    assert report["n_eval"] == 7 and report["agreement"] == 1.0 and report["max_logit_diff"] < 1e-5
    assert report["f1"] == report["x86_f1"] and {"entity_precision", "recall"} <= set(report)
    with pytest.raises(ValueError, match=r"x86_logits must be \[>= \d+, n_outputs\] .*one per token"):
        validate_arm64(tagger_bundle, split, file="model.onnx", n=7, latency_runs=0, x86_logits=x86[:10])


def test_emulated_token_counts_and_shapes_must_match_x86():
    from embslim.pipeline.validate import ValidationFailed

    counts = np.array([3, 4])
    out = {"outputs": np.zeros((7, 2)).tolist(), "token_counts": [3, 5]}
    with pytest.raises(ValidationFailed, match=r"m.onnx: the emulated run tokenized text 1 into 5 tokens where "
                                               r"x86 has 4 .*rebuild the emulated environment"):
        aarch64._emulated_outputs(out, counts, shape=(7, 2), file="m.onnx", error=ValidationFailed)
    with pytest.raises(ValidationFailed, match=r"m.onnx: the emulated run gave outputs of shape \(3, 2\), "
                                               r"expected \(4, 2\)"):
        aarch64._emulated_outputs({"outputs": [[0, 0]] * 3}, None, shape=(4, 2), file="m.onnx", error=ValidationFailed)
    got = aarch64._emulated_outputs(out | {"token_counts": [3, 4]}, counts, shape=(7, 2), file="m.onnx",
                                    error=ValidationFailed)
    assert got.dtype == np.float32 and got.shape == (7, 2)


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_cli_validate_arm64_passes_the_bundles_scorer(monkeypatch, tmp_path, task):
    from tiny_bundle import make_tiny_bundle, make_tiny_embedding_bundle

    from embslim.pipeline.cli import main
    from embslim.pipeline.scoring import ClassificationScorer, EmbeddingScorer

    make = make_tiny_bundle if task == "text-classification" else make_tiny_embedding_bundle
    bundle = make(tmp_path / "bundle")
    data = tmp_path / "data.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{['neg', 'pos'][i % 2]}\n" for i, t in enumerate(TEXTS)))
    calls = []
    monkeypatch.setattr(aarch64, "validate_arm64", lambda *a, **k: calls.append((a, k)) or {"file": k["file"]})
    assert main(["validate", str(bundle), "--train", str(data), "--eval", str(data), "--target", "arm64",
                 "--arm64-n", "3"]) == 0
    (args, kwargs), = calls
    assert kwargs["file"] == "model.int8-arm64.onnx" and kwargs["n"] == 3 and len(args[1]) == len(TEXTS)
    if task == "text-classification":
        assert kwargs["scorer"] == ClassificationScorer(2)
    else:   # kNN from the labelled data: its eval rows are the queries
        assert isinstance(kwargs["scorer"], EmbeddingScorer) and kwargs["scorer"].probes.queries_in_eval is not None


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


@pytest.mark.slow
def test_tiny_embedder_under_emulation_encodes_like_x86(arm_env, tmp_path):
    from tiny_bundle import make_tiny_embedding_bundle

    bundle = make_tiny_embedding_bundle(tmp_path / "bundle", dim=6)
    report = validate_arm64(bundle, Split(texts=TEXTS, pairs=None, labels=None), file="model.onnx", n=6,
                            batch_size=4, latency_runs=0)  # batches of 4: a padded one, a ragged last one

    assert report["n_eval"] == 6 and report["max_abs_diff"] < 1e-5  # fp32: ARM and x86 kernels agree to rounding
    assert report["cosine_min_x86"] > 1 - 1e-6
    assert report["onnxruntime"] == host_versions()["onnxruntime"] and "not from a device" in report["note"]


@pytest.mark.slow
def test_tiny_tagger_under_emulation_tags_like_x86(arm_env, tmp_path, tagger_bundle):
    report = validate_arm64(tagger_bundle, _tagged_split(), file="model.onnx", n=5, batch_size=3, latency_runs=0)

    assert report["n_eval"] == 5 and report["agreement"] == 1.0   # every token's tag, counts checked against x86's
    assert report["max_logit_diff"] < 1e-3   # the head is scaled x40, so logits are tens: rounding is larger
    assert report["f1"] == report["x86_f1"]
