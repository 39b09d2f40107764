"""Weight quantization of an exported (optionally fused) classifier: int8 per target, or 4-bit.

One verb, `quantize(model_in, model_out, cfg=QuantizeConfig(target="arm64"))`:

- bits=8: ONNX Runtime dynamic quantization (`quantize_dynamic`), weights per channel, with the
  weight type and range that Optimum's `AutoQuantizationConfig.<target>(is_static=False)` uses
  (`TARGETS` below). Float embedding tables (Gather) are quantized too unless
  `include_embeddings=False`.
- bits=4: ONNX Runtime's `MatMulNBitsQuantizer` turns MatMul weights into 4-bit blocks
  (MatMulNBits) with the configured algorithm (`Int4Algorithm`: "rtn", "hqq" or "gptq"), block size,
  symmetry and `accuracy_level`; float Gather tables take asymmetric blocks with float16 scales
  and an MSE clipping search (`quantize_table_4bit`, GatherBlockQuantized; ORT's HQQ cannot quantize
  a Gather, and its RTN one writes symmetric blocks with float32 scales: more bytes, more error). What 4-bit cannot take (a fused Attention's weights, the pooler and
  classifier Gemms) falls back to the int8 settings of `target`.
- mixed precision: with `int4_nodes` only those MatMul / Gather nodes take 4-bit and everything
  else int8 (`embslim.exporters.sensitivity` picks them by measured sensitivity).
- `kernel="int8"` (4-bit storage, int8 compute): the 4-bit MatMuls are not MatMulNBits but the int8
  file's MatMulInteger nodes whose int8 weights come from an INT4 initializer (one scale per output
  column, `quantize_columns_4bit`) through a Cast that ONNX Runtime's constant folding runs once at
  load. The file holds 4-bit bytes; in memory and speed it is the int8 file (issue #16: MatMulNBits
  ran 3.3-5x slower than int8 on an AMX / AVX512-VNNI Xeon, where ORT's int8 GEMM uses AMX).

What ORT 1.31.1 supports on CPU, read from its `matmul_nbits_quantizer.py` and measured on a tiny
BERT (`SUPPORTED_INT4` below): RTN symmetric or asymmetric (uint8 zero points), any accuracy_level;
HQQ is always asymmetric with FLOAT zero points, MatMul only, and writes no accuracy_level (set here
on its nodes; ORT's CPU kernel runs it); GPTQ (numpy, no torch) needs calibration feeds. Measured on
ORT 1.31.1: its GPTQ port propagates no rounding error (it reads a column of the upper-triangular
inverse-Hessian factor, zero below the diagonal), so its weights equal RTN on INC's grid byte for
byte (asymmetric: the same as "rtn" here): it is accepted for when ORT fixes it, not recommended.

Integer index tables (the DEP remap, cluster ids, k-sub indices: any integer initializer that is
a Gather's data) are NEVER quantized: their Gathers are excluded by name, and after quantization
each table is checked to be byte-for-byte the same integer tensor behind a plain Gather.

Quantization is lossy, so values are not held to an atol: `QuantizeResult` records the SNR and
argmax agreement of the logits against `model_in` on random inputs (a diagnostic), and
`check_quantized` judges the task: accuracy and agreement with fp32 on the eval split through
`embslim.runtime.Classifier`, raising `QuantizationAccuracyError` when accuracy drops more than allowed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    import onnx

    from embslim.pipeline.data import Split

log = logging.getLogger(__name__)

Target = Literal["arm64", "avx2", "avx512-vnni"]
# 4-bit weight algorithms (ORT's MatMulNBitsQuantizer): round-to-nearest (DefaultWeightOnlyQuantConfig,
# ORT's C++ block quantizer), Half-Quadratic Quantization (Badri & Shaji 2023; HQQWeightOnlyQuantConfig,
# needs torch), GPTQ (Frantar et al. 2022; the neural-compressor port, needs calibration feeds).
Int4Algorithm = Literal["rtn", "hqq", "gptq"]
INT4_ALGORITHMS = ("rtn", "hqq", "gptq")
# What runs a 4-bit MatMul: ORT's MatMulNBits (4-bit blocks along K, its n-bit kernels), or ORT's int8
# kernels on weights cast from INT4 at load (per output column; module docstring).
Int4Kernel = Literal["matmulnbits", "int8"]
INT4_KERNELS = ("matmulnbits", "int8")


# What to try when a quantized file loses more than max_drop (the errors of check_quantized and the scorers).
DROP_ADVICE = ("Try --smooth-quant (dynamic int8), a mixed file (--mixed, or a larger --max-bytes), "
               "--int4-algorithm gptq --int4-kernel int8 (4-bit), or pass --allow-drop (allow_drop=True) to keep it "
               "flagged")


class QuantizationError(ValueError):
    """Quantization could not run, or its output broke an invariant (an index table was touched)."""


class QuantizationAccuracyError(ValueError):
    """The quantized model's task accuracy dropped more than allowed below fp32."""


@dataclass(frozen=True)
class Int8Settings:
    weight_type: Literal["QInt8", "QUInt8"]
    reduce_range: bool


# Dynamic int8 per target, as Optimum's AutoQuantizationConfig.<target>(is_static=False) sets it:
# u8 activations always; s8 weights on ARM64 (faster than u8/u8 on small cores, equal on big ones)
# and on AVX512-VNNI (VPDPBUSD computes u8 x s8 without saturating); u8 weights on AVX2, whose
# u8 x s8 instruction (VPMADDUBSW) can saturate. Full 8-bit range everywhere (reduce_range=False):
# only AVX512 without VNNI needs 7-bit weights, and that is not a target here.
TARGETS: dict[str, Int8Settings] = {
    "arm64": Int8Settings("QInt8", reduce_range=False),
    "avx2": Int8Settings("QUInt8", reduce_range=False),
    "avx512-vnni": Int8Settings("QInt8", reduce_range=False),
}

