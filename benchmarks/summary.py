"""One page and three plots from the committed benchmark results: quality, speed and cost.

Reads ``benchmarks/results/*.json`` (made by the other scripts here; nothing is re-measured)
and writes ``summary.md``, ``quality.png``, ``speed.png`` and ``cost.png`` beside them.
Usage: ``python benchmarks/summary.py``
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_markdown


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def quality_rows() -> list[tuple[str, str, float]]:
    rows = []
    distill = load("distill_scifact")
    if distill:
        for run, scores in distill["report"]["scores"].items():
            rows.append(("SciFact (300 q)", run, scores["ndcg@10"]))
    curve = load("student_curve")
    if curve:
        # a point is its kept weights' (step, pairs); trained_steps is how far the run went (older pages: step)
        points = [{**p, "trained_steps": p.get("trained_steps", p["step"])} for p in curve["points"].values()]
        last = max((p["trained_steps"] for p in points if p["row"] == "recipe"), default=None)
        deep = lambda p: p.get("top_k", 100) == 100  # ablation rows re-rank the top 20: their own comparison
        finals = [p for p in points if p["row"] == "recipe" and p["trained_steps"] == last and deep(p)]
        if len(finals) > 1:  # the recipe's runs over their seeds: one row, mean (sd)
            kept = ", ".join(str(p["step"]) for p in sorted(finals, key=lambda p: p["seed"]))
            values = [p["ndcg@10"] for p in finals]
            rows.append(("SciFact (300 q)", f"student-ce recipe (trained {last} steps, kept steps {kept}; mean of {len(finals)} seeds, "
                         f"sd {statistics.stdev(values):.4f}; student_curve.md)", statistics.mean(values)))
        for point in sorted(points, key=lambda p: (p["row"] != "recipe", p["row"], p["seed"], p["trained_steps"])):
            if len(finals) > 1 and point["row"] == "recipe" and point["trained_steps"] == last and deep(point):
                continue
            what = "recipe" if point["row"] == "recipe" else f"ablation {point['row']}"
            depth = "" if deep(point) else f", re-ranking the top {point['top_k']}"
            rows.append(("SciFact (300 q)", f"student-ce {what} (seed {point['seed']}, trained {point['trained_steps']} steps, kept step "
                         f"{point['step']}{depth}; student_curve.md)", point["ndcg@10"]))
    corpora = load("pipeline_corpora")
    for name, entry in ((corpora or {}).get("corpora") or {}).items():
        data = {"cacm": "CACM (52 q)", "dl19": "TREC DL 2019 (43 q)"}.get(name, name)
        for run, scores in entry["report"]["scores"].items():
            label = {"bm25-top100": "bm25"}.get(run, run)
            rows.append((data, f"{label} (default pipeline; pipeline_corpora.md)", scores["ndcg@10"]))
    dl = load("dl19_quality")
    if dl:
        for run, scores in dl["report"]["scores"].items():
            name = {"bm25-top100": "bm25", "teacher": "teacher (BM25 member with the pool's statistics; dl19_quality.md, 2026-11-23)"}.get(run, run)
            rows.append(("TREC DL 2019 (43 q)", name, scores["ndcg@10"]))
    fusion = load("teacher_fusion")
    for name, entry in ((fusion or {}).get("corpora") or {}).items():
        data = {"cacm": "CACM (52 q)", "dl19": "TREC DL 2019 (43 q)", "scifact": "SciFact (300 q)"}.get(name, name)
        for run, scores in entry["comparison"]["scores"].items():
            if run.startswith("ensemble"):
                rows.append((data, f"teacher: {run} (teacher_fusion.md)", scores["ndcg@10"]))
    demo = load("demo_quality")
    for run, scores in ((demo or {}).get("metrics") or {}).items():
        rows.append((f"embedded demo ({demo['queries']} q)", f"{run} (reranker demo; demo_quality.md)", scores["ndcg@10"]))
    return rows


def speed_rows() -> list[tuple[str, float]]:
    rows = []
    teachers = load("teachers")
    for t in (teachers or {}).get("teachers", []):
        rows.append((f"teacher: {t['teacher']}", t["pairs_per_s"]))
    onnx = load("onnx_speed")
    for r in (onnx or {}).get("results", []):
        if r.get("pairs_per_s"):
            rows.append((r["config"].replace(" · ", " "), r["pairs_per_s"]))
    server = load("server_load")
    for level in (server or {}).get("levels", []):
        rows.append((f"server, {level['concurrency']} clients", level["pairs_per_s"]))
    return rows


def cost_rows() -> list[tuple[str, float, str]]:
    rows = []
    for t in (load("teachers") or {}).get("teachers", []):
        rows.append((f"label with {t['teacher']}", t["pairs_per_s"] * 3600, "pairs per hour"))
    distill = load("distill_scifact")
    if distill:
        for key, name in (("cross_encoder", "cross-encoder"), ("t5", "T5")):
            s = distill.get(key)
            if s and s.get("seconds"):
                pairs = s["steps"] * s["config"]["group_size"] * s["config"]["batch_queries"]
                rows.append((f"distil {name} student", pairs / s["seconds"] * 3600, "training pairs per hour"))
    return rows


def plot(rows_q, rows_s, rows_c) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows_q:  # one panel per data set, a horizontal bar per run (the labels are long)
        sets = list(dict.fromkeys(r[0] for r in rows_q))
        counts = [sum(1 for r in rows_q if r[0] == name) for name in sets]
        fig, axes = plt.subplots(len(sets), 1, figsize=(11, 0.3 * sum(counts) + 1.0 * len(sets)), squeeze=False,
                                 gridspec_kw={"height_ratios": counts})
        for ax, name in zip(axes[:, 0], sets):
            runs = [(r[1] if len(r[1]) <= 72 else r[1][:69] + "...", r[2]) for r in rows_q if r[0] == name]
            ax.barh(range(len(runs)), [r[1] for r in runs], color="#4c72b0")  # by position: shortened labels may repeat
            ax.set_yticks(range(len(runs)), [r[0] for r in runs])
            ax.set_title(name, fontsize=10)
            ax.set_xlim(0, 1)
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=7)
            for i, (_, v) in enumerate(runs):
                ax.text(v + 0.005, i, f"{v:.3f}", va="center", fontsize=7)
        axes[-1, 0].set_xlabel("nDCG@10")
        fig.tight_layout()
        fig.savefig(RESULTS / "quality.png", dpi=110)
        plt.close(fig)
    for rows, file, label in ((rows_s, "speed.png", "pairs / s (2-core CPU)"), (rows_c, "cost.png", "per hour (2-core CPU)")):
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
        ax.barh([r[0] for r in rows], [r[1] for r in rows], color="#55a868")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(RESULTS / file, dpi=120)
        plt.close(fig)


def main() -> None:
    rows_q, rows_s, rows_c = quality_rows(), speed_rows(), cost_rows()
    plot(rows_q, rows_s, rows_c)
    md = ["# Benchmark summary", "", ("Made by `python benchmarks/summary.py` from the committed results in this folder; "
          "each figure links to the page (and command) that measured it. All on this project's 2-core CPU machine, except "
          "the teacher ladder's training (a GPU lent for it; its page says which)."), "",
          "## Quality (nDCG@10; `distill_scifact.md`, `student_curve.md`, `pipeline_corpora.md`, `dl19_quality.md`, `teacher_fusion.md`, `demo_quality.md`)", "", "![quality](quality.png)", "",
          "| data | run | nDCG@10 |", "|---|---|---:|"]
    md += [f"| {d} | {r} | {v:.4f} |" for d, r, v in rows_q]
    md += ["", "## Speed (pairs/s; `teachers.md`, `onnx_speed.md`, `server_load.md`)", "", "![speed](speed.png)", "",
           "| what | pairs/s |", "|---|---:|"]
    md += [f"| {n} | {v:.1f} |" for n, v in rows_s]
    md += ["", "## Cost (per hour of this CPU; `teachers.md`, `distill_scifact.md`)", "", "![cost](cost.png)", "",
           "| what | per hour | unit |", "|---|---:|---|"]
    md += [f"| {n} | {v:,.0f} | {u} |" for n, v, u in rows_c]
    ladder = load("teacher_ladder")
    if ladder:
        md += ["", "## Teacher ladder (capacity experiment with human labels; `teacher_ladder.md`)", "",
               "SciFact train queries labelled by the ensemble blended with the train qrels at weight alpha; students re-rank "
               f"bm25s's top 30 of the 300 test queries (BM25 {ladder['bm25_test_ndcg']:.4f}); mean ± sd over seeds; kept by dev KL. "
               f"Trained on {ladder.get('device') or 'the machine the page names'}.", "", "![teacher ladder](teacher_ladder.png)", "",
               "| design | alpha | teacher (held-out train q) | fitted start | student (kept) | seeds |", "|---|---:|---:|---:|---:|---:|"]
        for key, r in ladder["summary"].items():
            if "/selection" in key:
                continue
            design, alpha = key.rsplit("/a", 1)
            kept = r["kept"]
            sd = f" ± {statistics.stdev(kept):.4f}" if len(kept) > 1 else ""
            md.append(f"| {design} | {alpha} | {r['teacher']:.4f} | {statistics.mean(r['start']):.4f} | {statistics.mean(kept):.4f}{sd} | {len(kept)} |")
    cost = load("serving_cost")
    if cost:
        md += ["", "## Serving cost (a top 100 re-ranked, SciFact, 2 cores; `serving_cost.md`)", "",
               "| configuration | pairs/s | query p50 ms | nDCG@10 |", "|---|---:|---:|---:|"]
        md += [f"| {name} | {r['pairs_per_s']:,.1f} | {1000 * r['latency_p50_s']:,.0f} | {r['ndcg@10']:.4f} |"
               for name, r in cost["rows"].items() if not name.startswith("t5")]
        md += [""] + [f"- {t['target']}: {t['config']} {t['ratio']:.2f}x ({'met' if t['met'] else 'not met'})" for t in cost["targets"]]
    budget = load("label_budget")
    if budget:
        md += ["", "## Label budget (student nDCG@10 against teacher-labelled pairs; `label_budget.md`)", "",
               "![label budget](label_budget.png)", "", "| strategy | " + " | ".join(f"{b} pairs" for b in budget["budgets"]) + " |",
               "|---|" + "---:|" * len(budget["budgets"])]
        md += [f"| {name} | " + " | ".join(f"{p['ndcg@10']:.4f}" for p in points) + " |" for name, points in budget["curve"].items()]
        md += ["", "One student per point: a student's training seed alone moves these by 0.04-0.09 (sd at 500 pairs, "
               "`label_budget.md`), so single differences below about 0.1 do not rank the strategies. **Stale:** measured on "
               "the students before the hybrid head (a plain classifier head, 2026-11); not re-measured on the current "
               "recipe, whose fitted start already ranks above these figures."]
    md += ["", "Timings were taken with other jobs sharing the 2 cores where the linked pages say so; they are lower bounds."]
    write_markdown("summary", md)
    print("\n".join(md))


if __name__ == "__main__":
    main()
