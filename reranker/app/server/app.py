"""The re-rank HTTP API: :func:`create_app` builds a FastAPI app around one model folder or scorer.

Endpoints: Cohere's ``POST /v1/rerank`` and ``/v2/rerank``, text-embeddings-inference's
``POST /rerank``, ``POST /search`` (the cascade over a corpus, with ``--cascade``; see
:mod:`.cascade`), ``GET /health`` (liveness), ``GET /ready`` (model loaded and warmed up),
``GET /metrics`` (Prometheus) and ``/docs`` (OpenAPI). The model loads in the background when
the app starts (the cascade too, when there is one), so ``/health`` answers at once and the
rerank endpoints answer 503 with Retry-After until ``/ready`` does. Stopping (:func:`drain`, on SIGTERM under
``reranker serve``) turns ``/ready`` and new requests to 503 at once, answers the admitted ones, then exits. Every error is JSON
``{"message", "error", "error_type"}`` with a 4xx status for anything wrong with the request; a 5xx only for faults of the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from reranker.app.server.batching import Batcher, ServiceUnavailable, TooLarge, score_documents
from reranker.app.server.cascade import CascadeService
from reranker.app.server.metrics import Metrics
from reranker.app.server.schemas import (
    ApiVersion,
    BilledUnits,
    CohereMeta,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    ErrorResponse,
    Health,
    ResultDocument,
    SearchRequest,
    SearchResponse,
    TEIRank,
    TEIRerankRequest,
    error_body,
)
from reranker.app.server.settings import ServerSettings
from reranker.config import validation_problems
from reranker.errors import RerankerError
from reranker.scoring import sigmoid

log = logging.getLogger(__name__)

WARM_UP_WORDS = (8, 64, 512)
BEARER = HTTPBearer(auto_error=False, description="The server's API key (RERANKER_API_KEY)")


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: Metrics
    model_name: str
    status: str = "loading"  # loading | ready | failed | stopping
    detail: str | None = None
    scorer: Any = None
    batcher: Batcher | None = None
    backend: str | None = None
    cascade: CascadeService | None = None

    def begin_stopping(self) -> None:
        """``/ready`` answers 503 ("stopping") and new requests 503 from now on; admitted requests go on."""
        self.status = "stopping"
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.refuse_new()


async def drain(state: ServerState, seconds: float) -> None:
    """Stop taking requests, let the admitted ones be scored and answered for at most ``seconds``, then answer
    what is left 503 with Retry-After (``reranker serve`` runs this on SIGTERM before uvicorn stops)."""
    state.begin_stopping()
    if state.batcher is not None:
        await state.batcher.stop(seconds)


def _load(source: str | Path, settings: ServerSettings) -> tuple[Any, str]:
    from reranker.scoring import detect_backend, load_model

    backend = detect_backend(source) if settings.backend == "auto" else settings.backend
    options: dict[str, Any] = {}
    if backend == "torch" and settings.device:
        options["device"] = settings.device
    if backend == "torch" and settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    if backend == "onnx":
        options.update({k: v for k, v in (("intra_op_threads", settings.threads), ("precision", settings.precision),
                                          ("passage_store", settings.passage_states)) if v})
        if settings.cache_entries is not None:
            options["cache_entries"] = settings.cache_entries
    start = time.perf_counter()
    scorer = load_model(source, backend, **options)
    log.info("loaded %s model %s (%s) in %.1f s", backend, source, getattr(scorer, "kind", "?"), time.perf_counter() - start)
    return scorer, backend


def _warm_up(scorer: Any, settings: ServerSettings) -> None:
    """A few short pairs, then one full batch of the longest pairs the model takes (the largest
    shape the batcher sends): runtimes that keep a memory arena (ONNX Runtime) reach their
    working size here, before ready, not under the first heavy load."""
    pairs = [("warm up the model", " ".join(["relevance"] * n)) for n in WARM_UP_WORDS]
    longest = max(scorer.pair_lengths(pairs))
    scorer.score(pairs, batch_size=len(pairs))
    n = max(1, min(settings.max_batch_pairs, settings.max_batch_tokens // max(longest, 1), 512))
    scorer.score([pairs[-1]] * n, batch_size=n)


async def _start(state: ServerState, source: Any) -> None:
    """Load (unless given a scorer) and warm up the model, then the cascade; then start the batcher and report ready.

    One after the other: libraries that both import lazily (transformers) are not safe to import from two threads at once."""
    s = state.settings
    part = "model"
    try:
        if isinstance(source, str | Path):
            state.scorer, state.backend = await asyncio.to_thread(_load, source, s)
        else:
            state.scorer, state.backend = source, type(source).__name__
        batcher = Batcher(state.scorer, max_batch_tokens=s.max_batch_tokens, max_batch_pairs=s.max_batch_pairs,
                          max_wait_ms=s.max_wait_ms, max_queue_pairs=s.max_queue_pairs, metrics=state.metrics)
        if s.warmup:
            start = time.perf_counter()
            await batcher.in_model_thread(_warm_up, state.scorer, s)
            log.info("warm-up took %.2f s", time.perf_counter() - start)
        if state.cascade is not None:
            part = "cascade"
            await state.cascade.load()
        batcher.start()
        state.batcher = batcher
        if state.status != "loading":  # asked to stop while loading: never ready (the lifespan stops the batcher)
            batcher.refuse_new()
            return
        state.status = "ready"
        state.metrics.ready.set(1)
        log.info("ready: serving %s", state.model_name)
    except Exception as exc:  # reported by /health and /ready; the process stays up so that it can be inspected
        state.status, state.detail = "failed", str(exc) if part == "cascade" else f"the model failed to load: {exc}"
        log.exception("the %s could not be loaded", part)


def _error_doc(description: str, retry_after: bool = False) -> dict:
    doc: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        doc["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
    return doc


ERRORS = {
    400: _error_doc("Malformed JSON"),
    401: _error_doc("Missing or wrong API key (only when the server has one)"),
    413: _error_doc("Too many documents, or a query or document too long"),
    422: _error_doc("The body does not match the request schema (missing field, wrong type, empty query or list, top_n < 1)"),
    429: _error_doc("The queue is full", retry_after=True),
    503: _error_doc("The model is not ready yet, or the server is shutting down", retry_after=True),
}


def create_app(model: Any = None, settings: ServerSettings | None = None) -> FastAPI:
    """The API around ``model``: a model folder (torch student or ONNX export) or a ready scorer.

    Without ``model``, ``settings.model`` (``RERANKER_MODEL``) names the folder.
    """
    from reranker import __version__
    from reranker.app import register_backends

    register_backends()
    settings = settings or ServerSettings()
    source = model if model is not None else settings.model
    if source is None:
        raise RerankerError("no model: pass a model folder (reranker serve MODEL_DIR) or set RERANKER_MODEL")
    name = settings.model_name or (Path(source).name if isinstance(source, str | Path) else type(source).__name__)
    state = ServerState(settings=settings, metrics=Metrics(), model_name=name)
    state.metrics.watch_passage_cache(lambda: state.scorer)
    if settings.cascade:
        state.cascade = CascadeService.from_settings(settings, state.metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(_start(state, source), name="reranker-load")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await drain(state, settings.drain_seconds)
            if state.cascade is not None:
                state.cascade.close()

    app = FastAPI(
        title="enterprise-reranker",
        version=__version__,
        lifespan=lifespan,
        description=(
            "Re-rank documents for a query with a distilled student. Cohere-compatible `/v1/rerank` and `/v2/rerank`, "
            "text-embeddings-inference-compatible `/rerank`. relevance_score is the sigmoid of the model's raw score."
        ),
    )
    app.state.reranker = state
    _install_handlers(app, state)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["*"], expose_headers=["Retry-After"])
    _add_routes(app, state)
    return app


def _batcher(state: ServerState) -> Batcher:
    if state.batcher is None or state.status != "ready":
        if state.status == "failed":
            raise ServiceUnavailable(str(state.detail), 30)
        raise ServiceUnavailable("the server is shutting down" if state.status == "stopping" else "the model is loading", 1)
    return state.batcher


def _check_limits(settings: ServerSettings, query: str, texts: list[str]) -> None:
    if len(texts) > settings.max_documents:
        raise ApiError(413, f"{len(texts)} documents; the server takes at most {settings.max_documents} per request", "payload_too_large")
    if len(query) > settings.max_chars:
        raise ApiError(413, f"the query has {len(query)} characters; at most {settings.max_chars}", "payload_too_large")
    for i, t in enumerate(texts):
        if len(t) > settings.max_chars:
            raise ApiError(413, f"document {i} has {len(t)} characters; at most {settings.max_chars}", "payload_too_large")


def _window(s: ServerSettings) -> tuple[int, int] | None:
    return (s.window_words, s.window_overlap) if s.long_docs == "window" else None


async def _raw_scores(state: ServerState, query: str, texts: list[str], max_tokens_per_doc: int | None = None) -> np.ndarray:
    s = state.settings
    _check_limits(s, query, texts)
    batcher = _batcher(state)
    window = _window(s)
    scores = await score_documents(batcher, query, texts, max_tokens_per_doc=max_tokens_per_doc, window=window)
    state.metrics.documents.inc(len(texts))
    return scores


def _ranking(scores: np.ndarray, top_n: int | None) -> list[int]:
    order = np.argsort(-scores, kind="stable").tolist()  # best first, ties by index
    return order[:top_n] if top_n is not None else order


def _add_routes(app: FastAPI, state: ServerState) -> None:
    s = state.settings
    async def require_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        key = s.api_key.get_secret_value() if s.api_key else ""
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "unauthorized",
                           {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_key)] if s.api_key else []
    errors = {k: v for k, v in ERRORS.items() if k != 401 or s.api_key}

    async def cohere(req: CohereRerankRequest, version: str) -> CohereRerankResponse:
        texts = req.texts()
        raw = await _raw_scores(state, req.query, texts, req.max_tokens_per_doc)
        probs = sigmoid(raw)
        results = [
            CohereResult(index=i, relevance_score=float(probs[i]),
                         document=ResultDocument(text=texts[i]) if req.return_documents else None,
                         raw_score=float(raw[i]) if req.return_raw_scores else None)
            for i in _ranking(raw, req.top_n)
        ]
        meta = CohereMeta(api_version=ApiVersion(version=version), billed_units=BilledUnits(search_units=math.ceil(len(texts) / 100)))
        return CohereRerankResponse(id=str(uuid.uuid4()), results=results, meta=meta)

    common = {"response_model_exclude_none": True, "responses": errors, "dependencies": guarded, "tags": ["rerank"]}

    @app.post("/v1/rerank", response_model=CohereRerankResponse, summary="Rerank (Cohere v1)", **common)
    async def rerank_v1(req: CohereRerankRequest) -> CohereRerankResponse:
        return await cohere(req, "1")

    @app.post("/v2/rerank", response_model=CohereRerankResponse, summary="Rerank (Cohere v2)", **common)
    async def rerank_v2(req: CohereRerankRequest) -> CohereRerankResponse:
        return await cohere(req, "2")

    @app.post("/rerank", response_model=list[TEIRank], summary="Rerank (text-embeddings-inference)", **common)
    async def rerank_tei(req: TEIRerankRequest) -> list[TEIRank]:
        raw = await _raw_scores(state, req.query, req.texts)
        scores = raw.astype(np.float64) if req.raw_scores else sigmoid(raw)
        return [TEIRank(index=i, score=float(scores[i]), text=req.texts[i] if req.return_text else None) for i in _ranking(raw, None)]

    if state.cascade is not None:
        @app.post("/search", response_model=SearchResponse, summary="Search the corpus: first stage -> student -> teacher",
                  response_model_exclude_none=True, responses=errors, dependencies=guarded, tags=["search"])
        async def search(req: SearchRequest) -> SearchResponse:
            """The cascade of ``--cascade`` over its corpus: the teacher's picks first, then the student's order."""
            _check_limits(s, req.query, [])
            batcher = _batcher(state)
            return await state.cascade.search(req, lambda q, texts: score_documents(batcher, q, texts, window=_window(s)))
    else:
        @app.post("/search", include_in_schema=False)
        async def no_search() -> None:
            raise ApiError(404, "this server runs no cascade: start it with --cascade CONFIG (or RERANKER_CASCADE) to serve "
                           "/search", "not_found")

    def health_body(status: str) -> dict:
        return Health(status=status, model=state.model_name, backend=state.backend, kind=getattr(state.scorer, "kind", None),
                      cascade=state.settings.cascade or None, detail=state.detail).model_dump(exclude_none=True)

    @app.get("/health", response_model=Health, response_model_exclude_none=True, tags=["ops"],
             responses={503: {"model": Health, "description": "The model failed to load"}})
    async def health() -> Any:
        """Liveness: 200 while the process serves (also while the model loads); 503 when loading failed."""
        if state.status == "failed":
            return JSONResponse(health_body("failed"), status_code=503)
        return health_body("ok")

    @app.get("/ready", response_model=Health, response_model_exclude_none=True, tags=["ops"],
             responses={503: {"model": Health, "description": "Not ready: loading, failed or stopping",
                              "headers": ERRORS[503]["headers"]}})
    async def ready() -> Any:
        """Readiness: 200 once the model (and the cascade, when there is one) is loaded and warmed up."""
        if state.status != "ready":
            return JSONResponse(health_body(state.status), status_code=503, headers={"Retry-After": "1"})
        return health_body("ready")

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus metrics"}})
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _install_handlers(app: FastAPI, state: ServerState) -> None:
    def answer(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, error_type), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return answer(400, "the body is not valid JSON", "malformed_json")
        return answer(422, validation_problems(errors, "body", skip=("body",), limit=5), "validation")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), "http", getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.error_type, exc.headers)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        if exc.status == 503:
            state.metrics.rejected.labels(reason="unavailable").inc()
        kind = "overloaded" if exc.status == 429 else "unavailable"
        return answer(exc.status, str(exc), kind, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge) -> JSONResponse:
        return answer(413, str(exc), "payload_too_large")

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return answer(500, "internal server error", "server")

    limit = state.settings.max_request_bytes

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        size = request.headers.get("content-length", "")
        status = 500
        try:
            if size.isdigit() and int(size) > limit:
                response = answer(413, f"the body has {size} bytes; at most {limit}", "payload_too_large")
            else:
                response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            state.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            state.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)