# Ops whose float weights the two quantizers rewrite (Gemm is split into MatMul + Add by ORT).
_WEIGHT_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
_GATHERS = ("Gather", "GatherElements", "GatherND")
_INT_TYPES = frozenset({2, 3, 4, 5, 6, 7, 12, 13})   # onnx.TensorProto UINT8..INT64, UINT32, UINT64
_FLOAT_TYPES = frozenset({1, 10, 11, 16})             # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class QuantizeConfig:
    target: Target
    bits: Literal[8, 4] = 8
    # Per-tensor int8 costs MiniLM accuracy (sentence cosine vs fp32 0.958, min 0.900; per-channel
    # 0.991, min 0.982: DESIGN.md) for a few KB of scales.
    per_channel: bool = True
    # Quantize float Gather tables (the word, position and token-type embeddings). Optimum does;
    # without it a pruned 12k x 384 table stays fp32 (18 MB).
    include_embeddings: bool = True
    # 4-bit block length along the reduction (MatMul) or hidden (Gather) axis. 32 costs one fp32
    # scale per 32 weights (+1 bit per weight); ORT needs a power of two >= 16.
    block_size: int = 32
    # MatMulNBits compute precision: 0 = ORT's default (dequantize to fp32), 4 = int8 activations
    # (faster on CPUs with int8 dot products, slightly less accurate).
    accuracy_level: Literal[0, 1, 2, 3, 4] = 0
    # (batch, sequence) shapes of the random-input comparison with the float model; callers that know
    # the bundle's max_length pass embslim.exporters.onnx.shapes_for(max_length). None: DEFAULT_SHAPES.
    validation_shapes: tuple[tuple[int, int], ...] | None = None
    # 4-bit MatMul algorithm. RTN: no data, seconds. HQQ: no data, optimises scales and zero points.
    # GPTQ: calibration feeds (quantize(..., calibration=)); see the module docstring on ORT 1.31.1.
    algorithm: Int4Algorithm = "rtn"
    # Symmetric blocks (zero point 8, no zero-point tensor) vs asymmetric (a uint4 zero point per block).
    # HQQ is always asymmetric. Gather tables are asymmetric regardless (`quantize_table_4bit`).
    symmetric: bool = True
    # Block length of the 4-bit embedding tables along their hidden axis; None: block_size. Tables are
    # small next to what they cost in accuracy (every token reads them): on the issue #14 embedder block
    # 16 for the exact-row table raised the mixed file's sentence cosine 0.9900 -> 0.9902 for 63 KB.
    table_block_size: int | None = None
    # Mixed precision: the MatMul / Gather node names that take 4-bit; every other weight takes int8.
    # None: every node 4-bit can take (bits=4), or none (bits=8).
    int4_nodes: tuple[str, ...] | None = None
    # What runs the 4-bit MatMuls. "matmulnbits": ORT's MatMulNBits, blocks of `block_size` along K,
    # `algorithm` and `accuracy_level` apply. "int8": symmetric 4-bit with one scale per output column
    # (`quantize_columns_4bit`: RTN with an MSE clip search, or with algorithm "gptq" embslim's GPTQ on the
    # calibration feeds, `gptq_columns_4bit`), stored as ONNX INT4 and cast to int8 by ORT at load, then
    # multiplied by the int8 kernels (MatMulInteger, dynamic u8 activations) as in the int8 file: 4-bit
    # bytes on disk, int8 speed and RAM. Needs opset 21 (the graph is converted) and an onnxruntime with an
    # INT4 Cast kernel (tested: 1.31.1, x86-64 and emulated aarch64).
    # Tables (Gather) take `quantize_table_4bit`'s blocks either way.
    kernel: Int4Kernel = "matmulnbits"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}; "
                             "pick the CPU the bundle will run on (arm64 for phones and ARM boards)")
        if isinstance(self.bits, bool) or self.bits not in (8, 4):
            raise ValueError(f"bits must be 8 or 4, got {self.bits!r}")
        for name in ("per_channel", "include_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        b = self.block_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ValueError(f"block_size must be a power of two >= 16 (ORT's MatMulNBits and "
                             f"GatherBlockQuantized), got {b!r}; 32 is the default")
        t = self.table_block_size
        if t is None:
            object.__setattr__(self, "table_block_size", b)
        elif isinstance(t, bool) or not isinstance(t, int) or t < 16 or t & (t - 1):
            raise ValueError(f"table_block_size must be a power of two >= 16 (ORT's GatherBlockQuantized), "
                             f"got {t!r}; leave it unset to use the MatMul block size (block_size)")
        if isinstance(self.accuracy_level, bool) or self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0, 1, 2, 3 or 4, got {self.accuracy_level!r}")
        if self.kernel not in INT4_KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(INT4_KERNELS)}, got {self.kernel!r}; matmulnbits "
                             "is the default")
        if self.kernel == "int8":
            if self.algorithm == "hqq":
                raise ValueError("kernel 'int8' (4-bit weights run by the int8 kernels) takes algorithm 'rtn' or 'gptq', "
                                 "not 'hqq' (its zero points and blocks are MatMulNBits'); or use kernel 'matmulnbits'")
            if not self.symmetric:
                raise ValueError("kernel 'int8' (4-bit weights run by the int8 kernels) takes symmetric weights per output "
                                 "column; drop symmetric=False (--no-int4-symmetric), or use kernel 'matmulnbits'")
            if self.accuracy_level:
                raise ValueError(f"accuracy_level {self.accuracy_level} sets MatMulNBits' compute, and kernel 'int8' runs "
                                 "no MatMulNBits (its activations are int8 already); leave it out, or use kernel "
                                 "'matmulnbits'")
            if (self.bits == 4 or self.int4_nodes is not None) and TARGETS[self.target].weight_type != "QInt8":
                raise ValueError(f"kernel 'int8' runs 4-bit weights as s8 int8 ones, and target {self.target}'s int8 "
                                 "weights are u8; build the 4-bit and mixed files for arm64 or avx512-vnni (first in "
                                 "--targets), or use kernel 'matmulnbits'")
        if self.algorithm not in INT4_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(INT4_ALGORITHMS)}, got {self.algorithm!r}; "
                             "rtn needs no data and is the default")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {self.symmetric!r}")
        if self.algorithm == "hqq" and self.symmetric:
            raise ValueError("algorithm 'hqq' always writes zero points (asymmetric blocks): set symmetric=False "
                             "(int4_symmetric = false), or use algorithm 'rtn' for symmetric blocks")
        if self.int4_nodes is not None:
            if self.bits != 8:
                raise ValueError(f"int4_nodes (mixed precision) needs bits=8 for the rest of the weights, got "
                                 f"bits={self.bits}")
            object.__setattr__(self, "int4_nodes", tuple(self.int4_nodes))

    @property
    def mixed(self) -> bool:
        """True when only `int4_nodes` take 4-bit and the rest int8."""
        return self.int4_nodes is not None

    @property
    def int4_settings(self) -> dict:
        """The 4-bit settings that produced a file, for its report row."""
        return {"algorithm": self.algorithm, "block_size": self.block_size, "symmetric": self.symmetric,
                "accuracy_level": self.accuracy_level, "table_block_size": self.table_block_size,
                "kernel": self.kernel}

    @property
    def variant(self) -> str:
        """The manifest's variant: "int8", "int4" or "mixed" (the target goes in its own field)."""
        return "mixed" if self.mixed else f"int{self.bits}"

    @property
    def file_name(self) -> str:
        """The bundle's file for this config, e.g. model.int8-arm64.onnx, model.mixed-arm64.onnx."""
        return f"model.{self.variant}-{self.target}.onnx"


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    target: str
    bits: int
    bytes_in: int
    bytes_out: int
    quantized: dict[str, int]          # original op type -> nodes whose float weights were quantized
    int4_nodes: dict[str, int]         # MatMulNBits / GatherBlockQuantized nodes (4-bit only)
    float_weights_left: dict[str, int]  # op type -> nodes that still carry float weights
    index_tables: dict[str, str]       # Gather node -> integer table it reads (never quantized)
    excluded_nodes: tuple[str, ...]    # every node kept out of quantization, by name
    weight_bytes: dict[str, int]       # 4bit / 8bit / float / integer -> initializer bytes
    snr_db: float                      # logits vs model_in on random inputs (diagnostic)
    agreement: float                   # argmax agreement with model_in on random inputs
    seconds: float
    int4_settings: dict | None = None  # algorithm, block_size, symmetric, accuracy_level (files with 4-bit nodes)
    int4_node_names: tuple[str, ...] = ()   # the source graph's nodes that became 4-bit

    def to_json(self) -> dict:
        return {"file": self.path.name, "target": self.target, "bits": self.bits, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "quantized": dict(self.quantized), "int4_nodes": dict(self.int4_nodes),
                "float_weights_left": dict(self.float_weights_left), "index_tables": dict(self.index_tables),
                "excluded_nodes": list(self.excluded_nodes), "weight_bytes": dict(self.weight_bytes),
                "snr_db": round(self.snr_db, 2), "agreement": self.agreement, "seconds": round(self.seconds, 2),
                **({"int4": dict(self.int4_settings)} if self.int4_settings else {})}


# -- graph inspection -------------------------------------------------------------------------

