"""The HTTP service: endpoints and every error a client can cause, in process on loopback."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading

import pytest

from embslim.runtime import Classifier
from sample_apps.service.metrics import Metrics
from sample_apps.service.serve import ServiceConfig, make_server, parse_predict_request


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = json.loads(resp.read().decode("utf-8"))
            return resp.status, payload, dict(resp.getheaders())
        finally:
            conn.close()


def _start(classifier: Classifier, **config) -> tuple[object, Client]:
    server = make_server(classifier, host="127.0.0.1", port=0, config=ServiceConfig(**config),
                         metrics=Metrics())  # fmt: skip
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Client(server.server_address[1])


@pytest.fixture(scope="module")
def clf(tiny_bundle):
    return Classifier.from_bundle(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def service(clf):
    server, client = _start(clf, max_batch=8, max_body_bytes=4096)
    yield client
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pair_service(tiny_pair_bundle):
    server, client = _start(Classifier.from_bundle(tiny_pair_bundle, threads=1))
    yield client
    server.shutdown()
    server.server_close()


def test_health(service):
    status, body, headers = service.request("GET", "/health")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == {
        "status": "ok", "model": "model.onnx", "variant": "fp32", "task": "tiny",
        "task_type": "text-classification", "labels": ["neg", "pos"], "pair": False, "max_length": 12, "max_batch": 8,
        "max_body_bytes": 4096, "max_request_chars": 100_000, "workers": 2, "queue": 32,
        "max_connections": 128, "batch_tokens": 512, "queue_timeout_s": 10.0,
        "idle_timeout_s": 15.0, "header_timeout_s": 10.0, "body_timeout_s": 20.0,
        "write_timeout_s": 10.0,
    }  # fmt: skip


def test_predict_equals_the_runtime(service, clf):
    texts = ["a great movie", "the plot was awful", "Café déjà vu"]
    status, body, _ = service.request("POST", "/predict", {"texts": texts, "top_k": 2})
    assert status == 200, body
    assert body["model"] == "model.onnx"
    for got, want in zip(body["predictions"], clf.predict(texts, top_k=2), strict=True):
        assert got == {
            "label": want.label,
            "score": want.score,
            "probabilities": want.probabilities,
            "top_k": [{"label": label, "score": p} for label, p in want.top_k],
        }


def test_pairs(pair_service, tiny_pair_bundle):
    clf = Classifier.from_bundle(tiny_pair_bundle, threads=1)
    pairs = [["A man sleeps.", "A person rests."], ["good", "bad"]]
    status, body, _ = pair_service.request("POST", "/predict", {"pairs": pairs, "top_k": 3})
    assert status == 200, body
    want = clf.predict([tuple(p) for p in pairs], top_k=3)
    assert [p["probabilities"] for p in body["predictions"]] == [w.probabilities for w in want]
    status, body, _ = pair_service.request("POST", "/predict", {"texts": ["one text"]})
    assert status == 422
    assert body["error"] == (
        'this bundle classifies text pairs: send "pairs", not "texts"; '
        'e.g. {"pairs": [["A man sleeps.", "A person rests."]]}'
    )


EXAMPLE = re.escape('e.g. {"texts": ["a great movie"]}')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["a list"], r"^the body must be a JSON object like \{.*\}, got a list$"),
        ({"text": ["typo"]}, r"^unknown field\(s\) 'text'; a /predict body takes texts, pairs, "),
        ({}, r'^send exactly one of "texts" or "pairs", ' + EXAMPLE),
        ({"texts": "not a list"}, r'^"texts" must be a list, got a string'),
        ({"texts": []}, r'^"texts" is empty; send at least one'),
        ({"texts": ["ok", 3]}, r"^texts\[1\] is a number \(3\), expected a string$"),
        ({"texts": [None]}, r"^texts\[0\] is null, expected a string$"),
        ({"texts": ["x"] * 9}, (r"^\"texts\" has 9 items, more than this service's limit of 8 "
                                r"per request; split them over several requests$")),
        ({"texts": ["ok"], "top_k": "2"}, r'^"top_k" must be an integer, got a string$'),
        ({"texts": ["ok"], "top_k": 5}, r"^top_k must be between 1 and 2 \(the number of "),
        ({"pairs": [["a", "b"]]}, (r'^this bundle classifies single texts: send "texts", not '
                                   r'"pairs"; ' + EXAMPLE)),
    ],
)  # fmt: skip
def test_invalid_requests_are_422_with_a_clear_message(service, body, message):
    status, reply, _ = service.request("POST", "/predict", body)
    assert status == 422, reply
    assert reply["status"] == 422
    assert re.search(message, reply["error"]), reply["error"]


def test_a_text_over_the_runtimes_max_chars_is_422(tiny_bundle):
    server, client = _start(Classifier.from_bundle(tiny_bundle, max_chars=50))
    try:
        status, body, _ = client.request("POST", "/predict", {"texts": ["ok", "y" * 51]})
        assert status == 422
        assert body["error"].startswith("texts[1] has 51 characters, more than max_chars=50")
    finally:
        server.shutdown()
        server.server_close()


def test_bad_json_is_400(service):
    status, body, _ = service.request("POST", "/predict", raw=b'{"texts": ["a"')
    assert status == 400
    assert body["error"].startswith("the body is not valid JSON (Expecting ',' delimiter at line 1")
    status, body, _ = service.request("POST", "/predict", raw=b'{"texts": ["\xff"]}')
    assert status == 400 and body["error"].startswith("the body is not UTF-8")
    status, body, _ = service.request("POST", "/predict", raw=b"[" * 3000 + b"]" * 1000)
    assert status == 400


def test_oversized_body_is_413_with_a_json_error(service):
    data = json.dumps({"texts": ["good " * 1000]}).encode()
    status, body, headers = service.request("POST", "/predict", raw=data)
    assert status == 413
    assert body == {
        "error": f"the body is {len(data):,} bytes, more than this service's limit of 4,096; "
        "send fewer or shorter texts per request",
        "status": 413,
    }
    assert headers["Connection"] == "close"


def test_oversized_body_with_expect_100_continue_is_refused_before_the_upload(service):
    """What curl does for bodies over 1 MB: it waits for "100 Continue" before sending."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(65536):  # the server closes after the 413
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"100 Continue" not in head
    assert json.loads(body)["error"].startswith("the body is 50,000,000 bytes, more than")


