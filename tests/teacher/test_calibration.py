"""Temperature scaling: hand-checkable fits, metrics, the store's calibration row and the export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reranker.errors import RerankerError
from reranker.io.groups import read_groups
from reranker.io.jsonl import read_corpus_jsonl, read_queries_jsonl
from teacher.calibration import Calibration, ece, fit_calibration, nll, reliability_plot, report
from teacher.store import LabelStore

pytestmark = pytest.mark.slow


def overconfident(n, seed, scale=4.0, shift=0.0):
    """True log-odds z; labels drawn from sigmoid(z); the teacher reports scale * z + shift (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return scale * z + shift, y


def test_exact_temperature_is_recovered_on_a_large_sample():
    scores, y = overconfident(20000, 0)
    cal = fit_calibration(scores, y)
    assert cal.temperature == pytest.approx(4.0, rel=0.06) and cal.bias == 0.0
    with_bias = fit_calibration(*overconfident(20000, 1, shift=3.0), bias=True)
    assert with_bias.temperature == pytest.approx(4.0, rel=0.06)
    assert with_bias.bias == pytest.approx(-3.0 / 4.0, abs=0.08)  # sigmoid((4z + 3) / 4 - 0.75) = sigmoid(z)


def test_fit_lowers_held_out_nll_and_ece():
    fit_s, fit_y = overconfident(400, 2)
    test_s, test_y = overconfident(400, 3)
    cal = fit_calibration(fit_s, fit_y)
    assert cal.temperature > 1.5
    raw = 1 / (1 + np.exp(-test_s))
    assert nll(cal.apply(test_s), test_y) < nll(raw, test_y) - 0.1
    assert ece(cal.apply(test_s), test_y) < ece(raw, test_y)
    rep = report(test_s, test_y, raw, cal)
    assert rep["after"]["nll"] < rep["before"]["nll"] and sum(b["n"] for b in rep["before"]["bins"]) == 400


def test_metrics_by_hand():
    assert nll([0.5, 0.5], [1, 0]) == pytest.approx(math.log(2))
    assert nll([0.9, 0.2], [1, 0]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    # bins of width 0.5: {0.1, 0.2} with mean y 0.5 -> |0.15 - 0.5|; {0.9} with y 1 -> 0.1
    assert ece([0.1, 0.2, 0.9], [0, 1, 1], bins=2) == pytest.approx((0.35 * 2 + 0.1) / 3)
    assert ece([1.0, 0.0], [1, 0]) == 0.0  # p = 1 falls in the last bin, not out of range
    assert Calibration(2.0, 0.5).apply([2.0])[0] == pytest.approx(1 / (1 + math.exp(-1.5)))


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(RerankerError, match="both relevant and non-relevant"):
        fit_calibration([1.0, 2.0, 3.0], [1, 1, 1])
    with pytest.raises(RerankerError, match="not positively related"):
        fit_calibration([3.0, 2.0, -1.0, -2.0], [0, 0, 1, 1])
    with pytest.raises(RerankerError, match="matching"):
        fit_calibration([1.0, 2.0], [1.0])


def test_reliability_plot(tmp_path):
    s, y = overconfident(300, 4)
    reliability_plot(tmp_path / "r.png", y, 1 / (1 + np.exp(-s)), fit_calibration(s, y).apply(s), title="t")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_store_calibration_changes_exported_labels_and_none_keeps_them(tiny_beir, tmp_path):
    corpus = read_corpus_jsonl(tiny_beir / "corpus.jsonl")
    queries = read_queries_jsonl(tiny_beir / "queries.jsonl")
    rows = [("q1", "d1", 4.0, 0.98), ("q1", "d3", -2.0, 0.12), ("q2", "d4", 0.0, 0.5)]
    with LabelStore(tmp_path / "labels.sqlite") as store:
        store.add_batch("t:1", "p", rows)
        store.add_batch("t:2", "p", rows)
        assert store.calibration("t:1", "p") is None and not store.clear_calibration("t:1", "p")
        store.export_groups(tmp_path / "plain.jsonl", "t:1", "p", queries, corpus)
        store.set_calibration("t:1", "p", temperature=2.0, bias=-0.5, details={"seeds": 3})
        assert store.calibration("t:1", "p") == {"temperature": 2.0, "bias": -0.5, "details": {"seeds": 3}}
        store.export_groups(tmp_path / "cal.jsonl", "t:1", "p", queries, corpus)
        store.export_groups(tmp_path / "other.jsonl", "t:2", "p", queries, corpus)  # another teacher: untouched
        store.export_groups(tmp_path / "off.jsonl", "t:1", "p", queries, corpus, calibrated=False)
        with pytest.raises(RerankerError, match="temperature must be"):
            store.set_calibration("t:1", "p", temperature=0.0)
    labels = lambda name: {(g.query_id, c.doc_id): c.label for g in read_groups(tmp_path / name) for c in g.candidates}
    stored = {(q, d): lab for q, d, _, lab in rows}
    assert labels("plain.jsonl") == stored == labels("other.jsonl") == labels("off.jsonl")
    cal = labels("cal.jsonl")
    for q, d, s, _ in rows:
        assert cal[q, d] == pytest.approx(1 / (1 + math.exp(-(s / 2.0 - 0.5))))
    assert cal["q1", "d1"] < stored["q1", "d1"] and cal["q1", "d3"] > stored["q1", "d3"]
    scores = [c["score"] for line in (tmp_path / "cal.jsonl").read_text().splitlines() for c in json.loads(line)["candidates"]]
    assert sorted(scores) == sorted(s for _, _, s, _ in rows)  # scores (and so ranks) stay as stored
    with LabelStore(tmp_path / "labels.sqlite") as store:  # persists, and can be removed
        assert store.calibration("t:1", "p")["temperature"] == 2.0
        assert store.clear_calibration("t:1", "p") and store.calibration("t:1", "p") is None


def test_calibrate_command_labels_missing_seeds_fits_stores_and_export_applies_it(tiny_beir, tmp_path):
    from helpers import ok, user_error

    store, seeds = tmp_path / "l.sqlite", tmp_path / "seeds.tsv"
    ok("label", tiny_beir, "--store", store, "--teacher", "bm25", "-k", "6", "--export", tmp_path / "before.jsonl")
    lines = [f"q{q}\td{d}\t{int((q, d) in {(1, 1), (2, 4), (3, 2), (4, 3), (5, 6)})}" for q in range(1, 3) for d in range(1, 7)]
    seeds.write_text("\n".join(lines) + "\n")
    res = ok("calibrate", tiny_beir, "--store", store, "--teacher", "bm25", "--seeds", seeds, "--holdout", "0",
             "--bias", "--plot", tmp_path / "r.png", "--report", tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["pairs"] == 12 and rep["after"]["nll"] < rep["before"]["nll"]
    assert "labelling" in res.stdout and f"T={rep['temperature']:.4f}" in res.stdout
    assert (tmp_path / "r.png").is_file()
    ok("label", tiny_beir, "--store", store, "--teacher", "bm25", "-k", "6", "--export", tmp_path / "after.jsonl")
    before = {(g.query_id, c.doc_id): c for g in read_groups(tmp_path / "before.jsonl") for c in g.candidates}
    after = {(g.query_id, c.doc_id): c for g in read_groups(tmp_path / "after.jsonl") for c in g.candidates}
    cal = Calibration(rep["temperature"], rep["bias"])
    for key, c in after.items():
        assert c.label == pytest.approx(float(cal.apply([c.score])[0]))
        if key in before:
            assert c.score == before[key].score
    seeds.write_text("q1\td1\t1\nq1\td1\t0\n")
    user_error("calibrate", tiny_beir, "--store", store, "--teacher", "bm25", "--seeds", seeds, match="seeds.tsv, line 2: pair")
