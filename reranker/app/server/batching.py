"""Dynamic batching between the HTTP layer and the model.

Requests put their (query, document) pairs in one queue. One worker packs pairs from
concurrent requests into batches of up to ``max_batch_tokens`` tokens (counted with the
scorer's ``pair_lengths``, i.e. after formatting and truncation) and ``max_batch_pairs``
pairs, waiting at most ``max_wait_ms`` after the oldest pair arrived for a batch to fill.
A batch is sorted by length and cut into forward passes whose padded size (pairs x longest
pair) stays within the token budget. Everything that touches the model or its tokenizer runs
in a single worker thread: one model session, and no tokenizer shared across threads.

The queue is bounded by pairs waiting: a request that does not fit is refused at once
(:class:`QueueFull`, HTTP 429 with Retry-After) instead of letting the queue grow.

Stopping drains: :meth:`Batcher.stop` refuses new requests (503) and lets the admitted ones be
scored and answered for at most ``drain_seconds``; what is still unfinished then fails with 503
and Retry-After. A request's future is resolved with its scores only once every pair is scored.

Scores never depend on what else is in a batch beyond float rounding: padding is masked.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ServiceUnavailable(Exception):
    """The request cannot be served now; retry after ``retry_after`` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(ServiceUnavailable):
    status = 429


class TooLarge(Exception):
    """One request holds more pairs than the queue can ever take."""


@dataclass(eq=False)
class _Job:
    pairs: list[tuple[str, str]]
    lengths: list[int]
    future: asyncio.Future
    scores: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    enqueued: float = field(default_factory=time.monotonic)
    started: bool = False  # a first batch of its pairs has run

    def __post_init__(self) -> None:
        self.scores = np.empty(len(self.pairs), dtype=np.float32)
        self.remaining = len(self.pairs)


