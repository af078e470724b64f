"""`reranker distill CONFIG`: every option of :class:`student.train.DistillConfig` also as a flag."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reranker.errors import RerankerError


def _option_help() -> str:
    from .train import DistillConfig

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
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
        i += 1
    return out


def distill(ctx: typer.Context):
    """Distil a student (T5 or cross-encoder) from labelled groups: reranker distill [CONFIG.yaml|.toml] [--key value ...].

    Options (each also a config key; flags override the file):"""
    from .train import distill as run
    from .train import load_config

    args = list(ctx.args)
    config = Path(args.pop(0)) if args and not args[0].startswith("--") else None
    cfg = load_config(config, **_flags(args))
    summary = run(cfg)
    best = summary.get("best_metrics")
    typer.echo(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; model in {cfg.output_dir / 'model'}"
               + (f"; best dev {json.dumps(best)} at step {summary['best_step']}" if best else ""))


def register(app: typer.Typer) -> None:
    distill.__doc__ = (distill.__doc__ or "") + "\n\n" + _option_help()
    app.command("distill", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(distill)
