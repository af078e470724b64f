"""The teacher ladder's own arithmetic (benchmarks/teacher_ladder.py, ladder_report.py): the rung's blend, the groups
it trains on, the run order of a time-boxed call, and the report's nDCG@10 and KL against ranx and the training loss."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import ladder_report  # noqa: E402
import teacher_ladder  # noqa: E402

from reranker.io.groups import read_groups  # noqa: E402
from student.losses import listwise_kl  # noqa: E402

pytestmark = pytest.mark.integration


def test_the_blend_runs_from_the_ensemble_to_the_oracle():
    assert teacher_ladder.blend(1.3, 1, 0.0) == 1.3
    assert teacher_ladder.blend(1.3, 1, 1.0) == 2.0 and teacher_ladder.blend(1.3, 0, 1.0) == -2.0
    assert teacher_ladder.blend(1.0, 1, 0.25) == pytest.approx(0.75 * 1.0 + 0.25 * 2.0)


def test_the_groups_of_a_rung_read_back_best_first_with_the_blended_scores(tmp_path):
    queries = [{"qid": "q1", "query": "what", "pool": [["a", 0.5, 0], ["b", -0.2, 1], ["c", 0.1, 0]]}]
    texts = {"a": "text a", "b": "text b", "c": "text c"}
    teacher_ladder.write_groups(tmp_path / "g.jsonl", queries, texts, alpha=1.0)
    (group,) = read_groups(tmp_path / "g.jsonl")
    assert [c.doc_id for c in group.candidates][0] == "b"  # the oracle puts the judged document first
    assert [c.score for c in group.candidates] == [2.0, -2.0, -2.0] and group.candidates[0].text == "text b"
    teacher_ladder.write_groups(tmp_path / "g0.jsonl", queries, texts, alpha=0.0)
    assert [c.doc_id for c in read_groups(tmp_path / "g0.jsonl")[0].candidates] == ["a", "c", "b"]  # the ensemble's order


def test_a_time_boxed_call_runs_the_ends_of_the_ladder_first():
    args = argparse.Namespace(designs="joint-1e-3,recipe,t5-random", seeds="0,1", alphas="0,0.25,1")
    plan = teacher_ladder._plan(args)
    assert plan[:4] == [("joint-1e-3", 0.0, 0), ("joint-1e-3", 1.0, 0), ("recipe", 0.0, 0), ("recipe", 1.0, 0)]
    assert plan.index(("joint-1e-3", 0.25, 0)) > plan.index(("recipe", 1.0, 1))  # the middle rungs after both seeds' ends
    assert len(plan) == len(set(plan)) == 2 * 2 * 2 + 2 + 2 + 2 + 2  # ends, joint's mids, T5 (seed 0, then 1), recipe's mids
    assert [p for p in plan if p[0] == "t5-random"][0] == ("t5-random", 1.0, 0)


def test_the_report_ndcg_matches_ranx_and_its_kl_the_training_loss():
    from ranx import Qrels, Run, evaluate

    rng = np.random.default_rng(0)
    gains = rng.integers(0, 3, size=(6, 15)).astype(float)
    gains[:, 0] = 2  # every query has a relevant document
    scores = rng.normal(size=(6, 15))
    groups = [(f"q{i}", gains[i]) for i in range(6)]
    ours = ladder_report.per_query_ndcg(groups, scores.ravel())
    qrels = Qrels({f"q{i}": {f"d{j}": int(gains[i, j]) for j in range(15) if gains[i, j] > 0} for i in range(6)})
    run = Run({f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(15)} for i in range(6)})
    theirs = evaluate(qrels, run, "ndcg@10", return_mean=False)
    assert np.allclose([ours[f"q{i}"] for i in range(6)], theirs, atol=1e-6)
    s, t = rng.normal(size=15), rng.normal(size=15)
    assert ladder_report._kl(s, t) == pytest.approx(float(listwise_kl(torch.tensor(s[None]), torch.tensor(t[None]))), rel=1e-5)
    assert ladder_report._kl(t, t) == pytest.approx(0.0, abs=1e-12)
