"""The in-browser app, used as a person would: headless Chromium opens the page served on
127.0.0.1, types a sentence, clicks Classify and reads the label and probability off the
page; they must match the Python runtime (probability within 1e-3) on 20+ texts.

Chromium is driven over the DevTools protocol with a minimal WebSocket client written on the
standard library (no extra test dependency). The test installs nothing: without Chromium or
`npm ci` in sample_apps/web it skips and says so.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from embslim.runtime import Classifier
from sample_apps.web.serve import ORT_DIST, make_server

PAGE_TIMEOUT_S = 120
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


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


def wait_for(dt: DevTools, condition: str, *, timeout_s: float) -> object:
    """Evaluate a JS expression in the page until it is truthy; return its value."""
    return dt.evaluate(
        f"""new Promise((resolve, reject) => {{
            const t0 = Date.now();
            (function poll() {{
                let v;
                try {{ v = ({condition}); }} catch (e) {{ v = undefined; }}
                if (v) resolve(v);
                else if (Date.now() - t0 > {int(timeout_s * 1000)})
                    reject(new Error("timed out waiting for: " + {json.dumps(condition)}
                                     + " status=" + document.getElementById("status").textContent
                                     + " error=" + document.getElementById("error").textContent));
                else setTimeout(poll, 25);
            }})();
        }})""",
        timeout_s=timeout_s + 5,
    )


# -- fixtures -----------------------------------------------------------------------------


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "Chromium not found (looked for " + ", ".join(CHROMIUM_NAMES) + "); on Debian/Ubuntu: "
        "`sudo apt-get install -y chromium` (see sample_apps/web/README.md)"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = _chromium()
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip(f"onnxruntime-web is not installed: run `npm ci` in {ORT_DIST.parents[2]}")
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


def serve(bundle: Path):
    server = make_server(bundle, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def type_into(dt: DevTools, element_id: str, text: str) -> None:
    """Focus a text box, select what it holds and type `text` over it."""
    dt.evaluate(f"(() => {{ const t = document.getElementById('{element_id}'); t.focus(); "
                "t.select(); })()")  # fmt: skip
    dt.call("Input.insertText", {"text": text})
    typed = dt.evaluate(f"document.getElementById('{element_id}').value")
    assert typed == text.replace("\r\n", "\n")


def classify_in_page(dt: DevTools, text: str, pair: str | None = None) -> tuple[str, float]:
    """Type `text` (and `pair`) into the page, click Classify, read label and probability."""
    seq = int(dt.evaluate("document.getElementById('result').dataset.seq"))
    type_into(dt, "text", text)
    if pair is not None:
        type_into(dt, "text-pair", pair)
    box = dt.evaluate(
        "(() => { const b = document.getElementById('classify'); b.scrollIntoView({block: "
        "'center'}); const r = b.getBoundingClientRect();"
        " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        dt.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
        )
    wait_for(dt, f"Number(document.getElementById('result').dataset.seq) > {seq}", timeout_s=30)
    label = dt.evaluate("document.getElementById('label').textContent")
    score = float(dt.evaluate("document.getElementById('score').textContent"))
    return label, score


def check_page_against_runtime(
    dt: DevTools,
    bundle: Path,
    tmp_path: Path,
    texts: list[str],
    *,
    file: str = "model.onnx",
    atol: float = 1e-3,
    same_labels: bool = True,
) -> list[float]:
    """Classify `texts` in the page with model `file`; return |probability - runtime's|."""
    server, url = serve(bundle)
    try:
        dt.call("Page.navigate", {"url": f"{url}?file={file}"})
        wait_for(dt, "document.getElementById('status').dataset.state === 'ready'",
                 timeout_s=PAGE_TIMEOUT_S)  # fmt: skip
        info = dt.evaluate("document.getElementById('model-info').textContent")
        assert "sha256 checked" in info, info
        clf = Classifier.from_bundle(bundle, file=file, threads=1)
        diffs = []
        # The page reads a <textarea>, which turns "\r\n" and "\r" into "\n": compare with
        # what the user sees typed in the box, as the runtime would be called on it.
        for text in texts:
            label, score = classify_in_page(dt, text)
            typed = text.replace("\r\n", "\n").replace("\r", "\n")
            expected = clf.predict(typed)[0]
            page_p = score if label == expected.label else 1 - score  # two-label bundles only
            diffs.append(abs(page_p - expected.score))
            if same_labels:
                assert label == expected.label, (text[:40], label, expected)
            assert page_p == pytest.approx(expected.score, abs=atol), (text[:40], score, expected)
        shot = dt.call("Page.captureScreenshot", {"format": "png"})
        (tmp_path / f"page-{file}.png").write_bytes(base64.b64decode(shot["data"]))
        print(f"\nbrowser vs runtime, {file}: {len(diffs)} texts, max |dp| {max(diffs):.2e}")
        return diffs
    finally:
        server.shutdown()
        server.server_close()


