"""Fitting an ensemble teacher's member weights on synthetic queries (teacher/fusion.py)."""

from __future__ import annotations

import numpy as np
import pytest

from reranker.errors import RerankerError
from reranker.io.dataset import load_dataset
from reranker.records import Corpus, Document, Query
from reranker.retrieval import build_index
from teacher.backends.normalize import zscores
from teacher.base import Pair, make_teacher
from teacher.fusion import better, cross_fitted_ranks, fit_ensemble, fit_weights, member_features, reciprocal_ranks, without_query
from teacher.labeling import query_groups
from teacher.mining import mine_candidates

pytestmark = pytest.mark.slow


def synthetic_groups(signal: list[float], n_groups: int = 300, size: int = 8, seed: int = 0):
    """Groups whose positive (row 0) is raised by ``signal[m]`` standard deviations on member ``m``."""
    rng = np.random.default_rng(seed)
    features = []
    for _ in range(n_groups):
        f = rng.normal(size=(size, len(signal)))
        f[0] += signal
        features.append(f)
    return features, [0] * n_groups


def test_the_fit_weighs_the_member_that_finds_the_positive():
    features, pos = synthetic_groups([2.0, 0.0])
    w = fit_weights(features, pos)
    assert w[0] > 1.0 and w[1] < 0.1 * w[0]
    features, pos = synthetic_groups([1.0, 2.0])
    w = fit_weights(features, pos)
    assert 1.5 < w[1] / w[0] < 3.0  # both count, the stronger more (the optimum is in proportion to the shifts)
    features, pos = synthetic_groups([1.5, -1.0])
    assert fit_weights(features, pos)[1] == 0.0  # a member that ranks the positive low is weighed 0, not negatively
    with pytest.raises(RerankerError, match="at least one candidate group"):
        fit_weights([], [])


def test_the_fit_replaces_the_prior_only_when_held_out_groups_say_so():
    equal = np.ones(2)
    features, pos = synthetic_groups([1.5, 0.0], n_groups=200)  # the second member is noise: equal weights dilute the first
    gain = cross_fitted_ranks(features, pos)
    assert gain.mean() > reciprocal_ranks(features, pos, equal).mean() and better(gain, reciprocal_ranks(features, pos, equal)) < 0.01
    features, pos = synthetic_groups([1.0, 1.0], n_groups=200, seed=1)  # equally good members: the prior is right
    assert better(cross_fitted_ranks(features, pos), reciprocal_ranks(features, pos, equal)) > 0.05
    assert better(np.ones(5), np.ones(5)) == 1.0


def test_the_query_is_taken_out_of_its_source_passage():
    text = "Solar panels work. The Cell converts\nlight into power. Batteries store it."
    assert without_query(text, "the cell converts light into POWER.") == "Solar panels work. Batteries store it."
    assert without_query(text, "wind turbines") is None
    assert without_query(text, "   ") is None


@pytest.fixture(scope="module")
def scifact_groups(shared):
    """Extractive queries (a sentence of the passage) for 60 SciFact passages, with bm25s candidates."""
    ds = load_dataset(shared / "datasets" / "beir" / "scifact.zip")
    docs = sorted(ds.corpus.ids())[:60]
    queries, positives = {}, {}
    for i, doc_id in enumerate(docs):
        sentence = max(ds.corpus[doc_id].text.split(". "), key=len)
        queries[f"s{i}"], positives[f"s{i}"] = Query(f"s{i}", sentence), doc_id
    cands = mine_candidates(queries, [build_index(ds.corpus, "bm25s")], k=8, positives=positives)
    return ds.corpus, list(query_groups(queries, ds.corpus, cands)), positives


def test_fit_ensemble_on_real_passages(scifact_groups):
    corpus, groups, positives = scifact_groups
    ens = make_teacher("ensemble")
    ens.prepare(corpus)
    kept, fit = fit_ensemble(ens, groups, positives)
    assert fit.groups == len(groups) == 60 and fit.masked == 60  # every extractive query is in its passage
    assert fit.members == ["bm25", "bi-encoder"] and sum(fit.fitted) == pytest.approx(2.0, abs=1e-3)
    assert all(w >= 0 for w in fit.fitted) and fit.fitted != fit.configured
    assert fit.adopted == (fit.p_value < 0.05) and fit.weights == (fit.fitted if fit.adopted else fit.configured)
    assert (kept is ens) != fit.adopted
    # an adopted fit (a lax gate here) re-weights the same loaded members (models, caches) under a new fingerprint
    fitted, forced = fit_ensemble(ens, groups, positives, max_p=1.01)
    assert forced.adopted and forced.weights == forced.fitted == fit.fitted
    assert fitted.fingerprint != ens.fingerprint and fitted.params["members"][1]["weight"] == fit.fitted[1]
    assert fitted.members[0][0] is ens.members[0][0]
    # with the query left in, BM25 finds every source passage: the fit's figures are of the passages without it
    plain = [[Pair(p.query_id, p.doc_id, p.query, p.document) for p in g] for g in groups]
    pos_rows = [[p.doc_id for p in g].index(positives[g[0].query_id]) for g in plain]
    unmasked_bm25 = np.mean([1.0 / (1 + int(np.sum(f[:, 0] > f[r, 0]))) for f, r in zip(member_features(ens, plain), pos_rows)])
    assert unmasked_bm25 > 0.95 > fit.mrr_members[0]
    assert 0 < fit.mrr_fitted <= 1 and 0 < fit.mrr_configured <= 1
    # the re-weighted teacher labels as the weighted sum of its members' z-scores
    group = groups[0]
    fused = np.zeros(len(group))
    for (member, _), w in zip(ens.members, forced.weights):
        fused += w * np.array(zscores(group, [j.score for j in member.score_batch(group)]))
    assert [j.score for j in fitted.score_batch(group)] == pytest.approx(fused.tolist(), abs=1e-6)


def test_fit_ensemble_needs_groups_with_their_positive():
    corpus = Corpus([Document("a", "solar panels"), Document("b", "wind turbines")])
    ens = make_teacher("ensemble")
    ens.prepare(corpus)
    groups = [[Pair("q", "a", "solar", "solar panels"), Pair("q", "b", "solar", "wind turbines")]]
    with pytest.raises(RerankerError, match="no candidate group holds its query's source passage"):
        fit_ensemble(ens, groups, {"q": "c"})
    with pytest.raises(RerankerError, match="3 weights for an ensemble of 2"):
        ens.reweighted([1.0, 1.0, 1.0])


def test_ties_take_the_middle_place():
    features = [np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])]
    assert reciprocal_ranks(features, [0], np.array([1.0, 0.0])) == pytest.approx([1 / 1.5])
    assert reciprocal_ranks(features, [0], np.zeros(2)) == pytest.approx([1 / 2])  # no weight ranks no positive first
