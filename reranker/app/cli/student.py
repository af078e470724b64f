"""`reranker distill CONFIG`: every option of :class:`student.train.DistillConfig` also as a flag;
`reranker export MODEL_DIR OUT_DIR`: a student to a checked ONNX folder (:mod:`student.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reranker.config import json_or_text
from reranker.errors import RerankerError


def _option_help() -> str:
    from student.train import DistillConfig

    rows = []
    for name, field in DistillConfig.model_fields.items():
        default = "required" if field.is_required() else repr(field.default if field.default_factory is None else field.default_factory())
        rows.append(f"--{name.replace('_', '-')} ({default}){': ' + field.description if field.description else ''}")
    return "\n\n".join(rows)


def _flags(args: list[str]) -> dict:
    """``--key value`` / ``--key=value`` pairs; values parse as JSON where they can (numbers, lists, dicts)."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise RerankerError(f"unexpected argument {arg!r}; options look like --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise RerankerError(f"option --{key} needs a value")
            value, i = args[i + 1], i + 1
        out[key.replace("-", "_")] = json_or_text(value)
        i += 1
    return out


def distill(ctx: typer.Context):
    """Distil a student (T5 or cross-encoder) from labelled groups: reranker distill [CONFIG.yaml|.toml] [--key value ...].

    Options (each also a config key; flags override the file):"""
    from student.train import distill as run
    from student.train import load_config

    args = list(ctx.args)
    config = Path(args.pop(0)) if args and not args[0].startswith("--") else None
    cfg = load_config(config, **_flags(args))
    summary = run(cfg)
    best = summary.get("best_metrics")
    typer.echo(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; model in {cfg.output_dir / 'model'}"
               + (f"; best dev {json.dumps(best)} at step {summary['best_step']}" if best else ""))


def export(
    model_dir: Annotated[Path, typer.Argument(help="A student folder from `reranker distill` (student_config.json).")],
    out_dir: Annotated[Path, typer.Argument(help="The ONNX folder to write (model.onnx, tokenizer, onnx_manifest.json).")],
    precision: Annotated[list[str] | None, typer.Option(help="fp32, int8, fp16, all or auto; repeatable or comma-separated. fp32 is always exported. "
                                                       "auto: time both int8 methods and fp32 on the parity pairs and keep the fastest within --max-ndcg-drop.")] = None,
    optimize: Annotated[bool, typer.Option(help="Run ONNX Runtime's transformer optimiser (kept only if it passes parity).")] = True,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    parity_sample: Annotated[int, typer.Option(help="Pairs in the parity check against PyTorch.")] = 128,
    parity_data: Annotated[str | None, typer.Option(help="Parity pairs: a JSONL of {query, document}, labelled groups or a data-set spec; needed by --precision auto (default: the embedded demo corpus, numeric parity only).")] = None,
    triton: Annotated[Path | None, typer.Option(help="Also write a Triton Inference Server model repository here.")] = None,
    int8_method: Annotated[str, typer.Option(help="dynamic: int8 weights and per-batch int8 activations (fastest on CPU); "
                                             "weight-only: int8 weights, fp32 activations (closest scores, quarter size, about fp32 speed); "
                                             "mixed: dynamic with the nodes it hurts most kept in fp32, as few as keep --max-ndcg-drop.")] = "dynamic",
    max_ndcg_drop: Annotated[float, typer.Option(min=0.0, help="--precision auto and --int8-method mixed: the most nDCG@10 below fp32 (on the parity pairs) a faster graph may lose.")] = 0.005,
    max_drop_change: Annotated[float, typer.Option(min=0.0, help="A part of the student (a hybrid's joint pass) is left out of the graph when its classifier weights are 0 or scoring without it changes nDCG@10 on the parity pairs by at most this; the manifest's 'dropped' says what and why.")] = 0.001,
    threads: Annotated[int | None, typer.Option(min=1, help="--precision auto: ONNX Runtime threads for the timing (default: all cores), as the server will run.")] = None,
    layout: Annotated[str, typer.Option(help="auto: a student that encodes query and passage apart (a hybrid without its joint pass) becomes an encoder graph "
                                        "and a score graph, so that passage vectors are computed once and cached (`reranker index --states-model`); "
                                        "pair: one graph per pair (Triton); separated: as auto, an error when the student cannot.")] = "auto",
):
    """Export a student to ONNX (optimised fp32, int8 for CPUs, fp16 for GPUs), checked against PyTorch."""
    from student.export import export_student, parse_precisions
    from student.parity import load_parity_sample

    precisions = parse_precisions(precision or ["fp32", "int8"])
    sample = load_parity_sample(parity_data, parity_sample) if parity_data is not None else None
    manifest = export_student(model_dir, out_dir, precisions, optimize=optimize, opset=opset,
                              parity=sample, triton_dir=triton, int8_method=int8_method, max_ndcg_drop=max_ndcg_drop, threads=threads,
                              max_drop_change=max_drop_change, layout=layout)
    for name, entry in manifest.models.items():
        p = entry.parity
        typer.echo(f"{name}: {out_dir / entry.file} ({entry.bytes / 1e6:.1f} MB{', optimised' if entry.optimized else ''}); "
                   f"parity on {p.pairs} pairs: max |diff| {p.max_abs_diff:.2e}, top-10 agreement {p.top10_agreement:.3f}")
    for part in manifest.dropped:
        typer.echo(f"left out of the graph: {part}")
    if manifest.layout == "separated":
        typer.echo(f"layout: separated (encoder graph + {manifest.score_graph.file}); passages are encoded once: "
                   f"`reranker index DATASET --out DIR --states-model {out_dir}` stores them for a corpus")
    if manifest.choice is not None:
        c = manifest.choice
        for cand in c.candidates:
            typer.echo(f"  candidate {cand.name}: {cand.pairs_per_second:.1f} pairs/s, nDCG@10 drop {cand.ndcg_drop:+.4f}, "
                       f"top-10 agreement {cand.top10_agreement:.3f}, {cand.bytes / 1e6:.1f} MB{'' if cand.within_budget else ' (over the budget)'}")
        typer.echo(f"auto: {c.candidate} is the CPU default ({c.reason}; nDCG@10 against {c.measured_against}, {c.pairs} pairs)")
    if triton:
        typer.echo(f"Triton model repository: {triton}")


def register(app: typer.Typer) -> None:
    distill.__doc__ = (distill.__doc__ or "") + "\n\n" + _option_help()
    app.command("distill", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(distill)
    app.command("export")(export)
