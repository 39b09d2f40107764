"""A small HTTP service on the standard library and `runtime/`: it classifies texts with a
text-classification bundle, embeds them with a feature-extraction bundle, or tags their tokens
with a token-classification bundle.

    python -m sample_apps.service.serve BUNDLE [--port 8080] [--host 127.0.0.1]

The bundle's manifest says which (`embslim.runtime.load_bundle`). Endpoints (all answers are
JSON, errors included):
    POST /predict   text-classification bundles:
                    {"texts": ["a great movie", ...]}            single-text bundles
                    {"pairs": [["premise", "hypothesis"], ...]}  text-pair bundles
                    optional "top_k": 1..n_labels (default 1)
                    -> {"predictions": [{"label", "score", "probabilities", "top_k"}], "model"}
    POST /embed     feature-extraction bundles:
                    {"texts": ["how do I reset my password", ...]}
                    -> {"embeddings": [[float, ...], ...], "dim", "normalized"}
    POST /tag       token-classification bundles:
                    {"texts": ["Ada Lovelace lives in London", ...]}
                    optional "aggregation_strategy": "none", "simple" (default), "first",
                    "average" or "max", as transformers' token-classification pipeline
                    -> {"entities": [[{"entity_group", "score", "word", "start", "end"}, ...],
                        ...], "aggregation_strategy", "model"}  (one list per text; "none"
                        gives {"entity", "score", "index", "word", "start", "end"} per token)
    GET  /health    -> {"status": "ok", "model", "variant", "task", "task_type", "max_length",
                        "labels" and "pair" (classifier), "dim", "pooling" and "normalize"
                        (embedder) or "labels" (tagger), and every limit below}
    GET  /metrics   -> {"requests", "errors", "responses_by_status", "texts_classified",
                        "predict_latency_ms": {"p50", "p95", "window"}, "texts_embedded",
                        "embed_latency_ms": {"p50", "p95", "window"}, "texts_tagged",
                        "tag_latency_ms": {"p50", "p95", "window"}, "uptime_s"}
    HEAD on the GET routes answers their headers; OPTIONS on any route answers 200 with an
    `Allow` header and {"path", "allow"}; any other method is 405 (with `Allow`) or 501.

Errors are {"error": "<what was wrong and what to do>", "status": <code>}: 400 unreadable
JSON or HTTP, 404 unknown path (also another task's route, e.g. /embed on a classification
bundle or /predict on a tagger bundle: one line says which bundle this is and what to call
instead), 405 wrong method, 408 a request line, headers or body that did not arrive in
time, 411 no Content-Length, 413 body over --max-body-bytes or texts over
--max-request-chars in all, 415 not application/json, 422 well-formed JSON that is not a
valid request (wrong types, more than --max-batch texts, a text over the runtime's
max_chars, top_k out of range, pairs sent to a single-text bundle, an unknown
aggregation_strategy...), 503 the service is
full (with `Retry-After`), 500 a bug (logged with its traceback).

Limits (all flags; see the README's "Limits" for the measured memory they give):
- inference runs on a fixed pool of --workers threads (default 2), each ORT call on
  --threads intra-op threads (default 1); at most --queue further /predict (/embed, /tag)
  requests wait for a worker (default 32). One that finds workers + queue full is answered
  at once with 503, `Retry-After: 1` and `Connection: close`, before its body is read.
- at most --max-connections open connections (default 128); the next one gets the same
  503 and is closed, so slow or idle clients cannot pin an unbounded number of threads.
- a request: --max-body-bytes (1 MiB), --max-batch texts (64), --max-request-chars
  characters over all its texts (100,000). The runtime runs it --batch-tokens
  (512) tokens at a time (`batch_size = batch_tokens // max_length` texts per ORT call),
  so one request's activations stay in the tens of MB whatever it holds.
- timeouts: --idle-timeout s (15) for a kept-alive connection to start its next request
  (then it is closed silently); --header-timeout s (10) from a request's first byte to the
  end of its headers, and --body-timeout s (20) for its whole body (then 408 JSON and
  close); --write-timeout s (10) per answer.
- Text: a lone UTF-16 surrogate (a JSON "\\ud83d" escape without its pair) is replaced
  with U+FFFD by the runtime, as browsers do; it is never an error.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from embslim.runtime import (
    BundleError,
    Classifier,
    Embedder,
    InputError,
    Prediction,
    Tagger,
    load_bundle,
)
from embslim.runtime.spans import AGGREGATION_STRATEGIES

from .._http import QuietThreadingHTTPServer
from . import memory
from .metrics import Metrics

__all__ = [
    "InferencePool",
    "RequestError",
    "ServiceConfig",
    "ServiceHTTPServer",
    "main",
    "make_server",
    "parse_embed_request",
    "parse_predict_request",
    "parse_tag_request",
]

logger = logging.getLogger(__name__)

# 1 MiB holds 64 texts of ~16,000 characters each (or ~170,000 characters of \uXXXX-escaped
# text): far past max_length tokens for any BERT bundle, while a client cannot make the
# server buffer arbitrary amounts of memory.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# 64 texts keep one request's latency in tens of milliseconds on a CPU for a MiniLM-sized
# model; larger jobs should be split by the client (or use the CLI app for files).
DEFAULT_MAX_BATCH = 64
# The tokenizer reads every character before truncating at max_length tokens; 100,000
# characters in all (~1,500 characters a text at 64 texts, several times max_length tokens)
# bound that work and the transient Encoding objects per request.
DEFAULT_MAX_REQUEST_CHARS = 100_000
DEFAULT_WORKERS = 2
DEFAULT_QUEUE = 32
DEFAULT_MAX_CONNECTIONS = 128
# Tokens per ORT call (texts x max_length). On the largest legal request (64 texts of 1,560
# characters, MiniLM int8, max_length 64) 512 tokens a call peaked 28 MB over the warm RSS in
# 1.1 s; 2,048 tokens a call peaked 70 MB over it and took 3.8 s (2-core x86 box).
DEFAULT_BATCH_TOKENS = 512
DEFAULT_IDLE_TIMEOUT_S = 15.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 20.0
DEFAULT_WRITE_TIMEOUT_S = 10.0
# A queued request that has not reached a worker after this long gets 503: under overload
# clients learn it in seconds instead of waiting on a queue that only grows.
DEFAULT_QUEUE_TIMEOUT_S = 10.0
RETRY_AFTER_S = 1

ROUTES = {"/predict": ("POST",), "/embed": ("POST",), "/tag": ("POST",), "/health": ("GET",),
          "/metrics": ("GET",)}  # fmt: skip
REQUEST_KEYS = ("texts", "pairs", "top_k")
EMBED_REQUEST_KEYS = ("texts",)
TAG_REQUEST_KEYS = ("texts", "aggregation_strategy")


@dataclass(frozen=True)
class TaskRoute:
    """The inference route a bundle's task gets, and how messages speak of it."""

    path: str
    what: str  # what such a bundle is ("a classifier"), for the other route's 404
    verb: str  # what the route does to texts ("classify")
    done: str  # "classified": requests being ..., in the busy 503


