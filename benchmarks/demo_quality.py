"""The embedded demo's figures (README's demo row): `reranker demo` from scratch, its evaluation as a results file.

Runs the main job as a new user does (``reranker demo``: the embedded pipeline on the Northwind Analytics corpus,
offline, CPU) in a fresh ``--work`` folder and writes the evaluation its pipeline made (BM25, teacher, student as
served, cascade; nDCG@10, MRR@10, recall@10 on the demo's 40 judged queries, with the paired tests) to
``benchmarks/results/demo_quality.{json,md}``. ``python benchmarks/reproduce.py demo_quality --run`` checks that the
figures come back within 0.005.

Usage: ``python benchmarks/demo_quality.py [--work /tmp/demo-quality]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, environment, publish, sh, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/demo-quality"))
    args = ap.parse_args()
    w = args.work
    shutil.rmtree(w, ignore_errors=True)  # from scratch: no stage of an earlier run is reused
    w.mkdir(parents=True)
    t: list[dict] = []
    sh([EXE, "-q", "demo"], t, "the main job: reranker demo (embedded pipeline, offline)", cwd=w)
    run = w / "runs" / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    evaluation = manifest["stages"]["evaluate"]["metrics"]
    report = json.loads((run / "evaluation" / "report.json").read_text())
    env = environment("torch", "onnxruntime", "transformers")
    seconds = {name: stage.get("seconds") for name, stage in manifest["stages"].items()}
    write_json("demo_quality", {"queries": evaluation["queries"], "served": evaluation["model"], "metrics": evaluation["metrics"],
                                "comparison": report.get("comparison"), "stage_seconds": seconds, "env": env})
    lines = [
        "# The embedded demo: `reranker demo` on the Northwind Analytics corpus", "",
        (f"Made by `python benchmarks/demo_quality.py` on {time.strftime('%Y-%m-%d')} ({env['cores']} cores, torch {env['torch']}): "
         f"`reranker demo` from an empty folder, then its pipeline's evaluation on the demo's {evaluation['queries']} judged "
         f"queries (the student served as `{evaluation['model']}`; the teacher is the offline ensemble; the cascade re-ranks "
         "the student's top with the teacher); the pipeline's own report:"), "",
        (run / "evaluation" / "report.md").read_text().strip(), "",
        "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v is not None) + ".",
    ]
    publish("demo_quality", lines, t, w)


if __name__ == "__main__":
    main()
