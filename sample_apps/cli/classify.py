"""Classify (embed, or tag) lines of text with an embslim bundle, from stdin or files.

    python -m sample_apps.cli.classify BUNDLE [FILES...] [--json] [--top-k K]
    python -m sample_apps.cli.classify EMBEDDING_BUNDLE [FILES...] --embed
    python -m sample_apps.cli.classify TAGGER_BUNDLE [FILES...] --tag [--aggregation-strategy S]

Each non-blank line is one text (blank lines are skipped); for a text-pair bundle a line is
`text<TAB>text_pair`. FILES default to stdin ("-" also means stdin); they are read as UTF-8
(a leading byte-order mark is ignored). Lines are classified `--batch-size` at a time, so
output starts at once and memory stays flat on files of any length; a line is read at most
8 x --max-chars bytes far, so a huge file without newlines is refused, not loaded.

Text rule (the runtime's): a lone UTF-16 surrogate becomes U+FFFD, as browsers do. In a
file it arrives as WTF-8/CESU-8 bytes (ED A0..BF xx, what some tools write after cutting an
emoji in half): those lines are read with "surrogatepass", a high+low pair is joined into
its character, a lone one is classified (and printed) as U+FFFD. Any other invalid UTF-8 is
an error. File names that are not UTF-8 are printed with U+FFFD for the bad bytes.

Output, one line per input line, in input order:
    plain (default)  label<TAB>score<TAB>text          (--top-k K: K label<TAB>score columns)
    --json           a JSON object per line: {"file", "line", "text", ["text_pair",] "label",
                     "score", "probabilities", "top_k": [{"label", "score"}, ...]}
    --embed          (feature-extraction bundles) a JSON object per line: {"file", "line",
                     "text", "embedding": [dim floats]}, `Embedder.encode`'s row for the line
    --tag            (token-classification bundles) a JSON object per line: {"file", "line",
                     "text", "entities": [...]}, `Tagger.tag`'s entities for the line with
                     --aggregation-strategy (default "simple": {"entity_group", "score",
                     "word", "start", "end"}; "start"/"end" index the line's text)

The mode follows the flag, never the bundle alone, so a script's output format cannot change
under it: --embed or --tag on a bundle of another task, or a feature-extraction or
token-classification bundle without its flag, is an error that says which flag to use.

Exit status: 0 when every line was classified (embedded, tagged); 2 on any error (a bad bundle, file, line or
option), with one line on stderr that names the file and line where there is one and says
what to do, never a traceback; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, TextIO

from embslim.runtime import (
    DEFAULT_MAX_CHARS,
    BundleError,
    Classifier,
    Embedder,
    InputError,
    Prediction,
    Tagger,
    load_bundle,
    replace_lone_surrogates,
)
from embslim.runtime.spans import AGGREGATION_STRATEGIES

__all__ = ["main"]

EXIT_ERROR = 2
MAX_BATCH_SIZE = 4096
MAX_THREADS = 1024


class LineError(ValueError):
    """A line that cannot be classified or embedded; the message starts with FILE:LINE."""


def _positive_int(text: str, *, most: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"expected at most {most:,}, got {value:,}")
    return value


def _bounded(most: int):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> int:
        return _positive_int(text, most=most)

    parse.__name__ = "positive integer"
    return parse


class UsageError(ValueError):
    """A bad command line; main() prints it as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error of this app."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _display(text: str) -> str:
    """A str that can always be printed: surrogates (lone ones, or undecodable bytes of a
    file name under surrogateescape) become U+FFFD."""
    return replace_lone_surrogates(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m sample_apps.cli.classify",
        description="Classify each line of stdin or FILES with an embslim bundle (or, with "
        "--embed and a feature-extraction bundle, write each line's sentence embedding; with "
        "--tag and a token-classification bundle, each line's entities).",
    )
    parser.add_argument("bundle", help="bundle directory (holds manifest.json)")
    parser.add_argument("files", nargs="*", default=["-"],
                        help='text files, one example per line ("-" or none: stdin)')  # fmt: skip
    parser.add_argument("--json", action="store_true", help="write JSON Lines instead of TSV")
    parser.add_argument("--embed", action="store_true",
                        help="write each line's sentence embedding as JSON Lines "
                             '{"file", "line", "text", "embedding"} (feature-extraction '
                             "bundles)")  # fmt: skip
    parser.add_argument("--tag", action="store_true",
                        help="write each line's entities as JSON Lines "
                             '{"file", "line", "text", "entities"} (token-classification '
                             "bundles)")  # fmt: skip
    parser.add_argument("--aggregation-strategy", choices=AGGREGATION_STRATEGIES, default=None,
                        help="with --tag: how tokens become entities, as transformers' "
                             "token-classification pipeline (default simple)")  # fmt: skip
    parser.add_argument("--top-k", type=_positive_int, default=None,
                        help="also report the K most likely labels (default 1)")  # fmt: skip
    parser.add_argument("--variant", default="auto",
                        help='model variant: "auto" (int8 for this CPU if any, else fp32), '
                             '"fp32", "int8", ...')  # fmt: skip
    parser.add_argument("--file", dest="model_file", default=None,
                        help="load this model file of the bundle instead")  # fmt: skip
    parser.add_argument("--threads", type=_bounded(MAX_THREADS), default=None,
                        help="ONNX Runtime threads (default: all cores)")  # fmt: skip
    parser.add_argument("--batch-size", type=_bounded(MAX_BATCH_SIZE), default=32,
                        help="lines per model call (default 32)")  # fmt: skip
    parser.add_argument("--max-chars", type=_positive_int, default=DEFAULT_MAX_CHARS,
                        help="refuse lines longer than this (default %(default)s)")  # fmt: skip
    return parser


