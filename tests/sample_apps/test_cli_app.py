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
    assert code == 2
    assert err == (
        "error: <stdin>:2: this bundle classifies text pairs; write each line as "
        "text<TAB>text_pair (found 0 tabs)\n"
    )


def test_a_line_over_max_chars_names_the_file_and_line(tiny_bundle, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("fine\nalso fine\n" + "x" * 101 + "\nnever reached\n", encoding="utf-8")
    code, out, err = run([str(tiny_bundle), str(path), "--max-chars", "100"])
    assert code == 2
    assert err.startswith(f"error: {path}:3: texts[0] has 101 characters, more than max_chars=100")
    assert out == ""  # the failing batch of 32 is not half-printed


def test_bad_utf8(tiny_bundle):
    code, _, err = run([str(tiny_bundle)], b"ok\n\xff\xfe bad\n")
    assert code == 2
    assert err.startswith("error: <stdin>:2: not UTF-8 (invalid start byte at byte 0)")


def test_errors_for_the_bundle_files_and_options(tiny_bundle, tmp_path):
    code, _, err = run([str(tmp_path / "missing")])
    assert code == 2 and err.startswith("error: bundle directory ") and "does not exist" in err
    code, _, err = run([str(tiny_bundle), str(tmp_path / "nope.txt")])
    assert code == 2
    assert err == f"error: {tmp_path / 'nope.txt'}: cannot read it (No such file or directory)\n"
    code, _, err = run([str(tiny_bundle), "--top-k", "3"])
    assert code == 2 and err.startswith("error: --top-k 3 is more than the bundle's 2 labels")
    code, _, err = run([str(tiny_bundle), "--top-k", "0"])
    assert code == 2
    assert err == (
        "error: argument --top-k: expected a positive integer, got 0 "
        "(see python -m sample_apps.cli.classify --help)\n"
    )


def test_real_process_with_a_pipe(tiny_bundle, clf):
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.cli.classify", str(tiny_bundle), "--json"],
        input="\n".join(LINES), capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == [p.label for p in clf.predict(LINES)]


# -- the CLI app's part of the bad-input matrix (issue #12): exit 2, one line, no traceback --


def _bad_tokenizer_bundle(tiny_bundle, tmp_path):
    from tiny_bundle import with_token_ids

    return with_token_ids(tiny_bundle, tmp_path / "bad-tokenizer", {"great": 30600, "good": 30522})


HELP = r" \(see python -m sample_apps\.cli\.classify --help\)$"
CLI_CASES = [
    # (id, argv after the bundle ({b}: bundle, {t}: tmp dir), stdin, stderr pattern)
    ("missing-bundle", ["{t}/missing"], b"", r"^error: bundle directory '.*missing' does not exist"),
    ("bad-tokenizer-ids", ["BAD-TOKENIZER"], b"a\n",
     r"^error: tokenizer\.json \(model\.vocab\): the largest token id is 30600 \('great'; 2 "
     r"id\(s\) >= 34\), but model\.onnx accepts input_ids 0\.\.33"),
    ("missing-file", ["{b}", "{t}/nope.txt"], b"", r"^error: .*nope\.txt: cannot read it \(No such file or directory\)$"),
    ("directory-as-file", ["{b}", "{t}"], b"", r"^error: .*: cannot read it \(Is a directory\)$"),
    ("unknown-variant", ["{b}", "--variant", "int3"], b"", r"^error: the bundle has no artifact with variant 'int3'"),
    ("top-k-over-labels", ["{b}", "--top-k", "3"], b"", r"^error: --top-k 3 is more than the bundle's 2 labels"),
    ("top-k-zero", ["{b}", "--top-k", "0"], b"", r"^error: argument --top-k: expected a positive integer, got 0" + HELP),
    ("top-k-word", ["{b}", "--top-k", "two"], b"", r"^error: argument --top-k: expected a positive integer, got 'two'" + HELP),
    ("batch-size-zero", ["{b}", "--batch-size", "0"], b"", r"^error: argument --batch-size: expected a positive integer, got 0"),
    ("batch-size-huge", ["{b}", "--batch-size", "100000"], b"", r"^error: argument --batch-size: expected at most 4,096, got 100,000" + HELP),
    ("threads-zero", ["{b}", "--threads", "0"], b"", r"^error: argument --threads: expected a positive integer, got 0"),
    ("threads-huge", ["{b}", "--threads", "99999"], b"", r"^error: argument --threads: expected at most 1,024, got 99,999"),
    ("max-chars-negative", ["{b}", "--max-chars", "-5"], b"", r"^error: argument --max-chars: expected a positive integer, got -5"),
    ("unknown-option", ["{b}", "--nope"], b"", r"^error: unrecognized arguments: --nope" + HELP),
    ("no-bundle", [], b"", r"^error: the following arguments are required: bundle" + HELP),
    ("bad-utf8-line", ["{b}"], b"ok\n\xff\xfe bad\n", r"^error: <stdin>:2: not UTF-8 \(invalid start byte at byte 0\)"),
    ("truncated-utf8", ["{b}"], b"caf\xc3\n", r"^error: <stdin>:1: not UTF-8 \(invalid continuation byte at byte 3\)"),
    ("line-over-max-chars", ["{b}", "--max-chars", "20"], b"fine\n" + b"x" * 21 + b"\n",
     r"^error: <stdin>:2: texts\[0\] has 21 characters, more than max_chars=20; "),
    ("huge-line-no-newline", ["{b}", "--max-chars", "10"], b"ok\n" + b"y" * 10_000,
     r"^error: <stdin>:2: the line is longer than 96 bytes without a newline; split the text "),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "stdin", "pattern"), [row[1:] for row in CLI_CASES],
                         ids=[row[0] for row in CLI_CASES])  # fmt: skip
