"""Speed, quality, size and memory of PyTorch vs ONNX Runtime (fp32, int8) students on SciFact BM25 top 100.

Three students: ``--ce`` (the distilled cross-encoder, the hybrid-head recipe of ``student_curve.py``), ``--t5`` (the
T5 student; no pretrained T5 weights here, so it is judged on fidelity to its fp32 graph) and ``--plain-ce`` (a
cross-encoder with a plain classifier head, which sentence-transformers' ``CrossEncoder`` can load: the comparison with
its ONNX backend on the same weights; default: ``--ce`` when that is a plain one).

1. ``reranker export`` of each student, once per int8 method: dynamic (``--precision fp32,int8``), weight-only,
   mixed (``--int8-method mixed --max-ndcg-drop 0``: the sensitivity ladder run to its strictest, so the row shows
   what keeping the most sensitive nodes in fp32 buys), and ``--precision auto`` (its choice is reported);
2. BM25 (bm25s) top 100 for the SciFact test queries, ``--queries`` of them sampled (seed 0);
3. each configuration re-scores the same pairs in a fresh subprocess (so its peak memory is its
   own): PyTorch fp32 (``student.models``), ONNX fp32 and each int8 graph (``reranker.onnx_runtime``),
   and, on the plain cross-encoder's weights, sentence-transformers' own ``CrossEncoder`` with its
   torch backend and its ONNX backend (which needs optimum, and optimum needs transformers < 4.58: with
   ``--st-python PATH``, or env ``ST_ONNX_PYTHON``, that row exports and scores under that interpreter, a side
   venv made by ``benchmarks/setup_st_onnx_venv.sh``; without it, it is reported as not run);
4. pairs/s (after a warm-up batch), nDCG@10 of the re-ranked top 100 on the sampled queries, top-10 agreement and
   mean |score change| against the student's ONNX fp32 graph, model size on disk, the worker's peak RSS and the
   batch dependence (the first pairs scored alone vs in their batch).

All configurations run one after the other in one invocation, so the ratios hold on one machine.
Writes ``benchmarks/results/onnx_speed.{md,json}``.
Usage: ``python benchmarks/onnx_speed.py [--queries 30] [--ce DIR] [--t5 DIR] [--plain-ce DIR] [--work /tmp/onnx-speed] [--st-python PY]``
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, SHARED, environment, publish, sh, write_json

BATCH = 32
BATCH_PROBE = 64  # pairs also scored one at a time: max |score alone - score in its batch of BATCH|
SPEEDUP_TARGET = 2.5  # int8 pairs/s over PyTorch fp32 (issue #15)
INT8_ROWS = (("dynamic", "onnx-int8"), ("weight-only", "onnxwe-int8"), ("mixed", "onnxmi-int8"))


def parity_pairs(scifact: str, out: Path, queries: int = 8, k: int = 16) -> Path:
    """Unjudged pairs of SciFact *train* queries with their bm25s top ``k``: the exports' parity and ``auto`` sample,
    so that no test judgement chooses a precision (``reranker export --parity-data``)."""
    if out.is_file():
        return out
    from reranker.io.dataset import load_dataset
    from reranker.retrieval import build_index

    ds = load_dataset(scifact, split="train")
    texts = ds.require_queries()
    qids = sorted(texts)
    random.Random(0).shuffle(qids)
    run = build_index(ds.corpus, "bm25s").search({q: texts[q].text for q in qids[:queries]}, k=k)
    rows = [{"qid": q, "query": texts[q].text, "document": ds.corpus[h.doc_id].contents} for q in sorted(run) for h in run.ranking(q)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


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


def run_worker(config: str, model: Path, pairs_file: Path, work: Path, threads: int, python: str = sys.executable,
               tag: str | None = None, resume: bool = False) -> dict:
    out = work / f"{tag or config}.json"
    if resume and out.is_file():
        print(f"$ [{config}] {out} from an earlier run (--resume)", file=sys.stderr, flush=True)
        return json.loads(out.read_text())
    cmd = [python, __file__, "--worker", config, "--model", str(model), "--pairs-file", str(pairs_file),
           "--out", str(out), "--threads", str(threads)]
    print(f"$ [{config}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(out.read_text())


def slug(kind: str) -> str:
    return kind.replace(" ", "-")


def size_mb(*paths: Path) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--ce", type=Path, default=Path("/tmp/sf3/recipe-s0/model"), help="distilled cross-encoder student folder")
    ap.add_argument("--t5", type=Path, default=Path("/tmp/onnx-speed-t5/model"), help="T5 student folder")
    ap.add_argument("--plain-ce", type=Path, default=None,
                    help="cross-encoder with a plain classifier head for the sentence-transformers rows (default: --ce if plain)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/onnx-speed"))
    ap.add_argument("--queries", type=int, default=30, help="test queries sampled (each with its BM25 top 100)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--st-python", default=os.environ.get("ST_ONNX_PYTHON") or None,
                    help="interpreter with sentence-transformers + optimum[onnxruntime] (transformers < 4.58) for the "
                         "CrossEncoder ONNX-backend row (default: env ST_ONNX_PYTHON; none: that row is not run)")
    ap.add_argument("--resume", action="store_true", help="reuse the rows an interrupted run left in --work")
    ap.add_argument("--worker"), ap.add_argument("--model"), ap.add_argument("--pairs-file", type=Path), ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.pairs_file, args.out, args.threads)

    from reranker.evaluation import evaluate
    from reranker.io.dataset import load_dataset
    from reranker.io.trec import read_run
    from reranker.onnx_manifest import OnnxManifest
    from reranker.records import Qrels, Run
    from student.parity import top_k_agreement

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    scifact = str(args.shared / "datasets" / "beir" / "scifact.zip")
    t: list[dict] = []
    parity = parity_pairs(scifact, w / "parity-pairs.jsonl")
    plain = args.plain_ce or (None if (args.ce / "hybrid_head.safetensors").exists() else args.ce)
    students = {"cross-encoder": args.ce, "t5": args.t5, **({"plain cross-encoder": plain} if plain and plain != args.ce else {})}
    methods = {"dynamic": ("", []), "weight-only": ("-wo", ["--int8-method", "weight-only"]),
               "mixed": ("-mixed", ["--int8-method", "mixed", "--max-ndcg-drop", 0]), "auto": ("-auto", ["--precision", "auto"])}
    for kind, folder in students.items():
        for method, (suffix, opts) in methods.items():
            if kind == "plain cross-encoder" and method != "dynamic":
                continue
            out = w / f"{slug(kind)}{suffix}"
            if not (out / "onnx_manifest.json").is_file():
                precision = [] if method == "auto" else ["--precision", "fp32,int8"]
                sh([EXE, "-q", "export", folder, out, *precision, *opts, "--parity-data", parity, "--threads", args.threads], t,
                   f"export the {kind} student ({method} int8, parity check)")
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
        d = w / slug(kind)
        manifest = OnnxManifest.load(d)
        checkpoint = [folder / f for f in ("model.safetensors", "hybrid_head.safetensors") if (folder / f).exists()]
        configs += [(f"{kind} · PyTorch fp32", kind, "torch-fp32", folder, checkpoint),
                    (f"{kind} · ONNX fp32", kind, "onnx-fp32", d, [d / manifest.models["fp32"].file]),
                    (f"{kind} · ONNX int8 (dynamic)", kind, "onnx-int8", d, [d / manifest.models["int8"].file])]
        if kind != "plain cross-encoder":
            configs += [(f"{kind} · ONNX int8 ({m})", kind, f"onnx{m[:2]}-int8", w / f"{slug(kind)}{suffix}",
                         [w / f"{slug(kind)}{suffix}" / "model.int8.onnx"]) for m, suffix in (("weight-only", "-wo"), ("mixed", "-mixed"))]
    if plain:
        kind = "plain cross-encoder" if plain != args.ce else "cross-encoder"
        configs += [(f"{kind} · sentence-transformers CrossEncoder (torch)", kind, "st-torch", plain, [plain / "model.safetensors"]),
                    (f"{kind} · sentence-transformers CrossEncoder (ONNX backend)", kind, "st-onnx", w / "st-onnx",
                     [w / "st-onnx" / "onnx" / "model.onnx"])]
    # sentence-transformers' ONNX backend reads <folder>/onnx/model.onnx with optimum, which wants a `logits` output
    # (our export's is `score`): its own optimum export of the same checkpoint, made under the interpreter that scores it
    st_python = args.st_python or sys.executable
    st_dir = w / "st-onnx"
    shutil.rmtree(st_dir, ignore_errors=True)
    cmd = [st_python, __file__, "--worker", "st-onnx-export", "--model", str(plain), "--out", str(st_dir)]
    print(f"$ [st-onnx-export] {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False) if plain else None
    st_error = None if plain else "no plain cross-encoder (--plain-ce)"
    if res is not None and res.returncode == 0:
        t.append({"step": "sentence-transformers' own ONNX export (optimum) of the cross-encoder, under --st-python",
                  "command": f"{args.st_python or 'python'} benchmarks/onnx_speed.py --worker st-onnx-export --model {plain} --out {st_dir}",
                  "seconds": round(time.perf_counter() - start, 1)})
    elif res is not None:
        st_error = res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else f"exit {res.returncode}"

    results = []
    start_all = time.perf_counter()
    st_scores, scores = {}, {}
    groups = [qids.index(row["qid"]) for row in rows]
    for label, kind, config, model, files in configs:
        tag = f"{slug(kind)}-{config}"
        if config == "st-onnx":
            r = {"error": st_error} if st_error else run_worker(config, model, pairs_file, w, args.threads, python=st_python, tag=tag,
                                                                resume=args.resume)
        else:
            r = run_worker(config, model, pairs_file, w, args.threads, tag=tag, resume=args.resume)
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
            scores[(kind, config)] = np.asarray(r["scores"])
            fp32 = scores.get((kind, "onnx-fp32"))
            if fp32 is not None and config != "onnx-fp32":  # fidelity to the student's own fp32 graph
                entry.update(top10_vs_fp32=round(top_k_agreement(fp32, scores[(kind, config)], groups, 10), 4),
                             mean_abs_diff_vs_fp32=float(np.abs(scores[(kind, config)] - fp32).mean()), fp32_score_sd=float(fp32.std()))
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
    for kind, (method, worker) in itertools.product(("cross-encoder", "t5"), INT8_ROWS):
        base, int8, fp32 = by.get((kind, "torch-fp32"), {}), by.get((kind, worker), {}), by.get((kind, "onnx-fp32"), {})
        if "pairs_per_s" in base and "pairs_per_s" in int8:
            speed, dn, ratio = int8["pairs_per_s"] / base["pairs_per_s"], int8["ndcg10"] - base["ndcg10"], int8["size_mb"] / base["size_mb"]
            fidelity = int8.get("top10_vs_fp32")
            targets.append({"kind": kind, "method": method, "int8_speedup": round(speed, 2), "speed_met": speed >= SPEEDUP_TARGET,
                            "ndcg_delta": round(dn, 4), "ndcg_met": abs(dn) <= 0.005, "top10_vs_fp32": fidelity,
                            "fidelity_met": fidelity is not None and fidelity >= 0.95,
                            "mean_diff_over_sd": round(int8["mean_abs_diff_vs_fp32"] / int8["fp32_score_sd"], 4) if fidelity is not None else None,
                            "size_ratio_vs_checkpoint": round(ratio, 3), "size_met": ratio <= 1 / 3,
                            "onnx_fp32_speedup": round(fp32["pairs_per_s"] / base["pairs_per_s"], 2)})
    autos = {}
    for kind in ("cross-encoder", "t5"):
        f = w / f"{slug(kind)}-auto" / "onnx_manifest.json"
        if f.is_file():
            choice = json.loads(f.read_text()).get("choice") or {}
            autos[kind] = {k: choice.get(k) for k in ("candidate", "reason", "sample", "pairs", "max_ndcg_drop")}
    plain_kind = next((r["kind"] for r in results if r["worker"] == "st-onnx"), None)
    st, ours = by.get((plain_kind, "st-onnx"), {}), by.get((plain_kind, "onnx-int8"), {})
    st_ratio = round(ours["pairs_per_s"] / st["pairs_per_s"], 2) if "pairs_per_s" in st and "pairs_per_s" in ours else None
    command = (f"python benchmarks/onnx_speed.py --queries {args.queries} --threads {args.threads} --ce {args.ce} --t5 {args.t5}"
               + (f" --plain-ce {args.plain_ce}" if args.plain_ce else ""))
    if args.st_python:
        command += f" --st-python {args.st_python}"
    write_json("onnx_speed", {"command": command, "queries": len(qids), "pairs": len(rows), "bm25_ndcg10": round(bm25_ndcg, 4), "results": results,
         "targets": targets, "auto": autos, "int8_vs_st_onnx": st_ratio, "load_average_at_end": [round(x, 2) for x in load], "timings": t, "env": env})
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
        ("| configuration | pairs/s | nDCG@10 | top-10 agreement with ONNX fp32 | mean score change vs ONNX fp32 | size on disk (MB) "
         "| peak RSS (MB) | load s | max score change, alone vs batched |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            reason = "needs Optimum (see below)" if "Optimum" in r["error"] else r["error"]
            md.append(f"| {r['config']} | not run: {reason} | | | | {fmt(r['size_mb'])} | | | |")
        else:
            md.append(f"| {r['config']} | {r['pairs_per_s']} | {r['ndcg10']:.4f} | {fmt(r.get('top10_vs_fp32'))} "
                      f"| {fmt(r.get('mean_abs_diff_vs_fp32'), '{:.4f}')} | {fmt(r['size_mb'])} | {r['peak_rss_mb']} | {r['load_s']} "
                      f"| {fmt(r.get('batch_max_abs_diff'), '{:.2e}')} |")
    md += ["", "## Targets (ONNX int8 against PyTorch fp32)", "",
           (f"| student | int8 method | speed-up (target >= {SPEEDUP_TARGET}x) | nDCG@10 change (target within 0.005; cross-encoder) "
            "| top-10 agreement with its fp32 graph (target >= 0.95; T5) | mean score change / fp32 score sd "
            "| size / PyTorch checkpoint (target <= 1/3) | ONNX fp32 speed-up |"),
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    ok = lambda b: "met" if b else "**not met**"
    for g in targets:
        ndcg = f"{g['ndcg_delta']:+.4f}" + (f" ({ok(g['ndcg_met'])})" if g["kind"] == "cross-encoder" else "")
        top10 = fmt(g["top10_vs_fp32"]) + (f" ({ok(g['fidelity_met'])})" if g["kind"] == "t5" else "")
        md.append(f"| {g['kind']} | {g['method']} | {g['int8_speedup']}x ({ok(g['speed_met'])}) | {ndcg} | {top10} | "
                  f"{fmt(g['mean_diff_over_sd'])} | {g['size_ratio_vs_checkpoint']:.3f} ({ok(g['size_met'])}) | {g['onnx_fp32_speedup']}x |")
    for kind, a in autos.items():
        md += ["", (f"`reranker export --precision auto` on the {kind} student ({a['pairs']} pairs of {a['sample']}, budget "
                   f"{a['max_ndcg_drop']}): **{a['candidate']}**. Its reason: {a['reason']}.")]
    if st_ratio is not None:
        md += ["", (f"Our dynamic int8 graph against sentence-transformers' ONNX backend on the same ({plain_kind}) weights: "
                   f"{st_ratio}x the pairs/s.")]
    st = by.get((plain_kind, "st-onnx"), {})
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
    shared = (" The CPU was shared with another job during this run (load average above the core count): absolute pairs/s "
              "are below an idle machine's and the ratios carry noise." if load[1] > (os.cpu_count() or 1) else "")
    md += ["", f"Load average at the end of the run: {', '.join(f'{x:.2f}' for x in load)} (1, 5, 15 min).{shared}"]
    publish("onnx_speed", md, t, w)


if __name__ == "__main__":
    main()
