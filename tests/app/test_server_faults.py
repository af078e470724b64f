"""The re-rank server under faults, as `reranker serve` runs it (a subprocess on a loopback port, real HTTP clients):
SIGKILL under load, SIGTERM with requests queued (drained, then bounded), overload (429 with Retry-After, never a
5xx); the passage cache's figures on /metrics; the demo venv's extras against the serve commands the demo prints.

Verdicts come from observable state (responses, /metrics, exit codes) polled with deadlines, never from sleeps.
Every 200 is checked against the served folder loaded directly (``reference``), so a response answered before its
pairs were scored (an uninitialised score array) would fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from helpers import DOCS, EXE, REPO, direct, free_port, metric, running, wait_for

from reranker.app.server import cli as server_cli
from reranker.app.server.app import create_app
from reranker.app.server.settings import ServerSettings
from reranker.retrieval.base import BACKENDS
from reranker.scoring import MODEL_BACKENDS

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration]

#: what a client sees when the server process is gone: a connection refused, reset or cut mid-response
GONE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@contextmanager
def serve(folder: Path, log: Path, *flags) -> Iterator[tuple[subprocess.Popen, str]]:
    """`reranker serve folder` on a free loopback port, one model thread; yields (process, URL) once /ready; always ends it."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(EXE), "serve", str(folder), "--port", str(port), "--threads", "1", "--log-level", "info",
                                 *map(str, flags)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, "/ready", 120, proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def poll(what: str, check, timeout: float = 60.0):
    """``check()`` until it returns something truthy (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return found


def scraped(url: str, name: str, **labels: str) -> float:
    return metric(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def assert_scored(response: httpx.Response, query: str, docs: list[str], reference) -> None:
    """A 200 with one result per document, each the model's score of that document (so: every pair was scored)."""
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(docs)))
    want = direct(reference, query, docs)
    got = np.array([r["raw_score"] for r in sorted(results, key=lambda r: r["index"])])
    assert np.all(np.isfinite(got)) and got == pytest.approx(want, abs=1e-5)
    assert all(0.0 <= r["relevance_score"] <= 1.0 for r in results)


def rerank_body(query: str, docs: list[str]) -> dict:
    return {"query": query, "documents": docs, "return_raw_scores": True}


def request_set(n: int, docs: int) -> list[tuple[str, list[str]]]:
    """``n`` distinct requests of ``docs`` documents each (every document text distinct)."""
    return [(f"{DOCS[k % len(DOCS)]} {k}", [f"{DOCS[(k + i) % len(DOCS)]} {k} {i}" for i in range(docs)]) for k in range(n)]


# --- SIGKILL mid-batch ----------------------------------------------------------------------------------------------


def test_sigkill_under_load_never_leaves_a_200_that_was_not_scored(ce_folder, reference, tmp_path):
    requests = request_set(8, 48)  # 48 pairs, batches of at most 16: each request spans several batches
    outcomes: list[tuple[int, object]] = []  # (request number, response or exception)
    lock, stop = threading.Lock(), threading.Event()
    with serve(ce_folder, tmp_path / "serve.log", "--max-batch-pairs", 16, "--max-wait-ms", 5) as (proc, url):
        def client(c: int) -> None:
            with httpx.Client(timeout=120) as http:
                for k in range(c, 10_000, 4):
                    q, docs = requests[k % len(requests)]
                    try:
                        out: object = http.post(f"{url}/v2/rerank", json=rerank_body(q, docs))
                    except httpx.HTTPError as exc:
                        out = exc
                    with lock:
                        outcomes.append((k % len(requests), out))
                    if not isinstance(out, httpx.Response) or stop.is_set():
                        return  # the server is gone (or the test failed)

        def under_load() -> str | None:
            text = httpx.get(f"{url}/metrics", timeout=10).text
            busy = metric(text, "reranker_batches_total") >= 12 and metric(text, "reranker_requests_in_flight") >= 2
            return text if busy else None

        with ThreadPoolExecutor(4) as pool:
            try:
                futures = [pool.submit(client, c) for c in range(4)]
                text = poll("batches running with requests in flight", under_load)
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
                for f in futures:
                    f.result(timeout=120)  # every client stops on its connection error
            finally:
                stop.set()
    assert metric(text, "reranker_requests_in_flight") >= 2
    answered = [(k, out) for k, out in outcomes if isinstance(out, httpx.Response)]
    failed = [out for _, out in outcomes if not isinstance(out, httpx.Response)]
    assert len(failed) == 4 and all(isinstance(e, GONE) for e in failed), failed  # one cut request per client, nothing else
    assert answered, "no request finished before the kill: nothing was checked"
    for k, response in answered:
        assert_scored(response, *requests[k], reference)


# --- SIGTERM: drain, then stop --------------------------------------------------------------------------------------