def test_cli_bad_inputs_exit_2_with_one_line(tiny_bundle, tmp_path, argv, stdin, pattern):
    import re

    bad = str(_bad_tokenizer_bundle(tiny_bundle, tmp_path)) if "BAD-TOKENIZER" in argv else ""
    args = [a.replace("{b}", str(tiny_bundle)).replace("{t}", str(tmp_path))
            .replace("BAD-TOKENIZER", bad) for a in argv]  # fmt: skip
    code, out, err = run(args, stdin)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert re.search(pattern, err.rstrip("\n")), err
    assert out == ""


@pytest.mark.parametrize(("stdin", "pattern"), [
    (b"ok\tfine\nno tab here\n", r"^error: <stdin>:2: this bundle classifies text pairs; write each line as text<TAB>text_pair \(found 0 tabs\)$"),
    (b"a\tb\tc\n", r"^error: <stdin>:1: this bundle classifies text pairs; .*\(found 2 tabs\)$"),
    (b"a\t" + b"z" * 30 + b"\n", r"^error: <stdin>:1: texts\[0\]\[1\] has 30 characters, more than max_chars=20"),
])  # fmt: skip
def test_cli_bad_pair_lines_exit_2(tiny_pair_bundle, stdin, pattern):
    import re

    code, _, err = run([str(tiny_pair_bundle), "--max-chars", "20"], stdin)
    assert code == 2 and err.count("\n") == 1 and re.search(pattern, err.rstrip("\n")), err


def test_cli_bad_bundle_in_a_real_process_has_no_traceback(tiny_bundle, tmp_path):
    bad = _bad_tokenizer_bundle(tiny_bundle, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.cli.classify", str(bad)], input=b"a great movie\n",
        capture_output=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: tokenizer.json (model.vocab): the largest token id is 30600")


# item 10: encoded lone surrogates (WTF-8 bytes) and surrogateescape'd text are U+FFFD, exit 0

SURROGATE_LINES = [
    ("wtf8-cut-emoji", b"so cute \xed\xa0\xbd\n", "so cute \ufffd"),
    ("wtf8-lone-low", b"\xed\xb8\x80 great\n", "\ufffd great"),
    ("cesu8-pair", b"fun \xed\xa0\xbd\xed\xb8\x80\n", "fun \U0001f600"),
]


@pytest.mark.parametrize(("stdin", "same_as"), [row[1:] for row in SURROGATE_LINES],
                         ids=[row[0] for row in SURROGATE_LINES])  # fmt: skip
def test_cli_surrogates_are_replacement_characters(tiny_bundle, clf, stdin, same_as):
    code, out, err = run([str(tiny_bundle), "--json"], stdin)
    assert code == 0, err
    record = json.loads(out)
    assert record["text"] == same_as
    assert record["probabilities"] == clf.predict(same_as)[0].probabilities


def test_cli_text_stream_with_surrogateescape_and_an_undecodable_file_name(tiny_bundle, clf, tmp_path):
    stream = io.TextIOWrapper(io.BytesIO(b"bad \xff film\n"), encoding="utf-8",
                              errors="surrogateescape")  # fmt: skip
    code, out, err = run_with(main, [str(tiny_bundle), "--json"], stream)
    assert code == 0, err
    assert json.loads(out)["text"] == "bad \ufffd film"
    name = tmp_path / "caf\udce9.txt"  # what os.fsdecode gives for b"caf\xe9.txt"
    try:
        name.write_text("a great movie\n", encoding="utf-8")
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system refuses non-UTF-8 names")
    code, out, err = run([str(tiny_bundle), str(name), "--json"])
    assert code == 0, err
    assert json.loads(out)["file"].endswith("caf\ufffd.txt")
    code, out, err = run([str(tiny_bundle), str(name)])
    assert code == 0 and out.startswith(clf.predict("a great movie")[0].label)


def run_with(entry, argv, stdin):
    out, err = io.StringIO(), io.StringIO()
    return entry(argv, stdin=stdin, stdout=out, stderr=err), out.getvalue(), err.getvalue()
