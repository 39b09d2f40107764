"""The word-embedding module that replaces a model's own: remap original ids, then look up rows.

`RemappedEmbedding` keeps `remap` (one entry per ORIGINAL token id) as a buffer, so the model,
and the ONNX graph exported from it, takes the stock tokenizer's ids and remaps them itself
(Gather on an index initializer). The buffer is int32 while the model trains: DDP (torchrun,
accelerate) broadcasts buffers, and gloo and NCCL have no int16. The export narrows it to int16
when the new ids fit (`export_index_dtypes`). `inner` maps new ids to vectors: a plain table after
DEP, a compressor's module later.

A fine-tuned model is saved as a checkpoint folder: `config.json` (the Hugging Face config,
original vocabulary size), `model.safetensors` (the state dict), `embslim_embedding.json` (how
to rebuild the embedding module: plain data, never a class path) and the tokenizer files.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from embslim.pipeline.model import family_of, get_word_embeddings, match_token_types, set_word_embeddings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from embslim.pipeline.vocab import PrunedVocab

log = logging.getLogger(__name__)

SPEC_FILE = "embslim_embedding.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing files or does not match its spec."""


def inner_rows(inner: nn.Module) -> int:
    """How many new ids `inner` takes: a table's rows, or its compressor spec's `rows`."""
    if isinstance(inner, nn.Embedding):
        return int(inner.num_embeddings)
    spec = getattr(inner, "spec", None)
    if isinstance(spec, dict) and "rows" in spec:
        return int(spec["rows"])
    raise CheckpointError(f"cannot tell how many rows {type(inner).__name__} has: give it a spec with 'rows'")


def index_dtype(rows: int) -> torch.dtype:
    """The narrowest signed integer type for ids in [0, rows): int16 up to 32,768 rows, else int32.
    The remap has one entry per original id (30,522 for MiniLM), so int16 halves it: 61 KB, 0.5% of
    a ~12 MB int8 bundle. ONNX Gather reads any element type; one Cast follows."""
    return torch.int16 if rows <= torch.iinfo(torch.int16).max + 1 else torch.int32