def test_wrong_content_type_is_415(service):
    status, body, _ = service.request(
        "POST", "/predict", {"texts": ["a"]}, headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and "application/json" in body["error"]


def test_missing_content_length_is_411(service):
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411
    assert json.loads(resp.read())["error"] == "send a Content-Length header"
    conn.close()


def test_unknown_path_and_wrong_method(service):
    status, body, _ = service.request("GET", "/predictions")
    assert status == 404
    assert body["error"] == (
        "no such path '/predictions'; this service has POST /predict, GET /health, GET /metrics"
    )
    status, body, headers = service.request("GET", "/predict")
    assert status == 405 and headers["Allow"] == "POST, OPTIONS"
    assert body["error"] == "/predict takes POST, not GET"
    status, _, headers = service.request("DELETE", "/health")
    assert status == 405 and headers["Allow"] == "GET, HEAD, OPTIONS"


def test_keep_alive_serves_many_requests_on_one_connection(service):
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        for _ in range(5):
            conn.request("POST", "/predict", body=json.dumps({"texts": ["fun"]}),
                         headers={"Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        conn.request("GET", "/health")  # an error on the same connection does not break it
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_metrics_count_requests_errors_and_latency(clf):
    server, client = _start(clf)
    try:
        _, first, _ = client.request("GET", "/metrics")
        assert first["requests"] == 0 and first["predict_latency_ms"]["p50"] is None
        for _ in range(3):
            assert client.request("POST", "/predict", {"texts": ["a", "b"]})[0] == 200
        assert client.request("POST", "/predict", {"texts": []})[0] == 422
        assert client.request("GET", "/nowhere")[0] == 404
        _, metrics, _ = client.request("GET", "/metrics")
        assert metrics["requests"] == 6  # /metrics once, 3 predictions, 2 errors
        assert metrics["errors"] == 2
        assert metrics["responses_by_status"] == {"200": 4, "404": 1, "422": 1}
        assert metrics["texts_classified"] == 6
        latency = metrics["predict_latency_ms"]
        assert latency["window"] == 3 and 0 < latency["p50"] <= latency["p95"]
    finally:
        server.shutdown()
        server.server_close()


def test_percentiles_are_nearest_rank():
    m = Metrics(window=100)
    for ms in range(1, 101):
        m.record(path="/predict", status=200, seconds=ms / 1000)
    assert m.snapshot()["predict_latency_ms"] == {"p50": 50.0, "p95": 95.0, "window": 100}
    for _ in range(51):  # the window keeps the last 100 only: 52..100 ms and 51 x 1 s
        m.record(path="/predict", status=200, seconds=1.0)
    assert m.snapshot()["predict_latency_ms"] == {"p50": 1000.0, "p95": 1000.0, "window": 100}
    m.record(path="/predict", status=422, seconds=9.0)  # errors are counted, not timed
    assert m.snapshot()["errors"] == 1 and m.snapshot()["predict_latency_ms"]["window"] == 100


def test_parse_predict_request_turns_pairs_into_tuples():
    items, top_k = parse_predict_request({"pairs": [["a", "b"]], "top_k": 2}, is_pair=True,
                                         max_batch=4)  # fmt: skip
    assert items == [("a", "b")] and top_k == 2


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_body_bytes": -1}, {"max_batch": True}])
def test_bad_service_config(bad):
    with pytest.raises(ValueError, match=r"^max_(batch|body_bytes) must be a positive integer, got "):
        ServiceConfig(**bad)
