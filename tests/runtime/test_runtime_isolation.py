"""The runtime must work in an app that has only onnxruntime, numpy and tokenizers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tiny_bundle import make_tiny_bundle, make_tiny_embedding_bundle

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "runtime"
ALLOWED_THIRD_PARTY = {"onnxruntime", "numpy", "tokenizers", "runtime"}

# Runs in a fresh interpreter: torch, transformers and onnx (and the exporters' helpers)
# cannot be imported at all, as in an app that never installed them.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = {"torch", "transformers", "onnx", "onnxscript", "optimum", "safetensors"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker failed: {name} imported")
    """
)
CHILD = BLOCKER + textwrap.dedent(
    """
    from embslim.runtime import Classifier

    clf = Classifier.from_bundle(sys.argv[1], variant="auto", threads=1)
    preds = clf.predict(["a great movie", "the plot was awful"], top_k=2)
    assert len(preds) == 2 and all(p.label in clf.labels for p in preds), preds
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("OK", preds[0].label, round(preds[0].score, 4))
    """
)


EMBEDDER_CHILD = BLOCKER + textwrap.dedent(
    """
    from embslim.runtime import Embedder, load_bundle

    emb = Embedder.from_bundle(sys.argv[1], variant="auto", threads=1)
    vectors = emb.encode(["a great movie", "the plot was awful"])
    assert vectors.shape == (2, emb.dim) and type(load_bundle(sys.argv[1])) is Embedder
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("OK", vectors.shape)
    """
)


def _run_child(child: str, bundle: Path, cwd: Path) -> str:
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    result = subprocess.run([sys.executable, "-c", child, str(bundle)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_runtime_works_without_torch_transformers_or_onnx(tmp_path):
    assert _run_child(CHILD, make_tiny_bundle(tmp_path / "bundle"), tmp_path).startswith("OK ")


def test_embedder_works_without_torch_transformers_or_onnx(tmp_path):
    bundle = make_tiny_embedding_bundle(tmp_path / "bundle", dim=3)
    assert _run_child(EMBEDDER_CHILD, bundle, tmp_path).startswith("OK (2, 3)")


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # every import, including ones inside functions
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_runtime_source_imports_only_the_allowed_modules():
    files = sorted(RUNTIME.glob("*.py"))
    assert RUNTIME / "__init__.py" in files and RUNTIME / "classifier.py" in files
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY
    offending = {f.name: sorted(imported_top_level_names(f) - allowed) for f in files}
    offending = {name: bad for name, bad in offending.items() if bad}
    assert not offending, f"runtime/ may import only stdlib + {ALLOWED_THIRD_PARTY}: {offending}"