# task.type -> its inference route; a service serves the one of its bundle, plus the GET routes.
TASK_ROUTES = {
    "text-classification": TaskRoute("/predict", "a classifier", "classify", "classified"),
    "feature-extraction": TaskRoute("/embed", "an embedder", "embed", "embedded"),
    "token-classification": TaskRoute("/tag", "a tagger", "tag", "tagged"),
}


def allowed_methods(path: str) -> tuple[str, ...]:
    """The methods a route answers, as its `Allow` header lists them."""
    methods = ROUTES[path]
    return (*methods, *(("HEAD",) if "GET" in methods else ()), "OPTIONS")


_INFERENCE_PATHS = frozenset(route.path for route in TASK_ROUTES.values())


def served_routes(task_type: str) -> dict[str, tuple[str, ...]]:
    """The routes a service on a bundle of `task_type` answers: its inference route, /health
    and /metrics (the other task's route answers 404 naming the right one)."""
    mine = TASK_ROUTES[task_type].path
    return {p: m for p, m in ROUTES.items() if p == mine or p not in _INFERENCE_PATHS}


class RequestError(Exception):
    """A request the service refuses: carries the HTTP status and a message for the client."""

    def __init__(
        self, status: HTTPStatus, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Limits of one service instance (see the module docstring)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS
    workers: int = DEFAULT_WORKERS
    queue: int = DEFAULT_QUEUE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_request_chars", "workers",
                     "max_connections", "batch_tokens"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) or self.queue < 0:
            raise ValueError(f"queue must be an integer >= 0, got {self.queue!r}")
        for name in ("queue_timeout_s", "idle_timeout_s", "header_timeout_s", "body_timeout_s",
                     "write_timeout_s"):  # fmt: skip
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def parse_predict_request(
    body: Any, *, is_pair: bool, max_batch: int, max_request_chars: int | None = None
) -> tuple[list[Any], int]:
    """Check a decoded /predict body; return (items for `Classifier.predict`, top_k).

    Raises `RequestError` (422; 413 for texts over `max_request_chars` characters in all)
    naming the field that is wrong and how to fix it.
    """
    example = '{"pairs": [["A man sleeps.", "A person rests."]]}' if is_pair else (
        '{"texts": ["a great movie"]}'
    )
    _check_fields(body, route="/predict", keys=REQUEST_KEYS, example=example)
    if ("texts" in body) == ("pairs" in body):
        raise _invalid(f'send exactly one of "texts" or "pairs", e.g. {example}')
    key = "pairs" if "pairs" in body else "texts"
    if (key == "pairs") != is_pair:
        kind, want = ("text pairs", "pairs") if is_pair else ("single texts", "texts")
        raise _invalid(f'this bundle classifies {kind}: send "{want}", not "{key}"; e.g. {example}')
    items = _batch(body, key, max_batch=max_batch, example=example)
    if key == "texts":
        chars = _text_chars(items)
    else:
        chars = 0
        for i, pair in enumerate(items):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _invalid(
                    f"pairs[{i}] is {_json_type(pair)}, expected a list of two strings "
                    '[text, text_pair], e.g. ["A man sleeps.", "A person rests."]'
                )
            for j, part in enumerate(pair):
                if not isinstance(part, str):
                    raise _invalid(f"pairs[{i}][{j}] is {_json_type(part)}, expected a string")
                chars += len(part)
        items = [tuple(pair) for pair in items]
    _check_request_chars(key, chars, max_request_chars)
    top_k = body.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise _invalid(f'"top_k" must be an integer, got {_json_type(top_k)}')
    return items, top_k


