"""Long inputs: texts over max_length tokens are truncated, absurdly long ones are refused
with a clear `InputError`; and the runtime's install pulls no torch."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from tiny_bundle import make_tiny_bundle

from embslim.runtime import DEFAULT_MAX_CHARS, Classifier, InputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("limits"), max_length=12)


@pytest.fixture(scope="module")
def clf(bundle):
    return Classifier.from_bundle(bundle, threads=1)


def test_default_limit_is_100k_characters(clf):
    assert clf.max_chars == DEFAULT_MAX_CHARS == 100_000


def test_a_text_at_the_limit_is_truncated_to_max_length(clf):
    text = ("great movie " * (DEFAULT_MAX_CHARS // 12 + 1))[:DEFAULT_MAX_CHARS]
    assert len(text) == DEFAULT_MAX_CHARS
    feeds = clf.encode(text)
    assert feeds["input_ids"].shape == (1, 12)
    assert clf.predict(text)[0] == clf.predict(" ".join(text.split()[:10]))[0]


def test_a_text_over_the_limit_is_refused(clf):
    texts = ["fine", "x" * (DEFAULT_MAX_CHARS + 1)]
    message = (
        r"^texts\[1\] has 100,001 characters, more than max_chars=100,000; only the first 12 "
        r"tokens are used anyway, so send the start of the text, or raise the limit with "
        r"Classifier\.from_bundle\(\.\.\., max_chars=N\)$"
    )
    for call in (clf.predict, clf.logits, clf.encode):
        with pytest.raises(InputError, match=message):
            call(texts)


def test_the_limit_applies_to_both_texts_of_a_pair(tmp_path):
    clf = Classifier.from_bundle(make_tiny_bundle(tmp_path, pair=True), max_chars=10)
    with pytest.raises(InputError, match=r"^texts\[0\]\[1\] has 11 characters, more than "):
        clf.predict([("short", "eleven char")])
    with pytest.raises(InputError, match=r"^pairs\[0\] has 11 characters, more than max_chars=10"):
        clf.logits(["short"], pairs=["eleven char"])
    assert len(clf.predict([("ten chars!", "ten chars!")])) == 1


def test_the_limit_is_configurable_and_can_be_switched_off(bundle):
    small = Classifier.from_bundle(bundle, max_chars=5)
    with pytest.raises(InputError, match=r"^texts\[0\] has 6 characters, more than max_chars=5"):
        small.predict("great!")
    unlimited = Classifier.from_bundle(bundle, max_chars=None)
    assert unlimited.predict("good " * 30_000)[0].label in unlimited.labels


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_bad_max_chars(bundle, bad):
    with pytest.raises(ValueError, match=r"^max_chars must be a positive integer or None"):
        Classifier.from_bundle(bundle, max_chars=bad)


# -- what `pip install embslim` (no extras) brings in ----------------------------------

BASE = {"onnxruntime", "numpy", "tokenizers"}
FORBIDDEN = {"torch", "transformers", "optimum", "onnx", "accelerate", "tensorflow", "jax"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_base_dependencies_are_only_the_runtimes_three():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert {_name(r) for r in project["dependencies"]} == BASE
    assert "torch" in {_name(r) for r in project["optional-dependencies"]["pipeline"]}


def test_installed_base_dependencies_pull_no_torch_transitively():
    """Walk the installed metadata of onnxruntime, numpy and tokenizers (markers evaluated
    for this interpreter, extras off): nothing in that closure is torch or friends."""
    from packaging.requirements import Requirement  # a dependency of onnxruntime itself

    seen: set[str] = set()
    todo = sorted(BASE)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # an optional platform-only dependency that is not installed here
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    assert BASE <= seen
    assert not seen & FORBIDDEN, f"the runtime's dependencies pull in {sorted(seen & FORBIDDEN)}"
