"""Validate a bundle under ONNX Runtime's aarch64 build, emulated on an x86-64 host.

ARM boards and phones run ONNX Runtime's ARM kernels (NEON, dot-product int8), which round
differently from the x86 ones; this checks that a bundle's predictions survive them, without
a board. `ensure_environment` builds, once per onnxruntime/numpy/tokenizers version set, an
emulated environment from Debian packages and PyPI only (no VM, chroot, binfmt or root):

1. qemu user mode: a static `qemu-aarch64` taken from Debian's `qemu-user` (>= 9, e.g.
   bookworm-backports) or `qemu-user-static` (7.2) .deb;
2. an arm64 Python from Debian's `python3.X-minimal` and `libpython3.X-stdlib`, resolved by
   apt with a private APT_CONFIG (own lists, cache and empty dpkg status: the host's dpkg
   is never touched) and unpacked with `dpkg-deb -x` into ROOT;
3. the aarch64 wheels of the host's onnxruntime, numpy and tokenizers versions, fetched with
   `pip download --platform manylinux_..._aarch64` and installed with `pip install --target`.

It is built in a temporary folder inside the cache and renamed into place only after an
emulated `import onnxruntime` worked, so a half-built cache is never used. `validate_arm64`
then runs the bundle's runtime class (`embslim.runtime.load_bundle`: `Classifier`, `Embedder` or
`Tagger`, from the manifest's task.type) in the emulated Python (`embslim.pipeline._arm_eval`, data
in and the task's outputs out as JSON: logits per text, sentence embeddings, logits per token), and
judges those outputs with the task's scorer (`embslim.pipeline.scoring`) against the same file on
x86: task metrics, then agreement / max difference (embeddings: max |Δ| and cosine). The
latency/memory probe (`embslim.pipeline.probe`) runs in a second emulated process. Emulated
latency and RSS are qemu's, not a device's: they are reported with an `emulated_` prefix and a
note saying so.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from embslim.pipeline.data import Split

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]  # on the emulated PYTHONPATH, so `runtime` imports
DEFAULT_CACHE = "~/.cache/embslim/aarch64"
CACHE_ENV = "EMBSLIM_ARM_CACHE"
RECIPE = 1  # bump when the build steps change, so caches built by an older recipe are not reused
WHEELS = ("onnxruntime", "numpy", "tokenizers")  # pinned to the host's versions; they key the cache
ORT_DEPS = ("flatbuffers", "packaging", "protobuf")  # onnxruntime's own requirements (host version if any)
NOTE = ("emulated_* figures come from qemu user-mode emulation on an x86 host, not from a device: latency "
        "is 100-1000x a device's (fp32 the slowest: qemu emulates NEON float math in software) and peak "
        "RSS includes qemu itself. Use this run for accuracy and parity with x86 only.")


class EmulationUnavailable(RuntimeError):
    """The emulated aarch64 environment cannot be built or started here; the message is one line."""


@dataclass(frozen=True)
class _Release:
    suite: str  # Debian release whose arm64 archive ships python3.X-minimal
    glibc: str  # that release's glibc, as the manylinux platform tag of the wheels we may use
    qemu_suites: tuple[str, ...] = ()  # extra suites to look for a static qemu >= 9 in


# Only Pythons Debian ships as python3.X-minimal; bookworm's own qemu is 7.2, backports has 10.x.
RELEASES = {"3.11": _Release("bookworm", "2_36", ("bookworm-backports",)), "3.13": _Release("trixie", "2_41")}

# qemu 7.2 passes the host's x86 /proc/cpuinfo through and onnxruntime's cpuinfo then crashes on
# import, so we put an ARM one matching -cpu at ROOT/proc/cpuinfo (qemu >= 8 emulates the file).
# (MIDR variant, part, revision, Features line). "max" is left out on purpose: on qemu 7.2 it gave
# silently wrong int8 results.
_V80 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
CPUS = {
    "neoverse-n1": ("0x4", "0xd0c", "1", _V82),  # Graviton 2 / Ampere Altra: v8.2 + dot product, like current phones
    "cortex-a76": ("0x4", "0xd0b", "1", _V82),   # Raspberry Pi 5, mid-range phones
    "cortex-a72": ("0x0", "0xd08", "3", _V80),   # Raspberry Pi 4: no fp16, no dot product
    "cortex-a53": ("0x0", "0xd03", "4", _V80),   # Raspberry Pi 3 and small boards
}


@dataclass(frozen=True)
class EmulatorConfig:
    cache_dir: str = DEFAULT_CACHE  # ~225 MB per version set; EMBSLIM_ARM_CACHE replaces this default
    cpu: str = "neoverse-n1"  # what ORT's kernel choice sees: v8.2 + dot product is today's common ARM core
    python_version: str = "3.11"  # the emulated Python; must be one Debian ships (see RELEASES)
    qemu: str | None = None  # a qemu-aarch64 binary to use instead of downloading Debian's into the cache

    def __post_init__(self) -> None:
        if self.cpu not in CPUS:
            raise ValueError(f"cpu must be one of {', '.join(CPUS)}, got {self.cpu!r} ('max' is refused: "
                             "qemu 7.2 gives wrong int8 results with it)")
        if self.python_version not in RELEASES:
            raise ValueError(f"python_version must be one Debian ships for arm64: {', '.join(RELEASES)}; "
                             f"got {self.python_version!r}")
        if self.qemu is not None and not self.qemu.strip():
            raise ValueError("qemu must be a path to a qemu-aarch64 binary, or None to download Debian's")

    def resolved_cache_dir(self) -> Path:
        """cache_dir, except that EMBSLIM_ARM_CACHE (when set) replaces the default location."""
        chosen = self.cache_dir
        if chosen == DEFAULT_CACHE and os.environ.get(CACHE_ENV):
            chosen = os.environ[CACHE_ENV]
        return Path(chosen).expanduser()


def host_versions() -> dict[str, str]:
    """The host's onnxruntime, numpy and tokenizers versions: the emulated ones are the same."""
    try:
        return {name: metadata.version(name) for name in WHEELS}
    except metadata.PackageNotFoundError as e:
        raise EmulationUnavailable(f"{e.name} is not installed on the host; install embslim's runtime "
                                   "dependencies (pip install -e .)") from e


