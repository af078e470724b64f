"""The ensemble teacher on judged data: its members, equal weights, and the weights fitted on synthetic queries.

For each corpus, the pipeline's own recipe (its default settings) writes extractive synthetic queries for a seeded
sample of 1,000 passages, mines each one's bm25s top 8 and holds out 10% of the queries (the pipeline's dev split);
:func:`teacher.fusion.fit_ensemble` fits the members' weights on those groups, with each positive's copied sentence
taken out (the product's default) and, for comparison, without taking it out, and the gate decides whether the
fitted weights replace the equal ones (a cross-fitted paired test on the synthetic groups). No judged query is read
until the evaluation. Then every member scores the first stage's top 100 of the judged queries once, and each weighting re-ranks
it (z-scores within each query, weighted, summed: exactly what the ensemble computes); nDCG@10 against the qrels,
paired t-tests. A sweep of the mix on the judged queries is printed for reading only: it chose nothing.

- ``scifact``: BEIR SciFact test (300 queries), bm25s over the whole corpus (5,183 documents).
- ``cacm``: CACM (52 queries), bm25s over its 3,204 documents.
- ``dl19``: TREC DL 2019 (43 queries), the shared Pyserini BM25 top 100. The corpus at hand is that pool (4,297
  passages), so the synthetic queries and the fit use the pool's statistics, as the pipeline does; on the judged
  queries the BM25 member reads the run's scores (``statistics=first-stage``: Anserini over all of MS MARCO),
  and the pool-statistics member is shown beside it (the distortion the issue found).

Writes ``benchmarks/results/teacher_fusion.{json,md}``.
Usage: ``python benchmarks/teacher_fusion.py [--corpora scifact,cacm,dl19] [--report-only]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, SHARED, environment, write_json, write_markdown  # noqa: E402
from reranker.app.pipeline.config import CandidatesSection, LabelsSection, QueriesSection  # noqa: E402
from reranker.evaluation import compare  # noqa: E402
from reranker.io.dataset import load_dataset  # noqa: E402
from reranker.records import Query, Run  # noqa: E402
from reranker.retrieval import build_index  # noqa: E402
from teacher.backends.normalize import zscores  # noqa: E402
from teacher.base import Pair, make_generator, make_teacher  # noqa: E402
from teacher.fusion import fit_ensemble  # noqa: E402
from teacher.generate import FilterConfig, generate_queries  # noqa: E402
from teacher.labeling import held_out_queries, query_groups  # noqa: E402
from teacher.mining import mine_candidates  # noqa: E402

log = logging.getLogger("teacher_fusion")
SEED = 0
DEPTH = 100


def load(name: str, shared: Path):
    """(judged data set, first-stage run of its judged queries, top 100)."""
    if name == "dl19":
        dl = shared / "datasets" / "trec-dl-2019"
        ds = load_dataset(dl / "bm25-top100.json", qrels=dl / "qrels.txt")
        return ds, ds.run
    path = shared / "datasets" / "beir" / f"{name}.zip"
    ds = load_dataset(path)
    queries = {q: v.text for q, v in ds.require_queries().items() if q in ds.require_qrels()}
    return ds, build_index(ds.corpus, "bm25s").search(queries, k=DEPTH)


def fit_groups(ds):
    """The pipeline's queries, candidates and dev split with its default settings; (dev groups, positives, counts)."""
    q, c, lab = QueriesSection(), CandidatesSection(), LabelsSection()
    filters = FilterConfig(min_words=q.min_words, max_words=q.max_words, keep_top_share=q.keep_top, consistency_k=q.consistency_k)
    result = generate_queries(ds.corpus, make_generator(q.generator), None, n_per_passage=q.per_passage, sample=q.sample,
                              seed=SEED, temperature=q.temperature, max_tokens=q.max_tokens, filters=filters)
    queries = {s.query_id: Query(s.query_id, s.text) for s in result.queries}
    positives = {s.query_id: s.doc_id for s in result.queries}
    retrievers = [build_index(ds.corpus, r) for r in c.retrievers]
    cands = mine_candidates(queries, retrievers, k=c.depth, positives=positives, n_negatives=c.negatives, seed=SEED)
    dev = held_out_queries(cands, lab.dev_share, SEED)
    return list(query_groups(queries, ds.corpus, cands.restrict(dev))), positives, len(queries)


def member_scores(teacher, pairs: list[Pair], batch: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(pairs), batch):
        out += [j.score for j in teacher.score_batch(pairs[i : i + batch])]
    return np.array(zscores(pairs, out))


def fused_run(name: str, pairs: list[Pair], columns: list[np.ndarray], weights) -> Run:
    run = Run(name=name)
    total = sum(w * c for w, c in zip(weights, columns))
    for p, s in zip(pairs, total):
        run.add(p.query_id, p.doc_id, float(s))
    return run


