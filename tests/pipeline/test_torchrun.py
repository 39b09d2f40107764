"""`embslim run` under torchrun: 2 CPU processes (gloo) fine-tune a pruned model with DDP (its remap
buffer is broadcast, so it must not be int16 while training), and rank 0 alone writes one bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from embslim.runtime import Classifier
from embslim.runtime.manifest import read_manifest, sha256_file
from tiny_models import write_task_tsv

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_cpu_ranks_write_one_valid_bundle(tmp_path, tiny_model_dir, tiny_task):
    from embslim.pipeline.data import subsample

    train, _ = write_task_tsv(tmp_path, type(tiny_task)(tiny_task.name, subsample(tiny_task.train, 80, seed=0),
                                                       tiny_task.eval, tiny_task.label_names, False))
    out = tmp_path / "bundle"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29531", "-m", "embslim", "run", "--model", str(tiny_model_dir),
           "--train", str(train), "--out", str(out), "--variant", "dep",
           "--variant", "messi:k=2,j=4", "--bundle-variant", "dep+messi(k=2,j=4)", "--no-baseline",
           "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-measure", "--targets", ""]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Invalid scalar type" not in proc.stderr
    assert proc.stdout.count("bundle: ") == 1, "only rank 0 reports the bundle"
    manifest = read_manifest(out)
    for entry in manifest["artifacts"]:
        assert sha256_file(out / entry["file"]) == entry["sha256"]
    ft = manifest["stages"]["finetune"]
    assert ft["dep"]["steps"] == ft["dep+messi(k=2,j=4)"]["steps"] == 5, "80 examples / (2 ranks x batch 8) = 5; 1 epoch"
    assert Classifier.from_bundle(out).predict(["a great movie"])[0].label in ("negative", "positive")
    assert not list(tmp_path.glob("bundle.work/.trainer-*")), "rank 0 removes the shared trainer folder"
    assert not list(tmp_path.glob(".bundle.partial-*"))