def cache_key(cfg: EmulatorConfig, versions: Mapping[str, str]) -> str:
    """Folder name of one environment: the emulated Python, the three wheels' versions, the recipe."""
    parts = [f"py{cfg.python_version}"] + [f"{name}{versions[name]}" for name in WHEELS] + [f"r{RECIPE}"]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


@dataclass(frozen=True)
class ArmEnv:
    """A built environment: ROOT (arm64 Debian files), SITE (aarch64 wheels) and the qemu binary."""

    root: Path
    site: Path
    qemu: Path
    cpu: str
    python_version: str
    qemu_version: str
    info: Mapping[str, Any] = field(default_factory=dict)  # env.json: versions, packages, build timings

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{self.python_version}"

    def command(self, args: Sequence[str]) -> list[str]:
        return [str(self.qemu), "-cpu", self.cpu, "-L", str(self.root), str(self.python), *args]

    def run_python(self, args: list[str], *, timeout: float,
                   on_stderr: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
        """Run the emulated Python with `args`; PYTHONPATH = SITE + the repo root. Never raises on exit status.

        A clean environment keeps the host's PYTHON*/LD_* variables and user site out of the guest.
        `on_stderr` sees each stderr line as it comes (stderr is still returned whole).
        Raises subprocess.TimeoutExpired after `timeout` seconds (the process is killed).
        """
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8",
               "TMPDIR": tempfile.gettempdir(), "PYTHONPATH": f"{self.site}{os.pathsep}{REPO_ROOT}",
               "PYTHONNOUSERSITE": "1", "PYTHONUTF8": "1", "OMP_NUM_THREADS": "1"}
        # Its own process group, so a timeout kills everything it started, not just qemu.
        with subprocess.Popen(self.command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=REPO_ROOT, start_new_session=True) as proc:
            out: list[str] = []
            err: list[str] = []

            def pump_stderr() -> None:
                for line in proc.stderr:
                    err.append(line)
                    if on_stderr is not None:
                        on_stderr(line.rstrip("\n"))

            readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
                       threading.Thread(target=pump_stderr, daemon=True)]
            for reader in readers:
                reader.start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            finally:
                for reader in readers:
                    reader.join()
        return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), "".join(err))


