"""The pipeline's stages: corpus -> synthetic queries -> candidates -> teacher labels -> student -> ONNX -> evaluation -> promotion.

Each stage reads what the stages before it wrote into the run folder and writes its own
files there (see :data:`STAGE_LIST` for which). Library functions do the work; this module
only wires them together.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from reranker.app.pipeline.runner import Context, Stage
from reranker.config import DataSpec
from reranker.errors import RerankerError

log = logging.getLogger(__name__)


def _feedback(ctx: Context):
    from reranker.app.pipeline.feedback import read_feedback

    if not ctx.config.feedback:
        return []
    path = Path(ctx.config.feedback).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        log.info("no feedback yet at %s", path)
        return []
    return read_feedback(path)


# --- queries ------------------------------------------------------------------------------


def stage_queries(ctx: Context) -> dict[str, Any]:
    from teacher.base import make_generator
    from teacher.generate import FilterConfig, SeedPair, generate_queries, write_synthetic

    q = ctx.config.queries
    corpus = ctx.data(ctx.config.corpus).corpus
    gen = make_generator(q.generator, **q.params)
    seeds = None
    if q.use_feedback_as_seeds and not gen.takes_documents:
        judged = [f for f in _feedback(ctx) if f.label >= 0.5 and corpus.get(f.doc_id) is not None]
        seeds = [SeedPair(f.query, corpus.get(f.doc_id).contents) for f in judged][:8] or None
    filters = FilterConfig(min_words=q.min_words, max_words=q.max_words, keep_top_share=q.keep_top, consistency_k=q.consistency_k)
    result = generate_queries(corpus, gen, q.prompt, n_per_passage=q.per_passage, sample=q.sample, seed=ctx.config.seed,
                              temperature=q.temperature, max_tokens=q.max_tokens, filters=filters, seeds=seeds)
    write_synthetic(ctx.path("queries.jsonl"), result)
    ctx.path("queries-stats.json").write_text(json.dumps(result.stats, indent=2) + "\n")
    return {"queries": len(result.queries), "passages": result.stats.get("passages"), "seeds": len(seeds or [])}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _training_queries(ctx: Context):
    """Synthetic queries plus the feedback's queries (a feedback query with a synthetic query's text is that query)."""
    from reranker.io.dataset import read_queries_file
    from reranker.records import Query

    queries, positives = read_queries_file(ctx.path("queries.jsonl"))
    by_text = {_norm(q.text): qid for qid, q in queries.items()}
    for fb in _feedback(ctx):
        qid = by_text.setdefault(_norm(fb.query), fb.query_id)
        queries.setdefault(qid, Query(qid, fb.query))
        if fb.label >= 0.5:
            positives.setdefault(qid, fb.doc_id)
    return queries, positives


def _feedback_pairs(ctx: Context, queries) -> list[tuple[str, str, float]]:
    """``(query id, doc id, label)`` of each feedback record, with the ids :func:`_training_queries` gave its query."""
    by_text = {_norm(q.text): qid for qid, q in queries.items()}
    return [(by_text[_norm(fb.query)], fb.doc_id, fb.label) for fb in _feedback(ctx) if _norm(fb.query) in by_text]


# --- candidates ---------------------------------------------------------------------------


def stage_candidates(ctx: Context) -> dict[str, Any]:
    from reranker.io.trec import write_run
    from reranker.retrieval import build_index
    from teacher.mining import mine_candidates

    c = ctx.config.candidates
    corpus = ctx.data(ctx.config.corpus).corpus
    queries, positives = _training_queries(ctx)
    retrievers = [build_index(corpus, name, ctx.path("index", name), corpus_name=ctx.config.name) for name in c.retrievers]
    run = mine_candidates(queries, retrievers, k=c.depth, positives=positives, n_negatives=c.negatives, seed=ctx.config.seed)
    for qid, doc_id, _ in _feedback_pairs(ctx, queries):  # judged pairs are always labelled, whatever the retrievers found
        if corpus.get(doc_id) is not None and doc_id not in run.get(qid, {}):
            run.add(qid, doc_id, -1e9)
    write_run(ctx.path("candidates.trec"), run)
    return {"queries": len(run), "pairs": run.num_entries()}


# --- labels -------------------------------------------------------------------------------


def stage_labels(ctx: Context) -> dict[str, Any]:
    """Label the candidates with the teacher (an ensemble's weights fitted first, on the dev queries' groups), export the
    groups and split them into train and dev by query; ``teacher.json`` says which teacher labelled them, with what."""
    from reranker.io.trec import read_run
    from teacher.backends.ensemble import EnsembleTeacher
    from teacher.base import make_teacher, write_teacher_file
    from teacher.fusion import fit_on_queries
    from teacher.labeling import held_out_queries, label_pairs
    from teacher.store import LabelStore

    lab = ctx.config.labels
    corpus = ctx.data(ctx.config.corpus).corpus
    queries, positives = _training_queries(ctx)
    candidates = read_run(ctx.path("candidates.trec"))
    dev_ids = held_out_queries(candidates, lab.dev_share, ctx.config.seed)
    teacher = make_teacher(lab.teacher, **lab.params)
    fit = None
    if lab.fit_weights and isinstance(teacher, EnsembleTeacher):
        teacher, fit = fit_on_queries(teacher, queries, positives, corpus, candidates, dev_ids)
    write_teacher_file(ctx.path("teacher.json"), lab.teacher, teacher.params if fit else dict(lab.params), fit.to_dict() if fit else None)
    figures = {"weights": fit.weights, "fit_adopted": fit.adopted, "fit_p": float(f"{fit.p_value:.3g}"), "fit_groups": fit.groups,
               "fit_mrr": [round(fit.mrr_configured, 4), round(fit.mrr_fitted, 4)]} if fit else {}
    with LabelStore(ctx.path("labels.sqlite")) as store:
        report = label_pairs(teacher, queries, corpus, candidates, store, batch_pairs=lab.batch_pairs, retries=lab.retries)
        store.export_groups(ctx.path("groups.jsonl"), teacher.fingerprint, teacher.prompt_version, queries, corpus, positives or None)
    overridden = _apply_feedback(_feedback_pairs(ctx, queries), ctx.path("groups.jsonl"))
    lines = ctx.path("groups.jsonl").read_text().splitlines()
    dev = [line for line in lines if json.loads(line)["query_id"] in dev_ids]
    train = [line for line in lines if json.loads(line)["query_id"] not in dev_ids]
    ctx.path("train.jsonl").write_text("".join(line + "\n" for line in train))
    ctx.path("dev.jsonl").write_text("".join(line + "\n" for line in dev))
    return {"teacher": teacher.fingerprint, "pairs_labelled": report.labelled, "pairs_resumed": report.skipped,
            "pairs_per_second": round(report.pairs_per_second, 2), "groups": len(lines), "train_groups": len(train),
            "dev_groups": len(dev), "feedback_labels": overridden, **figures}


def _apply_feedback(pairs: list[tuple[str, str, float]], groups_path: Path) -> int:
    """Feedback judgements replace the teacher's label of their pair (they are the user's own ground truth)."""
    judged = {(qid, doc_id): label for qid, doc_id, label in pairs}
    if not judged:
        return 0
    out, n = [], 0
    for line in groups_path.read_text().splitlines():
        group = json.loads(line)
        for cand in group["candidates"]:
            label = judged.get((group["query_id"], cand["doc_id"]))
            if label is not None:
                cand["label"], n = label, n + 1
        out.append(json.dumps(group, ensure_ascii=False))
    groups_path.write_text("".join(line + "\n" for line in out))
    return n


# --- distill, export ----------------------------------------------------------------------


def stage_distill(ctx: Context) -> dict[str, Any]:
    from reranker.config import resolve_path
    from student.train import distill, load_config

    options = dict(ctx.config.distill)
    if options.get("tokenizer"):
        options["tokenizer"] = str(resolve_path(options["tokenizer"], ctx.base))
    options.setdefault("seed", ctx.config.seed)
    options.setdefault("teacher", ctx.config.labels.teacher)
    cfg = load_config(train=ctx.path("train.jsonl"), dev=ctx.path("dev.jsonl"), output_dir=ctx.path("student"), resume=True, **options)
    summary = distill(cfg)
    return {k: summary.get(k) for k in ("steps", "best_step", "best_metrics", "initial_metrics", "seconds")}


def stage_export(ctx: Context) -> dict[str, Any]:
    from student.export import export_student
    from student.parity import load_parity_sample

    e = ctx.config.export
    # the user's own pairs (held-out synthetic groups, else the training groups) check parity and, with auto, choose the precision
    own = next((f for f in (ctx.path("dev.jsonl"), ctx.path("train.jsonl")) if f.is_file() and f.stat().st_size), None)
    sample = load_parity_sample(own, 128) if own is not None else None
    manifest = export_student(ctx.path("student", "model"), ctx.path("onnx"), precisions=e.precisions, int8_method=e.int8_method,
                              parity=sample, max_ndcg_drop=e.max_ndcg_drop)
    out: dict[str, Any] = {name: {"bytes": m.bytes, "optimized": m.optimized, "parity": m.parity.model_dump() if m.parity else None}
                           for name, m in manifest.models.items()}
    if manifest.choice is not None:
        out["choice"] = manifest.choice.model_dump()
    if manifest.layout == "separated" and e.passage_states:
        out["passage_states"] = _store_passage_states(ctx)
    return out


def _store_passage_states(ctx: Context) -> dict[str, Any]:
    """The corpus's passage states for the graph the serving scorer loads, in ``onnx/passage_states``."""
    import time

    from reranker.onnx_runtime import build_passage_store, load_onnx
    from reranker.passage_cache import STORE_DIR

    folder, options = ctx.serving_model()
    scorer = load_onnx(folder, cache_entries=0, **options)
    start = time.perf_counter()
    texts = [d.contents for d in ctx.data(ctx.config.corpus).corpus]
    _, total = build_passage_store(scorer, texts, folder / STORE_DIR)
    return {"passages": total, "precision": scorer.precision, "seconds": round(time.perf_counter() - start, 1)}


