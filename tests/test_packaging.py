"""One import package: the wheel installs only `embslim` (pipeline/, exporters/ and runtime/ become
embslim.pipeline, embslim.exporters, embslim.runtime), so it never overwrites another distribution's
top-level `runtime`, `pipeline` or `exporters`, and uninstalling it leaves them working."""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(out)], check=True, capture_output=True, timeout=300, cwd=out)
    return next(out.glob("embslim-*.whl"))


def test_the_wheel_has_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"embslim"}
    for sub in ("pipeline/cli.py", "exporters/onnx.py", "runtime/classifier.py", "pipeline/compress/messi.py"):
        assert f"embslim/{sub}" in names


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=300)


def test_installing_next_to_a_package_that_owns_runtime_leaves_it_working(tmp_path, wheel):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    other = tmp_path / "other"
    (other / "runtime").mkdir(parents=True)
    (other / "runtime" / "__init__.py").write_text('OWNER = "someone else"\n')
    (other / "setup.py").write_text("from setuptools import setup\nsetup(name='runtime-owner', version='1.0', "
                                    "packages=['runtime'])\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(other),
                    "-w", str(tmp_path / "whl")], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    assert _pip(venv, "install", "--no-index", *map(str, (tmp_path / "whl").glob("runtime_owner-*.whl"))).returncode == 0
    assert _pip(venv, "install", "--no-deps", str(wheel)).returncode == 0
    # embslim.runtime's own dependencies (onnxruntime, numpy, tokenizers) from this test's environment
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    (site_dir / "deps-from-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = str(venv / "bin" / "python")
    probe = ("import runtime, embslim.runtime; from embslim.runtime import Classifier; "
             "print(runtime.OWNER, '|', embslim.runtime.__file__)")
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    owner, where = proc.stdout.strip().split(" | ")
    assert owner == "someone else", "`import runtime` is the other package's, not embslim's"
    assert str(site_dir) in where and "embslim/runtime/__init__.py" in where
    assert _pip(venv, "uninstall", "-y", "embslim").returncode == 0
    proc = subprocess.run([python, "-c", "import runtime; print(runtime.OWNER)"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.stdout.strip() == "someone else", "uninstalling embslim leaves the other package intact"
