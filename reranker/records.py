"""Typed records shared by every part of the project: documents, queries, qrels and runs.

Documents and queries are small frozen dataclasses. Qrels and runs are read-only
mappings ``query id -> {doc id -> value}`` with the few operations the rest of the code
needs (top-k, ranked lists, conversion to :mod:`ranx`), so they stay cheap for millions
of entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import RerankerError


@dataclass(frozen=True, slots=True)
class Document:
    """A retrievable unit (a document or a passage of one)."""

    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def contents(self) -> str:
        """Title and text as one string: what BM25 indexes and re-rankers read."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class ScoredDoc:
    """One candidate of a ranking: a document id, its score and its 1-based rank."""

    doc_id: str
    score: float
    rank: int


class Corpus:
    """Documents by id, kept in memory, in insertion order."""

    def __init__(self, docs: Iterable[Document] = ()):
        self._docs: dict[str, Document] = {}
        for doc in docs:
            self.add(doc)

    def add(self, doc: Document) -> None:
        self._docs[doc.id] = doc

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[Document]:
        return iter(self._docs.values())

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._docs

    def __getitem__(self, doc_id: str) -> Document:
        return self._docs[doc_id]

    def get(self, doc_id: str) -> Document | None:
        return self._docs.get(doc_id)

    def ids(self) -> list[str]:
        return list(self._docs)


class _NestedMapping(Mapping[str, Mapping[str, Any]]):
    """``query id -> {doc id -> value}``; the base of :class:`Qrels` and :class:`Run`."""

    _cast: type = float

    def __init__(self, data: Mapping[str, Mapping[str, Any]] | None = None, name: str | None = None):
        self.name = name
        self._data: dict[str, dict[str, Any]] = {}
        for qid, docs in (data or {}).items():
            self._data[str(qid)] = {str(d): self._cast(v) for d, v in docs.items()}

    def add(self, query_id: str, doc_id: str, value: Any) -> None:
        self._data.setdefault(str(query_id), {})[str(doc_id)] = self._cast(value)

    def __getitem__(self, query_id: str) -> Mapping[str, Any]:
        return self._data[query_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def num_entries(self) -> int:
        return sum(len(d) for d in self._data.values())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {q: dict(d) for q, d in self._data.items()}

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__name__}{label}: {len(self)} queries, {self.num_entries()} entries>"


class Qrels(_NestedMapping):
    """Relevance judgements: ``query id -> {doc id -> grade}`` (integer grades, 0 = not relevant)."""

    _cast = int

    def to_ranx(self):
        from ranx import Qrels as RanxQrels

        return RanxQrels(self.to_dict(), name=self.name)


class Run(_NestedMapping):
    """A ranking per query: ``query id -> {doc id -> score}`` (higher is better)."""

    _cast = float

    def ranking(self, query_id: str) -> list[ScoredDoc]:
        """The query's candidates best first.

        Equal scores are ordered by doc id, descending, as trec_eval orders them, so that a
        written run evaluates the same everywhere.
        """
        items = sorted(self._data.get(query_id, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        return [ScoredDoc(doc_id, score, rank) for rank, (doc_id, score) in enumerate(items, start=1)]

    def top_k(self, k: int) -> Run:
        """A new run that keeps each query's ``k`` best candidates."""
        out = Run(name=self.name)
        for qid in self._data:
            for hit in self.ranking(qid)[:k]:
                out.add(qid, hit.doc_id, hit.score)
        return out

    def restrict(self, query_ids: Iterable[str]) -> Run:
        """A new run with only the given queries (those it has)."""
        keep = set(query_ids)
        return Run({q: d for q, d in self._data.items() if q in keep}, name=self.name)

    def to_ranx(self):
        from ranx import Run as RanxRun

        return RanxRun(self.to_dict(), name=self.name)


@dataclass
class Dataset:
    """A corpus with (optionally) queries, relevance judgements and a candidate run."""

    name: str
    corpus: Corpus
    queries: dict[str, Query]
    qrels: Qrels | None = None
    run: Run | None = None

    def require_queries(self) -> dict[str, Query]:
        if not self.queries:
            raise RerankerError(f"data set {self.name!r} has no queries; give a queries file with --queries")
        return self.queries

    def require_qrels(self) -> Qrels:
        if self.qrels is None or not len(self.qrels):
            raise RerankerError(f"data set {self.name!r} has no relevance judgements; give a qrels file with --qrels")
        return self.qrels

    def __repr__(self) -> str:
        return (
            f"<Dataset {self.name!r}: {len(self.corpus)} docs, {len(self.queries)} queries, "
            f"{len(self.qrels) if self.qrels else 0} judged queries>"
        )
