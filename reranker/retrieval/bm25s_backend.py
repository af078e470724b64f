"""BM25 with bm25s (sparse matrices in NumPy): the embedded default, no Java needed."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..records import Corpus, Run
from .base import Retriever

log = logging.getLogger(__name__)


def _bm25s():
    """Import bm25s, undoing the DEBUG level it gives its own logger at import time."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    return bm25s


class BM25sRetriever(Retriever):
    """BM25 over title + text, lower-cased, English stop words removed, Snowball-stemmed.

    Defaults are bm25s's own (``k1=1.5, b=0.75``, Lucene's IDF); Anserini's are ``k1=0.9, b=0.4``.
    """

    name = "bm25s"

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene", stopwords: str | None = "en", stemmer: str | None = "english"):
        super().__init__(k1=k1, b=b, method=method, stopwords=stopwords, stemmer=stemmer)
        self._model = None
        self._ids: list[str] = []

    def _stemmer(self):
        if not self.params["stemmer"]:
            return None
        import Stemmer

        return Stemmer.Stemmer(self.params["stemmer"])

    def _tokenize(self, texts: list[str]):
        return _bm25s().tokenize(texts, stopwords=self.params["stopwords"], stemmer=self._stemmer(), show_progress=False)

    def index(self, corpus: Corpus) -> None:
        bm25s = _bm25s()
        docs = list(corpus)
        self._ids = [d.id for d in docs]
        tokens = self._tokenize([d.contents for d in docs])
        self._model = bm25s.BM25(k1=self.params["k1"], b=self.params["b"], method=self.params["method"])
        self._model.index(tokens, show_progress=log.isEnabledFor(logging.INFO))

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        run = Run(name=self.name)
        qids = list(queries)
        if not qids:
            return run
        k = min(k, len(self._ids))
        tokens = self._tokenize([queries[q] for q in qids])
        docs, scores = self._model.retrieve(tokens, k=k, show_progress=False)
        for row, qid in enumerate(qids):
            for idx, score in zip(docs[row], scores[row]):
                if score > 0:  # bm25s pads with non-matching documents; Lucene returns only matches
                    run.add(qid, self._ids[int(idx)], float(score))
        return run

    def score_all(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every indexed document, in index order (0 where nothing matches)."""
        tokens = self._tokenize([query])
        inverse = {i: t for t, i in tokens.vocab.items()}
        ids = self._model.get_tokens_ids([inverse[i] for i in tokens.ids[0]])  # drops words the corpus lacks
        return self._model.get_scores_from_ids(ids) if ids else np.zeros(len(self._ids))

    @property
    def doc_ids(self) -> list[str]:
        return self._ids

    def _save(self, path: Path) -> None:
        self._model.save(str(path / "bm25s"))
        (path / "doc_ids.json").write_text(json.dumps(self._ids))

    def _load(self, path: Path) -> None:
        self._model = _bm25s().BM25.load(str(path / "bm25s"), mmap=True)
        self._ids = json.loads((path / "doc_ids.json").read_text())
