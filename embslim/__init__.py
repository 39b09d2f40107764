"""embslim: prune and compress a Hugging Face text model's embedding, export it to ONNX and run it
with ONNX Runtime on x86 and ARM CPUs.

The subpackages live at the repository root (`pipeline/`, `exporters/`, `runtime/`) and install as
`embslim.pipeline`, `embslim.exporters` and `embslim.runtime` (pyproject's `package-dir`), so embslim
never owns a top-level name that another PyPI package may own. `embslim.runtime` needs only
onnxruntime, numpy and tokenizers; the other two need the `pipeline` extra.

In a source checkout that is not installed (or is installed editable from another checkout), the
subpackages are found beside this folder: the checkout's own code is what runs.
"""
from __future__ import annotations

from pathlib import Path as _Path

_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and all((_root / p / "__init__.py").is_file()
                                                for p in ("pipeline", "exporters", "runtime")):
    __path__.insert(0, str(_root))   # type: ignore[name-defined]  # the source layout
del _root, _Path

__version__ = "0.1.0"

# The Python API beside the CLI: the same typed configs `embslim run` builds from flags and files.
#     import embslim
#     cfg = embslim.RunConfig(model="out/my-classifier", data=embslim.DataConfig(texts=("app.txt",)),
#                             finetune=embslim.FinetuneConfig(enabled=False))
#     bundle = embslim.run(cfg, out="out/bundle")
# Imported on first use, so `import embslim` (and the torch-free runtime) stays light.
_API = {
    "run": "embslim.pipeline.run", "RunConfig": "embslim.pipeline.run", "VariantConfig": "embslim.pipeline.run",
    "config_from_dict": "embslim.pipeline.run", "load_config": "embslim.pipeline.run",
    "parse_variant": "embslim.pipeline.run", "DataConfig": "embslim.pipeline.data",
    "PruneConfig": "embslim.pipeline.vocab", "FinetuneConfig": "embslim.pipeline.finetune",
    "ValidateConfig": "embslim.pipeline.validate", "TargetsConfig": "embslim.pipeline.targets",
    "TASKS": "embslim.pipeline.tasks",
    # the runtime (torch-free) classes, also as embslim.Classifier etc.
    "Classifier": "embslim.runtime", "Embedder": "embslim.runtime", "Tagger": "embslim.runtime",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'embslim' has no attribute {name!r}")
