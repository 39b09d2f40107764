"""Serve the in-browser demo: the page, its JavaScript libraries and one bundle, on 127.0.0.1.

    python -m sample_apps.web.serve BUNDLE [--port 8000] [--host 127.0.0.1] [--timeout 10]

URL layout (nothing else is served, so the server never exposes other files on disk):
    /                the page (index.html, app.js, classifier.js, tokenizer.js)
    /ort/<file>      onnxruntime-web's ESM and wasm files   } from sample_apps/web/node_modules
    /vendor/<file>   tokenizers.js (@huggingface/tokenizers)} (run `npm ci` in sample_apps/web)
    /bundle/<file>   manifest.json and the files its manifest lists

Inference runs in the browser; this server only sends files, so the page works offline. It
checks the bundle before it listens (manifest, every listed file's size and sha256, the
tokenizer): a bad bundle is one line on stderr and exit status 2. It prints
`serving http://HOST:PORT/` once it listens (`--port 0` picks a free port).

Every answer that is not a file is JSON, {"error": "...", "status": code}: 404 for any other
path, 405 for methods other than GET, HEAD and OPTIONS (OPTIONS answers {"allow": [...]}),
400/414/431 for malformed requests. A client gets `--timeout` seconds (default 10) from the
moment the server waits for its request until the request's headers are complete: a
half-sent request is answered 408 and closed, an idle keep-alive connection is closed, and
a client that trickles a byte at a time is cut off at the deadline all the same. A client
that stops reading a response is dropped once a write stalls that long.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .._http import QuietThreadingHTTPServer

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
NODE_MODULES = WEB_DIR / "node_modules"
ORT_DIST = NODE_MODULES / "onnxruntime-web" / "dist"
TOKENIZERS_DIST = NODE_MODULES / "@huggingface" / "tokenizers" / "dist"
PAGE_FILES = ("index.html", "app.js", "classifier.js", "tokenizer.js")
VENDOR_FILES = ("tokenizers.min.mjs",)  # index.html's import map names it
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",  # needed for WebAssembly.instantiateStreaming
    ".json": "application/json",
}
# Ten seconds covers a request's headers on any real network (a browser sends them in one
# packet) and keeps a slow or idle client from holding a thread for long.
DEFAULT_TIMEOUT_S = 10.0
ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS")
_FIX = "pass an embslim bundle directory (the --out folder of `embslim run`), or re-export it"


class SetupError(RuntimeError):
    """The page cannot be served as asked (a bad bundle, no `npm ci`)."""


# task.type -> how the other apps serve such a bundle (the page only classifies)
_OTHER_TASKS = {
    "feature-extraction": ("/embed", "--embed", "embed"),
    "token-classification": ("/tag", "--tag", "tag"),
}


def check_bundle(bundle: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The bundle's folder and manifest, once every file it lists has the right size and sha256.

    Raises SetupError with one line saying what is wrong and what to do.
    """
    from embslim.runtime.errors import BundleError
    from embslim.runtime.manifest import read_manifest, sha256_file, task_type, verify_artifact

    bundle_dir = Path(bundle).resolve()
    where = bundle_dir / "manifest.json"
    try:
        manifest = read_manifest(bundle_dir)  # checks every key, and names that leave the bundle
        kind = task_type(manifest)
        if kind != "text-classification":  # the page's JavaScript turns logits into labels
            route, flag, verb = _OTHER_TASKS.get(kind, ("/predict", "", "run"))
            use = (
                f" ({verb} texts with `python -m sample_apps.service.serve BUNDLE` (POST {route}) "
                f"or `python -m sample_apps.cli.classify BUNDLE {flag}`)"
                if flag
                else ""
            )
            raise SetupError(
                f"{where}: a {kind} bundle; this page classifies text and needs a "
                f"text-classification bundle{use}"
            )
        names = [entry["file"] for entry in manifest["artifacts"]]
        for name in [*names, manifest["tokenizer"]["file"]]:
            if Path(name).name != name:  # the page fetches /bundle/<name>: one flat folder
                raise SetupError(f"{where} lists {name!r}, in a sub-folder; {_FIX}")
        if not any(name.endswith(".onnx") for name in names):
            raise SetupError(f"{where} lists no .onnx model; {_FIX}")
        for entry in manifest["artifacts"]:
            verify_artifact(bundle_dir, entry)
    except BundleError as e:
        raise SetupError(str(e)) from e
    tokenizer = manifest["tokenizer"]
    tokenizer_path = bundle_dir / tokenizer["file"]
    if not tokenizer_path.is_file():
        raise SetupError(f"{tokenizer_path}: the bundle's tokenizer is missing; {_FIX}")
    pinned = tokenizer.get("sha256")  # older manifests pin it here, not in "artifacts"
    if tokenizer["file"] not in names and isinstance(pinned, str):
        if sha256_file(tokenizer_path) != pinned.lower():
            raise SetupError(f"{tokenizer_path}: sha256 mismatch with the manifest's "
                             f"'tokenizer.sha256'; {_FIX}")  # fmt: skip
    try:
        json.loads(tokenizer_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SetupError(f"{tokenizer_path} is not a readable tokenizer.json ({e}); {_FIX}") from e
    return bundle_dir, manifest


def routes(
    bundle: str | os.PathLike[str],
    *,
    ort_dist: Path = ORT_DIST,
    tokenizers_dist: Path = TOKENIZERS_DIST,
) -> dict[str, Path]:
    """URL path -> file, for every file the server may send."""
    bundle_dir, manifest = check_bundle(bundle)
    for dist, probe in ((ort_dist, "ort.wasm.min.mjs"), (tokenizers_dist, VENDOR_FILES[0])):
        if not (dist / probe).is_file():
            raise SetupError(
                f"the page's JavaScript libraries are not installed ({dist / probe} is "
                f"missing): run `npm ci` in {WEB_DIR} first"
            )
    table = {"/": WEB_DIR / "index.html"}
    table.update({f"/{name}": WEB_DIR / name for name in PAGE_FILES})
    table.update({f"/vendor/{name}": tokenizers_dist / name for name in VENDOR_FILES})
    for path in ort_dist.iterdir():
        if path.name.startswith("ort") and path.suffix in (".mjs", ".wasm"):
            table[f"/ort/{path.name}"] = path
    names = {"manifest.json", manifest["tokenizer"]["file"]}
    names |= {entry["file"] for entry in manifest["artifacts"]}
    for name in sorted(names):
        path = (bundle_dir / name).resolve()
        if path.parent == bundle_dir and path.is_file():  # never a file outside the bundle
            table[f"/bundle/{name}"] = path
    return table


class _DeadlineReader(io.RawIOBase):
    """A socket reader that gives up at a deadline, however slowly the bytes arrive.

    A plain socket timeout restarts with every byte, so a client sending one byte every few
    seconds would hold its connection forever; here each recv only gets what is left.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None
        self.received = 0  # bytes of the current request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request was not complete in time")
            self._sock.settimeout(left)
        n = self._sock.recv_into(buffer)
        self.received += n
        return n


def make_server(
    bundle: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> QuietThreadingHTTPServer:
    """A server (not yet serving) for the page and `bundle`."""
    if not timeout_s > 0:
        raise SetupError(f"the timeout must be a positive number of seconds, got {timeout_s}")
    table = routes(bundle)

    class Handler(BaseHTTPRequestHandler):
        server_version = "embslim-web/0.2"
        protocol_version = "HTTP/1.1"  # keep-alive: the page loads a dozen files
        disable_nagle_algorithm = True  # headers and body are two writes: do not wait on ACKs
        timeout = timeout_s  # a write that stalls this long drops the client

        def setup(self) -> None:
            super().setup()
            self._reader = _DeadlineReader(self.connection)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            # http.server's loop, with one deadline for the request line and headers.
            self._reader.deadline = time.monotonic() + timeout_s
            self._reader.received = 0
            self._answered = False
            self.command, self.request_version, self.requestline = None, "HTTP/1.1", ""
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if len(self.raw_requestline) > 65536:
                    self.requestline = self.request_version = self.command = ""
                    self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():  # it answered 400/431/505 through send_error
                    return
                if self.request_version == "HTTP/0.9":  # a bare "GET /" line: no headers
                    self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not served")
                    return
                self._reader.deadline = None
                self.connection.settimeout(timeout_s)
                self.dispatch()
                self.wfile.flush()
            except TimeoutError:
                self.close_connection = True
                if self._reader.received and not self._answered:
                    self.connection.settimeout(min(timeout_s, 2.0))
                    self.send_json(HTTPStatus.REQUEST_TIMEOUT, {
                        "error": f"the request was not complete within {timeout_s:g} s; "
                                 "send the request line and headers at once",
                        "status": HTTPStatus.REQUEST_TIMEOUT,
                    })  # fmt: skip
                else:
                    logger.debug("closed an idle connection from %s", self.address_string())

        def dispatch(self) -> None:
            if self.command in ("GET", "HEAD"):
                has_body = self.headers.get("Content-Length", "0") != "0"
                if has_body or self.headers["Transfer-Encoding"]:
                    self.close_connection = True  # a body is never read: never parse it next
                self.send_file(body=self.command == "GET")
            elif self.command == "OPTIONS":
                self.send_json(HTTPStatus.OK, {"allow": list(ALLOWED_METHODS)})
            else:
                # The body (if any) is never read: close instead of reading it as a request.
                self.close_connection = True
                self.send_json(HTTPStatus.METHOD_NOT_ALLOWED, {
                    "error": f"{self.command} is not supported; this server only sends files: "
                             f"use {', '.join(ALLOWED_METHODS)}",
                    "status": HTTPStatus.METHOD_NOT_ALLOWED,
                })  # fmt: skip

        def send_file(self, *, body: bool) -> None:
            url_path = unquote(urlsplit(self.path).path)
            path = table.get(url_path)
            if path is None:
                self.send_json(HTTPStatus.NOT_FOUND, {
                    "error": f"{url_path[:200]!r} is not served here; the page is at /, the "
                             "bundle's files under /bundle/",
                    "status": HTTPStatus.NOT_FOUND,
                }, body=body)  # fmt: skip
                return
            self._answered = True
            self.send_response(HTTPStatus.OK)
            ctype = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Cache-Control", "no-cache")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if body:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, self.wfile)

        def send_json(self, status: HTTPStatus, payload: dict, *, body: bool = True) -> None:
            self._answered = True
            self.request_version = "HTTP/1.1"  # a status line even for a garbled request line
            data = json.dumps(payload).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.METHOD_NOT_ALLOWED or "allow" in payload:
                self.send_header("Allow", ", ".join(ALLOWED_METHODS))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """http.server's malformed-request answers (400, 414, 431, 505), as JSON."""
            status = HTTPStatus(code)
            self.close_connection = True
            self.send_json(status, {
                "error": f"{message or status.phrase}; send a well-formed HTTP/1.1 request",
                "status": int(status),
            }, body=self.command != "HEAD")  # fmt: skip

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

    return QuietThreadingHTTPServer((host, port), Handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sample_apps.web.serve",
        description="Serve the in-browser classifier page with one embslim bundle.",
    )
    parser.add_argument("bundle", help="bundle directory (holds manifest.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a client has to send a request's headers (and the most a "
                             "write may stall)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        server = make_server(args.bundle, host=args.host, port=args.port, timeout_s=args.timeout)
    except (SetupError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, always
        return 2
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
