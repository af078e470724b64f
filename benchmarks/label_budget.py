"""Label-budget curve on SciFact: the student's nDCG@10 against the number of teacher-labelled pairs.

The pool is bm25s's top ``--depth`` for SciFact's train-split queries (unlabelled). For each
selection strategy, rounds of label -> distil -> select run through the real commands: round
``i`` sends ``budget_i - budget_{i-1}`` new pairs, chosen by ``reranker label --budget --select``,
to the teacher (its own label store per strategy, so each strategy pays for its own labels),
exports every labelled group, distils a fresh cross-encoder student from them with the same
settings (``--steps`` optimiser steps), and scores it re-ranking bm25s's top ``--rerank-k`` on
SciFact test (nDCG@10, the same test queries and run for every point). ``uncertainty`` and
``disagreement`` need a student, so their first round is random (the seed round).

Writes ``benchmarks/results/label_budget.{md,json}`` (or ``--out``). A run of the default
settings distils 16 students on CPU; ``--test-queries``, ``--steps`` and ``--budgets`` shrink it.

Usage: ``python benchmarks/label_budget.py [--budgets 500,1000,2000,4000] [--strategies random,uncertainty,diversity]``
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import EXE, RESULTS, SHARED, environment, sh, timing_table, write_json, write_markdown
from reranker.evaluation import evaluate
from reranker.io.dataset import load_dataset
from reranker.io.trec import read_run, write_run
from reranker.records import Qrels


def _point(w: Path, tag: str, budget: int, select: str, qrels: Qrels) -> dict:
    score = evaluate(qrels, read_run(w / f"{tag}.trec"), ["ndcg@10"])
    n_pairs = sum(len(json.loads(line)["candidates"]) for line in (w / f"{tag}.jsonl").read_text().splitlines())
    return {"budget": budget, "labelled_pairs": n_pairs, "selected_with": select, "ndcg@10": next(iter(score.values()))["ndcg@10"]}


def plot(result: dict, path: Path) -> None:
    """nDCG@10 against labelled pairs (log scale), a line per strategy, BM25 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, points in result["curve"].items():
        ax.plot([p["labelled_pairs"] for p in points], [p["ndcg@10"] for p in points], marker="o", label=strategy)
    ax.axhline(result["bm25_ndcg@10"], color="grey", linestyle="--", label="bm25s (first stage)")
    ax.set_xscale("log")
    ax.set_xlabel("teacher-labelled pairs")
    ax.set_ylabel(f"student nDCG@10 (SciFact test, {result['test_queries']} q)")
    ax.set_title("Label budget: which pairs the teacher labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/label-budget"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--budgets", default="500,1000,2000,4000")
    ap.add_argument("--strategies", default="random,uncertainty,diversity")
    ap.add_argument("--teacher", default="ensemble")
    ap.add_argument("--depth", type=int, default=10, help="pool: bm25s top-k per train query")
    ap.add_argument("--pool-queries", type=int, default=0, help="train queries in the pool (0: all 809)")
    ap.add_argument("--test-queries", type=int, default=0, help="test queries to evaluate on (0: all 300)")
    ap.add_argument("--rerank-k", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps per distillation")
    ap.add_argument("--max-length", type=int, default=256, help="student's max tokens per pair (training and scoring)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    scifact = args.shared / "datasets" / "beir" / "scifact.zip"
    budgets = sorted(int(b) for b in args.budgets.split(","))
    strategies = args.strategies.split(",")
    log = w / "timings.json"  # the commands of every run over this work folder, so a resumed run reports them all
    t: list[dict] = json.loads(log.read_text()) if log.exists() else []

    train = load_dataset(scifact, split="train")
    qids = sorted(train.queries)
    if args.pool_queries:
        qids = sorted(random.Random(args.seed).sample(qids, args.pool_queries))
    topics = w / "pool-queries.tsv"
    topics.write_text("".join(f"{q}\t{' '.join(train.queries[q].text.split())}\n" for q in qids), encoding="utf-8")
    pool = w / "pool.trec"
    if not pool.exists():
        sh([EXE, "-q", "retrieve", scifact, "--split", "train", "--queries", topics, "-k", args.depth, "--out", pool], t,
           f"pool: bm25s top {args.depth} of {len(qids)} train queries")
    test = load_dataset(scifact, split="test")
    test_ids = sorted(test.queries)
    if args.test_queries:
        test_ids = sorted(random.Random(args.seed).sample(test_ids, args.test_queries))
    first = w / "bm25-test.trec"
    if not first.exists():
        sh([EXE, "-q", "retrieve", scifact, "-k", args.rerank_k, "--out", w / "bm25-test-all.trec"], t, f"bm25s top {args.rerank_k}, test")
        write_run(first, read_run(w / "bm25-test-all.trec").restrict(test_ids))
    qrels = Qrels(name="test")
    for q in test_ids:
        for d, g in test.require_qrels().get(q, {}).items():
            qrels.add(q, d, g)
    bm25 = evaluate(qrels, read_run(first), ["ndcg@10"])
    curve: dict[str, list[dict]] = {}
    for strategy in strategies:
        store, student, labelled = w / f"{strategy}.sqlite", None, 0
        curve[strategy] = []
        for budget in budgets:
            tag = f"{strategy}-{budget}"
            select = strategy if (student is not None or strategy not in ("uncertainty", "disagreement")) else "random"
            out = w / tag
            if (w / f"{tag}.trec").exists():  # resume: this point was finished by an earlier run
                student, labelled = out / "model", budget
                curve[strategy].append(_point(w, tag, budget, select, qrels))
                continue
            cmd = [EXE, "-q", "label", scifact, "--split", "train", "--queries", topics, "--candidates", pool, "--store", store,
                   "--teacher", args.teacher, "--budget", budget - labelled, "--select", select, "--seed", args.seed,
                   "--export", w / f"{tag}.jsonl"]
            if student is not None and select in ("uncertainty", "disagreement"):
                cmd += ["--student", student]
            sh(cmd, t, f"label {budget - labelled} pairs ({select}) -> {budget}")
            labelled = budget
            sh([EXE, "-q", "distill", "--train", w / f"{tag}.jsonl", "--output-dir", out, "--student", "cross-encoder",
                "--max-steps", args.steps, "--group-size", 8, "--batch-queries", 4, "--lr", 1e-4, "--head-lr", 1e-3,
                "--max-length", args.max_length, "--seed", args.seed, "--resume", "false", "--teacher", args.teacher], t, f"distil ({tag})")
            student = out / "model"
            sh([EXE, "-q", "rerank", scifact, "--model", student, "--run", first, "--top-k", args.rerank_k,
                "--out", w / f"{tag}.trec"], t, f"re-rank test ({tag})")
            curve[strategy].append(_point(w, tag, budget, select, qrels))
            log.write_text(json.dumps(t, indent=1))
            print(json.dumps({strategy: curve[strategy][-1]}), file=sys.stderr, flush=True)

    command = "python benchmarks/label_budget.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = {"command": command, "budgets": budgets, "strategies": strategies, "teacher": args.teacher, "pool_queries": len(qids), "depth": args.depth,
              "test_queries": len(test_ids), "rerank_k": args.rerank_k, "steps": args.steps, "max_length": args.max_length,
              "bm25_ndcg@10": next(iter(bm25.values()))["ndcg@10"], "curve": curve, "timings": t,
              "environment": environment("numpy", "torch", "transformers")}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json("label_budget", result, args.out)
    head = "| strategy | " + " | ".join(f"{b} pairs" for b in budgets) + " |"
    lines = ["# Label-budget curve on SciFact", "", f"Made by `{result['command']}`.", "",
             (f"Student nDCG@10 re-ranking bm25s's top {args.rerank_k} on {len(test_ids)} SciFact test queries (bm25s alone: "
             f"{result['bm25_ndcg@10']:.4f}), against the number of pairs the `{args.teacher}` teacher labelled from a pool of "
             f"bm25s top {args.depth} for {len(qids)} train queries; each point is a fresh cross-encoder student "
             f"(MiniLM-L6, {args.steps} steps of 4 queries x 8 candidates, max length {args.max_length})."), "", head, "|---|" + "---:|" * len(budgets)]
    lines += [f"| {s} | " + " | ".join(f"{p['ndcg@10']:.4f}" for p in curve[s]) + " |" for s in strategies]
    lines += ["", "![nDCG@10 against teacher-labelled pairs](label_budget.png)", "", "## Commands", "", *timing_table(t, w)]
    plot(result, args.out / "label_budget.png")
    write_markdown("label_budget", lines, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
