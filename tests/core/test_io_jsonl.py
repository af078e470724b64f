"""JSONL corpus and query files: field variants, errors with file and line, round trips."""

from __future__ import annotations

import io
import json

import pytest

from reranker.errors import DataFormatError, RerankerError
from reranker.io.jsonl import (
    iter_jsonl,
    read_corpus_jsonl,
    read_queries_jsonl,
    write_corpus_jsonl,
    write_jsonl,
    write_queries_jsonl,
)
from reranker.records import Document, Query


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corpus_with_beir_fields(tmp_path):
    path = _write(
        tmp_path / "corpus.jsonl",
        [
            json.dumps({"_id": "d1", "title": "Cats", "text": "Cats purr."}),
            json.dumps({"_id": "d2", "title": "", "text": "Dogs bark.", "metadata": {"url": "x"}}),
        ],
    )
    corpus = read_corpus_jsonl(path)
    assert corpus.ids() == ["d1", "d2"]
    assert corpus["d1"].title == "Cats"
    assert corpus["d1"].text == "Cats purr."
    assert corpus["d1"].contents == "Cats Cats purr."
    assert corpus["d2"].title == ""
    assert dict(corpus["d2"].metadata) == {"url": "x"}


def test_corpus_with_pyserini_fields(tmp_path):
    path = _write(
        tmp_path / "corpus.jsonl",
        [json.dumps({"id": "7", "contents": "seven"}), json.dumps({"id": 8, "contents": "eight"})],
    )
    corpus = read_corpus_jsonl(path)
    assert corpus.ids() == ["7", "8"]  # numeric ids become strings
    assert corpus["8"].text == "eight"
    assert corpus["7"].title == ""


def test_queries_beir_and_qid_query_fields(tmp_path):
    path = _write(
        tmp_path / "queries.jsonl",
        [json.dumps({"_id": "q1", "text": "first"}), json.dumps({"qid": 2, "query": "second"})],
    )
    queries = read_queries_jsonl(path)
    assert queries == {"q1": Query("q1", "first"), "2": Query("2", "second")}


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(
        tmp_path / "corpus.jsonl",
        [json.dumps({"_id": "a", "text": "ok"}), "", json.dumps({"_id": "b", "text": "ok"}), '{"_id": "c", "text": '],
    )
    with pytest.raises(DataFormatError) as info:
        read_corpus_jsonl(path)
    err = info.value
    assert err.line == 4  # blank line 2 still counts
    assert err.path == str(path)
    assert f"{path}, line 4:" in str(err)
    assert "not valid JSON" in str(err)


def test_line_that_is_a_json_list(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", [json.dumps({"_id": "a", "text": "ok"}), '["b", "text"]'])
    with pytest.raises(DataFormatError, match=r"line 2: expected a JSON object, got list"):
        read_corpus_jsonl(path)


def test_missing_id_field(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", [json.dumps({"title": "t", "text": "no id"})])
    with pytest.raises(DataFormatError, match=r"line 1: missing document id") as info:
        read_corpus_jsonl(path)
    assert "'_id'" in str(info.value)


def test_missing_text_field(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", [json.dumps({"_id": "a", "title": "t"})])
    with pytest.raises(DataFormatError, match=r"line 1: missing document text"):
        read_corpus_jsonl(path)


def test_missing_query_id(tmp_path):
    path = _write(tmp_path / "q.jsonl", [json.dumps({"_id": "q1", "text": "a"}), json.dumps({"text": "b"})])
    with pytest.raises(DataFormatError, match=r"line 2: missing query id"):
        read_queries_jsonl(path)


def test_non_string_id_is_rejected(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", [json.dumps({"_id": ["a"], "text": "x"})])
    with pytest.raises(DataFormatError, match=r"line 1: field '_id' .* must be a string, got list"):
        read_corpus_jsonl(path)


def test_duplicate_document_id(tmp_path):
    path = _write(
        tmp_path / "corpus.jsonl",
        [json.dumps({"_id": "a", "text": "1"}), json.dumps({"_id": "b", "text": "2"}), json.dumps({"_id": "a", "text": "3"})],
    )
    with pytest.raises(DataFormatError, match=r"line 3: document id 'a' appears twice"):
        read_corpus_jsonl(path)


def test_duplicate_query_id(tmp_path):
    path = _write(tmp_path / "q.jsonl", [json.dumps({"_id": "q", "text": "1"}), json.dumps({"_id": "q", "text": "2"})])
    with pytest.raises(DataFormatError, match=r"line 2: query id 'q' appears twice"):
        read_queries_jsonl(path)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "\n" + json.dumps({"_id": "a", "text": "x"}) + "\n   \n\t\n" + json.dumps({"_id": "b", "text": "y"}) + "\n\n",
        encoding="utf-8",
    )
    assert read_corpus_jsonl(path).ids() == ["a", "b"]


def test_iter_jsonl_yields_real_line_numbers():
    stream = io.StringIO('\n{"a": 1}\n\n{"b": 2}\n')
    assert list(iter_jsonl(stream, "mem")) == [(2, {"a": 1}), (4, {"b": 2})]


def test_missing_file_raises_reranker_error(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(RerankerError, match="no such file") as info:
        read_corpus_jsonl(path)
    assert str(path) in str(info.value)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(RerankerError, match="is a folder"):
        read_queries_jsonl(tmp_path)


def test_corpus_round_trip(tmp_path):
    docs = [
        Document("d1", 'Text with ünïcode and "quotes"\nand a newline', "Title 1", {"source": "a.md", "n": 3}),
        Document("d2", "Plain", ""),
    ]
    path = tmp_path / "out" / "corpus.jsonl"
    assert write_corpus_jsonl(path, docs) == 2
    back = read_corpus_jsonl(path)
    assert list(back) == docs
    assert dict(back["d1"].metadata) == {"source": "a.md", "n": 3}
    assert "ünïcode" in path.read_text(encoding="utf-8")  # ensure_ascii=False


def test_queries_round_trip(tmp_path):
    queries = [Query("1", "what is x"), Query("q-2", "why ✓")]
    path = tmp_path / "queries.jsonl"
    assert write_queries_jsonl(path, queries) == 2
    assert read_queries_jsonl(path) == {q.id: q for q in queries}


def test_write_jsonl_leaves_no_tmp_file_and_replaces_existing(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("old content\n", encoding="utf-8")
    assert write_jsonl(path, iter([{"a": 1}, {"b": 2}, {"c": 3}])) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"a": 1}, {"b": 2}, {"c": 3}]
