"""TREC runs, qrels (TREC and BEIR TSV) and topics: round trips and errors naming the line."""

from __future__ import annotations

import pytest

from reranker.errors import DataFormatError, RerankerError
from reranker.io.trec import read_qrels, read_run, read_topics, write_qrels, write_run, write_topics
from reranker.records import Qrels, Query, Run


def test_run_round_trip(tmp_path):
    run = Run({"q1": {"d1": 0.5, "d2": 2.25, "d3": -1.0}, "q2": {"a": 1.0, "b": 1.0}}, name="my run")
    path = tmp_path / "sub" / "out.trec"
    write_run(path, run)
    lines = path.read_text().splitlines()
    assert lines == [
        "q1 Q0 d2 1 2.25 my_run",
        "q1 Q0 d1 2 0.5 my_run",
        "q1 Q0 d3 3 -1.0 my_run",
        "q2 Q0 b 1 1.0 my_run",
        "q2 Q0 a 2 1.0 my_run",
    ]
    assert not (path.parent / "out.trec.tmp").exists()
    back = read_run(path)
    assert back.name == "out"  # named after the file
    assert back.to_dict() == run.to_dict()
    assert [h.doc_id for h in back.ranking("q1")] == ["d2", "d1", "d3"]


def test_write_run_explicit_tag_and_default_tag(tmp_path):
    run = Run({"q": {"d": 1.0}})
    write_run(tmp_path / "a.trec", run, tag="bm25 top")
    assert (tmp_path / "a.trec").read_text() == "q Q0 d 1 1.0 bm25_top\n"
    write_run(tmp_path / "b.trec", run)
    assert (tmp_path / "b.trec").read_text().split()[-1] == "reranker"


def test_read_run_name_override(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q Q0 d 1 3.0 t\n")
    assert read_run(path, name="custom").name == "custom"


def test_read_run_ranks_from_scores_not_file_ranks(tmp_path):
    """The rank column is ignored: what counts is the score, as in trec_eval."""
    path = tmp_path / "r.trec"
    path.write_text("q Q0 low 1 0.1 t\nq Q0 high 2 9.0 t\n\nq Q0 mid 3 5 t\n")
    assert [h.doc_id for h in read_run(path).ranking("q")] == ["high", "mid", "low"]


def test_run_line_with_five_fields_names_line(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q Q0 d1 1 2.0 t\nq Q0 d2 2 1.0\n")
    with pytest.raises(DataFormatError, match=r"r\.trec, line 2: expected 6 fields .* got 5") as info:
        read_run(path)
    assert info.value.line == 2


def test_run_non_numeric_score_names_line(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q Q0 d1 1 2.0 t\nq Q0 d2 2 1.0 t\nq Q0 d3 3 high t\n")
    with pytest.raises(DataFormatError, match=r"line 3: score \(field 5\) must be a number, got 'high'"):
        read_run(path)


def test_run_non_integer_rank_names_line(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q Q0 d1 first 2.0 t\n")
    with pytest.raises(DataFormatError, match=r"line 1: rank \(field 4\) must be a number"):
        read_run(path)


def test_empty_run_file(tmp_path):
    path = tmp_path / "empty.trec"
    path.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no lines") as info:
        read_run(path)
    assert str(path) in str(info.value)


def test_missing_run_file(tmp_path):
    with pytest.raises(RerankerError, match="no such file"):
        read_run(tmp_path / "none.trec")


def test_qrels_trec_four_columns(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("1 0 d1 2\n1 0 d2 0\n2 Q0 d1 1\n")
    qrels = read_qrels(path)
    assert qrels.to_dict() == {"1": {"d1": 2, "d2": 0}, "2": {"d1": 1}}
    assert qrels.name == "qrels"


def test_qrels_beir_tsv_with_header(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n")
    qrels = read_qrels(path)
    assert qrels.to_dict() == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}


def test_qrels_beir_tsv_without_header(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\n")
    assert read_qrels(path).to_dict() == {"q1": {"d1": 1}}


def test_qrels_header_only_allowed_on_first_line(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\nquery-id\tcorpus-id\tscore\n")
    with pytest.raises(DataFormatError, match=r"line 2: relevance grade must be a number"):
        read_qrels(path)


def test_qrels_bad_line_field_count(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("1 0 d1 1\n1 0 d2 1\n1 0 d3 1 extra\n")
    with pytest.raises(DataFormatError, match=r"line 3: expected 'qid 0 docid grade' .* got 5 fields"):
        read_qrels(path)
    path.write_text("1 0 d1 1\n1 d2\n")
    with pytest.raises(DataFormatError, match=r"line 2: .* got 2 fields"):
        read_qrels(path)


def test_qrels_bad_grade(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("1 0 d1 1\n1 0 d2 yes\n")
    with pytest.raises(DataFormatError, match=r"line 2: relevance grade must be a number, got 'yes'"):
        read_qrels(path)


def test_qrels_header_only_is_empty_error(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataFormatError, match="no judgements"):
        read_qrels(path)


def test_qrels_round_trip(tmp_path):
    qrels = Qrels({"q1": {"a": 2, "b": 0}, "q2": {"c": 1}})
    path = tmp_path / "out" / "qrels.txt"
    write_qrels(path, qrels)
    assert path.read_text().splitlines() == ["q1 0 a 2", "q1 0 b 0", "q2 0 c 1"]
    assert read_qrels(path).to_dict() == qrels.to_dict()


def test_topics_read(tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_text("1\twhat is a flea\r\n\n2\t  tabs\tinside text \n")
    topics = read_topics(path)
    assert topics == {"1": Query("1", "what is a flea"), "2": Query("2", "tabs\tinside text")}


def test_topics_round_trip_normalises_whitespace(tmp_path):
    queries = [Query("1", "multi\nline   query"), Query("b", "second")]
    path = tmp_path / "t" / "topics.tsv"
    write_topics(path, queries)
    assert path.read_text() == "1\tmulti line query\nb\tsecond\n"
    assert read_topics(path) == {"1": Query("1", "multi line query"), "b": Query("b", "second")}


def test_topics_line_without_tab_names_line(tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_text("1\tfine\n2 no tab here\n")
    with pytest.raises(DataFormatError, match=r"topics\.tsv, line 2: expected 'qid<TAB>query text'") as info:
        read_topics(path)
    assert info.value.line == 2


def test_topics_duplicate_query_id(tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_text("1\tfirst\n2\tsecond\n1\tagain\n")
    with pytest.raises(DataFormatError, match=r"line 3: query id '1' appears twice"):
        read_topics(path)


def test_topics_id_with_trailing_space_is_keyed_by_its_stripped_id(tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_text("q1 \tfirst\n")
    topics = read_topics(path)
    assert list(topics) == ["q1"]
    assert topics["q1"].id == "q1"


def test_write_run_keeps_full_precision(tmp_path):
    """Scores that differ only in late digits (monoT5 probabilities near 1) must not become ties."""
    run = Run({"q": {"a": 0.99999991, "b": 0.99999992, "c": 1e-12}})
    write_run(tmp_path / "p.trec", run)
    back = read_run(tmp_path / "p.trec")
    assert back["q"] == {"a": 0.99999991, "b": 0.99999992, "c": 1e-12}
    assert [h.doc_id for h in back.ranking("q")] == ["b", "a", "c"]
