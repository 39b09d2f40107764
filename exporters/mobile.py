"""ONNX -> ORT format (.ort) for ONNX Runtime Mobile, plus the operator list for a reduced build.

`to_ort_format(model_onnx, out_dir)` runs ONNX Runtime's own converter
(`onnxruntime.tools.convert_onnx_models_to_ort`) with the "Fixed" optimization style, the one ORT
recommends for the CPU execution provider: graph optimizations are applied once, at conversion,
and saved, so the phone loads a graph that needs no optimizer (a minimal build has none). Use the
"Runtime" style only for NNAPI / Core ML, which this project does not target. With
`target_platform="arm"` (the default) the x86-only NCHWc layout transform is left out.

Outputs, in `out_dir`: `<model stem>.ort` (model.int8-arm64.onnx -> model.int8-arm64.ort) and
`required_operators.config`, the `--include_ops_by_config` input for building a reduced
onnxruntime that contains only the kernels this model uses. The .ort file is checked to load and
to agree with the ONNX file it came from before it is moved into place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, Sequence

log = logging.getLogger(__name__)

OPERATORS_CONFIG = "required_operators.config"


class MobileConversionError(ValueError):
    """The ORT-format conversion failed or its output disagrees with the ONNX model."""


def to_ort_format(model_onnx: str | Path, out_dir: str | Path, *,
                  target_platform: Literal["arm", "amd64"] = "arm",
                  atol: float = 1e-4, shapes: Sequence[tuple[int, int]] | None = None) -> tuple[Path, Path]:
    """Convert `model_onnx` to `out_dir/<stem>.ort` and write `out_dir/required_operators.config`.

    The .ort is compared with the ONNX model on random inputs: their logits must agree within
    `atol` (measured: identical, since ORT applies the same optimizations when it loads the .onnx),
    else MobileConversionError. An existing config in `out_dir` is replaced, not merged.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    # ORT's tools give their loggers level DEBUG when imported (onnxruntime.tools.logger.get_logger),
    # which bypasses the levels the embslim command sets: let them inherit those (WARNING unless -v).
    for name in ("ort_format_model.utils", "ort_format_model"):
        logging.getLogger(name).setLevel(logging.NOTSET)

    from embslim.exporters.compare import compare_onnx

    model_onnx, out_dir = Path(model_onnx), Path(out_dir)
    if model_onnx.suffix != ".onnx" or not model_onnx.is_file():
        raise MobileConversionError(f"{model_onnx} is not an existing .onnx file; pass e.g. bundle/model.int8-arm64.onnx")
    if target_platform not in ("arm", "amd64"):
        raise MobileConversionError(f"target_platform must be 'arm' or 'amd64', got {target_platform!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ort_path, config_path = out_dir / f"{model_onnx.stem}.ort", out_dir / OPERATORS_CONFIG
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ort-") as tmp_name:
        tmp = Path(tmp_name)
        # The converter treats every .onnx in the model's folder as a candidate only when given a
        # folder; give it a private copy (a link when possible) so it converts exactly one file.
        src = tmp / "src" / model_onnx.name
        src.parent.mkdir()
        try:
            os.link(model_onnx, src)
        except OSError:
            shutil.copyfile(model_onnx, src)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):   # the converter reports with print()
                convert_onnx_models_to_ort(src, output_dir=tmp / "out",
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=target_platform)
        except Exception as e:
            raise MobileConversionError(f"ORT-format conversion of {model_onnx.name} failed: {type(e).__name__}: {e}; "
                                        f"converter output: {printed.getvalue().strip()[-500:]}") from e
        for line in printed.getvalue().splitlines():
            log.debug("convert_onnx_models_to_ort: %s", line)
        made_ort = tmp / "out" / f"{model_onnx.stem}.ort"
        made_cfg = next((tmp / "out").glob("*.config"), None)
        if not made_ort.is_file() or made_cfg is None:
            raise MobileConversionError(f"the converter wrote no .ort or config for {model_onnx.name}: "
                                        f"{sorted(p.name for p in (tmp / 'out').iterdir())}")
        # Like with like: ORT cannot apply its x86 u8 x u8 rewrite (session.x64quantprecision) to an
        # .ort graph, so on x86 without VNNI the .onnx would run exact and the .ort saturating.
        # Compared without the rewrite on both sides they match exactly; on ARM there is no rewrite.
        comparison = compare_onnx(model_onnx, made_ort, exact_int8=False, shapes=shapes)
        if comparison.ok:
            comparison.add("values", comparison.max_abs_diff <= atol,
                           f"max |diff| {comparison.max_abs_diff:.2e}, atol {atol:g}")
        if not comparison.ok:
            raise MobileConversionError(f"{made_ort.name} does not match {model_onnx.name}: {comparison.failures()}")
        # The converter names the temporary .ort it read; name the shipped file instead.
        lines = [f"# - {ort_path.name}" if line.startswith("# - ") else line
                 for line in made_cfg.read_text(encoding="utf-8").splitlines()]
        made_cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(made_ort, ort_path)
        os.replace(made_cfg, config_path)
    log.info("wrote %s (%.2f MB, from %.2f MB .onnx) and %s", ort_path.name, ort_path.stat().st_size / 1e6,
             model_onnx.stat().st_size / 1e6, config_path.name)
    return ort_path, config_path
