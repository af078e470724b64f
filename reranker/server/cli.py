"""``reranker serve MODEL_DIR``: the HTTP server under uvicorn. Every flag is also ``RERANKER_<NAME>``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ..config import validation_problems
from ..errors import MissingDependencyError, RerankerError

log = logging.getLogger(__name__)


def serve(
    model: Annotated[Path | None, typer.Argument(help="Model folder: a student (`reranker distill`) or an ONNX export. Env: RERANKER_MODEL.")] = None,
    backend: Annotated[str | None, typer.Option(help="auto, torch or onnx.")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1; 0.0.0.0 for all).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8080).")] = None,
    device: Annotated[str | None, typer.Option(help="torch: cpu, cuda, cuda:1.")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op CPU threads (torch or ONNX Runtime).")] = None,
    precision: Annotated[str | None, typer.Option(help="ONNX: fp32, int8 or fp16 (default int8 on CPU, fp16 on GPU, when exported).")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name reported by the API.")] = None,
    cascade: Annotated[Path | None, typer.Option(help="Cascade config (YAML/JSON, e.g. RUN/cascade.yaml): also serve POST /search, "
                                                 "first stage -> student -> teacher over its corpus.")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Token budget per model batch (default 16384).")] = None,
    max_batch_pairs: Annotated[int | None, typer.Option(help="Pairs per model batch at most (default 256).")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Wait for a batch to fill, ms (default 2).")] = None,
    max_queue_pairs: Annotated[int | None, typer.Option(help="Pairs waiting at most; beyond: 429 (default 8192).")] = None,
    max_documents: Annotated[int | None, typer.Option(help="Documents per request at most (default 1000).")] = None,
    max_chars: Annotated[int | None, typer.Option(help="Characters per query or document at most (default 100000).")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Request body size at most, bytes (default 64 MiB).")] = None,
    long_docs: Annotated[str | None, typer.Option(help="truncate (default) or window (max over word windows).")] = None,
    window_words: Annotated[int | None, typer.Option(help="Words per window (default 150).")] = None,
    window_overlap: Annotated[int | None, typer.Option(help="Words shared by neighbouring windows (default 50).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (prefer RERANKER_API_KEY).")] = None,
    cors_origins: Annotated[str | None, typer.Option(help="Comma-separated CORS origins (off by default).")] = None,
    warmup: Annotated[bool | None, typer.Option("--warmup/--no-warmup", help="Warm the model up before ready.")] = None,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level (default info).")] = None,
):
    """Serve a model over HTTP: Cohere /v1/rerank and /v2/rerank, TEI /rerank, /health, /ready, /metrics, /docs
    (and /search with --cascade)."""
    given = dict(locals())  # the flags, before anything else is defined here
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise MissingDependencyError("reranker serve", "serve", exc) from exc
    from pydantic import ValidationError

    from ..scoring import detect_backend
    from .settings import ServerSettings

    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        raise RerankerError(f"invalid server settings: {validation_problems(exc, 'settings')}") from None
    if settings.model is None:
        raise RerankerError("no model: reranker serve MODEL_DIR (or set RERANKER_MODEL)")
    if settings.backend == "auto":
        detect_backend(settings.model)  # a wrong folder is a one-line error now, not a failed server later
    elif not Path(settings.model).is_dir():
        raise RerankerError(f"{settings.model}: no such model folder")
    log.info("settings: %s", settings.display())
    app = create_app(settings.model, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1,
                timeout_graceful_shutdown=30, access_log=settings.log_level == "debug")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
