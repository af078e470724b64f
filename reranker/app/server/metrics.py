"""Prometheus metrics of one server (each app has its own registry, so apps in one process never mix).

The passage cache's figures (``reranker_passage_cache_*``) are read from the scorer at scrape time, when the scorer
has a ``cache_stats()`` method (the ONNX scorer of a separated export); other scorers show none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Requests, pairs, batch sizes, queue depth and latencies."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("reranker_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("reranker_request_duration_seconds", "HTTP request latency", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.documents = Counter("reranker_documents", "Documents ranked", registry=r)
        self.pairs = Counter("reranker_pairs", "(query, document) pairs scored by the model", registry=r)
        self.batches = Counter("reranker_batches", "Model batches run", registry=r)
        self.batch_pairs = Histogram("reranker_batch_size", "Pairs per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("reranker_batch_tokens", "Padded tokens per model batch", buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("reranker_batch_duration_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("reranker_queue_wait_seconds", "Time from enqueue to the first batch of a request",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_pairs = Gauge("reranker_queue_pairs", "Pairs waiting for the model (queue depth)", registry=r)
        self.rejected = Counter("reranker_rejected", "Requests refused before scoring", ["reason"], registry=r)
        self.search_candidates = Counter("reranker_search_candidates", "Candidates through each stage of /search",
                                         ["stage"], registry=r)
        self.search_seconds = Histogram("reranker_search_stage_duration_seconds", "Time in each stage of /search", ["stage"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("reranker_ready", "1 when the model is loaded and warmed up", registry=r)
        self.in_flight = Gauge("reranker_requests_in_flight", "Requests admitted to the model's queue and not yet answered",
                               registry=r)

    def watch_passage_cache(self, scorer: Callable[[], Any]) -> None:
        """At each scrape, export ``scorer().cache_stats()`` when the scorer has that method (none before it loads)."""
        self.registry.register(PassageCacheCollector(scorer))

    def observe_batch(self, pairs: int, tokens: int, seconds: float, waits: list[float]) -> None:
        self.batches.inc()
        self.pairs.inc(pairs)
        self.batch_pairs.observe(pairs)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)
        for w in waits:
            self.queue_seconds.observe(max(w, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


CACHE_GAUGES = {"entries": "Passages held by the in-memory passage cache", "capacity": "The passage cache's bound, in passages",
                "bytes": "Bytes of the passage states held by the cache"}


class PassageCacheCollector:
    """``reranker_passage_cache_{hits,misses}_total``, ``_entries``, ``_capacity``, ``_hit_ratio`` (and ``_bytes``,
    ``reranker_passage_store_entries`` when reported), read from ``scorer().cache_stats()`` when scraped."""

    def __init__(self, scorer: Callable[[], Any]):
        self.scorer = scorer

    def describe(self) -> list[Metric]:
        return []  # the names depend on the scorer, known only at scrape time

    def collect(self) -> Iterator[Metric]:
        method = getattr(self.scorer(), "cache_stats", None)  # no import of any scorer: other scorers have no cache
        if not callable(method):
            return
        try:
            stats = method()
        except Exception:  # a scrape never fails because of the cache's figures
            log.exception("reading the passage cache's statistics failed")
            return
        if not stats:
            return
        hits, misses = int(stats.get("hits", 0)), int(stats.get("misses", 0))
        yield CounterMetricFamily("reranker_passage_cache_hits", "Passage lookups answered by the in-memory cache", value=hits)
        yield CounterMetricFamily("reranker_passage_cache_misses", "Passage lookups the in-memory cache did not hold", value=misses)
        for key, help_text in CACHE_GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(f"reranker_passage_cache_{key}", help_text, value=float(stats[key]))
        yield GaugeMetricFamily("reranker_passage_cache_hit_ratio", "hits / (hits + misses) since start (0 before any lookup)",
                                value=hits / (hits + misses) if hits + misses else 0.0)
        if "stored" in stats:
            yield GaugeMetricFamily("reranker_passage_store_entries", "Passages in the on-disk passage store", value=float(stats["stored"]))
        if "store_hits" in stats:
            yield CounterMetricFamily("reranker_passage_store_hits", "In-memory misses found in the on-disk store", value=int(stats["store_hits"]))
        if "encoded" in stats:
            yield CounterMetricFamily("reranker_passages_encoded", "Passages encoded (in neither the cache nor the store)",
                                      value=int(stats["encoded"]))
