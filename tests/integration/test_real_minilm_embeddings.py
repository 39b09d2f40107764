"""The real all-MiniLM-L6-v2 as a sentence embedder (`--task feature-extraction`) on CLINC150 text,
loaded back by embslim.runtime.Embedder, sentence-transformers' ONNX backend and Optimum."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embslim.pipeline.cli import main
from embslim.runtime import Embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clinc_texts(tmp_path_factory, shared_data):
    """3,000 CLINC150 training texts as a --text corpus and 300 test texts as held-out lines."""
    data = json.loads((shared_data / "clinc150" / "data_full.json").read_text())
    folder = tmp_path_factory.mktemp("clinc")
    (folder / "corpus.txt").write_text("\n".join(t for t, _ in data["train"][::5]) + "\n")
    (folder / "held.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in data["test"][::15]))
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, clinc_texts):
    out = tmp_path_factory.mktemp("emb") / "bundle"
    assert main(["run", "--task", "feature-extraction", "--text", str(clinc_texts / "corpus.txt"),
                 "--eval", str(clinc_texts / "held.tsv"), "--out", str(out), "--max-length", "64",
                 "--targets", "arm64", "--no-int4", "--no-mobile", "--no-measure"]) == 0
    return out


def test_dep_and_int8_stay_close_to_the_original(bundle):
    report = json.loads((bundle / "report.json").read_text())
    rows = {r["name"]: r for r in report["variants"]}
    assert report["vocab"]["kept_rows"] < 0.25 * 30522
    assert rows["unpruned"]["cosine_min"] > 0.9999 and rows["dep"]["max_abs_diff"] < 1e-4
    assert rows["dep"]["cosine_mean"] > 0.99
    int8 = rows["dep int8-arm64"]
    assert int8["cosine_mean"] > 0.98 and int8["cosine_fp32_mean"] > 0.98
    assert int8["onnx_bytes"] < 0.2 * rows["unpruned"]["onnx_bytes"]


def test_embedder_equals_sentence_transformers_onnx_and_optimum_on_40_texts(bundle, shared_data):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from embslim.pipeline.model import resolve_model

    data = json.loads((shared_data / "clinc150" / "data_full.json").read_text())
    texts = [t for t, _ in data["val"][::75]][:40]
    assert len(texts) == 40
    ours = Embedder.from_bundle(bundle).encode(texts)
    assert ours.shape == (40, 384) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    st = SentenceTransformer(str(bundle), backend="onnx", device="cpu", model_kwargs={"file_name": "model.onnx"})
    np.testing.assert_allclose(st.encode(texts), ours, atol=1e-5)
    stock = AutoTokenizer.from_pretrained(resolve_model("default"))   # the model's own tokenizer
    model = ORTModelForFeatureExtraction.from_pretrained(bundle, file_name="model.onnx")
    enc = stock(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
    hidden = np.asarray(model(**enc).last_hidden_state)
    mask = enc["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), ours, atol=1e-5)
