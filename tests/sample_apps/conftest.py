"""Fixtures for the sample apps: tiny bundles (fast), a real SST-2 bundle (slow, built once), and
for the web app headless Chromium driven over the DevTools protocol plus the page's server."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_bundle import make_tiny_bundle, make_tiny_embedding_bundle

REPO = Path(__file__).resolve().parents[2]
PAGE_TIMEOUT_S = 120
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Texts the in-browser app must classify exactly like the runtime: accents, CJK, emoji,
# punctuation runs, a special token typed by the user, and texts far over max_length.
PARITY_TEXTS = [
    "A gripping, beautifully acted film.",
    "the plot was boring and the acting was awful",
    "I love this movie!",
    "Not good. Not good at all.",
    "Café crème, déjà vu: a naïve façade in São Paulo",
    "ÉNORME DÉCEPTION, à éviter",
    "Ünïcödé ÅÄÖ straße ΣΑΣ İstanbul",
    "中文 and English mixed: 电影很好",
    "emoji 😀👍🏽 make it better?",
    "$100+ <b>tags</b> & 50% off!!! (really)",
    "don't, can't, won't -- shouldn't've",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\ninside",
    "unbelievably overwhelmingly unaffable",
    "x" * 150,  # longer than max_input_chars_per_word -> [UNK]
    "a great movie [SEP] a bad movie",  # a special token typed by the user
    "good " * 60,  # truncated at max_length
    " ".join(["it was a very fun film but the plot is not great"] * 20),
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. " * 8,
    "The film's résumé: naïveté, élan and a coup de grâce.",
    "ok",
    "!",
]


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
    return list(PARITY_TEXTS)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("apps-tiny"), max_length=12)


@pytest.fixture(scope="session")
def tiny_pair_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("apps-tiny-pair"), pair=True, labels=("entail", "neutral", "contra")
    )


@pytest.fixture(scope="session")
def tiny_embedding_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature-extraction bundle: mean pooling, a Dense layer to 3 dims, L2-normalised."""
    return make_tiny_embedding_bundle(tmp_path_factory.mktemp("apps-tiny-emb"), dim=3)


@pytest.fixture(scope="session")
def tiny_tagger_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token-classification bundle: a tiny random BERT tagger (WNUT-17 tags) exported by
    embslim's export_model (needs torch: the tests using it skip without the pipeline extra)."""
    pytest.importorskip("torch")
    from tagger_bundle import make_tagger_bundle

    return make_tagger_bundle(tmp_path_factory.mktemp("apps-tiny-tagger"), max_length=24)


@pytest.fixture(scope="session")
def sst2_bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A real DEP-pruned all-MiniLM-L6-v2 bundle fine-tuned on 64 SST-2 sentences (~1-2 min).

    Only the tests marked `slow` use it; the model is barely trained, but it is the real
    architecture, vocabulary, tokenizer.json and remap, which is what the apps must get right.
    EMBSLIM_TEST_SST2_BUNDLE=DIR reuses a bundle built before (e.g. by `make demo`).
    """
    reuse = os.environ.get("EMBSLIM_TEST_SST2_BUNDLE")
    if reuse:
        return Path(reuse)
    out = tmp_path_factory.mktemp("apps-sst2") / "bundle"
    command = [
        str(Path(sys.executable).with_name("embslim")),
        "run",
        "--config", str(REPO / "configs" / "sst2-demo.toml"),
        "--data-root", str(shared_data),
        "--out", str(out),
        "--max-train-samples", "64",
        "--max-length", "64",
        "--no-baseline",
        "--no-measure",
        "--allow-drop",  # a 64-sentence model sits near 50%: int8 may flip a few more labels, flagged not fatal
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "manifest.json").is_file(), result.stdout[-2000:]
    return out

# -- tokenizers of every type a bundle can carry --------------------------------------------

# What the tiny BPE and Unigram tokenizers learn their merges and pieces from.
TOKENIZER_CORPUS = PARITY_TEXTS * 3 + [
    "the movie was good, the film was bad; great acting, boring plot",
    "a man sleeps. a person rests. the story is not great but the music is lovely",
] * 5


def build_byte_level_bpe(path: Path, *, vocab_size: int = 400, roberta: bool = True) -> Path:
    """A RoBERTa-style tokenizer.json: byte-level BPE, <s> x </s></s> y </s>, <pad>=1
    (`roberta=False`: GPT-2 style, a ByteLevel post-processor and no special tokens added).

    Saved with fixed padding and truncation on, like real model files, so tests prove the
    page (and the runtime) override both.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    if roberta:
        tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.enable_padding(length=32, pad_id=1, pad_token="<pad>")
    tok.enable_truncation(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def build_unigram(path: Path, *, vocab_size: int = 200) -> Path:
    """An XLM-R-style tokenizer.json: NFKC, Metaspace, Unigram, <s> x </s></s> y </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, unk_token="<unk>", show_progress=False,
                                      special_tokens=["<s>", "<pad>", "</s>", "<unk>"])  # fmt: skip
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bpe_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a tiny random RobertaForSequenceClassification with a byte-level BPE
    tokenizer, exported and validated by embslim's own export_model (a few seconds)."""
    import torch
    from transformers import PreTrainedTokenizerFast, RobertaConfig
    from transformers import RobertaForSequenceClassification

    from embslim.pipeline.bundle import BundleMeta, export_model

    folder = tmp_path_factory.mktemp("apps-tiny-bpe")
    tok_path = build_byte_level_bpe(folder / "src" / "tokenizer.json")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_path), bos_token="<s>", eos_token="</s>", cls_token="<s>",
        sep_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip
    max_length = 24
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_length + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2,
    )  # fmt: skip
    model = RobertaForSequenceClassification(config).eval()
    meta = BundleMeta(
        task_name="tiny-bpe", labels=("neg", "pos"), is_pair=False, max_length=max_length,
        source={"name": "tiny-roberta-bpe", "family": "roberta", "weights_sha256": None},
        input_names=("input_ids", "attention_mask"), tokenizer_json=str(tok_path),
    )  # fmt: skip
    bundle = folder / "bundle"
    export_model(model, tokenizer, bundle, meta=meta)
    return bundle


