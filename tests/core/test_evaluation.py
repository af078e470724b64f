"""Metrics against hand-computed values, trec_eval conventions, and significance reports."""

from __future__ import annotations

import math

import pytest

from reranker.errors import RerankerError
from reranker.evaluation import compare, evaluate
from reranker.records import Qrels, Run

QRELS = Qrels({"q1": {"a": 2, "b": 1, "z": 0}, "q2": {"c": 1}}, name="toy")
RUN = Run({"q1": {"x": 3.0, "a": 2.0, "b": 1.0}, "q2": {"c": 5.0, "y": 1.0}}, name="toy-run")

# hand computation (linear gains, as trec_eval)
NDCG_Q1 = (2 / math.log2(3) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
AP_Q1 = (1 / 2 + 2 / 3) / 2


def test_metrics_match_hand_computed_values():
    scores = evaluate(QRELS, RUN)["toy-run"]
    assert scores["ndcg@10"] == pytest.approx((NDCG_Q1 + 1.0) / 2)
    assert scores["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert scores["recall@100"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx((AP_Q1 + 1.0) / 2)


def test_cutoffs_and_relevance_levels():
    scores = evaluate(QRELS, RUN, ["ndcg@1", "recall@2", "map-l2", "precision@3"])["toy-run"]
    assert scores["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert scores["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    # relevance level 2: only 'a' counts for q1, and q2 has no relevant document
    assert scores["map-l2"] == pytest.approx((1 / 2 + 0) / 2)
    assert scores["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_a_judged_query_missing_from_the_run_counts_as_zero(caplog):
    partial = Run({"q1": RUN["q1"], "unjudged": {"a": 1.0}}, name="partial")
    with caplog.at_level("WARNING"):
        scores = evaluate(QRELS, partial, ["ndcg@10"])["partial"]
    assert scores["ndcg@10"] == pytest.approx(NDCG_Q1 / 2)
    assert "1 of 2 judged queries" in caplog.text


def test_no_query_in_common_is_a_clear_error():
    with pytest.raises(RerankerError, match="no query in common.*same data set and split"):
        evaluate(QRELS, Run({"other": {"a": 1.0}}, name="r"))


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(RerankerError, match="check the metric names"):
        evaluate(QRELS, RUN, ["ndgc@10"])


def _runs_for_significance():
    """40 queries: 'good' puts the relevant doc first, 'bad' puts it tenth."""
    qrels = Qrels({f"q{i}": {"rel": 1} for i in range(40)})
    good = Run({f"q{i}": {"rel": 10.0, **{f"n{j}": 5.0 - j * 0.1 for j in range(9)}} for i in range(40)}, name="good")
    bad = Run({f"q{i}": {"rel": 0.0, **{f"n{j}": 5.0 - j * 0.1 for j in range(9)}} for i in range(40)}, name="bad")
    noisy = Run({f"q{i}": {"rel": 10.0 if i % 2 else 0.0, **{f"n{j}": 5.0 - j * 0.1 for j in range(9)}} for i in range(40)}, name="noisy")
    return qrels, good, bad, noisy


@pytest.mark.parametrize("test", ["student", "fisher"])
def test_compare_marks_significant_differences(test):
    qrels, good, bad, noisy = _runs_for_significance()
    cmp = compare(qrels, [good, bad, noisy], ["mrr@10"], test=test)
    assert cmp.scores["good"]["mrr@10"] == pytest.approx(1.0)
    assert cmp.scores["bad"]["mrr@10"] == pytest.approx(0.1)
    assert set(cmp.better_than("good", "mrr@10")) == {"bad", "noisy"}
    assert cmp.better_than("bad", "mrr@10") == []
    assert cmp.p_values["good"]["bad"]["mrr@10"] == cmp.p_values["bad"]["good"]["mrr@10"] < 0.05
    table = cmp.to_markdown()
    assert "| a | good | 1.0000<sup>bc</sup> |" in table
    assert "| b | bad | 0.1000 |" in table
    assert cmp.to_dict()["num_queries"] == 40


def test_identical_runs_are_not_significantly_different():
    qrels, good, _, _ = _runs_for_significance()
    twin = Run(good.to_dict(), name="twin")
    cmp = compare(qrels, [good, twin], ["ndcg@10"])
    assert cmp.better_than("good", "ndcg@10") == [] and cmp.better_than("twin", "ndcg@10") == []


def test_duplicate_run_names_are_made_unique():
    cmp = compare(QRELS, [RUN, RUN], ["ndcg@10"])
    assert list(cmp.scores) == ["toy-run", "toy-run.2"]


def test_compare_one_run_and_bad_test_name():
    assert compare(QRELS, [RUN], ["mrr@10"]).scores["toy-run"]["mrr@10"] == pytest.approx(0.75)
    with pytest.raises(RerankerError, match="unknown significance test"):
        compare(QRELS, [RUN, RUN], test="bonferroni")
