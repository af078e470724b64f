"""Seed judgement files: JSONL and qrels, validated against the data set; errors name the line."""

from __future__ import annotations

import json

import pytest

from reranker.errors import DataFormatError, RerankerError
from reranker.io.jsonl import read_corpus_jsonl, read_queries_jsonl
from teacher.seeds import read_seeds, split_by_query


@pytest.fixture
def data(tiny_beir):
    return read_queries_jsonl(tiny_beir / "queries.jsonl"), read_corpus_jsonl(tiny_beir / "corpus.jsonl")


def write(path, lines):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_jsonl_with_ids_and_texts(tmp_path, data):
    queries, corpus = data
    path = write(tmp_path / "seeds.jsonl", [
        {"query_id": "q1", "doc_id": "d1", "label": 1},
        {"query": "how do solar panels work", "doc_id": "d3", "label": 0},  # a known text maps to its id
        {"query": "a brand new question", "doc_id": "d2", "grade": 1},
        "",
    ])
    seeds = read_seeds(path, queries, corpus)
    assert [(j.query_id, j.doc_id, j.grade, j.line) for j in seeds.judgements][:2] == [("q1", "d1", 1, 1), ("q1", "d3", 0, 2)]
    new = seeds.judgements[2].query_id
    assert new.startswith("seed-") and seeds.queries[new].text == "a brand new question"
    assert seeds.targets() == {("q1", "d1"): 1.0, ("q1", "d3"): 0.0, (new, "d2"): 1.0}
    assert "q2" not in seeds.queries  # only the queries the seeds use


def test_trec_and_beir_qrels_and_grades(tmp_path, data):
    queries, corpus = data
    beir = write(tmp_path / "seeds.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q2\td4\t0"])
    seeds = read_seeds(beir, queries, corpus, grade_max=2)
    assert [(j.query_id, j.doc_id, j.target(2)) for j in seeds.judgements] == [("q1", "d1", 1.0), ("q2", "d4", 0.0)]
    trec = write(tmp_path / "seeds.qrels", ["q1 0 d1 1", "q3 0 d2 0"])
    assert [j.line for j in read_seeds(trec, queries, corpus).judgements] == [1, 2]


@pytest.mark.parametrize(("lines", "line", "message"), [
    (["q1\td1\t1", "q9\td1\t1"], 2, "unknown query id 'q9'"),
    (["q1\td1\t1", "q2\td2\t0", "q2\td77\t1"], 3, "unknown doc id 'd77'"),
    (["q1\td1\t1", "q2\td2\t0", "q1\td1\t0"], 3, r"judged twice \(first on line 1\)"),
    (["q1\td1\t2"], 1, r"outside the allowed range: expected 0 or 1 \(graded judgements: pass --grade-max"),
    (["q1\td1\t-1"], 1, "outside the allowed range"),
    (["q1\td1\t0.5"], 1, "outside the allowed range"),
    (["q1\td1\tyes"], 1, "not a number"),
    (["q1 d1"], 1, "got 2 fields"),
])
def test_qrels_errors_name_the_line(tmp_path, data, lines, line, message):
    path = write(tmp_path / "seeds.tsv", lines)
    with pytest.raises(DataFormatError, match=message) as info:
        read_seeds(path, *data)
    assert info.value.line == line and str(path) in str(info.value)


@pytest.mark.parametrize(("obj", "message"), [
    ({"query_id": "qX", "doc_id": "d1", "label": 1}, "unknown query id 'qX'"),
    ({"query_id": "q1", "doc_id": "nope", "label": 1}, "unknown doc id 'nope'"),
    ({"query_id": "q1", "doc_id": "d1", "label": 0}, "judged twice"),
    ({"query_id": "q2", "doc_id": "d1", "label": 4}, "expected an integer grade 0..3"),
    ({"query_id": "q2", "doc_id": "d1", "label": True}, "not a number"),
    ({"query_id": "q2", "doc_id": "d1"}, "expected a label field"),
    ({"doc_id": "d1", "label": 1}, "'query_id' or a 'query'"),
    ({"query_id": "q2", "label": 1}, "expected a 'doc_id'"),
])
def test_jsonl_errors_name_the_line(tmp_path, data, obj, message):
    path = write(tmp_path / "seeds.jsonl", [{"query_id": "q1", "doc_id": "d1", "label": 3}, "", obj])
    with pytest.raises(DataFormatError, match=message) as info:
        read_seeds(path, *data, grade_max=3)
    assert info.value.line == 3


def test_empty_file_and_split(tmp_path, data):
    with pytest.raises(DataFormatError, match="no judgements"):
        read_seeds(write(tmp_path / "e.tsv", [""]), *data)
    path = write(tmp_path / "s.tsv", [f"q{q}\td{d}\t{int(d == q)}" for q in range(1, 6) for d in range(1, 7)])
    seeds = read_seeds(path, *data)
    fit, held = split_by_query(seeds, 0.4, seed=1)
    assert len(fit) + len(held) == 30 and len({j.query_id for j in held}) == 2
    assert not {j.query_id for j in fit} & {j.query_id for j in held}
    assert split_by_query(seeds, 0.4, seed=1) == (fit, held)
    with pytest.raises(RerankerError, match="leaves one side empty"):
        split_by_query(seeds, 0.05)
