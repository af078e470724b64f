"""The ``reranker`` command: one entry point, one subcommand per job.

Every command that reads data takes the same data-set spec (see
:mod:`reranker.io.dataset`), so it runs on any data set the user has. Input errors are
printed as one line (``error: ...``) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from reranker.app.cli.options import params_of
from reranker.errors import RerankerError
from reranker.io.documents import ChunkConfig

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Distil LLM relevance labels into a small re-ranker; retrieve, re-rank and evaluate.",
)
log = logging.getLogger("reranker")

# --- options shared by every command that reads a data set -----------------------------
DatasetArg = Annotated[str, typer.Argument(help="Data set: BEIR folder or .zip, corpus .jsonl, TREC DL .json, folder of documents, or an ir_datasets id (irds:ID).")]
SplitOpt = Annotated[str, typer.Option(help="BEIR split whose qrels (and queries) to use.")]
QueriesOpt = Annotated[Path | None, typer.Option(help="Queries file (JSONL, or 'qid<TAB>text'), replacing the data set's.")]
QrelsOpt = Annotated[Path | None, typer.Option(help="Qrels file (TREC or BEIR TSV), replacing the data set's.")]
WordsOpt = Annotated[int, typer.Option(help="Folders of documents: words per passage.")]
OverlapOpt = Annotated[int, typer.Option(help="Folders of documents: words shared by neighbouring passages.")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="Backend parameter KEY=VALUE (e.g. k1=0.9, model=PATH); repeatable.")]


def _dataset(spec: str, split: str, queries: Path | None, qrels: Path | None, words: int, overlap: int):
    from reranker.io.dataset import load_dataset
    from reranker.io.documents import ChunkConfig

    start = time.perf_counter()
    ds = load_dataset(spec, split=split, queries=queries, qrels=qrels, chunking=ChunkConfig(words, overlap))
    log.info("loaded %r in %.1f s", ds, time.perf_counter() - start)
    return ds


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debugging detail.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log only warnings and errors.")] = False,
):
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # our packages log at ``level``; third-party libraries (accelerate, ONNX Runtime's optimiser, ...) only warnings
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for ours in ("reranker", "teacher", "student"):
        logging.getLogger(ours).setLevel(level)
    if quiet:  # transformers' own bars ("Loading weights", "Writing model shards") follow the hub's switch, read at its import
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from reranker.app import register_backends

    register_backends()  # the application's start-up: the PyTorch student joins the core's model registry


@app.command()
def index(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write.")],
    backend: Annotated[str, typer.Option(help="bm25s, pyserini or dense.")] = "bm25s",
    param: ParamOpt = None,
    split: SplitOpt = "test", queries: QueriesOpt = None, qrels: QrelsOpt = None,
    passage_words: WordsOpt = ChunkConfig.words, passage_overlap: OverlapOpt = ChunkConfig.overlap,
    states_model: Annotated[Path | None, typer.Option(help="Also store every passage's state (vector, term ids) for this ONNX export "
                                                      "(separated layout) in OUT/passage_states, for `rerank --passage-states` and the "
                                                      "server (RERANKER_PASSAGE_STATES); resumes where a stopped build left off.")] = None,
    precision: Annotated[str | None, typer.Option(help="--states-model: the graph to encode with (default: the one the scorer loads on this machine).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="--states-model: passages per model batch.")] = 32,
):
    """Build a first-stage index over a data set's corpus and save it to a folder (and, with --states-model, the passage states)."""
    from reranker.retrieval import build_index

    ds = _dataset(dataset, split, queries, qrels, passage_words, passage_overlap)
    start = time.perf_counter()
    states, kept = out / "passage_states", out.with_name(f".{out.name}.passage_states")
    if states.is_dir():  # the index folder is replaced whole: passage states already built are kept (a resumed build)
        states.rename(kept)
    try:
        build_index(ds.corpus, backend, out, corpus_name=ds.name, **params_of(param))
    finally:
        if kept.is_dir():
            kept.rename(states)
    typer.echo(f"indexed {len(ds.corpus)} documents of {ds.name} with {backend} into {out} in {time.perf_counter() - start:.1f} s")
    if states_model is not None:
        from reranker.onnx_runtime import build_passage_store, load_onnx

        start = time.perf_counter()
        scorer = load_onnx(states_model, precision=precision, cache_entries=0)
        added, total = build_passage_store(scorer, [d.contents for d in ds.corpus], states, batch_size=batch_size)
        typer.echo(f"passage states: {added} encoded, {total} in {states} ({scorer.precision}) in {time.perf_counter() - start:.1f} s")


