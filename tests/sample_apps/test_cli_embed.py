"""The CLI app's --embed mode on a feature-extraction bundle: JSON Lines equal to
`Embedder.encode`, lines read as the classify mode reads them, one-line errors with exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embslim.runtime import Embedder
from tests.sample_apps.test_cli_app import run

REPO = Path(__file__).resolve().parents[2]
LINES = ["how do I reset my password", "a great movie", "Café déjà vu, très naïf", "good " * 50]


@pytest.fixture(scope="module")
def emb(tiny_embedding_bundle):
    return Embedder.from_bundle(tiny_embedding_bundle, variant="auto")


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_json_lines_equal_the_runtime(tiny_embedding_bundle, emb):
    stdin = "\n".join(LINES[:2] + ["", "   "] + LINES[2:]).encode() + b"\n"
    code, out, err = run([str(tiny_embedding_bundle), "--embed", "--batch-size", "3"], stdin)
    assert code == 0 and err == "", err
    records = _records(out)
    assert [(r["file"], r["line"], r["text"]) for r in records] == [
        ("<stdin>", 1, LINES[0]), ("<stdin>", 2, LINES[1]), ("<stdin>", 5, LINES[2]),
        ("<stdin>", 6, LINES[3]),
    ]  # blank lines skipped, order and line numbers kept  # fmt: skip
    assert all(set(r) == {"file", "line", "text", "embedding"} for r in records)
    got = np.array([r["embedding"] for r in records], dtype=np.float32)
    # the same batches as the app's (padding per batch moves the last bit), JSON round-trips float32
    np.testing.assert_array_equal(got, emb.encode(LINES, batch_size=3))


def test_files_and_stdin_with_bom_crlf_and_tabs(tiny_embedding_bundle, emb, tmp_path):
    first = tmp_path / "a.txt"
    first.write_bytes(b"\xef\xbb\xbfa great movie\r\n\r\nboring\tplot\r\n")  # a tab is text here
    code, out, err = run([str(tiny_embedding_bundle), str(first), "-", "--embed", "--json"],
                         b"fun\n")  # fmt: skip
    assert code == 0, err
    records = _records(out)
    assert [(r["file"], r["line"], r["text"]) for r in records] == [
        (str(first), 1, "a great movie"), (str(first), 3, "boring\tplot"), ("<stdin>", 1, "fun"),
    ]  # fmt: skip
    got = np.array([r["embedding"] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(got, emb.encode(["a great movie", "boring\tplot", "fun"]))


def test_surrogates_are_embedded_as_replacement_characters(tiny_embedding_bundle, emb):
    code, out, err = run([str(tiny_embedding_bundle), "--embed"], b"so cute \xed\xa0\xbd\n")
    assert code == 0, err
    record = json.loads(out)
    assert record["text"] == "so cute \ufffd"
    np.testing.assert_array_equal(np.float32(record["embedding"]), emb.encode("so cute \ufffd")[0])


HELP = r" \(see python -m sample_apps\.cli\.classify --help\)$"
EMBED_CASES = [
    # (id, argv ({e}: embedding bundle, {c}: classification bundle, {t}: tmp dir), stdin, stderr)
    ("embed-on-a-classifier", ["{c}", "--embed"], b"a\n",
     r"^error: .* is a text-classification bundle, but --embed needs a feature-extraction "
     r"\(sentence-embedding\) bundle; drop --embed to classify the lines$"),
    ("embedder-without-embed", ["{e}"], b"a\n",
     r"^error: .* is a feature-extraction \(sentence-embedding\) bundle; pass --embed to write "
     r"each line's embedding as JSON Lines$"),
    ("top-k-with-embed", ["{e}", "--embed", "--top-k", "2"], b"a\n",
     r"^error: --top-k ranks labels, which an embedding bundle has none of; drop it$"),
    ("line-over-max-chars", ["{e}", "--embed", "--max-chars", "20"], b"fine\n" + b"x" * 21 + b"\n",
     r"^error: <stdin>:2: texts\[0\] has 21 characters, more than max_chars=20; only the first 12 "
     r"tokens are used anyway"),
    ("bad-utf8-line", ["{e}", "--embed"], b"ok\n\xff\xfe bad\n",
     r"^error: <stdin>:2: not UTF-8 \(invalid start byte at byte 0\)"),
    ("huge-line-no-newline", ["{e}", "--embed", "--max-chars", "10"], b"ok\n" + b"y" * 10_000,
     r"^error: <stdin>:2: the line is longer than 96 bytes without a newline"),
    ("missing-file", ["{e}", "{t}/nope.txt", "--embed"], b"",
     r"^error: .*nope\.txt: cannot read it \(No such file or directory\)$"),
    ("unknown-variant", ["{e}", "--embed", "--variant", "int3"], b"",
     r"^error: the bundle has no artifact with variant 'int3'"),
    ("batch-size-zero", ["{e}", "--embed", "--batch-size", "0"], b"",
     r"^error: argument --batch-size: expected a positive integer, got 0" + HELP),
    ("embed-takes-no-value", ["{e}", "--embed=yes"], b"",
     r"^error: argument --embed: ignored explicit argument 'yes'" + HELP),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "stdin", "pattern"), [row[1:] for row in EMBED_CASES],
                         ids=[row[0] for row in EMBED_CASES])  # fmt: skip
def test_embed_errors_exit_2_with_one_line(tiny_embedding_bundle, tiny_bundle, tmp_path, argv,
                                           stdin, pattern):  # fmt: skip
    args = [a.replace("{e}", str(tiny_embedding_bundle)).replace("{c}", str(tiny_bundle))
            .replace("{t}", str(tmp_path)) for a in argv]  # fmt: skip
    code, out, err = run(args, stdin)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert re.search(pattern, err.rstrip("\n")), err
    assert out == ""  # the failing batch writes nothing


def test_lines_before_a_bad_line_are_written(tiny_embedding_bundle):
    """As in the classify mode: batches before the failing one are already out."""
    code, out, err = run([str(tiny_embedding_bundle), "--embed", "--batch-size", "1",
                          "--max-chars", "20"], b"fine\nalso fine\n" + b"x" * 21 + b"\n")  # fmt: skip
    assert code == 2 and err.startswith("error: <stdin>:3: texts[0] has 21 characters")
    assert [r["text"] for r in _records(out)] == ["fine", "also fine"]


def test_real_process_with_a_pipe(tiny_embedding_bundle, emb):
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.cli.classify", str(tiny_embedding_bundle), "--embed"],
        input="\n".join(LINES), capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()],
                   dtype=np.float32)  # fmt: skip
    np.testing.assert_array_equal(got, emb.encode(LINES))
