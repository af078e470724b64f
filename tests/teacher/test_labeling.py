"""Candidate mining, the labelling loop (retries, resume) and `reranker label` killed mid-run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, kill_mid_labelling

from reranker.errors import RerankerError
from reranker.io.groups import read_groups
from reranker.records import Corpus, Document, Query, Run
from reranker.retrieval import build_index
from teacher.base import Judgement, Teacher, TeacherError, make_teacher
from teacher.labeling import label_pairs
from teacher.mining import mine_candidates
from teacher.store import LabelStore

pytestmark = pytest.mark.slow

DOCS = {f"d{i}": f"document {i} about topic {i % 3} and energy {'solar' if i % 2 else 'wind'}" for i in range(12)}
CORPUS = Corpus(Document(k, v) for k, v in DOCS.items())
QUERIES = {f"q{i}": Query(f"q{i}", f"topic {i} solar energy") for i in range(3)}
EXE = Path(sys.executable).with_name("reranker")
DEMO = REPO / "reranker" / "data" / "demo"


def test_mining_keeps_the_positive_and_samples_negatives():
    bm25 = build_index(CORPUS, "bm25s")
    full = mine_candidates(QUERIES, [bm25], k=5)
    assert all(len(full[q]) == 5 for q in QUERIES)
    # a positive the first stage did not return is added, below every candidate
    missed = next(d for d in DOCS if d not in full["q0"])
    with_pos = mine_candidates(QUERIES, [bm25], k=5, positives={"q0": missed})
    assert missed in with_pos["q0"] and len(with_pos["q0"]) == 6
    assert with_pos.ranking("q0")[-1].doc_id == missed
    sampled = mine_candidates(QUERIES, [bm25], k=5, positives={"q0": missed}, n_negatives=2, seed=3)
    assert len(sampled["q0"]) == 3 and missed in sampled["q0"]
    assert set(sampled["q0"]) - {missed} <= set(full["q0"])
    assert sampled.to_dict() == mine_candidates(QUERIES, [bm25], k=5, positives={"q0": missed}, n_negatives=2, seed=3).to_dict()
    with pytest.raises(RerankerError, match="at least one retriever"):
        mine_candidates(QUERIES, [], k=5)


def _candidates() -> Run:
    return mine_candidates(QUERIES, [build_index(CORPUS, "bm25s")], k=4)


def test_label_pairs_writes_every_pair_and_resumes(tmp_path):
    teacher = make_teacher("bm25")
    with LabelStore(tmp_path / "l.sqlite") as store:
        first = label_pairs(teacher, QUERIES, CORPUS, _candidates(), store, batch_pairs=4, progress=False)
        assert first.labelled == 12 and first.skipped == 0
        again = label_pairs(teacher, QUERIES, CORPUS, _candidates(), store, batch_pairs=4, progress=False)
        assert again.labelled == 0 and again.skipped == 12
        assert store.count(teacher.fingerprint, "-") == 12
        assert teacher.fingerprint in store.teachers()


class FlakyTeacher(Teacher):
    """Fails its first ``failures`` calls, then scores by doc id (tests the runner's retries)."""

    name = "flaky"

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.calls = failures, 0

    def score_batch(self, pairs):
        self.calls += 1
        if self.calls <= self.failures:
            raise TeacherError("endpoint returned 503")
        return [Judgement(float(int(p.doc_id[1:])), 0.5) for p in pairs]


def test_a_failing_batch_is_retried_then_reported(tmp_path):
    with LabelStore(tmp_path / "l.sqlite") as store:
        ok = FlakyTeacher(failures=2)
        report = label_pairs(ok, QUERIES, CORPUS, _candidates(), store, batch_pairs=100, retries=2, backoff=0.01, progress=False)
        assert report.labelled == 12 and ok.calls == 3
        bad = FlakyTeacher(failures=10)
        bad.params = {"other": True}  # another fingerprint: nothing is done yet for it
        with pytest.raises(TeacherError, match=r"failed on a batch of 12 pairs \(queries q0, q1, q2\) after 3 attempts: endpoint returned 503"):
            label_pairs(bad, QUERIES, CORPUS, _candidates(), store, batch_pairs=100, retries=2, backoff=0.01, progress=False)
        assert store.count(bad.fingerprint, "-") == 0


def test_candidates_naming_unknown_ids_are_errors(tmp_path):
    with LabelStore(tmp_path / "l.sqlite") as store:
        with pytest.raises(RerankerError, match="document 'zz'"):
            label_pairs(make_teacher("bm25"), QUERIES, CORPUS, Run({"q0": {"zz": 1.0}}), store, progress=False)
        with pytest.raises(RerankerError, match="query 'q9'"):
            label_pairs(make_teacher("bm25"), QUERIES, CORPUS, Run({"q9": {"d1": 1.0}}), store, progress=False)


def _label_cmd(store: Path, queries: Path, *extra) -> list[str]:
    return [
        str(EXE), "-q", "label", str(DEMO / "docs"), "--queries", str(queries), "--store", str(store),
        "--teacher", "ensemble", "-k", "10", "--batch-pairs", "10", *map(str, extra),
    ]


def _rows(path: Path) -> dict:
    with sqlite3.connect(path) as con:
        return {(q, d): (s, lab) for q, d, s, lab in con.execute("SELECT query_id, doc_id, score, label FROM labels")}


def test_label_cli_killed_mid_run_resumes_to_the_same_labels(tmp_path):
    """kill -9 in the middle of `reranker label`, rerun: the same labels as an uninterrupted run."""
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join((DEMO / "queries.jsonl").read_text().splitlines(keepends=True)[:24]))
    store = tmp_path / "killed.sqlite"
    kill_mid_labelling(_label_cmd(store, queries), store)
    killed = _rows(store)
    resumed = subprocess.run(_label_cmd(store, queries, "--export", tmp_path / "groups.jsonl"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(killed)} already in" in resumed.stdout
    fresh = tmp_path / "fresh.sqlite"
    full = subprocess.run(_label_cmd(fresh, queries), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    a, b = _rows(store), _rows(fresh)
    assert 30 <= len(killed) < len(b)
    # the kill left whole query groups only
    per_query = lambda rows: {q: sum(1 for k in rows if k[0] == q) for q, _ in rows}
    assert all(n == per_query(b)[q] for q, n in per_query(killed).items())
    assert set(a) == set(b) and len({q for q, _ in b}) == 24
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-5)
    groups = read_groups(tmp_path / "groups.jsonl")
    assert len(groups) == 24 and sum(len(g.candidates) for g in groups) == len(b)
    assert all(g.candidates[0].score >= g.candidates[-1].score for g in groups)
