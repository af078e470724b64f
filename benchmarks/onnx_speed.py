"""Speed, quality, size and memory of PyTorch vs ONNX Runtime (fp32, int8) students on SciFact BM25 top 100.

For each student kind (the cross-encoder and the T5 student of ``distill_scifact.py``):

1. ``reranker export`` (optimised fp32 + int8, parity-checked) into the work folder, and again with
   ``--int8-method weight-only``;
2. BM25 (bm25s) top 100 for the SciFact test queries, ``--queries`` of them sampled (seed 0);
3. each configuration re-scores the same pairs in a fresh subprocess (so its peak memory is its
   own): PyTorch fp32 (``student.models``), ONNX fp32, int8 dynamic and int8 weight-only (``reranker.onnx_runtime``),
   and, on the cross-encoder's weights, sentence-transformers' own ``CrossEncoder`` with its
   torch backend and its ONNX backend (which needs optimum, and optimum needs transformers < 4.58: with
   ``--st-python PATH``, or env ``ST_ONNX_PYTHON``, that row exports and scores under that interpreter, a side
   venv made by ``benchmarks/setup_st_onnx_venv.sh``; without it, it is reported as not run);
4. pairs/s (after a warm-up batch), nDCG@10 of the re-ranked top 100 on the sampled queries,
   model size on disk and the worker's peak RSS.

All configurations run one after the other in one invocation, so the ratios hold on one machine.
Writes ``benchmarks/results/onnx_speed.{md,json}``.
Usage: ``python benchmarks/onnx_speed.py [--queries 30] [--ce DIR] [--t5 DIR] [--work /tmp/onnx-speed] [--st-python PY]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, RESULTS, ROOT, environment, sh, timing_table

BATCH = 32
BATCH_PROBE = 64  # pairs also scored one at a time: max |score alone - score in its batch of BATCH|


def st_onnx_export(ce: Path, out: Path) -> None:
    """sentence-transformers' own ONNX export (through optimum) of the checkpoint ``ce``, saved as ``out/onnx/model.onnx``.

    Like the ``st-*`` workers, this path imports only sentence-transformers and its dependencies (no project module),
    so it runs under ``--st-python`` too.
    """
    from sentence_transformers import CrossEncoder

    cfg = json.loads((ce / "student_config.json").read_text())
    CrossEncoder(str(ce), max_length=cfg["max_length"], device="cpu", backend="onnx").save_pretrained(str(out))
    (out / "student_config.json").write_bytes((ce / "student_config.json").read_bytes())


def st_runtime() -> dict:
    """The interpreter and package versions a sentence-transformers worker ran with (it may be ``--st-python``'s)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for p in ("sentence-transformers", "transformers", "optimum", "optimum-onnx", "onnxruntime", "torch"):
        try:
            found[p] = version(p)
        except PackageNotFoundError:
            pass
    return {"python_executable": sys.executable, "python": platform.python_version(), **found}


def worker(config: str, model: str, pairs_file: Path, out: Path, threads: int) -> None:
    """One configuration in this process: load, warm up, score every pair; scores and figures to ``out``."""
    if config == "st-onnx-export":
        return st_onnx_export(Path(model), out)
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    pairs = [(r["query"], r["document"]) for r in rows]
    start = time.perf_counter()
    if config.startswith("st-"):
        from sentence_transformers import CrossEncoder

        cfg = json.loads((Path(model) / "student_config.json").read_text())
        kwargs = {}
        if config == "st-onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            kwargs = {"backend": "onnx", "model_kwargs": {"file_name": "model.onnx", "provider": "CPUExecutionProvider",
                                                          "session_options": options}}
        ce = CrossEncoder(model, max_length=cfg["max_length"], device="cpu", **kwargs)
        score = lambda ps: ce.predict(ps, batch_size=BATCH, show_progress_bar=False)
    elif config.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        from student.models import load_student

        student = load_student(model)
        score = lambda ps: student.score(ps, batch_size=BATCH)
    else:
        from reranker.onnx_runtime import load_onnx

        scorer = load_onnx(model, precision=config.split("-")[1], providers=["cpu"], intra_op_threads=threads)
        score = lambda ps: scorer.score(ps, batch_size=BATCH)
    load_s = time.perf_counter() - start
    score(pairs[:BATCH])  # warm-up: first-call allocations, lazy initialisation
    start = time.perf_counter()
    scores = [float(s) for s in score(pairs)]
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # batch dependence: the first pairs again, one at a time (dynamic int8 quantises activations per batch)
    alone = [float(score([pair])[0]) for pair in pairs[:BATCH_PROBE]]
    batch_diff = max(abs(a - b) for a, b in zip(alone, scores))
    result = {"scores": scores, "seconds": seconds, "load_s": load_s, "peak_rss_mb": peak_mb, "batch_max_abs_diff": batch_diff}
    if config == "st-onnx":
        result["runtime"] = st_runtime()
    out.write_text(json.dumps(result))


