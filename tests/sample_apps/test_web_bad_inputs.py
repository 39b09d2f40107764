"""The web server's part of the bad-input matrix: every bad request gets a 4xx JSON answer (or,
for an idle client, a closed connection) within the timeout, and every bad bundle stops the
server at start-up with one line on stderr, exit status 2 and no traceback.

HTTP cases talk raw bytes over loopback sockets, so paths reach the server exactly as sent
(no client-side `..` clean-up) and slow clients can be played byte by byte; every socket has
its own timeout, so a server that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_bundle import artifact_entry, read_manifest_json, write_manifest

from sample_apps.web.serve import ORT_DIST, TOKENIZERS_DIST, WEB_DIR, make_server

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0  # the server's --timeout in these tests
SLACK_S = 3.0  # how much later than the timeout a connection may close on a busy 2-core box


@pytest.fixture(scope="module")
def port(tiny_bundle):
    for dist, probe in ((ORT_DIST, "ort.wasm.min.mjs"), (TOKENIZERS_DIST, "tokenizers.min.mjs")):
        if not (dist / probe).is_file():
            pytest.skip(f"{dist / probe} is not installed: run `npm ci` in {WEB_DIR}")
    server = make_server(tiny_bundle, host="127.0.0.1", port=0, timeout_s=TIMEOUT_S)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def read_response(sock: socket.socket, *, head_only: bool = False) -> tuple[int, dict, bytes]:
    """Read one HTTP response (status, lower-cased headers, body) off `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def exchange(port: int, request: bytes, *, head_only: bool = False) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock, head_only=head_only)


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


# (request bytes, expected status, what the JSON error must say; None = no body expected)
REQUESTS = {
    "unknown path": (get("/nope"), 404, "is not served here"),
    "file beside the page": (get("/serve.py"), 404, "is not served here"),
    "node_modules": (get("/node_modules/onnxruntime-web/package.json"), 404, "is not served"),
    "bundle file not in manifest": (get("/bundle/config.json.bak"), 404, "is not served here"),
    "traversal ..": (get("/bundle/../serve.py"), 404, "is not served here"),
    "traversal %2e%2e": (get("/bundle/%2e%2e/%2e%2e/serve.py"), 404, "is not served here"),
    "traversal to /etc": (get("/../../../../etc/passwd"), 404, "is not served here"),
    "traversal in vendor": (get("/vendor/../package.json"), 404, "is not served here"),
    "absolute URL": (get("http://evil.example/etc/passwd"), 404, "is not served here"),
    "POST": (get("/", "POST"), 405, "POST is not supported; this server only sends files"),
    "PUT": (get("/bundle/manifest.json", "PUT"), 405, "PUT is not supported"),
    "DELETE": (get("/bundle/model.onnx", "DELETE"), 405, "DELETE is not supported"),
    "OPTIONS": (get("/", "OPTIONS"), 200, None),
    "HEAD unknown": (get("/nope", "HEAD"), 404, None),
    "garbage request line": (b"GARBAGE\r\n\r\n", 400, "Bad request"),
    "HTTP/2.0 request line": (b"GET / HTTP/2.0\r\n\r\n", 505, "Invalid HTTP version"),
    "HTTP/0.9 request line": (b"GET /\r\n\r\n", 400, "HTTP/0.9 requests are not served"),
    "request line over 64 KiB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414,
                                 "Request-URI Too Long"),  # fmt: skip
    "101 headers": (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "Too many headers"),
}


@pytest.mark.parametrize("case", REQUESTS, ids=list(REQUESTS))
def test_bad_request_gets_a_json_4xx(port, case):
    request, status, message = REQUESTS[case]
    head_only = request.startswith(b"HEAD ")
    got_status, headers, body = exchange(port, request, head_only=head_only)
    assert got_status == status, (case, body[:300])
    assert headers["content-type"] == "application/json"
    if head_only:
        return
    payload = json.loads(body)
    if message is None:  # OPTIONS
        assert payload == {"allow": ["GET", "HEAD", "OPTIONS"]}
        assert headers["allow"] == "GET, HEAD, OPTIONS"
    else:
        assert payload["status"] == status
        assert message in payload["error"], payload
    if status == 405:
        assert headers["allow"] == "GET, HEAD, OPTIONS"


def test_a_get_with_a_body_is_answered_then_closed(port):
    """The body is not read, so it must not be parsed as the next request either."""
    body = b"DELETE / HTTP/1.1\r\n\r\n"
    request = b"GET /app.js HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        status, headers, answer = read_response(sock)
        assert (status, headers["connection"]) == (200, "close") and answer
        assert closed_after(sock)[1] == b""


def test_head_answers_like_get_without_a_body(port, tiny_bundle):
    status, headers, _ = exchange(port, get("/bundle/model.onnx", "HEAD"), head_only=True)
    assert status == 200
    assert int(headers["content-length"]) == (tiny_bundle / "model.onnx").stat().st_size


# -- slow and idle clients ----------------------------------------------------------------


def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Read until the server closes; seconds it took and what it sent."""
    started, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return time.monotonic() - started, data


SLOW_CLIENTS = {
    "idle, sends nothing": (b"", None),
    "half a request line": (b"GET /app.js HT", 408),
    "headers never finished": (b"GET /app.js HTTP/1.1\r\nHost: x\r\n", 408),
}


@pytest.mark.parametrize("case", SLOW_CLIENTS, ids=list(SLOW_CLIENTS))
def test_slow_client_is_answered_408_or_closed(port, case):
    sent, status = SLOW_CLIENTS[case]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + SLACK_S + 5) as sock:
        sock.sendall(sent)
        elapsed, data = closed_after(sock)
    assert elapsed < TIMEOUT_S + SLACK_S
    if status is None:
        assert data == b""
    else:
        assert data.startswith(b"HTTP/1.1 408 "), data[:100]
        body = json.loads(data.partition(b"\r\n\r\n")[2])
        assert body["status"] == 408
        assert "not complete within 1 s" in body["error"]


def test_a_client_trickling_bytes_is_cut_off_at_the_deadline(port):
    """One byte every 0.2 s never lets a per-recv timeout fire; the request deadline does."""
    request = get("/app.js")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + SLACK_S + 5) as sock:
        started = time.monotonic()
        sent = 0
        try:
            for byte in request[:-4]:  # never the final blank line
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.2)
                if time.monotonic() - started > TIMEOUT_S + SLACK_S:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already hung up: that is the point
        data = sock.recv(65536)
        elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT_S + SLACK_S, f"still open after {elapsed:.1f} s ({sent} bytes sent)"
    assert data.startswith(b"HTTP/1.1 408 "), data[:100]


def test_idle_and_half_sent_connections_are_all_closed(port):
    """Five at once (two idle, three half-sent): all closed within the timeout (#12.13)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + SLACK_S + 5)
             for _ in range(5)]  # fmt: skip
    try:
        for sock, sent in zip(socks, [b"", b"", b"GET / HTTP/1.1\r\n", b"GET", b"G"]):
            sock.sendall(sent)
        started = time.monotonic()
        results = [closed_after(sock) for sock in socks]
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert [data[:12] for _, data in results] == [b"", b"", *[b"HTTP/1.1 408"] * 3]
    finally:
        for sock in socks:
            sock.close()


def test_a_kept_alive_connection_serves_then_closes_when_idle(port):
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + SLACK_S + 5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200 and body
        elapsed, data = closed_after(sock)
    assert data == b"" and elapsed < TIMEOUT_S + SLACK_S


# -- bad bundles at start-up ----------------------------------------------------------------


def _copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _relist(bundle: Path, file: str) -> None:
    """Rewrite the manifest entry of `file` so its size and sha256 match the file again."""
    manifest = read_manifest_json(bundle)
    manifest["artifacts"] = [
        artifact_entry(bundle, file, variant=a["variant"]) if a["file"] == file else a
        for a in manifest["artifacts"]
    ]
    write_manifest(bundle, manifest)


def _no_manifest(b: Path) -> None:
    (b / "manifest.json").unlink()


def _damaged_manifest(b: Path) -> None:
    (b / "manifest.json").write_text('{"schema_version": 1, "task": ', encoding="utf-8")


def _manifest_without_keys(b: Path) -> None:
    (b / "manifest.json").write_text('{"schema_version": 1}', encoding="utf-8")


def _manifest_escapes_the_bundle(b: Path) -> None:
    manifest = read_manifest_json(b)
    manifest["tokenizer"]["file"] = "../../etc/passwd"
    write_manifest(b, manifest)


def _sha256_mismatch(b: Path) -> None:
    _flip_last_byte(b / "model.onnx")


def _truncated_model(b: Path) -> None:
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:100])


def _missing_tokenizer(b: Path) -> None:
    (b / "tokenizer.json").unlink()


def _unreadable_tokenizer(b: Path) -> None:
    (b / "tokenizer.json").write_text("{not json", encoding="utf-8")
    _relist(b, "tokenizer.json")


BAD_BUNDLES = {
    "missing folder": (lambda b: shutil.rmtree(b), "does not exist"),
    "a file, not a folder": (lambda b: shutil.rmtree(b) or b.write_text("x"), "is a file"),
    "no manifest": (_no_manifest, "no manifest.json in the bundle directory"),
    "damaged manifest": (_damaged_manifest, "manifest.json is not valid JSON"),
    "manifest without keys": (_manifest_without_keys, "'artifacts' must be a non-empty list"),
    "manifest names ../../etc/passwd": (_manifest_escapes_the_bundle, "points outside the bundle"),
    "sha256 mismatch": (_sha256_mismatch, "model.onnx: sha256 mismatch"),
    "truncated model": (_truncated_model, "model.onnx: size mismatch"),
    "missing tokenizer": (_missing_tokenizer, "tokenizer.json: listed in manifest.json but"),
    "tokenizer not JSON": (_unreadable_tokenizer, "is not a readable tokenizer.json"),
}


@pytest.mark.parametrize("case", BAD_BUNDLES, ids=list(BAD_BUNDLES))
def test_bad_bundle_stops_the_server_with_one_line(tiny_bundle, tmp_path, case):
    damage, message = BAD_BUNDLES[case]
    bundle = _copy(tiny_bundle, tmp_path)
    damage(bundle)
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.web.serve", str(bundle), "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert result.stdout == ""


def test_a_non_positive_timeout_is_refused_in_one_line(tiny_bundle):
    result = subprocess.run(
        [sys.executable, "-m", "sample_apps.web.serve", str(tiny_bundle), "--timeout", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (
        2, "error: the timeout must be a positive number of seconds, got 0.0\n")
