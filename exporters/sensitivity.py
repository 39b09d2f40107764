"""Per-group 4-bit sensitivity and mixed int8 / 4-bit precision under a byte or accuracy budget.

The weights of a (fused, Attention-free) encoder graph are grouped by layer and role
(`weight_groups`): in each layer the MatMuls that read the same input (attention Q/K/V), the
attention output projection, the feed-forward input and output projections, plus one group per
float embedding table (`embeddings.word_embeddings`, `embeddings.position_embeddings`, ...). Roles come from node names when they say it (BERT, RoBERTa,
DistilBERT, GPT-style spellings), and from the graph otherwise: MatMuls sharing an input are
"qkv", the others are numbered in graph order; layers come from a `layer.N` / `layers.N` /
`h.N` part of the name, or else from how many normalization nodes come before the MatMul.

`measure_sensitivity` follows ONNX Runtime's `qdq_loss_debug` (compare a quantized model's
values with the float model's, one place at a time; its SNR is 10 log10(sum x^2 / sum (x-y)^2)):
for each group, ONLY that group is quantized to 4-bit and every other weight stays fp32, the
calibration feeds are run and the task output (logits or sentence embedding) is compared with the
fp32 graph's (for `QuantizeConfig.kernel == "int8"` the group's MatMul weights are replaced by their
dequantized per-column 4-bit values, RTN or GPTQ as configured, since those MatMuls run as int8
ones). Rest-fp32 rather than rest-int8 because it isolates the group's own error (int8
noise elsewhere would mask small differences, as qdq_loss_debug keeps the rest float), and it
costs one 4-bit pass per group and no int8 pass. Errors of independent groups add roughly as
noise powers, which is what the greedy choice below assumes; the chosen mix is then built and
measured for real.

`choose_int4_groups` puts groups at 4-bit in order of noise added per byte saved (least harmful
first) until an estimated file size fits `max_bytes`; `prefix_for_drop` in the targets stage
does the same order against the task metric.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from embslim.exporters.compare import snr_db

if TYPE_CHECKING:
    import onnx

    from embslim.exporters.quantize import QuantizeConfig

log = logging.getLogger(__name__)

_NORMS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
          "SkipSimplifiedLayerNormalization")
_LAYER = re.compile(r"(?:^|[/._])(?:layer|layers|h|block|blocks|transformer\.layer)[._/]?(\d+)(?:[/._]|$)")
# (role, name patterns), first match wins; names are lower-cased
_ROLES = (
    ("attention.qkv", ("query", "key", "value", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin", "qkv",
                       "c_attn")),
    ("attention.out", ("attention/output", "attention.output", "out_proj", "o_proj", "out_lin", "attn/c_proj",
                       "attention/dense")),
    ("ffn.in", ("intermediate", "fc1", "lin1", "up_proj", "gate_proj", "c_fc", "ffn/lin1")),
    ("ffn.out", ("output/dense", "output.dense", "fc2", "lin2", "down_proj", "mlp/c_proj")),
)


@dataclass(frozen=True)
class WeightGroup:
    name: str                    # e.g. "layer0.attention.qkv", "embeddings"
    layer: int | None            # None for the embedding tables
    role: str
    nodes: tuple[str, ...]       # MatMul / Gather node names of the graph
    params: int                  # weights in the group
    int8_bytes: int              # estimated initializer bytes at int8 per channel (weights + scales + zero points)
    int4_bytes: int              # estimated bytes at 4-bit with the given block size (data + fp32 scales [+ zp])

    @property
    def bytes_saved(self) -> int:
        return self.int8_bytes - self.int4_bytes

    def to_json(self) -> dict:
        return {"name": self.name, "layer": self.layer, "role": self.role, "nodes": list(self.nodes),
                "params": self.params, "int8_bytes": self.int8_bytes, "int4_bytes": self.int4_bytes}


@dataclass(frozen=True)
class GroupSensitivity:
    group: WeightGroup
    snr_db: float                # task output of the group-only 4-bit model vs fp32 on the calibration feeds
    noise: float                 # 10^(-snr/10): noise power relative to signal power (adds across groups)

    def to_json(self) -> dict:
        return {"group": self.group.name, "layer": self.group.layer, "role": self.group.role,
                "snr_db": round(self.snr_db, 2), "bytes_saved": self.group.bytes_saved, "nodes": len(self.group.nodes)}


# -- grouping -----------------------------------------------------------------------------------

def _role_from_name(name: str) -> str | None:
    low = name.lower()
    for role, patterns in _ROLES:
        if any(p in low for p in patterns):
            return role
    return None


def weight_groups(model: "onnx.ModelProto", *, block_size: int = 32, symmetric: bool = True,
                  include_embeddings: bool = True, table_block_size: int | None = None,
                  kernel: str = "matmulnbits") -> list[WeightGroup]:
    """The 4-bit candidates of `model` grouped by layer and role, in graph order. Candidates are
    MatMuls with a 2-D float initializer as weight, and (with `include_embeddings`) Gathers reading a
    2-D float table (integer index tables never count). Byte estimates use `block_size` and
    `symmetric` as MatMulNBits stores them (kernel "matmulnbits"), or INT4 with a scale and an int8 zero
    point per column (kernel "int8"), and `table_block_size` (None: `block_size`) as
    `embslim.exporters.quantize.quantize_table_4bit` stores tables."""
    from embslim.exporters.quantize import _FLOAT_TYPES, index_tables

    inits = {i.name: i for i in model.graph.initializer}
    floats = {n for n, i in inits.items() if i.data_type in _FLOAT_TYPES and len(i.dims) == 2}
    skip = set(index_tables(model))
    norms_seen = 0
    by_input: dict[str, list[str]] = {}
    entries: list[tuple[str, str, int, int, int]] = []   # node, input, layer, K, N
    embeddings: list[tuple[str, str, int, int]] = []   # node, table, rows, dim
    embedding_matmuls: list[tuple[str, int, int]] = []   # node, K, N
    for node in model.graph.node:
        if node.op_type in _NORMS:
            norms_seen += 1
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in floats:
            k, n = (int(d) for d in inits[node.input[1]].dims)
            found = _LAYER.search(node.name) or _LAYER.search(node.output[0] if node.output else "")
            if not found and norms_seen == 0:   # before the first norm: the embedding stage's (a MESSI basis)
                embedding_matmuls.append((node.name, k, n))
                continue
            layer = int(found.group(1)) if found else max(0, (norms_seen - 1) // 2)   # post-LN: 2 norms per layer
            entries.append((node.name, node.input[0], layer, k, n))
            by_input.setdefault(node.input[0], []).append(node.name)
        elif (include_embeddings and node.op_type == "Gather" and node.name not in skip and node.input
              and node.input[0] in floats):
            rows, dim = (int(d) for d in inits[node.input[0]].dims)
            embeddings.append((node.name, node.input[0], rows, dim))

    def int4_bytes(k: int, n: int) -> int:
        return _int4_bytes(k, n, block_size, symmetric) if kernel == "matmulnbits" else _int4_column_bytes(k, n)

    groups: dict[str, dict] = {}
    per_layer_count: dict[int, int] = {}
    for name, source, layer, k, n in entries:
        role = _role_from_name(name)
        if role is None:
            if len(by_input[source]) > 1:
                role = "attention.qkv"   # several projections of one input: the attention's Q/K/V
            else:
                per_layer_count[layer] = per_layer_count.get(layer, 0) + 1
                role = f"matmul{per_layer_count[layer]}"
        g = groups.setdefault(f"layer{layer}.{role}", {"layer": layer, "role": role, "nodes": [], "shapes": []})
        g["nodes"].append(name)
        g["shapes"].append((k, n))
    out = [WeightGroup(name=key, layer=g["layer"], role=g["role"], nodes=tuple(g["nodes"]),
                       params=sum(k * n for k, n in g["shapes"]),
                       int8_bytes=sum(_int8_bytes(k, n) for k, n in g["shapes"]),
                       int4_bytes=sum(int4_bytes(k, n) for k, n in g["shapes"]))
           for key, g in groups.items()]
    for i, (name, k, n) in enumerate(embedding_matmuls):
        key = f"embeddings.{_embedding_matmul_name(name, i)}"
        out.append(WeightGroup(name=key, layer=None, role="embeddings", nodes=(name,), params=k * n,
                               int8_bytes=_int8_bytes(k, n),
                               int4_bytes=int4_bytes(k, n)))
    # One group per table: they differ too much to share a precision (the issue #14 embedder: 4-bit word
    # tables cost ~0.001 of sentence cosine, a 4-bit position table, which every token reads, as much again).
    # A table is quantized along its hidden axis: rows x dim weights, blocks of block_size per row.
    for node_name, table, rows, dim in embeddings:
        out.append(WeightGroup(name=f"embeddings.{_table_name(table)}", layer=None, role="embeddings", nodes=(node_name,),
                               params=rows * dim, int8_bytes=rows * dim + 8,   # per-tensor int8 for Gather
                               int4_bytes=_table_int4_bytes(rows, dim, table_block_size or block_size)))
    return out


def _after_embeddings(parts: list[str]) -> list[str] | None:
    """The components of a split name after its last `embeddings` one; None when no component but the
    last is `embeddings`."""
    if "embeddings" not in parts[:-1]:
        return None
    return parts[len(parts) - parts[::-1].index("embeddings"):]


def _embedding_matmul_name(node: str, index: int) -> str:
    """An embedding-stage MatMul's short name from its node name, after its last `embeddings` component
    ("/model/bert/embeddings/word_embeddings/inner/MatMul" -> "word_embeddings.inner.matmul"), else
    "matmul<index + 1>"."""
    rest = _after_embeddings([p for p in re.split(r"[/.]", node) if p])
    return ".".join(rest[:-1] + ["matmul"]) if rest is not None else f"matmul{index + 1}"


def _table_name(initializer: str) -> str:
    """A table's short name: its initializer name after the last `embeddings` component, without a
    trailing `weight` ("bert.embeddings.word_embeddings.weight" -> "word_embeddings")."""
    parts = initializer.split(".")
    parts = _after_embeddings(parts) or parts
    if len(parts) > 1 and parts[-1] == "weight":
        parts = parts[:-1]
    return ".".join(parts) if parts != ["weight"] else initializer


def _int8_bytes(k: int, n: int) -> int:
    return k * n + 5 * n            # int8 weights + one fp32 scale and one int8 zero point per output channel


def _int4_bytes(k: int, n: int, block: int, symmetric: bool) -> int:
    blocks = -(-k // block)
    return n * blocks * block // 2 + 4 * n * blocks + (0 if symmetric else -(-n * blocks // 2))


def _int4_column_bytes(k: int, n: int) -> int:
    return -(-k * n // 2) + 5 * n   # INT4 weights + one fp32 scale and one int8 zero point per column


def _table_int4_bytes(rows: int, dim: int, block: int) -> int:
    dim += dim % 2                # an odd width gets a zero column (quantize._int4_gathers)
    blocks = -(-dim // block)     # per row: packed values, float16 scales, packed uint4 zero points
    return rows * (dim // 2 + 2 * blocks + -(-blocks // 2))


# -- measuring ------------------------------------------------------------------------------------

def _primary_output(names: Sequence[str]) -> str:
    """The task output among a graph's output names: logits, else sentence_embedding, else the first."""
    return next((n for n in ("logits", "sentence_embedding") if n in names), names[0])