def ensure_environment(cfg: EmulatorConfig = EmulatorConfig()) -> ArmEnv:
    """The emulated environment for `cfg`, built on first use (1-2 minutes, ~225 MB) and reused after."""
    cache = cfg.resolved_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):
            pass
    except OSError as e:
        raise EmulationUnavailable(f"cache directory {cache} is not writable ({e.strerror or e}); set "
                                   f"{CACHE_ENV} or EmulatorConfig(cache_dir=...) to a writable folder") from e
    explicit_qemu = _explicit_qemu(cfg.qemu) if cfg.qemu is not None else None
    versions = host_versions()
    key = cache_key(cfg, versions)
    env_dir, qemu_dir = cache / key, cache / "qemu"
    if env_dir.exists() and not (env_dir / "env.json").is_file():
        log.warning("%s has no env.json (not built by this module); removing it and building again", env_dir)
        shutil.rmtree(env_dir)
    need_env = not env_dir.exists()
    need_qemu = explicit_qemu is None and not (qemu_dir / "qemu.json").is_file()
    if need_env or need_qemu:
        _build(cfg, cache, key, versions, need_env=need_env, need_qemu=need_qemu, explicit_qemu=explicit_qemu)
    else:
        log.info("aarch64 environment: reusing %s", env_dir)
    info = _read_json(env_dir / "env.json")
    if explicit_qemu is not None:
        qemu, qemu_version = explicit_qemu
    else:
        qemu, qemu_version = qemu_dir / "qemu-aarch64", _read_json(qemu_dir / "qemu.json")["qemu_version"]
    env = ArmEnv(root=env_dir / "root", site=env_dir / "site", qemu=qemu, cpu=cfg.cpu,
                 python_version=cfg.python_version, qemu_version=qemu_version, info=info)
    _place_cpuinfo(env)
    return env


# -- building ---------------------------------------------------------------------------------


