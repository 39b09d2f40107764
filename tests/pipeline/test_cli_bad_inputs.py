"""Bad input to every `embslim` command: exit status 2, one line on stderr naming the input and the
fix, no traceback, no user file removed or changed, nothing bundle-like left at or beside --out.

The matrix runs in process via `main([...])`; a few cases run again as real subprocesses. Each case
builds its inputs (user folders, broken model folders, bad configs and data) in its own tmp_path,
and the tree of tmp_path and of the shared assets (a tiny model, its run's bundle, checkpoint and
vocabulary) is snapshotted before and compared after.

File-system cases use real file systems where this machine allows it: a read-only and a 96 KB
tmpfs are mounted when the tests run as root with mount rights (skipped otherwise). Disk-full is
also injected without a mount (`test_disk_full_while_committing_is_one_line`): `os.replace` is
patched to raise ENOSPC when the staged manifest is renamed, the last write of a bundle.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from embslim.pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["--max-steps", "2", "--batch-size", "8", "--max-length", "32"]
QUICK_RUN = [*FAST, "--no-baseline", "--targets", "", "--no-measure"]


# ------------------------------------------------------------------ shared assets


@dataclass
class Assets:
    root: Path
    model: Path
    train: Path
    dev: Path
    bundle: Path
    ckpt: Path
    vocab: Path


def _tsv(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_model_dir, tiny_task) -> Assets:
    root = tmp_path_factory.mktemp("assets")
    names = tiny_task.label_names
    train = _tsv(root / "data" / "train.tsv", [(t, names[y]) for t, y in zip(tiny_task.train.texts, tiny_task.train.labels)])
    dev = _tsv(root / "data" / "dev.tsv", [(t, names[y]) for t, y in zip(tiny_task.eval.texts, tiny_task.eval.labels)])
    bundle = root / "bundle"
    assert main(["run", "--model", str(tiny_model_dir), "--train", str(train), "--eval", str(dev), "--out", str(bundle),
                 *QUICK_RUN]) == 0
    work = root / "bundle.work"
    return Assets(root, tiny_model_dir, train, dev, bundle, work / "checkpoint-dep", work)


# ------------------------------------------------------------------ helpers for the cases


@dataclass
class Ctx:
    tmp: Path
    a: Assets
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def data(self) -> list[str]:
        return ["--train", str(self.a.train), "--eval", str(self.a.dev)]

    def run(self, *extra: str, out: Path | None = None, model: Path | None = None) -> list[str]:
        return ["run", "--model", str(model or self.a.model), *self.data(), "--out", str(out or self.out), *QUICK_RUN, *extra]

    def user_dir(self, name: str = "mine") -> Path:
        """A user's folder: a file and a subfolder with a file, which must survive everything."""
        d = self.tmp / name
        (d / "sub").mkdir(parents=True)
        (d / "notes.txt").write_text("x\n")
        (d / "sub" / "keep.txt").write_text("y\n")
        return d

    def user_file(self, name: str = "file.txt") -> Path:
        (self.tmp / name).write_text("a user's file\n")
        return self.tmp / name

    def config(self, body: str, *, data: bool = True) -> Path:
        head = f'model = "{self.a.model}"\n' + (f'[data]\ntrain = "{self.a.train}"\neval = "{self.a.dev}"\n' if data else "")
        path = self.tmp / "c.toml"
        path.write_text(body if body.startswith("#raw\n") else head + body)
        return path

    def model_copy(self, damage: Callable[[Path], None]) -> Path:
        d = self.tmp / "model"
        shutil.copytree(self.a.model, d)
        damage(d)
        return d

    def ckpt_copy(self, damage: Callable[[Path], None]) -> Path:
        d = self.tmp / "ckpt"
        shutil.copytree(self.a.ckpt, d)
        damage(d)
        return d

    def mount(self, opts: str) -> Path:
        """A fresh tmpfs (real file-system errors); skips where this process may not mount."""
        d = self.tmp / "mnt"
        d.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs root with mount rights for a tmpfs")
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(d)], check=False))
        return d


    def bundle_on_tmpfs(self, *, read_only: bool = False, full: bool = False) -> Path:
        """A copy of the bundle on its own tmpfs, then remounted read-only or filled up."""
        d = self.mount("size=8m")
        shutil.copytree(self.a.bundle, d / "b")
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        if full:
            _fill(d)
        return d / "b"


def _truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _labels(ctx: Ctx, labels: list[str], *, name: str = "bad.tsv") -> Path:
    texts = ["good movie", "bad film", "great story", "awful plot", "fun acting", "dull music"]
    return _tsv(ctx.tmp / name, [(texts[i % len(texts)], lab) for i, lab in enumerate(labels)])


