"""``POST /search``: the server's cascade (``reranker serve MODEL --cascade CONFIG``).

The first stage retrieves the query's top ``student_top_k`` from the cascade's corpus, the
served student scores them through the server's :class:`~reranker.app.server.batching.Batcher`
(so they share model batches with ``/rerank`` traffic), and the teacher re-orders the student's
top ``teacher_top_k`` (:func:`reranker.app.cascade.cascade_order`, as the pipeline's evaluation
does); a corpus split into passages answers with documents, each at its best passage. The
retriever and the teacher run in one worker thread of their own, never in the event loop or
the model's thread. Loading (corpus, index, teacher, warm-up) happens in that
thread too, after the model's; the server reports ready once both are done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from reranker.app.cascade import (
    CascadeConfig,
    LoadedCascade,
    cascade_order,
    load_cascade,
    load_cascade_config,
    per_document,
    student_ranking,
    teacher_judgements,
)
from reranker.app.server.batching import ServiceUnavailable
from reranker.app.server.schemas import SearchDocument, SearchMeta, SearchRequest, SearchResponse, SearchResult, SearchTimings
from reranker.errors import RerankerError
from reranker.scoring import sigmoid

log = logging.getLogger(__name__)

StudentScores = Callable[[str, list[str]], Awaitable[np.ndarray]]


class CascadeService:
    """The loaded cascade of one server and its worker thread."""

    def __init__(self, config: CascadeConfig, source: str, metrics: Any):
        self.config, self.source, self.metrics = config, source, metrics
        self.loaded: LoadedCascade | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reranker-cascade")

    @classmethod
    def from_settings(cls, settings: Any, metrics: Any) -> CascadeService:
        """The cascade of ``settings.cascade``, its config checked now (a bad one is an error before the server starts)."""
        cfg = load_cascade_config(settings.cascade)
        if settings.long_docs == "truncate" and cfg.student_top_k > settings.max_queue_pairs:
            raise RerankerError(f"{settings.cascade}: student_top_k ({cfg.student_top_k}) exceeds max_queue_pairs "
                                f"({settings.max_queue_pairs}): no search could be queued")
        return cls(cfg, settings.cascade, metrics)

    async def in_thread(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` in the cascade's thread (the retriever's and the teacher's)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self) -> None:
        """Corpus, first-stage index, teacher (prepared and warmed up); a failure names the cascade config."""
        try:
            self.loaded = await self.in_thread(load_cascade, self.config)
        except Exception as exc:
            raise RerankerError(f"the cascade {self.source} failed to load: {exc}") from exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _observe(self, stage: str, candidates: int, seconds: float) -> None:
        self.metrics.search_candidates.labels(stage=stage).inc(candidates)
        self.metrics.search_seconds.labels(stage=stage).observe(seconds)

    async def search(self, req: SearchRequest, student_scores: StudentScores) -> SearchResponse:
        """The cascade's ranking for ``req.query``; ``student_scores(query, texts)`` scores through the batcher."""
        cascade, cfg = self.loaded, self.config
        if cascade is None:
            raise ServiceUnavailable("the cascade is loading", 1)
        ms: dict[str, float] = {}
        start = time.perf_counter()
        pool = await self.in_thread(cascade.first_stage, req.query)
        ms["first_stage"] = time.perf_counter() - start
        self._observe("first_stage", len(pool), ms["first_stage"])

        start = time.perf_counter()
        raw = await student_scores(req.query, [cascade.corpus[d].contents for d in pool]) if pool else np.empty(0)
        ranked = student_ranking(pool, {d: float(s) for d, s in zip(pool, raw)})
        ms["student"] = time.perf_counter() - start
        self._observe("student", len(pool), ms["student"])

        start = time.perf_counter()
        picks = [(d, cascade.corpus[d].contents) for d, _ in ranked[: cfg.teacher_top_k]]
        try:
            judged = await self.in_thread(teacher_judgements, cascade.teacher, "search", req.query, picks)
        except Exception as exc:  # an unreachable LLM endpoint, say: a fault of the server's set-up, not of the request
            log.exception("the teacher failed on /search")
            raise ServiceUnavailable(f"the teacher failed: {exc}", 5) from exc
        ms["teacher"] = time.perf_counter() - start
        self._observe("teacher", len(picks), ms["teacher"])

        order = cascade_order(ranked, {d: j.score for d, j in judged.items()}, cfg.teacher_top_k)
        results = []
        for rank, (doc_id, passage_id, stage, score) in enumerate(per_document(order, cascade.corpus)[: req.top_n], start=1):
            hit = passage_id or doc_id  # what was scored: the document's best passage, or the document
            relevance = min(max(float(judged[hit].label), 0.0), 1.0) if stage == "teacher" else float(sigmoid(score))
            doc = cascade.corpus[hit]
            document = SearchDocument(text=doc.text, title=doc.title or None) if req.return_documents else None
            results.append(SearchResult(doc_id=doc_id, passage_id=passage_id, rank=rank, stage=stage, relevance_score=relevance,
                                        raw_score=float(score), document=document))
        timings = SearchTimings(**{k: round(v * 1000, 3) for k, v in ms.items()})
        meta = SearchMeta(first_stage=cfg.first_stage, student_top_k=cfg.student_top_k, teacher_top_k=cfg.teacher_top_k,
                          timings_ms=timings)
        return SearchResponse(id=str(uuid.uuid4()), results=results, meta=meta)