def _build(cfg: EmulatorConfig, cache: Path, key: str, versions: Mapping[str, str], *, need_env: bool,
           need_qemu: bool, explicit_qemu: tuple[Path, str] | None) -> None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise EmulationUnavailable(f"building the emulated environment needs an x86-64 Linux host, this is "
                                   f"{platform.system()} {platform.machine()}; on an ARM machine validate natively")
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise EmulationUnavailable(f"{tool} not found: the emulated environment is built from Debian packages, "
                                       "so it needs a Debian-based host (or pass EmulatorConfig(qemu=...) and a "
                                       "prebuilt cache)")
    release = RELEASES[cfg.python_version]
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        wheels_dir = work / "wheels"
        with ThreadPoolExecutor(max_workers=1) as pool:  # the wheel download overlaps apt's work
            wheels = pool.submit(_timed, timings, "pip download", _download_wheels, cfg, release, versions,
                                 wheels_dir) if need_env else None
            apt_config = _write_apt_config(work, release)
            _timed(timings, "apt-get update", _apt_update, apt_config)
            if need_qemu:
                _timed(timings, "qemu", _fetch_qemu, apt_config, work / "qemu")
            if need_env:
                root = work / "env" / "root"
                debs = _timed(timings, "apt-get install -d", _download_debs, apt_config, cfg.python_version, work)
                _timed(timings, "dpkg-deb -x", _unpack_debs, debs, root)
                wheel_files = wheels.result() if wheels is not None else []
        if need_env:
            site = work / "env" / "site"
            _timed(timings, "pip install --target", _install_wheels, cfg, release, wheel_files, site)
            if explicit_qemu is not None:
                qemu, qemu_version = explicit_qemu
            else:
                qemu_dir = work / "qemu" if need_qemu else cache / "qemu"
                qemu, qemu_version = qemu_dir / "qemu-aarch64", _read_json(qemu_dir / "qemu.json")["qemu_version"]
            probe = ArmEnv(root=root, site=site, qemu=qemu, cpu=cfg.cpu, python_version=cfg.python_version,
                           qemu_version=qemu_version)
            _place_cpuinfo(probe)
            smoke = _timed(timings, "first emulated import", _smoke_test, probe, versions)
            timings["total"] = round(time.perf_counter() - started, 1)
            info = {"key": key, "recipe": RECIPE, "python_version": cfg.python_version, "debian": release.suite,
                    "versions": dict(versions), "emulated": smoke, "debs": sorted(p.name for p in debs),
                    "wheels": sorted(p.name for p in wheel_files), "build_seconds": timings,
                    "bytes": _tree_bytes(work / "env"), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (work / "env" / "env.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            _publish(work / "env", cache / key)
        if need_qemu:
            _publish(work / "qemu", cache / "qemu")
        log.info("aarch64 environment built in %.1f s (%s)", time.perf_counter() - started,
                 ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "total"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed(timings: dict[str, float], step: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[step] = round(time.perf_counter() - t0, 1)
    log.info("aarch64 environment: %s took %.1f s", step, timings[step])
    return out


def _publish(built: Path, final: Path) -> None:
    """Rename a complete build into place; if another process got there first, keep theirs."""
    try:
        os.rename(built, final)
    except OSError:
        if not final.exists():
            raise
        log.info("%s was built concurrently by another process; using that one", final)


def _run(cmd: Sequence[str], *, what: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise EmulationUnavailable(f"{what} took longer than {timeout:.0f} s (slow or no network?)") from e
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "W:"))] or lines or ["(no output)"]
        raise EmulationUnavailable(f"{what} failed (exit {proc.returncode}): {errors[-1][:300]}")
    return proc


def _debian_mirrors() -> tuple[str, str]:
    """(archive, security) mirror URIs from the host's apt sources, else deb.debian.org's."""
    uris: list[str] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.lstrip().startswith("#"):
                uris += re.findall(r"(?:https?|file)://[^\s\]]+", line)
    archive = next((u for u in uris if u.rstrip("/").endswith("/debian")), "http://deb.debian.org/debian")
    security = next((u for u in uris if u.rstrip("/").endswith("/debian-security")),
                    "http://deb.debian.org/debian-security")
    return archive.rstrip("/"), security.rstrip("/")


def _write_apt_config(work: Path, release: _Release) -> Path:
    """A private APT_CONFIG: own sources, lists, cache and an empty dpkg status; arm64 native, amd64 too."""
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    archive, security = _debian_mirrors()
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    signed = f"Signed-By: {keyring}\n" if keyring.is_file() else ""
    suites = " ".join([release.suite, f"{release.suite}-updates", *release.qemu_suites])
    (apt / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {archive}\nSuites: {suites}\nComponents: main\n{signed}\n"
        f"Types: deb\nURIs: {security}\nSuites: {release.suite}-security\nComponents: main\n{signed}",
        encoding="utf-8")
    # The host's apt.conf.d still applies (proxies, mirror settings); everything stateful is ours.
    conf = {"APT::Architecture": "arm64", "Dir::State": apt, "Dir::State::Lists": apt / "lists",
            "Dir::State::status": apt / "status", "Dir::Cache": apt / "cache",
            "Dir::Cache::archives": apt / "cache" / "archives", "Dir::Etc::sourcelist": "/dev/null",
            "Dir::Etc::sourceparts": apt / "sources.list.d", "Dir::Etc::preferences": "/dev/null",
            "Dir::Etc::preferencesparts": apt / "preferences.d", "APT::Sandbox::User": "root",
            "Acquire::Languages": "none", "APT::Install-Recommends": "false"}
    text = "".join(f'{k} "{v}";\n' for k, v in conf.items()) + 'APT::Architectures { "arm64"; "amd64"; };\n'
    if os.geteuid() != 0:
        text = text.replace('APT::Sandbox::User "root";\n', "")
    (apt / "apt.conf").write_text(text, encoding="utf-8")
    return apt / "apt.conf"


def _apt(apt_config: Path, cmd: Sequence[str], *, timeout: float,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, APT_CONFIG=str(apt_config), DEBIAN_FRONTEND="noninteractive")
    return _run(cmd, what=" ".join(cmd[:2]), timeout=timeout, env=env, cwd=cwd)


def _apt_update(apt_config: Path) -> None:
    proc = _apt(apt_config, ["apt-get", "update"], timeout=600)
    # apt-get update exits 0 when a mirror cannot be reached: it only warns.
    failed = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
              if "Failed to fetch" in ln or "failed to download" in ln]
    if failed:
        raise EmulationUnavailable(f"apt-get update could not reach the Debian archive, which the first build "
                                   f"needs (as it needs PyPI): {failed[0][:300]}")


def _qemu_major(version: str) -> int:
    """Upstream major version of a Debian version string ('1:10.0.2+ds-2' -> 10) or of `qemu --version`."""
    m = re.search(r"^(?:\d+:)?(\d+)\.", version) or re.search(r"version (\d+)\.", version)
    return int(m.group(1)) if m else 0


def _fetch_qemu(apt_config: Path, dest: Path) -> None:
    """Download the newest static qemu-aarch64 Debian offers and keep only that binary."""
    out = _apt(apt_config, ["apt-cache", "madison", "qemu-user:amd64", "qemu-user-static:amd64"], timeout=120).stdout
    # From qemu 9 on, Debian's qemu-user is static and qemu-user-static only a transitional package.
    candidates = []
    for line in out.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2:
            continue
        name, version = fields[0].split(":")[0], fields[1]
        major = _qemu_major(version)
        if (name == "qemu-user" and major >= 9) or (name == "qemu-user-static" and major < 9):
            member = "./usr/bin/qemu-aarch64" if name == "qemu-user" else "./usr/bin/qemu-aarch64-static"
            candidates.append((major, name, version, member))
    if not candidates:
        raise EmulationUnavailable("no static qemu-aarch64 package (qemu-user >= 9 or qemu-user-static) in the "
                                   "configured Debian archive; install qemu-user-static and pass "
                                   "EmulatorConfig(qemu=...)")
    _, name, version, member = max(candidates, key=lambda c: c[0])
    debs = dest / "debs"
    debs.mkdir(parents=True)
    _apt(apt_config, ["apt-get", "download", f"{name}:amd64={version}"], timeout=600, cwd=debs)
    (deb,) = debs.glob("*.deb")
    binary = dest / "qemu-aarch64"
    # Stream the package's data: the binary is among the first members, so most of 60 MB is never unpacked.
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for entry in tar:
                if entry.name == member and entry.isfile():
                    with tar.extractfile(entry) as src, open(binary, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    break
    finally:
        proc.kill()
        proc.wait()
    shutil.rmtree(debs)
    if not binary.is_file():
        raise EmulationUnavailable(f"{deb.name} has no {member}; pass EmulatorConfig(qemu=...) instead")
    binary.chmod(0o755)
    qemu_version = _qemu_version(binary)
    (dest / "qemu.json").write_text(json.dumps({"package": name, "version": version, "qemu_version": qemu_version},
                                               indent=2), encoding="utf-8")


def _explicit_qemu(path_text: str) -> tuple[Path, str]:
    path = Path(path_text).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise EmulationUnavailable(f"qemu binary {path} not found or not executable; install qemu-user-static "
                                   "(Debian/Ubuntu) or leave EmulatorConfig.qemu unset to download one into the cache")
    return path, _qemu_version(path)


def _qemu_version(binary: Path) -> str:
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        raise EmulationUnavailable(f"{binary} cannot run here ({e.strerror or e}); it must be an x86-64 "
                                   "qemu-aarch64 binary") from e
    first = (proc.stdout.strip().splitlines() or [""])[0]
    if proc.returncode != 0 or _qemu_major(first) == 0:
        raise EmulationUnavailable(f"{binary} --version gave {first or proc.stderr.strip()[:100]!r}, expected "
                                   "'qemu-aarch64 version N.N'")
    return first


def _download_debs(apt_config: Path, python_version: str, work: Path) -> list[Path]:
    """apt resolves the arm64 Python's dependencies against an empty status: ~38 packages, ~16 MB."""
    pkgs = [f"python{python_version}-minimal", f"libpython{python_version}-stdlib", "libstdc++6"]
    _apt(apt_config, ["apt-get", "install", "-d", "-y", "--no-install-recommends", *pkgs], timeout=600)
    debs = sorted((work / "apt" / "cache" / "archives").glob("*_arm64.deb")) + sorted(
        (work / "apt" / "cache" / "archives").glob("*_all.deb"))
    if not debs:
        raise EmulationUnavailable(f"apt-get downloaded no arm64 packages for {' '.join(pkgs)}")
    return debs


def _unpack_debs(debs: Sequence[Path], root: Path) -> None:
    root.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"dpkg-deb -x {deb.name}", timeout=300)
    for unused in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian"):
        shutil.rmtree(root / unused, ignore_errors=True)
    # qemu -L maps a guest path into ROOT only where ROOT has it: empty site dirs hide the host's
    # x86 dist-packages from the emulated Python; no ROOT/tmp, so the guest sees the host's /tmp.
    for site in ("usr/lib/python3/dist-packages", "usr/local/lib/python3/dist-packages"):
        (root / site).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "tmp", ignore_errors=True)


