"""The CLI app: in process through `main([...])`, plus one real `python -m` run with a pipe."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from embslim.runtime import Classifier
from sample_apps.cli.classify import main

REPO = Path(__file__).resolve().parents[2]
LINES = ["a great movie", "the plot was awful", "Café déjà vu, très naïf", "good " * 50]


def run(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def clf(tiny_bundle):
    return Classifier.from_bundle(tiny_bundle, variant="auto")


def test_plain_output_from_stdin(tiny_bundle, clf):
    stdin = "\n".join(LINES[:2] + ["", "   "] + LINES[2:]).encode() + b"\n"
    code, out, err = run([str(tiny_bundle)], stdin)
    assert code == 0, err
    want = [f"{p.label}\t{p.score:.4f}\t{t}" for t, p in zip(LINES, clf.predict(LINES))]
    assert out.splitlines() == want  # blank lines skipped, order kept


def test_json_lines_equal_the_runtime(tiny_bundle, clf):
    code, out, err = run([str(tiny_bundle), "--json", "--top-k", "2"], "\n".join(LINES).encode())
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    for number, (record, pred) in enumerate(zip(records, clf.predict(LINES, top_k=2)), start=1):
        assert record == {
            "file": "<stdin>", "line": number, "text": LINES[number - 1], "label": pred.label,
            "score": pred.score, "probabilities": pred.probabilities,
            "top_k": [{"label": label, "score": s} for label, s in pred.top_k],
        }  # fmt: skip


def test_files_stdin_line_numbers_bom_and_crlf(tiny_bundle, tmp_path):
    first = tmp_path / "a.txt"
    first.write_bytes(b"\xef\xbb\xbfa great movie\r\n\r\nboring\r\n")  # Windows-style file
    second = tmp_path / "b.txt"
    second.write_text("fun\n", encoding="utf-8")
    code, out, err = run(
        [str(tiny_bundle), str(first), "-", str(second), "--json", "--batch-size", "1"], b"bad\n"
    )
    assert code == 0, err
    where = [(r["file"], r["line"], r["text"]) for r in map(json.loads, out.splitlines())]
    assert where == [
        (str(first), 1, "a great movie"), (str(first), 3, "boring"), ("<stdin>", 1, "bad"),
        (str(second), 1, "fun"),
    ]  # fmt: skip


def test_top_k_columns_in_plain_output(tiny_bundle):
    code, out, _ = run([str(tiny_bundle), "--top-k", "2"], b"a great movie\n")
    assert code == 0
    columns = out.rstrip("\n").split("\t")
    assert len(columns) == 5 and columns[-1] == "a great movie"
    assert {columns[0], columns[2]} == {"neg", "pos"}
    assert float(columns[1]) >= float(columns[3])


def test_pair_bundle_reads_tab_separated_lines(tiny_pair_bundle, tmp_path):
    clf = Classifier.from_bundle(tiny_pair_bundle)
    code, out, err = run([str(tiny_pair_bundle), "--json"], b"A man sleeps.\tA person rests.\n")
    assert code == 0, err
    record = json.loads(out)
    assert (record["text"], record["text_pair"]) == ("A man sleeps.", "A person rests.")
    assert record["probabilities"] == clf.predict([("A man sleeps.", "A person rests.")])[
        0
    ].probabilities
    code, out, err = run([str(tiny_pair_bundle)], b"ok\tfine\nno tab here\n")
    assert code == 1
    assert err == (
        "error: <stdin>:2: this bundle classifies text pairs; write each line as "
        "text<TAB>text_pair (found 0 tabs)\n"
    )


def test_a_line_over_max_chars_names_the_file_and_line(tiny_bundle, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("fine\nalso fine\n" + "x" * 101 + "\nnever reached\n", encoding="utf-8")
    code, out, err = run([str(tiny_bundle), str(path), "--max-chars", "100"])
    assert code == 1
    assert err.startswith(f"error: {path}:3: texts[0] has 101 characters, more than max_chars=100")
    assert out == ""  # the failing batch of 32 is not half-printed


def test_bad_utf8(tiny_bundle):
    code, _, err = run([str(tiny_bundle)], b"ok\n\xff\xfe bad\n")
    assert code == 1
    assert err.startswith("error: <stdin>:2: not UTF-8 (invalid start byte at byte 0)")


def test_errors_for_the_bundle_files_and_options(tiny_bundle, tmp_path):
    code, _, err = run([str(tmp_path / "missing")])
    assert code == 1 and err.startswith("error: bundle directory ") and "does not exist" in err
    code, _, err = run([str(tiny_bundle), str(tmp_path / "nope.txt")])
    assert code == 1
    assert err == f"error: {tmp_path / 'nope.txt'}: cannot read it (No such file or directory)\n"
    code, _, err = run([str(tiny_bundle), "--top-k", "3"])
    assert code == 1 and err.startswith("error: --top-k 3 is more than the bundle's 2 labels")
    with pytest.raises(SystemExit) as info:
        run([str(tiny_bundle), "--top-k", "0"])
    assert info.value.code == 2


def test_real_process_with_a_pipe(tiny_bundle, clf):
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.cli.classify", str(tiny_bundle), "--json"],
        input="\n".join(LINES), capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == [p.label for p in clf.predict(LINES)]
