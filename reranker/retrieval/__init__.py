"""First-stage retrieval: BM25 (bm25s, pyserini), dense bi-encoders, and fusion.

Backends come from an explicit registry (:data:`BACKENDS`) and are imported only when
asked for. Every backend builds an index folder with an ``index.json`` manifest, reloads
it, and answers queries with a :class:`~reranker.records.Run`.
"""

from .base import BACKENDS, Retriever, build_index, get_backend, open_index
from .fusion import fuse

__all__ = ["BACKENDS", "Retriever", "build_index", "fuse", "get_backend", "open_index"]
