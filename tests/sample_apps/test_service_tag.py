"""The service on a token-classification bundle: POST /tag equals `Tagger.tag`, with /embed's
request limits, JSON errors and codes; the other tasks' routes answer 404 naming /tag (and /tag
on their bundles names theirs); /health and /metrics know the task."""

from __future__ import annotations

import re
import threading

import pytest

from embslim.runtime import Classifier, Embedder, Tagger
from sample_apps.service.metrics import Metrics
from sample_apps.service.serve import ServiceConfig, main, make_server, parse_tag_request
from tests.sample_apps.test_service_app import Client
from tests.sample_apps.test_service_load import ServerProcess

TEXTS = ["Ada Lovelace lives in London", "Café déjà vu à São Paulo 😀", "  extra  spaces\there ",
         "good " * 40]  # fmt: skip
EXAMPLE = re.escape('e.g. {"texts": ["Ada Lovelace lives in London"], "aggregation_strategy": "simple"}')


def _start(model, **config):
    server = make_server(model, host="127.0.0.1", port=0, config=ServiceConfig(**config),
                         metrics=Metrics())  # fmt: skip
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Client(server.server_address[1])


def _stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tagger(tiny_tagger_bundle):
    return Tagger.from_bundle(tiny_tagger_bundle, threads=1, max_chars=200)


@pytest.fixture(scope="module")
def service(tagger):
    server, client = _start(tagger, max_batch=8, max_body_bytes=8192, max_request_chars=500)
    yield client
    _stop(server)


@pytest.mark.parametrize("strategy", ["simple", "none", "first", "average", "max"])
def test_tag_equals_the_runtime(service, tagger, strategy):
    status, body, headers = service.request("POST", "/tag", {"texts": TEXTS,
                                                             "aggregation_strategy": strategy})  # fmt: skip
    assert status == 200, body
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == {"entities": tagger.tag(TEXTS, aggregation_strategy=strategy, batch_size=21),
                    "aggregation_strategy": strategy, "model": "model.onnx"}  # fmt: skip
    assert any(body["entities"])


def test_the_default_strategy_is_simple(service, tagger):
    status, body, _ = service.request("POST", "/tag", {"texts": TEXTS[:1]})
    assert status == 200 and body["aggregation_strategy"] == "simple"
    assert body["entities"] == [tagger.tag(TEXTS[0])]


def test_lone_surrogates_are_tagged_and_offsets_index_the_text_sent(service, tagger):
    status, body, _ = service.request("POST", "/tag", raw=b'{"texts": ["so cute \\ud83d london"]}')
    assert status == 200, body
    assert body["entities"] == [tagger.tag("so cute \ud83d london")]


def test_health_reports_the_task(service, tagger):
    status, body, _ = service.request("GET", "/health")
    assert status == 200
    assert {k: body[k] for k in ("status", "model", "variant", "task", "task_type", "labels",
                                 "max_length", "max_batch")} == {
        "status": "ok", "model": "model.onnx", "variant": "fp32", "task": "tiny-ner-bert",
        "task_type": "token-classification", "labels": list(tagger.labels), "max_length": 24,
        "max_batch": 8,
    }  # fmt: skip
    assert "pair" not in body and "dim" not in body


BAD_BODIES = [
    (["a list"], 422, r"^the body must be a JSON object like \{\"texts\": .*\}, got a list$"),
    ({"text": ["typo"]}, 422,
     r"^unknown field\(s\) 'text'; a /tag body takes texts, aggregation_strategy, " + EXAMPLE),
    ({"texts": ["a"], "top_k": 2}, 422, r"^unknown field\(s\) 'top_k'; a /tag body takes texts"),
    ({}, 422, r'^send "texts", a list of strings, ' + EXAMPLE),
    ({"texts": "not a list"}, 422, r'^"texts" must be a list, got a string; ' + EXAMPLE),
    ({"texts": []}, 422, r'^"texts" is empty; send at least one, ' + EXAMPLE),
    ({"texts": ["ok", 3]}, 422, r"^texts\[1\] is a number \(3\), expected a string$"),
    ({"texts": [["a", "b"]]}, 422, r"^texts\[0\] is a list, expected a string$"),
    ({"texts": ["x"] * 9}, 422, r"^\"texts\" has 9 items, more than this service's limit of 8 "),
    ({"texts": ["x" * 201]}, 422, r"^texts\[0\] has 201 characters, more than max_chars=200; "),
    ({"texts": ["x" * 199, "y" * 199, "z" * 199]}, 413,
     r"^the texts have 597 characters in all, more than this service's limit of 500 per request"),
    ({"texts": ["a"], "aggregation_strategy": "longest"}, 422,
     r"^\"aggregation_strategy\" must be one of none, simple, first, average, max \(transformers' "
     r"token-classification strategies\), got 'longest'$"),
    ({"texts": ["a"], "aggregation_strategy": 1}, 422,
     r"^\"aggregation_strategy\" must be one of .*, got a number \(1\)$"),
    ({"texts": ["a"], "aggregation_strategy": "SIMPLE"}, 422, r"got 'SIMPLE'$"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "want", "pattern"), BAD_BODIES,
                         ids=[f"{i}-{row[1]}" for i, row in enumerate(BAD_BODIES)])  # fmt: skip
