"""Fixtures for the sample apps: a tiny bundle (fast) and a real SST-2 bundle (slow, built once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_bundle import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]

# Texts the in-browser app must classify exactly like the runtime: accents, CJK, emoji,
# punctuation runs, a special token typed by the user, and texts far over max_length.
PARITY_TEXTS = [
    "A gripping, beautifully acted film.",
    "the plot was boring and the acting was awful",
    "I love this movie!",
    "Not good. Not good at all.",
    "Café crème, déjà vu: a naïve façade in São Paulo",
    "ÉNORME DÉCEPTION, à éviter",
    "Ünïcödé ÅÄÖ straße ΣΑΣ İstanbul",
    "中文 and English mixed: 电影很好",
    "emoji 😀👍🏽 make it better?",
    "$100+ <b>tags</b> & 50% off!!! (really)",
    "don't, can't, won't -- shouldn't've",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\ninside",
    "unbelievably overwhelmingly unaffable",
    "x" * 150,  # longer than max_input_chars_per_word -> [UNK]
    "a great movie [SEP] a bad movie",  # a special token typed by the user
    "good " * 60,  # truncated at max_length
    " ".join(["it was a very fun film but the plot is not great"] * 20),
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. " * 8,
    "The film's résumé: naïveté, élan and a coup de grâce.",
    "ok",
    "!",
]


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
    return list(PARITY_TEXTS)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("apps-tiny"), max_length=12)


@pytest.fixture(scope="session")
def tiny_pair_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("apps-tiny-pair"), pair=True, labels=("entail", "neutral", "contra")
    )


@pytest.fixture(scope="session")
def sst2_bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A real DEP-pruned all-MiniLM-L6-v2 bundle fine-tuned on 64 SST-2 sentences (~1-2 min).

    Only the tests marked `slow` use it; the model is barely trained, but it is the real
    architecture, vocabulary, tokenizer.json and remap, which is what the apps must get right.
    EMBSLIM_TEST_SST2_BUNDLE=DIR reuses a bundle built before (e.g. by `make demo`).
    """
    reuse = os.environ.get("EMBSLIM_TEST_SST2_BUNDLE")
    if reuse:
        return Path(reuse)
    out = tmp_path_factory.mktemp("apps-sst2") / "bundle"
    command = [
        str(Path(sys.executable).with_name("embslim")),
        "run",
        "--config", str(REPO / "configs" / "sst2-demo.toml"),
        "--data-root", str(shared_data),
        "--out", str(out),
        "--max-train-samples", "64",
        "--max-length", "64",
        "--no-baseline",
        "--no-measure",
        "--allow-drop",  # a 64-sentence model sits near 50%: int8 may flip a few more labels, flagged not fatal
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "manifest.json").is_file(), result.stdout[-2000:]
    return out
