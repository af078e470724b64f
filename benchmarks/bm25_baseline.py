"""First-stage baselines on the real data in ../shared: the measuring stick for the re-rankers.

Runs the `reranker` CLI exactly as a user would, times every command, and writes
``benchmarks/results/bm25_baseline.{md,json}``:

- BEIR SciFact (test, 300 queries, whole 5,183-doc corpus): bm25s (its defaults and
  Anserini's k1/b), pyserini (Lucene), the packaged all-MiniLM-L6-v2 bi-encoder, and the
  RRF fusion of bm25s and dense; with paired t-tests between them.
- TREC DL 2019 (43 queries): the shared Pyserini BM25 top-100 run as it is.

Usage: ``python benchmarks/bm25_baseline.py [--shared ../shared] [--work /tmp/bm25-baseline]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, ROOT, SHARED, environment, publish, sh, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bm25-baseline"))
    args = ap.parse_args()
    exe = EXE
    rel = lambda p: os.path.relpath(p, ROOT)
    scifact = rel(args.shared / "datasets" / "beir" / "scifact.zip")
    dl = args.shared / "datasets" / "trec-dl-2019"
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    t: list[dict] = []

    sh([exe, "-q", "index", scifact, "--out", f"{w}/bm25s"], t, "SciFact: index bm25s")
    sh([exe, "-q", "retrieve", scifact, "--index", f"{w}/bm25s", "-k", "1000", "--out", f"{w}/bm25s.trec"], t, "SciFact: retrieve bm25s")
    sh([exe, "-q", "retrieve", scifact, "--backend", "bm25s", "-p", "k1=0.9", "-p", "b=0.4", "-k", "1000",
        "--out", f"{w}/bm25s-k0.9-b0.4.trec"], t, "SciFact: index + retrieve bm25s (k1=0.9, b=0.4)")
    sh([exe, "-q", "index", scifact, "--backend", "pyserini", "--out", f"{w}/lucene"], t, "SciFact: index pyserini (incl. JVM start)")
    sh([exe, "-q", "retrieve", scifact, "--index", f"{w}/lucene", "-k", "1000", "--out", f"{w}/pyserini.trec"], t, "SciFact: retrieve pyserini (incl. JVM start)")
    sh([exe, "-q", "index", scifact, "--backend", "dense", "--out", f"{w}/dense"], t, "SciFact: index dense (encode 5,183 docs, CPU)")
    sh([exe, "-q", "retrieve", scifact, "--index", f"{w}/dense", "-k", "1000", "--out", f"{w}/dense-minilm.trec"], t, "SciFact: retrieve dense")
    sh([exe, "-q", "retrieve", scifact, "--index", f"{w}/bm25s", "--index", f"{w}/dense", "-k", "1000",
        "--out", f"{w}/hybrid-rrf.trec"], t, "SciFact: retrieve hybrid (RRF of bm25s + dense)")
    runs = [f"{w}/{n}.trec" for n in ("bm25s", "bm25s-k0.9-b0.4", "pyserini", "dense-minilm", "hybrid-rrf")]
    sh([exe, "-q", "evaluate", scifact, *runs, "--report", f"{w}/scifact"], t, "SciFact: evaluate")
    sh([exe, "-q", "evaluate", rel(dl / "qrels.txt"), rel(dl / "bm25-top100.trec"), "-m", "ndcg@10", "-m", "mrr@10",
        "-m", "recall@100", "-m", "map", "-m", "map-l2", "--report", f"{w}/dl19"], t, "DL19: evaluate the shared BM25 run")

    scifact_report = json.loads(Path(f"{w}/scifact.json").read_text())
    dl_report = json.loads(Path(f"{w}/dl19.json").read_text())
    env = environment("bm25s", "pyserini", "ranx", "sentence-transformers", "torch")
    write_json("bm25_baseline", {"scifact": scifact_report, "trec_dl_2019": dl_report,
                                                            "timings": t, "environment": env})
    md = [
        "# First-stage baselines",
        "",
        f"Made by `python benchmarks/bm25_baseline.py` on {time.strftime('%Y-%m-%d')}, on this project's {env['cores']}-core CPU machine",
        f"(Python {env['python']}, bm25s {env['bm25s']}, pyserini {env['pyserini']}, ranx {env['ranx']}, "
        f"sentence-transformers {env['sentence-transformers']}, torch {env['torch']}).",
        "",
        "## BEIR SciFact, test split (300 queries, 5,183 documents)",
        "",
        "Published: BM25 (Pyserini flat) nDCG@10 0.679; bm25s about 0.676.",
        "",
        Path(f"{w}/scifact.md").read_text().strip(),
        "",
        "## TREC DL 2019 passage, the shared BM25 top-100 run (43 queries)",
        "",
        "Published: nDCG@10 0.5058. `map-l2` counts grades >= 2 as relevant, as trec_eval's `-l 2` for DL.",
        "Recall@100 is of a top-100 run, so it is the run's recall, not BM25's recall@1000.",
        "",
        Path(f"{w}/dl19.md").read_text().strip(),
    ]
    publish("bm25_baseline", md, t, w)


if __name__ == "__main__":
    main()
