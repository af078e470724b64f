"""Retrieval backends on a tiny corpus: real bm25s, real Lucene (pyserini) and a real bi-encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINY_DOCS

from reranker.errors import MissingDependencyError, RerankerError
from reranker.records import Corpus, Document
from reranker.registry import BackendSpec
from reranker.retrieval import BACKENDS, build_index, get_backend, open_index

QUERIES = {
    "solar": "how do photovoltaic solar panels work",
    "storage": "lithium batteries energy storage",
    "wind": "wind turbines",
    "uranium": "uranium",
}
EXPECTED_TOP = {"solar": "d1", "storage": "d4", "wind": "d2", "uranium": "d6"}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(Document(d["_id"], d["text"], d["title"]) for d in TINY_DOCS)


def _needs(backend: str) -> None:
    """pyserini and sentence-transformers import torch themselves: under tests/without_torch.py their tests skip
    (the full suite runs them); bm25s needs nothing more."""
    if backend in ("pyserini", "dense"):
        pytest.importorskip("torch", reason=f"the {backend} backend's library imports torch")


def _top(run, qid):
    return run.ranking(qid)[0].doc_id


@pytest.mark.parametrize("backend", ["bm25s", "pyserini"])
def test_bm25_backends_rank_the_matching_document_first_and_reload(backend, corpus, tmp_path):
    _needs(backend)
    retriever = build_index(corpus, backend, out=tmp_path / "idx", corpus_name="tiny")
    run = retriever.search(QUERIES, k=10)
    assert {q: _top(run, q) for q in QUERIES} == EXPECTED_TOP
    # Lucene semantics: only documents that match a query term are returned
    assert set(run["uranium"]) == {"d6"}
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["backend"] == backend and manifest["num_docs"] == 6 and manifest["corpus"] == "tiny"
    reloaded = open_index(tmp_path / "idx").search(QUERIES, k=10)
    for q in QUERIES:
        assert reloaded[q] == pytest.approx(run[q])
    assert not (tmp_path / "idx.partial").exists()


def test_bm25s_and_pyserini_agree_on_the_order(corpus):
    """Same parameters, same analyzer family: the two BM25s rank the tiny corpus alike."""
    _needs("pyserini")
    a = build_index(corpus, "bm25s", k1=0.9, b=0.4).search(QUERIES, k=3)
    b = build_index(corpus, "pyserini", k1=0.9, b=0.4).search(QUERIES, k=3)
    for q in QUERIES:
        assert [h.doc_id for h in a.ranking(q)] == [h.doc_id for h in b.ranking(q)]


def test_bm25s_parameters_change_scores_and_are_stored(corpus, tmp_path):
    default = build_index(corpus, "bm25s").search(QUERIES, k=6)
    tuned = build_index(corpus, "bm25s", out=tmp_path / "i", k1=0.9, b=0.4).search(QUERIES, k=6)
    assert default["solar"]["d1"] != pytest.approx(tuned["solar"]["d1"])
    assert json.loads((tmp_path / "i" / "index.json").read_text())["params"]["k1"] == 0.9


def test_k_larger_than_corpus_and_empty_queries(corpus):
    r = build_index(corpus, "bm25s")
    assert len(r.search({"q": "energy electricity power"}, k=1000)["q"]) <= 6
    assert len(r.search({}, k=10)) == 0


@pytest.fixture(scope="module")
def dense(corpus):
    _needs("dense")
    return build_index(corpus, "dense")


def test_dense_retrieval_with_the_packaged_minilm(dense, corpus, tmp_path):
    run = dense.search(QUERIES | {"paraphrase": "clean electricity from moving air"}, k=6)
    assert {q: _top(run, q) for q in QUERIES} == EXPECTED_TOP
    assert _top(run, "paraphrase") == "d2"  # no word in common with d2's title
    assert len(run["solar"]) == 6  # dense scores every document
    emb = dense._emb
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    dense.save(tmp_path / "dense", "tiny")
    again = open_index(tmp_path / "dense").search(QUERIES, k=6)
    for q in QUERIES:
        assert again[q] == pytest.approx(run[q], abs=1e-5)


def test_dense_index_with_mismatched_ids_is_refused(dense, tmp_path):
    dense.save(tmp_path / "d", "tiny")
    (tmp_path / "d" / "doc_ids.json").write_text(json.dumps(["d1"]))
    with pytest.raises(RerankerError, match="rebuild the index"):
        open_index(tmp_path / "d")


def test_registry_errors(tmp_path, corpus, monkeypatch):
    with pytest.raises(RerankerError, match="unknown retrieval backend 'bm42'.*bm25s"):
        get_backend("bm42")
    monkeypatch.setitem(BACKENDS.entries, "fancy", BackendSpec("no_such_module_xyz", "X", "fancy-extra", "test"))
    with pytest.raises(MissingDependencyError, match=r'pip install "enterprise-reranker\[fancy-extra\]"'):
        get_backend("fancy")
    with pytest.raises(RerankerError, match="empty corpus"):
        build_index(Corpus(), "bm25s")


def test_open_index_errors(tmp_path, corpus):
    with pytest.raises(RerankerError, match="not an index folder"):
        open_index(tmp_path)
    build_index(corpus, "bm25s", out=tmp_path / "idx")
    manifest = tmp_path / "idx" / "index.json"
    manifest.write_text("{not json")
    with pytest.raises(RerankerError, match="corrupt manifest"):
        open_index(tmp_path / "idx")
    manifest.write_text(json.dumps({"format_version": 99, "backend": "bm25s"}))
    with pytest.raises(RerankerError, match="index format 99"):
        open_index(tmp_path / "idx")


def test_rebuilding_an_index_replaces_it(corpus, tmp_path):
    build_index(corpus, "bm25s", out=tmp_path / "idx")
    smaller = Corpus(list(corpus)[:2])
    build_index(smaller, "bm25s", out=tmp_path / "idx")
    assert open_index(tmp_path / "idx").num_docs == 2
