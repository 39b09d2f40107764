"""`kill -9` of a real `embslim run` (tiny model) in fine-tuning, export and quantization, then a
plain rerun: a valid bundle, and no `.partial-*` staging folder, `.trainer-*` folder or empty
`<out>.work` left. The stage is found from the run's own log lines ("[3/7] fine-tune ...")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embslim.pipeline.cli import main
from tiny_models import write_task_tsv

REPO = Path(__file__).resolve().parents[2]
STAGES = {"finetune": "[3/7] fine-tune", "export": "[4/7] export", "quantize": "[6/7] quantize"}


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_then_rerun_leaves_one_valid_bundle(stage, tmp_path, tiny_model_dir, tiny_task):
    from embslim.runtime import BundleError, Classifier

    train, dev = write_task_tsv(tmp_path / "data", tiny_task)
    out = tmp_path / "b"
    work = tmp_path / "b.work"
    # enough steps that fine-tuning is still running when the kill lands
    argv = ["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(out),
            "--max-steps", "40" if stage == "finetune" else "2", "--batch-size", "8", "--max-length", "32",
            "--no-baseline", "--no-measure", "--targets", "avx2"]
    proc = subprocess.Popen([sys.executable, "-m", "embslim.pipeline.cli", *argv], stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if STAGES[stage] in line and line.rstrip().endswith("..."):
                break
        else:
            pytest.fail("the run ended before reaching " + STAGES[stage] + ":\n" + "".join(log))
        # the stage has started: kill once it has something on disk
        if stage == "finetune":
            assert _wait_for(lambda: list(work.glob(".trainer-*"))), "no .trainer-* folder while fine-tuning"
        else:
            assert _wait_for(lambda: list(tmp_path.glob(".b.partial-*"))), "no staging folder while exporting"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run must not leave a bundle at --out"
    partial = list(tmp_path.glob(".b.partial-*"))
    if stage == "finetune":
        assert list(work.glob(".trainer-*")), "the kill should have left a .trainer-* folder for the rerun to clean"
    else:
        assert partial, "the kill should have left a staging folder for the rerun to clean"
    if stage == "export":
        # while exporting, the staging folder's manifest has a temporary name: nothing loads it
        for p in partial:
            with pytest.raises(BundleError):
                Classifier.from_bundle(p)

    assert main(argv + ["--force"]) == 0
    assert main(["inspect", str(out)]) == 0
    assert Classifier.from_bundle(out).logits(["a good movie"]).shape == (1, 2)
    left = [p.name for p in tmp_path.glob(".b.*")] + [p.name for p in work.glob(".trainer-*")]
    assert not left, left
    assert not list(out.glob(".embslim-staging")) and not list(out.glob(".manifest.staged.json"))
    assert (work / "vocab.json").is_file() and (work / "checkpoint-dep" / "model.safetensors").is_file()
