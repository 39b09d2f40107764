"""The service's part of the bad-input matrix (issue #12): every request the service does not
expect is answered 4xx (503 when full) with a JSON {"error", "status"}, never a 500 or an
HTML page, and nothing is logged as a traceback.

Items: 3 (a bundle whose tokenizer ids exceed the graph: the service refuses to start),
10 (lone surrogates in JSON are classified as U+FFFD), 12 (caps: body, batch, characters
per request, queue -> 503 + Retry-After, connections), 13 (slow clients -> 408 or closed),
14 (types, ranges, sizes, methods, HTTP framing).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
from tiny_bundle import with_token_ids

from embslim.runtime import Classifier
from sample_apps.service.metrics import Metrics
from sample_apps.service.serve import ServiceConfig, main, make_server

LIMITS = {"max_batch": 8, "max_body_bytes": 8192, "max_request_chars": 300,
          "idle_timeout_s": 1.0, "header_timeout_s": 0.6, "body_timeout_s": 0.6}  # fmt: skip


def start(classifier, **config):
    server = make_server(classifier, host="127.0.0.1", port=0, config=ServiceConfig(**config),
                         metrics=Metrics())  # fmt: skip
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def clf(tiny_bundle):
    return Classifier.from_bundle(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def port(clf):
    server = start(clf, **LIMITS)
    yield server.server_address[1]
    stop(server)


@pytest.fixture(autouse=True)
def no_tracebacks(caplog):
    caplog.set_level(logging.DEBUG, logger="sample_apps")
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def exchange(port, data: bytes, *, pace: float | None = None, chunk: int = 1,
             half_close: bool = False, timeout: float = 10, prefix: bytes = b""):  # fmt: skip
    """Send `prefix` at once, then raw bytes (optionally `chunk` bytes every `pace` s,
    stopping when the server closes); read until it closes or one response is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(prefix)
            if pace is None:
                sock.sendall(data)
            else:
                for i in range(0, len(data), chunk):
                    sock.sendall(data[i : i + chunk])
                    time.sleep(pace)
        except OSError:
            pass  # the server gave up on us: read what it said
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            try:
                part = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            reply += part
            head, sep, body = reply.partition(b"\r\n\r\n")
            if sep:
                length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
    return parse(reply)


