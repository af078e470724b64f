"""The main job on the embedded corpus: the README's first command runs this.

It needs no flags and no network: the Northwind Analytics documents that ship with the
package (``reranker/data/demo``) are split into passages, retrieved with BM25 (bm25s), a
dense bi-encoder (the packaged all-MiniLM-L6-v2) and their reciprocal-rank fusion, folded
back to documents (MaxP) and evaluated with significance tests. Later stages of the
project (teacher labels, the distilled student, ONNX) extend this job.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from reranker.evaluation import compare
from reranker.io.dataset import demo_data, load_dataset
from reranker.io.documents import ChunkConfig, document_run
from reranker.io.trec import write_run
from reranker.retrieval import build_index, fuse

log = logging.getLogger(__name__)

METRICS = ["ndcg@10", "mrr@10", "recall@10", "map"]


def run_demo(out: Path, chunking: ChunkConfig | None = None) -> str:
    """Run the demo, write runs and the report under ``out``; return the report as text."""
    start = time.perf_counter()
    root = demo_data()
    ds = load_dataset(root / "docs", queries=root / "queries.jsonl", qrels=root / "qrels.tsv", chunking=chunking or ChunkConfig())
    log.info("demo corpus: %d passages from %s, %d queries", len(ds.corpus), root / "docs", len(ds.queries))
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for backend in ("bm25s", "dense"):
        retriever = build_index(ds.corpus, backend, out / "index" / backend, corpus_name="northwind-demo")
        runs[backend] = retriever.search_queries(ds.queries, k=100)
    runs["hybrid-rrf"] = fuse([runs["bm25s"], runs["dense"]], "rrf", name="hybrid-rrf")
    doc_runs = []
    for name, run in runs.items():
        doc = document_run(run, ds.corpus).top_k(100)
        doc.name = name
        write_run(out / f"{name}.trec", doc)
        doc_runs.append(doc)
    cmp = compare(ds.require_qrels(), doc_runs, METRICS)
    (out / "report.md").write_text(cmp.to_markdown() + "\n")
    (out / "report.json").write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    elapsed = time.perf_counter() - start
    return "\n".join([
        f"Northwind Analytics demo: {len(ds.queries)} queries over {len(ds.corpus)} passages "
        "(document-level scores, best passage per document)",
        "",
        cmp.to_markdown(),
        "",
        f"Done in {elapsed:.0f} s. Runs, indexes and the report are in {out}/.",
        "Next: `reranker retrieve DATASET --out run.trec` and `reranker evaluate QRELS run.trec` on your own data;",
        "the README lists the data-set formats (BEIR, JSONL, TREC, ir_datasets, folders of documents).",
    ])
