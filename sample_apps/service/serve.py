"""A small HTTP classification service on the standard library and `runtime/`.

    python -m sample_apps.service.serve BUNDLE [--port 8080] [--host 127.0.0.1]

Endpoints (all answers are JSON):
    POST /predict   {"texts": ["a great movie", ...]}            single-text bundles
                    {"pairs": [["premise", "hypothesis"], ...]}  text-pair bundles
                    optional "top_k": 1..n_labels (default 1)
                    -> {"predictions": [{"label", "score", "probabilities", "top_k"}], "model"}
    GET  /health    -> {"status": "ok", "model", "variant", "labels", "pair", "max_length", ...}
    GET  /metrics   -> {"requests", "errors", "responses_by_status", "texts_classified",
                        "predict_latency_ms": {"p50", "p95", "window"}, "uptime_s"}

Errors are {"error": "<what was wrong and what to do>", "status": <code>}: 400 unreadable
JSON, 404 unknown path, 405 wrong method, 411 no Content-Length, 413 body over --max-body-bytes,
415 not application/json, 422 well-formed JSON that is not a valid request (wrong types, more
than --max-batch texts, a text over the runtime's max_chars, pairs sent to a single-text
bundle...), 500 a bug (logged with its traceback).

One `Classifier` (one ONNX Runtime session) serves every request thread; ORT runs each
request on `--threads` intra-op threads (default 1: concurrency comes from requests).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from embslim.runtime import BundleError, Classifier, InputError, Prediction

from .._http import QuietThreadingHTTPServer
from .metrics import Metrics

__all__ = ["RequestError", "ServiceConfig", "main", "make_server", "parse_predict_request"]

logger = logging.getLogger(__name__)

# 1 MiB holds 64 texts of ~16,000 characters each: far past max_length tokens for any BERT
# bundle, while a client cannot make the server buffer arbitrary amounts of memory.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# 64 texts keep one request's latency in tens of milliseconds on a CPU for a MiniLM-sized
# model; larger jobs should be split by the client (or use the CLI app for files).
DEFAULT_MAX_BATCH = 64
ROUTES = {"/predict": ("POST",), "/health": ("GET",), "/metrics": ("GET",)}
REQUEST_KEYS = ("texts", "pairs", "top_k")


class RequestError(Exception):
    """A request the service refuses: carries the HTTP status and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Limits of one service instance."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def parse_predict_request(
    body: Any, *, is_pair: bool, max_batch: int
) -> tuple[list[Any], int]:
    """Check a decoded /predict body; return (items for `Classifier.predict`, top_k).

    Raises `RequestError` (422) naming the field that is wrong and how to fix it.
    """
    example = '{"pairs": [["A man sleeps.", "A person rests."]]}' if is_pair else (
        '{"texts": ["a great movie"]}'
    )
    if not isinstance(body, dict):
        raise _invalid(f"the body must be a JSON object like {example}, got {_json_type(body)}")
    unknown = sorted(set(body) - set(REQUEST_KEYS))
    if unknown:
        raise _invalid(
            f"unknown field(s) {', '.join(map(repr, unknown))}; a /predict body takes "
            f"{', '.join(REQUEST_KEYS)}, e.g. {example}"
        )
    if ("texts" in body) == ("pairs" in body):
        raise _invalid(f'send exactly one of "texts" or "pairs", e.g. {example}')
    key = "pairs" if "pairs" in body else "texts"
    if (key == "pairs") != is_pair:
        kind, want = ("text pairs", "pairs") if is_pair else ("single texts", "texts")
        raise _invalid(f'this bundle classifies {kind}: send "{want}", not "{key}"; e.g. {example}')
    items = body[key]
    if not isinstance(items, list):
        raise _invalid(f'"{key}" must be a list, got {_json_type(items)}; e.g. {example}')
    if not items:
        raise _invalid(f'"{key}" is empty; send at least one, e.g. {example}')
    if len(items) > max_batch:
        raise _invalid(
            f'"{key}" has {len(items)} items, more than this service\'s limit of {max_batch} '
            "per request; split them over several requests"
        )
    if key == "texts":
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise _invalid(f"texts[{i}] is {_json_type(text)}, expected a string")
    else:
        for i, pair in enumerate(items):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _invalid(
                    f"pairs[{i}] is {_json_type(pair)}, expected a list of two strings "
                    '[text, text_pair], e.g. ["A man sleeps.", "A person rests."]'
                )
            for j, part in enumerate(pair):
                if not isinstance(part, str):
                    raise _invalid(f"pairs[{i}][{j}] is {_json_type(part)}, expected a string")
        items = [tuple(pair) for pair in items]
    top_k = body.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise _invalid(f'"top_k" must be an integer, got {_json_type(top_k)}')
    return items, top_k


def prediction_json(pred: Prediction) -> dict[str, Any]:
    return {
        "label": pred.label,
        "score": pred.score,
        "probabilities": pred.probabilities,
        "top_k": [{"label": label, "score": score} for label, score in pred.top_k],
    }


