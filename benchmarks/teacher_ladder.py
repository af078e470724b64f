"""Teacher-quality ladder on SciFact: does the distilled student follow a stronger teacher up?

**A capacity experiment that uses human labels.** Teachers of known, rising quality label the same
training queries, SciFact's *train* split (809 human claims, disjoint from the 300 test claims): the
offline ensemble teacher (BM25 + all-MiniLM-L6-v2 z-scores, the product's default) blended with the
human graded qrels of those training queries at weight ``alpha``::

    teacher score = (1 - alpha) * ensemble z-score sum + alpha * (4 * grade - 2)

(label = the logistic of the score). ``alpha = 0`` is the product's own teacher, ``alpha = 1`` an oracle.
The qrels enter only here: the product's defaults, and their model selection, never read a human label.

For each design (:data:`DESIGNS`), rung and seed a student is distilled from the rung's labels (candidate
pools: bm25s's top ``POOL`` for each training query; 10% of the training queries are held out as the dev
set, labelled by the same rung's teacher) and measured along training: at the fitted start (step 0) and
every ``eval_every`` steps it scores the dev pools and bm25s's top ``TEST_DEPTH`` for the 300 test queries,
keeping the parts of the hybrid score (joint classifier logit, cosine, lexical share) apart. ``report``
turns the stored scores into the figures, on the CPU:

- per rung: the teacher's nDCG@10 on the held-out training queries; the student's test nDCG@10 (mean and
  sd over seeds) at the step each dev criterion keeps, at the last step and at its fitted start; paired
  t-tests (300 queries) of the oracle student against its start and against the alpha = 0 student;
- which part of the final score is learnt: nDCG@10 of the joint term alone and of the (re-trained) formula
  alone, and each part's share of the score's within-query spread;
- model selection: Spearman correlation, over the evaluation points of each run, of each dev criterion
  (listwise KL to the teacher, teacher-graded nDCG@10, ...) with the test nDCG@10.

Steps (each resumable; ``all`` runs the three in turn)::

    python benchmarks/teacher_ladder.py prepare --work W   # CPU: bm25s pools, ensemble labels, the data file
    python benchmarks/teacher_ladder.py label --work W     # the ensemble's scores of the pools (else train makes them)
    python benchmarks/teacher_ladder.py train --work W     # a GPU where there is one (CPU works, slowly)
    python benchmarks/teacher_ladder.py report --work W    # CPU: benchmarks/results/teacher_ladder.{md,json,png}

``train`` needs only torch, transformers, accelerate, pydantic, bm25s and PyStemmer: it reads the data file,
SciFact's zip and a base model folder (``--base-model``), so it can run on a machine with none of the
project's data tools.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALPHAS = (0.0, 0.25, 0.5, 1.0)
POOL = 24  # bm25s candidates per training query: the teacher's group
TEST_DEPTH = 30  # bm25s candidates per test query that the students re-rank
HELD_OUT = 0.1
#: Training settings shared by every cross-encoder row: whole pools as groups, 8 queries a step.
COMMON = {"batch_queries": 8, "group_size": POOL, "max_steps": 150, "eval_every": 25, "warmup_ratio": 0.1, "patience": 1000}
#: One change each: the recipe (``reranker distill``'s defaults), the joint pass learning at a head rate, and the T5
#: student from a random initialisation (no pretrained T5 weights exist on these machines).
DESIGNS: dict[str, dict] = {
    "recipe": {},
    "joint-1e-3": {"head_lr": 1e-3},
    "t5-random": {"student": "t5", "lr": 1e-3, "max_steps": 400, "eval_every": 50,
                  "model_config_overrides": {"d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 2,
                                             "num_heads": 8, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": True}},
    # the same from a smaller random T5 and budget that a 2-core CPU trains in minutes (this machine's row when no GPU is lent)
    "t5-random-cpu": {"student": "t5", "lr": 1e-3, "max_steps": 600, "eval_every": 150, "batch_queries": 8, "group_size": 8, "max_length": 192,
                      "model_config_overrides": {"d_model": 128, "d_ff": 512, "d_kv": 32, "num_layers": 2, "num_decoder_layers": 1,
                                                 "num_heads": 4, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": True}},
}
log = logging.getLogger("teacher_ladder")


def blend(ensemble: float, grade: int, alpha: float) -> float:
    """The rung's teacher score: the ensemble's score and the oracle's ``4 * grade - 2`` mixed at ``alpha``."""
    return (1.0 - alpha) * ensemble + alpha * (4.0 * grade - 2.0)


