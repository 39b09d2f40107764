"""The in-browser app, used as a person would: headless Chromium opens the page served on
127.0.0.1, types a sentence, clicks Classify and reads the label and probability off the
page; they must match the Python runtime (probability within 1e-3) on 20+ texts.

Bundles: the tiny WordPiece bundle, a tiny RoBERTa bundle with a byte-level BPE tokenizer
(exported by embslim's export_model), a pair bundle, and (slow) a real SST-2 MiniLM bundle.

Chromium is driven over the DevTools protocol with a minimal WebSocket client written on the
standard library (conftest.py; no extra test dependency). The test installs nothing: without
Chromium or `npm ci` in sample_apps/web it skips and says so.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from embslim.runtime import Classifier


def type_into(dt, element_id: str, text: str) -> None:
    """Focus a text box, select what it holds and type `text` over it."""
    dt.evaluate(f"(() => {{ const t = document.getElementById('{element_id}'); t.focus(); "
                "t.select(); })()")  # fmt: skip
    dt.call("Input.insertText", {"text": text})
    typed = dt.evaluate(f"document.getElementById('{element_id}').value")
    assert typed == text.replace("\r\n", "\n")


def classify_in_page(dt, text: str, pair: str | None = None) -> tuple[str, float]:
    """Type `text` (and `pair`) into the page, click Classify, read label and probability."""
    seq = int(dt.evaluate("document.getElementById('result').dataset.seq"))
    type_into(dt, "text", text)
    if pair is not None:
        type_into(dt, "text-pair", pair)
    box = dt.evaluate(
        "(() => { const b = document.getElementById('classify'); b.scrollIntoView({block: "
        "'center'}); const r = b.getBoundingClientRect();"
        " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        dt.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
        )
    dt.wait_for(f"Number(document.getElementById('result').dataset.seq) > {seq}", timeout_s=30)
    label = dt.evaluate("document.getElementById('label').textContent")
    score = float(dt.evaluate("document.getElementById('score').textContent"))
    return label, score


def check_page_against_runtime(
    dt,
    url: str,
    bundle: Path,
    tmp_path: Path,
    texts: list[str],
    *,
    file: str = "model.onnx",
    atol: float = 1e-3,
    same_labels: bool = True,
) -> list[float]:
    """Classify `texts` in the page at `url` with model `file`; return |probability - runtime's|."""
    dt.open_page(f"{url}?file={file}")
    info = dt.evaluate("document.getElementById('model-info').textContent")
    assert "sha256 checked" in info, info
    clf = Classifier.from_bundle(bundle, file=file, threads=1)
    diffs = []
    # The page reads a <textarea>, which turns "\r\n" and "\r" into "\n": compare with
    # what the user sees typed in the box, as the runtime would be called on it.
    for text in texts:
        label, score = classify_in_page(dt, text)
        typed = text.replace("\r\n", "\n").replace("\r", "\n")
        expected = clf.predict(typed)[0]
        page_p = score if label == expected.label else 1 - score  # two-label bundles only
        diffs.append(abs(page_p - expected.score))
        if same_labels:
            assert label == expected.label, (text[:40], label, expected)
        assert page_p == pytest.approx(expected.score, abs=atol), (text[:40], score, expected)
    shot = dt.call("Page.captureScreenshot", {"format": "png"})
    (tmp_path / f"page-{file}.png").write_bytes(base64.b64decode(shot["data"]))
    print(f"\nbrowser vs runtime, {file}: {len(diffs)} texts, max |dp| {max(diffs):.2e}")
    return diffs


def test_page_matches_the_runtime_on_a_tiny_bundle(
    browser, serve_page, tiny_bundle, tmp_path, parity_texts
):
    url = serve_page(tiny_bundle)
    diffs = check_page_against_runtime(browser, url, tiny_bundle, tmp_path, parity_texts)
    assert len(diffs) == len(parity_texts) >= 20
    assert max(diffs) < 1e-3


@pytest.mark.slow
def test_page_matches_the_runtime_on_a_real_sst2_bundle(
    browser, serve_page, sst2_bundle, tmp_path, parity_texts
):
    url = serve_page(sst2_bundle)
    diffs = check_page_against_runtime(browser, url, sst2_bundle, tmp_path, parity_texts)
    assert len(diffs) == len(parity_texts) >= 20
    assert max(diffs) < 1e-3


