"""The sample apps need nothing beyond the runtime: the standard library, `embslim.runtime` and
themselves (so `pip install .` without extras is enough to run them)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

APPS = Path(__file__).resolve().parents[2] / "sample_apps"
ALLOWED = set(sys.stdlib_module_names) | {"embslim.runtime", "sample_apps"}


def _top(module: str) -> str:
    """`embslim.runtime.x` -> `embslim.runtime` (embslim.pipeline would need torch); else the top level."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "embslim" else parts[0]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(_top(node.module))
    return names


def test_sample_apps_import_only_stdlib_and_the_runtime():
    files = sorted(p for p in APPS.rglob("*.py") if "node_modules" not in p.parts)
    assert {p.name for p in files} >= {"classify.py", "serve.py", "metrics.py"}
    bad = {str(p.relative_to(APPS)): sorted(_imports(p) - ALLOWED) for p in files}
    assert not {k: v for k, v in bad.items() if v}, bad
