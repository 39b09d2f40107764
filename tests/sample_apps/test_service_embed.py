"""The service on a feature-extraction bundle: POST /embed equals `Embedder.encode`, with the
same request limits, JSON errors and codes as /predict; each task's service answers the other
task's route with a 404 that says what to call instead; /health and /metrics know the task."""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
from tiny_bundle import read_manifest_json, write_manifest

from embslim.runtime import Classifier, Embedder
from sample_apps.service.metrics import Metrics
from sample_apps.service.serve import ServiceConfig, main, make_server, parse_embed_request
from tests.sample_apps.test_service_app import Client
from tests.sample_apps.test_service_load import ServerProcess

TEXTS = ["how do I reset my password", "a great movie", "Café déjà vu", "good " * 40]
EXAMPLE = re.escape('e.g. {"texts": ["how do I reset my password"]}')


def _start(model, **config):
    server = make_server(model, host="127.0.0.1", port=0, config=ServiceConfig(**config),
                         metrics=Metrics())  # fmt: skip
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Client(server.server_address[1])


def _stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def emb(tiny_embedding_bundle):
    return Embedder.from_bundle(tiny_embedding_bundle, threads=1, max_chars=200)


@pytest.fixture(scope="module")
def service(emb):
    server, client = _start(emb, max_batch=8, max_body_bytes=8192, max_request_chars=500)
    yield client
    _stop(server)


@pytest.fixture(scope="module")
def classifier_service(tiny_bundle):
    server, client = _start(Classifier.from_bundle(tiny_bundle, threads=1))
    yield client
    _stop(server)


def test_embed_equals_the_runtime(service, emb):
    status, body, headers = service.request("POST", "/embed", {"texts": TEXTS})
    assert status == 200, body
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert set(body) == {"embeddings", "dim", "normalized"}
    assert body["dim"] == 3 and body["normalized"] is True
    got = np.array(body["embeddings"], dtype=np.float32)
    np.testing.assert_array_equal(got, emb.encode(TEXTS))  # JSON floats round-trip float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_lone_surrogates_are_embedded_as_replacement_characters(service, emb):
    status, body, _ = service.request(
        "POST", "/embed", raw=b'{"texts": ["so cute \\ud83d", "\\ude00 great"]}'
    )
    assert status == 200, body
    want = emb.encode(["so cute \ufffd", "\ufffd great"])
    np.testing.assert_array_equal(np.array(body["embeddings"], dtype=np.float32), want)


def test_health_reports_the_task(service):
    status, body, _ = service.request("GET", "/health")
    assert status == 200
    assert {k: body[k] for k in ("status", "model", "variant", "task", "task_type", "dim",
                                 "pooling", "normalize", "max_length", "max_batch")} == {
        "status": "ok", "model": "model.onnx", "variant": "fp32", "task": "tiny-emb",
        "task_type": "feature-extraction", "dim": 3, "pooling": "mean", "normalize": True,
        "max_length": 12, "max_batch": 8,
    }  # fmt: skip
    assert "labels" not in body and "pair" not in body


BAD_BODIES = [
    (["a list"], 422, r"^the body must be a JSON object like \{\"texts\": .*\}, got a list$"),
    ({"text": ["typo"]}, 422, r"^unknown field\(s\) 'text'; a /embed body takes texts, " + EXAMPLE),
    ({"texts": ["a"], "top_k": 2}, 422, r"^unknown field\(s\) 'top_k'; a /embed body takes texts"),
    ({"pairs": [["a", "b"]]}, 422, r"^unknown field\(s\) 'pairs'; a /embed body takes texts"),
    ({}, 422, r'^send "texts", a list of strings, ' + EXAMPLE),
    ({"texts": "not a list"}, 422, r'^"texts" must be a list, got a string; ' + EXAMPLE),
    ({"texts": []}, 422, r'^"texts" is empty; send at least one, ' + EXAMPLE),
    ({"texts": ["ok", 3]}, 422, r"^texts\[1\] is a number \(3\), expected a string$"),
    ({"texts": [None]}, 422, r"^texts\[0\] is null, expected a string$"),
    ({"texts": [["a", "b"]]}, 422, r"^texts\[0\] is a list, expected a string$"),
    ({"texts": ["x"] * 9}, 422, r"^\"texts\" has 9 items, more than this service's limit of 8 "
                                r"per request; split them over several requests$"),
    ({"texts": ["x" * 201]}, 422, r"^texts\[0\] has 201 characters, more than max_chars=200; "),
    ({"texts": ["x" * 199, "y" * 199, "z" * 199]}, 413,
     r"^the texts have 597 characters in all, more than this service's limit of 500 per request"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "want", "pattern"), BAD_BODIES,
                         ids=[f"{i}-{row[1]}" for i, row in enumerate(BAD_BODIES)])  # fmt: skip
def test_bad_embed_requests(service, body, want, pattern):
    status, reply, _ = service.request("POST", "/embed", body)
    assert status == want, reply
    assert set(reply) == {"error", "status"} and reply["status"] == want
    assert "\n" not in reply["error"] and re.search(pattern, reply["error"]), reply["error"]


def test_http_errors_are_the_same_as_predicts(service):
    status, body, _ = service.request("POST", "/embed", raw=b'{"texts": ["a"')
    assert status == 400 and body["error"].startswith("the body is not valid JSON (Expecting ")
    status, body, _ = service.request("POST", "/embed", raw=b'{"texts": ["\xff"]}')
    assert status == 400 and body["error"].startswith("the body is not UTF-8")
    status, body, _ = service.request("POST", "/embed", {"texts": ["a"]},
                                      headers={"Content-Type": "text/plain"})  # fmt: skip
    assert status == 415 and "application/json" in body["error"]
    data = json.dumps({"texts": ["good " * 2000]}).encode()
    status, body, headers = service.request("POST", "/embed", raw=data)
    assert status == 413 and headers["Connection"] == "close"
    assert body["error"].startswith(f"the body is {len(data):,} bytes, more than this service's")


