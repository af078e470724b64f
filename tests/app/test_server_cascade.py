"""``POST /search``: the server's cascade (BM25 -> student -> teacher), started for real and called over HTTP.

The student is the tiny BERT cross-encoder of test_student_models, the teacher the real BM25
teacher, the corpus a JSONL file written here. What the server answers is checked against the
evaluation's own code path on the same query: the first stage searched directly, the student
run of ``rerank_run``, the teacher's judgements of the student's top picks and the pipeline's
``cascade_run``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
import torch
import yaml
from helpers import BERT_CONFIG, metric, running, tiny_bert_tokenizer, user_error, wait_for

from reranker.app.pipeline.evaluate import cascade_run
from reranker.app.server.app import create_app
from reranker.app.server.settings import ServerSettings
from reranker.io.dataset import load_dataset
from reranker.records import Query, Run
from reranker.registry import BackendSpec
from reranker.rerank import rerank_run
from reranker.retrieval import build_index
from reranker.scoring import load_model, sigmoid
from student.models import CrossEncoderStudent
from teacher.backends.lexical import BM25Teacher
from teacher.base import TEACHERS, Pair, make_teacher

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration]

STUDENT_TOP_K, TEACHER_TOP_K = 6, 3
DOCS = [
    ("s1", "Solar panels", "solar panels convert sunlight into power"),
    ("s2", "", "how solar power works on a roof"),
    ("s3", "Solar storage", "solar energy storage in home batteries"),
    ("s4", "", "the power of the sun and solar heat"),
    ("s5", "", "cheap solar panels for a cabin"),
    ("s6", "Grid", "solar and wind power feed the grid"),
    ("s7", "", "solar farms need land and power lines"),
    ("s8", "", "a solar eclipse hides the sun"),
    ("b1", "Batteries", "batteries store energy for later use"),
    ("b2", "", "energy storage with batteries and pumped water"),
    ("w1", "Wind", "wind turbines convert the kinetic energy of air into power"),
    ("w2", "", "how wind power works offshore"),
    ("c1", "Coal", "burning coal releases carbon dioxide"),
    ("c2", "", "coal power plants and carbon capture"),
]
QUERIES = ["solar power", "solar panels energy", "wind power energy", "energy storage batteries", "coal carbon capture"]


def write_cascade(folder: Path, **options) -> Path:
    """``folder/corpus.jsonl`` and ``folder/cascade.yaml`` (the corpus named relative to the config)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in DOCS))
    cfg = {"corpus": "corpus.jsonl", "first_stage": "bm25s", "student_top_k": STUDENT_TOP_K, "teacher": "bm25",
           "teacher_top_k": TEACHER_TOP_K, **options}
    path = folder / "cascade.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory) -> Path:
    """The tiny cross-encoder, seeded, with weights spread enough that its scores of these documents differ."""
    torch.manual_seed(0)
    config = dict(BERT_CONFIG, initializer_range=0.2)
    student = CrossEncoderStudent.from_config(config, tiny_bert_tokenizer(), max_length=40, query_max_length=8)
    return student.save_pretrained(tmp_path_factory.mktemp("student") / "model")


@pytest.fixture(scope="module")
def cascade_config(tmp_path_factory) -> Path:
    return write_cascade(tmp_path_factory.mktemp("cascade"))


@pytest.fixture(scope="module")
def server(student_folder, cascade_config):
    settings = ServerSettings(cascade=str(cascade_config), max_chars=300, max_wait_ms=5)
    with running(create_app(str(student_folder), settings)) as url:
        yield url


def evaluations_cascade(corpus, student_folder, queries, student_top_k=STUDENT_TOP_K, teacher_top_k=TEACHER_TOP_K) -> dict:
    """The evaluation's cascade, computed without the server: query -> (cascade run, first run, student run, judgements)."""
    retriever = build_index(corpus, "bm25s")
    student = load_model(student_folder)
    teacher = make_teacher("bm25")
    teacher.prepare(corpus)
    out = {}
    for query in queries:
        first = retriever.search({"q": query}, k=100)  # deeper than the pool, as the evaluation retrieves
        students = rerank_run(student, {"q": Query("q", query)}, corpus, first, top_k=100, progress=False)
        pool = {h.doc_id for h in first.ranking("q")[:student_top_k]}
        picks = [h.doc_id for h in students.ranking("q") if h.doc_id in pool][:teacher_top_k]
        judged = dict(zip(picks, teacher.score_batch([Pair("q", d, query, corpus[d].contents) for d in picks])))
        teacher_run = Run({"q": {d: j.score for d, j in judged.items()}})
        out[query] = (cascade_run(first, students, teacher_run, student_top_k, teacher_top_k), first, students, judged)
    return out


