"""The re-rank server, started for real (uvicorn on a loopback port) and called over HTTP.

Models are the tiny students of test_student_models (a BERT cross-encoder and a T5 built from
configs), saved to a folder and served through load_model, as `reranker serve` does. Scores are
checked against the same folder loaded directly (scorer.score), not against the server itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from helpers import (
    DOCS,
    QUERY,
    SETTINGS,
    T5_CONFIG,
    direct,
    metric,
    running,
    tiny_t5_tokenizer,
    wait_for,
)

from reranker.app.server.app import create_app
from reranker.app.server.batching import split_windows
from reranker.app.server.settings import ServerSettings
from reranker.scoring import load_model, sigmoid
from student.models import T5Student


class Gated:
    """A real scorer whose ``score`` waits until the test opens :attr:`gate` (``entered`` is set once a call waits):
    the test decides when the model finishes, so no verdict depends on how long a sleep lasted."""

    def __init__(self, inner):
        self.inner, self.gate, self.entered = inner, threading.Event(), threading.Event()
        self.kind, self.tokenizer = inner.kind, inner.tokenizer

    def score(self, pairs, batch_size: int = 32):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.score(pairs, batch_size)

    def pair_lengths(self, pairs):
        return self.inner.pair_lengths(pairs)

    def rank(self, query, documents, top_n=None, batch_size=32):
        return self.inner.rank(query, documents, top_n, batch_size)


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration]


@pytest.fixture(scope="module")
def server(ce_folder) -> Iterator[str]:
    with running(create_app(str(ce_folder), ServerSettings(**SETTINGS))) as url:
        yield url


# --- the rerank endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cohere_rerank(server, reference, version):
    raw = direct(reference, QUERY, DOCS)
    docs = [d if i % 2 else {"text": d} for i, d in enumerate(DOCS)]  # strings and {"text": ...} mixed
    r = httpx.post(f"{server}/{version}/rerank", json={"query": QUERY, "documents": docs, "top_n": 4, "return_documents": True,
                                                       "model": "ignored", "return_raw_scores": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] and body["meta"]["api_version"]["version"] == version[1]
    results = body["results"]
    assert [x["index"] for x in results] == list(np.argsort(-raw, kind="stable")[:4])
    for x in results:
        assert x["relevance_score"] == pytest.approx(sigmoid(raw[x["index"]]), abs=1e-6)
        assert 0 <= x["relevance_score"] <= 1
        assert x["raw_score"] == pytest.approx(raw[x["index"]], abs=1e-5)
        assert x["document"] == {"text": DOCS[x["index"]]}
    # defaults: every document, no document text, no raw score
    plain = httpx.post(f"{server}/{version}/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]
    assert len(plain) == len(DOCS) and all(set(x) == {"index", "relevance_score"} for x in plain)
    # top_n above the number of documents returns them all
    assert len(httpx.post(f"{server}/{version}/rerank", json={"query": QUERY, "documents": DOCS[:2], "top_n": 50}).json()["results"]) == 2


def test_max_tokens_per_doc_cuts_documents(server, reference):
    doc = "wind turbines convert energy storage batteries"  # every word is one token of the tiny vocabulary
    r = httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": [doc], "max_tokens_per_doc": 3, "return_raw_scores": True})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["raw_score"] == pytest.approx(direct(reference, QUERY, ["wind turbines convert"])[0], abs=1e-5)
    assert direct(reference, QUERY, ["wind turbines convert"])[0] != pytest.approx(direct(reference, QUERY, [doc])[0], abs=1e-5)


def test_tei_rerank(server, reference):
    raw = direct(reference, QUERY, DOCS)
    r = httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True, "truncate": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out, list) and [x["index"] for x in out] == list(np.argsort(-raw, kind="stable"))
    for x in out:
        assert x["score"] == pytest.approx(sigmoid(raw[x["index"]]), abs=1e-6) and x["text"] == DOCS[x["index"]]
    raw_out = httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert all("text" not in x for x in raw_out)
    assert {x["index"]: x["score"] for x in raw_out} == pytest.approx(dict(enumerate(raw)), abs=1e-5)


def test_t5_student_is_served(tmp_path, reference):
    torch.manual_seed(0)
    folder = T5Student.from_config(T5_CONFIG, tiny_t5_tokenizer(), max_length=48, query_max_length=8).save_pretrained(tmp_path / "t5")
    t5 = load_model(folder)
    with running(create_app(str(folder), ServerSettings())) as url:
        assert httpx.get(f"{url}/ready").json()["kind"] == "t5"
        out = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS, "return_raw_scores": True}).json()["results"]
    raw = direct(t5, QUERY, DOCS)
    for x in out:
        assert x["raw_score"] == pytest.approx(raw[x["index"]], abs=1e-5)
        assert x["relevance_score"] == pytest.approx(sigmoid(raw[x["index"]]), abs=1e-6)


# --- bad input: always a 4xx JSON error with a message -------------------------------------------

LONG = "x" * 501
BAD = [
    ("/v2/rerank", {"documents": DOCS}, 422, "query: Field required"),
    ("/v2/rerank", {"query": "", "documents": DOCS}, 422, "query"),
    ("/v2/rerank", {"query": "   ", "documents": DOCS}, 422, "query: Value error, must not be empty"),
    ("/v2/rerank", {"query": QUERY, "documents": []}, 422, "documents: List should have at least 1 item"),
    ("/v2/rerank", {"query": QUERY}, 422, "documents: Field required"),
    ("/v2/rerank", {"query": QUERY, "documents": "one string"}, 422, "documents: Input should be a valid list"),
    ("/v2/rerank", {"query": QUERY, "documents": [1, 2]}, 422, "documents.0"),
    ("/v2/rerank", {"query": QUERY, "documents": [{"title": "no text"}]}, 422, "text"),
    ("/v2/rerank", {"query": 7, "documents": DOCS}, 422, "query: Input should be a valid string"),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "top_n: Input should be greater than or equal to 1"),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": -3}, 422, "top_n"),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": "3"}, 422, "top_n: Input should be a valid integer"),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2.5}, 422, "top_n"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS, "return_documents": "yes"}, 422, "return_documents"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 0}, 422, "max_tokens_per_doc"),
    ("/v1/rerank", [QUERY, DOCS], 422, "Input should be a valid dictionary"),
    ("/v1/rerank", {"query": QUERY, "documents": ["d"] * 21}, 413, "21 documents; the server takes at most 20"),
    ("/v1/rerank", {"query": QUERY, "documents": ["short", LONG]}, 413, "document 1 has 501 characters; at most 500"),
    ("/v1/rerank", {"query": LONG, "documents": DOCS}, 413, "the query has 501 characters"),
    ("/rerank", {"query": QUERY, "texts": []}, 422, "texts"),
    ("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": "no"}, 422, "raw_scores"),
    ("/rerank", {"query": QUERY, "texts": [None]}, 422, "texts.0"),
    ("/rerank", {"query": QUERY, "texts": [LONG]}, 413, "document 0 has 501 characters"),
    ("/rerank", {"texts": DOCS}, 422, "query: Field required"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[f"{p}-{m[:30]}" for p, _, _, m in BAD])
def test_bad_input_is_a_4xx_with_a_message(server, path, body, status, message):
    r = httpx.post(server + path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert message in r.json()["message"] and r.json()["error"] == r.json()["message"]


def test_malformed_requests(server):
    r = httpx.post(f"{server}/v2/rerank", content=b'{"query": "x", "documents": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["message"] == "the body is not valid JSON"
    assert httpx.post(f"{server}/v2/rerank", content=b"query=x", headers={"content-type": "text/plain"}).status_code == 422
    assert httpx.post(f"{server}/v2/rerank").status_code == 422
    r = httpx.get(f"{server}/v2/rerank")
    assert r.status_code == 405 and "message" in r.json()
    r = httpx.post(f"{server}/v3/rerank", json={})
    assert r.status_code == 404 and r.json()["message"] == "Not Found"


def test_a_body_over_the_byte_limit_is_413(ce_folder):
    with running(create_app(str(ce_folder), ServerSettings(max_request_bytes=2048, warmup=False))) as url:
        r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": ["solar " * 100] * 10})
    assert r.status_code == 413 and "at most 2048" in r.json()["message"]


# --- operations: health, readiness, metrics, docs --------------------------------------------------


def test_health_ready_docs(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    ready = httpx.get(f"{server}/ready").json()
    assert ready == {"status": "ready", "model": "model", "backend": "torch", "kind": "cross-encoder"}
    assert "swagger-ui" in httpx.get(f"{server}/docs").text
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    assert set(spec["paths"]["/v2/rerank"]["post"]["responses"]) >= {"200", "400", "413", "422", "429", "503"}


def test_cors_is_off_by_default(server):
    preflight = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{server}/v2/rerank", headers=preflight).headers


def test_metrics_count_requests_pairs_and_batches(server):
    before = httpx.get(f"{server}/metrics").text
    assert httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
    assert httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": []}).status_code == 422
    r = httpx.get(f"{server}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)
    assert grew("reranker_requests_total", endpoint="/v2/rerank", status="200") == 1
    assert grew("reranker_requests_total", endpoint="/v2/rerank", status="422") == 1
    assert grew("reranker_pairs_total") == len(DOCS) and grew("reranker_documents_total") == len(DOCS)
    assert grew("reranker_batches_total") >= 1 and grew("reranker_batch_size_count") >= 1
    assert grew("reranker_request_duration_seconds_count", endpoint="/v2/rerank") == 2
    assert "reranker_queue_pairs 0.0" in after and "reranker_ready 1.0" in after
    assert metric(after, "reranker_queue_wait_seconds_count") >= 1


def test_not_ready_is_503_with_retry_after(ce_folder):
    slow = Gated(load_model(ce_folder))  # the warm-up lasts until the gate opens
    with running(create_app(slow, ServerSettings()), wait="/health") as url:
        try:
            r = httpx.get(f"{url}/ready")
            assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
            assert httpx.get(f"{url}/health").status_code == 200  # alive while loading
            r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS})
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "loading" in r.json()["message"]
        finally:
            slow.gate.set()
        wait_for(url, "/ready", 30)
        assert httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "student_config.json").write_text("{not json")
    with running(create_app(str(tmp_path / "broken"), ServerSettings()), wait="/openapi.json") as url:
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/ready").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.get(f"{url}/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and r.json()["detail"]
        r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 503 and "failed to load" in r.json()["message"]


# --- batching ----------------------------------------------------------------------------------------


def test_concurrent_requests_score_as_one_at_a_time(server, reference):
    rng = np.random.default_rng(0)
    pool = DOCS + [f"{a} {b}" for a in DOCS for b in DOCS[:3]]
    requests = [(f"{q} {i}", [pool[j] for j in rng.choice(len(pool), size=int(rng.integers(1, 20)), replace=False)])
                for i, q in enumerate(["solar power", "energy storage", "wind", "coal carbon"] * 5)]

    def call(req):
        q, docs = req
        r = httpx.post(f"{server}/v2/rerank", json={"query": q, "documents": docs, "return_raw_scores": True}, timeout=60)
        assert r.status_code == 200, r.text
        return {x["index"]: x["raw_score"] for x in r.json()["results"]}

    sequential = [call(r) for r in requests]
    batches_before = metric(httpx.get(f"{server}/metrics").text, "reranker_batches_total")
    with ThreadPoolExecutor(20) as pool_:
        concurrent = list(pool_.map(call, requests))
    batches = metric(httpx.get(f"{server}/metrics").text, "reranker_batches_total") - batches_before
    for (q, docs), seq, con in zip(requests, sequential, concurrent):
        want = direct(reference, q, docs)
        assert [seq[i] for i in range(len(docs))] == pytest.approx(want.tolist(), abs=1e-5)
        assert [con[i] for i in range(len(docs))] == pytest.approx(want.tolist(), abs=1e-5)
    assert batches < len(requests)  # pairs of concurrent requests shared batches


def test_a_full_queue_answers_429_with_retry_after(ce_folder):
    reference = load_model(ce_folder)
    slow = Gated(load_model(ce_folder))
    settings = ServerSettings(max_queue_pairs=8, max_documents=8, max_wait_ms=0, warmup=False)
    with running(create_app(slow, settings)) as url:
        def call(i):
            return httpx.post(f"{url}/v2/rerank", json={"query": f"solar {i}", "documents": DOCS + DOCS[:2], "return_raw_scores": True},
                              timeout=60)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(call, 0)
            try:
                assert slow.entered.wait(30)  # request 0's pairs are in the model (out of the queue)
                second = pool.submit(call, 1)
                deadline = time.monotonic() + 30  # request 1's 8 pairs wait in the queue: it is full
                while metric(httpx.get(f"{url}/metrics").text, "reranker_queue_pairs") < 8 and time.monotonic() < deadline:
                    time.sleep(0.02)
                rejected = call(2)
            finally:
                slow.gate.set()
            answers = [first.result(), second.result(), rejected, call(3)]  # once scored, the queue has room again
        metrics = httpx.get(f"{url}/metrics").text
    assert [r.status_code for r in answers] == [200, 200, 429, 200]
    for i, r in enumerate(answers):
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["message"]
        else:
            got = {x["index"]: x["raw_score"] for x in r.json()["results"]}
            assert [got[j] for j in range(8)] == pytest.approx(direct(reference, f"solar {i}", DOCS + DOCS[:2]).tolist(), abs=1e-5)
    assert metric(metrics, "reranker_rejected_total", reason="queue_full") == 1


def test_split_windows():
    assert split_windows("a b c d e f g h i j", 4, 1) == ["a b c d", "d e f g", "g h i j"]
    assert split_windows("a b c d e", 4, 1) == ["a b c d", "d e"]
    assert split_windows("a  b c", 4, 1) == ["a  b c"]  # short texts stay as they are


def test_long_documents_scored_by_their_best_window(ce_folder, reference):
    long_doc = "coal releases carbon dioxide batteries store energy solar panels work"
    settings = ServerSettings(long_docs="window", window_words=4, window_overlap=1)
    with running(create_app(str(ce_folder), settings)) as url:
        out = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": [long_doc, "solar"], "raw_scores": True}).json()
    got = {x["index"]: x["score"] for x in out}
    windows = ["coal releases carbon dioxide", "dioxide batteries store energy", "energy solar panels work"]
    assert split_windows(long_doc, 4, 1) == windows
    assert got[0] == pytest.approx(direct(reference, QUERY, windows).max(), abs=1e-5)
    assert got[1] == pytest.approx(direct(reference, QUERY, ["solar"])[0], abs=1e-5)