def test_methods_and_options_on_embed(service):
    status, body, headers = service.request("GET", "/embed")
    assert status == 405 and headers["Allow"] == "POST, OPTIONS"
    assert body["error"] == "/embed takes POST, not GET"
    status, body, headers = service.request("OPTIONS", "/embed")
    assert status == 200 and body == {"path": "/embed", "allow": ["POST", "OPTIONS"]}


def test_predict_on_an_embedding_bundle_is_404_naming_embed(service):
    for method, body in (("POST", {"texts": ["a"]}), ("GET", None)):
        status, reply, _ = service.request(method, "/predict", body)
        assert status == 404, reply
        assert reply == {
            "error": "this service runs a feature-extraction bundle (an embedder): it has no "
            "/predict; POST /embed to embed texts, or start the service on a "
            "text-classification bundle to classify them",
            "status": 404,
        }
    status, reply, _ = service.request("GET", "/nowhere")
    assert status == 404
    assert reply["error"] == (
        "no such path '/nowhere'; this service has POST /embed, GET /health, GET /metrics"
    )


def test_embed_on_a_classification_bundle_is_404_naming_predict(classifier_service):
    status, reply, _ = classifier_service.request("POST", "/embed", {"texts": ["a"]})
    assert status == 404
    assert reply["error"] == (
        "this service runs a text-classification bundle (a classifier): it has no /embed; "
        "POST /predict to classify texts, or start the service on a feature-extraction bundle "
        "to embed them"
    )
    status, body, _ = classifier_service.request("GET", "/health")
    assert body["task_type"] == "text-classification"
    assert classifier_service.request("POST", "/predict", {"texts": ["a"]})[0] == 200


def test_metrics_count_embeddings(emb):
    server, client = _start(emb)
    try:
        for _ in range(3):
            assert client.request("POST", "/embed", {"texts": ["a", "b"]})[0] == 200
        assert client.request("POST", "/embed", {"texts": []})[0] == 422
        assert client.request("POST", "/predict", {"texts": ["a"]})[0] == 404
        _, metrics, _ = client.request("GET", "/metrics")
        assert metrics["requests"] == 5 and metrics["errors"] == 2
        assert metrics["responses_by_status"] == {"200": 3, "404": 1, "422": 1}
        assert metrics["texts_embedded"] == 6 and metrics["texts_classified"] == 0
        latency = metrics["embed_latency_ms"]
        assert latency["window"] == 3 and 0 < latency["p50"] <= latency["p95"]
        assert metrics["predict_latency_ms"] == {"p50": None, "p95": None, "window": 0}
    finally:
        _stop(server)


class GatedEmbedder:
    """An embedder stand-in whose encode waits until released (to fill the workers)."""

    task_type = "feature-extraction"

    def __init__(self, emb):
        self._emb = emb
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        for name in ("model_path", "artifact", "task_name", "max_length", "dim", "pooling",
                     "normalize"):  # fmt: skip
            setattr(self, name, getattr(emb, name))

    def encode(self, texts, **kwargs):
        self.entered.release()
        self.release.wait(10)
        return self._emb.encode(texts, **kwargs)


def test_a_full_queue_is_503_with_retry_after(emb):
    gate = GatedEmbedder(emb)
    server, client = _start(gate, workers=1, queue=0)
    results: list = []
    first = threading.Thread(
        target=lambda: results.append(client.request("POST", "/embed", {"texts": ["fine"]}))
    )
    try:
        first.start()
        assert gate.entered.acquire(timeout=10)  # the only worker is busy
        status, body, headers = client.request("POST", "/embed", {"texts": ["a"]})
        assert status == 503 and headers["Retry-After"] == "1"
        assert body["error"] == (
            "the service is busy: 1 requests are being embedded or queued, its limit; "
            "retry after 1 s"
        )
        gate.release.set()
        first.join(10)
        assert results[0][0] == 200
    finally:
        gate.release.set()
        _stop(server)


def test_parse_embed_request():
    assert parse_embed_request({"texts": ["a", "b"]}, max_batch=2) == ["a", "b"]


def test_main_refuses_a_bundle_no_runtime_class_loads(tiny_bundle, tmp_path, capsys):
    odd = shutil.copytree(tiny_bundle, tmp_path / "qa")
    manifest = read_manifest_json(odd)
    manifest["task"]["type"] = "question-answering"
    write_manifest(odd, manifest)
    assert main([str(odd), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {str(odd)!r} is a bundle of task 'question-answering', which "
                          "this runtime does not know")  # fmt: skip


def test_the_service_process_serves_an_embedding_bundle(tiny_embedding_bundle, emb, tmp_path):
    """`python -m sample_apps.service.serve BUNDLE` picks Embedder from the manifest."""
    server = ServerProcess(tiny_embedding_bundle, tmp_path / "serve.log")
    try:
        client = Client(server.port)
        status, body, _ = client.request("POST", "/embed", {"texts": TEXTS})
        assert status == 200, body
        np.testing.assert_array_equal(np.array(body["embeddings"], dtype=np.float32),
                                      emb.encode(TEXTS))  # fmt: skip
        assert client.request("GET", "/health")[1]["task_type"] == "feature-extraction"
    finally:
        server.stop()