def run_worker(config: str, model: Path, pairs_file: Path, work: Path, threads: int, python: str = sys.executable) -> dict:
    out = work / f"{config}.json"
    cmd = [python, __file__, "--worker", config, "--model", str(model), "--pairs-file", str(pairs_file),
           "--out", str(out), "--threads", str(threads)]
    print(f"$ [{config}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(out.read_text())


def size_mb(*paths: Path) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--ce", type=Path, default=Path("/tmp/distill-scifact/ce/model"), help="cross-encoder student folder")
    ap.add_argument("--t5", type=Path, default=Path("/tmp/distill-scifact/t5/model"), help="T5 student folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/onnx-speed"))
    ap.add_argument("--queries", type=int, default=30, help="test queries sampled (each with its BM25 top 100)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--st-python", default=os.environ.get("ST_ONNX_PYTHON") or None,
                    help="interpreter with sentence-transformers + optimum[onnxruntime] (transformers < 4.58) for the "
                         "CrossEncoder ONNX-backend row (default: env ST_ONNX_PYTHON; none: that row is not run)")
    ap.add_argument("--worker"), ap.add_argument("--model"), ap.add_argument("--pairs-file", type=Path), ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.pairs_file, args.out, args.threads)

    from reranker.evaluation import evaluate
    from reranker.io.dataset import load_dataset
    from reranker.io.trec import read_run
    from reranker.onnx_manifest import OnnxManifest
    from reranker.records import Qrels, Run

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    scifact = str(args.shared / "datasets" / "beir" / "scifact.zip")
    t: list[dict] = []
    students = {"cross-encoder": args.ce, "t5": args.t5}
    for kind, folder in students.items():
        sh([EXE, "-q", "export", folder, w / kind, "--precision", "fp32,int8"], t, f"export the {kind} student (fp32 + int8, parity check)")
        sh([EXE, "-q", "export", folder, w / f"{kind}-wo", "--precision", "fp32,int8", "--int8-method", "weight-only"], t,
           f"export the {kind} student (fp32 + weight-only int8, parity check)")
    sh([EXE, "-q", "retrieve", scifact, "-k", 100, "--out", w / "bm25.trec"], t, "BM25 (bm25s) top 100, test queries")

    ds = load_dataset(scifact, split="test")
    qrels, queries, bm25 = ds.require_qrels(), ds.require_queries(), read_run(w / "bm25.trec")
    qids = sorted(q for q in bm25 if q in qrels and q in queries)
    random.Random(0).shuffle(qids)
    qids = sorted(qids[: args.queries])
    rows = [{"qid": q, "docid": h.doc_id, "query": queries[q].text, "document": ds.corpus[h.doc_id].contents}
            for q in qids for h in bm25.ranking(q)[:100]]
    pairs_file = w / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sub_qrels = Qrels({q: dict(qrels[q]) for q in qids}, name="qrels")
    bm25_ndcg = evaluate(sub_qrels, bm25.restrict(qids), ["ndcg@10"])[bm25.name]["ndcg@10"]

    configs = []  # (label, kind, worker config, model folder, files on disk)
    for kind, folder in students.items():
        manifest = OnnxManifest.load(w / kind)
        configs += [
            (f"{kind} · PyTorch fp32", kind, "torch-fp32", folder, [folder / "model.safetensors"]),
            (f"{kind} · ONNX fp32", kind, "onnx-fp32", w / kind, [w / kind / manifest.models["fp32"].file]),
            (f"{kind} · ONNX int8 (dynamic)", kind, "onnx-int8", w / kind, [w / kind / manifest.models["int8"].file]),
            (f"{kind} · ONNX int8 (weight-only)", kind, "onnxwo-int8", w / f"{kind}-wo", [w / f"{kind}-wo" / "model.int8.onnx"]),
        ]
    configs += [
        ("cross-encoder · sentence-transformers CrossEncoder (torch)", "cross-encoder", "st-torch", args.ce, [args.ce / "model.safetensors"]),
        ("cross-encoder · sentence-transformers CrossEncoder (ONNX backend)", "cross-encoder", "st-onnx", w / "st-onnx", [w / "st-onnx" / "onnx" / "model.onnx"]),
    ]
    # sentence-transformers' ONNX backend reads <folder>/onnx/model.onnx with optimum, which wants a `logits` output
    # (our export's is `score`): its own optimum export of the same checkpoint, made under the interpreter that scores it
    st_python = args.st_python or sys.executable
    st_dir = w / "st-onnx"
    shutil.rmtree(st_dir, ignore_errors=True)
    cmd = [st_python, __file__, "--worker", "st-onnx-export", "--model", str(args.ce), "--out", str(st_dir)]
    print(f"$ [st-onnx-export] {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    st_error = None
    if res.returncode == 0:
        t.append({"step": "sentence-transformers' own ONNX export (optimum) of the cross-encoder, under --st-python",
                  "command": f"{args.st_python or 'python'} benchmarks/onnx_speed.py --worker st-onnx-export --model {args.ce} --out {st_dir}",
                  "seconds": round(time.perf_counter() - start, 1)})
    else:
        st_error = res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else f"exit {res.returncode}"

    results = []
    start_all = time.perf_counter()
    st_scores = {}
    for label, kind, config, model, files in configs:
        if config == "st-onnx":
            r = {"error": st_error} if st_error else run_worker(config, model, pairs_file, w, args.threads, python=st_python)
        else:
            r = run_worker(config, model, pairs_file, w, args.threads)
        entry = {"config": label, "kind": kind, "worker": config,
                 "size_mb": size_mb(*files) if files and all(p.exists() for p in files) else None}
        if "error" in r:
            entry["error"] = r["error"]
        else:
            if config.startswith("st-"):
                st_scores[config] = r["scores"]
            if "runtime" in r:
                entry["runtime"] = r["runtime"]
            if config == "st-onnx" and "st-torch" in st_scores:
                entry["max_abs_diff_vs_st_torch"] = max(abs(a - b) for a, b in zip(r["scores"], st_scores["st-torch"]))
            run = Run(name=config)
            for row, s in zip(rows, r["scores"]):
                run.add(row["qid"], row["docid"], s)
            entry.update(pairs_per_s=round(len(rows) / r["seconds"], 1), seconds=round(r["seconds"], 1),
                         ndcg10=round(evaluate(sub_qrels, run, ["ndcg@10"])[config]["ndcg@10"], 4),
                         peak_rss_mb=round(r["peak_rss_mb"]), load_s=round(r["load_s"], 1),
                         batch_max_abs_diff=r.get("batch_max_abs_diff"))
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    t.append({"step": f"score {len(rows)} pairs with each of {len(configs)} configurations", "command": "(workers above)",
              "seconds": round(time.perf_counter() - start_all, 1)})
    write_report(args, results, rows, qids, bm25_ndcg, t, w)


def write_report(args, results: list[dict], rows: list[dict], qids: list[str], bm25_ndcg: float, t: list[dict], w: Path) -> None:
    env = environment("torch", "transformers", "sentence-transformers", "onnxruntime", "onnx")
    load = os.getloadavg()
    by = {(r["kind"], r["worker"]): r for r in results}
    targets = []
    for kind, (method, worker) in itertools.product(("cross-encoder", "t5"), (("dynamic", "onnx-int8"), ("weight-only", "onnxwo-int8"))):
        base, int8 = by.get((kind, "torch-fp32"), {}), by.get((kind, worker), {})
        fp32 = by.get((kind, "onnx-fp32"), {})
        if "pairs_per_s" in base and "pairs_per_s" in int8:
            speed = int8["pairs_per_s"] / base["pairs_per_s"]
            dn = int8["ndcg10"] - base["ndcg10"]
            ratio = int8["size_mb"] / fp32["size_mb"]
            targets.append({"kind": kind, "method": method, "int8_speedup": round(speed, 2), "speed_met": speed >= 2, "ndcg_delta": round(dn, 4),
                            "ndcg_met": abs(dn) <= 0.005, "size_ratio": round(ratio, 3), "size_met": ratio <= 1 / 3,
                            "size_ratio_vs_checkpoint": round(int8["size_mb"] / base["size_mb"], 3),
                            "onnx_fp32_speedup": round(fp32["pairs_per_s"] / base["pairs_per_s"], 2)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/onnx_speed.py --queries {args.queries} --threads {args.threads}"
    if args.st_python:
        command += f" --st-python {args.st_python}"
    (RESULTS / "onnx_speed.json").write_text(json.dumps(
        {"command": command, "queries": len(qids), "pairs": len(rows), "bm25_ndcg10": round(bm25_ndcg, 4), "results": results,
         "targets": targets, "load_average_at_end": [round(x, 2) for x in load], "timings": t, "env": env}, indent=2) + "\n")
    fmt = lambda v, f="{}": "–" if v is None else f.format(v)
    md = [
        "# ONNX Runtime vs PyTorch: re-ranking speed, quality, size and memory on SciFact",
        "",
        (f"Made by `{command}` on {time.strftime('%Y-%m-%d')}, on this project's {env['cores']}-core CPU machine "
         f"(torch {env['torch']}, onnxruntime {env['onnxruntime']}, transformers {env['transformers']}, "
         f"sentence-transformers {env['sentence-transformers']}); {args.threads} threads for every configuration, batch {BATCH}."),
        "",
        (f"Pairs: BM25 (bm25s) top 100 for {len(qids)} SciFact test queries sampled with seed 0 ({len(rows)} pairs), the same "
         f"pairs for every row. BM25's own nDCG@10 on these queries: {bm25_ndcg:.4f}. Each row ran in a fresh process; "
         "pairs/s excludes loading and one warm-up batch; peak RSS is the whole worker process (Python, libraries, model). "
         f"The last column: the first {BATCH_PROBE} pairs scored again one at a time, the largest |difference| from their score in "
         f"a batch of {BATCH} (a graph whose scores depend on their batch mates; the export states its bound in the manifest)."),
        "",
        "| configuration | pairs/s | nDCG@10 | size on disk (MB) | peak RSS (MB) | load s | max score change, alone vs batched |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            reason = "needs Optimum (see below)" if "Optimum" in r["error"] else r["error"]
            md.append(f"| {r['config']} | not run: {reason} | | {fmt(r['size_mb'])} | | | |")
        else:
            md.append(f"| {r['config']} | {r['pairs_per_s']} | {r['ndcg10']:.4f} | {fmt(r['size_mb'])} | {r['peak_rss_mb']} | {r['load_s']} "
                      f"| {fmt(r.get('batch_max_abs_diff'), '{:.2e}')} |")
    md += ["", "## Targets (ONNX int8 against PyTorch fp32)", "",
           ("| student | int8 method | int8 speed-up (target >= 2x) | nDCG@10 change (target within 0.005) | int8 size / ONNX fp32 size (target <= 1/3) "
           "| int8 size / PyTorch checkpoint | ONNX fp32 speed-up |"),
           "|---|---|---:|---:|---:|---:|---:|"]
    ok = lambda b: "met" if b else "**not met**"
    for g in targets:
        md.append(f"| {g['kind']} | {g['method']} | {g['int8_speedup']}x ({ok(g['speed_met'])}) | {g['ndcg_delta']:+.4f} ({ok(g['ndcg_met'])}) | "
                  f"{g['size_ratio']:.3f} ({ok(g['size_met'])}) | {g['size_ratio_vs_checkpoint']:.3f} | {g['onnx_fp32_speedup']}x |")
    st = by.get(("cross-encoder", "st-onnx"), {})
    if "error" in st:
        md += ["", ("sentence-transformers' ONNX backend needs `optimum[onnxruntime]` (optimum-onnx), whose current release "
               f"requires transformers < 4.58; this environment has transformers {env['transformers']}, so it was not installed "
               "and that row could not run; `--st-python` runs it under a side venv "
               "(`bash benchmarks/setup_st_onnx_venv.sh`).")]
    elif "runtime" in st:
        rt = st["runtime"]
        versions = ", ".join(f"{p} {rt[p]}" for p in ("sentence-transformers", "transformers", "optimum", "optimum-onnx",
                                                      "onnxruntime", "torch") if p in rt)
        diff = st.get("max_abs_diff_vs_st_torch")
        md += ["", (f"The sentence-transformers ONNX-backend row ran under `{rt['python_executable']}` (Python {rt['python']}, "
               f"{versions}), a side venv from `benchmarks/setup_st_onnx_venv.sh`: optimum needs transformers < 4.58. Its graph "
               "is sentence-transformers' own optimum export (fp32, not fused) of the cross-encoder checkpoint, made before "
               "the timed run (not in its load s); its size is that file's. Like the torch-backend row, its scores are "
               "sigmoid(logit)" + (f"; largest |difference| from the torch-backend row's scores: {diff:.1e}." if diff is not None else "."))]
    md += ["", ("T5's ONNX fp32 file is larger than its checkpoint: the checkpoint stores the tied input embedding and "
           "output projection once, the graph holds both.")]
    shared = (" The CPU was shared with another job during this run (load average above the core count): absolute pairs/s "
              "are below an idle machine's and the ratios carry noise." if load[1] > (os.cpu_count() or 1) else "")
    md += ["", f"Load average at the end of the run: {', '.join(f'{x:.2f}' for x in load)} (1, 5, 15 min).{shared}", "",
           "## Commands and wall time", "", *timing_table(t, w)]
    (RESULTS / "onnx_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
