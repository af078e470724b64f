"""Records: Run ordering (trec_eval tie order), top_k, restrict, Qrels casting, Corpus, Document."""

from __future__ import annotations

import pytest

from reranker.records import Corpus, Document, Qrels, Query, Run, ScoredDoc


def test_ranking_best_first_with_one_based_ranks():
    run = Run({"q": {"a": 0.5, "b": 2.0, "c": -1.0, "d": 1.0}})
    assert run.ranking("q") == [
        ScoredDoc("b", 2.0, 1),
        ScoredDoc("d", 1.0, 2),
        ScoredDoc("a", 0.5, 3),
        ScoredDoc("c", -1.0, 4),
    ]


def test_ranking_ties_are_ordered_by_doc_id_descending():
    """trec_eval orders equal scores by docno descending; the run must do the same."""
    run = Run({"q": {"d10": 1.0, "d2": 1.0, "d9": 1.0, "top": 5.0, "z": 0.0}})
    ranking = run.ranking("q")
    # string comparison: "d9" > "d2" > "d10"
    assert [h.doc_id for h in ranking] == ["top", "d9", "d2", "d10", "z"]
    assert [h.rank for h in ranking] == [1, 2, 3, 4, 5]


def test_ranking_unknown_query_is_empty():
    assert Run({"q": {"a": 1}}).ranking("missing") == []


def test_run_casts_keys_to_str_and_scores_to_float():
    run = Run({1: {2: "3.5", 7: 1}})
    assert list(run) == ["1"]
    assert run["1"] == {"2": 3.5, "7": 1.0}
    assert all(isinstance(v, float) for v in run["1"].values())
    run.add(5, 6, "0.25")
    assert run["5"] == {"6": 0.25}
    assert run.num_entries() == 3


def test_top_k_keeps_best_candidates_per_query():
    run = Run({"q1": {"a": 1, "b": 3, "c": 2, "d": 0}, "q2": {"x": 1, "y": 1}}, name="bm25")
    top = run.top_k(2)
    assert top is not run
    assert top.name == "bm25"
    assert top.to_dict() == {"q1": {"b": 3.0, "c": 2.0}, "q2": {"x": 1.0, "y": 1.0}}
    # the original is untouched
    assert run.num_entries() == 6


def test_top_k_with_ties_at_the_cut_uses_tie_order():
    run = Run({"q": {"a": 1.0, "b": 1.0, "c": 1.0}})
    assert set(run.top_k(2)["q"]) == {"c", "b"}


def test_top_k_larger_than_run_keeps_everything():
    run = Run({"q": {"a": 1.0, "b": 2.0}})
    assert run.top_k(10).to_dict() == run.to_dict()


def test_restrict_keeps_only_given_queries_it_has():
    run = Run({"q1": {"a": 1}, "q2": {"b": 2}, "q3": {"c": 3}}, name="r")
    sub = run.restrict(["q3", "q1", "nope"])
    assert set(sub) == {"q1", "q3"}
    assert sub["q3"] == {"c": 3.0}
    assert sub.name == "r"
    assert len(run) == 3


def test_qrels_cast_grades_to_int():
    qrels = Qrels({"q": {"d1": "2", "d2": 1.0, "d3": 0}})
    qrels.add("q", "d4", "3")
    assert qrels["q"] == {"d1": 2, "d2": 1, "d3": 0, "d4": 3}
    assert all(type(v) is int for v in qrels["q"].values())
    assert qrels.num_entries() == 4
    assert len(qrels) == 1


def test_qrels_rejects_non_integer_grade():
    with pytest.raises(ValueError):
        Qrels({"q": {"d": "relevant"}})


def test_nested_mapping_to_dict_is_a_copy():
    qrels = Qrels({"q": {"d": 1}})
    d = qrels.to_dict()
    d["q"]["d"] = 99
    assert qrels["q"]["d"] == 1


def test_repr_counts_queries_and_entries():
    run = Run({"q1": {"a": 1, "b": 2}, "q2": {"c": 3}}, name="bm25")
    assert repr(run) == "<Run 'bm25': 2 queries, 3 entries>"


def test_corpus_add_get_contains_len_and_order():
    docs = [Document("z", "last letter"), Document("a", "first letter"), Document("m", "middle")]
    corpus = Corpus(docs)
    assert len(corpus) == 3
    assert [d.id for d in corpus] == ["z", "a", "m"]  # insertion order, not sorted
    assert corpus.ids() == ["z", "a", "m"]
    assert "a" in corpus and "b" not in corpus
    assert corpus.get("m") == Document("m", "middle")
    assert corpus.get("nope") is None
    assert corpus["a"].text == "first letter"
    with pytest.raises(KeyError):
        corpus["nope"]
    corpus.add(Document("b", "new"))
    assert len(corpus) == 4
    assert corpus.ids()[-1] == "b"


def test_corpus_add_same_id_replaces():
    corpus = Corpus([Document("a", "old")])
    corpus.add(Document("a", "new"))
    assert len(corpus) == 1
    assert corpus["a"].text == "new"


def test_document_contents_with_and_without_title():
    assert Document("1", "body text", "Title").contents == "Title body text"
    assert Document("2", "body text").contents == "body text"
    assert Document("3", "", "Only title").contents == "Only title"


def test_document_metadata_does_not_affect_equality():
    assert Document("1", "t", "x", {"a": 1}) == Document("1", "t", "x", {"b": 2})
    assert Document("1", "t") != Document("1", "u")


def test_records_are_frozen():
    q = Query("q1", "text")
    with pytest.raises(AttributeError):
        q.text = "other"  # type: ignore[misc]
