"""The figures of the teacher ladder (``teacher_ladder.py report``), from its stored scores, on the CPU.

Reads ``WORK/ladder-data.json`` and the train step's ``ladder-runs.json`` and ``ladder-<design>.npz`` (in
``--out``, default WORK); writes ``benchmarks/results/teacher_ladder.{md,json,png}``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from common import RESULTS, environment, write_json, write_markdown

#: The dev criteria model selection can read (all from the dev groups and the teacher's labels, no human label):
#: name -> (function of (student scores, teacher scores) per group, whether larger is better).
CRITERIA = ("dev_kl", "dev_teacher_ndcg", "dev_spearman")
DEFAULT_CRITERION = "dev_kl"


def _ndcg10(gains: np.ndarray, scores: np.ndarray) -> float:
    """nDCG@10 (linear gains, trec_eval's) of one ranked group; 0 when it has no gain."""
    order = np.argsort(-scores, kind="stable")[:10]
    ideal = np.sort(gains)[::-1][:10]
    disc = 1.0 / np.log2(np.arange(2, 12))
    idcg = float((ideal * disc[: len(ideal)]).sum())
    return float((gains[order] * disc[: len(order)]).sum()) / idcg if idcg > 0 else 0.0


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _kl(student: np.ndarray, teacher: np.ndarray) -> float:
    t = np.exp(teacher - teacher.max())
    t /= t.sum()
    log_s = student - student.max() - math.log(np.exp(student - student.max()).sum())
    log_t = np.log(np.clip(t, 1e-30, None))
    return float((t * (log_t - log_s)).sum())


def per_query_ndcg(groups: list[tuple[str, np.ndarray]], scores: np.ndarray) -> dict[str, float]:
    """nDCG@10 of each query's group (``(qid, gains)`` in the scores' order)."""
    out, at = {}, 0
    for qid, gains in groups:
        out[qid] = _ndcg10(gains, scores[at : at + len(gains)])
        at += len(gains)
    return out


def dev_criteria(dev: list[dict], teacher: list[np.ndarray], scores: np.ndarray) -> dict[str, float]:
    kl, nd, sp, at = [], [], [], 0
    for q, t in zip(dev, teacher):
        s = scores[at : at + len(t)].astype(np.float64)
        at += len(t)
        kl.append(_kl(s, t))
        gains = np.rint(10 / (1 + np.exp(-t)))
        nd.append(_ndcg10(gains, s))
        sp.append(_spearman(s, t))
    return {"dev_kl": float(np.mean(kl)), "dev_teacher_ndcg": float(np.mean(nd)), "dev_spearman": float(np.mean(sp))}


def _better(criterion: str, a: float, b: float) -> bool:
    return a < b if criterion == "dev_kl" else a > b


def _paired_p(a: dict[str, float], b: dict[str, float]) -> float:
    from scipy.stats import ttest_rel

    keys = sorted(a)
    res = ttest_rel([a[k] for k in keys], [b[k] for k in keys])
    return float(res.pvalue) if np.isfinite(res.pvalue) else 1.0


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def report(args) -> None:
    from reranker.io.beir import load_beir
    from teacher_ladder import DESIGNS, blend

    w, src = args.work, args.out or args.work
    data = json.loads((w / "ladder-data.json").read_text())
    from teacher_ladder import load_stored

    runs, store = load_stored([src])
    by_design: dict[str, set] = {}
    for r in runs.values():
        by_design.setdefault(r["design"], set()).add(r.get("device") or "?")
    meta = {"runs": runs, "device": "; ".join(f"{d} on {', '.join(sorted(v))}" for d, v in sorted(by_design.items()))}
    test_qrels = load_beir(args.scifact, "test").qrels
    test_groups = [(q["qid"], np.array([test_qrels.get(q["qid"], {}).get(d, 0) for d in q["docs"]], dtype=float)) for q in data["test"]]
    judged = {q for q, g in test_groups if q in test_qrels}
    bm25_pq = per_query_ndcg(test_groups, np.concatenate([-np.arange(len(g), dtype=float) for _, g in test_groups]))
    human_dev = [(q["qid"], np.array([g for _, _, g in q["pool"]], dtype=float)) for q in data["dev"]]

    def mean_over_judged(pq: dict[str, float], n_test: int = 300) -> float:
        # queries whose top 30 holds no relevant document count 0, as in trec_eval over the 300 judged queries
        return sum(pq.get(q, 0.0) for q in judged) / len(judged)

    rungs = sorted({r["alpha"] for r in meta["runs"].values()})
    teacher_quality = {}
    for a in rungs:
        scores = np.concatenate([np.array([blend(s, g, a) for _, s, g in q["pool"]]) for q in data["dev"]])
        teacher_quality[a] = statistics.mean(per_query_ndcg(human_dev, scores).values())

    table = {}
    for tag, r in sorted(meta["runs"].items()):
        teacher = [np.array([blend(s, g, r["alpha"]) for _, s, g in q["pool"]]) for q in data["dev"]]
        points = []
        for p in r["points"]:
            parts = {k.rsplit("/", 1)[1]: v for k, v in store.items() if k.startswith(f"{tag}/{p['step']}/test/")}
            dev_scores = store[f"{tag}/{p['step']}/dev/score"]
            pq = per_query_ndcg(test_groups, parts["score"])
            point = {**p, "test_ndcg": mean_over_judged(pq), "per_query": pq, **dev_criteria(data["dev"], teacher, dev_scores),
                     "dev_human_ndcg": statistics.mean(per_query_ndcg(human_dev, dev_scores).values())}
            if "joint" in parts:
                point["joint_ndcg"] = mean_over_judged(per_query_ndcg(test_groups, parts["joint"]))
                formula = p["sem_weight"] * parts["cos"] + p["lex_weight"] * parts["lex"]
                point["formula_ndcg"] = mean_over_judged(per_query_ndcg(test_groups, formula))
                point["joint_share"] = _spread_share(test_groups, parts["joint"], formula)
            points.append(point)
        kept = {}
        for c in CRITERIA:
            best = points[0]
            for p in points[1:]:
                if _better(c, p[c], best[c]):
                    best = p
            kept[c] = best
        table[tag] = {**{k: r[k] for k in ("design", "alpha", "seed", "seconds", "train_seconds", "bf16")}, "points": points, "kept": kept}

    lines, summary = _write_tables(table, teacher_quality, bm25_pq, judged, meta, args)
    _plot(table, teacher_quality, mean_over_judged(bm25_pq))
    clean = {tag: {**{k: v for k, v in t.items() if k not in ("points", "kept")},
                   "points": [{k: v for k, v in p.items() if k != "per_query"} for p in t["points"]],
                   "kept_step": {c: p["step"] for c, p in t["kept"].items()}} for tag, t in table.items()}
    write_json("teacher_ladder", {"teacher_quality_held_out": teacher_quality, "bm25_test_ndcg": mean_over_judged(bm25_pq),
                                  "runs": clean, "summary": summary, "device": meta.get("device"),
                                  "env": environment("numpy")})
    write_markdown("teacher_ladder", lines)
    print("\n".join(lines))


def _spread_share(groups, joint: np.ndarray, formula: np.ndarray) -> float:
    """Mean over queries of sd(joint) / (sd(joint) + sd(formula)) within the query's candidates: the joint term's share
    of what orders a query's candidates (0 = the formula alone, 1 = the joint pass alone)."""
    shares, at = [], 0
    for _, g in groups:
        j, f = joint[at : at + len(g)], formula[at : at + len(g)]
        at += len(g)
        if j.std() + f.std() > 0:
            shares.append(j.std() / (j.std() + f.std()))
    return float(np.mean(shares)) if shares else 0.0


def _write_tables(table, teacher_quality, bm25_pq, judged, meta, args):
    from teacher_ladder import COMMON, DESIGNS, POOL, TEST_DEPTH

    bm25 = sum(bm25_pq.get(q, 0.0) for q in judged) / len(judged)
    lines = [
        "# Teacher ladder on SciFact: does the student follow a stronger teacher up? (capacity experiment: human labels)", "",
        f"Made by `python benchmarks/teacher_ladder.py prepare`, `... label`, `... train` ({meta.get('device')}) and `... report` "
        f"on {time.strftime('%Y-%m-%d')}. Teachers label SciFact's **train** queries (bm25s top {POOL} each; 10% held out as the "
        "dev set): the offline ensemble (BM25 + all-MiniLM-L6-v2) blended with the train split's human qrels at weight alpha "
        "(`(1 - alpha) * ensemble + alpha * (4 * grade - 2)`). **These rungs use human labels; the product's defaults do not.** "
        f"Students re-rank bm25s's top {TEST_DEPTH} for the 300 **test** queries (BM25 alone: {bm25:.4f} nDCG@10). "
        f"Training: {json.dumps(COMMON)}; designs: " + "; ".join(f"`{d}` {json.dumps(v)}" for d, v in DESIGNS.items()) + ".", "",
        "## Per rung (test nDCG@10, mean ± sd over seeds; kept = the step the default criterion, dev KL, keeps)", "",
        "| design | alpha | teacher nDCG@10 (held-out train queries) | seeds | fitted start (step 0) | kept (dev KL) | kept (dev teacher-nDCG) | last step | p: kept vs start (per seed; seeds pooled) | p: kept vs alpha 0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    summary = {}
    for design in DESIGNS:
        by_alpha: dict[float, list] = {}
        for t in table.values():
            if t["design"] == design:
                by_alpha.setdefault(t["alpha"], []).append(t)
        zero = {t["seed"]: t for t in by_alpha.get(0.0, [])}
        for alpha, ts in sorted(by_alpha.items()):
            ts.sort(key=lambda t: t["seed"])
            start = [t["points"][0]["test_ndcg"] for t in ts]
            kept = [t["kept"][DEFAULT_CRITERION]["test_ndcg"] for t in ts]
            kept_nd = [t["kept"]["dev_teacher_ndcg"]["test_ndcg"] for t in ts]
            last = [t["points"][-1]["test_ndcg"] for t in ts]
            p_start = [_paired_p(t["kept"][DEFAULT_CRITERION]["per_query"], t["points"][0]["per_query"]) for t in ts]
            p_zero = [_paired_p(t["kept"][DEFAULT_CRITERION]["per_query"], zero[t["seed"]]["kept"][DEFAULT_CRITERION]["per_query"])
                      for t in ts if t["seed"] in zero and alpha != 0.0]
            # the seeds together: each query's nDCG@10 averaged over the seeds, then one paired test
            pooled = lambda runs: {q: statistics.mean(r[q] for r in runs) for q in runs[0]}  # noqa: E731
            kept_pq = pooled([t["kept"][DEFAULT_CRITERION]["per_query"] for t in ts])
            if len(ts) > 1:
                p_start.append(_paired_p(kept_pq, pooled([t["points"][0]["per_query"] for t in ts])))
            if alpha != 0.0 and len(zero) > 1:
                p_zero.append(_paired_p(kept_pq, pooled([z["kept"][DEFAULT_CRITERION]["per_query"] for z in zero.values()])))
            def fmt(ps: list[float], n: int = len(ts)) -> str:
                if not ps:
                    return "-"
                return ", ".join(f"{p:.2g}" for p in ps[:n]) + (f"; seeds pooled {ps[n]:.2g}" if len(ps) > n else "")
            lines.append(f"| {design} | {alpha} | {teacher_quality[alpha]:.4f} | {len(ts)} | {_mean_sd(start)} | {_mean_sd(kept)} | "
                         f"{_mean_sd(kept_nd)} | {_mean_sd(last)} | {fmt(p_start)} | {fmt(p_zero)} |")
            summary[f"{design}/a{alpha}"] = {"teacher": teacher_quality[alpha], "start": start, "kept": kept, "kept_teacher_ndcg": kept_nd,
                                             "last": last, "p_kept_vs_start": p_start, "p_kept_vs_alpha0": p_zero}
    lines += ["", "## What the score is made of (test nDCG@10 of each part at the last step, and the joint pass's share of the "
              "within-query spread; hybrid students)", "",
              "| design | alpha | seed | whole score | joint pass alone | formula alone (cosine + lexical, trained backbone) | formula at step 0 | joint share of spread | sem, lex weights (last) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for tag, t in sorted(table.items()):
        p, p0 = t["points"][-1], t["points"][0]
        if "joint_ndcg" in p:
            lines.append(f"| {t['design']} | {t['alpha']} | {t['seed']} | {p['test_ndcg']:.4f} | {p['joint_ndcg']:.4f} | {p['formula_ndcg']:.4f} | "
                         f"{p0['formula_ndcg']:.4f} | {p['joint_share']:.3f} | {p['sem_weight']:.2f}, {p['lex_weight']:.2f} |")
    lines += ["", "## Model selection: Spearman correlation of each dev criterion with test nDCG@10 over a run's evaluation points",
              "(mean over runs; KL enters negated so that larger agrees; `dev human nDCG` reads held-out human labels: a ceiling, "
              "not a product criterion)", "",
              "| design | runs | dev KL | dev teacher-nDCG@10 | dev Spearman to the teacher | dev human nDCG@10 | test nDCG lost by selection (dev KL / teacher-nDCG / Spearman vs best point) |",
              "|---|---:|---:|---:|---:|---:|---|"]
    groups = [(d, None) for d in DESIGNS] + [(d, a) for d in DESIGNS for a in sorted({t["alpha"] for t in table.values()})]
    for design, alpha in groups:
        ts = [t for t in table.values() if t["design"] == design and len(t["points"]) > 2 and alpha in (None, t["alpha"])]
        if not ts:
            continue
        corr = {c: [] for c in (*CRITERIA, "dev_human_ndcg")}
        lost = {c: [] for c in CRITERIA}
        for t in ts:
            test = np.array([p["test_ndcg"] for p in t["points"]])
            for c in corr:
                vals = np.array([p[c] for p in t["points"]]) * (-1 if c == "dev_kl" else 1)
                corr[c].append(_spearman(vals, test))
            for c in CRITERIA:
                lost[c].append(float(test.max() - t["kept"][c]["test_ndcg"]))
        summary[f"{design}/selection" + ("" if alpha is None else f"/a{alpha}")] = {"spearman": corr, "lost": lost}
        lines.append(f"| {design}{'' if alpha is None else f' (alpha {alpha})'} | {len(ts)} | " + " | ".join(f"{statistics.mean(corr[c]):+.2f}" for c in corr) + " | "
                     + " / ".join(f"{statistics.mean(lost[c]):.4f}" for c in CRITERIA) + " |")
    return lines, summary


def _plot(table, teacher_quality, bm25: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    designs = sorted({t["design"] for t in table.values()})
    for d in designs:
        alphas = sorted({t["alpha"] for t in table.values() if t["design"] == d})
        for key, style, label in (("kept", "-o", "kept"), ("start", ":s", "fitted start")):
            ys, sds = [], []
            for a in alphas:
                vals = [(t["kept"][DEFAULT_CRITERION] if key == "kept" else t["points"][0])["test_ndcg"]
                        for t in table.values() if t["design"] == d and t["alpha"] == a]
                ys.append(statistics.mean(vals))
                sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            axes[0].errorbar(alphas, ys, yerr=sds, fmt=style, capsize=3, label=f"{d} ({label})")
    axes[0].axhline(bm25, color="grey", linestyle="--", label="BM25")
    axes[0].set_xlabel("alpha (teacher = (1 - alpha) ensemble + alpha human qrels)")
    axes[0].set_ylabel(f"student test nDCG@10 (SciFact, top {30})")
    axes[0].legend(fontsize=7)
    ax2 = axes[1]
    for tag, t in sorted(table.items()):
        if t["seed"] == min(u["seed"] for u in table.values() if u["design"] == t["design"]):
            ax2.plot([p["step"] for p in t["points"]], [p["test_ndcg"] for p in t["points"]], marker=".", label=f"{t['design']} a={t['alpha']}")
    ax2.axhline(bm25, color="grey", linestyle="--")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("test nDCG@10 (first seed)")
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "teacher_ladder.png", dpi=110)
    del teacher_quality
