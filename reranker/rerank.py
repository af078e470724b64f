"""Batch re-ranking without HTTP: re-score a first-stage run's top-k with a model folder.

:func:`score_pairs` is the one way a scorer's scores become a :class:`~reranker.records.Run`: re-ranking a run
(:func:`rerank_run`), the student's dev evaluation in training, the promotion check and active selection all use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from .errors import RerankerError
from .records import Corpus, Query, Run

log = logging.getLogger(__name__)


def rerank_run(model, queries: Mapping[str, Query], corpus: Corpus, run: Run, top_k: int = 100, batch_size: int = 32,
               progress: bool = True) -> Run:
    """Each query's ``top_k`` candidates of ``run`` re-scored by ``model`` (anything with ``score(pairs)``).

    Candidates below ``top_k`` are dropped, as re-ranking evaluations do.
    """

    pairs, keys = [], []
    for qid in run:
        if qid not in queries:
            continue
        for hit in run.ranking(qid)[:top_k]:
            doc = corpus.get(hit.doc_id)
            if doc is None:
                raise RerankerError(f"the run names document {hit.doc_id!r} (query {qid}), which the corpus does not have")
            pairs.append((queries[qid].text, doc.contents))
            keys.append((qid, hit.doc_id))
    if not pairs:
        raise RerankerError("the run and the queries have no query in common")
    return score_pairs(model, [(q, d, query, doc) for (q, d), (query, doc) in zip(keys, pairs)], batch_size=batch_size, progress=progress)


def score_pairs(model, keyed: Sequence[tuple[str, str, str, str]], name: str = "reranked", batch_size: int = 32,
                progress: bool = False) -> Run:
    """``model``'s score (anything with ``score(pairs, batch_size=...)``) of each ``(query id, doc id, query text,
    document text)`` of ``keyed``, as a run named ``name``."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    scores: list[float] = []
    chunk = batch_size * 16
    for i in tqdm(range(0, len(keyed), chunk), desc="re-ranking", unit="chunk", disable=not progress):
        part = keyed[i : i + chunk]
        scores.extend(float(s) for s in model.score([(query, doc) for _, _, query, doc in part], batch_size=batch_size))
    out = Run(name=name)
    for (qid, did, _, _), s in zip(keyed, scores):
        out.add(qid, did, s)
    seconds = max(time.perf_counter() - start, 1e-9)
    log.info("scored %d pairs in %.1f s (%.1f pairs/s)", len(keyed), seconds, len(keyed) / seconds)
    return out