# ---------------------------------------------------------------------------------------------------- prepare
def prepare(args) -> None:
    from common import EXE, SHARED, sh

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    data = w / "ladder-data.json"
    if data.is_file():
        return
    scifact = str(SHARED / "datasets" / "beir" / "scifact.zip")
    t: list[dict] = []
    for split, k in (("train", POOL), ("test", 100)):
        if not (w / f"{split}-bm25.trec").exists():
            sh([EXE, "-q", "retrieve", scifact, "--split", split, "-k", k, "--out", w / f"{split}-bm25.trec"], t, f"bm25s top {k} ({split})")
    if args.label_here and not (w / "ensemble-groups.jsonl").exists():
        sh([EXE, "-q", "label", scifact, "--split", "train", "--candidates", w / "train-bm25.trec", "--store", w / "labels.sqlite",
            "--teacher", "ensemble", "--export", w / "ensemble-groups.jsonl"], t, "ensemble labels (train pools)")
    from reranker.io.beir import load_beir
    from reranker.io.groups import read_groups
    from reranker.io.trec import read_run

    train_ds, test_ds = load_beir(scifact, "train"), load_beir(scifact, "test")
    ensemble = {}
    if (w / "ensemble-groups.jsonl").exists():
        ensemble = {(g.query_id, c.doc_id): c.score for g in read_groups(w / "ensemble-groups.jsonl") for c in g.candidates}
    train_run, test_run = read_run(w / "train-bm25.trec"), read_run(w / "test-bm25.trec")
    qids = sorted(q for q in train_ds.queries if q in train_run)
    random.Random(0).shuffle(qids)
    held = set(qids[: max(1, round(HELD_OUT * len(qids)))])

    def entry(q):  # [doc id, ensemble score (None: the train step labels it), human grade]
        pool = [[d, ensemble.get((q, d)), int(train_ds.qrels.get(q, {}).get(d, 0))] for d in _top(train_run[q], POOL)]
        return {"qid": q, "query": train_ds.queries[q].text, "pool": pool}

    out = {
        "train": [entry(q) for q in sorted(qids) if q not in held],
        "dev": [entry(q) for q in sorted(qids) if q in held],
        "test": [{"qid": q, "query": test_ds.queries[q].text, "docs": _top(test_run[q], TEST_DEPTH)}
                 for q in sorted(test_ds.queries) if q in test_run],
        "timings": t,
    }
    data.write_text(json.dumps(out))
    log.info("wrote %s: %d train, %d dev, %d test queries", data, len(out["train"]), len(out["dev"]), len(out["test"]))


def _top(ranking: dict[str, float], k: int) -> list[str]:
    """The ``k`` best doc ids of one query's run (score, then id: the order the run file gives)."""
    return sorted(ranking, key=lambda d: (-ranking[d], d))[:k]


# ---------------------------------------------------------------------------------------------------- train
def corpus_texts(zip_path: Path, ids: set[str]) -> dict[str, str]:
    from reranker.io.beir import load_beir

    corpus = load_beir(zip_path, None).corpus
    return {i: corpus[i].contents for i in ids}


def label_with_ensemble(data: dict, args) -> None:
    """Fill in the ensemble teacher's scores of the pools (the product's default teacher, through its own code, on
    this machine's GPU where there is one): BM25 over the whole corpus + all-MiniLM-L6-v2 cosine, per-query z-scores."""
    from reranker.io.beir import load_beir
    from teacher.backends.ensemble import EnsembleTeacher
    from teacher.base import Pair

    t0 = time.perf_counter()
    corpus = load_beir(args.scifact, None).corpus
    teacher = EnsembleTeacher(members=[{"name": "bm25", "weight": 1.0},
                                       {"name": "bi-encoder", "weight": 1.0, "params": {"model": str(args.base_model)}}])
    teacher.prepare(corpus)
    queries = data["train"] + data["dev"]
    for start in range(0, len(queries), 64):
        chunk = queries[start : start + 64]
        pairs = [Pair(q["qid"], d, q["query"], corpus[d].contents) for q in chunk for d, _, _ in q["pool"]]
        scores = iter(j.score for j in teacher.score_batch(pairs))
        for q in chunk:
            q["pool"] = [[d, next(scores), g] for d, _, g in q["pool"]]
    data["labelled_by"] = {"teacher": "ensemble (bm25 + bi-encoder)", "seconds": round(time.perf_counter() - t0, 1), "device": _device()}
    log.info("ensemble labels for %d queries in %.0f s", len(queries), time.perf_counter() - t0)


def write_groups(path: Path, queries: list[dict], texts: dict[str, str], alpha: float) -> None:
    from reranker.scoring import sigmoid

    with path.open("w") as f:
        for q in queries:
            cands = sorted(({"doc_id": d, "text": texts[d], "score": blend(s, g, alpha), "label": sigmoid(blend(s, g, alpha))}
                            for d, s, g in q["pool"]), key=lambda c: -c["score"])
            f.write(json.dumps({"query_id": q["qid"], "query": q["query"], "positive": None, "candidates": cands}) + "\n")


