"""Unlabelled task text: `--text FILE` (one text per line) or `--text FOLDER` (its .txt files, read the same
way, in name order); a word-tagged CoNLL file (.conll, ...) gives its sentences, words joined by
spaces, its tags unused (a tagger's in-domain text). DEP counts token ids over it; distillation learns the given model's outputs on it.
Standard library only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)
# Word-tagged files (CoNLL, embslim.pipeline.tagged) given as --text: their sentences, words joined by spaces.
TAGGED_EXTENSIONS = (".conll", ".conllu", ".bio", ".iob", ".iob2", ".iobes", ".bilou", ".ner")


class TextError(ValueError):
    """A text file or folder is unusable; the message says what to fix."""


def read_texts(paths: Sequence[str | Path], *, option: str = "--text") -> list[str]:
    """Every non-blank line (stripped) of every file, in order. A folder contributes its `*.txt` files
    (recursively, sorted by path). Raises TextError for a missing path, a folder without .txt files,
    a file that is not UTF-8, or no text at all."""
    texts: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            files = sorted(f for f in path.rglob("*.txt") if f.is_file())
            if not files:
                raise TextError(f"{option} folder {path} has no .txt files; put one text per line in .txt files there")
        elif path.is_file():
            files = [path]
        else:
            raise TextError(f"{option} {path} not found; pass a UTF-8 text file with one text per line, or a folder of them")
        for f in files:
            if f.suffix.lower() in TAGGED_EXTENSIONS:   # a word-tagged file: its sentences as plain text, tags unused
                from embslim.pipeline.data import DataError
                from embslim.pipeline.tagged import read_tagged

                try:
                    texts.extend(" ".join(words) for words, _, _ in read_tagged(f))
                except DataError as e:
                    raise TextError(f"{option} {e}") from e
                continue
            data = f.read_bytes()
            try:
                content = data.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                line = data.count(b"\n", 0, e.start) + 1
                raise TextError(f"{option} file {f}:{line}: byte 0x{data[e.start]:02x} is not valid UTF-8; re-save it "
                                "as UTF-8") from e
            texts.extend(line.strip() for line in content.splitlines() if line.strip())
    if not texts:
        raise TextError(f"{option} {', '.join(map(str, paths))}: no text (every line is blank); one text per line")
    log.info("%s: %d texts from %d path(s)", option, len(texts), len(paths))
    return texts
