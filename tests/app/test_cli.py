"""The `reranker` console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json

import pytest
from helpers import ok, user_error

from reranker.evaluation import evaluate
from reranker.io.trec import read_qrels, read_run

pytestmark = pytest.mark.integration


def test_index_retrieve_evaluate_round_trip(tiny_beir, tmp_path):
    ok("index", tiny_beir, "--out", tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["backend"] == "bm25s"
    ok("retrieve", tiny_beir, "--index", tmp_path / "idx", "--out", tmp_path / "run.trec", "-k", "3")
    run = read_run(tmp_path / "run.trec")
    assert set(run) == {"q1", "q2"}  # the test split's judged queries
    assert run.ranking("q1")[0].doc_id == "d1" and all(len(run[q]) <= 3 for q in run)
    res = ok("evaluate", tiny_beir, tmp_path / "run.trec", "--json")
    scores = json.loads(res.stdout)
    expected = evaluate(read_qrels(tiny_beir / "qrels" / "test.tsv"), run)
    assert scores["run"] == pytest.approx(expected["run"])
    assert set(scores["run"]) == {"ndcg@10", "mrr@10", "recall@100", "map"}


def test_train_split_fusion_and_report(tiny_beir, tmp_path):
    ok("index", tiny_beir, "--out", tmp_path / "a", "-p", "k1=0.9", "-p", "b=0.4")
    ok("retrieve", tiny_beir, "--split", "train", "--index", tmp_path / "a", "--backend", "bm25s", "--out", tmp_path / "fused.trec")
    fused = read_run(tmp_path / "fused.trec")
    assert set(fused) == {"q3", "q4"}
    top = fused.ranking("q3")[0]
    assert top.doc_id == "d2" and top.score == pytest.approx(2 / 61)  # first in both runs: 2 x 1/(60+1)
    ok("retrieve", tiny_beir, "--split", "train", "--out", tmp_path / "bm25.trec")
    res = ok(
        "evaluate", tiny_beir / "qrels" / "train.tsv", tmp_path / "fused.trec", tmp_path / "bm25.trec",
        "-m", "ndcg@10", "-m", "mrr@10", "--report", tmp_path / "report",
    )
    assert "| a | fused |" in res.stdout and "| b | bm25 |" in res.stdout
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["metrics"] == ["ndcg@10", "mrr@10"] and set(data["p_values"]) == {"fused", "bm25"}
    assert (tmp_path / "report.md").read_text().startswith("| | run |")


def test_folder_of_documents_per_document_run(tmp_path):
    docs = tmp_path / "docs"
    (docs / "hr").mkdir(parents=True)
    (docs / "hr" / "leave.md").write_text("# Parental leave\n\n" + "Parents get sixteen weeks of paid leave. " * 30)
    (docs / "it.txt").write_text("VPN setup\nInstall the client and sign in with single sign-on.")
    (tmp_path / "q.tsv").write_text("1\tpaid parental leave weeks\n2\tvpn client\n")
    ok("retrieve", docs, "--queries", tmp_path / "q.tsv", "--passage-words", "40", "--passage-overlap", "10",
       "--per-document", "--out", tmp_path / "docs.trec")
    run = read_run(tmp_path / "docs.trec")
    assert run.ranking("1")[0].doc_id == "hr/leave.md" and run.ranking("2")[0].doc_id == "it.txt"
    assert all("#" not in d for q in run for d in run[q])
    ok("retrieve", docs, "--queries", tmp_path / "q.tsv", "--passage-words", "40", "--passage-overlap", "10", "--out", tmp_path / "p.trec")
    passages = read_run(tmp_path / "p.trec")
    assert len(passages["1"]) > 1 and all("#" in d for d in passages["1"])


def test_user_errors_are_one_line_without_traceback(tiny_beir, tmp_path):
    user_error("retrieve", tmp_path / "missing.zip", "--out", tmp_path / "r.trec", match="no such file or folder")
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"}\n{"_id": "3", "text": \n')
    user_error("index", bad, "--out", tmp_path / "i", match="corpus.jsonl, line 3: not valid JSON")
    user_error("index", "no-such-dataset-xyz", "--out", tmp_path / "i", match="nor a known ir_datasets id")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    user_error("index", empty, "--out", tmp_path / "i", match="corpus is empty")
    (tmp_path / "other.trec").write_text("zz Q0 d1 1 1.0 x\n")
    user_error("evaluate", tiny_beir, tmp_path / "other.trec", match="no query in common")
    user_error("evaluate", tiny_beir, tmp_path / "nothing.trec", match="no such file")
    user_error("retrieve", tiny_beir, "--out", tmp_path / "r.trec", "--backend", "bm42", match="unknown retrieval backend")
    user_error("index", tiny_beir, "--out", tmp_path / "i", "-p", "k1", match="expected KEY=VALUE")
    user_error("retrieve", tiny_beir, "--split", "dev", "--out", tmp_path / "r.trec", match="splits here: test, train")
    user_error("retrieve", tiny_beir, "--out", tmp_path / "r.trec", "--passage-words", "5", "--passage-overlap", "5", match="overlap")
    user_error("retrieve", tiny_beir, "--out", tmp_path / "r.trec", "--index", tmp_path, match="not an index folder")


def test_backends_lists_the_registry():
    out = ok("backends").stdout
    for name in ("bm25s", "pyserini", "dense"):
        assert name in out