def _run_with_train(ctx: Ctx, train: Path, cmd: str = "run") -> list[str]:
    data = ["--train", str(train), "--eval", str(ctx.a.dev)]
    if cmd == "run":
        return ["run", "--model", str(ctx.a.model), *data, "--out", str(ctx.out), *QUICK_RUN]
    if cmd == "prune":
        return ["prune", "--model", str(ctx.a.model), *data, "--out", str(ctx.out)]
    if cmd == "finetune":
        return ["finetune", "--model", str(ctx.a.model), *data, *FAST, "--out", str(ctx.out)]
    if cmd == "validate":
        return ["validate", str(ctx.a.bundle), *data, "--no-measure"]
    if cmd == "quantize":
        return ["quantize", str(ctx.a.bundle), *data, "--targets", "avx2", "--no-measure"]
    raise ValueError(cmd)


NAN_LABELS = ["positive", "negative", "NaN", "positive", "negative", "nan"]

# (id, argv built in the case's folder, what the one line must say)
CASES: list[tuple[str, Callable[[Ctx], list[str]], str]] = [
    # 1. --force replaces only embslim's own outputs, in every command that writes
    ("run-force-user-folder", lambda c: c.run("--force", out=c.user_dir()), r"mine exists and is not a bundle.*even with --force"),
    ("run-user-folder-no-force", lambda c: c.run(out=c.user_dir()), r"mine exists and is not a bundle"),
    ("run-force-foreign-manifest", lambda c: c.run("--force", out=_foreign_manifest(c)), r"app exists and is not a bundle"),
    ("run-existing-bundle-no-force", lambda c: c.run(out=_bundle_copy(c)), r"copy already exists; pass --force"),
    ("run-work-folder-is-users", lambda c: c.run(out=_user_work(c)), r"work folder .*out\.work exists and is not embslim's work folder"),
    ("export-force-user-folder", lambda c: ["export", str(c.a.ckpt), "--out", str(c.user_dir()), "--force"], r"mine exists and is not a bundle"),
    ("prune-force-user-folder", lambda c: ["prune", "--model", str(c.a.model), *c.data(), "--out", str(c.user_dir()), "--force"],
     r"mine exists and is not a vocabulary folder"),
    ("prune-existing-no-force", lambda c: ["prune", "--model", str(c.a.model), *c.data(), "--out", str(c.user_dir())],
     r"mine exists and is not a vocabulary folder"),
    ("finetune-force-user-folder", lambda c: ["finetune", "--model", str(c.a.model), *c.data(), *FAST, "--out", str(c.user_dir()),
                                              "--force"], r"mine exists and is not a checkpoint"),
    ("finetune-force-bundle", lambda c: ["finetune", "--model", str(c.a.model), *c.data(), *FAST, "--out", str(_bundle_copy(c)),
                                         "--force"], r"copy exists and is not a checkpoint"),
    ("compare-force-user-folder", lambda c: ["compare", str(c.a.bundle), str(c.a.bundle), "--out", str(c.user_dir()), "--force"],
     r"mine exists and is not a report folder"),
    ("compare-force-bundle", lambda c: ["compare", str(c.a.bundle), "--out", str(_bundle_copy(c)), "--force"],
     r"copy exists and is not a report folder"),
    ("report-force-user-folder", lambda c: ["report", str(c.a.bundle), "--out", str(c.user_dir()), "--force"],
     r"mine exists and is not a report folder"),
    ("quantize-user-folder", lambda c: ["quantize", str(c.user_dir()), *c.data(), "--targets", "avx2"], r"no manifest\.json"),
    ("inspect-user-folder", lambda c: ["inspect", str(c.user_dir())], r"no manifest\.json.*embslim bundle"),
    ("validate-user-folder", lambda c: ["validate", str(c.user_dir()), *c.data(), "--no-measure"], r"no manifest\.json"),
    # --out is a file, or under a file
    ("run-out-is-file", lambda c: c.run(out=c.user_file()), r"--out .*file\.txt is a file, not a folder"),
    ("export-out-is-file", lambda c: ["export", str(c.a.ckpt), "--out", str(c.user_file()), "--force"], r"file\.txt is a file"),
    ("run-out-under-file", lambda c: c.run(out=c.user_file() / "b"), r"file\.txt is a file, not a folder"),
    ("export-out-under-file", lambda c: ["export", str(c.a.ckpt), "--out", str(c.user_file() / "b")], r"file\.txt is a file"),
    ("prune-out-under-file", lambda c: ["prune", "--model", str(c.a.model), *c.data(), "--out", str(c.user_file() / "v")],
     r"file\.txt is a file"),
    ("finetune-out-under-file", lambda c: ["finetune", "--model", str(c.a.model), *c.data(), *FAST, "--out",
                                           str(c.user_file() / "ck")], r"file\.txt is a file"),
    ("compare-out-under-file", lambda c: ["compare", str(c.a.bundle), "--out", str(c.user_file() / "r")], r"file\.txt is a file"),
    ("report-out-under-file", lambda c: ["report", str(c.a.bundle), "--out", str(c.user_file() / "r")], r"file\.txt is a file"),
    ("validate-json-under-file", lambda c: ["validate", str(c.a.bundle), *c.data(), "--no-measure", "--json",
                                            str(c.user_file() / "m.json")], r"m\.json: Not a directory; a part of the path is a file"),
    # read-only file system (a real ro tmpfs)
    ("run-read-only-out", lambda c: c.run(out=c.mount("ro,size=1m") / "b"), r"mnt is not writable; choose a writable --out"),
    ("export-read-only-out", lambda c: ["export", str(c.a.ckpt), "--out", str(c.mount("ro,size=1m") / "b")], r"mnt is not writable"),
    ("compare-read-only-out", lambda c: ["compare", str(c.a.bundle), "--out", str(c.mount("ro,size=1m") / "r")], r"mnt is not writable"),
    # disk full while writing (a real 96 KB tmpfs: the model does not fit)
    ("export-disk-full", lambda c: ["export", str(c.a.ckpt), "--out", str(c.mount("size=96k") / "b")],
     r"No space left on device; the disk is full"),
    ("prune-disk-full", lambda c: ["prune", "--model", str(c.a.model), *c.data(), "--out", str(_fill(c.mount("size=64k")) / "v")],
     r"No space left on device; the disk is full"),
    ("quantize-read-only-bundle", lambda c: ["quantize", str(c.bundle_on_tmpfs(read_only=True)), *c.data(), "--targets", "avx2"],
     r"mnt is not writable; choose a writable bundle"),
    ("quantize-disk-full", lambda c: ["quantize", str(c.bundle_on_tmpfs(full=True)), *c.data(), "--targets", "avx2",
                                      "--no-measure"], r"No space left on device; the disk is full"),
    # 2. label sets that cannot train a classifier
    ("run-one-class", lambda c: _run_with_train(c, _labels(c, ["positive"] * 6)), r"every training row has the label 'positive'.*two classes"),
    ("prune-one-class", lambda c: _run_with_train(c, _labels(c, ["negative"] * 6), "prune"), r"every training row has the label"),
    ("finetune-one-class", lambda c: _run_with_train(c, _labels(c, ["negative"] * 6), "finetune"), r"every training row has the label"),
    ("run-nan-labels", lambda c: _run_with_train(c, _labels(c, NAN_LABELS)), r"2 row\(s\) have a missing label \('NaN', 'nan'\).*bad\.tsv:4, .*bad\.tsv:7"),
    ("run-none-label", lambda c: _run_with_train(c, _labels(c, ["positive", "None", "negative"])), r"missing label \('None'\).*bad\.tsv:3"),
    ("run-null-label", lambda c: _run_with_train(c, _labels(c, ["positive", "negative", "null"])), r"missing label \('null'\).*bad\.tsv:4"),
    ("run-empty-label", lambda c: _run_with_train(c, _labels(c, ["positive", "", "negative"])), r"bad\.tsv:3: empty label.*fill it in"),
    ("run-json-null-label", lambda c: _run_with_train(c, _jsonl(c, [{"sentence": "good", "label": None}])), r"bad\.jsonl:1: label must be"),
    ("finetune-nan-labels", lambda c: _run_with_train(c, _labels(c, NAN_LABELS), "finetune"), r"missing label"),
    ("validate-nan-labels", lambda c: _run_with_train(c, _labels(c, NAN_LABELS), "validate"), r"missing label"),
    ("quantize-one-class", lambda c: _run_with_train(c, _labels(c, ["positive"] * 6), "quantize"), r"every training row has the label"),
    # 6. broken model folders
    ("run-model-no-tokenizer", lambda c: c.run(model=c.model_copy(_drop_tokenizer)), r"has no tokenizer files.*copy them"),
    ("finetune-model-no-tokenizer", lambda c: ["finetune", "--model", str(c.model_copy(_drop_tokenizer)), *c.data(), *FAST,
                                               "--out", str(c.out)], r"has no tokenizer files"),
    ("run-model-truncated-weights", lambda c: c.run(model=c.model_copy(lambda d: _truncate(d / "model.safetensors"))),
     r"model\.safetensors is truncated or damaged.*again"),
    ("prune-model-truncated-weights", lambda c: ["prune", "--model", str(c.model_copy(lambda d: _truncate(d / "model.safetensors"))),
                                                 *c.data(), "--out", str(c.out)], r"model\.safetensors is truncated"),
    ("run-model-config-not-json", lambda c: c.run(model=c.model_copy(lambda d: (d / "config.json").write_text("{not json"))),
     r"config\.json is not valid JSON.*copy the model's config\.json again"),
    ("run-model-no-config", lambda c: c.run(model=c.model_copy(lambda d: (d / "config.json").unlink())), r"has no config\.json"),
    ("prune-model-tokenizer-garbage", lambda c: ["prune", "--model", str(c.model_copy(lambda d: (d / "tokenizer.json").write_text("x"))),
                                                 *c.data(), "--out", str(c.out)], r"tokenizer files in .*model' cannot be read"),
    ("prune-model-weights-do-not-fit", lambda c: ["prune", "--model", str(c.model_copy(lambda d: _edit_config(d, hidden_size=64))),
                                                  *c.data(), "--out", str(c.out)],
     r"weights in .*model' do not fit its config\.json: \d+ encoder weight\(s\) missing or of another shape"),
    ("run-model-no-weights", lambda c: c.run(model=c.model_copy(lambda d: (d / "model.safetensors").unlink())),
     r"model' is not a loadable Hugging Face model folder \(OSError: Error no file named"),
    ("run-model-unsupported-family", lambda c: c.run(model=c.model_copy(lambda d: _edit_config(d, model_type="gpt2", n_embd=32, n_layer=1,
                                                                                                n_head=2))),
     r"model type 'gpt2' is not supported yet"),
    ("export-ckpt-meta-without-labels", lambda c: ["export", str(c.ckpt_copy(lambda d: (d / "embslim_meta.json").write_text("{}"))),
                                                   "--out", str(c.out)], r"embslim_meta\.json lacks the task's labels"),
    ("run-model-missing", lambda c: c.run(model=c.tmp / "nope"), r"model folder .*nope' does not exist"),
    ("export-ckpt-truncated", lambda c: ["export", str(c.ckpt_copy(lambda d: _truncate(d / "model.safetensors"))), "--out",
                                         str(c.out)], r"checkpoint .*ckpt is damaged or incomplete.*embslim finetune"),
    ("export-ckpt-config-not-json", lambda c: ["export", str(c.ckpt_copy(lambda d: (d / "config.json").write_text("{"))), "--out",
                                               str(c.out)], r"ckpt is damaged or incomplete"),
    ("export-not-a-checkpoint", lambda c: ["export", str(c.user_dir()), "--out", str(c.out)], r"config\.json is missing.*embslim finetune"),
    # 8. max length
    ("run-max-length-zero", lambda c: c.run("--max-length", "0"), r"max_length must be >= 1, got 0"),
    ("finetune-max-length-negative", lambda c: ["finetune", "--model", str(c.a.model), *c.data(), "--max-steps", "1",
                                                "--max-length", "-5", "--out", str(c.out)], r"max_length must be >= 1, got -5"),
    # 9. config values of the wrong type
    ("config-section-scalar", lambda c: ["run", "--config", str(c.config("finetune = 3\n", data=False)), "--out", str(c.out)],
     r"\[finetune\] of .*c\.toml must be a table of options, got int 3; e\.g\. \[finetune\]"),
    ("config-epochs-string", lambda c: ["run", "--config", str(c.config('[finetune]\nepochs = "one"\n')), "--out", str(c.out)],
     r"\[finetune\] of .*: epochs must be a number, got str 'one'; e\.g\. epochs = 1"),
    ("config-targets-string", lambda c: ["run", "--config", str(c.config('[targets]\ntargets = "avx2"\n')), "--out", str(c.out)],
     r"targets must be a list of values from 'arm64', 'avx2', 'avx512-vnni', got str 'avx2'; e\.g\. targets = \[\"avx2\"\]"),
    ("config-list-for-number", lambda c: ["run", "--config", str(c.config("[finetune]\nbatch_size = [8, 16]\n")), "--out", str(c.out)],
     r"batch_size must be an integer, got list \[8, 16\]; e\.g\. batch_size = "),
    ("config-bool-string", lambda c: ["run", "--config", str(c.config('[validate]\nmeasure = "yes"\n')), "--out", str(c.out)],
     r"measure must be true or false, got str 'yes'; e\.g\. measure = true"),
    ("config-variants-string", lambda c: ["run", "--config", str(c.config('variants = "dep"\n[data]\ntrain = "x"\n', data=False)),
                                          "--out", str(c.out)], r"variants in .* must be a list of tables"),
    ("config-out-number", lambda c: ["run", "--config", str(c.config("out = 3\n", data=False))], r"out in .* must be a string"),
    ("config-unknown-key", lambda c: ["run", "--config", str(c.config("[finetune]\nepoch = 1\n")), "--out", str(c.out)],
     r"unknown option\(s\) epoch in \[finetune\]"),
    ("config-not-toml", lambda c: ["run", "--config", str(c.config("#raw\n[finetune\n")), "--out", str(c.out)], r"is not valid TOML"),
    ("config-train-number", lambda c: ["run", "--config", str(c.config("[data]\ntrain = 5\n", data=False)), "--out", str(c.out)],
     r"train must be a string \(or omitted\), got int 5"),
    ("run-variant-unknown-option", lambda c: c.run("--variant", "messi:depth=3"), r"messi options are: k, j, keep"),
    ("run-variant-bad-value", lambda c: c.run("--variant", "messi:k=-1"), r"messi: k \(number of subspaces\) must be an int >= 1, got -1"),
    # other commands' inputs
    ("inspect-missing", lambda c: ["inspect", str(c.tmp / "nope")], r"nope' does not exist"),
    ("validate-missing-artifact", lambda c: ["validate", str(c.a.bundle), *c.data(), "--file", "model.int8-avx2.onnx", "--no-measure"],
     r"model\.int8-avx2\.onnx"),
    ("quantize-unknown-target", lambda c: ["quantize", str(c.a.bundle), *c.data(), "--targets", "avx3"], r"unknown target\(s\) avx3"),
    ("quantize-budget-no-mix-meets", lambda c: ["quantize", str(c.a.bundle), *c.data(), "--targets", "avx2", "--max-bytes", "1KB"],
     r"max_bytes 1,000 bytes is below the smallest mixed file this model can give"),
    ("compare-not-a-bundle", lambda c: ["compare", str(c.user_dir()), "--out", str(c.out)], r"no report at .*mine"),
    ("finetune-vocab-missing", lambda c: ["finetune", "--model", str(c.a.model), "--vocab", str(c.tmp / "nov"), *c.data(), *FAST,
                                          "--out", str(c.out)], r"vocab\.json not found; run `embslim prune` first"),
]