def measure(name: str, shared: Path) -> dict:
    t0 = time.perf_counter()
    ds, first = load(name, shared)
    qrels = ds.require_qrels()
    ens = make_teacher("ensemble")
    ens.prepare(ds.corpus)
    ens.warm_up()
    groups, positives, n_queries = fit_groups(ds)
    fits = {}
    for key, mask in (("fitted", True), ("fitted, query left in", False)):
        _, fit = fit_ensemble(ens, groups, positives, mask_query=mask)
        fits[key] = fit.to_dict()
    fit_s = time.perf_counter() - t0
    queries = ds.require_queries()
    pairs = [Pair(q, h.doc_id, queries[q].text, ds.corpus[h.doc_id].contents, h.score)
             for q in first if q in qrels and q in queries for h in first.ranking(q)[:DEPTH]]
    bm25, bi = (member_scores(m, pairs) for m, _ in ens.members)
    cols = {"bm25": bm25, "bi-encoder": bi}
    if name == "dl19":
        cols = {"bm25 (first-stage scores)": member_scores(make_teacher("bm25", statistics="first-stage"), pairs),
                "bm25 (pool statistics)": bm25, "bi-encoder": bi}
    lex, sem = list(cols.values())[0], cols["bi-encoder"]
    runs = [first.restrict(qrels).top_k(DEPTH)]
    runs[0].name = "first stage"
    runs += [fused_run(f"{k} alone", pairs, [c], [1.0]) for k, c in cols.items()]
    runs.append(fused_run("ensemble, equal weights (1, 1)", pairs, [lex, sem], [1.0, 1.0]))
    for key, fit in fits.items():
        runs.append(fused_run(f"ensemble, {key} ({fit['fitted'][0]:g}, {fit['fitted'][1]:g})", pairs, [lex, sem], fit["fitted"]))
    chosen = fits["fitted"]["weights"]
    runs.append(fused_run(f"ensemble as the pipeline labels ({chosen[0]:g}, {chosen[1]:g})", pairs, [lex, sem], chosen))
    cmp = compare(qrels, runs, ["ndcg@10"])
    log.info("%s:\n%s", name, cmp.to_markdown())
    sweep = {}
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        r = fused_run("sweep", pairs, [lex, sem], [2 * (1 - a), 2 * a])
        sweep[a] = compare(qrels, [r], ["ndcg@10"]).scores["sweep"]["ndcg@10"]
    return {"corpus": name, "judged_queries": len({p.query_id for p in pairs}), "pairs": len(pairs), "synthetic_queries": n_queries,
            "fits": fits, "comparison": cmp.to_dict(), "table": cmp.to_markdown(), "sweep_bi_encoder_share": sweep,
            "seconds": round(time.perf_counter() - t0, 1), "fit_seconds": round(fit_s, 1)}


def report(results: dict, env: dict, argv: str) -> list[str]:
    md = ["# The ensemble teacher: equal weights or weights fitted on synthetic queries", "",
          f"Made by `{('python benchmarks/teacher_fusion.py ' + argv).strip()}` on {env['date']} ({env['cores']} cores, torch {env['torch']}). "
          "Weights are fitted on the pipeline's dev groups of its own extractive synthetic queries (default settings: "
          "1,000 sampled passages, bm25s top 8, 10% held out), never on judged queries; each weighting re-ranks the "
          f"first stage's top {DEPTH} of the judged queries. Weights sum to 2 (the configured total), listed as (BM25, bi-encoder). "
          "'fitted' is the fit alone; 'as the pipeline labels' is the product's choice: the fitted weights only where the "
          "cross-fitted test on the synthetic groups adopts them (p < 0.05), else equal weights.", ""]
    for name, r in results.items():
        md += [f"## {name} ({r['judged_queries']} judged queries, {r['pairs']} pairs; fitted on {r['fits']['fitted']['groups']} "
               f"groups of {r['synthetic_queries']} synthetic queries)", "", r["table"], ""]
        md += ["| fit | fitted (BM25, bi-encoder) | MRR of the source passages: BM25 / bi-encoder / equal weights / fitted "
               "(out of fold) | p (fitted > equal) | adopted |", "|---|---|---|---:|---|"]
        for key, f in r["fits"].items():
            mrr = " / ".join(f"{x:.3f}" for x in (*f["mrr_members"], f["mrr_configured"], f["mrr_fitted"]))
            md.append(f"| {key} | {f['fitted'][0]:g}, {f['fitted'][1]:g} | {mrr} | {f['p_value']:.3g} | {'yes' if f['adopted'] else 'no'} |")
        sweep = ", ".join(f"{float(a):g}: {v:.4f}" for a, v in r["sweep_bi_encoder_share"].items())
        md += ["", f"For reading only (judged queries; chose nothing): nDCG@10 by the bi-encoder's share of the weight: {sweep}.",
               "", f"{r['seconds']:.0f} s (fits {r['fit_seconds']:.0f} s).", ""]
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="scifact,cacm,dl19")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true", help="write the page again from the committed JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.report_only:
        data = json.loads((args.out / "teacher_fusion.json").read_text())
        argv = data["command"].removeprefix("python benchmarks/teacher_fusion.py").strip()
        write_markdown("teacher_fusion", report(data["corpora"], data["environment"], argv), args.out)
        return
    results = {name: measure(name, args.shared) for name in args.corpora.split(",") if name}
    env = {**environment("torch", "sentence_transformers"), "date": time.strftime("%Y-%m-%d")}
    argv = " ".join(a for a in sys.argv[1:] if a != "--out" and not a.startswith("--out=") and a != str(args.out))
    write_json("teacher_fusion", {"environment": env, "command": f"python benchmarks/teacher_fusion.py {argv}".strip(),
                                  "corpora": results}, args.out)
    write_markdown("teacher_fusion", report(results, env, argv), args.out)


if __name__ == "__main__":
    main()