def make_server(
    classifier: Classifier,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    config: ServiceConfig | None = None,
    metrics: Metrics | None = None,
) -> QuietThreadingHTTPServer:
    """A threaded server (not yet serving) that answers with `classifier`."""
    cfg = config or ServiceConfig()
    stats = metrics or Metrics()
    health = {
        "status": "ok",
        "model": classifier.model_path.name,
        "variant": classifier.artifact.get("variant"),
        "task": classifier.task_name,
        "labels": list(classifier.labels),
        "pair": classifier.is_pair,
        "max_length": classifier.max_length,
        "max_batch": cfg.max_batch,
        "max_body_bytes": cfg.max_body_bytes,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
        server_version = "embslim-service/0.1"
        timeout = 30  # seconds a connection may sit idle or trickle a body
        # Headers and body go out in two writes; with Nagle's algorithm on, the body waits
        # for the client's delayed ACK of the headers (~40 ms on Linux) on every response.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # http.server dispatches on this name
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def _handle(self, method: str) -> None:
            started = time.perf_counter()
            path = urlsplit(self.path).path
            texts = 0
            try:
                allowed = ROUTES.get(path)
                if allowed is None:
                    raise RequestError(
                        HTTPStatus.NOT_FOUND,
                        f"no such path {path!r}; this service has "
                        + ", ".join(f"{m[0]} {p}" for p, m in ROUTES.items()),
                    )
                if method not in allowed:
                    raise RequestError(
                        HTTPStatus.METHOD_NOT_ALLOWED,
                        f"{path} takes {', '.join(allowed)}, not {method}",
                    )
                if path == "/health":
                    status, payload = HTTPStatus.OK, health
                elif path == "/metrics":
                    status, payload = HTTPStatus.OK, stats.snapshot()
                else:
                    items, top_k = parse_predict_request(
                        self._read_json(), is_pair=classifier.is_pair, max_batch=cfg.max_batch
                    )
                    try:
                        preds = classifier.predict(items, top_k=top_k)
                    except InputError as e:
                        raise _invalid(str(e)) from e
                    texts = len(preds)
                    status = HTTPStatus.OK
                    payload = {
                        "predictions": [prediction_json(p) for p in preds],
                        "model": classifier.model_path.name,
                    }
            except RequestError as e:
                status, payload = e.status, {"error": e.message, "status": int(e.status)}
            except Exception:  # a bug: answer 500, keep serving, log the traceback
                logger.exception("internal error on %s %s", method, path)
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                payload = {"error": "internal error; see the service log", "status": 500}
            # Recorded before the answer goes out, so a client that reads /metrics after a
            # response always sees that request counted.
            stats.record(
                path=path, status=int(status), seconds=time.perf_counter() - started, texts=texts
            )
            self._send(status, payload, allow=ROUTES.get(path))

        def handle_expect_100(self) -> bool:
            """Answer "Expect: 100-continue" (curl sends it for bodies over 1 MB) with the 413
            at once, before the client uploads a body that would be refused anyway."""
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > cfg.max_body_bytes:
                return True  # no "100 Continue": the handler answers 413 and closes
            return super().handle_expect_100()

        def _read_json(self) -> Any:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.LENGTH_REQUIRED,
                    "chunked bodies are not accepted; send Content-Length",
                )
            length_header = self.headers.get("Content-Length")
            if length_header is None:
                self.close_connection = True
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
            try:
                length = int(length_header)
                if length < 0:
                    raise ValueError(length_header)
            except ValueError as e:
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, f"Content-Length {length_header!r} is not a size"
                ) from e
            if length > cfg.max_body_bytes:
                self.close_connection = True  # the unread body must not be parsed as a request
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body is {length:,} bytes, more than this service's limit of "
                    f"{cfg.max_body_bytes:,}; send fewer or shorter texts per request",
                )
            body = self.rfile.read(length)
            ctype = self.headers.get("Content-Type", "application/json")
            if ctype.split(";")[0].strip().lower() != "application/json":
                raise RequestError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    f"Content-Type is {ctype!r}; send JSON with 'Content-Type: application/json'",
                )
            try:
                return json.loads(body.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not UTF-8: {e}") from e
            except json.JSONDecodeError as e:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                    'send e.g. {"texts": ["a great movie"]}',
                ) from e
            except RecursionError as e:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the JSON is nested too deeply") from e

        def _send(
            self, status: HTTPStatus, payload: Any, *, allow: Sequence[str] | None = None
        ) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if status == HTTPStatus.METHOD_NOT_ALLOWED and allow:
                self.send_header("Allow", ", ".join(allow))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

    return QuietThreadingHTTPServer((host, port), Handler)


def _invalid(message: str) -> RequestError:
    return RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, message)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a number ({value!r})"
    return names.get(type(value), type(value).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sample_apps.service.serve",
        description="Serve an embslim bundle over HTTP: POST /predict, GET /health, GET /metrics.",
    )
    parser.add_argument("bundle", help="bundle directory (holds manifest.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
    parser.add_argument("--variant", default="auto", help='"auto", "fp32", "int8", ...')
    parser.add_argument("--file", default=None, help="load this model file of the bundle")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per request")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most texts in one request")  # fmt: skip
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body accepted")  # fmt: skip
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = ServiceConfig(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch)
        classifier = Classifier.from_bundle(
            args.bundle, variant=args.variant, file=args.file, threads=args.threads
        )
        server = make_server(classifier, host=args.host, port=args.port, config=config)
    except (BundleError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/ ({classifier!r})", flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