class Probe:
    """Scores fixed (query, document) pairs with a student, its score's parts apart, in sorted batches encoded once."""

    def __init__(self, pairs: list[tuple[str, str]], batch: int = 256):
        self.pairs, self.batch, self.cache = pairs, batch, {}

    def __call__(self, student) -> dict:
        import numpy as np
        import torch

        key = (student.kind, student.tokenizer.name_or_path)
        if key not in self.cache:
            order = sorted(range(len(self.pairs)), key=lambda i: -len(self.pairs[i][0]) - len(self.pairs[i][1]))
            self.cache[key] = [(idx, student.encode([self.pairs[i][0] for i in idx], [self.pairs[i][1] for i in idx]))
                               for idx in (order[s : s + self.batch] for s in range(0, len(order), self.batch))]
        parts: dict[str, np.ndarray] = {}
        device = student.device
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for idx, enc in self.cache[key]:
                enc = {k: v.to(device) for k, v in enc.items()}
                if student.kind == "t5" or student.hybrid is None:
                    got = {"score": student(**enc)}
                else:
                    joint = student.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          token_type_ids=enc["token_type_ids"]).logits[:, 0].float()
                    cos, lex = student.hybrid_features(**enc)
                    h = student.hybrid
                    got = {"joint": joint, "cos": cos.float(), "lex": lex.float()}
                    got["score"] = joint + h.sem_weight.float() * got["cos"] + h.lex_weight.float() * got["lex"]
                for name, v in got.items():
                    parts.setdefault(name, np.zeros(len(self.pairs), dtype=np.float32))[idx] = v.float().cpu().numpy()
        return parts


def train(args) -> None:
    import numpy as np

    from student.train import distill, load_config

    started = time.perf_counter()
    w, out = args.work, args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads((w / "ladder-data.json").read_text())
    ids = {d for q in data["train"] + data["dev"] for d, _, _ in q["pool"]} | {d for q in data["test"] for d in q["docs"]}
    texts = corpus_texts(args.scifact, ids)
    if any(s is None for q in data["train"] + data["dev"] for _, s, _ in q["pool"]):
        label_with_ensemble(data, args)
        (out / "ladder-data.json").write_text(json.dumps(data))
    dev_pairs = [(q["query"], texts[d]) for q in data["dev"] for d, _, _ in q["pool"]]
    test_pairs = [(q["query"], texts[d]) for q in data["test"] for d in q["docs"]]
    probes = {"dev": Probe(dev_pairs), "test": Probe(test_pairs)}
    meta_path, npz_path = out / f"ladder-{args.tag}.json", out / f"ladder-{args.tag}.npz"
    runs, store = load_stored([p for p in (args.resume_from, out) if p])
    # this call rewrites its own files: the runs already in them stay there
    own = set(json.loads(meta_path.read_text())["runs"]) if meta_path.is_file() else set()
    plan = [(d, a, s) for d, a, s in _plan(args) if f"{d}/a{a}/s{s}" not in runs]
    log.info("%d runs to do (%d done before)", len(plan), len(runs))
    last_seconds = 0.0
    for design, alpha, seed in plan:
        tag = f"{design}/a{alpha}/s{seed}"
        if args.deadline and time.perf_counter() - started + 1.2 * last_seconds > args.deadline:
            log.warning("stopping before %s: the deadline (%s s) would pass", tag, args.deadline)
            break
        t0 = time.perf_counter()
        run_dir = w / "runs" / tag.replace("/", "-")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_groups(run_dir / "train.jsonl", data["train"], texts, alpha)
        settings = {**COMMON, **DESIGNS[design]}
        settings.update({k: v for k, v in (("max_steps", args.max_steps), ("eval_every", args.eval_every)) if v})
        if settings.get("student") == "t5":
            settings["tokenizer"] = str(args.t5_tokenizer)
        cfg = load_config(None, train=run_dir / "train.jsonl", output_dir=run_dir / "out", base_model=str(args.base_model), seed=seed,
                          resume=False, teacher=f"ensemble + qrels, alpha {alpha}", **settings)
        points: list[dict] = []

        def on_evaluate(step: int, student, tag=tag, points=points, store=store) -> None:
            e0 = time.perf_counter()
            point = {"step": step}
            if getattr(student, "hybrid", None) is not None:
                point.update(sem_weight=float(student.hybrid.sem_weight), lex_weight=float(student.hybrid.lex_weight))
            for split, probe in probes.items():
                for part, values in probe(student).items():
                    store[f"{tag}/{step}/{split}/{part}"] = values
            point["eval_seconds"] = round(time.perf_counter() - e0, 2)
            points.append(point)
            log.info("%s step %d probed in %.1f s", tag, step, point["eval_seconds"])

        import shutil

        shutil.rmtree(run_dir / "out", ignore_errors=True)
        summary = distill(cfg, progress=False, on_evaluate=on_evaluate)
        last_seconds = time.perf_counter() - t0
        runs[tag] = {"design": design, "alpha": alpha, "seed": seed, "points": points, "train_seconds": round(summary["seconds"], 1),
                     "seconds": round(last_seconds, 1), "head_init": summary.get("head_init"), "bf16": summary.get("bf16"),
                     "loss": [h["loss"] for h in summary["history"]], "settings": {k: v for k, v in settings.items() if k != "tokenizer"}}
        own.add(tag)
        np.savez_compressed(npz_path, **{k: v for k, v in store.items() if "/".join(k.split("/")[:3]) in own})
        meta_path.write_text(json.dumps({"runs": {k: v for k, v in runs.items() if k in own}, "device": _device()}, indent=1))
        log.info("%s done in %.0f s", tag, last_seconds)
        shutil.rmtree(run_dir, ignore_errors=True)


