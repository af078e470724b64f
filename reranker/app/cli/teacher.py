"""The teacher's commands, registered on the ``reranker`` CLI: ``generate-queries`` and ``label``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from reranker.app.cli.options import ParamOpt, params_of

log = logging.getLogger("reranker")

def label(
    dataset: Annotated[str, typer.Argument(help="Data set spec (the corpus; its queries unless --queries is given).")],
    store: Annotated[Path, typer.Option(help="Label store (SQLite) to write; a rerun resumes it.")],
    teacher: Annotated[str, typer.Option(help="Teacher backend: ensemble, bm25, bi-encoder, cross-encoder, hf, llama-cpp, openai, vllm.")] = "ensemble",
    param: ParamOpt = None,
    teacher_file: Annotated[Path | None, typer.Option(help="A teacher as JSON ({\"teacher\": NAME, \"params\": {...}}), e.g. a pipeline run's teacher.json (the ensemble with its fitted weights); replaces --teacher, -p adds to its params.")] = None,
    fit_weights: Annotated[bool, typer.Option(help="An ensemble's member weights checked first on a held-out share of the synthetic queries (their source passages; adopted only when significantly better), as the pipeline does; needs --queries from generate-queries.")] = False,
    fit_share: Annotated[float, typer.Option(min=0.01, max=0.99, help="With --fit-weights: the share of queries held out for the check.")] = 0.1,
    teacher_out: Annotated[Path | None, typer.Option(help="Write the teacher as it labelled (name, params, the weight check) as JSON, for --teacher-file.")] = None,
    queries: Annotated[Path | None, typer.Option(help="Queries to label (JSONL, e.g. from generate-queries, or qid<TAB>text).")] = None,
    candidates: Annotated[Path | None, typer.Option(help="TREC run of candidates; else mined with --retriever.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Candidates per query when mining.")] = 20,
    retriever: Annotated[list[str] | None, typer.Option(help="First stage for mining (repeatable: fused with RRF).")] = None,
    negatives: Annotated[int | None, typer.Option(help="Keep the positive plus this many sampled hard negatives.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for negative sampling.")] = 0,
    batch_pairs: Annotated[int, typer.Option(help="Pairs per teacher batch (whole query groups).")] = 64,
    retries: Annotated[int, typer.Option(help="Retries of a failing batch before the run stops.")] = 2,
    export: Annotated[Path | None, typer.Option(help="Also write the student's training groups (JSONL) here.")] = None,
    save_candidates: Annotated[Path | None, typer.Option(help="Write the mined candidates as a TREC run.")] = None,
    run_out: Annotated[Path | None, typer.Option(help="Write the teacher's scores as a TREC run (the teacher as a re-ranker).")] = None,
    split: Annotated[str, typer.Option(help="BEIR split.")] = "test",
    budget: Annotated[int | None, typer.Option(help="Send at most this many new pairs to the teacher (chosen by --select).")] = None,
    select: Annotated[str, typer.Option(help="With --budget: random, uncertainty, disagreement (need --student), diversity or top-rank.")] = "random",
    student: Annotated[Path | None, typer.Option(help="Current student (model folder) for uncertainty / disagreement selection.")] = None,
    query_encoder: Annotated[str, typer.Option(help="Query embeddings for diversity: auto, minilm or tfidf.")] = "auto",
):
    """Label query–candidate pairs with a teacher's soft labels, into a resumable label store."""
    from reranker.io.dataset import load_dataset, read_queries_file
    from reranker.io.trec import read_run, write_run
    from reranker.retrieval import build_index
    from teacher.base import make_teacher, read_teacher_file, write_teacher_file
    from teacher.labeling import label_pairs
    from teacher.mining import mine_candidates
    from teacher.store import LabelStore

    ds = load_dataset(dataset, split=split)
    qs, positives = read_queries_file(queries) if queries else (ds.require_queries(), {})
    if teacher_file is not None:
        teacher, base = read_teacher_file(teacher_file)
        t = make_teacher(teacher, **{**base, **params_of(param)})
    else:
        t = make_teacher(teacher, **params_of(param))
    if candidates is not None:
        cands = read_run(candidates).restrict(qs)
    else:
        rs = [build_index(ds.corpus, name) for name in (retriever or ["bm25s"])]
        cands = mine_candidates(qs, rs, k=k, positives=positives, n_negatives=negatives, seed=seed)
    if save_candidates is not None:
        write_run(save_candidates, cands)
    fit = None
    if fit_weights:
        t, fit = _fit_weights(t, qs, positives, ds.corpus, cands, fit_share, seed)
    if teacher_out is not None:
        write_teacher_file(teacher_out, t.name, t.params, fit.to_dict() if fit else None)
    with LabelStore(store) as st:
        if budget is not None:
            cands = _select(cands, budget, select, student, query_encoder, qs, ds.corpus, st, t, seed)
        report = label_pairs(t, qs, ds.corpus, cands, st, batch_pairs=batch_pairs, retries=retries)
        if run_out is not None:
            from reranker.io.trec import write_run

            teacher_run = st.as_run(t.fingerprint, t.prompt_version).restrict(cands)
            teacher_run.name = teacher
            write_run(run_out, teacher_run)
        if export is not None:
            n = st.export_groups(export, t.fingerprint, t.prompt_version, qs, ds.corpus, positives or None)
            typer.echo(f"exported {n} training groups to {export}")
    typer.echo(
        f"labelled {report.labelled} pairs ({report.skipped} already in {store}) for {report.queries} queries "
        f"with {t.fingerprint} in {report.seconds:.1f} s ({report.pairs_per_second:.1f} pairs/s)"
    )


