"""Distil students on SciFact with no human labels, and re-rank BM25's top 100 for the 300 test queries.

The whole path runs through the `reranker` CLI as a user would:

1. synthetic queries for ``--passages`` sampled SciFact passages (extractive: a sentence of
   the passage; the LLM generators are compared on a small sample in teachers.md);
2. candidates (bm25s top ``--depth``) labelled by the offline teacher (the BM25 + MiniLM
   ensemble); groups exported, 90% for training and 10% held out (dev);
3. a cross-encoder student (the packaged all-MiniLM-L6-v2 backbone, new head) and a small
   T5 student (random init from a config, the real T5 tokenizer) distilled from them;
4. BM25 top 100 for the test queries, re-ranked by the teacher and by each student,
   evaluated against the human qrels.

Writes ``benchmarks/results/distill_scifact.{md,json}``.
Usage: ``python benchmarks/distill_scifact.py [--passages 800] [--work /tmp/distill-scifact]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, SHARED, environment, machine_independent, publish, sh, write_json

T5_SMALL = {"d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 2, "num_heads": 8,
            "dropout_rate": 0.1, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/distill-scifact"))
    ap.add_argument("--passages", type=int, default=800)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--ce-epochs", type=float, default=1.0)
    ap.add_argument("--t5-epochs", type=float, default=3.0)
    ap.add_argument("--ce-stop-after", type=int, default=None,
                    help="End the cross-encoder's training at this step of its schedule (a time-boxed run: the schedule stays that of --ce-epochs).")
    ap.add_argument("--reuse", action="store_true", help="Skip steps whose outputs are already in --work (a stopped run goes on).")
    args = ap.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    done = json.loads((w / "timings.json").read_text()) if args.reuse and (w / "timings.json").is_file() else {}

    def step(cmd: list, timings: list[dict], label: str, output: Path) -> None:
        """One step; with --reuse, a step whose output exists keeps its recorded timing."""
        if label in done and output.exists():
            timings.append(done[label])
            print(f"reused: {label}", file=sys.stderr)
            return
        sh(cmd, timings, label)
        done[label] = timings[-1]
        (w / "timings.json").write_text(json.dumps(done, indent=2))

    scifact = str(args.shared / "datasets" / "beir" / "scifact.zip")
    t5_tok = str(args.shared / "tokenizers" / "t5")
    t: list[dict] = []

    step([EXE, "-q", "generate-queries", scifact, "--out", w / "synthetic.jsonl", "--sample", args.passages, "--seed", 0,
        "--stats", w / "gen-stats.json"], t, f"synthetic queries for {args.passages} passages (extractive)", w / "synthetic.jsonl")
    step([EXE, "-q", "label", scifact, "--queries", w / "synthetic.jsonl", "--store", w / "labels.sqlite", "--teacher", "ensemble",
        "-k", args.depth, "--export", w / "groups.jsonl"], t, f"teacher labels: ensemble on bm25s top {args.depth}", w / "groups.jsonl")
    lines = (w / "groups.jsonl").read_text().splitlines()
    random.Random(0).shuffle(lines)
    n_dev = max(1, len(lines) // 10)
    (w / "dev.jsonl").write_text("\n".join(lines[:n_dev]) + "\n")
    (w / "train.jsonl").write_text("\n".join(lines[n_dev:]) + "\n")
    common = ["--train", w / "train.jsonl", "--dev", w / "dev.jsonl", "--group-size", 8, "--batch-queries", 4,
              "--teacher", "ensemble (bm25 + all-MiniLM-L6-v2)", "--resume", "false"]
    stop = ["--stop-after", args.ce_stop_after] if args.ce_stop_after else []
    step([EXE, "-q", "distill", *common, "--output-dir", w / "ce", "--student", "cross-encoder", "--max-length", 256,
        "--epochs", args.ce_epochs, "--lr", 1e-4, "--head-lr", 1e-3, "--eval-every", 50, *stop], t,
        "distil the cross-encoder student (MiniLM-L6)" + (f", stopped after step {args.ce_stop_after}" if stop else ""), w / "ce" / "summary.json")
    step([EXE, "-q", "distill", *common, "--output-dir", w / "t5", "--student", "t5", "--tokenizer", t5_tok,
        "--model-config-overrides", json.dumps(T5_SMALL), "--max-length", 256, "--epochs", args.t5_epochs, "--lr", 1e-3,
        "--eval-every", 100], t, "distil the T5 student (random init, d_model 256)", w / "t5" / "summary.json")
    step([EXE, "-q", "retrieve", scifact, "-k", 100, "--out", w / "bm25.trec"], t, "BM25 (bm25s) top 100, test queries", w / "bm25.trec")
    step([EXE, "-q", "label", scifact, "--candidates", w / "bm25.trec", "--store", w / "test-labels.sqlite", "--teacher", "ensemble",
        "--run-out", w / "teacher.trec"], t, "teacher re-ranks the top 100", w / "teacher.trec")
    for kind, name in (("ce", "cross-encoder"), ("t5", "T5")):  # students re-rank through their ONNX int8 export, as served
        step([EXE, "-q", "export", w / kind / "model", w / kind / "onnx", "--precision", "fp32,int8"], t,
             f"export the {name} student to ONNX (fp32 + int8, parity-checked)", w / kind / "onnx" / "onnx_manifest.json")
        step([EXE, "-q", "rerank", scifact, "--model", w / kind / "onnx", "--run", w / "bm25.trec", "--top-k", 100,
              "--out", w / f"student-{kind}.trec"], t, f"{name} student (ONNX int8) re-ranks the top 100", w / f"student-{kind}.trec")
    sh([EXE, "-q", "evaluate", scifact, w / "bm25.trec", w / "teacher.trec", w / "student-ce.trec", w / "student-t5.trec",
        "-m", "ndcg@10", "-m", "mrr@10", "-m", "recall@10", "--report", w / "report"], t, "evaluate")

    ce = json.loads((w / "ce" / "summary.json").read_text())
    t5 = json.loads((w / "t5" / "summary.json").read_text())
    gen = json.loads((w / "gen-stats.json").read_text())
    report = json.loads((w / "report.json").read_text())
    env = environment("torch", "transformers", "sentence-transformers")
    write_json("distill_scifact", {"report": report, "cross_encoder": ce, "t5": t5, "generation": gen, "timings": t, "env": env}, transform=lambda text: machine_independent(text, w))
    agree = lambda s, k: (s.get(k) or {}).get("teacher_ndcg@10", float("nan"))
    md = [
        "# Distillation on SciFact without human labels",
        "",
        (f"Made by `python benchmarks/distill_scifact.py --passages {args.passages} --depth {args.depth} --ce-epochs {args.ce_epochs} "
        f"--t5-epochs {args.t5_epochs}{f' --ce-stop-after {args.ce_stop_after}' if args.ce_stop_after else ''}` on {time.strftime('%Y-%m-%d')}, on this project's {env['cores']}-core CPU machine "
        f"(torch {env['torch']}, transformers {env['transformers']})."),
        "",
        (f"Training data: {gen['candidates']} extractive synthetic queries for {args.passages} sampled SciFact passages, "
        f"{len(lines)} kept after the filters; each with its bm25s top {args.depth} labelled by the ensemble teacher; "
        f"{len(lines) - n_dev} groups for training, {n_dev} held out. No human label is used until the final evaluation."),
        "",
        "## Re-ranking BM25's top 100, SciFact test (300 queries, human qrels)",
        "",
        Path(f"{w}/report.md").read_text().strip(),
        "",
        "## Agreement with the teacher on the held-out synthetic groups (nDCG@10, gains = teacher labels)",
        "",
        "| student | before training | best | steps (best) | training s |",
        "|---|---:|---:|---:|---:|",
        f"| cross-encoder (MiniLM-L6 backbone) | {agree(ce, 'initial_metrics'):.4f} | {agree(ce, 'best_metrics'):.4f} | {ce['steps']} of {ce.get('total_steps', ce['steps'])} ({ce['best_step']}) | {ce['seconds']:.0f} |",
        f"| T5 (random init, d_model 256) | {agree(t5, 'initial_metrics'):.4f} | {agree(t5, 'best_metrics'):.4f} | {t5['steps']} of {t5.get('total_steps', t5['steps'])} ({t5['best_step']}) | {t5['seconds']:.0f} |",
    ]
    publish("distill_scifact", md, t, w)


if __name__ == "__main__":
    main()