@pytest.fixture(scope="module")
def evaluation(student_folder, cascade_config):
    return evaluations_cascade(load_dataset(cascade_config.parent / "corpus.jsonl").corpus, student_folder, QUERIES)


def search(url: str, query: str, **options) -> dict:
    r = httpx.post(f"{url}/search", json={"query": query, **options}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


# --- the server's cascade is the evaluation's --------------------------------------------------------


@pytest.mark.parametrize("query", QUERIES)
def test_search_equals_the_evaluations_cascade(server, evaluation, query):
    cascade, first, students, judged = evaluation[query]
    body = search(server, query, top_n=50)
    results = body["results"]
    # the cases are real ones: no tie at the pool's edge, no near-tie among the student's scores
    deep = [h.score for h in first.ranking("q")]
    assert len(deep) <= STUDENT_TOP_K or deep[STUDENT_TOP_K - 1] > deep[STUDENT_TOP_K]
    pool = [h.doc_id for h in first.ranking("q")[:STUDENT_TOP_K]]
    pool_scores = sorted(students["q"][d] for d in pool)
    assert min(np.diff(pool_scores), default=1.0) > 1e-4
    assert [x["doc_id"] for x in results] == [h.doc_id for h in cascade.ranking("q")]
    assert [x["rank"] for x in results] == list(range(1, len(results) + 1)) and len(results) == min(len(deep), STUDENT_TOP_K)
    n_teacher = min(TEACHER_TOP_K, len(results))
    assert [x["stage"] for x in results] == ["teacher"] * n_teacher + ["student"] * (len(results) - n_teacher)
    picks, rest = results[:n_teacher], results[n_teacher:]
    assert {x["doc_id"] for x in picks} == set(judged)  # the teacher judged exactly the student's best of the pool
    assert [x["raw_score"] for x in picks] == sorted((x["raw_score"] for x in picks), reverse=True)
    for x in picks:
        assert x["raw_score"] == pytest.approx(judged[x["doc_id"]].score, abs=1e-9)
        assert x["relevance_score"] == pytest.approx(judged[x["doc_id"]].label, abs=1e-9)
    for x in rest:
        assert x["raw_score"] == pytest.approx(students["q"][x["doc_id"]], abs=1e-5)
        assert x["relevance_score"] == pytest.approx(float(sigmoid(x["raw_score"])), abs=1e-9)
        assert min(students["q"][p["doc_id"]] for p in picks) > x["raw_score"]  # the student's best went to the teacher
    assert body["meta"]["first_stage"] == "bm25s" and body["meta"]["student_top_k"] == STUDENT_TOP_K
    assert body["meta"]["teacher_top_k"] == TEACHER_TOP_K and set(body["meta"]["timings_ms"]) == {"first_stage", "student", "teacher"}
    assert all(x["doc_id"] in pool for x in results) and "document" not in results[0] and "passage_id" not in results[0]


def test_the_cases_exercise_the_pool_and_the_teacher(evaluation):
    """Without these the equality above could hold for a server that skipped the teacher or the first stage's cut."""
    reordered = cut = 0
    for cascade, first, students, _ in evaluation.values():
        pool = {h.doc_id for h in first.ranking("q")[:STUDENT_TOP_K]}
        by_student = [h.doc_id for h in students.ranking("q") if h.doc_id in pool]
        reordered += [h.doc_id for h in cascade.ranking("q")] != by_student
        cut += [h.doc_id for h in students.ranking("q")][:STUDENT_TOP_K] != by_student
    assert reordered >= 2 and cut >= 1


def test_top_n_and_return_documents(server):
    full = search(server, "solar power", top_n=50)["results"]
    assert len(search(server, "solar power")["results"]) == min(10, len(full))  # top_n defaults to 10
    two = search(server, "solar power", top_n=2, return_documents=True)["results"]
    assert [x["doc_id"] for x in two] == [x["doc_id"] for x in full[:2]]
    texts = {i: (t, x) for i, t, x in DOCS}
    for x in two:
        title, text = texts[x["doc_id"]]
        assert x["document"] == ({"text": text, "title": title} if title else {"text": text})
    assert search(server, "zebra xylophone")["results"] == []  # no first-stage hit: nothing to rank


FOLDER_DOCS = {  # 10-word passages: each document is 2-4 passages
    "energy/solar.md": "# Solar power\n\nSolar panels convert sunlight into power on a roof. Solar power works best in summer "
                       "and solar storage keeps the power for the night. Cheap solar panels suit a cabin.",
    "energy/wind.md": "# Wind power\n\nWind turbines convert the kinetic energy of air into power. Offshore wind power "
                      "works in storms; solar and wind power feed the grid together.",
    "energy/storage.txt": "Batteries store energy for later use. Energy storage with batteries and pumped water "
                          "keeps solar power for the evening peak.",
    "fossil/coal.txt": "Burning coal releases carbon dioxide. Coal power plants and carbon capture, "
                       "and the power lines that carry coal power to the grid.",
}


def test_a_folder_corpus_answers_with_documents_each_at_its_best_passage(student_folder, tmp_path):
    """A folder of documents is split into passages: /search folds the cascade's passage order into documents as the
    evaluation folds its runs (``document_run``), names the best passage, and returns that passage's text and scores."""
    from reranker.app.cascade import load_cascade_config
    from reranker.config import read_data
    from reranker.io.documents import document_run

    for name, text in FOLDER_DOCS.items():
        (tmp_path / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / name).write_text(text)
    path = tmp_path / "cascade.yaml"
    path.write_text(yaml.safe_dump({"corpus": {"spec": "./docs", "passage_words": 10, "passage_overlap": 0}, "first_stage": "bm25s",
                                    "student_top_k": 10, "teacher": "bm25", "teacher_top_k": 4}))
    corpus = read_data(load_cascade_config(path).corpus, Path.cwd()).corpus
    queries = ["solar power", "wind power grid", "coal carbon"]
    expected = evaluations_cascade(corpus, student_folder, queries, student_top_k=10, teacher_top_k=4)
    folded = 0
    with running(create_app(str(student_folder), ServerSettings(cascade=str(path), max_chars=300, max_wait_ms=5))) as url:
        for query in queries:
            cascade, _, students, judged = expected[query]
            passages = [h.doc_id for h in cascade.ranking("q")]
            results = search(url, query, top_n=50, return_documents=True)["results"]
            assert [x["doc_id"] for x in results] == [h.doc_id for h in document_run(cascade).ranking("q")]
            folded += len(passages) - len(results)
            for x in results:
                pid = x["passage_id"]
                assert pid.startswith(x["doc_id"] + "#") and x["document"]["text"] == corpus[pid].text
                assert pid == next(p for p in passages if p.startswith(x["doc_id"] + "#"))  # its best-ranked passage
                want = judged[pid].score if x["stage"] == "teacher" else students["q"][pid]
                assert x["raw_score"] == pytest.approx(want, abs=1e-5)
    assert folded >= 3  # the pools held several passages of one document: the fold was exercised


def test_search_counts_its_stages_and_scores_through_the_batcher(server, evaluation):
    before = httpx.get(f"{server}/metrics").text
    search(server, "wind power energy")
    after = httpx.get(f"{server}/metrics").text
    pool = min(STUDENT_TOP_K, len(evaluation["wind power energy"][1]["q"]))

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("reranker_search_candidates_total", stage="first_stage") == pool
    assert grew("reranker_search_candidates_total", stage="student") == pool
    assert grew("reranker_search_candidates_total", stage="teacher") == min(TEACHER_TOP_K, pool)
    assert grew("reranker_pairs_total") == pool and grew("reranker_batches_total") >= 1  # the batcher scored the pool
    assert grew("reranker_requests_total", endpoint="/search", status="200") == 1


def test_ready_and_openapi_name_the_cascade(server, cascade_config):
    assert httpx.get(f"{server}/ready").json()["cascade"] == str(cascade_config)
    assert "/search" in httpx.get(f"{server}/openapi.json").json()["paths"]


# --- bad input --------------------------------------------------------------------------------------

BAD = [
    ({}, 422, "query: Field required"),
    ({"query": ""}, 422, "query"),
    ({"query": "   "}, 422, "query: Value error, must not be empty"),
    ({"query": 3}, 422, "query: Input should be a valid string"),
    ({"query": "solar", "top_n": 0}, 422, "top_n: Input should be greater than or equal to 1"),
    ({"query": "solar", "top_n": "3"}, 422, "top_n: Input should be a valid integer"),
    ({"query": "solar", "return_documents": "yes"}, 422, "return_documents"),
    ({"query": "solar", "top_k": 3}, 422, "top_k: Extra inputs are not permitted"),
    ({"query": "x" * 301}, 413, "the query has 301 characters; at most 300"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_search_input_is_a_4xx_with_a_message(server, body, status, message):
    r = httpx.post(f"{server}/search", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["message"] and r.json()["error"] == r.json()["message"]


def test_malformed_search_bodies(server):
    r = httpx.post(f"{server}/search", content=b'{"query": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_type"] == "malformed_json"
    assert httpx.get(f"{server}/search").status_code == 405


def test_without_a_cascade_search_is_a_404_that_says_how(student_folder):
    with running(create_app(str(student_folder), ServerSettings(warmup=False))) as url:
        r = httpx.post(f"{url}/search", json={"query": "solar power"})
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        assert "--cascade" in r.json()["message"] and r.json()["error_type"] == "not_found"
        assert httpx.post(f"{url}/search", json={}).status_code == 404
        assert "/search" not in httpx.get(f"{url}/openapi.json").json()["paths"]
        assert "cascade" not in httpx.get(f"{url}/ready").json()


# --- start-up: ready only with the cascade loaded; a broken cascade is reported -----------------------


class GatedBM25Teacher(BM25Teacher):
    """The real BM25 teacher whose preparation waits for the test to open :attr:`gate` (a corpus that takes a
    while to load): the test decides when loading ends, so no verdict depends on how long a sleep lasted."""

    name = "gated-bm25"
    gate: ClassVar[threading.Event] = threading.Event()
    prepared: ClassVar[list[float]] = []

    def prepare(self, corpus) -> None:
        assert GatedBM25Teacher.gate.wait(60), "the test never opened the gate"
        super().prepare(corpus)
        GatedBM25Teacher.prepared.append(time.monotonic())


def test_ready_only_after_the_cascade_is_loaded(student_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(TEACHERS.entries, "gated-bm25", BackendSpec(__name__, "GatedBM25Teacher", "core", "test"))
    GatedBM25Teacher.gate.clear()
    GatedBM25Teacher.prepared.clear()
    config = write_cascade(tmp_path, teacher="gated-bm25")
    try:
        with running(create_app(str(student_folder), ServerSettings(cascade=str(config))), wait="/health") as url:
            r = httpx.get(f"{url}/ready")
            assert r.status_code == 503 and r.json()["status"] == "loading" and not GatedBM25Teacher.prepared
            r = httpx.post(f"{url}/search", json={"query": "solar power"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            GatedBM25Teacher.gate.set()
            wait_for(url, "/ready", 60)
            ready_at = time.monotonic()
            assert GatedBM25Teacher.prepared and GatedBM25Teacher.prepared[-1] < ready_at
            assert [x["stage"] for x in search(url, "solar power")["results"]][:TEACHER_TOP_K] == ["teacher"] * TEACHER_TOP_K
    finally:
        GatedBM25Teacher.gate.set()  # never leave a loader thread waiting


def test_a_cascade_that_fails_to_load_is_reported(student_folder, tmp_path):
    config = write_cascade(tmp_path, teacher_params={"colour": "blue"})  # a valid file; the teacher refuses the parameter
    with running(create_app(str(student_folder), ServerSettings(cascade=str(config))), wait="/openapi.json") as url:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/ready").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.get(f"{url}/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert str(config) in r.json()["detail"] and "colour" in r.json()["detail"]
        r = httpx.post(f"{url}/search", json={"query": "solar power"})
        assert r.status_code == 503 and "the cascade" in r.json()["message"] and "colour" in r.json()["message"]


def test_create_app_refuses_a_broken_cascade_config(student_folder, tmp_path):
    from reranker.errors import RerankerError

    with pytest.raises(RerankerError, match="teacher_top_k: Input should be a valid integer"):
        create_app(str(student_folder), ServerSettings(cascade=str(write_cascade(tmp_path, teacher_top_k="ten"))))
    with pytest.raises(RerankerError, match="student_top_k .50. exceeds max_queue_pairs .40."):
        create_app(str(student_folder), ServerSettings(cascade=str(write_cascade(tmp_path, student_top_k=50)), max_queue_pairs=40,
                                                       max_documents=40))


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ({"corpus": "./gone.jsonl"}, "missing path: corpus.spec: ./gone.jsonl"),
])
def test_serve_with_a_broken_cascade_exits_with_the_message(student_folder, tmp_path, change, message):
    config = write_cascade(tmp_path, **change)
    err = user_error("serve", student_folder, "--cascade", config, "--port", "0", match=message)
    assert str(config) in err