@pytest.mark.slow
def test_every_quantized_model_of_the_bundle_runs_in_the_page(browser, serve_page, sst2_bundle,
                                                              tmp_path, parity_texts):  # fmt: skip
    """int8 / int4 graphs (fused Attention, MatMulInteger, MatMulNBits) load in onnxruntime-web.

    WebAssembly and this CPU run different int8 kernels, so probabilities differ by a few 1e-3
    (measured: up to 2.7e-3); labels are not compared: the 64-sentence model sits near 0.5.
    """
    manifest = json.loads((sst2_bundle / "manifest.json").read_text(encoding="utf-8"))
    files = [a["file"] for a in manifest["artifacts"]
             if a["file"].endswith(".onnx") and a["variant"] != "fp32"]  # fmt: skip
    if not files:
        pytest.skip("the bundle has no quantized .onnx model")
    url = serve_page(sst2_bundle)
    for file in files:
        diffs = check_page_against_runtime(browser, url, sst2_bundle, tmp_path, parity_texts,
                                           file=file, atol=1e-2, same_labels=False)  # fmt: skip
        assert len(diffs) == len(parity_texts)


def test_page_runs_a_byte_level_bpe_roberta_bundle(
    browser, serve_page, tiny_bpe_bundle, tmp_path, parity_texts
):
    """Not only WordPiece: a RoBERTa-style bundle (byte-level BPE, no token_type_ids input)."""
    url = serve_page(tiny_bpe_bundle)
    texts = parity_texts + ["family 👨\u200d👩\u200d👧 👍🏽 🇫🇷", "ok \u0378 ok", "cafe\u0301 café"]
    diffs = check_page_against_runtime(browser, url, tiny_bpe_bundle, tmp_path, texts,
                                       same_labels=False)  # fmt: skip
    assert len(diffs) == len(texts) >= 20
    assert max(diffs) < 1e-3


def set_text_and_classify(dt, text: str) -> tuple[float, int]:
    """Put `text` in the box the way a paste does (lone surrogates survive in a JS string,
    which the DevTools protocol's JSON would not carry), click Classify; (probability of
    label 0, token count) as the page shows them."""
    seq = int(dt.evaluate("document.getElementById('result').dataset.seq"))
    dt.evaluate(f"(() => {{ const t = document.getElementById('text'); t.value = {json.dumps(text)};"
                " t.dispatchEvent(new InputEvent('input', {inputType: 'insertFromPaste'})); "
                "document.getElementById('classify').click(); })()")  # fmt: skip
    dt.wait_for(f"Number(document.getElementById('result').dataset.seq) > {seq}", timeout_s=30)
    p0 = float(dt.evaluate("document.querySelector('#probs td').textContent"))
    tokens = int(dt.evaluate("document.getElementById('timing').textContent.split(' ')[0]"))
    return p0, tokens


def test_page_replaces_lone_surrogates_with_u_fffd(browser, serve_page, tiny_bpe_bundle):
    """#12.10: half an emoji in the box is tokenized as U+FFFD (what the browser would send),
    matching the runtime given the same replacement; the page neither fails nor drops it."""
    url = serve_page(tiny_bpe_bundle)
    browser.open_page(url)
    clf = Classifier.from_bundle(tiny_bpe_bundle, threads=1)
    first_label = json.loads((tiny_bpe_bundle / "manifest.json").read_text())["task"]["labels"][0]
    for text in ["half an emoji \ud83d here", "\ude00", "a pair 😀 then a lone \ud83d"]:
        assert browser.evaluate(f"{json.dumps(text)}.isWellFormed()") is False
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        assert "\ufffd" in fixed
        p0, tokens = set_text_and_classify(browser, text)
        assert p0 == pytest.approx(clf.predict(fixed)[0].probabilities[first_label], abs=1e-3)
        assert tokens == clf.encode(fixed)["input_ids"].shape[1]
        assert (p0, tokens) == set_text_and_classify(browser, fixed)


def test_page_classifies_text_pairs(browser, serve_page, tiny_pair_bundle):
    pairs = [("A man sleeps.", "A person rests."), ("great movie", "awful film"),
             ("Café déjà vu", "très naïf " * 10), ("good " * 20, "bad")]  # fmt: skip
    clf = Classifier.from_bundle(tiny_pair_bundle, threads=1)
    browser.open_page(serve_page(tiny_pair_bundle))
    assert browser.evaluate("document.getElementById('pair-row').hidden") is False
    for first, second in pairs:
        label, score = classify_in_page(browser, first, second)
        expected = clf.predict([(first, second)])[0]
        assert label == expected.label
        assert score == pytest.approx(expected.score, abs=1e-3)


def test_page_reports_a_model_damaged_after_the_server_started(browser, serve_page, tiny_bundle,
                                                               tmp_path):  # fmt: skip
    """The server checks sha256s at start-up; the page checks again, as any static host may
    serve the files: a file changed under a running server is refused in the page."""
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, damaged)
    url = serve_page(damaged)
    data = bytearray((damaged / "model.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size, different sha256
    (damaged / "model.onnx").write_bytes(bytes(data))
    browser.open_page(url, state="error")
    error = browser.evaluate("document.getElementById('error').textContent")
    assert error.startswith("model.onnx: sha256 "), error
    assert "re-export the bundle" in error
    assert browser.evaluate("document.getElementById('classify').disabled") is True
