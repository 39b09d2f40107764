"""torch -> ONNX export with the in-graph remap, validated against PyTorch (tiny models)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from embslim.exporters.onnx import OnnxContract, OnnxValidationError, export_onnx, validate_onnx
from embslim.pipeline.embedding import export_index_dtypes
from embslim.pipeline.embedding import apply_pruning, load_checkpoint, save_checkpoint
from embslim.pipeline.model import get_word_embeddings, load_classifier
from embslim.pipeline.vocab import prune
from tiny_models import make_tiny_model_dir

TRAIN = ["the movie was good", "the plot was dull and slow", "a great film", "the acting was bad"]


def _pruned(folder):
    lm = load_classifier(str(folder), labels=["neg", "pos", "other"])
    vocab = prune(lm.tokenizer, TRAIN, weight=get_word_embeddings(lm.model).weight.detach().numpy())
    apply_pruning(lm.model, vocab)
    lm.model.eval()
    return lm, vocab


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_export_takes_original_ids_and_remaps_in_graph(tmp_path, family):
    lm, vocab = _pruned(make_tiny_model_dir(tmp_path / family, family=family, num_labels=3))
    contract = OnnxContract(input_names=lm.input_names)
    with export_index_dtypes(lm.model):   # what export_model does: the remap trains as int32
        path = export_onnx(lm.model, tmp_path / "model.onnx", contract=contract)
        report = validate_onnx(lm.model, path, contract=contract, max_length=40)
    assert report.ok and report.max_abs_diff <= 1e-4
    assert [c[0] for c in report.checks] == ["input names", "output names", "values at (4, 19)", "values at (1, 40)"]

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    # int16: the tiny vocabulary's kept rows fit (embslim.pipeline.embedding.index_dtype)
    remaps = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT16 and list(i.dims) == [vocab.original_size]]
    assert len(remaps) == 1, "the remap must be one int16 initializer of the original vocabulary size"
    gathers_on_remap = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == remaps[0].name]
    assert gathers_on_remap, "the remap is applied by a Gather inside the graph"
    tables = [i for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT and i.dims and i.dims[0] == vocab.size]
    assert tables, "the pruned embedding table (kept rows only) is in the graph"
    assert not [i for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT and i.dims and i.dims[0] == vocab.original_size]


def test_validation_collects_failures_into_one_typed_error(tmp_path, tiny_model_dir):
    lm, _ = _pruned(tiny_model_dir)
    contract = OnnxContract(input_names=lm.input_names)
    path = export_onnx(lm.model, tmp_path / "model.onnx", contract=contract)
    with torch.no_grad():  # the model changes after export: values must no longer match
        lm.model.classifier.bias.add_(1.0)
    with pytest.raises(OnnxValidationError, match=r"does not match PyTorch: values at \(4, 19\): max \|diff\| 1\.00e\+00.*values at \(1, 128\)"):
        validate_onnx(lm.model, path, contract=contract)
    wrong_names = OnnxContract(input_names=("input_ids", "attention_mask"))
    with pytest.raises(OnnxValidationError, match=r"input names: expected \('input_ids', 'attention_mask'\), got"):
        validate_onnx(lm.model, path, contract=wrong_names)


def test_checkpoint_round_trip_keeps_logits(tmp_path, tiny_model_dir):
    lm, _ = _pruned(tiny_model_dir)
    save_checkpoint(lm.model, lm.tokenizer, tmp_path / "ckpt", meta={"x": 1})
    model, tokenizer, meta = load_checkpoint(tmp_path / "ckpt")
    enc = tokenizer(TRAIN, padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(model(**enc).logits.numpy(), lm.model.eval()(**enc).logits.numpy(), atol=1e-6)
    assert meta == {"x": 1}


def test_contract_refuses_bad_options():
    with pytest.raises(ValueError, match="must include 'input_ids'"):
        OnnxContract(input_names=("attention_mask",))
    with pytest.raises(ValueError, match="opset 11 is too old"):
        OnnxContract(input_names=("input_ids",), opset=11)