class RemappedEmbedding(nn.Module):
    """ids of the original vocabulary -> `remap` -> rows of `inner`."""

    def __init__(self, remap: torch.Tensor, inner: nn.Module) -> None:
        super().__init__()
        rows = inner_rows(inner)
        if remap.numel() and (int(remap.min()) < 0 or int(remap.max()) >= rows):
            raise CheckpointError(f"the remap points outside the {rows} rows of the embedding "
                                  f"(values {int(remap.min())}..{int(remap.max())}); rebuild the vocabulary")
        # int32 for training (any launcher can broadcast it); export_index_dtypes narrows it.
        self.register_buffer("remap", remap.to(torch.int32))
        self.inner = inner
        # Attributes some transformers code reads from an input embedding.
        self.num_embeddings = int(remap.shape[0])
        self.embedding_dim = int(inner.embedding_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Indexing the buffer exports as one Gather; an int16 remap is widened by one Cast, since
        # torch's embedding lookups take int32 or int64 ids.
        ids = self.remap[input_ids]
        return self.inner(ids.int() if ids.dtype == torch.int16 else ids)


@contextlib.contextmanager
def export_index_dtypes(model: nn.Module) -> Iterator[None]:
    """While exporting: every RemappedEmbedding's remap in its narrowest type (`index_dtype`, int16
    for up to 32,768 rows: 61 KB off a MiniLM bundle); the training dtype (int32) comes back after."""
    saved = []
    for module in model.modules():
        if isinstance(module, RemappedEmbedding):
            saved.append((module, module.remap))
            module.remap = module.remap.to(index_dtype(inner_rows(module.inner)))
    try:
        yield
    finally:
        for module, remap in saved:
            module.remap = remap


def embedding_bytes(model: nn.Module) -> int:
    """Bytes the word embedding takes in an fp32 export: its parameters and index buffers
    (remap, cluster ids, ...), each of which becomes one initializer (the remap at its export dtype)."""
    emb = get_word_embeddings(model)
    with export_index_dtypes(model):
        return sum(t.numel() * t.element_size() for t in [*emb.parameters(), *emb.buffers()])


def embedding_params(model: nn.Module) -> int:
    """Trainable parameters of the word embedding (the remap is an index table, not a parameter)."""
    return sum(p.numel() for p in get_word_embeddings(model).parameters())


def replace_inner(model: "PreTrainedModel", inner: nn.Module) -> None:
    """Swap the table behind the remap for a compressor's module (in place)."""
    emb = get_word_embeddings(model)
    if not isinstance(emb, RemappedEmbedding):
        raise CheckpointError("compress after pruning: the model's embedding has no remap yet")
    rows = inner_rows(inner)
    if rows <= int(emb.remap.max()):
        raise CheckpointError(f"the new embedding has {rows} rows but the remap reaches row "
                              f"{int(emb.remap.max())}; fit the compressor on the pruned matrix")
    emb.inner = inner
    emb.embedding_dim = int(inner.embedding_dim)


def apply_pruning(model: "PreTrainedModel", vocab: "PrunedVocab") -> None:
    """Replace the word embedding with its kept rows behind the DEP remap (in place)."""
    old = get_word_embeddings(model)
    if not isinstance(old, nn.Embedding):
        raise CheckpointError(f"expected an nn.Embedding to prune, found {type(old).__name__}; prune before compressing")
    if old.num_embeddings != vocab.original_size:
        raise CheckpointError(f"vocabulary was built for {vocab.original_size} ids but the model has {old.num_embeddings} rows")
    kept = torch.as_tensor(vocab.kept_ids, dtype=torch.long)
    table = nn.Embedding(len(kept), old.embedding_dim)
    with torch.no_grad():
        table.weight.copy_(old.weight[kept])
    set_word_embeddings(model, RemappedEmbedding(torch.as_tensor(vocab.remap), table))


class PositionError(ValueError):
    """The position table cannot be trimmed for this model; the message says why."""


# Families that number positions from padding_idx + 1 rather than 0.
_POSITION_OFFSET_FAMILIES = ("roberta", "xlm-roberta")


def trim_positions(model: "PreTrainedModel", max_length: int) -> int:
    """Keep only the position-table rows that inputs of at most `max_length` tokens read (in place);
    returns how many rows were cut. The runtime truncates every input at the bundle's max_length,
    so the cut rows are dead weight. The config's max_position_embeddings follows, so checkpoints
    reload at the new shape."""
    if max_length < 1:
        raise PositionError(f"max_length must be >= 1 to trim the position table, got {max_length}")
    config = model.config
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise PositionError(f"position_embedding_type {kind!r} has no absolute position table to trim; "
                            "leave prune.trim_positions off for this model")
    embeddings = model.get_submodule(family_of(model).word_embeddings.rpartition(".")[0])
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        raise PositionError(f"{config.model_type}: no nn.Embedding position table to trim (found {type(table).__name__}); "
                            "leave prune.trim_positions off for this model")
    offset = (table.padding_idx or 0) + 1 if config.model_type in _POSITION_OFFSET_FAMILIES else 0
    rows = max_length + offset
    if table.num_embeddings <= rows:
        return 0
    cut = table.num_embeddings - rows
    trimmed = nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx)
    with torch.no_grad():
        trimmed.weight.copy_(table.weight[:rows])
    embeddings.position_embeddings = trimmed
    # Position and token-type id buffers are sliced to the sequence length; cut them to match.
    for name in ("position_ids", "token_type_ids"):
        buf = embeddings._buffers.get(name)
        if isinstance(buf, torch.Tensor) and buf.dim() == 2 and buf.shape[1] > rows:
            embeddings.register_buffer(name, buf[:, :rows].clone(),
                                       persistent=name not in embeddings._non_persistent_buffers_set)
    config.max_position_embeddings = rows
    return cut


