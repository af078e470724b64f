"""An ensemble of teachers: weighted fusion of per-query z-scores.

Members' scores live on different scales (BM25 scores, cosines, logits), so each member's
scores are standardised within the query's candidate group, combined with the weights, and
the label is the logistic of the combination. The default members are BM25 (with the whole
corpus's statistics) and all-MiniLM-L6-v2 (see benchmarks/results/teachers.md); the pipeline
chooses their weights on the corpus's own synthetic queries (:mod:`teacher.fusion`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from reranker.errors import RerankerError
from reranker.records import Corpus
from reranker.scoring import sigmoid

from ..base import Judgement, Pair, Teacher, make_teacher
from .normalize import zscores

DEFAULT_MEMBERS = [{"name": "bm25", "weight": 1.0}, {"name": "bi-encoder", "weight": 1.0}]


class EnsembleTeacher(Teacher):
    """``members``: a list of ``{"name": teacher, "weight": w, "params": {...}}``."""

    name = "ensemble"

    def __init__(self, members: list[dict[str, Any]] | None = None, temperature: float = 1.0):
        members = members or DEFAULT_MEMBERS
        super().__init__(members=members, temperature=temperature)
        if temperature <= 0:
            raise RerankerError(f"temperature must be > 0, got {temperature}")
        self.members: list[tuple[Teacher, float]] = []
        for i, m in enumerate(members):
            if not isinstance(m, dict) or "name" not in m:
                raise RerankerError(f"ensemble member {i}: expected {{'name': ..., 'weight': ..., 'params': {{...}}}}, got {m!r}")
            if m["name"] == "ensemble":
                raise RerankerError("an ensemble cannot contain an ensemble")
            unknown = set(m) - {"name", "weight", "params"}
            if unknown:
                raise RerankerError(f"ensemble member {i}: unknown keys {', '.join(sorted(unknown))}")
            self.members.append((make_teacher(m["name"], **m.get("params", {})), float(m.get("weight", 1.0))))
        self.prompt_version = "+".join(t.prompt_version for t, _ in self.members)

    def reweighted(self, weights: Sequence[float]) -> EnsembleTeacher:
        """The same members (their loaded models and caches shared) with other weights: a new fingerprint."""
        if len(weights) != len(self.members):
            raise RerankerError(f"{len(weights)} weights for an ensemble of {len(self.members)} members")
        other = copy.copy(self)
        members = [{**m, "weight": float(w)} for m, w in zip(self.params["members"], weights)]
        other.params = {**self.params, "members": members}
        other.members = [(t, float(w)) for (t, _), w in zip(self.members, weights)]
        return other

    def prepare(self, corpus: Corpus) -> None:
        for teacher, _ in self.members:
            teacher.prepare(corpus)

    def warm_up(self) -> None:
        for teacher, _ in self.members:
            teacher.warm_up()

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        fused = [0.0] * len(pairs)
        for teacher, weight in self.members:
            z = zscores(pairs, [j.score for j in teacher.score_batch(pairs)])
            fused = [f + weight * zi for f, zi in zip(fused, z)]
        t = self.params["temperature"]
        return [Judgement(score=f, label=sigmoid(f / t)) for f in fused]
