"""Build a tiny, complete embslim bundle on disk: no network, no torch.

`make_tiny_bundle(path)` writes:
- tokenizer.json: a 32-token BERT-style WordPiece tokenizer built in memory, saved with
  FIXED padding to 16 and truncation at 16 switched on, like the real all-MiniLM-L6-v2
  tokenizer.json (padding to 128), so tests prove the runtime overrides both;
- model.onnx: a small fp32 classifier built with onnx.helper that uses all three inputs:
  mean over unmasked positions of (word_emb[input_ids] + type_emb[token_type_ids]),
  then a linear head -> "logits" [batch, n_labels];
- config.json and manifest.json (schema_version 1) with correct sizes and sha256s.

`tiny_logits(bundle, ids, type_ids)` recomputes the same graph in numpy for one unpadded
example, from the initializers stored in model.onnx.

`make_tiny_embedding_bundle(path, pooling=..., normalize=..., dim=...)` writes a
feature-extraction bundle with the same tokenizer: token_embeddings = word_emb[input_ids] +
type_emb[token_type_ids]; sentence_embedding pools them over attention_mask (mean, cls or max),
applies a Dense layer when `dim` differs from the hidden size and L2-normalises when asked;
last_hidden_state is an Identity alias of token_embeddings, as the pipeline writes it.
`initializers(bundle)` gives the weights, so tests can recompute the embedding in numpy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] the a movie film plot acting is was it this "
    "great good love fun bad awful boring hate not very and but i ##s ##ly ##ing . ! ,"
).split()
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 1, 2, 3
HIDDEN = 4
FILE_PADDING = 16  # what the tokenizer FILE asks for; the runtime must ignore it


def make_tiny_bundle(
    path: str | Path,
    *,
    pair: bool = False,
    labels: Sequence[str] = ("neg", "pos"),
    max_length: int = 12,
    seed: int = 0,
) -> Path:
    """Write a tiny bundle into `path` (created if needed) and return it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out / "tokenizer.json"))
    _save_model(out / "model.onnx", n_labels=len(labels), seed=seed)
    config = {
        "architectures": ["TinyForSequenceClassification"],
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "vocab_size": len(VOCAB),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    manifest = {
        "schema_version": 1,
        "task": {
            "name": "tiny-pair" if pair else "tiny",
            "labels": list(labels),
            "pair": pair,
            "max_length": max_length,
        },
        "source_model": {"name": "tiny-random", "sha256": "0" * 64},
        "tokenizer": {"file": "tokenizer.json", "pad_id": PAD_ID},
        "artifacts": [
            artifact_entry(out, "model.onnx", variant="fp32"),
            artifact_entry(out, "tokenizer.json", variant="tokenizer"),
            artifact_entry(out, "config.json", variant="config"),
        ],
    }
    write_manifest(out, manifest)
    return out


def artifact_entry(bundle: Path, file: str, *, variant: str, target: str = "any") -> dict:
    """A manifest artifact entry for a file already in `bundle`."""
    data = (bundle / file).read_bytes()
    return {
        "file": file,
        "variant": variant,
        "target": target,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_manifest_json(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def build_tokenizer():
    """The in-memory WordPiece tokenizer, with fixed padding and truncation switched ON."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tok.decoder = decoders.WordPiece()
    tok.enable_padding(length=FILE_PADDING, pad_id=PAD_ID, pad_token="[PAD]")
    tok.enable_truncation(FILE_PADDING)
    return tok


def _weights(n_labels: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "word_emb": rng.normal(size=(len(VOCAB), HIDDEN)).astype(np.float32),
        "type_emb": rng.normal(size=(2, HIDDEN)).astype(np.float32),
        "head_w": rng.normal(size=(HIDDEN, n_labels)).astype(np.float32),
        "head_b": rng.normal(size=(n_labels,)).astype(np.float32),
    }


def _save_model(path: Path, *, n_labels: int, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = _weights(n_labels, seed)
    inits = [numpy_helper.from_array(v, name=k) for k, v in w.items()]
    inits += [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), name="axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), name="axis_seq"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_emb", "input_ids"], ["words"]),
        helper.make_node("Gather", ["type_emb", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),
        helper.make_node("Mul", ["hidden", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_seq"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "axis_seq"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head_w"], ["scores"]),
        helper.make_node("Add", ["scores", "head_b"], ["logits"]),
    ]
    ints = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])
    graph = helper.make_graph(nodes, "tiny_classifier", ints, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tiny_logits(bundle: Path, ids: Sequence[int], type_ids: Sequence[int]) -> np.ndarray:
    """Numpy re-computation of model.onnx for ONE unpadded example: float64 [n_labels]."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(bundle) / "model.onnx"))
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    hidden = w["word_emb"][np.asarray(ids)] + w["type_emb"][np.asarray(type_ids)]
    return hidden.mean(axis=0) @ w["head_w"] + w["head_b"]


def with_token_ids(bundle: Path, dest: Path, ids: dict[str, int]) -> Path:
    """A copy of `bundle` whose tokenizer.json gives `ids` (token -> id, e.g. past the graph's
    vocabulary), with the manifest's size and sha256 of tokenizer.json fixed to match."""
    import hashlib
    import shutil

    dest = Path(shutil.copytree(bundle, dest))
    tok = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))
    tok["model"]["vocab"].update(ids)
    (dest / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    manifest = read_manifest_json(dest)
    for entry in manifest["artifacts"]:
        if entry["file"] == "tokenizer.json":
            raw = (dest / "tokenizer.json").read_bytes()
            entry["bytes"], entry["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    write_manifest(dest, manifest)
    return dest


# -- feature-extraction bundles ---------------------------------------------------------------


def make_tiny_embedding_bundle(
    path: str | Path,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    dim: int | None = None,
    max_length: int = 12,
    seed: int = 0,
    int8_target: str | None = None,
) -> Path:
    """Write a tiny feature-extraction bundle into `path` (created if needed) and return it.

    dim: width of sentence_embedding; None keeps the hidden size (no Dense layer).
    int8_target: also write `model_int8_<target>.onnx` (variant "int8"), a stand-in built with
        another seed, so a test sees from the embeddings which file `variant="auto"` loaded.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out / "tokenizer.json"))
    width = HIDDEN if dim is None else dim
    _save_embedding_model(out / "model.onnx", pooling=pooling, normalize=normalize, dim=dim, seed=seed)
    artifacts = [artifact_entry(out, "model.onnx", variant="fp32")]
    if int8_target is not None:
        name = f"model_int8_{int8_target.replace('-', '_')}.onnx"
        _save_embedding_model(out / name, pooling=pooling, normalize=normalize, dim=dim, seed=seed + 1)
        artifacts.append(artifact_entry(out, name, variant="int8", target=int8_target))
    config = {"architectures": ["TinyModel"], "vocab_size": len(VOCAB), "hidden_size": HIDDEN}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    manifest = {
        "schema_version": 1,
        "task": {
            "name": "tiny-emb",
            "type": "feature-extraction",
            "labels": [],
            "pair": False,
            "max_length": max_length,
            "embedding": {"dim": width, "pooling": pooling, "normalize": normalize},
        },
        "source_model": {"name": "tiny-random", "sha256": "0" * 64},
        "tokenizer": {"file": "tokenizer.json", "pad_id": PAD_ID,
                      "input_names": ["input_ids", "attention_mask", "token_type_ids"]},
        "artifacts": [
            *artifacts,
            artifact_entry(out, "tokenizer.json", variant="tokenizer"),
            artifact_entry(out, "config.json", variant="config"),
        ],
    }
    write_manifest(out, manifest)
    return out


def _save_embedding_model(
    path: Path, *, pooling: str, normalize: bool, dim: int | None, seed: int
) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = {
        "word_emb": rng.normal(size=(len(VOCAB), HIDDEN)).astype(np.float32),
        "type_emb": rng.normal(size=(2, HIDDEN)).astype(np.float32),
    }
    if dim is not None:
        w["dense_w"] = rng.normal(size=(HIDDEN, dim)).astype(np.float32)
        w["dense_b"] = rng.normal(size=(dim,)).astype(np.float32)
    inits = [numpy_helper.from_array(v, name=k) for k, v in w.items()]

    def const(name: str, value: np.ndarray) -> str:  # only the constants a graph uses (ORT warns)
        inits.append(numpy_helper.from_array(value, name=name))
        return name

    const("axis_last", np.array([-1], dtype=np.int64))
    nodes = [
        helper.make_node("Gather", ["word_emb", "input_ids"], ["words"]),
        helper.make_node("Gather", ["type_emb", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["token_embeddings"]),
        helper.make_node("Identity", ["token_embeddings"], ["last_hidden_state"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),
    ]
    if pooling == "mean":
        nodes += [
            helper.make_node("Mul", ["token_embeddings", "mask_3d"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", const("axis_seq", np.array([1], dtype=np.int64))],
                             ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask_3d", "axis_seq"], ["count"], keepdims=0),
            helper.make_node("Div", ["summed", "count"], ["pooled"]),
        ]
    elif pooling == "cls":
        first = const("first", np.array(0, dtype=np.int64))
        nodes.append(helper.make_node("Gather", ["token_embeddings", first], ["pooled"], axis=1))
    elif pooling == "max":  # padded positions pushed to -1e9 so they never win
        nodes += [
            helper.make_node("Sub", ["mask_3d", const("one", np.array(1.0, dtype=np.float32))], ["off"]),
            helper.make_node("Mul", ["off", const("big", np.array(1e9, dtype=np.float32))], ["penalty"]),
            helper.make_node("Add", ["token_embeddings", "penalty"], ["shifted"]),
            helper.make_node("ReduceMax", ["shifted"], ["pooled"], axes=[1], keepdims=0),
        ]
    else:
        raise ValueError(f"pooling must be mean, cls or max, got {pooling!r}")
    last = "pooled"
    if dim is not None:
        nodes += [
            helper.make_node("MatMul", [last, "dense_w"], ["dense_mm"]),
            helper.make_node("Add", ["dense_mm", "dense_b"], ["dense"]),
        ]
        last = "dense"
    if normalize:
        nodes += [
            helper.make_node("ReduceL2", [last], ["norm"], axes=[-1], keepdims=1),
            helper.make_node("Max", ["norm", const("eps", np.array(1e-12, dtype=np.float32))],
                             ["safe_norm"]),
            helper.make_node("Div", [last, "safe_norm"], ["sentence_embedding"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", [last], ["sentence_embedding"]))
    ints = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    width = HIDDEN if dim is None else dim
    outs = [
        helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", width]),
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
    ]
    graph = helper.make_graph(nodes, "tiny_embedder", ints, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def initializers(bundle: Path, file: str = "model.onnx") -> dict[str, np.ndarray]:
    """The weights stored in a bundle's ONNX file, by name, as float64 where they are floats."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(bundle) / file))
    out = {}
    for t in model.graph.initializer:
        value = numpy_helper.to_array(t)
        out[t.name] = value.astype(np.float64) if value.dtype.kind == "f" else value
    return out
