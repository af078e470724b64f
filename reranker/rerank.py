"""Batch re-ranking without HTTP: re-score a first-stage run's top-k with a model folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from .errors import RerankerError
from .records import Corpus, Query, Run

log = logging.getLogger(__name__)


def rerank_run(model, queries: Mapping[str, Query], corpus: Corpus, run: Run, top_k: int = 100, batch_size: int = 32,
               progress: bool = True) -> Run:
    """Each query's ``top_k`` candidates of ``run`` re-scored by ``model`` (anything with ``score(pairs)``).

    Candidates below ``top_k`` are dropped, as re-ranking evaluations do.
    """
    from tqdm.auto import tqdm

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
    start = time.perf_counter()
    scores = []
    chunk = batch_size * 16
    for i in tqdm(range(0, len(pairs), chunk), desc="re-ranking", unit="chunk", disable=not progress):
        scores.extend(float(s) for s in model.score(pairs[i : i + chunk], batch_size=batch_size))
    out = Run(name="reranked")
    for (qid, did), s in zip(keys, scores):
        out.add(qid, did, s)
    log.info("re-ranked %d pairs in %.1f s (%.1f pairs/s)", len(pairs), time.perf_counter() - start, len(pairs) / (time.perf_counter() - start))
    return out
