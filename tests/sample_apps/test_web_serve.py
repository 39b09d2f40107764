"""The web app's file server: it sends the page, onnxruntime-web and the bundle's listed files,
with the right content types, and nothing else."""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request

import pytest

from sample_apps.web.serve import ORT_DIST, TOKENIZERS_DIST, SetupError, main, make_server, routes


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    copy = tmp_path_factory.mktemp("web-serve") / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "secret.txt").write_text("not listed in the manifest", encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def base_url(bundle):
    for probe in (ORT_DIST / "ort.wasm.min.mjs", TOKENIZERS_DIST / "tokenizers.min.mjs"):
        if not probe.is_file():
            pytest.skip(f"{probe} is not installed: run `npm ci` in {ORT_DIST.parents[2]}")
    server = make_server(bundle, host="127.0.0.1", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/tokenizer.js", "text/javascript; charset=utf-8"),
        ("/vendor/tokenizers.min.mjs", "text/javascript; charset=utf-8"),
        ("/ort/ort.wasm.min.mjs", "text/javascript; charset=utf-8"),
        ("/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("/bundle/manifest.json", "application/json"),
        ("/bundle/tokenizer.json", "application/json"),
        ("/bundle/model.onnx", "application/octet-stream"),
    ],
)
def test_served_files(base_url, bundle, path, content_type):
    status, ctype, body = fetch(base_url + path)
    assert (status, ctype) == (200, content_type)
    if path.startswith("/bundle/"):
        assert body == (bundle / path.removeprefix("/bundle/")).read_bytes()


@pytest.mark.parametrize(
    "path",
    ["/bundle/secret.txt", "/bundle/../manifest.json", "/bundle/%2e%2e/serve.py", "/serve.py",
     "/node_modules/onnxruntime-web/package.json", "/ort/../../package.json", "/etc/passwd"],
)  # fmt: skip
def test_nothing_else_is_served(base_url, path):
    status, _, _ = fetch(base_url + path)
    assert status == 404


def test_setup_errors(tmp_path, tiny_bundle, capsys):
    with pytest.raises(SetupError, match=r"no manifest\.json in the bundle directory; is .* an "
                                          r"embslim bundle\? re-export the bundle"):
        routes(tmp_path)
    for missing in ({"ort_dist": tmp_path}, {"tokenizers_dist": tmp_path}):
        with pytest.raises(SetupError, match=r"JavaScript libraries are not installed .*: run "
                                              r"`npm ci` in "):  # fmt: skip
            routes(tiny_bundle, **missing)
    assert main([str(tmp_path / "missing"), "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: bundle directory ")


def test_a_tagger_bundle_is_refused_in_one_line(tiny_bundle, tmp_path, capsys):
    """The page does not tag; a token-classification bundle gets a line naming /tag and --tag."""
    from tiny_bundle import read_manifest_json, write_manifest

    tagged = shutil.copytree(tiny_bundle, tmp_path / "tagger")
    manifest = read_manifest_json(tagged)
    manifest["task"]["type"] = "token-classification"
    write_manifest(tagged, manifest)
    with pytest.raises(SetupError, match=r"manifest\.json: a token-classification bundle; this page "
                                          r"classifies text and needs a text-classification "
                                          r"bundle \(tag texts with `python -m sample_apps\.service"
                                          r"\.serve BUNDLE` \(POST /tag\) or `python -m "
                                          r"sample_apps\.cli\.classify BUNDLE --tag`\)$"):  # fmt: skip
        routes(tagged)
    assert main([str(tagged), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "POST /tag" in err


def test_an_embedding_bundle_is_refused_in_one_line(tiny_embedding_bundle, capsys):
    """The page classifies; an embedding bundle gets a line naming the apps that embed."""
    with pytest.raises(SetupError, match=r"manifest\.json: a feature-extraction bundle; this page "
                                          r"classifies text and needs a text-classification "
                                          r"bundle \(embed texts with "):  # fmt: skip
        routes(tiny_embedding_bundle)
    assert main([str(tiny_embedding_bundle), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "POST /embed" in err
