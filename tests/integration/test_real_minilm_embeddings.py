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
                 "--keep-top", "30522", "--variant", "messi:k=5,j=64,exact_seen=true", "--no-baseline",
                 "--targets", "arm64", "--no-int4", "--no-mobile", "--no-measure"]) == 0
    return out


def test_exact_corpus_rows_and_a_messi_tail_stay_close_to_the_original(bundle):
    """Every row kept, ranked by the corpus; the corpus's rows exact, MESSI (k=5, j=64) for the rest."""
    report = json.loads((bundle / "report.json").read_text())
    fp32, int8 = report["variants"][0], report["variants"][1]
    assert fp32["name"] == "dep+messi(k=5,j=64,exact_seen=True)" and int8["precision"] == "int8"
    assert report["vocab"]["kept_rows"] > 29000 and fp32["max_abs_diff"] < 1e-4
    assert fp32["embedding_params"] < 0.35 * 30522 * 384
    assert fp32["cosine_mean"] > 0.98 and int8["cosine_mean"] > 0.97 and int8["cosine_fp32_mean"] > 0.99
    assert int8["onnx_bytes"] < 15e6


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
