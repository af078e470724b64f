"""The distilled cross-encoder student on SciFact at its kept checkpoint, for the recipe and one-change ablations.

Data as in ``distill_scifact.py`` (extractive synthetic queries for ``--passages`` SciFact
passages, bm25s top ``--depth`` labelled by the offline ensemble teacher, 10% of the groups held
out as the synthetic dev set; no human label until the final evaluation). For each row and seed
the student is distilled with ``reranker distill`` and stopped at each of ``--points`` (steps of
one schedule, ``--stop-after``); at each point its model (the best on the synthetic dev set so
far) is exported to ONNX and re-ranks bm25s's top ``--top-k`` for the 300 test queries through
the int8 graph, as it is served. Recorded per point: the kept weights' step, training pairs and training
seconds (and how far the run trained), nDCG@10
on the test qrels, agreement with the teacher on the dev groups (the listwise KL that model
selection reads, and nDCG@10 with the teacher's labels as gains), the step model selection
kept, and a paired t-test against BM25. The dev KL at every ``--eval-every`` steps comes from
the run's history at no extra cost and is plotted against training pairs.

Rows: ``recipe`` (the defaults of ``reranker distill``) and each lever changed alone
(:data:`ROWS`). ``--seeds`` trains the recipe with several seeds (mean and sd of the last point).

Writes ``benchmarks/results/student_curve.{md,json,png}``.
Usage: ``python benchmarks/student_curve.py [--work /tmp/student-curve] [--rows recipe,classifier-head] [--seeds 0,1,2] [--points 60,180] [--eval-every 20]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, RESULTS, SHARED, environment, machine_independent, sh, write_json, write_markdown

#: Each row changes one setting of the recipe (the `reranker distill` defaults).
ROWS: dict[str, dict] = {
    "recipe": {},
    "classifier-head": {"head": "classifier"},  # the head before this change: a new, random one-logit classifier
    "lr-1e-4": {"lr": 1e-4},
    "max-length-128": {"max_length": 128},
    "margin-mse": {"losses": {"margin_mse": 1.0}},
    "temperature-2": {"temperature": 2.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/student-curve"))
    ap.add_argument("--passages", type=int, default=800)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--rows", default="recipe,classifier-head", help=f"Comma-separated, of: {', '.join(ROWS)}.")
    ap.add_argument("--seeds", default="0", help="Seeds of the recipe row (other rows use the first).")
    ap.add_argument("--points", default="60,180", help="Steps at which the student is evaluated; the last ends the schedule.")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=20, help="Dev evaluations (model selection, agreement curve) every this many steps.")
    ap.add_argument("--report-only", action="store_true", help="Write the results from the points measured so far (WORK/curve.json); train nothing.")
    ap.add_argument("--from-results", action="store_true", help="Rewrite the page from the committed results/student_curve.json "
                    "(points recorded before the kept step was: migrated, see kept_point); train and measure nothing.")
    args = ap.parse_args()
    w = args.work
    if args.from_results:
        old = json.loads((RESULTS / "student_curve.json").read_text())
        points = {k: kept_point(v) for k, v in old["points"].items()}
        measured = re.search(r" on (\d{4}-\d{2}-\d{2}) ", (RESULTS / "student_curve.md").read_text())
        when = f"{measured.group(1) if measured else 'an earlier date'} (page rewritten by `--from-results` on {time.strftime('%Y-%m-%d')})"
        write_results(points, {"bm25": {"ndcg@10": old["bm25"]}, "teacher": {"ndcg@10": old["teacher"]}}, args, w,
                      old.get("timings", []), when=when)
        return
    w.mkdir(parents=True, exist_ok=True)
    scifact = str(args.shared / "datasets" / "beir" / "scifact.zip")
    points = sorted(int(p) for p in args.points.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    t: list[dict] = []

    def once(cmd: list, label: str, output: Path) -> None:
        if not output.exists():
            sh(cmd, t, label)

    once([EXE, "-q", "generate-queries", scifact, "--out", w / "synthetic.jsonl", "--sample", args.passages, "--seed", 0,
          "--stats", w / "gen-stats.json"], "synthetic queries", w / "synthetic.jsonl")
    once([EXE, "-q", "label", scifact, "--queries", w / "synthetic.jsonl", "--store", w / "labels.sqlite", "--teacher", "ensemble",
          "-k", args.depth, "--export", w / "groups.jsonl"], "teacher labels", w / "groups.jsonl")
    if not (w / "train.jsonl").exists():
        lines = (w / "groups.jsonl").read_text().splitlines()
        random.Random(0).shuffle(lines)
        n_dev = max(1, len(lines) // 10)
        (w / "dev.jsonl").write_text("\n".join(lines[:n_dev]) + "\n")
        (w / "train.jsonl").write_text("\n".join(lines[n_dev:]) + "\n")
    once([EXE, "-q", "retrieve", scifact, "-k", 100, "--out", w / "bm25.trec"], "BM25 top 100", w / "bm25.trec")
    once([EXE, "-q", "label", scifact, "--candidates", w / "bm25.trec", "--store", w / "test-labels.sqlite", "--teacher", "ensemble",
          "--run-out", w / "teacher.trec"], "teacher re-ranks the top 100", w / "teacher.trec")
    base = json.loads(sh([EXE, "-q", "evaluate", scifact, w / "bm25.trec", w / "teacher.trec", "-m", "ndcg@10", "--json"], t, "evaluate BM25 and teacher"))

    results = json.loads((w / "curve.json").read_text()) if (w / "curve.json").is_file() else {}
    for row in [] if args.report_only else rows:
        for seed in seeds if row == "recipe" else seeds[:1]:
            tag = f"{row}-s{seed}"
            out = w / tag
            for point in points:
                key = f"{tag}@{point}" + ("" if args.top_k == 100 else f"/top{args.top_k}")
                if key in results:
                    continue
                opts = []
                for k, v in ROWS[row].items():
                    opts += [f"--{k.replace('_', '-')}", json.dumps(v) if isinstance(v, dict) else v]
                sh([EXE, "-q", "distill", "--train", w / "train.jsonl", "--dev", w / "dev.jsonl", "--output-dir", out,
                    "--max-steps", points[-1], "--stop-after", point, "--eval-every", args.eval_every, "--patience", 100, "--seed", seed,
                    "--teacher", "ensemble (bm25 + all-MiniLM-L6-v2)", *opts], t, f"distil {tag} to step {point}")
                summary = json.loads((out / "summary.json").read_text())
                weights = weights_digest(out / "model")
                twin = next((k for k, r in results.items() if r.get("weights") == weights and r.get("top_k", args.top_k) == args.top_k), None)
                if twin is not None:
                    # bit-identical weights (e.g. seeds that all kept the fitted start): the same scores, not re-ranked again
                    ndcg, p_value = results[twin]["ndcg@10"], results[twin]["p_vs_bm25"]
                else:
                    onnx = out / f"onnx-{point}"
                    depth = "" if args.top_k == 100 else f"-top{args.top_k}"
                    if not (onnx / "onnx_manifest.json").exists():
                        sh([EXE, "-q", "export", out / "model", onnx, "--precision", "fp32,int8"], t, f"export {key}")
                    run = w / f"{tag}-{point}{depth}.trec"
                    sh([EXE, "-q", "rerank", scifact, "--model", onnx, "--run", w / "bm25.trec", "--top-k", args.top_k, "--out", run], t,
                       f"re-rank {key}")
                    ev = json.loads(sh([EXE, "-q", "evaluate", scifact, w / "bm25.trec", run, "-m", "ndcg@10", "--report",
                                        w / f"report-{tag}-{point}{depth}", "--json"], t, f"evaluate {key}"))
                    ndcg = ev[run.stem]["ndcg@10"]
                    p_value = _p_value(json.loads((w / f"report-{tag}-{point}{depth}.json").read_text()), run.stem)
                cfg = summary["config"]
                pairs_per_step = cfg["batch_queries"] * cfg["group_size"]
                curve = [{"step": 0, "pairs": 0, "kl": (summary.get("initial_metrics") or {}).get("teacher_kl")}]
                curve += [{"step": h["step"], "pairs": h["step"] * pairs_per_step, "kl": h["teacher_kl"]}
                          for h in summary["history"] if "teacher_kl" in h]
                kept = next((h for h in summary["history"] if h["step"] == summary["best_step"]), None)
                results[key] = {
                    "row": row, "seed": seed, "trained_steps": summary["steps"], "trained_pairs": summary["steps"] * pairs_per_step,
                    "trained_seconds": round(summary["seconds"], 1),
                    # the point is the kept weights': their step, their pairs, the training seconds that made them
                    "step": summary["best_step"], "pairs": summary["best_step"] * pairs_per_step,
                    "seconds": 0.0 if summary["best_step"] == 0 else (round(kept["seconds"], 1) if kept and "seconds" in kept else None),
                    "ndcg@10": ndcg, "weights": weights, "same_weights_as": twin, "top_k": args.top_k,
                    "agreement": (summary.get("best_metrics") or {}).get("teacher_ndcg@10"),
                    "agreement_before": (summary.get("initial_metrics") or {}).get("teacher_ndcg@10"),
                    "dev_kl": (summary.get("best_metrics") or {}).get("teacher_kl"),
                    "dev_kl_before": (summary.get("initial_metrics") or {}).get("teacher_kl"), "dev_curve": curve,
                    "best_step": summary["best_step"], "head_init": summary.get("head_init"), "bf16": summary.get("bf16"),
                    "p_vs_bm25": p_value, "config": {k: cfg[k] for k in ("head", "lr", "head_lr", "max_length", "losses", "temperature")},
                }
                (w / "curve.json").write_text(json.dumps(results, indent=2))
    write_results(results, base, args, w, t)


def kept_point(r: dict) -> dict:
    """A point as recorded now: ``step``/``pairs``/``seconds`` are the kept weights', ``trained_*`` the run's. Points
    recorded before (``step`` = the run's last step) are migrated: the kept step's pairs follow from the pairs per step;
    its training seconds were not recorded (``None``), except at step 0 (the fitted start: 0)."""
    if "trained_steps" in r:
        return r
    per_step = r["pairs"] // r["step"] if r["step"] else 0
    return {**r, "trained_steps": r["step"], "trained_pairs": r["pairs"], "trained_seconds": r["seconds"],
            "step": r["best_step"], "pairs": r["best_step"] * per_step, "seconds": 0.0 if r["best_step"] == 0 else None}


def weights_digest(model: Path) -> str:
    """sha256 over a saved student's weight files (backbone and head): equal digests score every pair alike."""
    from reranker.io.files import sha256

    files = [model / name for name in ("model.safetensors", "hybrid_head.safetensors") if (model / name).is_file()]
    return hashlib.sha256("".join(f"{f.name}:{sha256(f)}" for f in files).encode()).hexdigest()


def _p_value(report: dict, run: str) -> float | None:
    """The paired test's p-value (nDCG@10) of ``run`` against BM25 in an `evaluate --report` JSON."""
    return report["p_values"].get(run, {}).get("bm25", {}).get("ndcg@10")


def write_results(results: dict, base: dict, args, w: Path, t: list[dict], when: str | None = None) -> None:
    env = environment("torch", "transformers", "onnxruntime")
    bm25 = next(v["ndcg@10"] for k, v in base.items() if "bm25" in k)
    teacher = next(v["ndcg@10"] for k, v in base.items() if "teacher" in k)
    # the rows and seeds in the table (runs add to WORK/curve.json one after another), not only this invocation's
    made = []
    for k in sorted({v.get("top_k", 100) for v in results.values()} or {args.top_k}, reverse=True):
        at = [v for v in results.values() if v.get("top_k", 100) == k]
        made_rows = ",".join(r for r in ROWS if any(v["row"] == r for v in at)) or args.rows
        made_seeds = ",".join(str(s) for s in sorted({v["seed"] for v in at if v["row"] == "recipe"})) or args.seeds
        made_points = ",".join(str(n) for n in sorted({v.get("trained_steps", v["step"]) for v in at})) or args.points
        made.append(f"`python benchmarks/student_curve.py --rows {made_rows} --seeds {made_seeds} --points {made_points} --top-k {k} "
                    f"--eval-every {args.eval_every}`")
    write_json("student_curve", {"bm25": bm25, "teacher": teacher, "points": results, "timings": t, "env": env}, transform=lambda text: machine_independent(text, w))
    lines = [
        "# The distilled student on SciFact: its kept checkpoint, and its agreement with the teacher along training", "",
        (f"Made by {' and '.join(made)} (runs add to one table; a point missing from the table was not reached) "
        f"on {when or time.strftime('%Y-%m-%d')} ({env['cores']} cores, torch {env['torch']}). Students re-rank bm25s's top k (the "
        "column) for the 300 test queries through their ONNX int8 export: top 100 for the recipe's seeds, top 20 for the "
        "one-change ablation rows and the recipe row they are compared with (a fifth of the re-ranking cost). "
        f"BM25 {bm25:.4f}, teacher (ensemble, re-ranking the top 100) {teacher:.4f} nDCG@10."), "",
        ("Each row is one training run and **one** nDCG@10 measurement, of the weights model selection kept (the lowest dev "
         "KL): `kept step`, `kept pairs` and `kept s` say when those weights were made (step 0 is the fitted start, before "
         "any training step), `trained` how far the run went. It is not a learning curve in nDCG: only the dev KL is "
         "measured along training (every `--eval-every` steps, the right-hand plot); `--points A,B,...` measures nDCG@10 "
         "at several stops of one schedule. `kept s` is `-` for runs recorded before the kept step's seconds were."), "",
        "| row | seed | top k | trained steps | trained s | kept step | kept pairs | kept s | nDCG@10 | p vs BM25 | dev KL (before -> kept) | dev teacher-nDCG@10 (before -> kept) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    order = lambda kv: (-kv[1].get("top_k", 100), kv[1]["row"] != "recipe", kv[1]["row"], kv[1]["seed"], kv[1]["trained_steps"])
    for key, r in sorted(results.items(), key=order):
        p = "-" if r["p_vs_bm25"] is None else f"{r['p_vs_bm25']:.3g}"
        before = "-" if r["agreement_before"] is None else f"{r['agreement_before']:.4f}"
        after = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
        kl = "-" if r.get("dev_kl") is None else f"{r['dev_kl_before']:.4f} -> {r['dev_kl']:.4f}"
        same = f" (weights = {r['same_weights_as']})" if r.get("same_weights_as") else ""
        kept_s = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['row']} | {r['seed']} | {r.get('top_k', 100)} | {r['trained_steps']} | {r['trained_seconds']:.0f} | {r['step']} | "
                     f"{r['pairs']} | {kept_s} | {r['ndcg@10']:.4f}{same} | {p} | {kl} | {before} -> {after} |")
    last = max(r["trained_steps"] for r in results.values()) if results else 0
    finals = [r["ndcg@10"] for r in results.values() if r["row"] == "recipe" and r["trained_steps"] == last and r.get("top_k", 100) == 100]
    if len(finals) > 1:
        kept = sorted(r["step"] for r in results.values() if r["row"] == "recipe" and r["trained_steps"] == last and r.get("top_k", 100) == 100)
        lines += ["", f"Recipe trained for {last} steps, over {len(finals)} seeds: nDCG@10 mean {statistics.mean(finals):.4f}, "
                      f"sd {statistics.stdev(finals):.4f} (kept steps {', '.join(map(str, kept))})."]
    write_markdown("student_curve", lines)
    _plot(results, bm25, teacher)
    print("\n".join(lines))