def test_page_matches_the_runtime_on_a_tiny_bundle(
    browser, tiny_bundle, tmp_path, parity_texts
):
    diffs = check_page_against_runtime(browser, tiny_bundle, tmp_path, parity_texts)
    assert len(diffs) == len(parity_texts) >= 20
    assert max(diffs) < 1e-3


@pytest.mark.slow
def test_page_matches_the_runtime_on_a_real_sst2_bundle(
    browser, sst2_bundle, tmp_path, parity_texts
):
    diffs = check_page_against_runtime(browser, sst2_bundle, tmp_path, parity_texts)
    assert len(diffs) == len(parity_texts) >= 20
    assert max(diffs) < 1e-3


@pytest.mark.slow
def test_every_quantized_model_of_the_bundle_runs_in_the_page(browser, sst2_bundle, tmp_path,
                                                              parity_texts):  # fmt: skip
    """int8 / int4 graphs (fused Attention, MatMulInteger, MatMulNBits) load in onnxruntime-web.

    WebAssembly and this CPU run different int8 kernels, so probabilities differ by a few 1e-3
    (measured: up to 2.7e-3); labels are not compared: the 64-sentence model sits near 0.5.
    """
    manifest = json.loads((sst2_bundle / "manifest.json").read_text(encoding="utf-8"))
    files = [a["file"] for a in manifest["artifacts"]
             if a["file"].endswith(".onnx") and a["variant"] != "fp32"]  # fmt: skip
    if not files:
        pytest.skip("the bundle has no quantized .onnx model")
    for file in files:
        diffs = check_page_against_runtime(browser, sst2_bundle, tmp_path, parity_texts,
                                           file=file, atol=1e-2, same_labels=False)  # fmt: skip
        assert len(diffs) == len(parity_texts)


def test_page_classifies_text_pairs(browser, tiny_pair_bundle):
    pairs = [("A man sleeps.", "A person rests."), ("great movie", "awful film"),
             ("Café déjà vu", "très naïf " * 10), ("good " * 20, "bad")]  # fmt: skip
    clf = Classifier.from_bundle(tiny_pair_bundle, threads=1)
    server, url = serve(tiny_pair_bundle)
    try:
        browser.call("Page.navigate", {"url": url})
        wait_for(browser, "document.getElementById('status').dataset.state === 'ready'",
                 timeout_s=PAGE_TIMEOUT_S)  # fmt: skip
        assert browser.evaluate("document.getElementById('pair-row').hidden") is False
        for first, second in pairs:
            label, score = classify_in_page(browser, first, second)
            expected = clf.predict([(first, second)])[0]
            assert label == expected.label
            assert score == pytest.approx(expected.score, abs=1e-3)
    finally:
        server.shutdown()
        server.server_close()


def test_page_reports_a_damaged_model(browser, tiny_bundle, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, damaged)
    data = bytearray((damaged / "model.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size, different sha256
    (damaged / "model.onnx").write_bytes(bytes(data))
    server, url = serve(damaged)
    try:
        browser.call("Page.navigate", {"url": url})
        wait_for(browser, "document.getElementById('status').dataset.state === 'error'",
                 timeout_s=PAGE_TIMEOUT_S)  # fmt: skip
        error = browser.evaluate("document.getElementById('error').textContent")
        assert error.startswith("model.onnx: sha256 "), error
        assert "re-export the bundle" in error
        assert browser.evaluate("document.getElementById('classify').disabled") is True
    finally:
        server.shutdown()
        server.server_close()