def sigterm_with_queue(folder: Path, log: Path, drain_seconds: float, docs: int):
    """4 requests admitted (one pair per model batch, so the queue takes seconds), then SIGTERM. Returns (the requests,
    their responses, /ready during the drain, a new request during the drain, the exit code, seconds from SIGTERM to exit)."""
    requests = request_set(4, docs)
    flags = ("--max-batch-pairs", 1, "--max-wait-ms", 0, "--max-documents", docs, "--drain-seconds", drain_seconds)
    with serve(folder, log, *flags) as (proc, url), ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(httpx.post, f"{url}/v2/rerank", json=rerank_body(q, d), timeout=120) for q, d in requests]
        poll("4 requests admitted", lambda: scraped(url, "reranker_requests_in_flight") == 4)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        ready = poll("/ready answers 503", lambda: (r := httpx.get(f"{url}/ready", timeout=10)).status_code == 503 and r)
        new = httpx.post(f"{url}/v2/rerank", json=rerank_body(*request_set(1, 2)[0]), timeout=10)
        code = proc.wait(timeout=drain_seconds + 60)
        seconds = time.monotonic() - start
        answers = [f.result(timeout=60) for f in futures]
    return requests, answers, ready, new, code, seconds


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "shutting down" in response.json()["message"]


def test_sigterm_drains_admitted_requests_then_exits_0(ce_folder, reference, tmp_path):
    requests, answers, ready, new, code, _ = sigterm_with_queue(ce_folder, tmp_path / "serve.log", 30, docs=100)
    assert ready.json()["status"] == "stopping" and ready.headers["retry-after"] == "1"  # answered by the live process
    assert_unavailable(new)  # a request that came during the drain
    for (q, docs), response in zip(requests, answers):
        assert_scored(response, q, docs, reference)  # every admitted request drained: scored and answered
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert "draining: 4 admitted request(s)" in (tmp_path / "serve.log").read_text()


def test_sigterm_drain_is_bounded_the_rest_get_503(ce_folder, reference, tmp_path):
    # 2000 single-pair batches take far more than the 1 s drain (several ms each)
    requests, answers, ready, new, code, seconds = sigterm_with_queue(ce_folder, tmp_path / "serve.log", 1, docs=500)
    assert ready.json()["status"] == "stopping"
    assert_unavailable(new)
    late = [r for r in answers if r.status_code != 200]
    assert late, "every request was scored within the 1 s drain: the bound was not exercised"
    for response in late:
        assert_unavailable(response)
        assert "not scored in time" in response.json()["message"]
    for (q, docs), response in zip(requests, answers):
        if response.status_code == 200:
            assert_scored(response, q, docs, reference)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert seconds < 20, seconds  # the 1 s drain plus uvicorn's shutdown and the interpreter's exit


# --- overload ---------------------------------------------------------------------------------------------------------


def test_overload_is_429_with_retry_after_never_5xx(ce_folder, reference, tmp_path):
    requests = request_set(12, 8)
    # 16 pairs waiting at most (2 requests); a batch waits 300 ms to fill: concurrent requests overflow the queue
    flags = ("--max-queue-pairs", 16, "--max-documents", 8, "--max-wait-ms", 300, "--max-batch-pairs", 64)
    with serve(ce_folder, tmp_path / "serve.log", *flags) as (_, url):
        def client(k: int) -> list[httpx.Response]:
            with httpx.Client(timeout=60) as http:
                return [http.post(f"{url}/v2/rerank", json=rerank_body(*requests[k])) for _ in range(4)]

        with ThreadPoolExecutor(12) as pool:
            answers = [(k, r) for k, rs in zip(range(12), pool.map(client, range(12))) for r in rs]
        rejected = scraped(url, "reranker_rejected_total", reason="queue_full")
    statuses = [r.status_code for _, r in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
    assert rejected == statuses.count(429)
    for k, r in answers:
        if r.status_code == 429:
            assert re.fullmatch(r"[1-9][0-9]*", r.headers["retry-after"]), r.headers
            assert r.json()["error_type"] == "overloaded" and "queue is full" in r.json()["message"]
        else:
            assert_scored(r, *requests[k], reference)


# --- the passage cache on /metrics ------------------------------------------------------------------------------------


class CachingScorer:
    """A stand-in scorer with a passage cache: each document's state (its word set) kept in a bounded LRU dict by
    text, hits and misses counted as it scores; score = words shared with the query."""

    kind, tokenizer = "stand-in", None

    def __init__(self, capacity: int):
        self.capacity, self.hits, self.misses = capacity, 0, 0
        self.states: OrderedDict[str, frozenset[str]] = OrderedDict()

    def pair_lengths(self, pairs):
        return [len(q.split()) + len(d.split()) + 3 for q, d in pairs]

    def state(self, doc: str) -> frozenset[str]:
        if doc in self.states:
            self.hits += 1
            self.states.move_to_end(doc)
        else:
            self.misses += 1
            self.states[doc] = frozenset(doc.split())
            while len(self.states) > self.capacity:
                self.states.popitem(last=False)
        return self.states[doc]

    def score(self, pairs, batch_size: int = 32):
        return np.array([len(set(q.split()) & self.state(d)) for q, d in pairs], dtype=np.float32)

    def cache_stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.states), "capacity": self.capacity}


class PlainScorer(CachingScorer):
    cache_stats = None  # a scorer without a cache (the torch student, a pair-layout export)