def parse_embed_request(
    body: Any, *, max_batch: int, max_request_chars: int | None = None
) -> list[str]:
    """Check a decoded /embed body; return the texts for `Embedder.encode`.

    The same checks, messages and codes as /predict's texts (422; 413 for texts over
    `max_request_chars` characters in all); "pairs" and "top_k" are unknown fields here.
    """
    example = '{"texts": ["how do I reset my password"]}'
    _check_fields(body, route="/embed", keys=EMBED_REQUEST_KEYS, example=example)
    if "texts" not in body:
        raise _invalid(f'send "texts", a list of strings, e.g. {example}')
    items = _batch(body, "texts", max_batch=max_batch, example=example)
    _check_request_chars("texts", _text_chars(items), max_request_chars)
    return items


def parse_tag_request(
    body: Any, *, max_batch: int, max_request_chars: int | None = None
) -> tuple[list[str], str]:
    """Check a decoded /tag body; return (texts for `Tagger.tag`, aggregation strategy).

    The texts get /embed's checks, messages and codes (422; 413 over `max_request_chars`);
    "aggregation_strategy" must be one of transformers' names (default "simple").
    """
    example = '{"texts": ["Ada Lovelace lives in London"], "aggregation_strategy": "simple"}'
    _check_fields(body, route="/tag", keys=TAG_REQUEST_KEYS, example=example)
    if "texts" not in body:
        raise _invalid(f'send "texts", a list of strings, e.g. {example}')
    items = _batch(body, "texts", max_batch=max_batch, example=example)
    _check_request_chars("texts", _text_chars(items), max_request_chars)
    strategy = body.get("aggregation_strategy", "simple")
    if strategy not in AGGREGATION_STRATEGIES:
        shown = _short(strategy) if isinstance(strategy, str) else _json_type(strategy)
        raise _invalid(
            f'"aggregation_strategy" must be one of {", ".join(AGGREGATION_STRATEGIES)} '
            f"(transformers' token-classification strategies), got {shown}"
        )
    return items, strategy