@pytest.fixture(scope="session")
def gpt2_style_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("apps-gpt2") / "tokenizer.json"
    return build_byte_level_bpe(path, roberta=False)


@pytest.fixture(scope="session")
def unigram_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_unigram(tmp_path_factory.mktemp("apps-unigram") / "tokenizer.json")


# -- a minimal DevTools-protocol client -----------------------------------------------------


class DevTools:
    """One WebSocket to Chromium's browser endpoint; commands are sent to one page session."""

    def __init__(self, ws_url: str, *, timeout: float = 60.0) -> None:
        rest = ws_url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket handshake failed: {head[:200]!r}")
        self._buffer = head.split(b"\r\n\r\n", 1)[1]
        self._next_id = 0
        self.session_id: str | None = None
        self.events: list[dict] = []

    def close(self) -> None:
        self._sock.close()

    # framing (RFC 6455): client frames are masked; the server's may come in fragments
    def _send_frame(self, payload: bytes, opcode: int = 1) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _recv_message(self) -> dict:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 9:
                self._send_frame(payload, opcode=10)
                continue
            if opcode in (0, 1, 2):
                parts.append(payload)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser and self.session_id:
            message["sessionId"] = self.session_id
        self._send_frame(json.dumps(message).encode())
        while True:
            reply = self._recv_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str, *, timeout_s: float = 30) -> object:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True,
             "timeout": int(timeout_s * 1000)},
        )  # fmt: skip
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"page error: {text}\n{self.console()}")
        return result["result"].get("value")

    def wait_for(self, condition: str, *, timeout_s: float = PAGE_TIMEOUT_S) -> object:
        """Evaluate a JS expression in the page until it is truthy; return its value."""
        return self.evaluate(
            f"""new Promise((resolve, reject) => {{
                const t0 = Date.now();
                (function poll() {{
                    let v;
                    try {{ v = ({condition}); }} catch (e) {{ v = undefined; }}
                    if (v) resolve(v);
                    else if (Date.now() - t0 > {int(timeout_s * 1000)})
                        reject(new Error("timed out waiting for: " + {json.dumps(condition)}
                            + " status=" + document.getElementById("status")?.textContent
                            + " error=" + document.getElementById("error")?.textContent));
                    else setTimeout(poll, 25);
                }})();
            }})""",
            timeout_s=timeout_s + 5,
        )

    def open_page(self, url: str, *, state: str = "ready") -> None:
        """Navigate to `url` and wait until the page's status says `state`."""
        self.call("Page.navigate", {"url": url})
        self.wait_for(f"document.getElementById('status')?.dataset.state === '{state}'")

    def console(self) -> str:
        lines = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                lines.append(f"console.{params['type']}: {args}")
            elif event.get("method") == "Runtime.exceptionThrown":
                lines.append(f"exception: {params['exceptionDetails'].get('text')}")
        return "\n".join(lines[-20:])


# -- Chromium and the page server ---------------------------------------------------------


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "Chromium not found (looked for " + ", ".join(CHROMIUM_NAMES) + "); on Debian/Ubuntu: "
        "`sudo apt-get install -y chromium` (see sample_apps/web/README.md)"
    )


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    exe = _chromium()
    from sample_apps.web.serve import ORT_DIST, TOKENIZERS_DIST, WEB_DIR

    for probe in (ORT_DIST / "ort.wasm.min.mjs", TOKENIZERS_DIST / "tokenizers.min.mjs"):
        if not probe.is_file():
            pytest.skip(f"{probe} is not installed: run `npm ci` in {WEB_DIR}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
        ],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (profile.parent / "chromium.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Chromium did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        dt = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = dt.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = dt.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            browser=True,
        )  # fmt: skip
        dt.session_id = attached["sessionId"]
        dt.call("Runtime.enable")
        dt.call("Page.enable")
        yield dt
        dt.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


@pytest.fixture
def serve_page():
    """serve_page(bundle) -> the page's URL, on a server that stops when the test ends."""
    from sample_apps.web.serve import make_server

    servers = []

    def start(bundle: Path, **kwargs) -> str:
        server = make_server(bundle, host="127.0.0.1", port=0, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
