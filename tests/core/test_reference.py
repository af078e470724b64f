"""Published BM25 figures reproduced from the real data in ../shared (runs in CI; skipped without ../shared).

- SciFact test, BM25 over the whole corpus: nDCG@10 0.679 (Pyserini flat index); bm25s >= 0.670.
- TREC DL 2019, the shared BM25 top-100 run as it is: nDCG@10 0.5058.
"""

from __future__ import annotations

import json

import pytest
from helpers import ok

pytestmark = pytest.mark.slow


def _ndcg10(qrels, run) -> float:
    scores = json.loads(ok("evaluate", qrels, run, "--json", "-m", "ndcg@10").stdout)
    (only,) = scores.values()
    return only["ndcg@10"]


def test_scifact_bm25s_through_the_cli(scifact_zip, tmp_path):
    ok("index", scifact_zip, "--out", tmp_path / "idx")
    ok("retrieve", scifact_zip, "--index", tmp_path / "idx", "--out", tmp_path / "bm25s.trec", "-k", "1000")
    assert _ndcg10(scifact_zip, tmp_path / "bm25s.trec") >= 0.670


def test_scifact_pyserini_matches_the_published_figure(scifact_zip, tmp_path):
    ok("retrieve", scifact_zip, "--backend", "pyserini", "--out", tmp_path / "lucene.trec", "-k", "1000")
    assert _ndcg10(scifact_zip, tmp_path / "lucene.trec") == pytest.approx(0.679, abs=0.002)


def test_trec_dl_2019_bm25_run(trec_dl, tmp_path):
    assert round(_ndcg10(trec_dl / "qrels.txt", trec_dl / "bm25-top100.trec"), 4) == 0.5058
    # the candidates JSON carries the same run: written back out, it evaluates the same
    from reranker.io.dataset import load_dataset
    from reranker.io.trec import write_run

    ds = load_dataset(trec_dl / "bm25-top100.json")
    write_run(tmp_path / "from-json.trec", ds.run)
    assert round(_ndcg10(trec_dl / "qrels.txt", tmp_path / "from-json.trec"), 4) == 0.5058
