"""Data sets by ``ir_datasets`` id (``beir/scifact/test``, ``msmarco-passage/trec-dl-2019/judged``, ...).

ir_datasets downloads what it needs on first use. Machines without network reach can
place the source files by hand: set ``IR_DATASETS_HOME`` to a folder and copy, e.g., the
BEIR SciFact zip to ``$IR_DATASETS_HOME/beir/scifact/source.zip``; files already in place are
used without a download (see the README, "Offline data").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ..errors import MissingDependencyError, RerankerError
from ..records import Corpus, Document, Qrels, Query

log = logging.getLogger(__name__)


def _text(record) -> str:
    if hasattr(record, "default_text"):
        return record.default_text()
    return getattr(record, "text", "")


class IrdsCorpus(Corpus):
    """A lazy corpus over an ir_datasets docs store: iterates the files, looks ids up on demand."""

    def __init__(self, dataset):
        super().__init__()
        self._ds = dataset
        self._store = None

    @staticmethod
    def _doc(d) -> Document:
        title = getattr(d, "title", "") or ""
        text = getattr(d, "text", None)
        if text is None:
            text = _text(d)
        return Document(d.doc_id, text, title)

    def __len__(self) -> int:
        return self._ds.docs_count()

    def __iter__(self) -> Iterator[Document]:
        for d in self._ds.docs_iter():
            yield self._doc(d)

    def _lookup(self, doc_id: str):
        if self._store is None:
            self._store = self._ds.docs_store()
        try:
            return self._store.get(doc_id)
        except KeyError:
            return None

    def get(self, doc_id: str) -> Document | None:
        d = self._lookup(doc_id)
        return None if d is None else self._doc(d)

    def __getitem__(self, doc_id: str) -> Document:
        doc = self.get(doc_id)
        if doc is None:
            raise KeyError(doc_id)
        return doc

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self._lookup(doc_id) is not None

    def ids(self) -> list[str]:
        return [d.doc_id for d in self._ds.docs_iter()]


def load_irds(dataset_id: str):
    """Load an ir_datasets id as a :class:`~reranker.io.dataset.Dataset` (corpus is lazy)."""
    from ..records import Dataset

    try:
        import ir_datasets
    except ImportError as exc:  # pragma: no cover - ir_datasets is a core dependency
        raise MissingDependencyError("ir_datasets ids", "core", exc) from exc
    logging.getLogger("ir_datasets").setLevel(logging.WARNING)
    try:
        ds = ir_datasets.load(dataset_id)
    except KeyError:
        raise RerankerError(
            f"{dataset_id!r} is not a file or folder here, nor a known ir_datasets id "
            "(e.g. beir/scifact/test, msmarco-passage/trec-dl-2019/judged)"
        ) from None
    try:
        if not ds.has_docs():
            raise RerankerError(f"ir_datasets id {dataset_id!r} has no documents")
        queries = {q.query_id: Query(q.query_id, _text(q)) for q in ds.queries_iter()} if ds.has_queries() else {}
        qrels = None
        if ds.has_qrels():
            qrels = Qrels(name=dataset_id)
            for qr in ds.qrels_iter():
                qrels.add(qr.query_id, qr.doc_id, qr.relevance)
    except RerankerError:
        raise
    except Exception as exc:  # downloads fail in many ways; name the way out
        raise RerankerError(
            f"ir_datasets could not provide {dataset_id!r}: {exc}. Without network access, place the "
            "source files under IR_DATASETS_HOME first (README, 'Offline data')."
        ) from None
    if qrels is not None:
        queries = {qid: q for qid, q in queries.items() if qid in qrels} or queries
    return Dataset(name=dataset_id, corpus=IrdsCorpus(ds), queries=queries, qrels=qrels)
