"""Candidate mining: the pairs the teacher will label.

For each (synthetic) query: the first stage's top-k (BM25, dense, or their fusion) from
the retrieval layer; the query's source passage is kept as the positive even when the
first stage missed it; optionally only ``n_negatives`` hard negatives are sampled from the
rest of the top-k (deterministically, with a seed).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

from reranker.errors import RerankerError
from reranker.records import Query, Run
from reranker.retrieval import Retriever, fuse

log = logging.getLogger(__name__)


def mine_candidates(
    queries: Mapping[str, Query],
    retrievers: Sequence[Retriever],
    k: int = 20,
    positives: Mapping[str, str] | None = None,
    n_negatives: int | None = None,
    seed: int = 0,
) -> Run:
    """Candidates per query, as a run whose scores are the first stage's (fused when several).

    The positive (when given) is always in the result; with ``n_negatives`` the result is
    the positive plus that many negatives sampled from the other top-k candidates.
    """
    if not retrievers:
        raise RerankerError("candidate mining needs at least one retriever")
    if k < 1:
        raise RerankerError(f"k must be at least 1, got {k}")
    runs = [r.search_queries(queries, k) for r in retrievers]
    run = fuse(runs, "rrf", name="candidates") if len(runs) > 1 else runs[0]
    positives = positives or {}
    rng = random.Random(seed)
    out = Run(name="candidates")
    missed = 0
    for qid in queries:
        ranking = run.ranking(qid)[:k]
        pos = positives.get(qid)
        others = [h for h in ranking if h.doc_id != pos]
        if n_negatives is not None:
            others = sorted(rng.sample(others, min(n_negatives, len(others))), key=lambda h: h.rank)
        floor = min((h.score for h in ranking), default=0.0)
        if pos is not None:
            hit = next((h for h in ranking if h.doc_id == pos), None)
            if hit is None:
                missed += 1
            out.add(qid, pos, hit.score if hit else floor - 1.0)  # a missed positive ranks below the rest
        for h in others:
            out.add(qid, h.doc_id, h.score)
    if positives:
        log.info("mined candidates for %d queries; the first stage missed the positive of %d", len(queries), missed)
    return out