@app.command()
def retrieve(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="TREC run file to write.")],
    index_dir: Annotated[list[Path] | None, typer.Option("--index", help="Index folder (repeatable: several are fused).")] = None,
    backend: Annotated[list[str] | None, typer.Option(help="Build an index in memory with this backend (repeatable).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Candidates per query.")] = 100,
    fusion: Annotated[str, typer.Option(help="How to fuse several retrievers: rrf, wsum, combsum, ...")] = "rrf",
    rrf_k: Annotated[int, typer.Option(help="The k of reciprocal rank fusion.")] = 60,
    weights: Annotated[str | None, typer.Option(help="Comma-separated fusion weights, one per retriever.")] = None,
    per_document: Annotated[bool, typer.Option(help="Folders of documents: rank documents by their best passage (MaxP).")] = False,
    param: ParamOpt = None,
    split: SplitOpt = "test", queries: QueriesOpt = None, qrels: QrelsOpt = None,
    passage_words: WordsOpt = ChunkConfig.words, passage_overlap: OverlapOpt = ChunkConfig.overlap,
):
    """Retrieve the top-k documents for every query of a data set and write a TREC run."""
    from reranker.io.documents import document_run
    from reranker.io.trec import write_run
    from reranker.retrieval import build_index, fuse, open_index

    if k < 1:
        raise RerankerError(f"--k must be at least 1, got {k}")
    ds = _dataset(dataset, split, queries, qrels, passage_words, passage_overlap)
    qs = ds.require_queries()
    retrievers = []
    for path in index_dir or []:
        r = open_index(path)
        if r.num_docs != len(ds.corpus):
            log.warning("index %s has %d documents but %s has %d; is it the same corpus?", path, r.num_docs, ds.name, len(ds.corpus))
        retrievers.append(r)
    for name in backend or ([] if retrievers else ["bm25s"]):
        retrievers.append(build_index(ds.corpus, name, corpus_name=ds.name, **params_of(param)))
    start = time.perf_counter()
    depth = max(k, 1000) if len(retrievers) > 1 or per_document else k
    runs = [r.search_queries(qs, depth) for r in retrievers]
    if len(runs) > 1:
        w = [float(x) for x in weights.split(",")] if weights else None
        run = fuse(runs, fusion, k=rrf_k, weights=w)
    else:
        run = runs[0]
    if per_document:
        run = document_run(run, ds.corpus)
    run = run.top_k(k)
    write_run(out, run)
    typer.echo(f"wrote {run.num_entries()} results for {len(run)} of {len(qs)} queries to {out} in {time.perf_counter() - start:.1f} s")


def _load_qrels(spec: str, split: str):
    from reranker.io.dataset import load_dataset
    from reranker.io.trec import read_qrels

    path = Path(spec)
    if path.is_file() and path.suffix.lower() not in (".zip", ".json", ".jsonl"):
        return read_qrels(path)
    return load_dataset(spec, split=split).require_qrels()


