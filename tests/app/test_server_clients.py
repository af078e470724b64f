"""The re-rank server with its clients and commands: API-key auth, CORS, the official cohere SDK, the
Python client, settings from the environment, `reranker serve` as a subprocess, `reranker rerank`
without HTTP, and an ONNX export served. Helpers come from helpers.py, fixtures from conftest.py and this module.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import DOCS, EXE, QUERY, SETTINGS, direct, free_port, running, wait_for

from reranker.app.server.app import create_app
from reranker.app.server.client import RerankAPIError, RerankClient
from reranker.app.server.settings import ServerSettings
from reranker.scoring import load_model, sigmoid

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration]


@pytest.fixture(scope="module")
def secured(ce_folder) -> Iterator[str]:
    settings = ServerSettings(api_key="s3cret", cors_origins="http://allowed.example", **SETTINGS)
    with running(create_app(str(ce_folder), settings)) as url:
        yield url


# --- auth, CORS, clients ----------------------------------------------------------------------------------


def test_api_key_is_required_when_set(secured):
    body = {"query": QUERY, "documents": DOCS}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        r = httpx.post(f"{secured}/v2/rerank", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["message"]
    assert httpx.post(f"{secured}/rerank", json={"query": QUERY, "texts": DOCS}).status_code == 401
    assert httpx.post(f"{secured}/v2/rerank", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert httpx.get(f"{secured}/ready").status_code == 200  # probes stay open


def test_cors_only_for_configured_origins(secured):
    preflight = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = httpx.options(f"{secured}/v2/rerank", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://allowed.example"
    r = httpx.options(f"{secured}/v2/rerank", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_official_cohere_sdk(secured, reference):
    cohere = pytest.importorskip("cohere")
    raw = direct(reference, QUERY, DOCS)
    best = list(np.argsort(-raw, kind="stable"))
    v2 = cohere.ClientV2(api_key="s3cret", base_url=secured)
    res = v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in res.results] == best[:3]
    assert [r.relevance_score for r in res.results] == pytest.approx(sigmoid(raw[best[:3]]).tolist(), abs=1e-6)
    assert res.id and res.meta.api_version.version == "2"
    v1 = cohere.Client(api_key="s3cret", base_url=secured)
    res = v1.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [(r.index, r.document.text) for r in res.results] == [(i, DOCS[i]) for i in best[:2]]
    with pytest.raises(cohere.core.ApiError) as err:
        cohere.ClientV2(api_key="wrong", base_url=secured).rerank(model="m", query=QUERY, documents=DOCS)
    assert err.value.status_code == 401
    with pytest.raises(cohere.core.ApiError) as err:
        v2.rerank(model="m", query=QUERY, documents=[])
    assert err.value.status_code == 422


def test_python_client(secured, reference):
    raw = direct(reference, QUERY, DOCS)
    with RerankClient(secured, api_key="s3cret") as client:
        assert client.ready()
        results = client.rerank(QUERY, DOCS, top_n=2, return_documents=True, raw_scores=True)
        assert [r.index for r in results] == list(np.argsort(-raw, kind="stable")[:2])
        assert results[0].document == DOCS[results[0].index] and results[0].raw_score == pytest.approx(raw[results[0].index], abs=1e-5)
        with pytest.raises(RerankAPIError, match="HTTP 422: documents") as err:
            client.rerank(QUERY, [])
        assert err.value.status == 422
    with RerankClient(secured) as anonymous, pytest.raises(RerankAPIError) as err:
        anonymous.rerank(QUERY, DOCS)
    assert err.value.status == 401


# --- settings and the command -------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("RERANKER_MAX_DOCUMENTS", "7")
    monkeypatch.setenv("RERANKER_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("RERANKER_LONG_DOCS", "window")
    monkeypatch.setenv("RERANKER_API_KEY", "k")
    s = ServerSettings()
    assert (s.max_documents, s.cors_origins, s.long_docs, s.api_key.get_secret_value()) == (7, ["http://a.example", "http://b.example"], "window", "k")
    assert ServerSettings(max_documents=3).max_documents == 3  # explicit values win
    monkeypatch.setenv("RERANKER_LONG_DOCS", "chunk")
    with pytest.raises(ValueError, match="long_docs"):
        ServerSettings()


def test_reranker_serve_command(ce_folder, tmp_path):
    port = free_port()
    env = {**os.environ, "RERANKER_MAX_CHARS": "70", "RERANKER_LOG_LEVEL": "warning"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(EXE), "serve", str(ce_folder), "--port", str(port), "--max-documents", "3", "--threads", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, "/ready", 90, proc)
        assert httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS[:3]}).status_code == 200
        assert httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS[:4]}).status_code == 413  # the flag
        r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": ["x" * 71]})
        assert r.status_code == 413 and "at most 70" in r.json()["message"]  # the environment
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15), log.read_text()


def test_reranker_serve_refuses_a_folder_without_a_model(tmp_path):
    res = subprocess.run([str(EXE), "serve", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "not a model folder" in res.stderr
    res = subprocess.run([str(EXE), "serve", str(tmp_path), "--long-docs", "chunk"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "invalid server settings: long_docs" in res.stderr


def test_batch_rerank_command_takes_dataset_as_option_or_argument(ce_folder, reference, tiny_beir, tmp_path):
    """`reranker rerank` (no HTTP) with the same model folder: --dataset and the positional spec give the same run."""
    from reranker import load_dataset
    from reranker.io.trec import read_run

    run = tmp_path / "first.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {r} {10 - r} bm25\n" for q in (1, 2) for r, d in enumerate((1, 2, 3, 4), 1)))
    outs = []
    for args in (["--dataset", str(tiny_beir)], [str(tiny_beir)]):
        out = tmp_path / f"out{len(outs)}.trec"
        res = subprocess.run([str(EXE), "-q", "rerank", *args, "--model", str(ce_folder), "--run", str(run), "--top-k", "3",
                              "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        outs.append(read_run(out))
    ds = load_dataset(str(tiny_beir))
    for qid in ("q1", "q2"):
        first, second = outs[0].ranking(qid), outs[1].ranking(qid)
        assert [(h.doc_id, h.score) for h in first] == [(h.doc_id, h.score) for h in second] and len(first) == 3
        want = direct(reference, ds.queries[qid].text, [ds.corpus.get(h.doc_id).contents for h in first])
        assert [h.score for h in first] == pytest.approx(want.tolist(), abs=1e-4)  # TREC files keep 4+ decimals
    res = subprocess.run([str(EXE), "rerank", str(tiny_beir), "--dataset", str(tiny_beir), "--model", str(ce_folder), "--run", str(run),
                          "--out", str(tmp_path / "x.trec")], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "name the data set once" in res.stderr


def test_an_onnx_export_is_served(ce_folder, reference, tmp_path):
    """The folder `reranker export` writes serves like the student it came from."""
    pytest.importorskip("onnx", reason="the 'cpu' extra (onnxruntime, onnx) is needed for ONNX export")
    from concurrent.futures import ThreadPoolExecutor

    from student.export import export_student
    from student.parity import load_parity_sample

    onnx_dir = tmp_path / "onnx"
    export_student(ce_folder, onnx_dir, ["fp32", "int8"], optimize=False, parity=load_parity_sample(None, 8))
    onnx = load_model(onnx_dir, precision="fp32")

    def ask(url: str, docs: list[str]) -> np.ndarray:
        out = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": docs, "return_raw_scores": True}, timeout=60)
        return np.array([x["raw_score"] for x in sorted(out.json()["results"], key=lambda x: x["index"])])

    with running(create_app(str(onnx_dir), ServerSettings(precision="fp32"))) as url:
        assert httpx.get(f"{url}/ready").json()["backend"] == "onnx"
        got = ask(url, DOCS)
        with ThreadPoolExecutor(8) as pool:  # concurrent requests share batches: fp32 scores do not move
            together = list(pool.map(lambda i: ask(url, DOCS[i:] + DOCS[:i]), range(len(DOCS))))
    np.testing.assert_allclose(got, direct(onnx, QUERY, DOCS), atol=1e-5)
    np.testing.assert_allclose(got, direct(reference, QUERY, DOCS), atol=1e-4)  # and the torch student's scores
    for i, scores in enumerate(together):
        np.testing.assert_allclose(np.roll(scores, i), got, atol=1e-5)
    with running(create_app(str(onnx_dir), ServerSettings(precision="int8"))) as url:
        int8 = ask(url, DOCS)
    np.testing.assert_allclose(int8, got, atol=0.05)  # the int8 graph, close to fp32 (RERANKER_PRECISION picks it)
    assert not np.array_equal(int8, got)


def test_served_scores_move_with_their_batch_within_the_manifests_bound(ce_folder, tmp_path):
    """A pair's served score does not depend on the other pairs of its batch by more than the bound the export
    measured and wrote in the manifest (fp32: float rounding; dynamic int8: twice what it measured alone vs batched)."""
    pytest.importorskip("onnx", reason="the 'cpu' extra (onnxruntime, onnx) is needed for ONNX export")
    from reranker.onnx_manifest import OnnxManifest
    from student.export import export_student
    from student.parity import load_parity_sample

    sample = load_parity_sample(None, 8)  # one demo query with its BM25 top 8: the pairs the export measured
    query, docs = sample.pairs[0][0], [d for _, d in sample.pairs]
    onnx_dir = tmp_path / "onnx"
    manifest = export_student(ce_folder, onnx_dir, ["fp32", "int8"], optimize=False, parity=sample)
    assert OnnxManifest.load(onnx_dir).models["int8"].parity.batch_bound == manifest.models["int8"].parity.batch_bound

    def ask(url: str, documents: list[str]) -> list[float]:
        out = httpx.post(f"{url}/v2/rerank", json={"query": query, "documents": documents, "return_raw_scores": True}, timeout=60)
        return [x["raw_score"] for x in sorted(out.json()["results"], key=lambda x: x["index"])]

    for precision in ("fp32", "int8"):
        parity = manifest.models[precision].parity
        assert parity.batch_pairs == 8 and parity.batch_max_abs_diff is not None
        assert parity.batch_bound == (1e-4 if precision == "fp32" else max(2 * parity.batch_max_abs_diff, 1e-4))
        with running(create_app(str(onnx_dir), ServerSettings(precision=precision))) as url:
            together = np.array(ask(url, docs))
            alone = np.array([ask(url, [d])[0] for d in docs])
            halves = np.array(ask(url, docs[:4]) + ask(url, docs[4:]))
        assert np.abs(alone - together).max() <= parity.batch_bound, precision
        assert np.abs(halves - together).max() <= parity.batch_bound, precision