def _name_nodes(model: "onnx.ModelProto") -> None:
    """Give unnamed nodes a unique name: exclusion lists work by name."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_embslim_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def index_tables(model: "onnx.ModelProto") -> dict[str, str]:
    """Gather node name -> name of the integer table (initializer or Constant) that is its data."""
    int_tensors = {i.name for i in model.graph.initializer if i.data_type in _INT_TYPES}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _INT_TYPES and len(attr.t.dims) >= 1:
                    int_tensors.add(node.output[0])
    return {n.name: n.input[0] for n in model.graph.node
            if n.op_type in _GATHERS and n.input and n.input[0] in int_tensors}


def _float_weight_nodes(model: "onnx.ModelProto") -> dict[str, tuple[str, tuple[str, ...]]]:
    """Node name -> (op type, float initializers of rank >= 2 it reads): what could be quantized."""
    floats = {i.name for i in model.graph.initializer if i.data_type in _FLOAT_TYPES and len(i.dims) >= 2}
    out = {}
    for node in model.graph.node:
        if node.op_type in _WEIGHT_OPS:
            weights = tuple(x for x in node.input if x in floats)
            if weights:
                out[node.name] = (node.op_type, weights)
    return out


def _tensor_bytes(init: "onnx.TensorProto") -> int:
    from onnx import numpy_helper

    if init.raw_data:
        return len(init.raw_data)
    return int(numpy_helper.to_array(init).nbytes)


def weight_bytes(model: "onnx.ModelProto") -> dict[str, int]:
    """Bytes of the initializers by what they hold: "4bit" (MatMulNBits / GatherBlockQuantized
    data, packed two per byte), "8bit", "float" (incl. scales and biases), "integer" (index tables,
    zero points of other types, shapes)."""
    four_bit = {n.input[0] for n in model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    four_bit |= {n.input[1] for n in model.graph.node if n.op_type == "MatMulNBits" and len(n.input) > 1}
    four_bit |= {n.input[3] for n in model.graph.node if n.op_type == "GatherBlockQuantized" and len(n.input) > 3}
    out = {"4bit": 0, "8bit": 0, "float": 0, "integer": 0}
    for init in model.graph.initializer:
        if init.name in four_bit or init.data_type in (21, 22):          # UINT4, INT4
            kind = "4bit"
        elif init.data_type in (2, 3):                                    # UINT8, INT8
            kind = "8bit"
        elif init.data_type in _FLOAT_TYPES:
            kind = "float"
        else:
            kind = "integer"
        out[kind] += _tensor_bytes(init)
    return out


def _table_fingerprint(model: "onnx.ModelProto", name: str) -> tuple[int, tuple[int, ...], bytes] | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes()
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            t = next(a.t for a in node.attribute if a.name == "value")
            return t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()
    return None


def _check_index_tables(before: "onnx.ModelProto", after: "onnx.ModelProto", tables: dict[str, str]) -> list[str]:
    problems = []
    readers: dict[str, set[str]] = {}
    for n in after.graph.node:
        for x in n.input:
            readers.setdefault(x, set()).add(n.op_type)
    for node_name, table in tables.items():
        old = _table_fingerprint(before, table)
        new = _table_fingerprint(after, table)
        if new is None:
            problems.append(f"index table {table!r} (read by {node_name}) is gone from the quantized graph")
        elif new != old:
            problems.append(f"index table {table!r} (read by {node_name}) changed type, shape or values")
        elif not readers.get(table, set()) <= set(_GATHERS):
            problems.append(f"index table {table!r} is now read by {sorted(readers[table])}, not only by Gathers")
    return problems


# -- quantization -----------------------------------------------------------------------------

def _int8_extra_options() -> dict:
    import onnx

    # DefaultTensorType: ORT's type inference cannot see through fused contrib ops (Attention,
    # SkipLayerNormalization); without it a fused graph fails to quantize. Symmetric weights,
    # asymmetric activations: Optimum's defaults.
    return {"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True, "ActivationSymmetric": False,
            "MatMulConstBOnly": True}


def _quantize_int8(model: "onnx.ModelProto", out: Path, *, cfg: QuantizeConfig, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = TARGETS[cfg.target]
    op_types = ["MatMul", "Attention"] + (["Gather", "EmbedLayerNormalization"] if cfg.include_embeddings else [])
    quantize_dynamic(model, out, op_types_to_quantize=op_types, per_channel=cfg.per_channel,
                     reduce_range=settings.reduce_range, weight_type=QuantType[settings.weight_type],
                     nodes_to_exclude=exclude, extra_options=_int8_extra_options())


def _quantize_int4(model: "onnx.ModelProto", *, cfg: QuantizeConfig, exclude: list[str],
                   calibration: "Sequence[dict[str, np.ndarray]] | None" = None) -> "onnx.ModelProto":
    """MatMul weights with `cfg.algorithm`, then float Gather tables (`quantize_table_4bit`); with
    `cfg.int4_nodes` only those nodes. With `cfg.kernel == "int8"` the MatMuls are left float here (the int8
    pass quantizes them, then `_int4_columns` stores their weights as INT4). Returns the new model (the input
    is modified too)."""
    opsets = {o.domain: o.version for o in model.opset_import}
    ir_version = model.ir_version
    wanted = None if cfg.int4_nodes is None else set(cfg.int4_nodes)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    gathers = [n.name for n in model.graph.node if n.op_type == "Gather"]
    skip = set(exclude) | ({m for m in matmuls + gathers if m not in wanted} if wanted is not None else set())
    with np.errstate(divide="ignore", invalid="ignore"):   # all-zero blocks (the [PAD] row) get scale 0
        if cfg.kernel == "matmulnbits" and any(m not in skip for m in matmuls):
            model = _int4_matmuls(model, cfg=cfg, exclude=sorted(skip | set(gathers)), calibration=calibration)
        if cfg.include_embeddings and any(g not in skip for g in gathers):
            model = _int4_gathers(model, cfg=cfg, exclude=sorted(skip | set(matmuls)))
    if not any(i.data_type in (21, 22) for i in model.graph.initializer):   # no UINT4 / INT4 tensors left
        # ORT's quantizer may raise the opset to 21 and the IR to 10 for int4 tensors; with every
        # 4-bit tensor packed into uint8 neither is needed, and opset 21 would invalidate ops whose signature
        # changed since the export's opset (e.g. ReduceMean's axes). Restore what the export had.
        for o in model.opset_import:
            if o.domain in opsets:
                o.version = opsets[o.domain]
        model.ir_version = ir_version
    return model


def _int4_matmuls(model: "onnx.ModelProto", *, cfg: QuantizeConfig, exclude: list[str],
                  calibration: "Sequence[dict[str, np.ndarray]] | None") -> "onnx.ModelProto":
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    if cfg.algorithm == "gptq":
        return _gptq_matmuls(model, cfg=cfg, exclude=exclude, calibration=calibration)
    algo = (HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=4, op_types_to_quantize=("MatMul",))
            if cfg.algorithm == "hqq" else None)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                     accuracy_level=cfg.accuracy_level or None, nodes_to_exclude=list(exclude),
                                     op_types_to_quantize=("MatMul",), algo_config=algo)
    quantizer.process()
    out = quantizer.model.model
    if cfg.algorithm == "hqq" and cfg.accuracy_level:   # ORT's HQQ quantizer writes no accuracy_level
        from onnx import helper

        for node in out.graph.node:
            if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(helper.make_attribute("accuracy_level", cfg.accuracy_level))
    return out


def _gptq_matmuls(model: "onnx.ModelProto", *, cfg: QuantizeConfig, exclude: list[str],
                  calibration: "Sequence[dict[str, np.ndarray]] | None") -> "onnx.ModelProto":
    """GPTQ through ORT's neural-compressor port (`gptq_quantize`), called directly: ORT's
    MatMulNBitsQuantizer ignores nodes_to_exclude for GPTQ, and mixed precision needs it."""
    import contextlib
    import io

    from onnxruntime.quantization.neural_compressor.weight_only import gptq_quantize

    skip = set(exclude)
    config = {n.name: ("fp32" if n.name in skip else
                       {"bits": 4, "group_size": cfg.block_size, "scheme": "sym" if cfg.symmetric else "asym",
                        "algorithm": "GPTQ"})
              for n in model.graph.node if n.op_type == "MatMul"}
    with contextlib.redirect_stdout(io.StringIO()):   # its progress bar prints to stdout
        out = gptq_quantize(model, dataloader=[(feed, None) for feed in calibration], weight_config=config,
                            num_bits=4, group_size=cfg.block_size, scheme="sym" if cfg.symmetric else "asym",
                            n_samples=-1, accuracy_level=cfg.accuracy_level)
    return out.model


# Shrink factors tried per block by the table quantizer: the [min, max] range scaled by r, the r with
# the least squared error kept (an MSE clipping search, as in llama.cpp's and AWQ's grid searches).
_CLIP_RATIOS = np.linspace(0.6, 1.0, 21)
_FP16_MIN_NORMAL = 6.104e-05


def quantize_table_4bit(table: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit blocks of an embedding table along its hidden axis, for ORT's
    GatherBlockQuantized (bits=4, uint8 data holding two values, low nibble first; dequantized as
    (q - zero_point) * scale).

    table: float [rows, dim], dim even (`_int4_gathers` pads an odd one). Per row, blocks of `block_size` values (the last one may be
    short); each block's range [min(x, 0), max(x, 0)] is shrunk by the factor in `_CLIP_RATIOS` that
    gives the least squared error. Returns (data uint8 [rows, dim / 2], scales [rows, blocks] float16,
    or float32 when a non-zero scale falls outside float16's normal range, zero points uint8
    [rows, ceil(blocks / 2)] packed like the data). An all-zero block (the [PAD] row) gets scale 0.

    Against ORT's own Gather quantizer (RTN, symmetric, float32 scales: 5 bits per value at block 32)
    this stores 4.63 bits per value at block 32 and, on the issue #14 embedder's two word tables, has
    18-21% less squared error (block 16: 5.25 bits, 39-44% less); that embedder's mixed file went from
    0.9897 to 0.9901 mean cosine to the original model (README, "Measured: CLINC150")."""
    rows, dim = table.shape
    if dim % 2:
        raise QuantizationError(f"a 4-bit table needs an even hidden size (two values per byte), got {dim}")
    blocks = -(-dim // block_size)
    padded = np.zeros((rows, blocks * block_size), np.float32)
    padded[:, :dim] = table
    x = padded.reshape(rows, blocks, block_size)
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)
    widest = (hi - lo) / 15
    use_fp16 = bool(np.all((widest == 0) | ((widest * _CLIP_RATIOS[0] >= _FP16_MIN_NORMAL) & (widest < 6e4))))
    scale_type = np.float16 if use_fp16 else np.float32
    best_err = np.full((rows, blocks), np.inf, np.float32)
    q_best = np.zeros(x.shape, np.uint8)
    s_best = np.zeros((rows, blocks), np.float32)
    z_best = np.zeros((rows, blocks), np.uint8)
    for r in _CLIP_RATIOS:
        s = ((hi - lo) * r / 15).astype(scale_type).astype(np.float32)
        safe = np.where(s == 0, 1, s)
        z = np.clip(np.round(-lo * r / safe), 0, 15)
        q = np.clip(np.round(x / safe[..., None]) + z[..., None], 0, 15)
        err = (((q - z[..., None]) * s[..., None] - x) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        q_best[better], s_best[better], z_best[better] = q[better], s[better], z[better]
    q = q_best.reshape(rows, -1)[:, :dim]
    if blocks % 2:
        z_best = np.concatenate([z_best, np.zeros((rows, 1), np.uint8)], axis=1)
    return (_pack_nibbles(q), s_best.astype(scale_type), _pack_nibbles(z_best))


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """[rows, 2n] values in 0..15 -> [rows, n] uint8, the even column in the low nibble."""
    return (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)


# Scales tried per column by `quantize_columns_4bit`: its largest |weight| divided by 7 (no clipping), 7.5,
# 8 (a column whose extreme is negative fits -8 exactly) ... 14 (half the range clipped away). One scale
# covers a whole column (384-1536 weights), whose rare large weights are worth clipping more often than a
# 16-32 weight table block's.
_COLUMN_DIVISORS = np.linspace(7.0, 14.0, 29)


def quantize_columns_4bit(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit weights with one scale per output column: `weight` [K, N] float (a MatMul's B)
    -> (values int8 [K, N] in -8..7, scales float32 [N]) with weight ~= values * scales. Round to
    nearest, each column's scale picked where its squared error is least (its largest |weight| over
    `_COLUMN_DIVISORS`; the MSE clipping grid search of llama.cpp and AWQ). An all-zero column gets
    scale 1/7.
    What the int8 kernels can run: the values cast to int8 are the int8 weights of a per-channel
    MatMulInteger, whose scale per column they keep (`QuantizeConfig.kernel == "int8"`)."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_columns_4bit takes a 2-D [K, N] weight, got shape {w.shape}")
    amax = np.abs(w).max(axis=0)
    amax[amax == 0] = 1.0
    best = np.full(w.shape[1], np.inf)
    scales = np.empty(w.shape[1], np.float32)
    values = np.zeros(w.shape, np.int8)
    for divisor in _COLUMN_DIVISORS:
        scale = (amax / divisor).astype(np.float32)
        v = np.clip(np.rint(w / scale), -8, 7)
        err = ((w - v * scale) ** 2).sum(axis=0)
        better = err < best
        best[better], scales[better] = err[better], scale[better]
        values[:, better] = v[:, better]
    return values, scales


def gptq_columns_4bit(weight: np.ndarray, hessian: np.ndarray, *, damp: float = 0.01,
                      block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
    Transformers", Algorithm 1) with `quantize_columns_4bit`'s grid: `weight` [K, N] float (a MatMul's B),
    `hessian` [K, K] = sum of x x^T over calibration inputs x (rows of the MatMul's input, padding left
    out) -> (values int8 [K, N] in -8..7, scales float32 [N]). The scales are the RTN grid's (one per
    output column, MSE-clipped); the input rows are then quantized one at a time, largest Hessian
    diagonal first ("act-order"), each row's rounding error spread over the rows not yet quantized
    through the Cholesky factor of the damped inverse Hessian (`damp` x its mean diagonal added), in
    blocks of `block` rows. Written here because ORT 1.31.1's port gives RTN's weights (module docstring)
    and has no per-column grid. Raises ValueError on mismatched shapes."""
    w = np.asarray(weight, dtype=np.float64)
    k = w.shape[0]
    if w.ndim != 2 or hessian.shape != (k, k):
        raise ValueError(f"gptq_columns_4bit takes weight [K, N] and hessian [K, K]; got {w.shape} and {hessian.shape}")
    _, scales = quantize_columns_4bit(weight)
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[order], h[order][:, order]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T          # upper: H^-1 = U^T U
    s = scales.astype(np.float64)
    values = np.zeros(w.shape, np.int8)
    for start in range(0, k, block):
        end = min(start + block, k)
        errors = np.zeros((end - start, w.shape[1]))
        for i in range(start, end):
            v = np.clip(np.rint(w[i] / s), -8, 7)
            values[i] = v
            err = (w[i] - v * s) / u[i, i]
            w[i + 1:end] -= np.outer(u[i, i + 1:end], err)
            errors[i - start] = err
        w[end:] -= u[start:end, end:].T @ errors
    out = np.empty_like(values)
    out[order] = values
    return out, scales


def tensor_values(model: "onnx.ModelProto", tensors: Sequence[str],
                  feeds: "Sequence[dict[str, np.ndarray]]") -> "Iterator[tuple[dict[str, np.ndarray], list[np.ndarray]]]":
    """For each feed of `feeds` (graph input name -> array; names the graph lacks are left out), the feed
    and the values of `tensors` (names of float tensors of `model`) on it: one ONNX Runtime CPU pass per
    feed on a copy of `model` with the tensors as extra outputs."""
    import onnx
    import onnxruntime as ort

    work = onnx.ModelProto()
    work.CopyFrom(model)
    have = {o.name for o in work.graph.output}
    work.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in have)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(work.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for feed in feeds:
        yield feed, session.run(list(tensors), {k: v for k, v in feed.items() if k in names})


def input_hessians(model: "onnx.ModelProto", tensors: Sequence[str],
                   feeds: "Sequence[dict[str, np.ndarray]]") -> dict[str, np.ndarray]:
    """For each float tensor name in `tensors` (MatMul inputs [..., K] of `model`), the sum of x x^T
    ([K, K] float64) over its rows x on `feeds`, rows of padding tokens (attention_mask 0) left out:
    GPTQ's Hessian up to a factor 2 (`tensor_values`)."""
    sums: dict[str, np.ndarray] = {}
    for feed, got in tensor_values(model, tensors, feeds):
        mask = feed.get("attention_mask")
        for name, x in zip(tensors, got):
            rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
            if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
                rows = rows[mask.reshape(-1) > 0]
            sums[name] = sums.get(name, 0) + rows.T @ rows
    return sums


def matmul_hessians(model: "onnx.ModelProto", feeds: "Sequence[dict[str, np.ndarray]]",
                    nodes: "Sequence[str] | None" = None) -> dict[str, np.ndarray]:
    """`input_hessians` of the inputs of `model`'s per-column MatMuls (`_matmul_weights`; `nodes`: only
    those): what GPTQ per column needs, by MatMul input name, for every file built from `model`."""
    weights = _matmul_weights(model, only=nodes)
    return input_hessians(model, sorted({n.input[0] for n in model.graph.node if n.name in weights}), feeds)


def _column_weights(model: "onnx.ModelProto", weights: dict[str, str], cfg: QuantizeConfig,
                    calibration: "Sequence[dict[str, np.ndarray]] | None",
                    hessians: dict[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """weight name -> (values, scales) of the MatMuls `weights` (node -> float weight name) of `model`,
    by `cfg.algorithm` ("gptq": on the calibration feeds, or `hessians` by MatMul input when the caller has
    them (`input_hessians`); "rtn": the weights alone)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    inputs = {n.name: n.input[0] for n in model.graph.node if n.name in weights}
    if cfg.algorithm == "gptq" and hessians is None:
        hessians = input_hessians(model, sorted(set(inputs.values())), calibration)
    out = {}
    for node, weight in weights.items():
        w = numpy_helper.to_array(inits[weight])
        out[weight] = (gptq_columns_4bit(w, hessians[inputs[node]]) if cfg.algorithm == "gptq"
                       else quantize_columns_4bit(w))
    return out


def _pack_int4(values: np.ndarray) -> bytes:
    """int values in -8..7, any shape -> ONNX INT4 raw data: two's complement nibbles, two per byte, the
    first element in the low nibble (a zero nibble pads an odd count)."""
    nibbles = (np.asarray(values).reshape(-1).astype(np.int16) & 15).astype(np.uint8)
    return _pack_nibbles(np.pad(nibbles, (0, nibbles.size % 2))[None]).tobytes()


def _matmul_weights(model: "onnx.ModelProto", *, only: "Sequence[str] | None" = None,
                    skip: Sequence[str] = ()) -> dict[str, str]:
    """MatMul node name -> float weight name, for the MatMuls of `model` whose second input is a 2-D float
    initializer (`_float_weight_nodes`), in `only` (None: all) and not in `skip`: the weights kernel 'int8'
    stores per output column."""
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    second = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    wanted, skipped = None if only is None else set(only), set(skip)
    return {name: second[name] for name, (op, ws) in _float_weight_nodes(model).items()
            if op == "MatMul" and second[name] in ws and ranks[second[name]] == 2 and name not in skipped
            and (wanted is None or name in wanted)}


def _int4_columns(model: "onnx.ModelProto", weights: dict[str, str],
                  columns: dict[str, tuple[np.ndarray, np.ndarray]]) -> "onnx.ModelProto":
    """In `model` (quantize_dynamic's int8 output, per channel, s8 weights), store
    the int8 weights of `weights` (MatMul node -> float weight name in `original`) as 4-bit: an INT4
    initializer `<weight>_int4` of `columns[weight]` (`_column_weights`), a Cast to int8 whose
    output keeps the name MatMulInteger reads (`<weight>_quantized`), and the column scales in
    `<weight>_scale`. The default opset goes to 21 (ONNX's version converter) for INT4. Returns the new
    model (the input is modified too)."""
    import onnx
    from onnx import helper, numpy_helper, version_converter

    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(x for n in model.graph.node for x in n.input)
    replaced: dict[str, "onnx.TensorProto"] = {}
    casts = []
    for node, weight in weights.items():
        q, scale = f"{weight}_quantized", f"{weight}_scale"
        if q not in inits or scale not in inits or uses[q] != 1 or uses[scale] != 1:
            raise QuantizationError(f"{node}: its int8 weight {q!r} is not one per-channel MatMulInteger input as "
                                    "quantize_dynamic writes it; quantize it with kernel 'matmulnbits'")
        values, scales = columns[weight]
        replaced[q] = helper.make_tensor(f"{weight}_int4", onnx.TensorProto.INT4, list(values.shape),
                                         _pack_int4(values), raw=True)
        replaced[scale] = numpy_helper.from_array(scales, scale)
        casts.append(helper.make_node("Cast", [f"{weight}_int4"], [q], to=onnx.TensorProto.INT8,
                                      name=f"{node}/int4_to_int8"))
    kept = [replaced.get(i.name, i) for i in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    others = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21:
        model = version_converter.convert_version(model, 21)
        present = {o.domain for o in model.opset_import}
        model.opset_import.extend(o for o in others if o.domain not in present)
    model.ir_version = max(model.ir_version, 10)
    return model


def fake_int4_columns(model: "onnx.ModelProto", nodes: Sequence[str], cfg: QuantizeConfig,
                      calibration: "Sequence[dict[str, np.ndarray]] | None" = None,
                      hessians: dict[str, np.ndarray] | None = None) -> None:
    """Replace, in place, the float weights of the MatMul `nodes` of `model` by what kernel 'int8' 4-bit
    keeps of them (`_column_weights` with `cfg.algorithm`, dequantized, still float): the sensitivity
    pass's view of those 4-bit MatMuls."""
    import onnx
    from onnx import numpy_helper

    weights = _matmul_weights(model, only=nodes)
    if not weights:
        return
    columns = _column_weights(model, weights, cfg, calibration, hessians)
    for i, init in enumerate(model.graph.initializer):
        if init.name in columns:
            values, scales = columns[init.name]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array((values * scales).astype(dtype), init.name))


def _int4_gathers(model: "onnx.ModelProto", *, cfg: QuantizeConfig, exclude: list[str]) -> "onnx.ModelProto":
    """Every Gather reading a 2-D float table (axis 0) and not in `exclude` becomes a
    GatherBlockQuantized over `quantize_table_4bit`'s blocks (cfg.table_block_size), followed by a
    Cast to float when the scales are float16. A table with an odd hidden size (a MESSI coefficient
    table with j=43) gets a zero column to pack two values per byte, and a Slice drops it again."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    skip = set(exclude)
    nodes, replaced = [], set()
    for node in model.graph.node:
        data = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (node.name in skip or data is None or data.data_type not in _FLOAT_TYPES or len(data.dims) != 2
                or axis != 0):
            nodes.append(node)
            continue
        table = numpy_helper.to_array(data).astype(np.float32)
        dim = table.shape[1]
        if dim % 2:
            table = np.pad(table, ((0, 0), (0, 1)))
        packed, scales, zero_points = quantize_table_4bit(table, cfg.table_block_size)
        base = data.name
        replaced.add(base)
        model.graph.initializer.extend([numpy_helper.from_array(packed, f"{base}_Q4"),
                                        numpy_helper.from_array(scales, f"{base}_scales"),
                                        numpy_helper.from_array(zero_points, f"{base}_zero_points")])
        # GatherBlockQuantized -> [Cast to float when the scales are float16] -> [Slice off the pad column]
        steps = (["cast"] if scales.dtype == np.float16 else []) + (["slice"] if dim % 2 else [])
        names = [f"{node.output[0]}_q4_{s}" for s in ["gather", *steps][:-1]] + [node.output[0]]
        nodes.append(helper.make_node(
            "GatherBlockQuantized", [f"{base}_Q4", node.input[1], f"{base}_scales", f"{base}_zero_points"],
            [names[0]], name=f"{node.name}_Q4", domain="com.microsoft",
            bits=4, block_size=cfg.table_block_size, gather_axis=0, quantize_axis=1))
        for step, src, dst in zip(steps, names, names[1:]):
            if step == "cast":
                nodes.append(helper.make_node("Cast", [src], [dst], name=f"{node.name}_Q4_cast", to=TensorProto.FLOAT))
            else:
                bounds = [f"{base}_slice_{k}" for k in ("starts", "ends", "axes")]
                model.graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), n)
                                               for v, n in zip((0, dim, -1), bounds))
                nodes.append(helper.make_node("Slice", [src, *bounds], [dst], name=f"{node.name}_Q4_slice"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    replaced -= used   # a table another node still reads stays
    kept = [i for i in model.graph.initializer if i.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _check_output(original: "onnx.ModelProto", tmp: Path, tables: dict[str, str], *, what: str,
                  hint: str, written: "onnx.ModelProto | None" = None) -> "onnx.ModelProto":
    """The quantized file `tmp` (`written`: the model just saved there, when the caller has it), after the
    checks every quantizer's output passes: each integer index table byte-for-byte as in `original`, and
    loadable by ONNX Runtime (QuantizationError naming `what` otherwise, with `hint` for the latter).
    Made world-readable like the bundle's other files (mkstemp created it 0600)."""
    import onnx
    import onnxruntime as ort

    result = written if written is not None else onnx.load(str(tmp))
    problems = _check_index_tables(original, result, tables)
    if problems:
        raise QuantizationError(f"{what} broke an integer index table: {'; '.join(problems)}; "
                                "this is a bug in the exclusion list, please report it with the model")
    try:
        ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QuantizationError(f"ONNX Runtime {ort.__version__} cannot load the {what}: {e}; {hint}") from e
    os.chmod(tmp, 0o644)
    return result


def _load(path: Path) -> "onnx.ModelProto":
    import onnx

    model = onnx.load(str(path))
    # dynamo exports carry value_info that the int8 quantizer's shape inference trips over
    # (DESIGN.md); the quantizers infer what they need themselves.
    del model.graph.value_info[:]
    _name_nodes(model)
    return model


def quantize(model_in: str | Path, model_out: str | Path, *, cfg: QuantizeConfig,
             calibration: "Sequence[dict[str, np.ndarray]] | None" = None,
             hessians: dict[str, np.ndarray] | None = None) -> QuantizeResult:
    """Quantize `model_in` into `model_out` (weights inside the file); see the module docstring.
    `calibration`: feed dicts (graph input name -> int64 array [batch, sequence]) for
    algorithm="gptq", e.g. the task's training text through the bundle's tokenizer; other
    algorithms ignore it. `hessians`: kernel 'int8' GPTQ's input statistics (`matmul_hessians` of
    `model_in` on `calibration`), for a caller building several files from one graph. Raises
    QuantizationError when quantization fails or breaks an index table."""
    import onnx

    from embslim.exporters.compare import compare_onnx

    model_in, model_out = Path(model_in), Path(model_out)
    if not model_in.is_file():
        raise QuantizationError(f"{model_in} not found; pass an exported (or fused) model.onnx")
    if model_in.resolve() == model_out.resolve():
        raise QuantizationError(f"model_out must differ from model_in ({model_in}); e.g. {cfg.file_name}")
    if cfg.algorithm == "gptq" and (cfg.bits == 4 or cfg.mixed) and not calibration and hessians is None:
        raise QuantizationError("algorithm 'gptq' needs calibration feeds (quantize(..., calibration=[{input: "
                                "array}, ...])); the targets stage makes them from the task's training text")
    t0 = time.perf_counter()
    original = _load(model_in)
    tables = index_tables(original)
    excluded = sorted(tables)
    if not cfg.include_embeddings:
        excluded += sorted(n.name for n in original.graph.node if n.op_type in _GATHERS and n.name not in tables)
    candidates = _float_weight_nodes(original)
    log.info("quantizing %s to %d bits for %s; index tables kept as they are: %s", model_in.name, cfg.bits,
             cfg.target, ", ".join(f"{t} ({n})" for n, t in tables.items()) or "none")

    model_out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=model_out.parent, prefix=f".{model_out.name}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            work = onnx.ModelProto()
            work.CopyFrom(original)
            if cfg.bits == 4 or cfg.mixed:
                unknown = sorted(set(cfg.int4_nodes or ()) - {n.name for n in work.graph.node})
                if unknown:
                    raise QuantizationError(f"int4_nodes not in {model_in.name}: {', '.join(unknown[:5])}; "
                                            "pass node names of the graph being quantized")
                work = _quantize_int4(work, cfg=cfg, exclude=excluded, calibration=calibration)
            # int8: everything; 4-bit: the fallback for what MatMulNBits cannot take (fused Attention,
            # Gemm, tables it skipped). Nodes already 4-bit are no longer MatMul/Gather, so untouched.
            _quantize_int8(work, tmp, cfg=cfg, exclude=excluded)
            written, four_bit = None, {}   # four_bit: kernel 'int8' MatMuls stored 4-bit (node -> weight)
            if (cfg.bits == 4 or cfg.mixed) and cfg.kernel == "int8":
                four_bit = _matmul_weights(original, only=cfg.int4_nodes, skip=excluded)
                if four_bit:
                    written = _int4_columns(onnx.load(str(tmp)), four_bit,
                                            _column_weights(original, four_bit, cfg, calibration, hessians))
                    onnx.save(written, str(tmp))
        except QuantizationError:
            raise
        except Exception as e:
            raise QuantizationError(f"quantizing {model_in.name} ({cfg.variant}, {cfg.target}) failed: "
                                    f"{type(e).__name__}: {e}") from e
        result_model = _check_output(original, tmp, tables, what=f"quantized {model_in.name}",
                                     hint="try bits=8, or include_embeddings=False", written=written)
        os.replace(tmp, model_out)
    finally:
        tmp.unlink(missing_ok=True)

    left = _float_weight_nodes(result_model)
    left_weights = {w for _, ws in left.values() for w in ws}
    quantized = Counter(op for _, (op, ws) in candidates.items() if not any(w in left_weights for w in ws))
    int4 = Counter(n.op_type for n in result_model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized"))
    if four_bit:
        int4["MatMulInteger"] = len(four_bit)
    int4_outputs = {n.output[0] for n in result_model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    for _ in range(2):   # a 4-bit table's Cast to float and Slice of its pad column
        int4_outputs |= {n.output[0] for n in result_model.graph.node
                         if n.op_type in ("Cast", "Slice") and n.input[0] in int4_outputs}
    int4_names = tuple(n.name for n in original.graph.node
                       if n.op_type in ("MatMul", "Gather") and n.output and n.output[0] in int4_outputs
                       or n.name in four_bit)
    try:
        comparison = compare_onnx(model_in, model_out, shapes=cfg.validation_shapes)
        snr, agreement = comparison.snr_db, comparison.agreement
    except ValueError as e:   # a graph whose vocabulary size cannot be read: the SNR is only a diagnostic
        log.warning("no random-input comparison for %s: %s", model_out.name, e)
        snr, agreement = float("nan"), float("nan")
    seconds = time.perf_counter() - t0
    result = QuantizeResult(
        path=model_out, target=cfg.target, bits=cfg.bits, bytes_in=model_in.stat().st_size,
        bytes_out=model_out.stat().st_size, quantized=dict(quantized), int4_nodes=dict(int4),
        float_weights_left=dict(Counter(op for op, _ in left.values())), index_tables=tables,
        excluded_nodes=tuple(excluded), weight_bytes=weight_bytes(result_model),
        snr_db=snr, agreement=agreement, seconds=seconds,
        int4_settings=cfg.int4_settings if int4 else None, int4_node_names=int4_names)
    log.info("%s: %.2f MB -> %.2f MB (%.2fx) in %.1f s; quantized %s; output SNR vs input %.1f dB on random ids",
             model_out.name, result.bytes_in / 1e6, result.bytes_out / 1e6, result.bytes_out / result.bytes_in,
             seconds, dict(quantized), snr)
    return result


# -- task-level check -------------------------------------------------------------------------

def check_quantized(bundle_dir: str | Path, file: str, split: "Split", *, n_labels: int,
                    fp32_file: str = "model.onnx", max_drop: float = 0.01, allow_drop: bool = False,
                    batch_size: int = 32, fp32_logits: np.ndarray | None = None,
                    original_logits: np.ndarray | None = None, batch_flips: bool = False) -> dict:
    """Accuracy of `file` vs `fp32_file` on `split`, both through `embslim.runtime.Classifier` with the same
    batching; both must be listed in the bundle's manifest. Raises QuantizationAccuracyError when
    accuracy drops more than `max_drop` (a share: 0.01 = 1 point) unless `allow_drop`, in which
    case the returned dict says "flagged": True. With `original_logits` (the user's own trained
    model on the same texts) it also reports `original_agreement` and `original_max_logit_diff`. With
    `batch_flips` it also runs `file` at batch 1 and reports `batch_flips`: labels that differ from
    `batch_size` (`embslim.pipeline.validate.batch_flips`)."""
    from embslim.pipeline.validate import eval_logits, task_metrics
    from embslim.runtime import Classifier

    if not 0.0 <= max_drop <= 1.0:
        raise ValueError(f"max_drop is a share of examples in [0, 1] (0.01 = 1 point), got {max_drop}")
    logits = {} if fp32_logits is None else {fp32_file: fp32_logits}   # callers checking many files pass it once
    loaded = {}
    for name in (fp32_file, file):
        if name not in logits:
            loaded[name] = Classifier.from_bundle(bundle_dir, file=name, threads=None, staging=True)   # maybe being written
            logits[name] = eval_logits(loaded[name], split, batch_size=batch_size, desc=f"{name}: eval")
    ref = task_metrics(logits[fp32_file], split.labels, n_labels=n_labels)
    got = task_metrics(logits[file], split.labels, n_labels=n_labels)
    drop = ref["accuracy"] - got["accuracy"]
    agreement = float((logits[file].argmax(-1) == logits[fp32_file].argmax(-1)).mean())
    report = {"file": file, "fp32_file": fp32_file, "accuracy": got["accuracy"], "fp32_accuracy": ref["accuracy"],
              "drop": drop, "agreement": agreement, "snr_db": _snr(logits[fp32_file], logits[file]),
              "n_eval": got["n_eval"], "batch_size": batch_size, "max_drop": max_drop, "flagged": drop > max_drop}
    if original_logits is not None:
        report |= {"original_agreement": float((logits[file].argmax(-1) == original_logits.argmax(-1)).mean()),
                   "original_max_logit_diff": float(np.abs(logits[file] - original_logits).max())}
    if batch_flips:
        from embslim.pipeline.validate import batch_flips as count_flips

        clf = loaded.get(file) or Classifier.from_bundle(bundle_dir, file=file, threads=None, staging=True)
        report |= count_flips(clf, split, batch_size=batch_size, logits=logits[file])
    log.info("%s: accuracy %.2f%% vs fp32 %.2f%% (%+.2f pts), agreement %.2f%%", file, 100 * got["accuracy"],
             100 * ref["accuracy"], -100 * drop, 100 * agreement)
    if drop > max_drop and not allow_drop:
        raise QuantizationAccuracyError(
            f"{file}: accuracy {100 * got['accuracy']:.2f}% is {100 * drop:.2f} points below {fp32_file} "
            f"({100 * ref['accuracy']:.2f}%) on {got['n_eval']} examples; at most {100 * max_drop:.2f} allowed. "
            f"{DROP_ADVICE}")
    return report


def _snr(reference: np.ndarray, other: np.ndarray) -> float:
    from embslim.exporters.compare import snr_db

    return snr_db(reference, other)


# -- static (calibrated) int8, QDQ format -----------------------------------------------------
#
# Dynamic int8 (above) computes one activation scale per MatMul input from the batch it runs on,
# so a text's label can move with the texts batched beside it (issue #16: 9-15 of 872 SST-2 dev
# labels differ between batch 1 and batch 32). Static int8 fixes every activation scale once,
# from calibration texts, so a text's output does not depend on its batch.

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
_CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class StaticQuantizeConfig:
    """Static int8 per target: ONNX Runtime `quantize_static` in the QDQ format (QuantizeLinear /
    DequantizeLinear pairs that ORT's CPU provider fuses into integer kernels), u8 activations with
    scales calibrated on task text, weights as `TARGETS[target]` sets them (symmetric, per channel)."""

    target: Target
    # How activation ranges are read from the calibration run (ORT's CalibrationMethod): "minmax"
    # takes the extremes; "percentile" clips at `percentile` of a histogram; "entropy" picks the clip
    # that keeps the KL divergence lowest. The histogram methods need equal-length (padded) feeds.
    # Measured on an SST-2 DEP bundle from the unfused graph (872 dev sentences, fp32 82.57%):
    # minmax 82.45%, entropy 82.34%, percentile 81.88%; minmax also calibrates on unpadded texts.
    calibration_method: CalibrationMethod = "minmax"
    percentile: float = 99.999          # ORT's default for CalibPercentile
    # Texts (one per calibration run, unpadded) read from the start of the calibration set: ~100-300
    # is what ORT's examples use; more costs calibration time and memory, not accuracy here.
    calibration_size: int = 200
    per_channel: bool = True
    include_embeddings: bool = True
    validation_shapes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}; "
                             "pick the CPU the bundle will run on (arm64 for phones and ARM boards)")
        if self.calibration_method not in _CALIBRATION_METHODS:
            raise ValueError(f"calibration_method must be one of {', '.join(_CALIBRATION_METHODS)}, "
                             f"got {self.calibration_method!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile!r}; 99.999 is ORT's default")
        n = self.calibration_size
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"calibration_size must be a positive int (texts), got {n!r}; ~200 is enough")
        for name in ("per_channel", "include_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    bits = 8

    @property
    def variant(self) -> str:
        """The manifest's variant: "int8-static" (the target goes in its own field)."""
        return "int8-static"

    @property
    def file_name(self) -> str:
        """The bundle's file for this config, e.g. model.int8-static-arm64.onnx."""
        return f"model.int8-static-{self.target}.onnx"


def graph_input_names(path: str | Path) -> list[str]:
    """The names of `path`'s graph inputs that are fed (initializers listed as inputs left out)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def calibration_feeds(tokenizer_file: str | Path, texts: "Sequence[str]", *, input_names: "Sequence[str]",
                      max_length: int, pad_id: int = 0, pairs: "Sequence[str] | None" = None,
                      same_length: bool = False) -> list[dict[str, np.ndarray]]:
    """One feed per text (`[1, tokens]` int64 arrays for each name in `input_names`), tokenized as
    `embslim.runtime` does it (the bundle's tokenizer.json, truncation at `max_length`). Unpadded,
    so calibration sees real tokens only, unless `same_length`: then every feed is right-padded
    (`pad_id`, mask 0) to the longest, which ORT's histogram calibrators ("percentile",
    "entropy") need, as they stack every run's outputs into one array. Raises ValueError for an
    empty `texts`."""
    from embslim.runtime.tokens import load_tokenizer, pad_batch

    if not texts:
        raise ValueError("calibration needs at least one text; pass the task's training texts")
    tokenizer = load_tokenizer(tokenizer_file, max_length=max_length)
    dtypes = {name: np.dtype(np.int64) for name in input_names}
    encodings = [tokenizer.encode(text) if pairs is None else tokenizer.encode(text, pairs[i])
                 for i, text in enumerate(texts)]
    if not same_length:
        return [pad_batch([e], pad_id=pad_id, dtypes=dtypes) for e in encodings]
    padded = pad_batch(encodings, pad_id=pad_id, dtypes=dtypes)   # [n, longest] each
    return [{name: array[i:i + 1] for name, array in padded.items()} for i in range(len(encodings))]


def _static_reader(feeds: "Sequence[dict[str, np.ndarray]]"):
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        """ORT's calibration reader over prepared feeds (one text each)."""

        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    return _Feeds()


def _quantize_gathers(model: "onnx.ModelProto", out: Path, *, cfg: "StaticQuantizeConfig", exclude: list[str]) -> None:
    """quantize_dynamic restricted to Gather (weight-only: table to int8, DequantizeLinear after the
    Gather); integer index tables stay excluded."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = TARGETS[cfg.target]
    quantize_dynamic(model, out, op_types_to_quantize=["Gather"], per_channel=cfg.per_channel,
                     reduce_range=settings.reduce_range, weight_type=QuantType[settings.weight_type],
                     nodes_to_exclude=exclude, extra_options=_int8_extra_options())


def quantize_static_int8(model_in: str | Path, model_out: str | Path,
                         calibration: "Sequence[dict[str, np.ndarray]]", *,
                         cfg: StaticQuantizeConfig) -> QuantizeResult:
    """Static int8 of `model_in` into `model_out`: ONNX Runtime `quantize_static` (QDQ format) with
    activation ranges from running `model_in` on `calibration` (feeds from `calibration_feeds`,
    the first `cfg.calibration_size` used). MatMul and Gemm weights become int8 (QDQ); with
    `include_embeddings` the float Gather tables are stored as int8 the way `quantize_dynamic` does
    it (weight-only, dequantized after the Gather); integer index tables are excluded and checked
    afterwards as in `quantize`. ORT's QDQ quantizer has no rule for the fused Attention op, whose weights stay
    float: quantize the unfused model.onnx (what `embslim run --static-int8` does: measured as fast
    as dynamic int8 on the fused graph) or a graph fused without Attention (slower here). Raises
    QuantizationError like `quantize`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from embslim.exporters.compare import compare_onnx

    model_in, model_out = Path(model_in), Path(model_out)
    if not model_in.is_file():
        raise QuantizationError(f"{model_in} not found; pass an exported (or fused) model.onnx")
    if model_in.resolve() == model_out.resolve():
        raise QuantizationError(f"model_out must differ from model_in ({model_in}); e.g. {cfg.file_name}")
    feeds = list(calibration)[:cfg.calibration_size]
    if not feeds:
        raise QuantizationError("no calibration feeds; build them with calibration_feeds(tokenizer.json, train texts)")
    if cfg.calibration_method != "minmax" and len({tuple(a.shape for a in f.values()) for f in feeds}) > 1:
        raise QuantizationError(f"{cfg.calibration_method} calibration stacks every run's outputs, so its feeds must "
                                "have one shape; build them with calibration_feeds(..., same_length=True)")
    t0 = time.perf_counter()
    original = _load(model_in)
    tables = index_tables(original)
    excluded = sorted(tables)
    gathers = [n.name for n in original.graph.node if n.op_type in _GATHERS and n.name not in tables]
    if not cfg.include_embeddings:
        excluded += sorted(gathers)
    candidates = _float_weight_nodes(original)
    settings = TARGETS[cfg.target]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.calibration_method]
    extra = _int8_extra_options() | {
        "CalibPercentile": cfg.percentile,
        # QDQ's default per-channel axis for MatMul is the reduction axis; weights [in, out] are
        # quantized per output column, as quantize_dynamic does.
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        # Percentile/Entropy symmetrise activation ranges unless told not to; u8 activations with a
        # zero point use the full range of post-GELU/LayerNorm outputs better.
        "CalibTensorRangeSymmetric": False,
        # Biases stay float (Add after the integer MatMul): int32 bias needs the input's scale, which
        # the calibrator does not record for the pooler's Gemm (its input is a Gather of one token).
        "QuantizeBias": False,
    }
    log.info("static int8 of %s for %s: %d calibration texts, %s; index tables kept as they are: %s", model_in.name,
             cfg.target, len(feeds), cfg.calibration_method, ", ".join(f"{t} ({n})" for n, t in tables.items()) or "none")
    model_out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=model_out.parent, prefix=f".{model_out.name}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    # ORT writes the float model with its calibration outputs beside a temporary file; give it one
    # path it can own (a model already inside `original` would be saved without our node names).
    src = tmp.with_name(tmp.name + ".src.onnx")
    try:
        onnx.save(original, str(src))
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                quantize_static(str(src), str(tmp), _static_reader(feeds), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=["MatMul", "Gemm"], per_channel=cfg.per_channel,
                                reduce_range=settings.reduce_range, activation_type=QuantType.QUInt8,
                                weight_type=QuantType[settings.weight_type], nodes_to_exclude=excluded,
                                calibrate_method=method, extra_options=extra)
                if cfg.include_embeddings:
                    # Embedding tables as quantize_dynamic stores them: an int8 table, Gather, then
                    # DequantizeLinear of the gathered rows only. That involves no activation scale, so
                    # it is as batch-invariant as the rest; QDQ's own Gather rule puts the
                    # DequantizeLinear BEFORE the Gather, which ORT neither folds nor fuses: it
                    # dequantized the whole table on every run (measured 17 ms against 9.8 ms p50).
                    gathered = _load(tmp)
                    _quantize_gathers(gathered, tmp, cfg=cfg, exclude=excluded)
        except Exception as e:
            raise QuantizationError(f"static int8 of {model_in.name} ({cfg.target}, {cfg.calibration_method}) failed: "
                                    f"{type(e).__name__}: {e}") from e
        result_model = _check_output(original, tmp, tables, what=f"static int8 {model_in.name}",
                                     hint="try the dynamic int8 target instead")
        os.replace(tmp, model_out)
    finally:
        tmp.unlink(missing_ok=True)
        src.unlink(missing_ok=True)

    # QDQ keeps a weight as an int8 initializer read by DequantizeLinear: a node whose float weight
    # initializer is gone was quantized.
    left = _float_weight_nodes(result_model)
    floats_left = {w for _, ws in left.values() for w in ws}
    quantized = Counter(op for _, (op, ws) in candidates.items() if not any(w in floats_left for w in ws))
    try:
        comparison = compare_onnx(model_in, model_out, shapes=cfg.validation_shapes)
        snr, agreement = comparison.snr_db, comparison.agreement
    except ValueError as e:
        log.warning("no random-input comparison for %s: %s", model_out.name, e)
        snr, agreement = float("nan"), float("nan")
    seconds = time.perf_counter() - t0
    result = QuantizeResult(
        path=model_out, target=cfg.target, bits=8, bytes_in=model_in.stat().st_size,
        bytes_out=model_out.stat().st_size, quantized=dict(quantized), int4_nodes={},
        float_weights_left=dict(Counter(op for op, _ in left.values())), index_tables=tables,
        excluded_nodes=tuple(excluded), weight_bytes=weight_bytes(result_model),
        snr_db=snr, agreement=agreement, seconds=seconds)
    log.info("%s: %.2f MB -> %.2f MB (%.2fx) in %.1f s; quantized %s; output SNR vs input %.1f dB on random ids",
             model_out.name, result.bytes_in / 1e6, result.bytes_out / 1e6, result.bytes_out / result.bytes_in,
             seconds, dict(quantized), snr)
    return result
