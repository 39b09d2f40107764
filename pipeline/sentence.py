"""Sentence embeddings: a sentence-transformers folder read as data, and the torch module that pools.

A sentence-transformers model is a folder whose `modules.json` lists its modules in order:
`Transformer` (the encoder, at path ""), `Pooling` (`1_Pooling/config.json`), optional `Dense`
layers (`config.json` + `model.safetensors`) and an optional `Normalize`. embslim reads those
files as data: a module's `type` is matched against the four names below, never imported, and
Dense weights are read from safetensors only (no pickles). Anything else is refused in one line.

`SentenceEncoder` is the module the pipeline prunes, compresses, distils and exports: the
encoder (kept under its family's attribute name, e.g. `bert`, so `FAMILIES`' word-embedding
paths are the same as a classifier's), then pooling over `attention_mask`, the Dense layers and
L2 normalisation, as sentence-transformers computes them (`models.Pooling`, `models.Dense`,
`models.Normalize`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import torch
from transformers.utils import ModelOutput

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max"]
POOLINGS = ("mean", "cls", "max")
# The module kinds embslim exports. A modules.json `type` is a dotted name in sentence_transformers
# whose last part is the kind: `sentence_transformers.models.Pooling` (2.x-4.x), or
# `sentence_transformers.sentence_transformer.modules.pooling.Pooling` (5.x). It is only compared, never imported.
_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")


def _module_kind(type_name: object) -> str | None:
    name = str(type_name)
    kind = name.rpartition(".")[2]
    return kind if name.startswith("sentence_transformers.") and kind in _KINDS else None
# Dense `activation_function` values -> what the exported graph computes.
_ACTIVATIONS = {"torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh",
                "torch.nn.Identity": "identity", "torch.nn.Tanh": "tanh"}


class SentenceModelError(ValueError):
    """The sentence-transformers folder (or the pooling options) cannot be used; one line says why."""


@dataclass(frozen=True)
class DenseSpec:
    """One sentence-transformers Dense layer: y = activation(x W^T + b)."""

    in_features: int
    out_features: int
    bias: bool
    activation: Literal["identity", "tanh"]
    folder: str                          # where its model.safetensors is


@dataclass(frozen=True)
class PoolingSpec:
    """How token embeddings become one sentence embedding (sentence-transformers' Pooling, Dense, Normalize)."""

    mode: Pooling = "mean"
    normalize: bool = False
    dense: tuple[DenseSpec, ...] = field(default_factory=tuple)
    source: str = "flags"                # "sentence-transformers" (read from the folder) or "flags"
    max_seq_length: int | None = None    # sentence_bert_config.json's, when the folder has one

    def to_json(self) -> dict:
        return {"pooling": self.mode, "normalize": self.normalize, "dense": len(self.dense), "source": self.source}


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SentenceModelError(f"{path} cannot be read as JSON ({type(e).__name__}); copy the model's files again") from e
    if not isinstance(data, (dict, list)):
        raise SentenceModelError(f"{path} must hold a JSON object or list")
    return data


def read_sentence_transformers(folder: str | Path) -> PoolingSpec | None:
    """The pooling of the sentence-transformers model in `folder` (its modules.json), or None when
    the folder has no modules.json. Raises SentenceModelError for modules embslim cannot export:
    any type besides Transformer, Pooling, Dense and Normalize, a pooling mode other than mean, cls
    or max, a Dense activation other than Identity or Tanh, or Dense weights not in safetensors."""
    folder = Path(folder)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise SentenceModelError(f"{modules_file} must be a list of module objects")
    kinds = [(_module_kind(m.get("type")), m) for m in modules]
    unknown = [str(m.get("type")) for k, m in kinds if k is None]
    if unknown:
        raise SentenceModelError(f"{modules_file} has module(s) embslim cannot export: {', '.join(unknown)}; supported: "
                                 "Transformer, Pooling, Dense, Normalize")
    if [k for k, _ in kinds][:1] != ["Transformer"] or sum(k == "Pooling" for k, _ in kinds) != 1:
        raise SentenceModelError(f"{modules_file} must list a Transformer first and exactly one Pooling module")
    mode, dense, normalize = "mean", [], False
    for kind, m in kinds[1:]:
        path = folder / str(m.get("path", ""))
        if kind == "Pooling":
            mode = _pooling_mode(_json(path / "config.json"), path / "config.json")
        elif kind == "Dense":
            dense.append(_dense(path))
        elif kind == "Normalize":
            normalize = True
    if normalize and kinds[-1][0] != "Normalize":
        raise SentenceModelError(f"{modules_file}: Normalize must be the last module")
    max_seq = None
    if (folder / "sentence_bert_config.json").is_file():
        max_seq = _json(folder / "sentence_bert_config.json").get("max_seq_length")
    return PoolingSpec(mode=mode, normalize=normalize, dense=tuple(dense), source="sentence-transformers",
                       max_seq_length=int(max_seq) if isinstance(max_seq, int) else None)


_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def _pooling_mode(config: dict, where: Path) -> Pooling:
    """The one pooling mode of a 1_Pooling/config.json: sentence-transformers 5's `pooling_mode`
    (a name or a list of names) or the earlier `pooling_mode_*_token(s)` booleans."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        on = [str(m) for m in (raw if isinstance(raw, list) else [raw])]
    else:
        on = [mode for key, mode in _LEGACY_POOLING.items() if config.get(key)]
    if len(on) != 1 or on[0] not in POOLINGS:
        raise SentenceModelError(f"{where}: pooling {' + '.join(on) or 'none'} is not supported; embslim exports exactly "
                                 "one of mean, cls or max pooling (pass --pooling to choose one)")
    if config.get("include_prompt") is False:
        raise SentenceModelError(f"{where}: include_prompt=false (pooling without the prompt tokens) is not supported")
    return on[0]  # type: ignore[return-value]


def _dense(folder: Path) -> DenseSpec:
    config = _json(folder / "config.json")
    activation = _ACTIVATIONS.get(str(config.get("activation_function", "torch.nn.modules.activation.Tanh")))
    if activation is None:
        raise SentenceModelError(f"{folder / 'config.json'}: Dense activation {config.get('activation_function')!r} is not "
                                 f"supported; supported: {', '.join(sorted(_ACTIVATIONS))}")
    if not (folder / "model.safetensors").is_file():
        raise SentenceModelError(f"{folder} has no model.safetensors (embslim never unpickles pytorch_model.bin); "
                                 "re-save the model with safetensors")
    try:
        return DenseSpec(int(config["in_features"]), int(config["out_features"]), bool(config.get("bias", True)),
                         activation, str(folder))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as e:
        raise SentenceModelError(f"{folder / 'config.json'} needs integer in_features and out_features") from e


def pooling_spec(folder: str | Path, *, pooling: str | None = None, normalize: bool | None = None) -> PoolingSpec:
    """The pooling to build: the folder's sentence-transformers modules, with `pooling` / `normalize`
    (the --pooling / --normalize flags) overriding them; a plain encoder needs `pooling`."""
    spec = read_sentence_transformers(folder) if Path(folder).is_dir() else None
    if spec is None:
        if pooling is None:
            raise SentenceModelError(f"model {str(folder)!r} is a plain encoder (no sentence-transformers modules.json); "
                                     "pass --pooling mean|cls|max (and --normalize for unit-length vectors)")
        spec = PoolingSpec(mode="mean", source="flags")
    if pooling is not None:
        if pooling not in POOLINGS:
            raise SentenceModelError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if spec.source == "sentence-transformers" and pooling != spec.mode:
            log.warning("--pooling %s overrides the model's own %s pooling", pooling, spec.mode)
        spec = replace(spec, mode=pooling)
    if normalize is not None:
        spec = replace(spec, normalize=normalize)
    return spec


@dataclass
class SentenceOutput(ModelOutput):
    """A sentence encoder's outputs, as transformers' ModelOutput (the Trainer and accelerate take it
    apart and rebuild it like any model's)."""

    token_embeddings: "torch.Tensor | None" = None     # float32 [batch, sequence, hidden]
    sentence_embedding: "torch.Tensor | None" = None   # float32 [batch, dim]


def pool(tokens: "torch.Tensor", mask: "torch.Tensor", mode: str) -> "torch.Tensor":
    """sentence-transformers' Pooling: mean over real tokens (sum / max(count, 1e-9)), the first
    token, or the max over real tokens (padding set to -1e9 first). tokens [b, s, h], mask [b, s]."""
    if mode == "cls":
        return tokens[:, 0]
    m = mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "max":
        return torch.where(m > 0, tokens, torch.full_like(tokens, -1e9)).max(dim=1).values
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def l2_normalize(x: "torch.Tensor", eps: float = 1e-12) -> "torch.Tensor":
    """x / max(||x||, eps) per row, as torch.nn.functional.normalize (sentence-transformers' Normalize),
    written with ReduceSum: F.normalize exports to ReduceL2 with an `axes` attribute, which ONNX
    Runtime rejects once the 4-bit quantizer has raised the graph's opset to 18+."""
    return x / (x * x).sum(dim=-1, keepdim=True).clamp(min=eps * eps).sqrt()


class SentenceEncoder(torch.nn.Module):
    """encoder -> pooling -> Dense layers -> L2 normalisation; forward returns a SentenceOutput.

    The encoder sits under its `base_model_prefix` (`bert`, `roberta`, `distilbert`), so the paths in
    `embslim.pipeline.model.FAMILIES` reach its word embedding as they reach a classifier's."""

    def __init__(self, encoder: "PreTrainedModel", spec: PoolingSpec) -> None:
        from safetensors.torch import load_file

        super().__init__()
        self.prefix = encoder.base_model_prefix
        setattr(self, self.prefix, encoder)
        self.config = encoder.config
        self.spec = spec
        self.dense = torch.nn.ModuleList()
        for d in spec.dense:
            layer = torch.nn.Linear(d.in_features, d.out_features, bias=d.bias)
            state = load_file(str(Path(d.folder) / "model.safetensors"))
            layer.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()}, strict=True)
            self.dense.append(layer)

    @property
    def encoder(self) -> "PreTrainedModel":
        return getattr(self, self.prefix)

    @property
    def architecture(self) -> str:
        """The class config.json names: the encoder's (e.g. BertModel), which is what Optimum and
        sentence-transformers load."""
        return type(self.encoder).__name__

    @property
    def embedding_dim(self) -> int:
        return self.spec.dense[-1].out_features if self.spec.dense else int(self.config.hidden_size)

    def describe(self) -> dict:
        """The report's model fields for the modules after the encoder."""
        return {"pooling": self.spec.mode, "normalize": self.spec.normalize, "dense": len(self.spec.dense),
                "embedding_dim": self.embedding_dim}

    def forward(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor",
                token_type_ids: "torch.Tensor | None" = None, **_: object) -> SentenceOutput:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        x = pool(tokens, attention_mask, self.spec.mode)
        for layer, d in zip(self.dense, self.spec.dense):
            x = layer(x)
            if d.activation == "tanh":
                x = torch.tanh(x)
        if self.spec.normalize:
            x = l2_normalize(x)
        return SentenceOutput(token_embeddings=tokens, sentence_embedding=x)


