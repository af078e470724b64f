"""What re-ranking a top 100 costs: the served student against PyTorch, against today's graph and against its teacher.

One invocation, one machine, every configuration in a fresh subprocess with the same threads, on the same pairs:
SciFact test queries (``--queries`` sampled with seed 0), each with its bm25s top 100 (SciFact abstracts: about 200
words each). The student is a distilled hybrid student (``--student``, e.g. ``reranker demo``'s), served at the
default lengths (``--max-length`` 256, ``--query-max-length`` 64). Configurations:

- ``torch whole``: the PyTorch student as trained, fp32, both passes (the separated pass and the joint pass);
- ``torch no-joint``: PyTorch fp32 without the joint pass (what the export keeps when it does not count, #25 item 1);
- ``onnx today int8``: the pair-layout graph with the joint pass, dynamic int8: the served default before #25;
- ``onnx pair int8``: the pair-layout graph without the joint pass;
- ``onnx separated fp32 / int8 cold``: the encoder graph + score graph, no passage cache (every passage encoded);
- ``... warm``: the passages' states read from the on-disk store (``reranker index --states-model``), so a query costs
  one query encoding and the score graph; the store's build time is reported apart;
- ``openvino separated fp32, cold / warm``: the same encoder graph compiled by OpenVINO (when ``openvino`` is installed);
- ``teacher ensemble``: the default teacher (bi-encoder cosine + BM25) labelling the same pairs;
- ``t5 ...``: a T5 student (4 + 2 layers, d_model 256, the real T5 tokenizer, random init: no pretrained T5 weights here,
  so its nDCG@10 means nothing) through the same export (pair layout) and scorer: its own speed row.

Each worker scores the queries one at a time, as a re-ranker is called (100 pairs per call), after a warm-up query
that is not in the sample; pairs/s is over all of them, latency per query (p50 / p95), nDCG@10 with ranx.
Writes ``benchmarks/results/serving_cost.{md,json}``.
Usage: ``python benchmarks/serving_cost.py --student runs/demo/student [--queries 30] [--threads 2] [--work /tmp/serving-cost]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, environment, write_json, write_markdown

TODAY = 34.4  # pairs/s of the served default student before #25 (the measurement, a default pipeline run)
TARGETS = {"warm": 10.0, "cold_vs_torch": 2.5, "vs_teacher": 5.0, "ndcg": 0.005}
CONFIGS = {  # name -> (kind, export, precision, warm)
    "torch whole": ("torch", "student-whole", None, False),
    "torch no-joint": ("torch", "student-nojoint", None, False),
    "onnx today int8": ("onnx", "today", "int8", False),
    "onnx pair int8": ("onnx", "pair", "int8", False),
    "onnx separated fp32 cold": ("onnx", "separated", "fp32", False),
    "onnx separated int8 cold": ("onnx", "separated", "int8", False),
    "onnx separated fp32 warm": ("onnx", "separated", "fp32", True),
    "onnx separated int8 warm": ("onnx", "separated", "int8", True),
    "openvino separated fp32 cold": ("openvino", "separated", "fp32", False),
    "openvino separated fp32 warm": ("openvino", "separated", "fp32", True),
    "teacher ensemble": ("teacher", "", None, False),
    "t5 torch fp32 (untrained: speed only)": ("torch", "t5", None, False),
    "t5 onnx int8 (untrained: speed only)": ("onnx", "t5-onnx", "int8", False),
}
#: the T5 student's size: the teacher ladder's t5-random design (no pretrained T5 weights on this machine)
T5_SIZE = {"d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 2, "num_heads": 4}


def openvino_scorer(folder: Path, threads: int, warm_store: Path | None):
    """The separated ONNX scorer with its encoder graph run by OpenVINO instead of ONNX Runtime (same tokenisation,
    same score graph, same cache)."""
    import openvino as ov

    from reranker.onnx_runtime import load_onnx

    scorer = load_onnx(folder, precision="fp32", providers=["cpu"], intra_op_threads=threads, cache_entries=0,
                       passage_store=warm_store)
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    compiled = core.compile_model(str(folder / scorer.manifest.models["fp32"].file), "CPU")
    output = compiled.output(0)
    scorer._run = lambda inputs: compiled(inputs)[output]  # noqa: SLF001 (the benchmark swaps the runtime only)
    return scorer


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, so the parent's exports do not count), else
    ru_maxrss (which Linux carries over fork and exec from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(config: str, work: Path, threads: int) -> None:
    kind, export, precision, warm = CONFIGS[config]
    data = json.loads((work / "pairs.json").read_text())
    groups = data["groups"]
    store = work / "states" / precision if warm else None
    start = time.perf_counter()
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)
        from student.models import load_student

        student = load_student(work / ("t5" if export == "t5" else "student"))
        if export == "student-nojoint":
            student.drop_joint_pass()
        score = lambda pairs: student.score(pairs)  # noqa: E731
    elif kind == "teacher":
        import torch

        torch.set_num_threads(threads)
        from reranker.io.dataset import load_dataset
        from teacher.backends.ensemble import EnsembleTeacher
        from teacher.base import Pair

        teacher = EnsembleTeacher()
        teacher.prepare(load_dataset(SHARED / "datasets" / "beir" / "scifact.zip").corpus)
        teacher.warm_up()
        ids = {d: i for g in [*groups, data["warmup"]] for i, d in zip(g["doc_ids"], g["documents"])}  # the BM25 half looks passages up by id
        score = lambda pairs: np.array([j.score for j in teacher.score_batch([Pair("q", ids[d], q, d) for q, d in pairs])])  # noqa: E731
    elif kind == "openvino":
        scorer = openvino_scorer(work / export, threads, store)
        score = scorer.score
    else:
        from reranker.onnx_runtime import load_onnx

        scorer = load_onnx(work / export, precision=precision, providers=["cpu"], intra_op_threads=threads, cache_entries=0,
                           passage_store=store)
        score = scorer.score
    load_s = time.perf_counter() - start
    score([(data["warmup"]["query"], d) for d in data["warmup"]["documents"]])
    latencies, scores = [], {}
    for g in groups:
        t0 = time.perf_counter()
        s = score([(g["query"], d) for d in g["documents"]])
        latencies.append(time.perf_counter() - t0)
        scores[g["qid"]] = {doc_id: float(x) for doc_id, x in zip(g["doc_ids"], s)}
    pairs = sum(len(g["documents"]) for g in groups)
    out = {"config": config, "pairs": pairs, "seconds": sum(latencies), "pairs_per_s": pairs / sum(latencies), "load_s": load_s,
           "latency_p50_s": float(np.percentile(latencies, 50)), "latency_p95_s": float(np.percentile(latencies, 95)),
           "peak_rss_mb": peak_rss_mb(), "scores": scores}
    _out(work, config).write_text(json.dumps(out))


def _out(work: Path, config: str) -> Path:
    return work / "out" / f"{config.replace(' ', '_').replace(':', '').replace('(', '').replace(')', '')}.json"


def prepare(args) -> None:
    """The pairs, the student at the serving lengths and its three exports, and the passage stores (cached in --work)."""
    from reranker.io.dataset import load_dataset
    from reranker.retrieval import build_index

    work = args.work
    (work / "out").mkdir(parents=True, exist_ok=True)
    if not (work / "pairs.json").is_file():
        ds = load_dataset(SHARED / "datasets" / "beir" / "scifact.zip")
        qrels = ds.require_qrels()
        queries = ds.require_queries()
        qids = sorted(q for q in queries if q in qrels)
        random.Random(0).shuffle(qids)
        sample, warm = qids[: args.queries], qids[args.queries]
        run = build_index(ds.corpus, "bm25s").search({q: queries[q].text for q in [*sample, warm]}, k=100)

        def group(q):
            hits = run.ranking(q)
            return {"qid": q, "query": queries[q].text, "doc_ids": [h.doc_id for h in hits],
                    "documents": [ds.corpus[h.doc_id].contents for h in hits]}

        w = group(warm)
        bm25 = {q: {h.doc_id: h.score for h in run.ranking(q)} for q in sample}
        (work / "pairs.json").write_text(json.dumps({"groups": [group(q) for q in sample], "warmup": w, "bm25": bm25,
                                                     "qrels": {q: dict(qrels[q]) for q in sample}}))
    if not (work / "student").is_dir():
        from student.models import CrossEncoderStudent

        CrossEncoderStudent.from_pretrained(args.student, max_length=args.max_length,
                                            query_max_length=args.query_max_length).save_pretrained(work / "student")
    from student.export import export_student

    if not (work / "t5").is_dir():
        import torch
        from transformers import AutoTokenizer

        from student.models import T5Student

        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers" / "t5"))
        T5Student.from_config(T5_SIZE, tokenizer, max_length=args.max_length, query_max_length=args.query_max_length).save_pretrained(work / "t5")
    if not (work / "t5-onnx" / "onnx_manifest.json").is_file():
        export_student(work / "t5", work / "t5-onnx", ["fp32", "int8"], threads=args.threads)
    for name, layout, drop in (("today", "pair", -1.0), ("pair", "pair", 0.001), ("separated", "separated", 0.001)):
        if not (work / name / "onnx_manifest.json").is_file():
            t0 = time.perf_counter()
            export_student(work / "student", work / name, ["fp32", "int8"], layout=layout, max_drop_change=drop, threads=args.threads)
            print(f"exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    from reranker.onnx_runtime import build_passage_store, load_onnx

    data = json.loads((work / "pairs.json").read_text())
    texts = [d for g in [*data["groups"], data["warmup"]] for d in g["documents"]]
    for precision in ("fp32", "int8"):
        folder = work / "states" / precision
        if not (folder / "passage_states.json").is_file() or not (work / f"states-{precision}.json").is_file():
            scorer = load_onnx(work / "separated", precision=precision, providers=["cpu"], intra_op_threads=args.threads, cache_entries=0)
            t0 = time.perf_counter()
            added, total = build_passage_store(scorer, texts, folder)
            (work / f"states-{precision}.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "passages": added}))


def ndcg(qrels: dict, scores: dict) -> float:
    from ranx import Qrels, Run, evaluate

    return float(evaluate(Qrels(qrels), Run(scores), "ndcg@10"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", type=Path, required=False)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/serving-cost"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--fresh", action="store_true", help="Measure every configuration again (default: keep those measured in --work).")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.work, args.threads)
    if args.student is None and not (args.work / "student").is_dir():
        ap.error("--student is needed (a distilled hybrid student folder)")
    prepare(args)
    wanted = [c for c in args.configs.split(",") if c]
    try:
        import openvino  # noqa: F401
    except ImportError:
        wanted = [c for c in wanted if not c.startswith("openvino")]
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "x")}
    for config in wanted:
        if _out(args.work, config).is_file() and not args.fresh:
            print(config, "measured before (--fresh measures again)", flush=True)
            continue
        res = subprocess.run([sys.executable, __file__, "--worker", config, "--work", str(args.work), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=False, env=env)
        if res.returncode:
            raise SystemExit(f"{config} failed:\n{res.stderr[-3000:]}")
        print(config, "done", flush=True)
    report(args, wanted)


def report(args, wanted: list[str]) -> None:
    data = json.loads((args.work / "pairs.json").read_text())
    qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in data["qrels"].items()}
    rows = {}
    for config in wanted:
        out = json.loads(_out(args.work, config).read_text())
        out["ndcg@10"] = ndcg(qrels, out.pop("scores"))
        rows[config] = out
    bm25 = ndcg(qrels, data["bm25"])
    builds = {p: json.loads((args.work / f"states-{p}.json").read_text()) for p in ("fp32", "int8")}
    torch_ps, ref = rows["torch whole"]["pairs_per_s"], rows["torch whole"]["ndcg@10"]
    teacher_ps = rows.get("teacher ensemble", {}).get("pairs_per_s")
    from importlib.util import find_spec

    env = environment(*[p for p in ("torch", "onnxruntime", "openvino", "transformers") if find_spec(p) is not None])
    cmd = (f"python benchmarks/serving_cost.py --student {args.student} --queries {args.queries} --threads {args.threads} "
           f"--work {args.work}")
    lines = ["# Serving cost: re-ranking a top 100 with the student, PyTorch, today's graph and the teacher", "",
             f"Made by `{cmd}` on {time.strftime('%Y-%m-%d')}, on this project's {env['cores']}-core CPU machine "
             f"({', '.join(f'{k} {v}' for k, v in env.items() if k != 'cores' and v)}); {args.threads} threads everywhere.", "",
             f"Pairs: {len(data['groups'])} SciFact test queries (seed 0), each with its bm25s top 100 "
             f"({sum(len(g['documents']) for g in data['groups'])} pairs; BM25's nDCG@10 on them {bm25:.4f}). Student: "
             f"`{args.student}` at max_length {args.max_length}, query_max_length {args.query_max_length}. Each row in a "
             "fresh process, one call per query (100 pairs), after a warm-up query outside the sample.", "",
             "| configuration | pairs/s | x PyTorch fp32 | x today's graph | x teacher | query p50 ms | query p95 ms | nDCG@10 | "
             "vs PyTorch | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    today = rows.get("onnx today int8", {}).get("pairs_per_s")
    for config, r in rows.items():
        ps = r["pairs_per_s"]
        lines.append(f"| {config} | {ps:.1f} | {ps / torch_ps:.2f}x | {ps / today:.2f}x | "
                     f"{'–' if not teacher_ps else f'{ps / teacher_ps:.2f}x'} | {1000 * r['latency_p50_s']:.0f} | "
                     f"{1000 * r['latency_p95_s']:.0f} | {r['ndcg@10']:.4f} | {r['ndcg@10'] - ref:+.4f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Passage stores (`build_passage_store`, what `reranker index --states-model` runs), built once for the "
              "sample's passages: " + "; ".join(f"{p}: {b['passages']} passages in {b['seconds']:.1f} s "
                                                f"({b['passages'] / max(b['seconds'], 1e-9):.1f} passages/s)" for p, b in builds.items()) + ".",
              "", "## Targets (issue #25)", ""]
    targets = []
    best_warm = max((c for c in rows if c.endswith("warm")), key=lambda c: rows[c]["pairs_per_s"], default=None)
    best_cold = max((c for c in rows if c.endswith("cold")), key=lambda c: rows[c]["pairs_per_s"], default=None)
    for name, config, value, goal in (
        (f"warm cache >= {TARGETS['warm']:.0f}x today's {TODAY} pairs/s", best_warm,
         rows[best_warm]["pairs_per_s"] / TODAY if best_warm else None, TARGETS["warm"]),
        (f"warm cache >= {TARGETS['warm']:.0f}x today's graph measured here", best_warm,
         rows[best_warm]["pairs_per_s"] / today if best_warm and today else None, TARGETS["warm"]),
        (f"cold >= {TARGETS['cold_vs_torch']}x PyTorch fp32 (whole student)", best_cold,
         rows[best_cold]["pairs_per_s"] / torch_ps if best_cold else None, TARGETS["cold_vs_torch"]),
        (f"cold >= {TARGETS['cold_vs_torch']}x PyTorch fp32 without the joint pass", best_cold,
         rows[best_cold]["pairs_per_s"] / rows["torch no-joint"]["pairs_per_s"] if best_cold and "torch no-joint" in rows else None,
         TARGETS["cold_vs_torch"]),
        (f"warm >= {TARGETS['vs_teacher']:.0f}x the ensemble teacher", best_warm,
         rows[best_warm]["pairs_per_s"] / teacher_ps if best_warm and teacher_ps else None, TARGETS["vs_teacher"]),
        (f"cold >= {TARGETS['vs_teacher']:.0f}x the ensemble teacher", best_cold,
         rows[best_cold]["pairs_per_s"] / teacher_ps if best_cold and teacher_ps else None, TARGETS["vs_teacher"]),
    ):
        if value is None:
            continue
        drop = rows[config]["ndcg@10"] - ref
        ok = value >= goal and abs(drop) <= TARGETS["ndcg"]
        targets.append({"target": name, "config": config, "ratio": value, "ndcg_change": drop, "met": ok})
        lines.append(f"- {name}: **{config}** {value:.2f}x, nDCG@10 {drop:+.4f} vs PyTorch fp32 (within {TARGETS['ndcg']}): "
                     f"{'met' if ok else '**not met**'}")
    write_json("serving_cost", {"rows": rows, "bm25_ndcg@10": bm25, "stores": builds, "targets": targets, "env": env,
                                "command": cmd, "today_pairs_per_s": TODAY})
    write_markdown("serving_cost", lines)


if __name__ == "__main__":
    main()