# --- evaluate, promote --------------------------------------------------------------------


def stage_evaluate(ctx: Context) -> dict[str, Any]:
    from reranker.app.pipeline.evaluate import evaluate_models

    return evaluate_models(ctx)


def stage_promote(ctx: Context) -> dict[str, Any]:
    from reranker.app.pipeline.promote import promote

    return promote(ctx)


def _checksums(ctx: Context, *specs: DataSpec | None, feedback: bool = False) -> dict[str, str | None]:
    """Checksums of the local files a stage reads, so that an edited corpus or new feedback reruns it."""
    from reranker.config import looks_like_path, resolve_path
    from reranker.io.files import sha256

    out: dict[str, str | None] = {}
    for spec in specs:
        for value in (spec.spec, spec.queries, spec.qrels) if spec else ():
            if value and looks_like_path(value):
                path = resolve_path(value, ctx.base)
                out[value] = sha256(path) if path.exists() else None
    if feedback and ctx.config.feedback:
        path = Path(ctx.config.feedback).expanduser()
        path = path if path.is_absolute() else Path.cwd() / path
        out["feedback"] = sha256(path) if path.is_file() else None
    return out


#: the stages in their order: the one list of their names, outputs and inputs
STAGE_LIST = [
    Stage("queries", ("queries.jsonl", "queries-stats.json"), stage_queries,
          lambda c: {"corpus": c.corpus, "queries": c.queries, "seed": c.seed, "feedback": c.feedback},
          inputs=lambda ctx: _checksums(ctx, ctx.config.corpus, feedback=True)),
    Stage("candidates", ("candidates.trec", "index"), stage_candidates, lambda c: c.candidates,
          inputs=lambda ctx: _checksums(ctx, feedback=True)),
    # labels.sqlite is not an output but a cache: teacher labels are paid for, and a rerun with other
    # inputs (new feedback, more queries) reuses every pair labelled before by the same teacher and prompt
    Stage("labels", ("groups.jsonl", "train.jsonl", "dev.jsonl", "teacher.json"), stage_labels, lambda c: c.labels,
          inputs=lambda ctx: _checksums(ctx, feedback=True)),
    Stage("distill", ("student",), stage_distill, lambda c: c.distill_settings()),
    Stage("export", ("onnx",), stage_export, lambda c: c.export, enabled=lambda cfg: cfg.export.enabled),
    Stage("evaluate", ("evaluation", "cascade.yaml"), stage_evaluate, lambda c: c.evaluate,
          enabled=lambda cfg: cfg.evaluate.data is not None, inputs=lambda ctx: _checksums(ctx, ctx.config.evaluate.data)),
    Stage("promote", ("promotion.json",), stage_promote, lambda c: c.promote, enabled=lambda cfg: cfg.promote.enabled),
]


def check_stage(name: str | None) -> None:
    if name is not None and name not in {s.name for s in STAGE_LIST}:
        raise RerankerError(f"no stage {name!r}; the stages are {', '.join(s.name for s in STAGE_LIST)}")
