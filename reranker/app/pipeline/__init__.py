"""`reranker pipeline run CONFIG`: the whole loop as stages in one run folder.

corpus -> synthetic queries -> candidates -> teacher labels -> student -> ONNX -> evaluation
-> promotion; see :mod:`.runner` for skipping, resuming and ``--from``, :mod:`.config` for the
config file, :mod:`.feedback` for production feedback and :mod:`.promote` for versioned models.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from reranker.app.pipeline.config import PipelineConfig, load_pipeline_config
from reranker.app.pipeline.runner import Context, Manifest, run_stages

__all__ = ["DEFAULT_CONFIG", "PipelineConfig", "load_pipeline_config", "run_pipeline"]

DEFAULT_CONFIG = Path(str(resources.files("reranker") / "data" / "pipelines" / "demo.yaml"))


def run_pipeline(config: str | Path | None = None, start_from: str | None = None, run_dir: str | Path | None = None,
                 overrides: dict | None = None, progress=None) -> tuple[Context, Manifest]:
    """Run the pipeline of ``config`` (default: the embedded demo); returns its context and manifest."""
    from reranker.app import register_backends
    from reranker.app.pipeline.stages import STAGE_LIST, check_stage

    register_backends()
    check_stage(start_from)
    path = Path(config) if config is not None else DEFAULT_CONFIG
    cfg, base = load_pipeline_config(path)
    if overrides:
        cfg = load_pipeline_config(data={**cfg.model_dump(), **overrides})[0]
    out = Path(run_dir) if run_dir is not None else Path(cfg.run_dir)
    out = out if out.is_absolute() else Path.cwd() / out
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "pipeline.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)  # what our packages log (INFO unless -q) goes to the run's log file too
    try:
        ctx = Context(cfg, out, base)
        manifest = run_stages(ctx, STAGE_LIST, start_from, progress)
    finally:
        root.removeHandler(handler)
        handler.close()
    return ctx, manifest