def _pip_platform_flags(cfg: EmulatorConfig, release: _Release) -> list[str]:
    abi = "cp" + cfg.python_version.replace(".", "")
    # pip does not widen manylinux_2_N to older glibcs itself: list every tag the release can run.
    newest = int(release.glibc.split("_")[1])
    tags = [f"manylinux_2_{minor}_aarch64" for minor in range(newest, 16, -1)] + ["manylinux2014_aarch64"]
    return ["--only-binary=:all:", *(a for tag in tags for a in ("--platform", tag)), "--python-version",
            cfg.python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]


def _download_wheels(cfg: EmulatorConfig, release: _Release, versions: Mapping[str, str], dest: Path) -> list[Path]:
    specs = [f"{name}=={versions[name]}" for name in WHEELS]
    for name in ORT_DEPS:
        try:
            specs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            specs.append(name)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           *_pip_platform_flags(cfg, release), "--dest", str(dest), *specs]
    _run(cmd, what="pip download of the aarch64 wheels", timeout=900)
    return sorted(dest.glob("*.whl"))


def _install_wheels(cfg: EmulatorConfig, release: _Release, wheels: Sequence[Path], site: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
           "--no-deps", *_pip_platform_flags(cfg, release), "--target", str(site), *map(str, wheels)]
    _run(cmd, what="pip install --target of the aarch64 wheels", timeout=900)