def _check_fields(body: Any, *, route: str, keys: Sequence[str], example: str) -> None:
    """A JSON object whose fields are all among `keys` (422 otherwise)."""
    if not isinstance(body, dict):
        raise _invalid(f"the body must be a JSON object like {example}, got {_json_type(body)}")
    unknown = sorted(set(body) - set(keys))
    if unknown:
        shown = ", ".join(_short(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise _invalid(
            f"unknown field(s) {shown}; a {route} body takes {', '.join(keys)}, e.g. {example}"
        )


def _batch(body: dict, key: str, *, max_batch: int, example: str) -> list[Any]:
    """`body[key]` as a non-empty list of at most `max_batch` items (422 otherwise)."""
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
    return items


def _text_chars(items: list[Any]) -> int:
    """Characters over all `items`, each of which must be a string (422 naming the first that is not)."""
    chars = 0
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise _invalid(f"texts[{i}] is {_json_type(text)}, expected a string")
        chars += len(text)
    return chars


def _check_request_chars(key: str, chars: int, max_request_chars: int | None) -> None:
    if max_request_chars is not None and chars > max_request_chars:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f'the {key} have {chars:,} characters in all, more than this service\'s limit of '
            f"{max_request_chars:,} per request; only the first max_length tokens of each text "
            "are used, so send the start of long texts, or split them over several requests",
        )


def prediction_json(pred: Prediction) -> dict[str, Any]:
    return {
        "label": pred.label,
        "score": pred.score,
        "probabilities": pred.probabilities,
        "top_k": [{"label": label, "score": score} for label, score in pred.top_k],
    }


class ServiceBusy(Exception):
    """No worker became free within the queue timeout."""


class InferencePool:
    """`workers` threads run every `Classifier.predict` (`Embedder.encode`, `Tagger.tag`); at most `workers + queue` requests
    are admitted at once (`try_enter` / `leave`), the rest are turned away (503), and an
    admitted request that waits more than `queue_timeout` s for a worker is `ServiceBusy`.

    A fixed pool, not one inference per request thread: ORT's and the tokenizer's buffers
    are allocated by a few long-lived threads, so they stay in a few malloc arenas instead
    of one per connection thread, and memory is bounded by workers, not by clients.
    """

    def __init__(
        self,
        model: Classifier | Embedder | Tagger,
        *,
        workers: int,
        queue: int,
        batch_size: int,
        queue_timeout: float,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._model = model
        self._slots = threading.BoundedSemaphore(workers)
        self.queue_timeout = queue_timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embslim-infer")
        self.capacity = workers + queue
        self.batch_size = batch_size
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        return self._admitted

    def try_enter(self) -> bool:
        with self._lock:
            if self._admitted >= self.capacity:
                return False
            self._admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._admitted -= 1
            idle = self._admitted == 0
        if idle and self._on_idle is not None:
            self._on_idle()

    def predict(self, items: list[Any], *, top_k: int) -> list[Prediction]:
        """`Classifier.predict` on a worker (`ServiceBusy` if none is free in time)."""
        return self._run(self._model.predict, items, top_k=top_k)  # type: ignore[union-attr]

    def tag(self, texts: list[str], *, aggregation_strategy: str) -> list[list[dict[str, Any]]]:
        """`Tagger.tag` on a worker: entities per text (`ServiceBusy` as `predict`)."""
        return self._run(self._model.tag, texts, aggregation_strategy=aggregation_strategy)  # type: ignore[union-attr]

    def embed(self, texts: list[str]) -> Any:
        """`Embedder.encode` on a worker: a float32 numpy array [n, dim] (`ServiceBusy` as
        `predict`)."""
        return self._run(self._model.encode, texts)  # type: ignore[union-attr]

    def _run(self, call: Callable[..., Any], items: list[Any], **kwargs: Any) -> Any:
        if not self._slots.acquire(timeout=self.queue_timeout):
            raise ServiceBusy
        try:
            future = self._executor.submit(call, items, batch_size=self.batch_size, **kwargs)
            return future.result()
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class ServiceHTTPServer(QuietThreadingHTTPServer):
    """The threaded server, plus a cap on open connections and the inference pool."""

    def __init__(self, address: tuple[str, int], handler: type, *, max_connections: int) -> None:
        self.max_connections = max_connections
        self._connections = 0
        self._count_lock = threading.Lock()
        self.pool: InferencePool | None = None
        self.trimmer: memory.IdleTrimmer | None = None
        self.metrics: Metrics | None = None
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            full = self._connections >= self.max_connections
            if not full:
                self._connections += 1
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget_connection()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget_connection()

    def _forget_connection(self) -> None:
        with self._count_lock:
            self._connections -= 1

    def _refuse(self, request: socket.socket) -> None:
        """503 on a connection over the cap, written from the accept loop (never blocks)."""
        payload = {
            "error": f"the service has {self.max_connections} open connections, its limit; "
            f"retry after {RETRY_AFTER_S} s",
            "status": 503,
        }
        data = json.dumps(payload).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nRetry-After: {RETRY_AFTER_S}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            request.setblocking(False)
            request.send(head + data)
        except OSError:
            pass
        if self.metrics is not None:
            self.metrics.record(path="-", status=503, seconds=0.0)
        self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        if self.pool is not None:
            self.pool.shutdown()
        if self.trimmer is not None:
            self.trimmer.stop()


class _DeadlineReader(io.RawIOBase):
    """The connection's read side, with a deadline per phase instead of a per-recv timeout.

    A per-recv socket timeout lets a client that sends one byte every few seconds hold the
    connection forever; here every recv gets only the time left until the phase's deadline.
    Phases: "idle" (waiting for the next request; its first byte starts "headers"),
    "headers" (request line and headers), "body", and "none" (no deadline).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.phase = "none"
        self.deadline: float | None = None
        self.expired: str | None = None  # the phase whose deadline passed
        self._header_timeout: float | None = None
        self.received = 0  # bytes received in this phase

    def readable(self) -> bool:
        return True

    def start(
        self, phase: str, timeout: float | None, *, header_timeout: float | None = None
    ) -> None:
        self.phase = phase
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._header_timeout = header_timeout
        self.expired = None
        self.received = 0

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.expired = self.phase
                raise TimeoutError(f"{self.phase} deadline passed")
            self._sock.settimeout(left)
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = self.phase
            raise
        if n and self.phase == "idle" and self._header_timeout is not None:
            self.start("headers", self._header_timeout)
            self.received = n
        else:
            self.received += n
        return n


def make_server(
    model: Classifier | Embedder | Tagger,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    config: ServiceConfig | None = None,
    metrics: Metrics | None = None,
) -> ServiceHTTPServer:
    """A threaded server (not yet serving) that answers with `model`: POST /predict for a
    `Classifier`, POST /embed for an `Embedder`, POST /tag for a `Tagger` (see the module
    docstring)."""
    cfg = config or ServiceConfig()
    stats = metrics or Metrics()
    # A stand-in without task_type (a test's gate around a Classifier) is a classifier.
    task_type = getattr(model, "task_type", Classifier.task_type)
    if task_type not in TASK_ROUTES:
        raise ValueError(f"the service serves {' and '.join(TASK_ROUTES)} bundles, not {task_type}")
    route = TASK_ROUTES[task_type]
    routes = served_routes(task_type)
    listing = ", ".join(f"{m[0]} {p}" for p, m in routes.items())
    health: dict[str, Any] = {
        "status": "ok",
        "model": model.model_path.name,
        "variant": model.artifact.get("variant"),
        "task": model.task_name,
        "task_type": task_type,
    }
    if route.path == "/embed":
        health.update(dim=model.dim, pooling=model.pooling, normalize=model.normalize)
    elif route.path == "/tag":
        health.update(labels=list(model.labels))
    else:
        health.update(labels=list(model.labels), pair=model.is_pair)
    health.update(max_length=model.max_length, **asdict(cfg))

    def wrong_route(path: str) -> str:
        """The 404 for another task's inference route."""
        other_type, other = next((t, r) for t, r in TASK_ROUTES.items() if r.path == path)
        return (
            f"this service runs a {task_type} bundle ({route.what}): it has no {path}; POST "
            f"{route.path} to {route.verb} texts, or start the service on a {other_type} bundle "
            f"to {other.verb} them"
        )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
        server_version = "embslim-service/0.2"
        timeout = cfg.idle_timeout_s  # replaced per phase by _DeadlineReader
        # Headers and body go out in two writes; with Nagle's algorithm on, the body waits
        # for the client's delayed ACK of the headers (~40 ms on Linux) on every response.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the plain socket reader; ours replaces it
            self._reader = _DeadlineReader(self.connection)
            self.rfile = io.BufferedReader(self._reader, 65536)

        def handle_one_request(self) -> None:
            self._reader.start("idle", cfg.idle_timeout_s, header_timeout=cfg.header_timeout_s)
            super().handle_one_request()  # closes the connection on a TimeoutError
            if self._reader.expired == "headers":
                self.close_connection = True
                self._send_raw_timeout()

        def do_GET(self) -> None:  # http.server dispatches on this name
            self._handle("GET")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_OPTIONS(self) -> None:
            self._handle("OPTIONS")

        def _handle(self, method: str) -> None:
            started = time.perf_counter()
            self._reader.start("none", None)
            path = urlsplit(self.path).path
            texts = 0
            headers: dict[str, str] = {}
            allow: tuple[str, ...] | None = None
            try:
                if method == "OPTIONS" and self.path == "*":
                    status = HTTPStatus.OK
                    every = {m for p in routes for m in allowed_methods(p)}
                    payload = {"path": "*", "allow": sorted(every)}
                    self._drain_small_body()
                elif path in ROUTES and path not in routes:
                    self._drain_small_body()
                    raise RequestError(HTTPStatus.NOT_FOUND, wrong_route(path))
                elif path not in routes:
                    self._drain_small_body()
                    raise RequestError(
                        HTTPStatus.NOT_FOUND,
                        f"no such path {_short(path)}; this service has {listing}",
                    )
                else:
                    allow = allowed_methods(path)
                    status, payload, texts = self._route(method, path, allow)
            except RequestError as e:
                status, payload = e.status, {"error": e.message, "status": int(e.status)}
                headers = e.headers
            except Exception:  # a bug: answer 500, keep serving, log the traceback
                logger.exception("internal error on %s %s", method, _short(path))
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                payload = {"error": "internal error; see the service log", "status": 500}
                self.close_connection = True
            # Recorded before the answer goes out, so a client that reads /metrics after a
            # response always sees that request counted.
            stats.record(
                path=path, status=int(status), seconds=time.perf_counter() - started, texts=texts
            )
            if method == "OPTIONS" and allow is not None and status == HTTPStatus.OK:
                headers = {**headers, "Allow": ", ".join(allow)}
            elif status == HTTPStatus.METHOD_NOT_ALLOWED and allow:
                headers = {**headers, "Allow": ", ".join(allow)}
            self._send(status, payload, headers=headers, body=method != "HEAD")

        def _route(
            self, method: str, path: str, allow: tuple[str, ...]
        ) -> tuple[HTTPStatus, Any, int]:
            if method == "OPTIONS":
                self._drain_small_body()
                return HTTPStatus.OK, {"path": path, "allow": list(allow)}, 0
            if method not in allow:
                self._drain_small_body()
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{path} takes {', '.join(ROUTES[path])}, not {method}",
                )
            if path == "/health":
                return HTTPStatus.OK, health, 0
            if path == "/metrics":
                return HTTPStatus.OK, stats.snapshot(), 0
            pool = self.server.pool
            if not pool.try_enter():
                self.close_connection = True  # the body stays unread
                raise RequestError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"the service is busy: {pool.capacity} requests are being {route.done} or "
                    f"queued, its limit; retry after {RETRY_AFTER_S} s",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            try:
                body = self._read_json()
                if path == "/embed":
                    texts = parse_embed_request(
                        body, max_batch=cfg.max_batch, max_request_chars=cfg.max_request_chars
                    )
                    vectors = self._infer(pool.embed, texts)
                elif path == "/tag":
                    texts, strategy = parse_tag_request(
                        body, max_batch=cfg.max_batch, max_request_chars=cfg.max_request_chars
                    )
                    found = self._infer(pool.tag, texts, aggregation_strategy=strategy)
                else:
                    items, top_k = parse_predict_request(
                        body,
                        is_pair=model.is_pair,
                        max_batch=cfg.max_batch,
                        max_request_chars=cfg.max_request_chars,
                    )
                    preds = self._infer(pool.predict, items, top_k=top_k)
            finally:
                pool.leave()
            if path == "/embed":
                payload = {
                    "embeddings": vectors.tolist(),  # float32 -> the float that prints it exactly
                    "dim": int(vectors.shape[1]),
                    "normalized": bool(model.normalize),
                }
                return HTTPStatus.OK, payload, len(texts)
            if path == "/tag":
                payload = {
                    "entities": found,
                    "aggregation_strategy": strategy,
                    "model": model.model_path.name,
                }
                return HTTPStatus.OK, payload, len(texts)
            payload = {
                "predictions": [prediction_json(p) for p in preds],
                "model": model.model_path.name,
            }
            return HTTPStatus.OK, payload, len(preds)

        def _infer(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            """Run `call` on the pool; the runtime's and the pool's failures as HTTP errors."""
            try:
                return call(*args, **kwargs)
            except InputError as e:
                raise _invalid(str(e)) from e
            except ServiceBusy as e:
                raise RequestError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"the service is busy: no worker was free within "
                    f"{cfg.queue_timeout_s:g} s; retry after {RETRY_AFTER_S} s",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from e
            except MemoryError as e:
                raise RequestError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "the service is out of memory; retry later with fewer or shorter texts",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from e

        def handle_expect_100(self) -> bool:
            """Answer "Expect: 100-continue" (curl sends it for bodies over 1 MB) with the 413
            at once, before the client uploads a body that would be refused anyway."""
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > cfg.max_body_bytes:
                return True  # no "100 Continue": the handler answers 413 and closes
            return super().handle_expect_100()

        def _drain_small_body(self) -> None:
            """Read a small body a refused request came with, so the connection stays usable;
            close the connection instead when there is a large or unknown one."""
            length = self.headers.get("Content-Length")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if chunked or (length is not None and not (length.isdigit() and int(length) <= 65536)):
                self.close_connection = True
                return
            if length and int(length) > 0:
                try:
                    self._read_body(int(length))
                except RequestError:
                    self.close_connection = True

        def _content_length(self) -> int:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.LENGTH_REQUIRED,
                    "chunked bodies are not accepted; send Content-Length",
                )
            values = self.headers.get_all("Content-Length") or []
            if not values:
                self.close_connection = True
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
            if len(set(v.strip() for v in values)) > 1:
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"{len(values)} different Content-Length headers; send one",
                )
            text = values[0].strip()
            if not (text.isascii() and text.isdigit()) or len(text) > 18:
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, f"Content-Length {_short(values[0])} is not a size"
                )
            return int(text)

        def _read_body(self, length: int) -> bytes:
            """Read exactly `length` bytes within --body-timeout seconds (408 if not)."""
            self._reader.start("body", cfg.body_timeout_s)
            chunks: list[bytes] = []
            got = 0
            try:
                while got < length:
                    chunk = self.rfile.read1(min(65536, length - got))
                    if not chunk:
                        self.close_connection = True
                        raise RequestError(
                            HTTPStatus.BAD_REQUEST,
                            f"the body ended after {got:,} of the {length:,} bytes its "
                            "Content-Length announced; send the whole body",
                        )
                    chunks.append(chunk)
                    got += len(chunk)
            except TimeoutError as e:
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"the body did not arrive within {cfg.body_timeout_s:g} s ({got:,} of "
                    f"{length:,} bytes came); send it in one go, or smaller",
                ) from e
            finally:
                self._reader.start("none", None)
            return b"".join(chunks)

        def _read_json(self) -> Any:
            length = self._content_length()
            if length > cfg.max_body_bytes:
                self.close_connection = True  # the unread body must not be parsed as a request
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body is {length:,} bytes, more than this service's limit of "
                    f"{cfg.max_body_bytes:,}; send fewer or shorter texts per request",
                )
            ctype = self.headers.get("Content-Type", "application/json")
            if ctype.split(";")[0].strip().lower() != "application/json":
                if length <= 65536:
                    self._read_body(length)  # keep the connection usable
                else:
                    self.close_connection = True
                raise RequestError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    f"Content-Type is {_short(ctype)}; send JSON with "
                    "'Content-Type: application/json'",
                )
            body = self._read_body(length)
            try:
                return json.loads(body.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not UTF-8: {e}") from e
            except json.JSONDecodeError as e:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                    'send e.g. {"texts": ["some text"]}',
                ) from e
            except RecursionError as e:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the JSON is nested too deeply") from e
            except ValueError as e:  # e.g. an integer of more than 4,300 digits
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, f"the body is not usable JSON ({_one_line(e)})"
                ) from e

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """http.server's own errors (bad request line, 414, 431, 501...) as JSON too."""
            try:
                status = HTTPStatus(code)
            except ValueError:
                status = HTTPStatus.BAD_REQUEST
            if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
                self.request_version = "HTTP/1.1"  # always answer with a status line
            if not hasattr(self, "requestline"):
                self.requestline = ""
            self.close_connection = True
            text = message or status.phrase
            if status == HTTPStatus.NOT_IMPLEMENTED:
                text = f"{text}; this service answers {listing}"
            stats.record(path="-", status=int(status), seconds=0.0)
            self._send(status, {"error": text, "status": int(status)},
                       body=getattr(self, "command", "") != "HEAD")  # fmt: skip

        def _send_raw_timeout(self) -> None:
            """408 for a request whose line or headers did not arrive in time."""
            self.request_version = "HTTP/1.1"
            if not getattr(self, "requestline", None):
                self.requestline = ""
            stats.record(path="-", status=408, seconds=0.0)
            message = (
                f"the request line and headers did not arrive within {cfg.header_timeout_s:g} s "
                "of its first byte; send the whole request at once"
            )
            try:
                self._send(HTTPStatus.REQUEST_TIMEOUT, {"error": message, "status": 408})
                self.wfile.flush()
            except OSError:
                pass  # the client is gone: nobody to tell

        def _send(
            self,
            status: HTTPStatus,
            payload: Any,
            *,
            headers: dict[str, str] | None = None,
            body: bool = True,
        ) -> None:
            try:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate in an echoed value: escape it
                data = json.dumps(payload).encode("ascii")
            self.connection.settimeout(cfg.write_timeout_s)
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

    server = ServiceHTTPServer((host, port), Handler, max_connections=cfg.max_connections)
    batch_size = max(1, cfg.batch_tokens // max(1, model.max_length))
    trimmer = memory.IdleTrimmer(lambda: server.pool is not None and server.pool.admitted > 0)
    server.trimmer = trimmer
    server.metrics = stats
    server.pool = InferencePool(
        model,
        workers=cfg.workers,
        queue=cfg.queue,
        batch_size=batch_size,
        queue_timeout=cfg.queue_timeout_s,
        on_idle=trimmer.poke,
    )
    return server


def _invalid(message: str) -> RequestError:
    return RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, message)


