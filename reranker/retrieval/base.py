"""The retriever protocol, the backend registry and index folders."""

from __future__ import annotations

import json
import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from ..errors import RerankerError
from ..records import Corpus, Query, Run
from ..registry import BackendSpec, Registry

log = logging.getLogger(__name__)

MANIFEST = "index.json"
FORMAT_VERSION = 1


BACKENDS = Registry("retrieval backend", {
    "bm25s": BackendSpec("reranker.retrieval.bm25s_backend", "BM25sRetriever", "core", "BM25 in Python (bm25s), the default"),
    "pyserini": BackendSpec("reranker.retrieval.pyserini_backend", "PyseriniRetriever", "pyserini", "BM25 on Lucene (Anserini)"),
    "dense": BackendSpec("reranker.retrieval.dense", "DenseRetriever", "dense", "sentence-transformers bi-encoder"),
})


class Retriever(ABC):
    """Builds an index over a corpus and answers queries with a run.

    Subclasses set ``name`` and implement :meth:`index`, :meth:`search`, :meth:`_save`
    and :meth:`_load`; the parameters they take are their constructor's keywords and are
    stored in the index manifest.
    """

    name: ClassVar[str]

    def __init__(self, **params: Any):
        self.params = params
        self.num_docs = 0

    @abstractmethod
    def index(self, corpus: Corpus) -> None: ...

    @abstractmethod
    def search(self, queries: Mapping[str, str], k: int = 100) -> Run: ...

    @abstractmethod
    def _save(self, path: Path) -> None: ...

    @abstractmethod
    def _load(self, path: Path) -> None: ...

    def search_queries(self, queries: Mapping[str, Query], k: int = 100) -> Run:
        return self.search({qid: q.text for qid, q in queries.items()}, k)

    def save(self, path: str | Path, corpus_name: str = "") -> Path:
        """Write the index folder atomically: a half-written index never replaces a good one."""
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self._save(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "backend": self.name,
            "params": self.params,
            "num_docs": self.num_docs,
            "corpus": corpus_name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path


def get_backend(name: str) -> type[Retriever]:
    """The retriever class registered as ``name``, imported now; a clear error if it is unknown or not installed."""
    return BACKENDS.load(name)


def build_index(corpus: Corpus, backend: str = "bm25s", out: str | Path | None = None, corpus_name: str = "", **params: Any) -> Retriever:
    """Index ``corpus`` with ``backend``; save the index to ``out`` when given."""
    if len(corpus) == 0:
        raise RerankerError("cannot index an empty corpus")
    retriever = BACKENDS.create(backend, **params)
    start = time.perf_counter()
    retriever.index(corpus)
    retriever.num_docs = len(corpus)
    log.info("indexed %d documents with %s in %.1f s", len(corpus), backend, time.perf_counter() - start)
    if out is not None:
        retriever.save(out, corpus_name)
    return retriever


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise RerankerError(f"{path}: not an index folder (no {MANIFEST}); build one with 'reranker index'")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise RerankerError(f"{file}: corrupt manifest ({exc.msg}); rebuild the index") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RerankerError(f"{file}: index format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild the index")
    return manifest


def open_index(path: str | Path) -> Retriever:
    """Load an index folder written by :func:`build_index`, whatever its backend."""
    manifest = read_manifest(path)
    retriever = get_backend(manifest["backend"])(**manifest.get("params", {}))
    retriever.num_docs = manifest.get("num_docs", 0)
    retriever._load(Path(path))
    return retriever
