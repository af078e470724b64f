"""The README's main job: `reranker demo` on the embedded corpus, offline."""

from __future__ import annotations

import json

import pytest
from helpers import ok

pytestmark = pytest.mark.integration


def test_demo_runs_offline_and_reports_three_retrievers(tmp_path):
    res = ok("retrieval-demo", "--out", tmp_path / "demo", cwd=tmp_path)
    assert "Northwind Analytics demo: 40 queries" in res.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert list(report["scores"]) == ["bm25s", "dense", "hybrid-rrf"]
    for name, scores in report["scores"].items():
        assert scores["ndcg@10"] > 0.8, (name, scores)  # the embedded queries are answerable: relevant documents rank high
        assert (tmp_path / "demo" / f"{name}.trec").is_file()
    # the embedded queries are answerable: every retriever finds most answers in its top 10
    assert min(s["recall@10"] for s in report["scores"].values()) > 0.8
    assert (tmp_path / "demo" / "index" / "bm25s" / "index.json").is_file()