def test_bad_tag_requests(service, body, want, pattern):
    status, reply, _ = service.request("POST", "/tag", body)
    assert status == want, reply
    assert set(reply) == {"error", "status"} and reply["status"] == want
    assert "\n" not in reply["error"] and re.search(pattern, reply["error"]), reply["error"]


def test_methods_and_wrong_routes(service):
    status, body, headers = service.request("GET", "/tag")
    assert status == 405 and headers["Allow"] == "POST, OPTIONS"
    for path, other, verb in (("/predict", "text-classification", "classify"),
                              ("/embed", "feature-extraction", "embed")):  # fmt: skip
        status, reply, _ = service.request("POST", path, {"texts": ["a"]})
        assert status == 404
        assert reply["error"] == (
            f"this service runs a token-classification bundle (a tagger): it has no {path}; "
            f"POST /tag to tag texts, or start the service on a {other} bundle to {verb} them"
        )
    status, reply, _ = service.request("GET", "/nowhere")
    assert reply["error"] == "no such path '/nowhere'; this service has POST /tag, GET /health, GET /metrics"


@pytest.mark.parametrize("kind", ["classifier", "embedder"])
def test_tag_on_other_bundles_is_404_naming_their_route(kind, tiny_bundle, tiny_embedding_bundle):
    model = (Classifier.from_bundle(tiny_bundle) if kind == "classifier"
             else Embedder.from_bundle(tiny_embedding_bundle))  # fmt: skip
    server, client = _start(model)
    try:
        status, reply, _ = client.request("POST", "/tag", {"texts": ["a"]})
        assert status == 404
        route, task = ("/predict", "text-classification") if kind == "classifier" else (
            "/embed", "feature-extraction")
        assert reply["error"].startswith(f"this service runs a {task} bundle (a{'n' * (kind == 'embedder')} "
                                         f"{kind}): it has no /tag; POST {route} ")
        assert reply["error"].endswith("or start the service on a token-classification bundle to tag them")
    finally:
        _stop(server)


def test_metrics_count_tagged_texts(tagger):
    server, client = _start(tagger)
    try:
        for _ in range(3):
            assert client.request("POST", "/tag", {"texts": ["a", "b"]})[0] == 200
        assert client.request("POST", "/tag", {"texts": []})[0] == 422
        assert client.request("POST", "/embed", {"texts": ["a"]})[0] == 404
        _, metrics, _ = client.request("GET", "/metrics")
        assert metrics["requests"] == 5 and metrics["errors"] == 2
        assert metrics["texts_tagged"] == 6 and metrics["texts_embedded"] == 0
        assert metrics["tag_latency_ms"]["window"] == 3 and metrics["tag_latency_ms"]["p50"] > 0
    finally:
        _stop(server)


def test_parse_tag_request():
    assert parse_tag_request({"texts": ["a"]}, max_batch=2) == (["a"], "simple")
    assert parse_tag_request({"texts": ["a"], "aggregation_strategy": "max"}, max_batch=2) == (["a"], "max")


def test_main_refuses_a_bad_variant_of_a_tagger_bundle_in_one_line(tiny_tagger_bundle, capsys):
    assert main([str(tiny_tagger_bundle), "--port", "0", "--variant", "int3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the bundle has no artifact with variant 'int3'")


def test_the_service_process_serves_a_tagger_bundle(tiny_tagger_bundle, tagger, tmp_path):
    """`python -m sample_apps.service.serve BUNDLE` picks Tagger from the manifest."""
    server = ServerProcess(tiny_tagger_bundle, tmp_path / "serve.log")
    try:
        client = Client(server.port)
        status, body, _ = client.request("POST", "/tag", {"texts": TEXTS, "aggregation_strategy": "first"})
        assert status == 200, body
        assert body["entities"] == tagger.tag(TEXTS, aggregation_strategy="first")
        assert client.request("GET", "/health")[1]["task_type"] == "token-classification"
    finally:
        server.stop()