@app.command()
def evaluate(
    qrels: Annotated[str, typer.Argument(help="Qrels file (TREC or BEIR TSV), or a data-set spec whose qrels to use.")],
    runs: Annotated[list[Path], typer.Argument(help="TREC run files.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="ranx metric (repeatable); default nDCG@10, MRR@10, Recall@100, MAP. Add -l2 for relevance level 2 (map-l2).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {run: {metric: value}} as JSON.")] = False,
    test: Annotated[str, typer.Option(help="Paired significance test: student, fisher or tukey.")] = "student",
    max_p: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    report: Annotated[Path | None, typer.Option(help="Also write the report here: FILE.md (table) and FILE.json (scores and p-values).")] = None,
    split: SplitOpt = "test",
):
    """Evaluate runs against qrels, with paired significance tests between runs."""
    from reranker.evaluation import DEFAULT_METRICS, compare
    from reranker.io.trec import read_run

    q = _load_qrels(qrels, split)
    loaded = [read_run(p) for p in runs]
    cmp = compare(q, loaded, metric or list(DEFAULT_METRICS), test=test, max_p=max_p)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.with_suffix(".md").write_text(cmp.to_markdown() + "\n")
        report.with_suffix(".json").write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(cmp.scores, indent=2))
    else:
        typer.echo(cmp.to_markdown())


@app.command()
def rerank(
    dataset: Annotated[str | None, typer.Argument(help="Data set (any spec the other commands take); or --dataset.")] = None,
    dataset_opt: Annotated[str | None, typer.Option("--dataset", help="The data set, as an option (the same as the argument).")] = None,
    model: Annotated[Path, typer.Option(help="A model folder: a student (`reranker distill`) or an ONNX export (`reranker export`).")] = ...,
    run: Annotated[Path, typer.Option(help="First-stage TREC run to re-rank.")] = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="TREC run to write.")] = ...,
    top_k: Annotated[int, typer.Option(help="Candidates per query to re-rank.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Pairs per model batch.")] = 32,
    backend: Annotated[str, typer.Option(help="auto (by the folder's files), torch or onnx.")] = "auto",
    passage_states: Annotated[Path | None, typer.Option(help="ONNX export of the separated layout: passage states built for it "
                                                        "(`reranker index --states-model`, the folder OUT/passage_states).")] = None,
    split: SplitOpt = "test", queries: QueriesOpt = None, qrels: QrelsOpt = None,
    passage_words: WordsOpt = ChunkConfig.words, passage_overlap: OverlapOpt = ChunkConfig.overlap,
):
    """Re-rank the top-k of a first-stage run with a model folder, without HTTP."""
    from reranker.io.trec import read_run, write_run
    from reranker.rerank import rerank_run
    from reranker.scoring import load_model

    if (dataset is None) == (dataset_opt is None):
        raise RerankerError("name the data set once: reranker rerank DATASET ... or reranker rerank --dataset DATASET ...")
    ds = _dataset(dataset or dataset_opt, split, queries, qrels, passage_words, passage_overlap)
    scorer = load_model(model, backend, **({} if passage_states is None else {"passage_store": passage_states}))
    start = time.perf_counter()
    result = rerank_run(scorer, ds.require_queries(), ds.corpus, read_run(run), top_k=top_k, batch_size=batch_size)
    result.name = model.name
    write_run(out, result)
    typer.echo(f"re-ranked {result.num_entries()} pairs for {len(result)} queries in {time.perf_counter() - start:.1f} s; wrote {out}")


@app.command()
def backends():
    """List the retrieval backends and the extra each needs."""
    from reranker.retrieval import BACKENDS

    for name, spec in BACKENDS.items():
        typer.echo(f"{name:10s} {spec.description} (extra: {spec.extra})")


@app.command("retrieval-demo")
def retrieval_demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs and the report.")] = Path("runs/retrieval-demo"),
):
    """First stages on the embedded corpus: BM25, dense and hybrid retrieval, evaluated (offline, about a minute)."""
    from reranker.app.demo import run_demo

    typer.echo(run_demo(out))


def _register_plugins() -> None:
    from reranker.app.cli.seeds import register as register_seeds
    from reranker.app.cli.student import register as register_student
    from reranker.app.cli.teacher import register as register_teacher
    from reranker.app.pipeline.cli import register as register_pipeline
    from reranker.app.server.cli import register as register_server

    register_teacher(app)
    register_seeds(app)
    register_student(app)
    register_pipeline(app)
    register_server(app)


_register_plugins()


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except RerankerError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise SystemExit(130) from None

