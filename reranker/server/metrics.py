"""Prometheus metrics of one server (each app has its own registry, so apps in one process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