def _read_lines(name: str, stream: BinaryIO | TextIO, *, limit: int) -> Iterator[bytes | str]:
    """The stream's lines, each read at most `limit` long: a longer one is a `LineError`."""
    number = 0
    while True:
        number += 1
        try:
            raw = stream.readline(limit + 1)
        except OSError as e:
            raise LineError(f"{name}:{number}: cannot read it ({e.strerror or e})") from e
        if not raw:
            return
        newline = b"\n" if isinstance(raw, bytes) else "\n"
        if len(raw) > limit and not raw.endswith(newline):
            raise LineError(
                f"{name}:{number}: the line is longer than {limit:,} bytes without a newline; "
                "split the text into lines, or raise --max-chars"
            )
        yield raw


def _decode(raw: bytes, *, name: str, number: int) -> str:
    codec = "utf-8-sig" if number == 1 else "utf-8"
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        try:  # encoded surrogates (WTF-8): the runtime turns lone ones into U+FFFD
            return raw.decode(codec, "surrogatepass")
        except UnicodeDecodeError:
            pass
        raise LineError(f"{name}:{number}: not UTF-8 ({e.reason} at byte {e.start}); "
                        "convert the file to UTF-8 first") from e  # fmt: skip


def _lines(
    name: str, stream: BinaryIO | TextIO, *, max_chars: int | None = None
) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a UTF-8 stream (bytes), or of a text
    stream (e.g. sys.stdin decoded with surrogateescape)."""
    # UTF-8 takes at most 4 bytes a character, and a pair line holds two texts.
    limit = 8 * (max_chars or DEFAULT_MAX_CHARS) + 16
    for number, raw in enumerate(_read_lines(name, stream, limit=limit), start=1):
        text = raw if isinstance(raw, str) else _decode(raw, name=name, number=number)
        text = text.rstrip("\r\n")
        if text.strip():
            yield number, text


def _examples(
    name: str, stream: BinaryIO | TextIO, *, pair: bool, max_chars: int | None = None
) -> Iterator[tuple[int, str | tuple[str, str]]]:
    for number, text in _lines(name, stream, max_chars=max_chars):
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
        record: dict = {"file": _display(name), "line": number}
        if isinstance(example, tuple):
            record["text"], record["text_pair"] = map(_display, example)
        else:
            record["text"] = _display(example)
        record.update(
            label=pred.label,
            score=pred.score,
            probabilities=pred.probabilities,
            top_k=[{"label": label, "score": score} for label, score in pred.top_k],
        )
        return json.dumps(record, ensure_ascii=False)
    text = _display("\t".join(example) if isinstance(example, tuple) else example)
    columns = [f"{label}\t{score:.4f}" for label, score in pred.top_k]
    return "\t".join([*columns, text])


def _embedding_line(name: str, number: int, text: str, vector: Any) -> str:
    # tolist(): each float32 becomes the Python float that reads back to it exactly
    record = {"file": _display(name), "line": number, "text": _display(text),
              "embedding": vector.tolist()}  # fmt: skip
    return json.dumps(record, ensure_ascii=False)


def _entities_line(name: str, number: int, text: str, found: list) -> str:
    record = {"file": _display(name), "line": number, "text": _display(text), "entities": found}
    return json.dumps(record, ensure_ascii=False)


def _run_stream(
    name: str,
    stream: BinaryIO,
    out: TextIO,
    *,
    pair: bool,
    args: argparse.Namespace,
    run: Callable[[list], Sequence],
    line: Callable[[int, Any, Any], str],
) -> int:
    """Feed the stream's examples to `run` `--batch-size` at a time; write `line(number,
    example, result)` for each, in order. An `InputError` names the line that caused it."""
    count = 0
    examples = _examples(name, stream, pair=pair, max_chars=args.max_chars)
    for batch in _batches(examples, args.batch_size):
        try:
            results = run([ex for _, ex in batch])
        except InputError as e:
            # Name the line: re-check one by one (only on the failing batch) to find it.
            for number, example in batch:
                try:
                    run([example])
                except InputError as line_error:
                    raise LineError(f"{name}:{number}: {line_error}") from line_error
            raise LineError(f"{name}: {e}") from e
        for (number, example), result in zip(batch, results):
            out.write(line(number, example, result) + "\n")
        out.flush()
        count += len(batch)
    return count


def _classify_stream(
    clf: Classifier, name: str, stream: BinaryIO, out: TextIO, *, args: argparse.Namespace
) -> int:
    top_k = args.top_k or 1
    return _run_stream(
        name, stream, out, pair=clf.is_pair, args=args,
        run=lambda items: clf.predict(items, top_k=top_k, batch_size=args.batch_size),
        line=lambda number, example, pred: _format(name, number, example, pred, as_json=args.json),
    )  # fmt: skip


def _embed_stream(
    emb: Embedder, name: str, stream: BinaryIO, out: TextIO, *, args: argparse.Namespace
) -> int:
    return _run_stream(
        name, stream, out, pair=False, args=args,
        run=lambda texts: emb.encode(texts, batch_size=args.batch_size),
        line=lambda number, text, vector: _embedding_line(name, number, text, vector),
    )  # fmt: skip


def _tag_stream(
    tagger: Tagger, name: str, stream: BinaryIO, out: TextIO, *, args: argparse.Namespace
) -> int:
    strategy = args.aggregation_strategy or "simple"
    return _run_stream(
        name, stream, out, pair=False, args=args,
        run=lambda texts: tagger.tag(texts, aggregation_strategy=strategy, batch_size=args.batch_size),
        line=lambda number, text, found: _entities_line(name, number, text, found),
    )  # fmt: skip


# mode flag -> (the runtime class it needs, what its bundles are, what the mode writes)
_MODES = {
    "embed": (Embedder, "a feature-extraction (sentence-embedding)", "each line's embedding"),
    "tag": (Tagger, "a token-classification (tagger)", "each line's entities"),
}


def _check_mode(model: Classifier | Embedder | Tagger, args: argparse.Namespace) -> None:
    """The mode is the flag's: refuse a bundle of another kind, and options it cannot take."""
    bundle = _display(str(args.bundle))
    if args.embed and args.tag:
        raise InputError("--embed and --tag are two modes for two kinds of bundle; pass one")
    wanted = "embed" if args.embed else "tag" if args.tag else None
    what = f"a {model.task_type}" if not isinstance(model, Classifier) else "a text-classification"
    if wanted is not None and not isinstance(model, _MODES[wanted][0]):
        cls, needs, _ = _MODES[wanted]
        hint = next((f"pass --{m} instead" for m, (c, _, _) in _MODES.items() if isinstance(model, c)),
                    f"drop --{wanted} to classify the lines")  # fmt: skip
        raise InputError(f"{bundle} is {what} bundle, but --{wanted} needs {needs} bundle; {hint}")
    for flag, (cls, kind, writes) in _MODES.items():
        if wanted is None and isinstance(model, cls):
            raise InputError(
                f"{bundle} is {kind} bundle; pass --{flag} to write {writes} as JSON Lines"
            )
    if wanted == "embed" and args.top_k is not None:
        raise InputError("--top-k ranks labels, which an embedding bundle has none of; drop it")
    if wanted == "tag" and args.top_k is not None:
        raise InputError("--top-k ranks a text's labels; --tag writes entities: drop --top-k")
    if wanted != "tag" and args.aggregation_strategy is not None:
        raise InputError("--aggregation-strategy applies to --tag (token-classification bundles); "
                         "drop it")  # fmt: skip


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"error: {_display(str(e))}", file=err)
        return EXIT_ERROR
    try:
        model = load_bundle(args.bundle, variant=args.variant, file=args.model_file,
                            threads=args.threads, max_chars=args.max_chars)  # fmt: skip
        _check_mode(model, args)
        if isinstance(model, Classifier) and (args.top_k or 1) > len(model.labels):
            raise InputError(
                f"--top-k {args.top_k} is more than the bundle's {len(model.labels)} labels "
                f"({', '.join(model.labels)}); use --top-k {len(model.labels)} to rank them all"
            )
        process = (_embed_stream if isinstance(model, Embedder) else
                   _tag_stream if isinstance(model, Tagger) else _classify_stream)  # fmt: skip
        for name in args.files:
            if name == "-":
                process(model, "<stdin>", stdin or sys.stdin.buffer, out, args=args)
                continue
            try:
                stream = open(name, "rb")  # noqa: SIM115 - closed right below
            except OSError as e:
                raise LineError(f"{name}: cannot read it ({e.strerror or e})") from e
            with stream:
                process(model, name, stream, out, args=args)
    except (BundleError, InputError, LineError) as e:
        print(f"error: {_display(' '.join(str(e).split()))}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `... | head`: the reader left; that is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