def parse(reply: bytes):
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def post(body: bytes, *, ctype="application/json", extra: str = "", length: str | None = None):
    length = str(len(body)) if length is None else length
    return (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode() + body  # fmt: skip


def assert_json_error(status, headers, body, want_status, pattern):
    import re

    assert status == want_status, (status, body[:300])
    assert headers["content-type"] == "application/json; charset=utf-8"
    payload = json.loads(body)
    assert set(payload) == {"error", "status"} and payload["status"] == want_status, payload
    assert "\n" not in payload["error"] and "Traceback" not in payload["error"]
    assert re.search(pattern, payload["error"]), payload["error"]
    return payload


# -- bodies: types, ranges, sizes (items 12, 14) -------------------------------------------

BODIES = [
    ("top-k-inf", b'{"texts": ["a"], "top_k": 1e999}', 422, r'^"top_k" must be an integer, got a number \(inf\)$'),
    ("top-k-nan", b'{"texts": ["a"], "top_k": NaN}', 422, r'^"top_k" must be an integer, got a number \(nan\)$'),
    ("top-k-float", b'{"texts": ["a"], "top_k": 1.0}', 422, r'^"top_k" must be an integer'),
    ("top-k-negative", b'{"texts": ["a"], "top_k": -1}', 422, r"^top_k must be between 1 and 2 \(the number of labels\), got -1"),
    ("top-k-huge", b'{"texts": ["a"], "top_k": 1' + b"0" * 40 + b"}", 422, r"^top_k must be between 1 and 2"),
    ("top-k-5000-digits", b'{"texts": ["a"], "top_k": ' + b"9" * 5000 + b"}", 400, r"^the body is not usable JSON \(Exceeds the limit \(4300 digits\)"),
    ("top-k-null", b'{"texts": ["a"], "top_k": null}', 422, r'^"top_k" must be an integer, got null$'),
    ("body-null", b"null", 422, r"^the body must be a JSON object like .*, got null$"),
    ("body-string", b'"a great movie"', 422, r"got a string$"),
    ("body-number", b"42", 422, r"got a number \(42\)$"),
    ("body-true", b"true", 422, r"got a boolean$"),
    ("texts-object", b'{"texts": {"a": 1}}', 422, r'^"texts" must be a list, got an object'),
    ("texts-number", b'{"texts": 3}', 422, r'^"texts" must be a list, got a number \(3\)'),
    ("texts-nested", b'{"texts": [["a"]]}', 422, r"^texts\[0\] is a list, expected a string$"),
    ("texts-and-pairs", b'{"texts": ["a"], "pairs": [["a", "b"]]}', 422, r'^send exactly one of "texts" or "pairs"'),
    ("unknown-fields", json.dumps({f"k{i}": i for i in range(20)}).encode(), 422, r"^unknown field\(s\) 'k0', 'k1', 'k10', 'k11', 'k12', \.\.\.; a /predict body takes"),
    ("surrogate-key", b'{"texts": ["a"], "\\ud83d": 1}', 422, r"^unknown field\(s\) '\\ud83d'"),
    ("too-many-texts", json.dumps({"texts": ["x"] * 9}).encode(), 422, r"^\"texts\" has 9 items, more than this service's limit of 8 per request"),
    ("too-many-chars", json.dumps({"texts": ["x" * 200, "y" * 101]}).encode(), 413, r"^the texts have 301 characters in all, more than this service's limit of 300 per request; "),
    ("text-over-max-chars", json.dumps({"texts": ["z" * 150]}).encode(), 422, r"^texts\[0\] has 150 characters, more than max_chars=100"),
    ("body-too-large", json.dumps({"texts": ["w" * 10000]}).encode(), 413, r"^the body is 10,\d{3} bytes, more than this service's limit of 8,192"),
    ("bad-utf8", b'{"texts": ["\xff"]}', 400, r"^the body is not UTF-8"),
    ("truncated-json", b'{"texts": ["a"', 400, r"^the body is not valid JSON \(Expecting ',' delimiter at line 1"),
    ("deep-json", b"[" * 3000 + b"]" * 3000, 400, r"^the JSON is nested too deeply$"),
    ("empty-body", b"", 400, r"^the body is not valid JSON \(Expecting value"),
]  # fmt: skip


@pytest.fixture(scope="module")
def small_chars_port(tiny_bundle):
    server = start(Classifier.from_bundle(tiny_bundle, threads=1, max_chars=100), **LIMITS)
    yield server.server_address[1]
    stop(server)


@pytest.mark.parametrize(("body", "want", "pattern"), [row[1:] for row in BODIES],
                         ids=[row[0] for row in BODIES])  # fmt: skip
def test_bad_bodies(small_chars_port, body, want, pattern):
    assert_json_error(*exchange(small_chars_port, post(body)), want, pattern)


# -- HTTP framing and methods (item 14) ------------------------------------------------------

FRAMING = [
    ("content-length-underscore", post(b'{"texts":["a"]}', length="1_5"), 400, r"^Content-Length '1_5' is not a size$"),
    ("content-length-negative", post(b"", length="-1"), 400, r"^Content-Length '-1' is not a size$"),
    ("content-length-plus", post(b'{"texts":["a"]}', length="+15"), 400, r"is not a size$"),
    ("content-length-huge", post(b"", length="9" * 40), 400, r"is not a size$"),
    ("two-content-lengths", post(b'{"texts":["a"]}', extra="Content-Length: 3\r\n"), 400, r"^2 different Content-Length headers; send one$"),
    ("no-content-length", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n", 411, r"^send a Content-Length header$"),
    ("chunked", b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, r"^chunked bodies are not accepted"),
    ("text-plain", post(b"a great movie", ctype="text/plain"), 415, r"^Content-Type is 'text/plain'; send JSON"),
    ("put", b"PUT /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, r"^/predict takes POST, not PUT$"),
    ("trace", b"TRACE /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, r"^Unsupported method \('TRACE'\); this service answers POST /predict"),
    ("garbage-request-line", b"HELLO\r\n\r\n", 400, r"^Bad request syntax \('HELLO'\)$"),
    ("bad-version", b"GET /health HTTP/9.9\r\n\r\n", 505, r"^Invalid HTTP version \(9\.9\)$"),
    ("request-line-too-long", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, r"^Request-URI Too Long$"),
    ("too-many-headers", b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431, r"^Too many headers$"),
    ("unknown-path", b"GET /predictions HTTP/1.1\r\nHost: x\r\n\r\n", 404, r"^no such path '/predictions'; this service has POST /predict"),
    ("post-unknown-path-with-body", post(b"{}").replace(b"/predict", b"/nope"), 404, r"^no such path '/nope'"),
]  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "want", "pattern"), [row[1:] for row in FRAMING],
                         ids=[row[0] for row in FRAMING])  # fmt: skip
def test_bad_http(port, request_bytes, want, pattern):
    assert_json_error(*exchange(port, request_bytes), want, pattern)


def test_head_answers_the_get_headers_without_a_body(port):
    status, headers, body = exchange(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert status == 200 and body == b""
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert int(headers["content-length"]) > 50
    status, headers, body = exchange(port, b"HEAD /predict HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert status == 405 and headers["allow"] == "POST, OPTIONS" and body == b""


@pytest.mark.parametrize(("target", "allow"), [("/predict", ["POST", "OPTIONS"]),
                                               ("/health", ["GET", "HEAD", "OPTIONS"]),
                                               ("*", ["GET", "HEAD", "OPTIONS", "POST"])])  # fmt: skip
def test_options_answers_json_with_allow(port, target, allow):
    status, headers, body = exchange(port, f"OPTIONS {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 200 and json.loads(body) == {"path": target, "allow": allow}
    assert target == "*" or headers["allow"] == ", ".join(allow)


# -- item 13: slow clients ------------------------------------------------------------------


def test_a_trickled_body_is_408_json_and_the_connection_closes(port):
    started = time.monotonic()
    body = json.dumps({"texts": ["a great movie"] * 4}).encode()
    head = post(b"", length=str(len(body)))
    status, headers, reply = exchange(port, body, prefix=head, pace=0.05, chunk=4)
    assert_json_error(status, headers, reply, 408,
                      r"^the body did not arrive within 0\.6 s \(\d+ of \d+ bytes came\); send ")  # fmt: skip
    assert headers["connection"] == "close"
    assert time.monotonic() - started < 5


def test_trickled_headers_are_408_json(port):
    started = time.monotonic()
    status, headers, reply = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890\r\n\r\n",
                                      pace=0.05)  # fmt: skip
    assert_json_error(status, headers, reply, 408,
                      r"^the request line and headers did not arrive within 0\.6 s of its first byte")  # fmt: skip
    assert time.monotonic() - started < 5


def test_a_byte_every_interval_cannot_hold_the_connection(port):
    """The per-recv timeout of before let this go on forever; the deadline ends it."""
    started = time.monotonic()
    status, _, reply = exchange(port, b"G" + b"E" * 200, pace=0.2)
    assert status == 408 and json.loads(reply)["status"] == 408
    assert time.monotonic() - started < 3


def test_an_idle_connection_is_closed_quietly(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, nothing sent: nothing was asked
        assert 0.8 < time.monotonic() - started < 5


def test_a_body_cut_short_is_400(port):
    status, headers, reply = exchange(port, post(b'{"texts": ["a"]}', length="100"), half_close=True)
    assert_json_error(status, headers, reply, 400,
                      r"^the body ended after 16 of the 100 bytes its Content-Length announced")  # fmt: skip


# -- item 12: a full service answers 503 with Retry-After ---------------------------------


class Gate:
    """A classifier stand-in whose predict waits until released (to fill the workers)."""

    def __init__(self, clf):
        self._clf = clf
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        for name in ("model_path", "artifact", "task_name", "labels", "is_pair", "max_length"):
            setattr(self, name, getattr(clf, name))

    def predict(self, items, **kwargs):
        self.entered.release()
        self.release.wait(10)
        return self._clf.predict(items, **kwargs)


def _busy_server(clf, **config):
    gate = Gate(clf)
    server = start(gate, **{"workers": 1, **config})
    return gate, server, server.server_address[1]


def _post_in_background(port, results):
    def run():
        results.append(exchange(port, post(b'{"texts": ["fine"]}')))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_full_queue_is_503_with_retry_after(clf):
    gate, server, port = _busy_server(clf, queue=0)
    results: list = []
    try:
        first = _post_in_background(port, results)
        assert gate.entered.acquire(timeout=10)  # the only worker is busy
        status, headers, body = exchange(port, post(b'{"texts": ["a"]}'))
        assert_json_error(status, headers, body, 503,
                          r"^the service is busy: 1 requests are being classified or queued, its "
                          r"limit; retry after 1 s$")  # fmt: skip
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        gate.release.set()
        first.join(10)
        assert results[0][0] == 200
    finally:
        gate.release.set()
        stop(server)


def test_a_request_that_waits_past_the_queue_timeout_is_503(clf):
    gate, server, port = _busy_server(clf, queue=1, queue_timeout_s=0.3)
    results: list = []
    try:
        first = _post_in_background(port, results)
        assert gate.entered.acquire(timeout=10)
        status, headers, body = exchange(port, post(b'{"texts": ["a"]}'))
        assert_json_error(status, headers, body, 503,
                          r"^the service is busy: no worker was free within 0\.3 s; retry after 1 s$")  # fmt: skip
        assert headers["retry-after"] == "1"
        gate.release.set()
        first.join(10)
    finally:
        gate.release.set()
        stop(server)


def test_connections_over_the_cap_get_503(clf):
    server = start(clf, max_connections=1, idle_timeout_s=5.0)
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive afterwards
            assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
            status, headers, body = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert_json_error(status, headers, body, 503,
                              r"^the service has 1 open connections, its limit; retry after 1 s$")  # fmt: skip
            assert headers["retry-after"] == "1"
    finally:
        stop(server)


# -- item 10: lone surrogates in JSON are U+FFFD ----------------------------------------------

SURROGATE_BODIES = [
    ("cut-emoji", '{"texts": ["so cute \\ud83d"]}', ["so cute \ufffd"]),
    ("lone-low", '{"texts": ["\\ude00 great"]}', ["\ufffd great"]),
    ("two-highs", '{"texts": ["a \\ud83d\\ud83d", "ok"]}', ["a \ufffd\ufffd", "ok"]),
    ("joined-escape-pair", '{"texts": ["fun \\ud83d\\ude00"]}', ["fun \U0001f600"]),
]


@pytest.mark.parametrize(("body", "same_as"), [row[1:] for row in SURROGATE_BODIES],
                         ids=[row[0] for row in SURROGATE_BODIES])  # fmt: skip
def test_lone_surrogates_are_classified_as_replacement_characters(port, clf, body, same_as):
    status, _, reply = exchange(port, post(body.encode()))
    assert status == 200, reply
    got = [p["probabilities"] for p in json.loads(reply)["predictions"]]
    assert got == [p.probabilities for p in clf.predict(same_as)]


def test_lone_surrogates_in_pairs(tiny_pair_bundle):
    pair_clf = Classifier.from_bundle(tiny_pair_bundle, threads=1)
    server = start(pair_clf)
    try:
        status, _, reply = exchange(server.server_address[1],
                                    post(b'{"pairs": [["so cute \\ud83d", "\\udc00 ok"]]}'))  # fmt: skip
        assert status == 200, reply
        want = pair_clf.predict([("so cute \ufffd", "\ufffd ok")])[0].probabilities
        assert json.loads(reply)["predictions"][0]["probabilities"] == want
    finally:
        stop(server)


# -- item 3: a tokenizer past the graph's vocabulary: the service does not start -------------


def test_the_service_refuses_a_bundle_whose_tokenizer_ids_exceed_the_graph(tiny_bundle, tmp_path, capsys):
    bundle = with_token_ids(tiny_bundle, tmp_path / "bundle", {"great": 30600})
    assert main([str(bundle), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: tokenizer.json (model.vocab): the largest token id is 30600 "
                          "('great'; 1 id(s) >= 34), but model.onnx accepts input_ids 0..33")  # fmt: skip


def test_a_port_in_use_is_one_line_naming_the_fix(tiny_bundle, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main([str(tiny_bundle), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"another process listens on port {port}: pick another --port" in err
