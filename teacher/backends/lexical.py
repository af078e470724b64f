"""BM25 as a teacher: each pair's BM25 score with the statistics of the whole corpus.

``statistics="corpus"`` (the default): document frequencies, the number of documents and the
mean document length come from the corpus the labelling run hands to :meth:`BM25Teacher.prepare`
(the same corpus the pipeline indexes), never from a query's candidate pool, and the score is
computed for the pair's own text with them: Lucene's BM25 as bm25s computes it (the analyser of
the project's bm25s retriever: lower-cased words, English stop words dropped, Snowball-stemmed),
so a candidate of the corpus scores exactly what ``reranker retrieve --retriever bm25s`` gives it,
and a text that is not in the corpus (a passage with its query sentence taken out, for fitting an
ensemble) scores with the same statistics.

``statistics="first-stage"``: the pair's first-stage score (``Pair.first_stage``: the score in the
candidate run) is the BM25 score. For candidate files that hold only a pool of a larger collection
(the TREC DL runs: BM25 top 100 of the 8.8M MS MARCO passages, computed by Anserini over the whole
collection), the pool's own statistics are not the corpus's; the run's scores are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from reranker.errors import RerankerError
from reranker.lexical import analyze_many
from reranker.records import Corpus

from ..base import Judgement, Pair, Teacher, TeacherError
from .normalize import zscore_judgements

STATISTICS = ("corpus", "first-stage")


@dataclass(frozen=True)
class CorpusStatistics:
    """What BM25 needs of a corpus: document frequency per term, the number of documents, the mean length."""

    df: dict[str, int]
    n_docs: int
    avgdl: float

    @classmethod
    def of(cls, corpus: Corpus, language: str = "english", batch: int = 4096) -> CorpusStatistics:
        df: Counter[str] = Counter()
        n = total = 0
        docs = list(corpus)
        for i in range(0, len(docs), batch):
            for terms in analyze_many([d.contents for d in docs[i : i + batch]], language):
                df.update(set(terms))
                total += len(terms)
                n += 1
        if n == 0:
            raise TeacherError("the bm25 teacher was handed an empty corpus")
        return cls(dict(df), n, total / n)

    def idf(self, term: str) -> float:
        """Lucene's IDF, ``ln(1 + (N - df + 0.5) / (df + 0.5))``; 0 for a term the corpus lacks."""
        df = self.df.get(term, 0)
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5)) if df else 0.0


class BM25Teacher(Teacher):
    """BM25 (Lucene's variant, bm25s's defaults ``k1=1.5, b=0.75``) with the corpus's statistics."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, statistics: str = "corpus"):
        if statistics not in STATISTICS:
            raise RerankerError(f"the bm25 teacher's statistics must be one of {', '.join(STATISTICS)}, got {statistics!r}")
        super().__init__(k1=k1, b=b, statistics=statistics)
        self._stats: CorpusStatistics | None = None
        self._corpus: Corpus | None = None
        self._terms: dict[str, Counter[str]] = {}  # candidates recur across queries: analyse each text once
        self.cache_size = 100_000

    def prepare(self, corpus: Corpus) -> None:
        """The corpus's statistics, computed once per corpus (the weight check and the labelling prepare the same one)."""
        if self.params["statistics"] == "corpus" and self._corpus is not corpus:
            self._stats = CorpusStatistics.of(corpus)
            self._corpus = corpus

    def _doc_terms(self, texts: Sequence[str]) -> list[Counter[str]]:
        new = sorted({t for t in texts if t not in self._terms})
        if new:
            if len(self._terms) + len(new) > self.cache_size:
                self._terms.clear()
            self._terms.update(zip(new, map(Counter, analyze_many(new))))
        return [self._terms[t] for t in texts]

    def bm25(self, query: str, documents: Sequence[str]) -> list[float]:
        """The BM25 score of ``query`` against each text, with the corpus's statistics (after :meth:`prepare`)."""
        if self._stats is None:
            raise TeacherError("the bm25 teacher needs its corpus: call prepare(corpus) first")
        k1, b, stats = self.params["k1"], self.params["b"], self._stats
        weights = [(t, stats.idf(t)) for t in analyze_many([query])[0]]
        out = []
        for counts in self._doc_terms(documents):
            norm = k1 * (1.0 - b + b * sum(counts.values()) / stats.avgdl)
            out.append(sum(w * counts[t] / (counts[t] + norm) for t, w in weights if w and counts[t]))
        return out

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        if self.params["statistics"] == "first-stage":
            missing = [p for p in pairs if p.first_stage is None]
            if missing:
                raise TeacherError(f"the bm25 teacher with statistics=first-stage needs each pair's first-stage score; "
                                   f"pair ({missing[0].query_id!r}, {missing[0].doc_id!r}) has none (label from a candidate run)")
            return zscore_judgements(pairs, [float(p.first_stage) for p in pairs])
        raw: list[float] = [0.0] * len(pairs)
        by_query: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            by_query.setdefault(p.query_id, []).append(i)
        for idx in by_query.values():
            for i, s in zip(idx, self.bm25(pairs[idx[0]].query, [pairs[i].document for i in idx])):
                raw[i] = s
        return zscore_judgements(pairs, raw)
