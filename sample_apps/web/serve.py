"""Serve the in-browser demo: the page, onnxruntime-web and one bundle, on 127.0.0.1.

    python -m sample_apps.web.serve BUNDLE [--port 8000] [--host 127.0.0.1]

URL layout (nothing else is served, so the server never exposes other files on disk):
    /                the page (index.html, app.js, classifier.js, wordpiece.js)
    /ort/<file>      onnxruntime-web's ESM and wasm files, from sample_apps/web/node_modules
                     (run `npm ci` in sample_apps/web first)
    /bundle/<file>   manifest.json and the files its manifest lists

Inference runs in the browser; this server only sends files. It prints
`serving http://HOST:PORT/` once it listens (`--port 0` picks a free port).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .._http import QuietThreadingHTTPServer

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
ORT_DIST = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
PAGE_FILES = ("index.html", "app.js", "classifier.js", "wordpiece.js")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",  # needed for WebAssembly.instantiateStreaming
    ".json": "application/json",
}


class SetupError(RuntimeError):
    """The page cannot be served as asked (no onnxruntime-web, no bundle)."""


def routes(bundle: str | os.PathLike[str], *, ort_dist: Path = ORT_DIST) -> dict[str, Path]:
    """URL path -> file, for every file the server may send."""
    bundle_dir = Path(bundle).resolve()
    manifest_path = bundle_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SetupError(
            f"{str(bundle_dir)!r} has no manifest.json; pass an embslim bundle directory "
            "(the --out folder of `embslim run`)"
        )
    if not (ort_dist / "ort.wasm.min.mjs").is_file():
        raise SetupError(
            f"onnxruntime-web is not installed ({ort_dist} is missing): run `npm ci` in "
            f"{WEB_DIR} first"
        )
    table = {"/": WEB_DIR / "index.html"}
    table.update({f"/{name}": WEB_DIR / name for name in PAGE_FILES})
    for path in ort_dist.iterdir():
        if path.name.startswith("ort") and path.suffix in (".mjs", ".wasm"):
            table[f"/ort/{path.name}"] = path
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    names = {"manifest.json", manifest["tokenizer"]["file"]}
    names |= {entry["file"] for entry in manifest["artifacts"]}
    for name in sorted(names):
        path = (bundle_dir / name).resolve()
        if path.parent == bundle_dir and path.is_file():  # never a file outside the bundle
            table[f"/bundle/{name}"] = path
    return table


def make_server(
    bundle: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000
) -> QuietThreadingHTTPServer:
    """A server (not yet serving) for the page and `bundle`."""
    table = routes(bundle)

    class Handler(BaseHTTPRequestHandler):
        server_version = "embslim-web/0.1"
        disable_nagle_algorithm = True  # headers and body are two writes: do not wait on ACKs

        def do_GET(self) -> None:  # http.server dispatches on this name
            path = table.get(unquote(urlsplit(self.path).path))
            if path is None:
                body = b"not found\n"
                self.send_response(HTTPStatus.NOT_FOUND)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(HTTPStatus.OK)
            ctype = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile)

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        server = make_server(args.bundle, host=args.host, port=args.port)
    except (SetupError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
