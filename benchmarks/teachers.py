"""Offline teachers on SciFact: how well each one ranks, and how fast it labels, on this machine.

For the 300 SciFact test queries, bm25s retrieves the top ``--depth`` (20) candidates; each
teacher labels every pair through the real labelling path (label store included), and its
scores re-rank the candidates, evaluated with nDCG@10 against the human qrels. Slow LLM
teachers run on a fixed sample of queries (``--sample``), with BM25 on the same sample
beside them. A second table measures synthetic query generation on sampled SciFact
passages: how many queries each filter keeps, and how often the source passage is in
BM25's top 10. Writes ``benchmarks/results/teachers.{md,json}``.

Usage: ``python benchmarks/teachers.py [--teachers bm25,bi-encoder,ensemble,llama-cpp] [--sample 40]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, SHARED, environment, write_json, write_markdown  # noqa: E402
from reranker.evaluation import evaluate  # noqa: E402
from reranker.io.dataset import load_dataset  # noqa: E402
from reranker.retrieval import build_index  # noqa: E402
from teacher.base import make_generator, make_teacher  # noqa: E402
from teacher.generate import FilterConfig, generate_queries  # noqa: E402
from teacher.labeling import label_pairs  # noqa: E402
from teacher.mining import mine_candidates  # noqa: E402
from teacher.store import LabelStore  # noqa: E402

TEACHERS = {
    "bm25": ("bm25", {}),
    "bi-encoder": ("bi-encoder", {}),
    "ensemble": ("ensemble", {}),
    "llama-cpp": ("llama-cpp", {}),
}
SLOW = {"llama-cpp"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--teachers", default="bm25,bi-encoder,ensemble,llama-cpp")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--sample", type=int, default=40, help="queries for the slow (LLM) teachers")
    ap.add_argument("--gen-passages", type=int, default=100, help="passages for the query-generation table")
    ap.add_argument("--generators", default="extractive,llama-cpp")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    ds = load_dataset(args.shared / "datasets" / "beir" / "scifact.zip")
    qrels = ds.require_qrels()
    bm25 = build_index(ds.corpus, "bm25s")
    cands = mine_candidates(ds.queries, [bm25], k=args.depth)
    sample = sorted(random.Random(0).sample(sorted(ds.queries), args.sample))
    rows, work = [], Path(tempfile.mkdtemp(prefix="teachers-"))
    for key in [t for t in args.teachers.split(",") if t]:
        name, params = TEACHERS[key]
        qids = sample if key in SLOW else list(ds.queries)
        sub = cands.restrict(qids)
        teacher = make_teacher(name, **params)
        with LabelStore(work / f"{key}.sqlite") as store:
            t0 = time.perf_counter()
            teacher.prepare(ds.corpus)
            teacher.warm_up()
            load_s = time.perf_counter() - t0
            report = label_pairs(teacher, ds.queries, ds.corpus, sub, store, batch_pairs=args.depth * 4)
            run = store.as_run(teacher.fingerprint, teacher.prompt_version)
        run.name = key
        base = cands.restrict(qids)
        base.name = "bm25 (first stage)"
        q = type(qrels)({k: v for k, v in qrels.items() if k in qids}, name="scifact/test")
        scores = evaluate(q, [base, run], ["ndcg@10"])
        rows.append({
            "teacher": key, "fingerprint": teacher.fingerprint, "prompt": teacher.prompt_version,
            "queries": len(qids), "pairs": report.pairs, "ndcg@10": scores[key]["ndcg@10"],
            "bm25_same_queries": scores["bm25 (first stage)"]["ndcg@10"],
            "pairs_per_s": report.pairs_per_second, "load_s": load_s, "label_s": report.seconds,
        })
        print(json.dumps(rows[-1]), flush=True)

    gen_rows = []
    passages = sorted(random.Random(1).sample(ds.corpus.ids(), args.gen_passages))
    from reranker.records import Corpus

    sub_corpus = Corpus(ds.corpus[d] for d in passages)
    for g in [x for x in args.generators.split(",") if x]:
        gen = make_generator(g)
        t0 = time.perf_counter()
        res = generate_queries(sub_corpus, gen, None, n_per_passage=1, seed=0, filters=FilterConfig(consistency_k=10), retriever=bm25)
        gen_rows.append({"generator": g, "seconds": time.perf_counter() - t0, "stats": res.stats,
                         "examples": [{"doc_id": s.doc_id, "query": s.text} for s in res.queries[:5]]})
        print(json.dumps(gen_rows[-1]["stats"]), flush=True)

    env = environment("torch", "sentence-transformers", "bm25s")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json("teachers", {"teachers": rows, "generation": gen_rows, "env": env,
                                                         "depth": args.depth, "sample": sample}, args.out)
    md = [
        "# Offline teachers on SciFact",
        "",
        f"Made by `python benchmarks/teachers.py --teachers {args.teachers} --depth {args.depth} --sample {args.sample} "
        f"--gen-passages {args.gen_passages} --generators {args.generators}` on {time.strftime('%Y-%m-%d')}, "
        f"on this project's {env['cores']}-core CPU machine (torch {env['torch']}).",
        "",
        f"Re-ranking the bm25s top {args.depth} of the SciFact test queries; each teacher's scores order the candidates,",
        "nDCG@10 against the human qrels. LLM teachers ran on a fixed sample of queries (seed 0); the BM25 column is",
        "the first stage on the same queries. pairs/s is the labelling loop's rate (model loading excluded, in 'load s').",
        "",
        "| teacher | prompt | queries | pairs | nDCG@10 | BM25 nDCG@10, same queries | pairs/s | load s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['teacher']} | {r['prompt']} | {r['queries']} | {r['pairs']} | {r['ndcg@10']:.4f} | {r['bm25_same_queries']:.4f} "
          f"| {r['pairs_per_s']:.1f} | {r['load_s']:.1f} |" for r in rows],
        "",
        f"## Synthetic queries for {args.gen_passages} sampled SciFact passages (one per passage)",
        "",
        "| generator | seconds | generated | after length | after dedup | after log-prob | after consistency (BM25 top 10) | source in BM25 top 10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in gen_rows:
        outs = {f["filter"]: f["out"] for f in g["stats"]["filters"]}
        md.append(f"| {g['generator']} | {g['seconds']:.0f} | {g['stats']['candidates']} | {outs.get('length')} | {outs.get('dedup')} "
                  f"| {outs.get('logprob')} | {outs.get('consistency')} | {g['stats']['source_in_bm25_top10']} |")
    md += ["", "Examples (first kept queries):", ""]
    for g in gen_rows:
        md += [f"- {g['generator']}: " + "; ".join(f"\"{e['query']}\"" for e in g["examples"][:3])]
    write_markdown("teachers", md, args.out)
    print("\n".join(md))


if __name__ == "__main__":
    main()