def embedding_spec(model: nn.Module) -> dict:
    emb = get_word_embeddings(model)
    if isinstance(emb, nn.Embedding):
        return {"remap": None, "inner": {"type": "table", "rows": emb.num_embeddings, "dim": emb.embedding_dim}}
    if isinstance(emb, RemappedEmbedding) and isinstance(emb.inner, nn.Embedding):
        return {"remap": emb.num_embeddings,
                "inner": {"type": "table", "rows": emb.inner.num_embeddings, "dim": emb.inner.embedding_dim}}
    if isinstance(emb, RemappedEmbedding) and isinstance(getattr(emb.inner, "spec", None), dict):
        return {"remap": emb.num_embeddings, "inner": emb.inner.spec}
    raise CheckpointError(f"no checkpoint spec for embedding module {type(emb).__name__}")


def _module_from_spec(spec: dict) -> nn.Module:
    from embslim.pipeline.compress import COMPRESSORS, get

    inner_spec = spec["inner"]
    kind = inner_spec.get("type")
    if kind == "table":
        inner = nn.Embedding(int(inner_spec["rows"]), int(inner_spec["dim"]))
    elif kind in COMPRESSORS:
        inner = get(kind).from_spec(inner_spec)
    else:
        raise CheckpointError(f"unknown embedding type {kind!r} in {SPEC_FILE}; known: table, {', '.join(COMPRESSORS)}")
    if spec.get("remap") is None:
        return inner
    return RemappedEmbedding(torch.zeros(int(spec["remap"]), dtype=torch.int32), inner)


META_FILE = "embslim_meta.json"


def save_checkpoint(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: str | Path,
                    *, meta: dict | None = None) -> Path:
    """`meta` (task labels, max length, source model; see embslim.pipeline.bundle.BundleMeta) lets
    `embslim export` build a bundle from the checkpoint alone.

    Atomic: everything is written into `.<folder>.partial-*` beside `folder`, which replaces `folder`
    only when complete, so a kill mid-write leaves the previous checkpoint (or none), never a torn one.
    `folder` itself is replaced whatever it holds: callers check user-given paths first
    (`embslim.pipeline.bundle.check_output`, as the CLI does)."""
    from embslim.pipeline.bundle import staged_output

    folder = Path(folder)
    with staged_output(folder, kind=None) as stage:
        _write_checkpoint(model, tokenizer, stage, meta=meta)
    return folder


def _write_checkpoint(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", folder: Path,
                      *, meta: dict | None) -> None:
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / SPEC_FILE).write_text(json.dumps(embedding_spec(model), indent=2))
    if meta is not None:
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def load_checkpoint(folder: str | Path) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase", dict | None]:
    """Model, tokenizer and the saved bundle metadata (None if the checkpoint has none)."""
    from safetensors.torch import load_file
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from embslim.pipeline.tasks import get_task

    from safetensors import SafetensorError

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; pass a folder written by `embslim finetune`")
    for name in ("config.json", "model.safetensors", SPEC_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name} is missing; pass a folder written by `embslim finetune`")
    try:
        config = AutoConfig.from_pretrained(folder)
        spec = json.loads((folder / SPEC_FILE).read_text())
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else None
        if not isinstance(spec, dict) or not isinstance(spec.get("inner"), dict) or not isinstance(meta, (dict, type(None))):
            raise ValueError(f"{SPEC_FILE} or {META_FILE} is not the expected JSON object")
        task = get_task((meta or {}).get("task_type"))   # the Auto class from embslim's own task table
        if not task.has_labels:
            raise CheckpointError(f"checkpoint {folder} is a {task.name} (sentence encoder) checkpoint, which only "
                                  "`embslim run` reads (with --resume); export it by running that again")
        model = getattr(transformers, task.auto_model).from_config(config)
        set_word_embeddings(model, _module_from_spec(spec))
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
        match_token_types(model, tokenizer)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {folder} is damaged or incomplete ({type(e).__name__}: {detail}); "
                              "write it again with `embslim finetune` (or `embslim run`)") from e
    model.eval()
    return model, tokenizer, meta