def _foreign_manifest(c: Ctx) -> Path:
    d = c.user_dir("app")
    (d / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": []}))
    return d


def _bundle_copy(c: Ctx) -> Path:
    shutil.copytree(c.a.bundle, c.tmp / "copy")
    return c.tmp / "copy"


def _user_work(c: Ctx) -> Path:
    c.user_dir("out.work")
    return c.out


def _drop_tokenizer(d: Path) -> None:
    for f in d.iterdir():
        if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
            f.unlink()


def _edit_config(d: Path, **changes) -> None:
    (d / "config.json").write_text(json.dumps(json.loads((d / "config.json").read_text()) | changes))


def _jsonl(c: Ctx, rows: list[dict]) -> Path:
    path = c.tmp / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fill(d: Path) -> Path:
    """Fill the tmpfs up, then free one page: room to start writing, not to finish."""
    chunks = d / "filler"
    chunks.mkdir()
    try:
        for i in range(10_000):
            (chunks / str(i)).write_bytes(b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    (chunks / "0").unlink()
    return d


# ------------------------------------------------------------------ checks


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file (content hash, mode) and folder under `roots`, hidden ones included."""
    tree: dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                tree[os.path.join(dirpath, d)] = ("dir",)
            for f in filenames:
                p = os.path.join(dirpath, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    tree[p] = ("other",)
                    continue
                tree[p] = ("file", hashlib.sha1(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mode)
    return tree


def assert_no_bundle_left(folder: Path) -> None:
    """No staging or aside folder, and no folder with a manifest except those that were there."""
    leftovers = [p for p in folder.rglob("*") if re.search(r"\.(partial|old)-", p.name) or p.name == ".manifest.staged.json"]
    assert not leftovers, leftovers


def check_one_line(err: str, command: str, message: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"embslim {command}: error: "), lines[0]
    assert re.search(message, lines[0]), f"{message!r} not in: {lines[0]}"


@pytest.mark.parametrize("case, build, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, build, message, tmp_path, assets, capsys):
    ctx = Ctx(tmp_path, assets)
    try:
        argv = build(ctx)
        before = snapshot(tmp_path, assets.root)
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        check_one_line(err, argv[0], message)
        assert snapshot(tmp_path, assets.root) == before, "a file was created, removed or changed"
        assert_no_bundle_left(tmp_path)
    finally:
        for cleanup in ctx.cleanups:
            cleanup()


def test_the_matrix_covers_every_command():
    commands = {c[0].split("-")[0] for c in CASES}
    assert {"run", "prune", "finetune", "export", "validate", "quantize", "inspect", "report", "compare"} <= commands | {"config"}
    assert len(CASES) >= 50


SUBPROCESS_CASES = ["run-force-user-folder", "run-one-class", "config-targets-string", "export-ckpt-truncated"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_in_a_real_subprocess(case, tmp_path, assets):
    build, message = next((b, m) for i, b, m in CASES if i == case)
    ctx = Ctx(tmp_path, assets)
    argv = build(ctx)
    before = snapshot(tmp_path, assets.root)
    proc = subprocess.run([sys.executable, "-m", "embslim.pipeline.cli", *argv], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # progress lines ("12:00:00 INFO embslim...: [1/7] ...") also go to stderr; the error is the one other line
    errors = [line for line in proc.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d (INFO|DEBUG) ", line)]
    check_one_line("\n".join(errors), argv[0], message)
    assert snapshot(tmp_path, assets.root) == before
    assert_no_bundle_left(tmp_path)


# A runtime-only install: the pipeline extra's modules cannot be imported.
_BLOCK = """
import sys, importlib.abc
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
for m in list(sys.modules):
    if m.split(".")[0] in BLOCKED:
        del sys.modules[m]
sys.meta_path.insert(0, Block())
from embslim.pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["run", "report"])
def test_runtime_only_install_names_the_extra(command, tmp_path, assets):
    from embslim.pipeline.cli import _PIPELINE_MODULES

    argv = (Ctx(tmp_path, assets).run() if command == "run" else ["report", str(assets.bundle), "--out", str(tmp_path / "r")])
    proc = subprocess.run([sys.executable, "-c", _BLOCK.format(blocked=sorted(_PIPELINE_MODULES)), *argv], capture_output=True,
                          text=True, env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    check_one_line(proc.stderr, command, r"needs the pipeline extra \(missing module '(torch|matplotlib|transformers)'\): "
                                         r"pip install \"embslim\[pipeline\]\"")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ the fixes that make good input work


def test_force_replaces_an_earlier_bundle_and_bundles_follow_the_umask(tmp_path, assets):
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(assets.bundle.stat().st_mode) == 0o777 & ~mask, "not drwx------ from a private staging folder"
    for f in assets.bundle.iterdir():
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044 & ~mask, f
    out = _bundle_copy(Ctx(tmp_path, assets))
    (out / "stale.txt").write_text("from the old bundle")
    assert main(["export", str(assets.ckpt), "--out", str(out), "--force"]) == 0
    assert (out / "manifest.json").is_file() and not (out / "stale.txt").exists()
    assert not (out / ".embslim-staging").exists() and not (out / ".manifest.staged.json").exists()
    assert_no_bundle_left(tmp_path)


def test_disk_full_while_committing_is_one_line(tmp_path, assets, capsys, monkeypatch):
    """ENOSPC injected into the real write path (no mount needed): os.replace fails when the staged
    manifest is renamed into place, the bundle's last write. Exit 2, nothing at or beside --out."""
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if str(src).endswith(".manifest.staged.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    assert main(["export", str(assets.ckpt), "--out", str(tmp_path / "b")]) == 2
    check_one_line(capsys.readouterr().err, "export", r"manifest\.json: No space left on device; the disk is full")
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_staging_never_holds_a_loadable_manifest(tmp_path, assets):
    from embslim.pipeline.bundle import export_model, BundleMeta, expose_manifest, staged_bundle
    from embslim.pipeline.embedding import load_checkpoint
    from embslim.runtime import BundleError, Classifier

    model, tokenizer, meta = load_checkpoint(assets.ckpt)
    with pytest.raises(RuntimeError, match="stop"):
        with staged_bundle(tmp_path / "b") as stage:
            export_model(model, tokenizer, stage, meta=BundleMeta.from_json(meta))
            with pytest.raises(BundleError, match="no manifest.json|is an unfinished bundle"):
                Classifier.from_bundle(stage)
            assert main(["inspect", str(stage)]) == 2
            expose_manifest(stage)   # what run's validate stage does: embslim's own checks may load it now
            assert Classifier.from_bundle(stage, staging=True).predict(["a great movie"])
            with pytest.raises(BundleError, match="is an unfinished bundle .* never loaded: run the command again"):
                Classifier.from_bundle(stage)                 # ... but no one else, even then
            assert main(["inspect", str(stage)]) == 2
            raise RuntimeError("stop")
    assert not list(tmp_path.iterdir())


def test_stale_staging_of_a_dead_process_is_removed_and_others_kept(tmp_path, assets):
    from embslim.pipeline.bundle import STAGING_MARKER, clean_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".b.partial-{dead}-abcd"
    shutil.copytree(assets.bundle, stale)
    (stale / STAGING_MARKER).write_text(json.dumps({"pid": int(dead)}))
    live = tmp_path / ".b.partial-1-beef"            # pid 1 is alive: someone else's write in progress
    live.mkdir()
    (live / STAGING_MARKER).write_text(json.dumps({"pid": 1}))
    users = tmp_path / ".b.partial-mine"              # the pattern without the marker: not ours
    users.mkdir()
    assert clean_stale(tmp_path / "b") == [stale]
    assert live.is_dir() and users.is_dir()


def test_resume_on_a_torn_checkpoint_fine_tunes_again(tmp_path, assets, caplog):
    out = tmp_path / "b"
    shutil.copytree(assets.bundle, out)
    shutil.copytree(assets.root / "bundle.work", tmp_path / "b.work")
    _truncate(tmp_path / "b.work" / "checkpoint-dep" / "model.safetensors")
    caplog.set_level("INFO")
    assert main(["run", "--model", str(assets.model), "--train", str(assets.train), "--eval", str(assets.dev), "--out", str(out),
                 *QUICK_RUN, "--resume", "--force"]) == 0
    assert "fine-tuning again" in caplog.text
    from embslim.pipeline.embedding import load_checkpoint

    load_checkpoint(tmp_path / "b.work" / "checkpoint-dep")   # rewritten whole
    assert_no_bundle_left(tmp_path)


def test_finetune_clamps_max_length_to_the_models_positions(tmp_path, assets, caplog):
    caplog.set_level("WARNING")
    assert main(["finetune", "--model", str(assets.model), "--train", str(assets.train), "--eval", str(assets.dev),
                 "--max-steps", "1", "--batch-size", "8", "--max-length", "100000", "--out", str(tmp_path / "ck")]) == 0
    assert "--max-length 100000 is more than the model's 128 positions; using 128" in caplog.text
    meta = json.loads((tmp_path / "ck" / "embslim_meta.json").read_text())
    assert meta["max_length"] == 128
    assert main(["export", str(tmp_path / "ck"), "--out", str(tmp_path / "b")]) == 0


def test_a_model_with_one_token_type_exports_without_token_type_ids(tmp_path):
    """type_vocab_size = 1 with a BERT tokenizer (which makes type ids): on a pair task the type-1 ids
    have no embedding row, so the tokenizer stops making them and the graph does not take them."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from embslim.runtime import Classifier
    from tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        emb = model.bert.embeddings
        emb.token_type_embeddings = torch.nn.Embedding(1, config["hidden_size"])
    model.config.type_vocab_size = 1
    model.save_pretrained(model_dir)
    rows = [("good movie", "great film", "yes"), ("bad film", "good story", "no"), ("fun plot", "fun acting", "yes"),
            ("dull music", "great music", "no")] * 4
    train = _tsv(tmp_path / "pairs.tsv", [tuple(r) for r in rows], header="a\tb\tlabel")
    out = tmp_path / "b"
    assert main(["run", "--model", str(model_dir), "--train", str(train), "--text-column", "a", "--text-pair-column", "b",
                 "--new-head", "--out", str(out), *QUICK_RUN]) == 0
    clf = Classifier.from_bundle(out)
    assert clf.input_names == ("input_ids", "attention_mask")
    assert clf.logits(["good movie"], ["bad film"]).shape == (1, 2)
    # the checkpoint reloads with the same rule: PyTorch parity on the pair task, and a second export
    ckpt = tmp_path / "b.work" / "checkpoint-dep"
    assert main(["validate", str(out), "--train", str(train), "--text-column", "a", "--text-pair-column", "b",
                 "--checkpoint", str(ckpt), "--no-measure"]) == 0
    assert main(["export", str(ckpt), "--out", str(tmp_path / "b2")]) == 0


def test_quantize_rewrites_the_report_and_manifest_for_the_files_it_rebuilt(tmp_path, assets):
    """A re-quantized bundle's report and manifest describe the new files (new-user trial: they kept the
    old SmoothQuant alpha and the old targets settings)."""
    import json

    bundle = _bundle_copy(Ctx(tmp_path, assets))
    base = [*"--train {} --eval {} --targets avx2 --allow-drop --no-measure".split()]
    base[1], base[3] = str(assets.train), str(assets.dev)
    stages = json.loads((bundle / "manifest.json").read_text())["stages"]
    chosen, run_targets = stages["bundle_variant"], stages["targets"]
    assert main(["quantize", str(bundle), *base, "--smooth-alpha", "0.5", "--mobile"]) == 0
    assert (bundle / "model.int8-avx2.ort").is_file()
    report = json.loads((bundle / "report.json").read_text())
    rows = [v for v in report["variants"] if v.get("file") == "model.int8-avx2.onnx"]
    assert [(r["name"], r["base"], r["smooth_quant"]["alpha"]) for r in rows] == [(f"{chosen} int8-avx2", chosen, 0.5)]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["stages"]["targets"]["targets"] == ["avx2"] and manifest["stages"]["targets"]["smooth_alpha"] == 0.5
    assert manifest["metrics"][f"{chosen} int8-avx2"]["smooth_quant"]["alpha"] == 0.5
    assert f"{chosen} int8-avx2: alpha 0.5" in (bundle / "report.md").read_text()
    assert main(["quantize", str(bundle), *base]) == 0     # again, no SmoothQuant flag: the last build's alpha is kept
    report = json.loads((bundle / "report.json").read_text())
    rows = [v for v in report["variants"] if v.get("file") == "model.int8-avx2.onnx"]
    assert len(rows) == 1 and rows[0]["smooth_quant"]["alpha"] == 0.5   # the row is replaced, not added
    manifest = json.loads((bundle / "manifest.json").read_text())
    kept = manifest["stages"]["targets"]["kept_from_earlier_runs"]
    # what the kept files were built with: embslim run's settings, not the first quantize's (alpha 0.5)
    assert kept and manifest["stages"]["kept_built_with"] == {f: run_targets for f in kept}
    # the .ort was converted from the int8 file just replaced: gone from the folder, manifest and report
    assert not (bundle / "model.int8-avx2.ort").exists() and not (bundle / "required_operators.config").exists()
    assert not any(str(a["file"]).endswith(".ort") for a in manifest["artifacts"])
    assert not any(str(v.get("file")).endswith(".ort") for v in report["variants"])
    assert "removed model.int8-avx2.ort, required_operators.config (converted from the int8 file it replaced)" in report["notes"][-1]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC: embslim quantize rebuilt ", report["notes"][-1])   # dated: runs pile up
    assert main(["quantize", str(bundle), *base, "--no-smooth-quant"]) == 0     # plain, as the flag asks
    report = json.loads((bundle / "report.json").read_text())
    rows = [v for v in report["variants"] if v.get("file") == "model.int8-avx2.onnx"]
    assert len(rows) == 1 and "smooth_quant" not in rows[0]
    assert "SmoothQuant" not in (bundle / "report.md").read_text()
    assert json.loads((bundle / "manifest.json").read_text())["stages"]["targets"]["smooth_quant"] is False
    assert main(["inspect", str(bundle)]) == 0
    assert_no_bundle_left(tmp_path)


def test_quantize_replaces_the_bundle_only_when_complete(tmp_path, assets):
    from embslim.runtime.manifest import read_manifest

    bundle = _bundle_copy(Ctx(tmp_path, assets))
    mode = stat.S_IMODE(bundle.stat().st_mode)
    assert main(["quantize", str(bundle), "--train", str(assets.train), "--eval", str(assets.dev), "--targets", "avx2",
                 "--allow-drop", "--no-measure"]) == 0
    files = {e["file"] for e in read_manifest(bundle)["artifacts"]}
    assert "model.int8-avx2.onnx" in files and (bundle / "report.json").is_file()
    assert stat.S_IMODE(bundle.stat().st_mode) == mode
    assert main(["inspect", str(bundle)]) == 0
    assert_no_bundle_left(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["quantize", "b", "--int4-tabel-block-size", "16"],
     r"^embslim quantize: error: unrecognized arguments: --int4-tabel-block-size 16 \(did you mean: --int4-tabel-block-size -> "
     r"--int4-table-block-size\?\); see embslim quantize --help$"),
    (["quantize", "b", "--max-bytes", "abc"], r"^embslim quantize: error: argument --max-bytes: 'abc' is not a size; .*"
                                              r"see embslim quantize --help$"),
    (["quantise", "b"], r"^embslim: error: argument command: invalid choice: 'quantise' .*; see embslim --help$"),
    # a prefix is not a flag: quantize has --task-name, not --task (argparse took it for --task-name)
    (["quantize", "b", "--task", "feature-extraction"],
     r"^embslim quantize: error: unrecognized arguments: --task feature-extraction \(did you mean: --task -> "
     r"--task-name\?\); see embslim quantize --help$"),
])
def test_a_bad_flag_is_one_line_naming_the_command_help(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err.strip()), err
