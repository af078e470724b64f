"""``reranker serve MODEL_DIR``: the HTTP server under uvicorn. Every flag is also ``RERANKER_<NAME>``.

Stopping: the first SIGTERM (or Ctrl-C) turns ``/ready`` to 503 ("stopping") at once while uvicorn still accepts
connections, so a load balancer sees it; new requests get 503 with Retry-After; the requests already admitted are
scored and answered for at most ``--drain-seconds``, the rest then get 503; then uvicorn shuts down gracefully and
the process exits 0. A second signal stops at once (uvicorn's own handling).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from reranker.config import validation_problems
from reranker.errors import MissingDependencyError, RerankerError
from reranker.io.documents import ChunkConfig

log = logging.getLogger(__name__)

#: the install extra that ``reranker serve`` needs (named in its error when missing)
EXTRA = "serve"


def serve(
    model: Annotated[Path | None, typer.Argument(help="Model folder: a student (`reranker distill`) or an ONNX export. Env: RERANKER_MODEL.")] = None,
    backend: Annotated[str | None, typer.Option(help="auto, torch or onnx.")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1; 0.0.0.0 for all).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8080).")] = None,
    device: Annotated[str | None, typer.Option(help="torch: cpu, cuda, cuda:1.")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op CPU threads (torch or ONNX Runtime).")] = None,
    precision: Annotated[str | None, typer.Option(help="ONNX: fp32, int8 or fp16 (default int8 on CPU, fp16 on GPU, when exported).")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name reported by the API.")] = None,
    passage_states: Annotated[Path | None, typer.Option(help="ONNX separated export: passage states built for it (`reranker index --states-model`).")] = None,
    cache_entries: Annotated[int | None, typer.Option(help="ONNX separated export: passages kept in memory (default 50000; 0: none).")] = None,
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
    window_words: Annotated[int | None, typer.Option(help=f"Words per window (default {ChunkConfig.words}, as the passages).")] = None,
    window_overlap: Annotated[int | None, typer.Option(help=f"Words shared by neighbouring windows (default {ChunkConfig.overlap}).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (prefer RERANKER_API_KEY).")] = None,
    cors_origins: Annotated[str | None, typer.Option(help="Comma-separated CORS origins (off by default).")] = None,
    warmup: Annotated[bool | None, typer.Option("--warmup/--no-warmup", help="Warm the model up before ready.")] = None,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level (default info).")] = None,
    drain_seconds: Annotated[float | None, typer.Option(help="On SIGTERM: answer the admitted requests for at most this long, "
                                                        "then 503 (default 30).")] = None,
):
    """Serve a model over HTTP: Cohere /v1/rerank and /v2/rerank, TEI /rerank, /health, /ready, /metrics, /docs
    (and /search with --cascade)."""
    given = dict(locals())  # the flags, before anything else is defined here
    try:
        import uvicorn  # noqa: F401  (here, so that a missing extra is one clear line)

        from reranker.app.server.app import create_app
    except ImportError as exc:
        raise MissingDependencyError("reranker serve", EXTRA, exc) from exc
    from pydantic import ValidationError

    from reranker.app.server.settings import ServerSettings
    from reranker.scoring import detect_backend

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
    run_server(create_app(settings.model, settings), settings)


def run_server(app: Any, settings: Any) -> None:
    """Serve ``app`` (from :func:`reranker.app.server.app.create_app`) with uvicorn until a signal; drain first (module doc)."""
    import uvicorn

    from reranker.app.server.app import drain

    state = app.state.reranker

    class DrainingServer(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None
        draining = False

        async def serve(self, sockets=None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.draining or self.loop is None:  # a second signal: uvicorn stops now (Ctrl-C twice: at once)
                return super().handle_exit(sig, frame)
            self.draining = True
            state.begin_stopping()  # here, in the signal handler: /ready is 503 before anything else happens
            log.info("%s: draining (at most %g s), then stopping", signal.Signals(sig).name, settings.drain_seconds)
            self.loop.call_soon_threadsafe(self.loop.create_task, self._drain())

        async def _drain(self) -> None:
            try:
                await drain(state, settings.drain_seconds)
            except Exception:
                log.exception("draining failed; stopping")
            finally:
                self.should_exit = True  # uvicorn's graceful shutdown: stop accepting, close connections, lifespan

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1,
                            timeout_graceful_shutdown=max(1, round(settings.drain_seconds)), access_log=settings.log_level == "debug")
    server = DrainingServer(config)
    try:
        server.run()
    except KeyboardInterrupt:  # a second Ctrl-C: uvicorn re-raises it after stopping
        pass
    if not server.started:
        raise RerankerError(f"the server did not start on {settings.host}:{settings.port} (see the log above)")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