def _short(value: str, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge int"
        return f"a number ({shown})"
    return names.get(type(value), type(value).__name__)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sample_apps.service.serve",
        description="Serve an embslim bundle over HTTP: POST /predict (text-classification "
        "bundles), POST /embed (feature-extraction bundles) or POST /tag (token-classification "
        "bundles), GET /health, GET /metrics.",
    )
    d = ServiceConfig()
    pos_int, pos_float = _positive(int), _positive(float)
    parser.add_argument("bundle", help="bundle directory (holds manifest.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
    parser.add_argument("--variant", default="auto", help='"auto", "fp32", "int8", ...')
    parser.add_argument("--file", default=None, help="load this model file of the bundle")
    parser.add_argument("--threads", type=pos_int, default=1,
                        help="ONNX Runtime intra-op threads per worker (default 1)")  # fmt: skip
    parser.add_argument("--workers", type=pos_int, default=d.workers,
                        help="inference threads (default %(default)s)")  # fmt: skip
    parser.add_argument("--queue", type=int, default=d.queue,
                        help="/predict requests that may wait for a worker; more get 503 "
                             "(default %(default)s)")  # fmt: skip
    parser.add_argument("--max-connections", type=pos_int, default=d.max_connections,
                        help="open connections; more get 503 (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-batch", type=pos_int, default=d.max_batch,
                        help="most texts in one request (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-body-bytes", type=pos_int, default=d.max_body_bytes,
                        help="largest request body accepted (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-request-chars", type=pos_int, default=d.max_request_chars,
                        help="most characters over all texts of a request "
                             "(default %(default)s)")  # fmt: skip
    parser.add_argument("--batch-tokens", type=pos_int, default=d.batch_tokens,
                        help="tokens per ONNX Runtime call (default %(default)s)")  # fmt: skip
    parser.add_argument("--queue-timeout", type=pos_float, default=d.queue_timeout_s,
                        help="seconds a request may wait for a worker before 503")
    parser.add_argument("--idle-timeout", type=pos_float, default=d.idle_timeout_s,
                        help="seconds a kept-alive connection may wait for its next request")
    parser.add_argument("--header-timeout", type=pos_float, default=d.header_timeout_s,
                        help="seconds from a request's first byte to the end of its headers")
    parser.add_argument("--body-timeout", type=pos_float, default=d.body_timeout_s,
                        help="seconds for a request's whole body")
    parser.add_argument("--write-timeout", type=pos_float, default=d.write_timeout_s,
                        help="seconds to write an answer")
    parser.add_argument("--malloc-arenas", type=pos_int, default=2,
                        help="glibc malloc arenas (Linux; default %(default)s)")  # fmt: skip
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    # Before any request thread exists, so every thread shares these arenas.
    memory.limit_malloc_arenas(args.malloc_arenas)
    try:
        config = ServiceConfig(
            max_body_bytes=args.max_body_bytes,
            max_batch=args.max_batch,
            max_request_chars=args.max_request_chars,
            workers=args.workers,
            queue=args.queue,
            max_connections=args.max_connections,
            batch_tokens=args.batch_tokens,
            queue_timeout_s=args.queue_timeout,
            idle_timeout_s=args.idle_timeout,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            write_timeout_s=args.write_timeout,
        )
        # No ORT arena: a burst's activation memory is freed after each run, and the idle
        # malloc_trim hands it back to the OS (README, "Limits": measured).
        model = load_bundle(
            args.bundle, variant=args.variant, file=args.file, threads=args.threads,
            memory_arena=False,
        )
        server = make_server(model, host=args.host, port=args.port, config=config)
    except OSError as e:
        import errno

        hint = (f"; another process listens on port {args.port}: pick another --port (0 = any free port)"
                if e.errno == errno.EADDRINUSE else "")
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except (BundleError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/ ({model!r})", flush=True)

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
