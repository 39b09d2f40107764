"""Sentence encoders: sentence-transformers folders read as data, pooling, export and distillation.

Tiny sentence-transformers models are saved by sentence-transformers itself, so each reference
below is the library's own `SentenceTransformer.encode` on the same folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embslim.pipeline.model import load_sentence_model
from embslim.pipeline.sentence import SentenceModelError, pooling_spec, read_sentence_transformers
from embslim.pipeline.tasks import TaskError
from tiny_models import make_tiny_model_dir, make_tiny_sentence_model_dir

TEXTS = ["what is the weather in paris", "call mom", "transfer money to my bank card", "a", "play a song",
         "set an alarm for the morning please and then play some music"]


def _encode(loaded, texts=TEXTS) -> np.ndarray:
    enc = loaded.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        return loaded.model(**enc).sentence_embedding.numpy()


@pytest.mark.parametrize("pooling,dense,normalize", [("mean", 0, True), ("cls", 0, False), ("mean", 2, True),
                                                     ("max", 1, False)])
def test_sentence_encoder_equals_sentence_transformers(tmp_path: Path, pooling: str, dense: int, normalize: bool) -> None:
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_sentence_model_dir(tmp_path / "st", pooling=pooling, dense=dense, normalize=normalize)
    spec = read_sentence_transformers(folder)
    assert (spec.mode, len(spec.dense), spec.normalize, spec.source) == (pooling, dense, normalize, "sentence-transformers")
    loaded = load_sentence_model(str(folder))
    ours = _encode(loaded)
    ref = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert ours.shape == (len(TEXTS), 32 - 8 * dense) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) == normalize


def test_plain_encoder_needs_pooling_and_takes_the_flags(tmp_path: Path) -> None:
    folder = make_tiny_model_dir(tmp_path / "bert")
    with pytest.raises(SentenceModelError, match="--pooling mean|cls|max"):
        load_sentence_model(str(folder))
    cls = load_sentence_model(str(folder), pooling="cls", normalize=False)
    enc = cls.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = cls.model(**enc)
    np.testing.assert_allclose(out.sentence_embedding.numpy(), out.token_embeddings[:, 0].numpy())
    mean = _encode(load_sentence_model(str(folder), pooling="mean", normalize=True))
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((out.token_embeddings * mask).sum(1) / mask.sum(1), dim=1).numpy()
    np.testing.assert_allclose(mean, expected, atol=1e-6)


def test_flags_override_the_folder(tmp_path: Path) -> None:
    folder = make_tiny_sentence_model_dir(tmp_path / "st", pooling="mean", normalize=True)
    spec = pooling_spec(folder, pooling="cls", normalize=False)
    assert (spec.mode, spec.normalize, spec.source) == ("cls", False, "sentence-transformers")


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def test_unsupported_modules_are_refused_in_one_line(tmp_path: Path) -> None:
    folder = make_tiny_sentence_model_dir(tmp_path / "st", dense=1)
    bad = tmp_path / "bad"

    def fresh() -> Path:
        shutil.rmtree(bad, ignore_errors=True)
        return Path(shutil.copytree(folder, bad))

    f = fresh()
    _edit_json(f / "modules.json", lambda m: m + [{"idx": 9, "name": "9", "path": "x", "type": "my_package.Evil"}])
    with pytest.raises(SentenceModelError, match="my_package.Evil") as e:
        read_sentence_transformers(f)
    assert "\n" not in str(e.value)
    f = fresh()
    _edit_json(f / "1_Pooling/config.json", lambda c: c | {"pooling_mode": "weightedmean"})
    with pytest.raises(SentenceModelError, match="weightedmean"):
        read_sentence_transformers(f)
    (f / "1_Pooling/config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
                                                         "pooling_mode_max_tokens": True}))   # the 2.x-4.x format
    with pytest.raises(SentenceModelError, match="cls \\+ max"):
        read_sentence_transformers(f)
    (f / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert read_sentence_transformers(f).mode == "cls"
    f = fresh()
    _edit_json(f / "2_Dense/config.json", lambda c: c | {"activation_function": "os.system"})
    with pytest.raises(SentenceModelError, match="activation"):
        read_sentence_transformers(f)
    f = fresh()
    (f / "2_Dense/model.safetensors").rename(f / "2_Dense/pytorch_model.bin")
    with pytest.raises(SentenceModelError, match="never unpickles"):
        read_sentence_transformers(f)


def test_a_classifier_is_not_a_sentence_encoder(tmp_path: Path) -> None:
    folder = make_tiny_model_dir(tmp_path / "clf", head="sequence", id2label={0: "neg", 1: "pos"})
    with pytest.raises(TaskError, match="text-classification model"):
        load_sentence_model(str(folder), pooling="mean")


def test_export_outputs_and_sentence_transformers_files(tmp_path: Path) -> None:
    import onnxruntime as ort

    from embslim.pipeline.bundle import BundleMeta, export_model

    folder = make_tiny_sentence_model_dir(tmp_path / "st", dense=1, normalize=True)
    loaded = load_sentence_model(str(folder))
    meta = BundleMeta(task_name="t", labels=(), is_pair=False, max_length=64, source={}, input_names=loaded.input_names,
                      tokenizer_json=str(folder / "tokenizer.json"), task_type="feature-extraction",
                      embedding=loaded.model.spec.to_json() | {"dim": loaded.model.embedding_dim})
    out = tmp_path / "bundle"
    files = [a["file"] for a in export_model(loaded.model, loaded.tokenizer, out, meta=meta)]
    assert {"model.onnx", "modules.json", "1_Pooling/config.json", "2_Dense/model.safetensors"} <= set(files)
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["token_embeddings", "sentence_embedding", "last_hidden_state"]
    enc = loaded.tokenizer(TEXTS, padding=True, return_tensors="np")
    tokens, sentence, last = session.run(None, {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})
    np.testing.assert_allclose(sentence, _encode(loaded), atol=1e-5)
    assert sentence.shape == (len(TEXTS), 24) and np.array_equal(tokens, last)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "ReduceL2" not in ops   # its `axes` attribute breaks once 4-bit quantization raises the opset
    assert json.loads((out / "manifest.json").read_text())["task"]["embedding"]["dim"] == 24


def test_distillation_pulls_a_compressed_embedding_towards_the_teacher(tmp_path: Path) -> None:
    """finetune(output="sentence_embedding") with the original encoder as teacher: the student's
    cosine to the teacher on held-out texts rises (cosine loss, compressed embedding only)."""
    import copy

    from embslim.pipeline.compress import get
    from embslim.pipeline.data import Split
    from embslim.pipeline.embedding import RemappedEmbedding
    from embslim.pipeline.finetune import FinetuneConfig, finetune, predict_outputs
    from embslim.pipeline.model import get_word_embeddings, set_word_embeddings
    from embslim.pipeline.scoring import cosine_rows

    folder = make_tiny_sentence_model_dir(tmp_path / "st", normalize=True)
    teacher = load_sentence_model(str(folder))
    student = copy.deepcopy(teacher.model)
    table = get_word_embeddings(student)
    compressor = get("svd")
    fitted = compressor.fit(table.weight.detach().numpy(), compressor.config(rank=2))
    set_word_embeddings(student, RemappedEmbedding(torch.arange(table.num_embeddings, dtype=torch.int32), fitted.module))
    corpus = [f"{a} {b} {c}" for a in ("play", "call", "set", "transfer", "what") for b in ("the", "my", "a")
              for c in ("song", "mom", "alarm", "money", "weather", "card", "bank")]
    held = ["play the weather song", "call my bank", "set a money alarm", "what card"]

    def cos() -> float:
        a = predict_outputs(student, teacher.tokenizer, held, max_length=32, output="sentence_embedding")
        b = predict_outputs(teacher.model, teacher.tokenizer, held, max_length=32, output="sentence_embedding")
        return float(cosine_rows(a, b).mean())

    before = cos()
    summary = finetune(student, teacher.tokenizer, Split(tuple(corpus), None, None), Split(tuple(held), None, None),
                       cfg=FinetuneConfig(epochs=8, batch_size=16, learning_rate=5e-3, distill_alpha=1.0,
                                          embedding_only=True), teacher=teacher.model, output="sentence_embedding")
    after = cos()
    assert summary["steps"] > 0 and summary["eval_per_epoch"] == []
    assert after > before + 0.01, (before, after)