_SMOKE = """\
import json, platform, numpy, onnxruntime, tokenizers, runtime
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
                  "tokenizers": tokenizers.__version__}))
"""


def _smoke_test(env: ArmEnv, versions: Mapping[str, str]) -> dict:
    """Import everything the runtime needs under emulation (this also writes the stdlib's .pyc files)."""
    try:
        proc = env.run_python(["-c", _SMOKE], timeout=900)
    except subprocess.TimeoutExpired as e:
        raise EmulationUnavailable("the emulated Python took over 900 s to import onnxruntime") from e
    if proc.returncode != 0:
        raise EmulationUnavailable(f"the emulated Python could not import onnxruntime/numpy/tokenizers "
                                   f"({_exit_reason(proc.returncode)}): {_tail(proc.stderr)}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    wrong = {k: got.get(k) for k in WHEELS if got.get(k) != versions[k]}
    if got.get("machine") != "aarch64" or wrong:
        raise EmulationUnavailable(f"the emulated Python reports machine {got.get('machine')!r} and versions "
                                   f"{wrong}, expected aarch64 and {dict(versions)}")
    return got


def _cpuinfo(cpu: str, n: int) -> str:
    variant, part, revision, features = CPUS[cpu]
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
    return "".join(f"processor\t: {i}\n{block}" for i in range(n))


def _place_cpuinfo(env: ArmEnv) -> None:
    """qemu < 8 only: an ARM /proc/cpuinfo for env.cpu at ROOT/proc/cpuinfo (written atomically)."""
    if _qemu_major(env.qemu_version) >= 8:
        return
    target = env.root / "proc" / "cpuinfo"
    text = _cpuinfo(env.cpu, os.cpu_count() or 1)
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:600] or "(no output)"


# -- validating -------------------------------------------------------------------------------


def _token_counts(model: Any, texts: list[str]) -> np.ndarray:
    return np.array([len(t.input_ids) for t in model.tokenize(texts)], np.int64)


# task.type -> the x86 model's count of output rows per text, for tasks where a text gives more
# than one (a tagger: one per token); the others give one row per text.
ROWS_PER_TEXT: dict[str, Callable[[Any, list[str]], np.ndarray]] = {"token-classification": _token_counts}

# task.type -> (scorer.parity key, report name) by which `x86_files` compares another file's outputs
# with the emulated ones and with `file`'s x86 ones: label / token agreement, the embeddings' min cosine.
AGREEMENT: dict[str, tuple[str, str]] = {
    "text-classification": ("agreement", "agreement"),
    "feature-extraction": ("cosine_min_torch", "cosine_min"),
    "token-classification": ("agreement", "agreement"),
}


