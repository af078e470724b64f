"""Label-budget selection strategies: deterministic, within budget, >= 2 pairs per query, each picks what it says."""

from __future__ import annotations

import numpy as np
import pytest

from reranker.errors import RerankerError
from reranker.records import Run
from teacher.selection import embed_queries, kmeans, select_pairs, take_budget

pytestmark = pytest.mark.slow


def candidates(n_queries=12, depth=6) -> Run:
    run = Run(name="bm25")
    for q in range(n_queries):
        for d in range(depth):
            run.add(f"q{q:02d}", f"d{q:02d}-{d}", float(depth - d))  # d0 is the first stage's best
    return run


def per_query(run: Run) -> dict[str, int]:
    return {q: len(run[q]) for q in run}


@pytest.mark.parametrize("budget", [0, 1, 7, 20, 72, 500])
def test_random_respects_the_budget_and_the_minimum_per_query(budget):
    cands = candidates()
    sel = select_pairs(cands, budget, "random", seed=3)
    total = sel.num_entries()
    assert total <= budget
    assert total == {0: 0, 1: 0, 7: 7, 20: 20, 72: 72, 500: 72}[budget]  # 1 cannot open a query; 7 = 3 opened + 1
    assert all(n >= 2 for n in per_query(sel).values())
    assert all(cands[q][d] == s for q in sel for d, s in sel[q].items())  # first-stage scores are kept
    assert select_pairs(cands, budget, "random", seed=3).to_dict() == sel.to_dict()


def test_random_differs_by_seed_and_excludes_labelled_pairs():
    cands = candidates()
    a, b = select_pairs(cands, 20, "random", seed=0), select_pairs(cands, 20, "random", seed=1)
    assert a.to_dict() != b.to_dict()
    done = {(q, d) for q in a for d in a[q]}
    nxt = select_pairs(cands, 20, "random", seed=0, exclude=done)
    assert nxt.num_entries() == 20 and not done & {(q, d) for q in nxt for d in nxt[q]}
    # a query opened in an earlier round may get a single new pair: it already has two
    assert all(len(nxt[q]) >= 1 for q in nxt)


def test_uncertainty_picks_the_pairs_at_the_boundary():
    cands = candidates(4, 5)
    student = Run(name="student")
    boundary = {("q01", "d01-3"), ("q01", "d01-4"), ("q03", "d03-0"), ("q03", "d03-2")}
    for q in cands:
        for d in cands[q]:
            student.add(q, d, 0.05 if (q, d) in boundary else (6.0 if d.endswith(("0", "1")) else -6.0))
    sel = select_pairs(cands, 4, "uncertainty", student=student)
    assert {(q, d) for q in sel for d in sel[q]} == boundary
    with pytest.raises(RerankerError, match="needs the current student"):
        select_pairs(cands, 4, "uncertainty")
    partial = Run(name="s")
    partial.add("q00", "d00-0", 1.0)
    with pytest.raises(RerankerError, match="lack 19 candidate pairs"):
        select_pairs(cands, 4, "uncertainty", student=partial)


def test_uncertainty_opens_a_query_with_its_second_most_uncertain_pair():
    cands = candidates(3, 4)
    student = Run(name="student")
    for q in cands:
        for i, d in enumerate(sorted(cands[q])):
            student.add(q, d, {"q00": [0.0, 9.0, 0.3, 8.0]}.get(q, [9.0, 9.5, 8.0, 7.0])[i])
    sel = select_pairs(cands, 2, "uncertainty", student=student)
    assert sel.to_dict() == {"q00": {"d00-0": 4.0, "d00-2": 2.0}}


def test_disagreement_picks_pairs_the_student_moves_most():
    cands = candidates(2, 4)
    student = Run(name="student")
    for q in cands:
        for i, d in enumerate(sorted(cands[q])):
            student.add(q, d, [1.0, 2.0, 3.0, 4.0][i] if q == "q00" else [4.0, 3.0, 2.0, 1.0][i])  # q00 reversed, q01 agrees
    sel = select_pairs(cands, 2, "disagreement", student=student)
    assert sel.to_dict() == {"q00": {"d00-0": 4.0, "d00-3": 1.0}}  # rank 0 <-> 3: the largest moves


def test_top_rank_takes_every_querys_top_pairs_before_any_deeper_pair():
    cands = candidates(5, 6)
    sel = select_pairs(cands, 10, "top-rank", seed=0)
    assert len(sel) == 5 and all(set(sel[q]) == {f"{q.replace('q', 'd')}-0", f"{q.replace('q', 'd')}-1"} for q in sel)
    deeper = select_pairs(cands, 4, "top-rank", seed=0, exclude={(q, d) for q in sel for d in sel[q]})
    assert {d[-1] for q in deeper for d in deeper[q]} == {"2", "3"}  # the next depth, two queries' worth
    opened = [sorted(select_pairs(cands, 4, "top-rank", seed=s)) for s in range(6)]
    assert len({tuple(o) for o in opened}) > 1  # which queries come first is the seed's random order


