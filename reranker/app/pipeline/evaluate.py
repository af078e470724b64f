"""The pipeline's evaluation: first stage vs teacher vs student (vs the cascade) on judged data.

The first stage retrieves ``top_k`` candidates for the judged queries; the student (the
serving model: ONNX when exported) and, when asked, the teacher re-rank them. The cascade
re-ranks the first stage's ``student_top_k`` with the student and the student's
``teacher_top_k`` with the teacher (the rest keeps the student's order below them), as the
server's ``/search`` does (:mod:`reranker.app.cascade`), and writes ``cascade.yaml`` for it. Passage
runs over a chunked corpus are folded to documents (best passage) before scoring. Writes
``evaluation/`` (TREC runs, report.md/json) and returns the metrics with the pairs/s of each
re-ranker.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from reranker.app.cascade import cascade_order, student_ranking, teacher_judgements
from reranker.app.pipeline.runner import Context
from reranker.records import Run

log = logging.getLogger(__name__)


def cascade_run(first: Run, student: Run, teacher_scores: Run, student_top_k: int, teacher_top_k: int) -> Run:
    """BM25 -> student on ``student_top_k`` -> teacher on the student's ``teacher_top_k``.

    The teacher's picks rank above the rest (whose order is the student's), as
    :func:`reranker.app.cascade.cascade_order` orders them; scores are offsets that keep that order, for TREC files.
    """
    out = Run(name="cascade")
    for qid in first:
        ranked = student_ranking(_pool(first, qid, student_top_k), student.get(qid, {}))
        order = cascade_order(ranked, teacher_scores.get(qid, {}), teacher_top_k)
        for rank, (doc, _, _) in enumerate(order):
            out.add(qid, doc, float(len(order) - rank))
    return out


def _pool(first: Run, qid: str, student_top_k: int) -> list[str]:
    return [h.doc_id for h in first.ranking(qid)[:student_top_k]]


def _cascade_teacher(teacher, queries, corpus, first: Run, student: Run, cascade) -> Run:
    """The teacher's scores of each query's cascade picks (the student's top ``teacher_top_k`` of the first
    stage's top ``student_top_k``), one call per query, as the server's ``/search`` makes them."""
    from tqdm.auto import tqdm

    out = Run(name="cascade-teacher")
    for qid in tqdm([q for q in first if q in queries], desc="cascade teacher", unit="query", disable=None):
        ranked = student_ranking(_pool(first, qid, cascade.student_top_k), student.get(qid, {}))
        docs = [(doc, corpus.get(doc).contents) for doc, _ in ranked[: cascade.teacher_top_k]]
        for doc, judged in teacher_judgements(teacher, qid, queries[qid].text, docs).items():
            out.add(qid, doc, float(judged.score))
    return out


def write_cascade_config(ctx: Context) -> None:
    """``cascade.yaml``: the evaluated cascade over the pipeline's corpus, for ``reranker serve MODEL --cascade``.

    Paths are absolute (``package:`` specs stay as they are), so the file works from any folder.
    """
    import yaml

    from reranker.app.cascade import CascadeConfig
    from reranker.config import looks_like_path, resolve_path

    spec = ctx.config.corpus
    portable = spec.spec if spec.spec.startswith("package:") or not looks_like_path(spec.spec) \
        else str(resolve_path(spec.spec, ctx.base).resolve())
    ev = ctx.config.evaluate
    teacher, params = ctx.teacher()
    cfg = CascadeConfig(corpus=spec.model_copy(update={"spec": portable, "queries": None, "qrels": None}),
                        first_stage=ev.first_stage, student_top_k=ev.cascade.student_top_k, teacher=teacher,
                        teacher_params=params, teacher_top_k=ev.cascade.teacher_top_k)
    data = cfg.model_dump(exclude_none=True)
    data["corpus"] = {k: v for k, v in data["corpus"].items() if v is not None}
    header = (f"# The cascade that pipeline {ctx.config.name!r} evaluated, over the pipeline's corpus; serve it with\n"
              f"#   reranker serve {ctx.serving_model()[0]} --cascade {ctx.path('cascade.yaml')}\n")
    ctx.path("cascade.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False))


def _timed_rerank(scorer, queries, corpus, run: Run, top_k: int) -> tuple[Run, float]:
    from reranker.rerank import rerank_run

    start = time.perf_counter()
    out = rerank_run(scorer, queries, corpus, run, top_k=top_k)
    pairs = out.num_entries()
    return out, pairs / max(time.perf_counter() - start, 1e-9)


def _teacher_rerank(teacher, queries, corpus, run: Run, top_k: int, batch_pairs: int = 64) -> tuple[Run, float]:
    """``run``'s top ``top_k`` re-scored by the teacher, in batches of whole query groups (a teacher may normalise
    within a query: the ensemble's z-scores); pairs keep their ids and first-stage scores."""
    from tqdm.auto import tqdm

    from teacher.base import Pair
    from teacher.labeling import batches_of_groups

    groups = [[Pair(qid, h.doc_id, queries[qid].text, corpus.get(h.doc_id).contents, h.score) for h in run.ranking(qid)[:top_k]]
              for qid in run if qid in queries]
    start = time.perf_counter()
    out = Run(name="teacher")
    with tqdm(total=sum(map(len, groups)), desc="teacher re-ranking", unit="pair", disable=None) as bar:
        for batch in batches_of_groups(iter(groups), batch_pairs):
            for pair, judged in zip(batch, teacher.score_batch(batch)):
                out.add(pair.query_id, pair.doc_id, float(judged.score))
            bar.update(len(batch))
    return out, out.num_entries() / max(time.perf_counter() - start, 1e-9)


def evaluate_models(ctx: Context) -> dict[str, Any]:
    from reranker.evaluation import compare
    from reranker.io.documents import document_run
    from reranker.io.trec import write_run
    from reranker.retrieval import build_index
    from reranker.scoring import load_model
    from teacher.base import make_teacher

    ev = ctx.config.evaluate
    ds = ctx.data(ev.data)
    queries, qrels = ds.require_queries(), ds.require_qrels()
    queries = {q: v for q, v in queries.items() if q in qrels}
    out_dir = ctx.path("evaluation")
    out_dir.mkdir(parents=True, exist_ok=True)
    retriever = build_index(ds.corpus, ev.first_stage, out_dir / "index", corpus_name=f"{ctx.config.name}-eval")
    depth = max(ev.top_k, ev.cascade.student_top_k if ev.cascade.enabled else 0)
    first = retriever.search_queries(queries, k=depth)
    first.name = ev.first_stage
    runs: dict[str, Run] = {ev.first_stage: first.top_k(ev.top_k)}
    speed: dict[str, float] = {}
    model_dir, options = ctx.serving_model()
    scorer = load_model(model_dir, **options)
    runs["student"], speed["student"] = _timed_rerank(scorer, queries, ds.corpus, first, depth)
    teacher_run = None
    if ev.teacher or ev.cascade.enabled:
        name, params = ctx.teacher()  # the teacher that labelled the run, with its fitted weights
        teacher = make_teacher(name, **params)
        teacher.prepare(ds.corpus)  # e.g. the BM25 statistics of this corpus
        if ev.teacher:
            teacher_run, speed["teacher"] = _teacher_rerank(teacher, queries, ds.corpus, first, ev.top_k)
            runs["teacher"] = teacher_run
        if ev.cascade.enabled:
            teacher_top = _cascade_teacher(teacher, queries, ds.corpus, first, runs["student"], ev.cascade)
            runs["cascade"] = cascade_run(first, runs["student"], teacher_top, ev.cascade.student_top_k, ev.cascade.teacher_top_k)
            write_cascade_config(ctx)
    runs["student"] = runs["student"].restrict(queries).top_k(ev.top_k) if depth != ev.top_k else runs["student"]
    doc_runs = []
    for name, run in runs.items():
        folded = document_run(run, ds.corpus)
        folded.name = name
        write_run(out_dir / f"{name}.trec", folded)
        doc_runs.append(folded)
    cmp = compare(qrels, doc_runs, ev.metrics)
    (out_dir / "report.md").write_text(cmp.to_markdown() + "\n")
    result = {"metrics": cmp.scores, "pairs_per_second": {k: round(v, 1) for k, v in speed.items()},
              "model": str(model_dir.relative_to(ctx.run_dir)), **options, "queries": len(queries)}
    (out_dir / "report.json").write_text(json.dumps({**result, "comparison": cmp.to_dict()}, indent=2) + "\n")
    log.info("evaluation on %d judged queries:\n%s", len(queries), cmp.to_markdown())
    return result