def validate_arm64(bundle_dir: str | os.PathLike[str], split: Split, *, file: str, n: int = 200,
                   x86_logits: np.ndarray | None = None, cfg: EmulatorConfig = EmulatorConfig(),
                   batch_size: int = 32, latency_seq_len: int = 32, latency_runs: int = 5,
                   timeout: float = 7200, scorer: Any = None) -> dict:
    """Run `file` of a bundle (any task) under emulated aarch64 ORT on the first `n` texts of `split`.

    The emulated run gives the task's primary outputs (`embslim.pipeline._arm_eval`: logits per
    text, sentence embeddings, or logits per token), judged by `scorer` (embslim.pipeline.scoring;
    None: `scorer_for` the bundle's task and labels, no embedding probes) as the x86 file's would
    be, the x86 runtime object standing in as its model. The report has:

    - the scorer's `metrics` of the emulated outputs: accuracy and F1 (text-classification),
      entity precision / recall / F1 (token-classification), kNN accuracy when the scorer has
      queries among those n texts (feature-extraction; see `EmbeddingScorer.first_rows`);
    - the scorer's `parity` of the emulated outputs with x86's (its `torch` keys read `x86`):
      agreement, max_logit_diff and x86_accuracy / x86_f1 (labels, tags); max_abs_diff and
      cosine_min_x86 (embeddings);
    - x86_files: the bundle's other fp32 and int8 files on x86 on the same texts (on x86 without
      VNNI the s8-weight arm64 kernel can saturate, so `file`'s x86 outputs are not the only
      reference worth having): their primary metric and their agreement (embeddings: min cosine)
      with the emulated outputs and with `file`'s x86 outputs;
    - emulated_* latency (batch 1, `latency_seq_len` tokens, median of `latency_runs`; 0 skips
      that probe) and peak RSS.

    `x86_logits`: `file`'s x86 outputs for the split's texts in order (one row per text; a
    tagger's: every token's row, texts in order), of which the first n texts' rows are used;
    computed here when None. Raises EmulationUnavailable when the environment cannot be built,
    ValidationFailed when the emulated run fails or its outputs do not match x86's in shape.
    """
    from embslim.pipeline.validate import ValidationFailed, latency_ids
    from embslim.runtime import load_bundle

    if n < 1 or batch_size < 1 or latency_runs < 0:
        raise ValueError(f"n >= 1, batch_size >= 1 and latency_runs >= 0 are required, got {n}, {batch_size}, "
                         f"{latency_runs}")
    if len(split) == 0:
        raise ValueError("the split is empty; pass the eval split with at least one example")
    bundle = Path(bundle_dir).resolve()
    n = min(n, len(split))
    sub = _first_rows(split, n)
    texts, pairs = list(sub.texts), list(sub.pairs) if sub.pairs is not None else None
    # Loading on x86 first also checks the manifest and the file's sha256 before emulation starts.
    model = load_bundle(bundle, file=file, threads=None)
    scorer = (scorer if scorer is not None else _default_scorer(model)).first_rows(n)
    env = ensure_environment(cfg)  # before the x86 pass: an unavailable emulator should say so at once
    counts = ROWS_PER_TEXT[model.task_type](model, texts) if model.task_type in ROWS_PER_TEXT else None
    rows = n if counts is None else int(counts.sum())
    if x86_logits is None:
        x86 = scorer.outputs(model, sub, batch_size=batch_size, desc=f"{file}: x86")
    else:
        x86 = np.asarray(x86_logits, dtype=np.float32)
        if x86.ndim != 2 or x86.shape[0] < rows:
            raise ValueError(f"x86_logits must be [>= {rows}, n_outputs] (rows for the split's examples in order"
                             f"{'' if counts is None else ', one per token'}), got shape {x86.shape}")
        x86 = x86[:rows]

    with tempfile.TemporaryDirectory(prefix="embslim-arm-") as tmp:
        spec = Path(tmp) / "eval.json"
        spec.write_text(json.dumps({"bundle": str(bundle), "file": file, "texts": texts, "pairs": pairs,
                                    "batch_size": batch_size}), encoding="utf-8")
        out = _run_emulated(env, ["-m", "embslim.pipeline._arm_eval", str(spec)], what=f"{file}: the emulated evaluation",
                            timeout=timeout, error=ValidationFailed, on_stderr=_log_progress(file))
    arm = _emulated_outputs(out, counts, shape=(rows, x86.shape[1]), file=file, error=ValidationFailed)
    metrics: dict[str, Any] = {"file": file, "target": "aarch64 (emulated)"}
    metrics |= scorer.metrics(model, arm, sub, batch_size=batch_size)
    metrics.setdefault("n_eval", n)
    vs_x86 = {k.replace("torch", "x86"): v for k, v in scorer.parity(arm, x86, sub).items()}
    metrics |= vs_x86
    metrics["x86_files"] = _x86_files(model, scorer, bundle, file, sub, arm=arm, x86=x86, batch_size=batch_size)
    metrics |= {"emulated_eval_seconds": out["eval_seconds"], "emulated_load_seconds": out["load_seconds"]}
    if latency_runs:
        ids = latency_ids(bundle / model.manifest["tokenizer"]["file"], split.texts, seq_len=latency_seq_len)
        probe = _run_emulated(env, ["-m", "embslim.pipeline.probe", str(bundle / file), "--ids", ",".join(map(str, ids)),
                                    "--runs", str(latency_runs), "--warmup", "1", "--threads", "1"],
                              what=f"{file}: the emulated latency probe", timeout=timeout, error=ValidationFailed)
        metrics |= {f"emulated_{k}": v for k, v in probe.items()}
    metrics |= {"cpu": env.cpu, "qemu": env.qemu_version, "onnxruntime": out["onnxruntime"], "note": NOTE}
    primary = scorer.primary
    log.info("%s on emulated aarch64 (%s, %d texts): %s; against x86: %s%s", file, env.cpu, n,
             f"{primary} {metrics[primary]:.4f}" if primary in metrics else model.task_type, _figures(vs_x86),
             f", emulated p50 {metrics['emulated_latency_ms_p50']:.0f} ms" if latency_runs else "")
    for other, m in metrics["x86_files"].items():
        log.info("  x86 %s on the same %d texts: %s", other, n, _figures(m))
    return metrics


