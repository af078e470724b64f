"""BM25 as a teacher: the exact full-corpus BM25 score of each (query, candidate) pair."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reranker.records import Corpus

from ..base import Judgement, Pair, Teacher, TeacherError
from .normalize import zscore_judgements


class BM25Teacher(Teacher):
    """BM25 (bm25s) with corpus statistics from the whole corpus, not just the candidates.

    Give ``index`` (a bm25s index folder from ``reranker index``), or let the labelling run
    call :meth:`prepare` with the corpus, which builds the index in memory.
    """

    name = "bm25"

    def __init__(self, index: str | None = None, k1: float = 1.5, b: float = 0.75):
        super().__init__(index=index, k1=k1, b=b)
        self._retriever = None
        self._pos: dict[str, int] = {}

    def prepare(self, corpus: Corpus) -> None:
        from reranker.retrieval import build_index, open_index

        if self.params["index"]:
            self._retriever = open_index(self.params["index"])
            if self._retriever.name != "bm25s":
                raise TeacherError(f"{self.params['index']}: a {self._retriever.name} index; the bm25 teacher needs a bm25s one")
        else:
            self._retriever = build_index(corpus, "bm25s", k1=self.params["k1"], b=self.params["b"])
        self._pos = {doc_id: i for i, doc_id in enumerate(self._retriever.doc_ids)}

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        if self._retriever is None:
            raise TeacherError("the bm25 teacher needs its corpus: call prepare(corpus) or give index=PATH")
        raw = []
        cache: dict[str, np.ndarray] = {}
        for p in pairs:
            if p.doc_id not in self._pos:
                raise TeacherError(f"document {p.doc_id!r} is not in the bm25 teacher's index")
            if p.query_id not in cache:
                cache[p.query_id] = self._retriever.score_all(p.query)
            raw.append(float(cache[p.query_id][self._pos[p.doc_id]]))
        return zscore_judgements(pairs, raw)

