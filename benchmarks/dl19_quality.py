"""TREC DL 2019 passage: the shared BM25 top 100 re-ranked by the teacher and by the students distilled on SciFact.

The students come from ``benchmarks/distill_scifact.py`` (its work folder, ONNX int8 exports);
they never saw an MS MARCO query, so this is a zero-shot transfer check beside the teacher.
Writes ``benchmarks/results/dl19_quality.{md,json}``.
Usage: ``python benchmarks/dl19_quality.py [--students /tmp/distill-scifact]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, SHARED, environment, publish, sh, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--students", type=Path, default=Path("/tmp/distill-scifact"), help="Work folder of distill_scifact.py.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dl19-quality"))
    args = ap.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    dl = args.shared / "datasets" / "trec-dl-2019"
    data, bm25, qrels = dl / "bm25-top100.json", dl / "bm25-top100.trec", dl / "qrels.txt"
    t: list[dict] = []
    sh([EXE, "-q", "label", data, "--candidates", bm25, "--store", w / "teacher.sqlite", "--teacher", "ensemble",
        "--run-out", w / "teacher.trec"], t, "teacher (ensemble) re-ranks the BM25 top 100")
    runs = [bm25, w / "teacher.trec"]
    for kind, name in (("ce", "cross-encoder"), ("t5", "T5")):
        model = args.students / kind / "onnx"
        if not model.is_dir():
            print(f"no {name} student export at {model}; skipped", file=sys.stderr)
            continue
        sh([EXE, "-q", "rerank", data, "--model", model, "--run", bm25, "--top-k", 100, "--out", w / f"student-{kind}.trec"], t,
           f"{name} student (ONNX int8, distilled on SciFact) re-ranks the BM25 top 100")
        runs.append(w / f"student-{kind}.trec")
    sh([EXE, "-q", "evaluate", qrels, *runs, "-m", "ndcg@10", "-m", "mrr@10", "-m", "map-l2", "--report", w / "report"], t, "evaluate")
    report = json.loads((w / "report.json").read_text())
    env = environment("torch", "onnxruntime")
    write_json("dl19_quality", {"report": report, "timings": t, "env": env})
    md = [
        "# TREC DL 2019 passage: BM25 vs teacher vs students (zero-shot)",
        "",
        (f"Made by `python benchmarks/dl19_quality.py` on {time.strftime('%Y-%m-%d')} ({env['cores']}-core CPU). The shared "
        "BM25 top 100 of the 43 judged queries (published BM25 nDCG@10 0.5058) re-ranked by the offline teacher and by "
        "the students of `distill_scifact.md` (trained on SciFact synthetic queries only; never saw MS MARCO)."),
        "",
        (w / "report.md").read_text().strip(),
    ]
    publish("dl19_quality", md, t, w)


if __name__ == "__main__":
    main()
