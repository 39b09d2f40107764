"""What the CPU this process runs on can do for int8 inference, read from the operating system.

Two uses:

- `needs_exact_int8_rewrite()` decides ONNX Runtime's `session.x64quantprecision` for every
  runtime session (`embslim.runtime.session.session_options`). On x86 CPUs without an int8
  dot-product instruction (SSE4.1, AVX2, AVX-512F without VNNI), MLAS's u8 x s8 GEMM uses
  VPMADDUBSW, whose 16-bit pair sums saturate when s8 weights leave [-64, 63]; the entry makes ORT
  rewrite those layers to u8 x u8, which is exact. With AVX-VNNI or AVX512-VNNI (VPDPBUSD, 32-bit
  accumulation) the u8 x s8 kernel is already exact, and the rewrite only costs time: on the
  AVX512-VNNI CPU of this project's machine, an SST-2 int8-arm64 file gave bit-identical logits
  with and without it on 200 dev sentences, and ran 2.4x slower with it (1 thread, batch 1 x 32
  tokens). ARM CPUs have no such kernel split.
- `cpu_summary()` is the line every benchmark table carries (model name, architecture, the flags
  that decide int8 kernels), because int8 latency ratios move with them.

Flags come from /proc/cpuinfo (Linux, Android) and `sysctl` (macOS). Where neither answers (e.g.
Windows on x86) the CPU is treated as lacking VNNI: the rewrite is then applied, which is slower
but never wrong.
"""

from __future__ import annotations

import functools
import platform
import subprocess

__all__ = ["cpu_flags", "cpu_line", "cpu_summary", "has_int8_dot_product", "is_x86", "needs_exact_int8_rewrite",
           "parse_cpuinfo", "read_cpuinfo"]

# Linux /proc/cpuinfo names (macOS sysctl names are mapped onto them in _macos_flags).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# The flags that decide which int8 kernels ONNX Runtime's MLAS picks on x86 (shown in summaries).
X86_INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_INT8_FLAGS = ("asimddp", "i8mm", "sve")


def is_x86(machine: str | None = None) -> bool:
    """True on x86-64 / x86 (`platform.machine()` or the given name)."""
    return (machine or platform.machine()).lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


# /proc/cpuinfo keys naming the CPU: x86 "model name"; ARM boards "Model" / "Hardware"; MIPS "cpu model".
# (x86's lower-case "model" is a number, so the match is case-sensitive.)
_MODEL_KEYS = ("model name", "Model", "Hardware", "cpu model")


@functools.lru_cache(maxsize=1)
def read_cpuinfo() -> str:
    """/proc/cpuinfo's text, read once per process ("" where there is none, e.g. macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def parse_cpuinfo(cpuinfo: str) -> tuple[str, frozenset[str]]:
    """(CPU model name or "", feature flags) of /proc/cpuinfo text: x86 "flags", ARM "Features";
    the first processor's entry of each."""
    model, flags = "", None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in _MODEL_KEYS and not model:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = frozenset(value.split())
    return model, flags or frozenset()


def _linux_flags(cpuinfo: str) -> frozenset[str]:
    return parse_cpuinfo(cpuinfo)[1]


def _macos_flags() -> frozenset[str]:
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names = {w.lower().replace(".", "_") for w in out.split()}
    rename = {"avx2_0": "avx2", "avx512vnni": "avx512_vnni", "avx512f": "avx512f", "avx512bw": "avx512bw"}
    return frozenset(rename.get(n, n) for n in names)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (e.g. {"avx2", "avx512_vnni", ...}); empty when the
    operating system does not say (then callers assume the least capable CPU)."""
    text = read_cpuinfo()
    if text:
        return _linux_flags(text)
    if platform.system() == "Darwin":
        return _macos_flags()
    return frozenset()


def has_int8_dot_product(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """True where ORT's u8 x s8 int8 GEMM is exact: x86 with AVX-VNNI, AVX512-VNNI or AMX-INT8, and
    every non-x86 CPU (ARM's int8 kernels accumulate in 32 bits). False on other x86 CPUs and on x86
    CPUs whose flags cannot be read."""
    if not is_x86(machine):
        return True
    return bool((cpu_flags() if flags is None else flags) & INT8_DOT_FLAGS)


def needs_exact_int8_rewrite(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether sessions should set ORT's `session.x64quantprecision` = "1": x86 without an int8
    dot-product instruction (see the module docstring)."""
    return is_x86(machine) and not has_int8_dot_product(flags, machine)


@functools.lru_cache(maxsize=1)
def cpu_summary() -> dict:
    """{"model": CPU model name or "", "machine": e.g. "x86_64", "int8_flags": [the present flags among
    X86_INT8_FLAGS / ARM_INT8_FLAGS], "int8_dot_product": bool, "x64quantprecision": "0" or "1"} for
    benchmark tables and reports."""
    model = parse_cpuinfo(read_cpuinfo())[0] or platform.processor()
    flags = cpu_flags()
    wanted = X86_INT8_FLAGS if is_x86() else ARM_INT8_FLAGS
    return {"model": model, "machine": platform.machine(), "int8_flags": [f for f in wanted if f in flags],
            "int8_dot_product": has_int8_dot_product(), "x64quantprecision": "1" if needs_exact_int8_rewrite() else "0"}


def cpu_line() -> str:
    """cpu_summary() as one line, e.g. "Intel Xeon (x86_64; avx2 avx512f avx512_vnni; x64quantprecision 0)"."""
    s = cpu_summary()
    return (f"{s['model'] or 'unknown CPU'} ({s['machine']}; {' '.join(s['int8_flags']) or 'no int8 flags read'}; "
            f"x64quantprecision {s['x64quantprecision']})")
