"""TREC DL candidate files (JSON list of {query, hits}): the real DL19 BM25 top-100 and malformed inputs."""

from __future__ import annotations

import json

import pytest

from reranker.errors import DataFormatError
from reranker.io.trec import read_run
from reranker.io.trecdl import load_trec_dl_candidates


def _hit(qid, docid, score, content="some text", rank=1):
    return {"qid": qid, "docid": docid, "rank": rank, "score": score, "content": content}


def test_small_file(tmp_path):
    data = [
        {"query": "first query", "hits": [_hit("1", "a", 3.0, "alpha"), _hit(1, "b", 5.5, "beta")]},
        {"query": "second query", "hits": [_hit("2", "a", 1.0, "alpha again"), _hit("2", 7, 2.0, "seven")]},
    ]
    path = tmp_path / "cands.json"
    path.write_text(json.dumps(data))
    ds = load_trec_dl_candidates(path)
    assert ds.name == "cands"
    assert {q: ds.queries[q].text for q in ds.queries} == {"1": "first query", "2": "second query"}
    assert ds.corpus.ids() == ["a", "b", "7"]
    assert ds.corpus["a"].text == "alpha"  # first content seen is kept
    assert ds.run.to_dict() == {"1": {"a": 3.0, "b": 5.5}, "2": {"a": 1.0, "7": 2.0}}
    assert [h.doc_id for h in ds.run.ranking("1")] == ["b", "a"]
    assert ds.qrels is None


def test_malformed_json_names_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"query": "x", "hits": [\n')
    with pytest.raises(DataFormatError, match="not valid JSON") as info:
        load_trec_dl_candidates(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_dict_instead_of_list(tmp_path):
    path = tmp_path / "dict.json"
    path.write_text(json.dumps({"query": "x", "hits": []}))
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        load_trec_dl_candidates(path)


def test_entry_without_hits(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"query": "ok", "hits": []}, {"query": "no hits"}]))
    with pytest.raises(DataFormatError, match=r"entry 1: expected"):
        load_trec_dl_candidates(path)


def test_hit_missing_content(tmp_path):
    hit = _hit("1", "b", 1.0)
    del hit["content"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"query": "q", "hits": [_hit("1", "a", 2.0), hit]}]))
    with pytest.raises(DataFormatError, match=r"entry 0, hit 1: missing content"):
        load_trec_dl_candidates(path)


def test_non_numeric_score_is_a_data_format_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"query": "q", "hits": [_hit("1", "a", "high")]}]))
    with pytest.raises(DataFormatError):
        load_trec_dl_candidates(path)


@pytest.fixture(scope="module")
def dl19(trec_dl):
    return load_trec_dl_candidates(trec_dl / "bm25-top100.json", trec_dl / "qrels.txt")


@pytest.mark.slow
def test_real_dl19_candidates(dl19):
    assert len(dl19.queries) == 43
    assert set(dl19.run) == set(dl19.queries)
    assert all(len(dl19.run[q]) == 100 for q in dl19.run)
    assert all(q.text.strip() for q in dl19.queries.values())
    for qid in dl19.run:
        for docid in dl19.run[qid]:
            assert dl19.corpus[docid].text.strip()
    assert set(dl19.qrels) == set(dl19.queries)
    assert dl19.qrels.num_entries() == 9260


@pytest.mark.slow
def test_real_dl19_run_matches_trec_file(dl19, trec_dl):
    trec_run = read_run(trec_dl / "bm25-top100.trec")
    assert set(trec_run) == set(dl19.run)
    qid = "264014"
    expected = [line.split()[2] for line in (trec_dl / "bm25-top100.trec").read_text().splitlines() if line.split()[0] == qid]
    assert len(expected) == 100
    assert [h.doc_id for h in trec_run.ranking(qid)] == expected
    assert [h.doc_id for h in dl19.run.ranking(qid)] == expected
    assert dl19.run.ranking(qid)[0].score == pytest.approx(15.780599594116211)
    # and the same holds for every query (file order is best-first with trec_eval's tie order)
    for q in dl19.run:
        assert [h.doc_id for h in dl19.run.ranking(q)] == [h.doc_id for h in trec_run.ranking(q)], q


@pytest.mark.slow
def test_real_dl19_topics_agree(dl19, trec_dl):
    from reranker.io.trec import read_topics

    topics = read_topics(trec_dl / "topics.tsv")
    assert set(topics) == set(dl19.queries)
    assert topics["156493"].text == dl19.queries["156493"].text == "do goldfish grow"