def load_stored(folders: list[Path]) -> tuple[dict, dict]:
    """The runs (``ladder-*.json``) and their scores (``ladder-*.npz``) stored in ``folders`` by earlier calls."""
    import numpy as np

    runs, store = {}, {}
    for folder in folders:
        for meta in sorted(Path(folder).glob("ladder-*.json")):
            if meta.name == "ladder-data.json":
                continue
            stored = json.loads(meta.read_text())
            runs.update({k: {"device": stored.get("device"), **v} for k, v in stored["runs"].items()})
            if meta.with_suffix(".npz").is_file():
                store.update(dict(np.load(meta.with_suffix(".npz"))))
    return runs, store


def _plan(args) -> list[tuple[str, float, int]]:
    """The runs, the questions that matter most first (a time-boxed call does the first ones): each design at the
    ends of the ladder (alpha 0 and 1), then the middle rungs; the T5 student after the cross-encoder's main rows."""
    designs = args.designs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    ends = [a for a in alphas if a in (0.0, 1.0)]
    mids = [a for a in alphas if a not in ends]
    ce = [d for d in designs if DESIGNS[d].get("student", "cross-encoder") == "cross-encoder"]
    t5 = [d for d in designs if d not in ce]
    plan = [(d, a, s) for s in seeds for d in ce for a in ends]
    plan += [(d, a, s) for s in seeds for d in ce[:1] for a in mids]
    plan += [(d, a, s) for s in seeds[:1] for d in t5 for a in sorted(ends, reverse=True)]
    plan += [(d, a, s) for s in seeds for d in ce[1:] for a in mids]
    plan += [(d, a, s) for s in seeds[1:] for d in t5 for a in sorted(ends, reverse=True)]
    return plan


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    from common import SHARED

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "label", "train", "report", "all"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/teacher-ladder"))
    ap.add_argument("--out", type=Path, help="train: where the stored scores go (default: WORK)")
    ap.add_argument("--resume-from", type=Path, help="train: a folder of an earlier call's stored scores; its runs are not redone")
    ap.add_argument("--scifact", type=Path, default=SHARED / "datasets" / "beir" / "scifact.zip")
    ap.add_argument("--base-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--t5-tokenizer", type=Path, default=SHARED / "tokenizers" / "t5")
    ap.add_argument("--designs", default="joint-1e-3,recipe,t5-random")
    ap.add_argument("--alphas", default=",".join(str(a) for a in ALPHAS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--label-here", action="store_true", help="prepare: label the pools with the ensemble here (`reranker label`); "
                    "else the train step labels them with the same teacher code on its own machine")
    ap.add_argument("--max-steps", type=int, help="train: steps of every run instead of the designs' own (a quick check)")
    ap.add_argument("--eval-every", type=int, help="train: evaluation points every this many steps instead of the designs' own")
    ap.add_argument("--tag", default="main", help="train: names this call's files (ladder-TAG.json/.npz); parallel calls need their own")
    ap.add_argument("--deadline", type=float, help="train: start no run that would end after this many seconds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.step in ("prepare", "all"):
        prepare(args)
    if args.step == "label":  # the pools' ensemble scores, once, before parallel train calls (train does it when they are missing)
        data = json.loads((args.work / "ladder-data.json").read_text())
        label_with_ensemble(data, args)
        for folder in {args.work, args.out or args.work}:
            (folder / "ladder-data.json").write_text(json.dumps(data))
    if args.step in ("train", "all"):
        train(args)
    if args.step in ("report", "all"):
        from ladder_report import report

        report(args)


if __name__ == "__main__":
    main()