def _fit_weights(t, queries, positives, corpus, candidates, share: float, seed: int):
    from reranker.errors import RerankerError
    from teacher.backends.ensemble import EnsembleTeacher
    from teacher.fusion import fit_on_queries
    from teacher.labeling import held_out_queries

    if not isinstance(t, EnsembleTeacher):
        raise RerankerError(f"--fit-weights weighs an ensemble's members; the {t.name} teacher has none")
    if not positives:
        raise RerankerError("--fit-weights needs queries with their source passages (--queries from generate-queries: a doc_id per query)")
    fitted, fit = fit_on_queries(t, queries, positives, corpus, candidates, held_out_queries(candidates, share, seed))
    if fit is None:
        typer.echo("too few held-out queries hold their source passage among their candidates: the configured weights stay", err=True)
    else:
        typer.echo(f"ensemble weights {fit.weights} ({'fitted' if fit.adopted else 'configured'}; fitted {fit.fitted}, p = {fit.p_value:.3g}, "
                   f"{fit.groups} held-out groups)")
    return fitted, fit


def _student_scores(model_dir: Path, queries, corpus, candidates):
    """The student's scores for every candidate pair (a torch or ONNX student folder): what uncertainty and
    disagreement selection weigh. The application loads the student (the CLI's start-up registered torch);
    ``teacher`` only takes its scores."""
    from reranker.rerank import score_pairs
    from reranker.scoring import load_model

    scorer = load_model(model_dir)
    keyed = [(q, h.doc_id, queries[q].text, corpus[h.doc_id].contents) for q in sorted(candidates) for h in candidates.ranking(q)]
    return score_pairs(scorer, keyed, name="student")


def _select(cands, budget, strategy, student, encoder, qs, corpus, st, t, seed):
    """The candidates' pairs to label this round: ``budget`` new ones chosen by ``strategy``, plus the done ones."""
    from reranker.errors import RerankerError
    from teacher.selection import STRATEGIES, embed_queries, select_pairs

    if strategy not in STRATEGIES:
        raise RerankerError(f"--select {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    keys = [(q, h.doc_id) for q in cands for h in cands.ranking(q)]
    done = st.done(t.fingerprint, t.prompt_version, keys)
    scores = _student_scores(student, qs, corpus, cands) if student is not None and strategy in ("uncertainty", "disagreement") else None
    emb = embed_queries({q: qs[q].text for q in cands}, encoder) if strategy == "diversity" else None
    chosen = select_pairs(cands, budget, strategy, student=scores, embeddings=emb, exclude=done, seed=seed)
    typer.echo(f"selected {chosen.num_entries()} new pairs of {len(keys) - len(done)} unlabelled ({strategy}, budget {budget})")
    for q, d in done:  # already labelled: skipped by the labeller, kept so the groups stay whole
        chosen.add(q, d, cands[q][d])
    return chosen


def generate_queries(
    dataset: Annotated[str, typer.Argument(help="Data set spec whose corpus gets synthetic queries (e.g. a folder of documents).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Synthetic queries JSONL to write (_id, text, doc_id, ...).")],
    generator: Annotated[str, typer.Option(help="extractive, llama-cpp, hf or openai.")] = "extractive",
    param: ParamOpt = None,
    prompt: Annotated[str | None, typer.Option(help="Template name or file (default: promptagator with --seeds, else inpars).")] = None,
    seeds: Annotated[Path | None, typer.Option(help="JSONL of your own query–passage examples (query + document or doc_id).")] = None,
    n: Annotated[int, typer.Option("--n", help="Queries per passage.")] = 1,
    sample: Annotated[int | None, typer.Option(help="Passages to sample (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling passages and texts.")] = 0,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="Longest query, in tokens.")] = 32,
    min_words: Annotated[int, typer.Option(help="Filter: shortest query kept.")] = 3,
    max_words: Annotated[int, typer.Option(help="Filter: longest query kept.")] = 32,
    keep_top: Annotated[float, typer.Option(help="Filter: share kept by mean log-probability (1 = off).")] = 0.8,
    consistency_k: Annotated[int, typer.Option(help="Filter: keep a query only if its passage is in BM25's top k (0 = off).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Prompts per generator call.")] = 16,
    stats: Annotated[Path | None, typer.Option(help="Write the filter statistics (JSON) here.")] = None,
    split: Annotated[str, typer.Option(help="BEIR split.")] = "test",
):
    """Write synthetic queries for a corpus with an LLM (InPars / Promptagator prompts) or extractively, then filter them."""
    from reranker.io.dataset import load_dataset
    from teacher.base import make_generator
    from teacher.generate import FilterConfig, load_seed_pairs, write_synthetic
    from teacher.generate import generate_queries as run

    ds = load_dataset(dataset, split=split)
    gen = make_generator(generator, **params_of(param))
    filters = FilterConfig(min_words=min_words, max_words=max_words, keep_top_share=keep_top, consistency_k=consistency_k)
    seed_pairs = load_seed_pairs(seeds, ds.corpus) if seeds else None
    start = time.perf_counter()
    result = run(ds.corpus, gen, prompt, n_per_passage=n, sample=sample, seed=seed, temperature=temperature,
                 max_tokens=max_tokens, filters=filters, seeds=seed_pairs, batch_size=batch_size)
    write_synthetic(out, result)
    if stats is not None:
        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text(json.dumps(result.stats, indent=2) + "\n")
    typer.echo(
        f"wrote {len(result.queries)} queries to {out} in {time.perf_counter() - start:.1f} s "
        f"(kept {len(result.queries)} of {result.stats.get('candidates')}; source passage in BM25 top 10: "
        f"{result.stats.get('source_in_bm25_top10')})"
    )


def register(app: typer.Typer) -> None:
    app.command("generate-queries")(generate_queries)
    app.command("label")(label)
