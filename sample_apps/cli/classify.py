"""Classify lines of text with an embslim bundle, from stdin or files.

    python -m sample_apps.cli.classify BUNDLE [FILES...] [--json] [--top-k K]

Each non-blank line is one text (blank lines are skipped); for a text-pair bundle a line is
`text<TAB>text_pair`. FILES default to stdin ("-" also means stdin); they are read as UTF-8
(a leading byte-order mark is ignored). Lines are classified `--batch-size` at a time, so
output starts at once and memory stays flat on files of any length.

Output, one line per input line, in input order:
    plain (default)  label<TAB>score<TAB>text          (--top-k K: K label<TAB>score columns)
    --json           a JSON object per line: {"file", "line", "text", ["text_pair",] "label",
                     "score", "probabilities", "top_k": [{"label", "score"}, ...]}

Exit status: 0 when every line was classified; 1 on a bundle or input error (the message on
stderr names the file and line); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO, TextIO

from embslim.runtime import DEFAULT_MAX_CHARS, BundleError, Classifier, InputError, Prediction

__all__ = ["main"]


class LineError(ValueError):
    """A line that cannot be classified; the message starts with FILE:LINE."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sample_apps.cli.classify",
        description="Classify each line of stdin or FILES with an embslim bundle.",
    )
    parser.add_argument("bundle", help="bundle directory (holds manifest.json)")
    parser.add_argument("files", nargs="*", default=["-"],
                        help='text files, one example per line ("-" or none: stdin)')  # fmt: skip
    parser.add_argument("--json", action="store_true", help="write JSON Lines instead of TSV")
    parser.add_argument("--top-k", type=_positive_int, default=1,
                        help="also report the K most likely labels (default 1)")  # fmt: skip
    parser.add_argument("--variant", default="auto",
                        help='model variant: "auto" (int8 for this CPU if any, else fp32), '
                             '"fp32", "int8", ...')  # fmt: skip
    parser.add_argument("--file", dest="model_file", default=None,
                        help="load this model file of the bundle instead")  # fmt: skip
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="ONNX Runtime threads (default: all cores)")  # fmt: skip
    parser.add_argument("--batch-size", type=_positive_int, default=32,
                        help="lines classified per model call (default 32)")  # fmt: skip
    parser.add_argument("--max-chars", type=_positive_int, default=DEFAULT_MAX_CHARS,
                        help="refuse lines longer than this (default %(default)s)")  # fmt: skip
    return parser


def _lines(name: str, stream: BinaryIO) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a UTF-8 stream."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise LineError(f"{name}:{number}: not UTF-8 ({e.reason} at byte {e.start}); "
                            "convert the file to UTF-8 first") from e  # fmt: skip
        text = text.rstrip("\r\n")
        if text.strip():
            yield number, text


def _examples(
    name: str, stream: BinaryIO, *, pair: bool
) -> Iterator[tuple[int, str | tuple[str, str]]]:
    for number, text in _lines(name, stream):
        if not pair:
            yield number, text
            continue
        parts = text.split("\t")
        if len(parts) != 2:
            raise LineError(
                f"{name}:{number}: this bundle classifies text pairs; write each line as "
                f"text<TAB>text_pair (found {len(parts) - 1} tabs)"
            )
        yield number, (parts[0], parts[1])


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _format(name: str, number: int, example: str | tuple[str, str], pred: Prediction,
            *, as_json: bool) -> str:  # fmt: skip
    if as_json:
        record: dict = {"file": name, "line": number}
        if isinstance(example, tuple):
            record["text"], record["text_pair"] = example
        else:
            record["text"] = example
        record.update(
            label=pred.label,
            score=pred.score,
            probabilities=pred.probabilities,
            top_k=[{"label": label, "score": score} for label, score in pred.top_k],
        )
        return json.dumps(record, ensure_ascii=False)
    text = "\t".join(example) if isinstance(example, tuple) else example
    columns = [f"{label}\t{score:.4f}" for label, score in pred.top_k]
    return "\t".join([*columns, text])


def _classify_stream(
    clf: Classifier, name: str, stream: BinaryIO, out: TextIO, *, args: argparse.Namespace
) -> int:
    count = 0
    for batch in _batches(_examples(name, stream, pair=clf.is_pair), args.batch_size):
        try:
            preds = clf.predict([ex for _, ex in batch], top_k=args.top_k,
                                batch_size=args.batch_size)  # fmt: skip
        except InputError as e:
            # Name the line: re-check one by one (only on the failing batch) to find it.
            for number, example in batch:
                try:
                    clf.predict([example])
                except InputError as line_error:
                    raise LineError(f"{name}:{number}: {line_error}") from line_error
            raise LineError(f"{name}: {e}") from e
        for (number, example), pred in zip(batch, preds):
            out.write(_format(name, number, example, pred, as_json=args.json) + "\n")
        out.flush()
        count += len(batch)
    return count


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        clf = Classifier.from_bundle(args.bundle, variant=args.variant, file=args.model_file,
                                     threads=args.threads, max_chars=args.max_chars)  # fmt: skip
        if args.top_k > len(clf.labels):
            raise InputError(
                f"--top-k {args.top_k} is more than the bundle's {len(clf.labels)} labels "
                f"({', '.join(clf.labels)}); use --top-k {len(clf.labels)} to rank them all"
            )
        for name in args.files:
            if name == "-":
                _classify_stream(clf, "<stdin>", stdin or sys.stdin.buffer, out, args=args)
                continue
            try:
                stream = open(name, "rb")  # noqa: SIM115 - closed right below
            except OSError as e:
                raise LineError(f"{name}: cannot read it ({e.strerror})") from e
            with stream:
                _classify_stream(clf, name, stream, out, args=args)
    except (BundleError, InputError, LineError) as e:
        print(f"error: {e}", file=err)
        return 1
    except BrokenPipeError:  # e.g. `... | head`: the reader left; that is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