def cache_figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {k: metric(text, f"reranker_passage_cache_{k}") for k in ("hits_total", "misses_total", "entries", "capacity", "hit_ratio")}


def test_metrics_expose_the_scorers_passage_cache(tmp_path):
    scorer = CachingScorer(capacity=4)
    with running(create_app(scorer, ServerSettings(warmup=False, max_wait_ms=0))) as url:
        assert cache_figures(url) == {"hits_total": 0, "misses_total": 0, "entries": 0, "capacity": 4, "hit_ratio": 0}
        r = httpx.post(f"{url}/v2/rerank", json=rerank_body("solar wind", ["solar a", "wind b", "coal c"]))
        assert [x["raw_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])] == [1, 1, 0]
        assert cache_figures(url) == {"hits_total": 0, "misses_total": 3, "entries": 3, "capacity": 4, "hit_ratio": 0}
        httpx.post(f"{url}/v2/rerank", json=rerank_body("coal", ["solar a", "coal c", "hydro d"]))  # 2 seen, 1 new
        assert cache_figures(url) == {"hits_total": 2, "misses_total": 4, "entries": 4, "capacity": 4, "hit_ratio": 2 / 6}
        httpx.post(f"{url}/v2/rerank", json=rerank_body("coal", ["nuclear e", "coal c"]))  # 1 new: the cache is full, one out
        got = cache_figures(url)
        assert got == {"hits_total": 3, "misses_total": 5, "entries": 4, "capacity": 4, "hit_ratio": 3 / 8}
        assert (got["hits_total"], got["misses_total"]) == (scorer.hits, scorer.misses)
        assert re.search(r"^# TYPE reranker_passage_cache_hits(_total)? counter$", httpx.get(f"{url}/metrics").text, re.MULTILINE)
    with running(create_app(PlainScorer(4), ServerSettings(warmup=False))) as url:
        httpx.post(f"{url}/v2/rerank", json=rerank_body("coal", ["coal c"]))
        assert "reranker_passage_cache" not in httpx.get(f"{url}/metrics").text


# --- `make demo`: the venv it makes runs the serve commands the demo prints -----------------------------------------------


def test_demo_extras_cover_the_serve_commands_the_demo_prints():
    """`make demo` installs DEMO_EXTRAS; the demo prints `reranker serve ONNX_FOLDER` and `... --cascade cascade.yaml`:
    the server ('serve'), the ONNX scorer, and the cascade's first stage and teacher (the labels' teacher, an
    ensemble's members) must all be installed by those extras."""
    make = (REPO / "Makefile").read_text()
    demo = set(re.search(r"^DEMO_EXTRAS\s*\?=\s*(\S+)\s*$", make, re.MULTILINE).group(1).split(","))
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    config = yaml.safe_load((REPO / "reranker" / "data" / "pipelines" / "demo.yaml").read_text())
    from teacher.backends.ensemble import DEFAULT_MEMBERS
    from teacher.base import TEACHERS

    teacher = config["labels"]["teacher"]
    members = config["labels"].get("params", {}).get("members", DEFAULT_MEMBERS) if teacher == "ensemble" else []
    assert config["export"].get("enabled", True) and config["evaluate"]["cascade"]["enabled"]  # what the demo prints
    needed = {server_cli.EXTRA, MODEL_BACKENDS["onnx"].extra, BACKENDS[config["evaluate"]["first_stage"]].extra,
              TEACHERS[teacher].extra, *(TEACHERS[m["name"]].extra for m in members)} - {"core"}
    assert demo <= declared, demo - declared
    assert needed <= demo, f"`make demo` leaves out {sorted(needed - demo)}: the serve commands it prints would fail"


# --- soak: memory after warm-up -------------------------------------------------------------------------------------------


def soak_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("server_soak", REPO / "benchmarks" / "server_soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_growth_measure_sees_a_leak():
    soak = soak_module()
    flat = [(t, 100 * 2**20 + (t % 3) * 2**18) for t in range(100)]  # noise of 0.5 MiB, no trend
    leaking = [(t, (100 + t / 5) * 2**20) for t in range(100)]  # +20 MiB over the run
    assert abs(soak.growth(flat, 100)["growth_pct"]) < 1
    assert soak.growth(leaking, 100)["growth_pct"] > soak.TARGET_GROWTH_PCT
    assert soak.growth(leaking, 100)["baseline_mib"] == pytest.approx(100 + 24.5 / 5, abs=0.2)  # samples 20..29


@pytest.mark.slow
def test_short_soak_keeps_memory_flat_after_warm_up(ce_folder, tmp_path):
    """25 s of two bounded clients on distinct passages (benchmarks/server_soak.py, the 600 s benchmark cut short)."""
    soak = soak_module()
    result = soak.soak(ce_folder, 25, clients=2, docs=10, every=0.5, cache_entries=200, threads=1, work=tmp_path)
    assert result["requests"] >= 20 and result["errors"] == 0, result["statuses"]
    assert len([t for t, _ in result["rss_samples"] if t >= 5]) >= 20  # the measure had samples after the warm-up
    assert result["rss"]["growth_pct"] <= soak.TARGET_GROWTH_PCT, result["rss"]
