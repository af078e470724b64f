"""The default pipeline on corpora it was not tuned on: CACM and the TREC DL 2019 passages.

For each corpus, a pipeline config that names nothing but the corpus (and, for CACM, the judged
data to evaluate on) runs through ``reranker pipeline run``: every other setting is the
default a new user gets (extractive synthetic queries for a sample of passages, bm25s
candidates, the offline ensemble teacher, the default distillation recipe, ONNX export, the
int8 student served). No human label is used before the final evaluation.

- ``cacm``: BEIR-layout CACM; the pipeline's own evaluation (bm25s over the whole corpus, the
  served student re-ranking its top 100 for the 52 judged queries, the teacher beside it).
- ``dl19``: the corpus is the passages of the shared BM25 top 100 of TREC DL 2019 (4,297); the
  pipeline does not evaluate (those passages are all it has), and afterwards the served student
  and the pipeline's teacher (its fitted weights; its BM25 member reads the run's full-collection
  scores, not the pool's statistics) re-rank the shared Pyserini BM25 run (nDCG@10 0.5058) for
  the 43 judged queries.

A finished stage is not rerun (the pipeline's manifest); ``--corpora`` picks which.
Writes ``benchmarks/results/pipeline_corpora.{md,json}``.
Usage: ``python benchmarks/pipeline_corpora.py [--work /tmp/pipeline-corpora] [--corpora cacm,dl19]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, RESULTS, SHARED, environment, machine_independent, sh, timing_table, write_markdown


def configs(shared: Path) -> dict[str, str]:
    cacm = shared / "datasets" / "beir" / "cacm.zip"
    dl19 = shared / "datasets" / "trec-dl-2019" / "bm25-top100.json"
    return {
        "cacm": f"name: cacm\nrun_dir: run\ncorpus:\n  spec: {cacm}\nevaluate:\n  data:\n    spec: {cacm}\n",
        # the passages of the BM25 top 100 are the whole corpus: nothing to evaluate inside the pipeline
        "dl19": f"name: dl19\nrun_dir: run\ncorpus:\n  spec: {dl19}\nevaluate:\n  data: null\npromote:\n  enabled: false\n",
    }


def run_pipeline(name: str, text: str, work: Path, t: list[dict]) -> dict:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.yaml").write_text(text)
    sh([EXE, "pipeline", "run", "pipeline.yaml"], t, f"{name}: reranker pipeline run (defaults)", cwd=folder)
    return json.loads((folder / "run" / "manifest.json").read_text())


def stage_table(manifest: dict) -> list[str]:
    rows = ["| stage | seconds | figures |", "|---|---:|---|"]
    for stage, info in manifest["stages"].items():
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (info.get("metrics") or {}).items()
                            if isinstance(v, (int, float, str)))
        rows.append(f"| {stage} | {info.get('seconds', 0):.0f} | {figures} |")
    return rows


def teacher_on_the_pool(folder: Path) -> Path:
    """The pipeline's teacher (``run/teacher.json``: its fitted weights) with every BM25 member reading the candidate
    run's scores: the shared file holds only the top-100 pool, whose own statistics are not MS MARCO's; the run's
    Anserini scores were computed over the whole collection. Written only when it changes (its time stamp dates it)."""
    spec = json.loads((folder / "run" / "teacher.json").read_text())
    for m in spec["params"].get("members", []) if spec["teacher"] == "ensemble" else []:
        if m["name"] == "bm25":
            m["params"] = {**m.get("params", {}), "statistics": "first-stage"}
    if spec["teacher"] == "bm25":
        spec["params"]["statistics"] = "first-stage"
    path = folder / "teacher-first-stage.json"
    text = json.dumps({"teacher": spec["teacher"], "params": spec["params"]}, indent=2) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pipeline-corpora"))
    ap.add_argument("--corpora", default="cacm,dl19")
    args = ap.parse_args()
    shared = args.shared.resolve()
    texts = configs(shared)
    names = [c.strip() for c in args.corpora.split(",") if c.strip()]
    unknown = [n for n in names if n not in texts]
    if unknown:
        sys.exit(f"unknown corpora {unknown}; choose from {list(texts)}")
    out_json = RESULTS / "pipeline_corpora.json"
    results: dict[str, dict] = {}
    for name in names:
        t: list[dict] = []
        manifest = run_pipeline(name, texts[name], args.work, t)
        folder = args.work / name
        distill = manifest["stages"]["distill"].get("metrics") or {}
        entry = {"stages": stage_table(manifest), "distill": distill, "timings": t}
        if name == "dl19":
            dl = shared / "datasets" / "trec-dl-2019"
            model = folder / "run" / "onnx"
            student = folder / "student.trec"
            if not student.is_file() or student.stat().st_mtime < (model / "onnx_manifest.json").stat().st_mtime:
                sh([EXE, "-q", "rerank", dl / "bm25-top100.json", "--model", model, "--run", dl / "bm25-top100.trec", "--top-k", 100,
                    "--out", student], t, "dl19: the served student re-ranks the shared BM25 top 100")
            teacher = folder / "teacher.trec"
            spec = teacher_on_the_pool(folder)
            if not teacher.is_file() or teacher.stat().st_mtime < spec.stat().st_mtime:
                sh([EXE, "-q", "label", dl / "bm25-top100.json", "--candidates", dl / "bm25-top100.trec", "--store", folder / "teacher.sqlite",
                    "--teacher-file", spec, "--run-out", teacher], t,
                   "dl19: the pipeline's teacher (its fitted weights; BM25 from the run's full-collection scores) re-ranks the shared BM25 top 100")
            sh([EXE, "-q", "evaluate", dl / "qrels.txt", dl / "bm25-top100.trec", teacher, student, "-m", "ndcg@10", "-m", "mrr@10",
                "--report", folder / "report"], t, "dl19: evaluate (43 queries)")
            entry["report_md"] = (folder / "report.md").read_text().strip()
            entry["report"] = json.loads((folder / "report.json").read_text())
        else:
            entry["report_md"] = (folder / "run" / "evaluation" / "report.md").read_text().strip()
            evaluation = json.loads((folder / "run" / "evaluation" / "report.json").read_text())
            entry["report"] = evaluation["comparison"]  # the same layout as `reranker evaluate --report`
            entry["pairs_per_second"] = evaluation.get("pairs_per_second")
        results[name] = json.loads(machine_independent(json.dumps(entry), args.work))
    env = environment("torch", "transformers", "onnxruntime")
    # corpora measured by an earlier call (or a concurrent one) stay: read the file again just before writing it
    results = {**(json.loads(out_json.read_text())["corpora"] if out_json.is_file() else {}), **results}
    out_json.write_text(json.dumps({"corpora": results, "env": env}, indent=2) + "\n")
    lines = [
        "# The default pipeline on corpora it was not tuned on", "",
        (f"Made by `python benchmarks/pipeline_corpora.py --corpora {','.join(results)}` (a corpus may come from an earlier call: "
         f"its section lists its commands; last call {time.strftime('%Y-%m-%d')}, "
         f"{env['cores']} cores, torch {env['torch']}). Each corpus runs through `reranker pipeline run` with a config that "
         "names only the corpus (and the judged data to evaluate on): every other setting is the default. No human label is "
         "used before the evaluation. Superscripts: significantly better than that run (paired t-test, p < 0.05)."), "",
    ]
    for name, entry in results.items():
        lines += [f"## {name}", "", entry["report_md"], "", "Pipeline stages:", "", *entry["stages"], "",
                  *timing_table(entry["timings"], args.work), ""]
    write_markdown("pipeline_corpora", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