def _first_rows(split: Split, n: int) -> Split:
    def cut(column: Sequence[Any] | None) -> tuple | None:
        return None if column is None else tuple(column[:n])

    return replace(split, texts=tuple(split.texts[:n]), pairs=cut(split.pairs), labels=cut(split.labels),
                   words=cut(split.words), tags=cut(split.tags))


def _default_scorer(model: Any) -> Any:
    """The scorer of the bundle's own task and labels (no embedding probes: metrics are then parity only)."""
    from embslim.pipeline.scoring import scorer_for

    labels = tuple(model.manifest["task"].get("labels") or ())
    return scorer_for(model.task_type, n_labels=len(labels), label_names=labels)


def _emulated_outputs(out: Mapping[str, Any], counts: np.ndarray | None, *, shape: tuple[int, int], file: str,
                      error: type[Exception]) -> np.ndarray:
    """The emulated run's output rows as float32 `shape`; its token counts must be x86's (`counts`)."""
    if counts is not None:
        got = list(out.get("token_counts") or ())
        if got != counts.tolist():
            i = next((i for i, (a, b) in enumerate(zip(got, counts.tolist())) if a != b), min(len(got), len(counts)))
            raise error(f"{file}: the emulated run tokenized text {i} into "
                        f"{got[i] if i < len(got) else 'no'} tokens where x86 has "
                        f"{counts[i] if i < len(counts) else 'no'} ({len(got)} texts counted, {len(counts)} sent); "
                        "the aarch64 tokenizers wheel and the host's disagree: rebuild the emulated environment")
    arm = np.asarray(out.get("outputs", ()), dtype=np.float32)
    if arm.shape != shape:
        raise error(f"{file}: the emulated run gave outputs of shape {arm.shape}, expected {shape} (x86's)")
    return arm


def _x86_files(model: Any, scorer: Any, bundle: Path, file: str, split: Split, *, arm: np.ndarray, x86: np.ndarray,
               batch_size: int) -> dict[str, dict]:
    """The bundle's other fp32 / int8 files on x86 on `split`: primary metric, agreement with both runs of `file`."""
    key, name = AGREEMENT[model.task_type]
    found: dict[str, dict] = {}
    for entry in model.manifest.get("artifacts", []):
        other = entry.get("file", "")
        if other != file and other.endswith(".onnx") and entry.get("variant") in ("fp32", "int8"):
            other_model = type(model).from_bundle(bundle, file=other, threads=None)
            outputs = scorer.outputs(other_model, split, batch_size=batch_size, desc=f"{other}: x86")
            row = {k: v for k, v in scorer.metrics(other_model, outputs, split, batch_size=batch_size).items()
                   if k == scorer.primary}
            row[f"{name}_with_emulated"] = scorer.parity(outputs, arm, split)[key]
            row[f"{name}_with_x86_{file}"] = scorer.parity(outputs, x86, split)[key]
            found[other] = row
    return found


def _figures(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, (int, float)))


def _log_progress(file: str) -> Callable[[str], None]:
    def log_line(line: str) -> None:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "progress":
            log.info("%s under emulated aarch64: %s examples after %s s", file, parts[1], parts[2])

    return log_line


def _run_emulated(env: ArmEnv, args: list[str], *, what: str, timeout: float, error: type[Exception],
                  on_stderr: Callable[[str], None] | None = None) -> dict:
    try:
        proc = env.run_python(args, timeout=timeout, on_stderr=on_stderr)
    except subprocess.TimeoutExpired as e:
        raise error(f"{what} took over {timeout:.0f} s under emulation; pass a larger timeout or a smaller n") from e
    if proc.returncode != 0:
        raise error(f"{what} failed under emulated aarch64 ({_exit_reason(proc.returncode)}): {_tail(proc.stderr)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise error(f"{what} printed no JSON result: {_tail(proc.stdout + proc.stderr)}") from e