def _plot(results: dict, bm25: float, teacher: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (row, seed, k) in sorted({(r["row"], r["seed"], r.get("top_k", 100)) for r in results.values()}):
        pts = sorted((r for r in results.values() if r["row"] == row and r["seed"] == seed and r.get("top_k", 100) == k),
                     key=lambda r: r["trained_steps"])
        label = f"{row} (seed {seed}{'' if k == 100 else f', top {k}'})"
        # one marker per measurement, at the kept weights' pairs and seconds; a line only joins several stops of one run
        style = dict(marker="o", linestyle="-" if len(pts) > 1 else "none", label=label)
        axes[0].plot([r["pairs"] for r in pts], [r["ndcg@10"] for r in pts], **style)
        timed = [r for r in pts if r["seconds"] is not None]
        axes[1].plot([r["seconds"] for r in timed], [r["ndcg@10"] for r in timed], **style)
        dev = max(pts, key=lambda r: r["trained_steps"]).get("dev_curve") or []
        if dev:
            axes[2].plot([c["pairs"] for c in dev], [c["kl"] for c in dev], marker=".", label=label)
    for ax, xlabel in zip(axes, ("training pairs of the kept weights", "training seconds of the kept weights (2-core CPU)")):
        ax.axhline(bm25, color="grey", linestyle="--", label="BM25")
        ax.axhline(teacher, color="black", linestyle=":", label="teacher")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("SciFact nDCG@10 (ONNX int8)")
    axes[2].set_xlabel("training pairs")
    axes[2].set_ylabel("dev listwise KL to the teacher (lower agrees more)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "student_curve.png", dpi=110)


if __name__ == "__main__":
    main()
