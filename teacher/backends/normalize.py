"""Per-query score normalisation for teachers whose scores are not probabilities."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from reranker.scoring import sigmoid

from ..base import Judgement, Pair


def zscores(pairs: Sequence[Pair], scores: Sequence[float]) -> list[float]:
    """Each score as a z-score within its query's group (0 for a group of one or of equal scores)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[p.query_id].append(i)
    out = [0.0] * len(scores)
    for idx in groups.values():
        vals = [scores[i] for i in idx]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        for i in idx:
            out[i] = (scores[i] - mean) / std if std > 1e-12 else 0.0
    return out


def zscore_judgements(pairs: Sequence[Pair], raw: Sequence[float]) -> list[Judgement]:
    """Keep the raw score; the soft label is the logistic of the per-query z-score.

    Teachers such as BM25 or a bi-encoder give scores on no probability scale; within a
    query's candidate group their z-score says how much better than the group's average a
    candidate is, and ``sigmoid(z)`` turns that into a label in (0, 1).
    """
    return [Judgement(score=float(r), label=sigmoid(z)) for r, z in zip(raw, zscores(pairs, raw))]