def run_feeds(model: "onnx.ModelProto | str | Path", feeds: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """The task output (logits, else sentence_embedding, else the first output) of `model` on every
    feed, rows flattened to [n, width] and concatenated, one CPU thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    source = model.SerializeToString() if not isinstance(model, (str, Path)) else str(model)
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = _primary_output([o.name for o in session.get_outputs()])
    rows = [session.run([out], {k: v for k, v in feed.items() if k in names})[0] for feed in feeds]
    return np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows])


def measure_sensitivity(model_path: str | Path, feeds: Sequence[dict[str, np.ndarray]], *, cfg: "QuantizeConfig",
                        groups: Sequence[WeightGroup] | None = None,
                        hessians: dict[str, np.ndarray] | None = None) -> list[GroupSensitivity]:
    """For each group of `model_path` (default `weight_groups`), quantize only that group to 4-bit
    with `cfg`'s algorithm / block size / symmetry / accuracy_level (everything else fp32), run
    `feeds` (graph input name -> int64 [batch, sequence]) and measure the SNR in dB of the task
    output against the fp32 graph's. Returned most sensitive (lowest SNR) first. Raises
    QuantizationError when a group cannot be quantized. `hessians`: kernel 'int8' GPTQ's input statistics
    (`quantize.matmul_hessians` of the graph on `feeds`), computed here when not given."""
    import onnx

    from embslim.exporters.quantize import (QuantizationError, _load, _quantize_int4, fake_int4_columns, index_tables,
                                            matmul_hessians)

    if not feeds:
        raise ValueError("measure_sensitivity needs calibration feeds (a list of {input name: array}); got none")
    original = _load(Path(model_path))
    if groups is None:
        groups = weight_groups(original, block_size=cfg.block_size, symmetric=cfg.symmetric,
                               include_embeddings=cfg.include_embeddings, table_block_size=cfg.table_block_size,
                               kernel=cfg.kernel)
    reference = run_feeds(original, feeds)
    excluded = sorted(index_tables(original))
    if cfg.kernel == "int8" and cfg.algorithm == "gptq" and hessians is None:   # once for every group
        hessians = matmul_hessians(original, feeds, nodes=[n for g in groups for n in g.nodes])
    results = []
    for group in groups:
        work = onnx.ModelProto()
        work.CopyFrom(original)
        one = replace(cfg, bits=8, int4_nodes=group.nodes, include_embeddings=True)
        try:
            if cfg.kernel == "int8":   # its 4-bit MatMuls are int8 MatMuls of 4-bit values: simulate them in float
                fake_int4_columns(work, group.nodes, cfg, feeds, hessians)
            quantized = _quantize_int4(work, cfg=one, exclude=excluded, calibration=feeds)
        except Exception as e:
            raise QuantizationError(f"4-bit of group {group.name} ({', '.join(group.nodes[:3])}) failed: "
                                    f"{type(e).__name__}: {e}") from e
        snr = snr_db(reference, run_feeds(quantized, feeds))
        results.append(GroupSensitivity(group=group, snr_db=snr, noise=10 ** (-snr / 10) if np.isfinite(snr) else 0.0))
        log.info("sensitivity %-28s SNR %6.2f dB (4-bit alone, rest fp32), saves ~%d KB", group.name, snr,
                 group.bytes_saved // 1000)
    return sorted(results, key=lambda r: r.snr_db)


# -- choosing -------------------------------------------------------------------------------------

def int4_order(sensitivity: Sequence[GroupSensitivity]) -> list[GroupSensitivity]:
    """Groups in the order they should take 4-bit: least noise per byte saved first."""
    return sorted(sensitivity, key=lambda r: r.noise / max(r.group.bytes_saved, 1))


def choose_int4_groups(sensitivity: Sequence[GroupSensitivity], *, base_bytes: int, max_bytes: int) -> list[str]:
    """Greedy knapsack: groups in `int4_order` (least noise per byte saved first) until the estimated
    savings bring the all-int8 file (`base_bytes`) down to `max_bytes`; then every taken group the
    budget no longer needs goes back to int8, noisiest first (the last, large group taken often
    covers what several small ones saved: on the issue #14 embedder, the embedding tables alone).
    Returns group names in the order taken; every group when even that does not fit (the caller
    checks the real file)."""
    by_name = {r.group.name: r for r in sensitivity}
    chosen, size = [], base_bytes
    for r in int4_order(sensitivity):
        if size <= max_bytes:
            break
        chosen.append(r.group.name)
        size -= r.group.bytes_saved
    if size > max_bytes:
        return chosen
    for name in sorted(chosen, key=lambda n: by_name[n].noise, reverse=True):
        if size + by_name[name].group.bytes_saved <= max_bytes:
            chosen.remove(name)
            size += by_name[name].group.bytes_saved
    return chosen