def write_sentence_transformers_files(folder: str | Path, spec: PoolingSpec, *, hidden: int, max_length: int) -> list[str]:
    """The sentence-transformers files that make `folder` (a bundle) load with
    `SentenceTransformer(folder, backend="onnx")`: modules.json, sentence_bert_config.json,
    config_sentence_transformers.json, 1_Pooling/config.json and each Dense layer's files (copied).
    Returns the paths written, relative to `folder`."""
    import shutil

    folder = Path(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    written = ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"]
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": spec.mode == "cls",
        "pooling_mode_mean_tokens": spec.mode == "mean", "pooling_mode_max_tokens": spec.mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    for i, d in enumerate(spec.dense, start=2):
        sub = f"{i}_Dense"
        (folder / sub).mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(Path(d.folder) / name, folder / sub / name)
            written.append(f"{sub}/{name}")
        modules.append({"idx": i, "name": str(i), "path": sub, "type": "sentence_transformers.models.Dense"})
    if spec.normalize:
        n = len(modules)
        modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    # do_lower_case false: the tokenizer itself lowercases where its model does (as the source's file says)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                  "do_lower_case": False}, indent=2))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"embslim": "bundle"}, "similarity_fn_name": "cosine"}, indent=2))
    return written


def report_notes(info: dict, rows: Sequence[dict], *, n_eval: int, batch_size: int,
                 knn_ignore_labels: Sequence[str] = ()) -> list[str]:
    """The report's notes on how a sentence-embedding bundle's metrics were measured (cosine to the
    given model, kNN accuracy, pair AUC), then a warning (logged too) for each fp32 file of `rows` whose
    mean cosine to the original is under 0.99: usually words of the held-out texts the corpus never used,
    read through another word's row. `info`: the probes' description (`EmbeddingProbes.describe`)."""
    notes = [f"ONNX Runtime CPU, through embslim.runtime.Embedder (batch {batch_size}, per-batch padding); "
             f"cosine = cosine between each file's sentence embeddings and the given (unpruned, PyTorch) model's on the "
             f"{n_eval} held-out texts: mean, 1st percentile and min."]
    if "knn" in info:
        notes.append(f"kNN accuracy: nearest neighbour (k = 1, cosine) of each of {info['knn']['n_queries']} queries "
                     f"among {info['knn']['n_index']} index texts, correct when it has the query's label; data "
                     f"{info['knn']['source']}; classes left out: {', '.join(knn_ignore_labels) or 'none'}.")
    if "pairs" in info:
        notes.append(f"pair AUC: ROC-AUC of the cosine of each of {info['pairs']['n_pairs']} text pairs against their "
                     f"0/1 label ({info['pairs']['source']}).")
    notes.append("no fine-tuning: a sentence encoder is kept as trained; variants marked +distill learn their compressed "
                 "embedding from the given model's sentence embeddings on the corpus.")
    for r in rows:
        if not r.get("base") and r["name"] != "unpruned" and r.get("cosine_mean", 1.0) < 0.99:
            line = (f"{r['name']}: mean cosine to the original {r['cosine_mean']:.4f} (p1 {r['cosine_p1']:.4f}) on the "
                    "held-out texts. Words the corpus never used read another word's row; keep a row of their own with "
                    "--keep-top 30522 --variant messi:k=5,j=64,exact_seen=true (README, \"Sentence embeddings\"), or "
                    "give a corpus closer to the app's text.")
            log.warning(line)
            notes.append("WARNING " + line)
    return notes
