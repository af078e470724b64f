"""Seed-data commands on the ``reranker`` CLI: ``calibrate`` and ``teacher-tune``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reranker.app.cli.options import ParamOpt, params_of

SeedsOpt = Annotated[Path, typer.Option(help="Seed judgements: JSONL {query_id|query, doc_id, label} or TREC / BEIR qrels.")]
GradeOpt = Annotated[int, typer.Option(help="Highest seed grade (1: binary 0/1 labels).")]


def calibrate(
    dataset: Annotated[str, typer.Argument(help="Data set spec the seeds and labels belong to.")],
    store: Annotated[Path, typer.Option(help="Label store with the teacher's labels; the calibration is stored in it.")],
    seeds: SeedsOpt,
    teacher: Annotated[str, typer.Option(help="Teacher backend (as for `reranker label`).")] = "ensemble",
    param: ParamOpt = None,
    grade_max: GradeOpt = 1,
    bias: Annotated[bool, typer.Option("--bias/--no-bias", help="Also fit a bias b: label = sigmoid(score / T + b).")] = False,
    holdout: Annotated[float, typer.Option(help="Share of seed queries held out to measure NLL/ECE before and after.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the hold-out split.")] = 0,
    label_missing: Annotated[bool, typer.Option(help="Label seed pairs the store lacks with the teacher first.")] = True,
    plot: Annotated[Path | None, typer.Option(help="Write the reliability diagrams (before / after) as a PNG.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the calibration report (JSON).")] = None,
    split: Annotated[str, typer.Option(help="BEIR split.")] = "test",
):
    """Fit the teacher's temperature (and bias) on seed judgements; exports of its labels apply it from now on."""
    from reranker.io.dataset import load_dataset
    from reranker.records import Run
    from teacher.base import make_teacher
    from teacher.calibration import calibrate_store, reliability_plot
    from teacher.labeling import label_pairs
    from teacher.seeds import read_seeds
    from teacher.store import LabelStore

    ds = load_dataset(dataset, split=split)
    seedset = read_seeds(seeds, ds.queries, ds.corpus, grade_max=grade_max)
    t = make_teacher(teacher, **params_of(param))
    with LabelStore(store) as st:
        keys = [(j.query_id, j.doc_id) for j in seedset.judgements]
        missing = set(keys) - st.done(t.fingerprint, t.prompt_version, keys)
        if missing and label_missing:
            run = Run(name="seeds")
            for qid, did in sorted(missing):
                run.add(qid, did, 0.0)
            typer.echo(f"labelling {len(missing)} seed pairs the store lacks with {t.fingerprint}")
            label_pairs(t, seedset.queries, ds.corpus, run, st, progress=False)
        cal, rep, held = calibrate_store(st, t.fingerprint, t.prompt_version, seedset, bias=bias, holdout=holdout, seed=seed)
    if plot is not None:
        reliability_plot(plot, held["targets"], held["labels"], cal.apply(held["scores"]),
                         title=f"{t.name} on {rep['eval_queries']} {rep['evaluated_on']}")
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(rep, indent=2) + "\n")
    b, a = rep["before"], rep["after"]
    typer.echo(
        f"calibrated {t.fingerprint}: T={cal.temperature:.4f}, b={cal.bias:.4f} (fit on {rep['fit_pairs']} seed pairs); "
        f"on {rep['pairs']} pairs of {rep['evaluated_on']}: NLL {b['nll']:.4f} -> {a['nll']:.4f}, "
        f"ECE {b['ece']:.4f} -> {a['ece']:.4f}. Stored in {store}; `label --export` applies it"
    )


def teacher_tune(
    model: Annotated[str, typer.Option(help="Causal LM (hub id or folder) of the hf teacher.")],
    seeds: SeedsOpt,
    dataset: Annotated[str, typer.Option(help="Data set spec the seeds belong to (their query and passage texts).")],
    out: Annotated[Path, typer.Option(help="Folder for the LoRA adapter (load with --teacher hf -p adapter=DIR).")],
    prompt: Annotated[str, typer.Option(help="Yes/no template, the one labelling will use.")] = "relevance-zeroshot",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 100,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 2e-4,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Seed pairs per step.")] = 4,
    grade_max: GradeOpt = 1,
    param: ParamOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for batching and initialisation.")] = 0,
    split: Annotated[str, typer.Option(help="BEIR split.")] = "test",
):
    """Fine-tune an hf teacher with LoRA on seed judgements, with the prompt that labelling uses."""
    from reranker.io.dataset import load_dataset
    from teacher.base import Pair
    from teacher.seeds import read_seeds
    from teacher.tune import TuneConfig, tune_teacher

    ds = load_dataset(dataset, split=split)
    seedset = read_seeds(seeds, ds.queries, ds.corpus, grade_max=grade_max)
    pairs = [Pair(j.query_id, j.doc_id, seedset.queries[j.query_id].text, ds.corpus[j.doc_id].contents) for j in seedset.judgements]
    targets = [j.target(seedset.grade_max) for j in seedset.judgements]
    cfg = TuneConfig(steps=steps, lr=lr, rank=rank, alpha=alpha, batch_size=batch_size, seed=seed)
    rep = tune_teacher(model, pairs, targets, out, prompt=prompt, config=cfg, **params_of(param))
    typer.echo(f"saved the LoRA adapter to {out}: loss over {len(pairs)} seed pairs {rep.loss_before:.4f} -> {rep.loss_after:.4f} "
               f"({steps} steps, {rep.seconds:.1f} s); label with --teacher hf -p model={model} -p adapter={out}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
    app.command("teacher-tune")(teacher_tune)
