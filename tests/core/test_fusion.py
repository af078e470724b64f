"""Reciprocal rank fusion and score fusion against hand-computed values."""

from __future__ import annotations

import pytest

from reranker.errors import RerankerError
from reranker.records import Run
from reranker.retrieval import fuse

A = Run({"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "only_a": {"x": 1.0}}, name="a")
B = Run({"q": {"d3": 0.9, "d1": 0.5}}, name="b")


def test_rrf_hand_computed():
    fused = fuse([A, B], "rrf", k=60)
    assert fused["q"]["d1"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["q"]["d3"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["q"]["d2"] == pytest.approx(1 / 62)
    assert [h.doc_id for h in fused.ranking("q")] == ["d1", "d3", "d2"]
    # a query that only one run has is kept, fused from that run alone
    assert fused["only_a"]["x"] == pytest.approx(1 / 61)
    assert fused.name == "rrf(a,b)"


def test_rrf_k_changes_scores():
    assert fuse([A, B], "rrf", k=1)["q"]["d1"] == pytest.approx(1 / 2 + 1 / 3)


def test_weighted_sum_of_min_max_scores():
    fused = fuse([A, B], "wsum", weights=[0.25, 0.75])
    # min-max per query: a: d1 1, d2 .5, d3 0; b: d3 1, d1 0
    assert fused["q"]["d1"] == pytest.approx(0.25 * 1 + 0.75 * 0)
    assert fused["q"]["d3"] == pytest.approx(0.25 * 0 + 0.75 * 1)
    assert fused["q"]["d2"] == pytest.approx(0.25 * 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runs": [A]}, "at least two runs"),
        ({"runs": [A, B], "method": "magic"}, "unknown fusion method"),
        ({"runs": [A, B], "method": "wsum"}, "one weight per run"),
        ({"runs": [A, B], "weights": [1.0]}, "1 weights given for 2 runs"),
    ],
)
def test_fusion_errors(kwargs, message):
    with pytest.raises(RerankerError, match=message):
        fuse(**kwargs)
