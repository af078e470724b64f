"""A small Python client of the re-rank server (Cohere v2 endpoint), on httpx.

>>> with RerankClient("http://127.0.0.1:8080") as client:
...     for r in client.rerank("what is BM25", ["BM25 is a ranking function", "a cat"], top_n=1):
...         print(r.index, r.relevance_score)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import httpx

from reranker.errors import RerankerError


@dataclass(frozen=True)
class RerankResult:
    index: int
    relevance_score: float
    document: str | None = None
    raw_score: float | None = None


class RerankAPIError(RerankerError):
    """The server answered with an error status (``status``, its ``message``, ``retry_after`` seconds for 429/503)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class RerankClient:
    """``rerank(query, documents, top_n)`` against a server's ``/v2/rerank``.

    ``retries``: how often a 429 or 503 is retried after the server's Retry-After (at most ``max_backoff`` s).
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0, retries: int = 2,
                 max_backoff: float = 10.0, client: httpx.Client | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = client is None
        self._http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)
        if client is not None:
            self._http.headers.update(headers)
        self.retries, self.max_backoff = retries, max_backoff

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def rerank(self, query: str, documents: Sequence[str], top_n: int | None = None, *, return_documents: bool = False,
               max_tokens_per_doc: int | None = None, raw_scores: bool = False) -> list[RerankResult]:
        """Documents ranked for ``query``, best first: ``RerankResult(index, relevance_score, document?, raw_score?)``."""
        body: dict = {"query": query, "documents": list(documents), "return_documents": return_documents}
        if top_n is not None:
            body["top_n"] = top_n
        if max_tokens_per_doc is not None:
            body["max_tokens_per_doc"] = max_tokens_per_doc
        if raw_scores:
            body["return_raw_scores"] = True
        data = self._post("/v2/rerank", body)
        return [RerankResult(r["index"], r["relevance_score"], (r.get("document") or {}).get("text"), r.get("raw_score"))
                for r in data["results"]]

    def ready(self) -> bool:
        try:
            return self._http.get("/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RerankerError(f"the server at {self._http.base_url} is not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def _post(self, path: str, body: dict) -> dict:
        for attempt in range(self.retries + 1):
            resp = self._http.post(path, json=body)
            if resp.status_code < 400:
                return resp.json()
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            retry = resp.headers.get("Retry-After")
            wait = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
            if resp.status_code in (429, 503) and attempt < self.retries:
                time.sleep(min(wait or 1.0, self.max_backoff))
                continue
            raise RerankAPIError(resp.status_code, message, wait)
        raise AssertionError("unreachable")
