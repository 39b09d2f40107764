"""embslim.runtime.cpu: the CPU flags that decide the runtime's int8 session setting."""

from __future__ import annotations

from embslim.runtime.cpu import (
    _linux_flags,
    cpu_line,
    cpu_summary,
    has_int8_dot_product,
    is_x86,
    needs_exact_int8_rewrite,
)

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_1 avx avx2 fma\n"
VNNI = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
AVX_VNNI = "flags\t: fpu avx2 avx_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU implementer\t: 0x41\n"


def test_flags_are_read_from_cpuinfo_on_x86_and_arm():
    assert {"avx2", "sse4_1"} <= _linux_flags(AVX2_ONLY) and "avx512_vnni" not in _linux_flags(AVX2_ONLY)
    assert "avx512_vnni" in _linux_flags(VNNI)
    assert {"asimddp", "i8mm"} <= _linux_flags(ARM)
    assert _linux_flags("no flags here\n") == frozenset()


def test_the_rewrite_is_for_x86_without_an_int8_dot_product():
    assert needs_exact_int8_rewrite(_linux_flags(AVX2_ONLY), "x86_64")
    assert not needs_exact_int8_rewrite(_linux_flags(VNNI), "x86_64")
    assert not needs_exact_int8_rewrite(_linux_flags(AVX_VNNI), "AMD64")
    assert not needs_exact_int8_rewrite(_linux_flags(ARM), "aarch64")
    # flags unknown on x86: assume the least capable CPU (slower, never wrong)
    assert needs_exact_int8_rewrite(frozenset(), "x86_64")
    assert has_int8_dot_product(frozenset(), "arm64")


def test_summary_names_this_cpu():
    summary = cpu_summary()
    assert summary["x64quantprecision"] == ("1" if needs_exact_int8_rewrite() else "0")
    assert summary["int8_dot_product"] is has_int8_dot_product()
    assert is_x86(summary["machine"]) is is_x86()
    assert f"x64quantprecision {summary['x64quantprecision']}" in cpu_line()
