"""`reranker pipeline run|stages`, `reranker feedback add` and `reranker demo` (the embedded default pipeline)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

pipeline_app = typer.Typer(help="The whole loop as one command: corpus -> queries -> labels -> student -> ONNX -> evaluation.",
                           no_args_is_help=True)
feedback_app = typer.Typer(help="Record production judgements or clicks for the next pipeline run.", no_args_is_help=True)


def _say(message: str) -> None:
    typer.secho(f"[{time.strftime('%H:%M:%S')}] {message}", err=True, fg=typer.colors.CYAN)


def summary(ctx, manifest) -> str:
    """The printed report: timings per stage, the evaluation table, the promotion and how to serve."""

    lines = [f"Pipeline {ctx.config.name!r} in {ctx.run_dir}", "", "| stage | status | seconds |", "|---|---|---:|"]
    for name, entry in manifest.data["stages"].items():
        lines.append(f"| {name} | {entry.get('status')} | {entry.get('seconds', '')} |")
    report = ctx.run_dir / "evaluation" / "report.md"
    if report.is_file():
        ev = ctx.results.get("evaluate", {})
        head = (f"Evaluation on {ev.get('queries')} judged queries (student = {ev.get('model')}; "
                f"pairs/s: {json.dumps(ev.get('pairs_per_second', {}))}):")
        lines += ["", head, "", report.read_text().strip()]
    promo = ctx.results.get("promote")
    if promo:
        lines += ["", f"Promotion: {promo.get('version')} {'promoted' if promo.get('promoted') else 'kept back'} ({promo.get('reason')})."]
    model, _ = ctx.serving_model()  # an ONNX folder serves int8 on CPU and fp16 on GPU where exported
    lines += ["", "Serve the student:", f"  reranker serve {model}"]
    cascade = ctx.run_dir / "cascade.yaml"
    if cascade.is_file():  # written by the evaluation when evaluate.cascade is enabled
        lines += ["Serve the cascade too (POST /search: first stage -> student -> teacher over the corpus):",
                  f"  reranker serve {model} --cascade {cascade}"]
    lines += ["Re-rank a run without HTTP:", f"  reranker rerank DATASET --model {model} --run FIRST_STAGE.trec --out RERANKED.trec"]
    return "\n".join(lines)


@pipeline_app.command("run")
def run(
    config: Annotated[Path | None, typer.Argument(help="Pipeline config (YAML/TOML); default: the embedded demo.")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Rerun from this stage (and every later one).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: the config's run_dir).")] = None,
):
    """Run every stage whose inputs changed; a stopped run resumes where it stopped."""
    from reranker.app.pipeline import run_pipeline

    ctx, manifest = run_pipeline(config, from_stage, run_dir, progress=_say)
    typer.echo(summary(ctx, manifest))


@pipeline_app.command("stages")
def stages(
    run_dir: Annotated[Path | None, typer.Argument(help="A run folder: show its stages' status.")] = None,
):
    """List the stages (and, for a run folder, their status, time and fingerprint)."""
    from reranker.app.pipeline.runner import Manifest
    from reranker.app.pipeline.stages import STAGE_LIST

    manifest = Manifest(run_dir) if run_dir is not None else None
    for stage in STAGE_LIST:
        entry = manifest.stage(stage.name) if manifest else {}
        status = f" {entry.get('status', 'not run')} {entry.get('seconds', '')}" if manifest else ""
        typer.echo(f"{stage.name:11s} -> {', '.join(stage.outputs)}{status}")


@feedback_app.command("add")
def add(
    file: Annotated[Path, typer.Option("--file", "-f", help="Feedback file to append to (JSONL; the pipeline's `feedback`).")],
    query: Annotated[str | None, typer.Option(help="The query text.")] = None,
    doc_id: Annotated[str | None, typer.Option(help="The judged document's id.")] = None,
    label: Annotated[float | None, typer.Option(help="Relevance in [0, 1] (or 0..--grade-max).")] = None,
    kind: Annotated[str, typer.Option(help="judgement, click (label 1) or skip (label 0).")] = "judgement",
    grade_max: Annotated[int | None, typer.Option(help="Labels are grades 0..N (e.g. 3), stored as grade / N.")] = None,
    from_file: Annotated[Path | None, typer.Option("--from", help="Add every record of this JSONL (query, doc_id, label[, kind]).")] = None,
):
    """Record judgements or clicks; the next pipeline run labels these pairs with them and re-distils."""
    from reranker.app.pipeline.feedback import add_feedback, make_feedback
    from reranker.errors import RerankerError

    records = []
    if from_file is not None:
        from reranker.errors import DataFormatError
        from reranker.io.jsonl import iter_jsonl, open_text

        with open_text(from_file) as f:
            for lineno, obj in iter_jsonl(f, str(from_file)):
                try:
                    records.append(make_feedback(str(obj.get("query", "")), str(obj.get("doc_id", "")), obj.get("label"),
                                                 obj.get("kind", kind), grade_max))
                except RerankerError as exc:
                    raise DataFormatError(str(from_file), lineno, str(exc)) from None
    if query is not None or doc_id is not None:
        if query is None or doc_id is None:
            raise RerankerError("give both --query and --doc-id")
        records.append(make_feedback(query, doc_id, label, kind, grade_max))
    if not records:
        raise RerankerError("nothing to add: give --query/--doc-id/--label or --from FILE")
    n = add_feedback(file, records)
    typer.echo(f"added {n} feedback record{'s' if n != 1 else ''} to {file}")


def demo(
    run_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/demo).")] = None,
):
    """The main job, offline: the whole loop on the embedded Northwind corpus (a few minutes on 2 CPU cores)."""
    from reranker.app.pipeline import run_pipeline

    ctx, manifest = run_pipeline(None, None, run_dir, progress=_say)
    typer.echo(summary(ctx, manifest))


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(feedback_app, name="feedback")
    app.command("demo")(demo)
