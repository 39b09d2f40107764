"""The CLI app's --tag mode on a token-classification bundle: JSON Lines whose entities equal
`Tagger.tag` (offsets index the line's text), lines read as the other modes read them, one-line
errors with exit 2, and the mode checks between --tag, --embed and the bundle's task."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embslim.runtime import Tagger
from tests.sample_apps.test_cli_app import run

REPO = Path(__file__).resolve().parents[2]
LINES = ["Ada Lovelace lives in London", "Café déjà vu à São Paulo 😀", "extra  spaces\tand tabs",
         "good " * 50]  # fmt: skip


@pytest.fixture(scope="module")
def tagger(tiny_tagger_bundle):
    return Tagger.from_bundle(tiny_tagger_bundle, variant="auto")


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("strategy", [None, "none", "first", "average", "max"])
def test_json_lines_equal_the_runtime(tiny_tagger_bundle, tagger, strategy):
    stdin = "\n".join(LINES[:2] + ["", "   "] + LINES[2:]).encode() + b"\n"
    argv = [str(tiny_tagger_bundle), "--tag", "--batch-size", "3"]
    argv += [] if strategy is None else ["--aggregation-strategy", strategy]
    code, out, err = run(argv, stdin)
    assert code == 0 and err == "", err
    records = _records(out)
    assert [(r["file"], r["line"], r["text"]) for r in records] == [
        ("<stdin>", 1, LINES[0]), ("<stdin>", 2, LINES[1]), ("<stdin>", 5, LINES[2]),
        ("<stdin>", 6, LINES[3]),
    ]  # blank lines skipped, order and line numbers kept  # fmt: skip
    assert all(list(r) == ["file", "line", "text", "entities"] for r in records)
    want = tagger.tag(LINES, aggregation_strategy=strategy or "simple", batch_size=3)
    assert [r["entities"] for r in records] == want
    assert any(want)
    for r in records:  # offsets index the line as written
        for e in r["entities"]:
            assert 0 <= e["start"] <= e["end"] <= len(r["text"])


def test_surrogates_are_tagged_as_replacement_characters(tiny_tagger_bundle, tagger):
    code, out, err = run([str(tiny_tagger_bundle), "--tag"], b"so cute \xed\xa0\xbd london\n")
    assert code == 0, err
    record = json.loads(out)
    assert record["text"] == "so cute \ufffd london"
    assert record["entities"] == tagger.tag("so cute \ufffd london")


HELP = r" \(see python -m sample_apps\.cli\.classify --help\)$"
TAG_CASES = [
    # (id, argv ({g}: tagger bundle, {e}: embedding bundle, {c}: classification bundle), stdin, stderr)
    ("tag-on-a-classifier", ["{c}", "--tag"], b"a\n",
     r"^error: .* is a text-classification bundle, but --tag needs a token-classification "
     r"\(tagger\) bundle; drop --tag to classify the lines$"),
    ("tag-on-an-embedder", ["{e}", "--tag"], b"a\n",
     r"^error: .* is a feature-extraction bundle, but --tag needs a token-classification "
     r"\(tagger\) bundle; pass --embed instead$"),
    ("embed-on-a-tagger", ["{g}", "--embed"], b"a\n",
     r"^error: .* is a token-classification bundle, but --embed needs a feature-extraction "
     r"\(sentence-embedding\) bundle; pass --tag instead$"),
    ("tagger-without-tag", ["{g}"], b"a\n",
     r"^error: .* is a token-classification \(tagger\) bundle; pass --tag to write each line's "
     r"entities as JSON Lines$"),
    ("tag-and-embed", ["{g}", "--tag", "--embed"], b"a\n",
     r"^error: --embed and --tag are two modes for two kinds of bundle; pass one$"),
    ("top-k-with-tag", ["{g}", "--tag", "--top-k", "2"], b"a\n",
     r"^error: --top-k ranks a text's labels; --tag writes entities: drop --top-k$"),
    ("strategy-without-tag", ["{c}", "--aggregation-strategy", "first"], b"a\n",
     r"^error: --aggregation-strategy applies to --tag \(token-classification bundles\); drop it$"),
    ("unknown-strategy", ["{g}", "--tag", "--aggregation-strategy", "longest"], b"",
     r"^error: argument --aggregation-strategy: invalid choice: 'longest'"),
    ("line-over-max-chars", ["{g}", "--tag", "--max-chars", "20"], b"fine\n" + b"x" * 21 + b"\n",
     r"^error: <stdin>:2: texts\[0\] has 21 characters, more than max_chars=20; only the first 24 "
     r"tokens are used anyway"),
    ("bad-utf8-line", ["{g}", "--tag"], b"ok\n\xff\xfe bad\n",
     r"^error: <stdin>:2: not UTF-8 \(invalid start byte at byte 0\)"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "stdin", "pattern"), [row[1:] for row in TAG_CASES],
                         ids=[row[0] for row in TAG_CASES])  # fmt: skip
def test_tag_errors_exit_2_with_one_line(tiny_tagger_bundle, tiny_embedding_bundle, tiny_bundle,
                                         argv, stdin, pattern):  # fmt: skip
    args = [a.replace("{g}", str(tiny_tagger_bundle)).replace("{e}", str(tiny_embedding_bundle))
            .replace("{c}", str(tiny_bundle)) for a in argv]  # fmt: skip
    code, out, err = run(args, stdin)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert re.search(pattern, err.rstrip("\n")), err
    assert out == ""


def test_real_process_with_a_pipe(tiny_tagger_bundle, tagger):
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.cli.classify", str(tiny_tagger_bundle), "--tag",
         "--aggregation-strategy", "first"],
        input="\n".join(LINES), capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = [json.loads(line)["entities"] for line in result.stdout.splitlines()]
    assert got == tagger.tag(LINES, aggregation_strategy="first")