class Batcher:
    """``await batcher.score(pairs)`` -> raw scores; pairs of concurrent calls share model batches."""

    def __init__(self, scorer: Any, *, max_batch_tokens: int = 16384, max_batch_pairs: int = 256, max_wait_ms: float = 2.0,
                 max_queue_pairs: int = 8192, metrics: Any = None):
        self.scorer = scorer
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait_ms / 1000
        self.max_queue_pairs = max_queue_pairs
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reranker-model")
        self._pending: deque[tuple[_Job, int]] = deque()
        self._queued = 0  # pairs admitted and not yet in a batch (including those still being measured)
        self._pending_tokens = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._draining = False  # no new requests; the admitted ones go on
        self._closing = False  # nothing goes on: what is unfinished fails
        self._active = 0  # requests admitted and not yet answered
        self._idle: asyncio.Event | None = None  # set while _active == 0
        self._jobs: set[_Job] = set()  # the admitted requests' jobs, measured and not yet answered
        self._pairs_per_s = 0.0  # moving average, for Retry-After

    # --- life cycle -------------------------------------------------------------------------
    async def in_model_thread(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` in the model's thread (the one thread that uses the model and its tokenizer)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._loop(), name="reranker-batcher")

    def refuse_new(self) -> None:
        """From now on new requests get 503 (shutting down); the admitted ones are still scored."""
        self._draining = True

    async def drain(self, seconds: float) -> bool:
        """Refuse new requests and wait at most ``seconds`` for the admitted ones to be answered; True when they were."""
        self.refuse_new()
        if self._idle is None or self._idle.is_set():
            return True
        log.info("draining: %d admitted request(s), %d pairs queued; waiting at most %g s", self._active, self._queued, seconds)
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Drain (at most ``drain_seconds``), then fail what is still unfinished (503, Retry-After) and stop the worker."""
        if not await self.drain(drain_seconds):
            log.warning("%d request(s) not scored within the drain (%g s): answered 503", self._active, drain_seconds)
        self._closing = True
        for job in list(self._jobs):
            if not job.future.done():
                job.future.set_exception(ServiceUnavailable("the server is shutting down: the request was not scored in time"))
        self._pending.clear()
        self._queued = self._pending_tokens = 0
        self._observe_queue()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued_pairs(self) -> int:
        return self._queued

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough (at least 1, at most 60)."""
        if self._pairs_per_s <= 0:
            return 1
        return max(1, min(60, math.ceil(self._queued / self._pairs_per_s)))

    # --- requests ---------------------------------------------------------------------------
    async def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw scores of ``pairs`` in input order (float32)."""
        pairs = list(pairs)
        n = len(pairs)
        if self._draining or self._closing or self._task is None:
            raise ServiceUnavailable("the model is not ready" if self._task is None else "the server is shutting down")
        if n == 0:
            return np.empty(0, dtype=np.float32)
        if n > self.max_queue_pairs:
            raise TooLarge(f"the request makes {n} model pairs, more than the server's queue holds ({self.max_queue_pairs})")
        if self._queued + n > self.max_queue_pairs:
            if self.metrics is not None:
                self.metrics.rejected.labels(reason="queue_full").inc()
            raise QueueFull(f"the queue is full ({self._queued} pairs waiting); retry later", self.retry_after())
        self._queued += n  # reserved now, so that concurrent admissions see it
        self._observe_queue()
        self._admitted(+1)
        job: _Job | None = None
        try:
            try:
                lengths = await self.in_model_thread(self.scorer.pair_lengths, pairs)
            except BaseException as exc:
                self._release(n)
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and self._closing and not (task and task.cancelling()):
                    raise ServiceUnavailable("the server is shutting down") from None  # the model thread stopped, not us
                raise
            if self._closing:  # stopped (the drain ran out) while the pairs were measured
                self._release(n)
                raise ServiceUnavailable("the server is shutting down: the request was not scored in time")
            job = _Job(pairs, [int(x) for x in lengths], asyncio.get_running_loop().create_future())
            self._jobs.add(job)
            for i in range(n):
                self._pending.append((job, i))
            self._pending_tokens += sum(job.lengths)
            self._wake.set()
            return await job.future  # resolved only once every pair has its score
        finally:
            if job is not None:
                self._jobs.discard(job)
            self._admitted(-1)

    def _release(self, n: int) -> None:
        self._queued = max(0, self._queued - n)  # stop() may have emptied the queue meanwhile
        self._observe_queue()

    def _admitted(self, change: int) -> None:
        self._active += change
        if self._idle is not None and self._active == 0:
            self._idle.set()
        elif self._idle is not None:
            self._idle.clear()
        if self.metrics is not None:
            self.metrics.in_flight.set(self._active)

    # --- the worker -------------------------------------------------------------------------
    def _full(self) -> bool:
        return self._pending_tokens >= self.max_batch_tokens or len(self._pending) >= self.max_batch_pairs

    def _take(self) -> list[tuple[_Job, int]]:
        """Pairs for the next batch, oldest first, up to the token and pair budgets (at least one)."""
        batch: list[tuple[_Job, int]] = []
        tokens = 0
        while self._pending and len(batch) < self.max_batch_pairs:
            job, i = self._pending[0]
            length = job.lengths[i]
            if batch and tokens + length > self.max_batch_tokens:
                break
            self._pending.popleft()
            self._queued -= 1
            self._pending_tokens -= length
            if job.future.done():  # the client went away: do not score its pairs
                continue
            batch.append((job, i))
            tokens += length
        return batch

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                continue
            if self.max_wait > 0:
                deadline = self._pending[0][0].enqueued + self.max_wait
                while not self._full() and (left := deadline - time.monotonic()) > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
            batch = self._take()
            if not self._pending:
                self._wake.clear()
            self._observe_queue()
            if batch:
                await self._run(batch)

    def _passes(self, batch: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """The batch sorted by length, cut where pairs x longest would pass the token budget."""
        ordered = sorted(batch, key=lambda item: item[0].lengths[item[1]])
        passes: list[list[tuple[_Job, int]]] = [[]]
        for item in ordered:
            length = item[0].lengths[item[1]]
            if passes[-1] and (len(passes[-1]) + 1) * length > self.max_batch_tokens:
                passes.append([])
            passes[-1].append(item)
        return passes

    def _forward(self, passes: list[list[tuple[str, str]]]) -> list[np.ndarray]:
        return [np.asarray(self.scorer.score(p, batch_size=len(p)), dtype=np.float32) for p in passes]

    async def _run(self, batch: list[tuple[_Job, int]]) -> None:
        passes = self._passes(batch)
        start = time.monotonic()
        try:
            outputs = await self.in_model_thread(self._forward, [[item[0].pairs[item[1]] for item in p] for p in passes])
        except Exception as exc:  # a model fault: every request in the batch fails (500)
            log.exception("scoring a batch of %d pairs failed", len(batch))
            for job in {item[0] for item in batch}:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        seconds = time.monotonic() - start
        rate = len(batch) / max(seconds, 1e-6)
        self._pairs_per_s = rate if self._pairs_per_s == 0 else 0.8 * self._pairs_per_s + 0.2 * rate
        if self.metrics is not None:
            tokens = sum(len(p) * p[-1][0].lengths[p[-1][1]] for p in passes)
            first = {job for job, _ in batch if not job.started}
            self.metrics.observe_batch(len(batch), tokens, seconds, [start - job.enqueued for job in first])
        for job, _ in batch:
            job.started = True
        for p, scores in zip(passes, outputs):
            for (job, i), s in zip(p, scores):
                job.scores[i] = s
                job.remaining -= 1
                if job.remaining == 0 and not job.future.done():
                    job.future.set_result(job.scores)

    def _observe_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_pairs.set(self._queued)


# --- long documents ---------------------------------------------------------------------------


def split_windows(text: str, words: int, overlap: int) -> list[str]:
    """``text`` as windows of ``words`` words, neighbours sharing ``overlap`` words (the passages' own
    :func:`reranker.io.documents.chunk_words`); a text of one window or less stays whole, as sent."""
    from reranker.io.documents import ChunkConfig, chunk_words

    return [text] if len(text.split()) <= words else chunk_words(text, ChunkConfig(words, overlap))


async def score_documents(batcher: Batcher, query: str, texts: list[str], *, max_tokens_per_doc: int | None = None,
                          window: tuple[int, int] | None = None) -> np.ndarray:
    """Raw score of each text for ``query``: cut to ``max_tokens_per_doc`` tokens first, then, with
    ``window=(words, overlap)``, the best score over the text's overlapping word windows."""
    if max_tokens_per_doc is not None:
        from reranker.formatting import truncate_texts

        texts = await batcher.in_model_thread(truncate_texts, getattr(batcher.scorer, "tokenizer", None), texts, max_tokens_per_doc)
    if window is None:
        return await batcher.score([(query, t) for t in texts])
    owners, pairs = [], []
    for i, text in enumerate(texts):
        for piece in split_windows(text, *window):
            owners.append(i)
            pairs.append((query, piece))
    from reranker.io.documents import best_per_key

    best = best_per_key(zip(owners, (float(s) for s in await batcher.score(pairs))))
    return np.asarray([best[i] for i in range(len(texts))], dtype=np.float32)