def test_diversity_covers_every_cluster_first():
    cands = candidates(12, 4)
    # three well separated clusters of 2, 4 and 6 queries
    centre = {0: [10, 0, 0], 1: [0, 10, 0], 2: [0, 0, 10]}
    cluster_of = {f"q{i:02d}": 0 if i < 2 else (1 if i < 6 else 2) for i in range(12)}
    rng = np.random.default_rng(0)
    emb = {q: np.array(centre[c]) + rng.normal(0, 0.1, 3) for q, c in cluster_of.items()}
    sel = select_pairs(cands, 6, "diversity", embeddings=emb, n_clusters=3, seed=0)
    assert sorted(cluster_of[q] for q in sel) == [0, 1, 2]
    assert all(set(sel[q]) == {f"{q.replace('q', 'd')}-0", f"{q.replace('q', 'd')}-1"} for q in sel)  # top-2 of each
    assert select_pairs(cands, 6, "diversity", embeddings=emb, n_clusters=3, seed=0).to_dict() == sel.to_dict()
    with pytest.raises(RerankerError, match="needs query embeddings"):
        select_pairs(cands, 6, "diversity")
    with pytest.raises(RerankerError, match="unknown selection strategy 'best'"):
        select_pairs(cands, 6, "best")


def test_kmeans_and_tfidf_embeddings():
    x = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [10, 0], [10, 0.1]], dtype=float)
    labels = kmeans(x, 3, seed=0)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5] and len(set(labels)) == 3
    emb = embed_queries({"a": "solar panel power", "b": "solar panels", "c": "tax law"}, encoder="tfidf")
    assert emb["a"] @ emb["b"] > emb["a"] @ emb["c"] == 0.0
    with pytest.raises(RerankerError, match="unknown query encoder"):
        embed_queries({"a": "x"}, encoder="bert")


def test_take_budget_never_opens_a_query_it_cannot_fill():
    order = [("q1", "a"), ("q2", "a"), ("q1", "b"), ("q2", "b"), ("q3", "a")]
    assert take_budget(order, 3) == [("q1", "a"), ("q1", "b")]  # q2 needs 2, only 1 left; q3 has a single pair
    assert take_budget(order, 3, already={"q3": 2}) == [("q1", "a"), ("q1", "b"), ("q3", "a")]
    with pytest.raises(RerankerError, match=">= 0"):
        take_budget(order, -1)


def test_label_command_with_a_budget_labels_only_the_selected_pairs(tiny_beir, tmp_path):
    from helpers import ok, user_error

    from teacher.store import LabelStore

    store, run = tmp_path / "l.sqlite", tmp_path / "cands.trec"
    run.write_text("".join(f"{q} Q0 d{d} {d} {10 - d} bm25\n" for q in ("q3", "q4") for d in range(1, 7)))
    args = ("label", tiny_beir, "--store", store, "--teacher", "bm25", "--candidates", run, "--split", "train")
    res = ok(*args, "--budget", "4", "--select", "diversity", "--query-encoder", "tfidf")
    assert "selected 4 new pairs" in res.stdout
    with LabelStore(store) as st:
        first = {(r.query_id, r.doc_id) for r in st.labels()}
    assert first == {("q3", "d1"), ("q3", "d2"), ("q4", "d1"), ("q4", "d2")}  # the top 2 of each query
    res = ok(*args, "--budget", "2", "--select", "random")  # a second round: new pairs only
    with LabelStore(store) as st:
        second = {(r.query_id, r.doc_id) for r in st.labels()}
    assert first < second and len(second) == 6 and "selected 2 new pairs of 8 unlabelled" in res.stdout
    user_error(*args, "--budget", "2", "--select", "uncertainty", match="needs the current student")
    from helpers import save_tiny_ce

    # a PyTorch student folder: the CLI's start-up registered the torch backend that scores the candidates
    res = ok(*args, "--budget", "2", "--select", "uncertainty", "--student", save_tiny_ce(tmp_path))
    with LabelStore(store) as st:
        assert len({(r.query_id, r.doc_id) for r in st.labels()}) == 8 and "selected 2 new pairs of 6 unlabelled" in res.stdout
    user_error(*args, "--budget", "2", "--select", "best", match="choose one of random")
