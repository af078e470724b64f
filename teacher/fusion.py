"""Choose an ensemble teacher's member weights on the corpus's own synthetic queries, without any judged data.

A synthetic query comes from a source passage, so each query's candidate group has a known positive.
The fit is a conditional logit (McFadden, "Conditional logit analysis of qualitative choice
behavior", 1973; the listwise softmax cross-entropy of ListNet, Cao et al., ICML 2007): the
weights ``w >= 0`` that maximise ``sum_g log softmax(Z_g w)[positive_g]``, where ``Z_g`` holds each
member's per-query z-scores of group ``g`` (exactly what the ensemble fuses).

A query copied out of its passage (the extractive generator's sentence; an LLM may copy too) makes
the positive trivial for a lexical member. So, as in the inverse cloze task (Lee et al., "Latent
Retrieval for Weakly Supervised Open Domain Question Answering", ACL 2019), the positive is scored
with the query's words taken out of it: a member must recognise the passage by what the rest of it
says, the way it must recognise a relevant passage that does not repeat the query.

The fit chooses the members' proportions; their total stays the configured one, because the total
sets how sharp the labels are (``sigmoid(fused / T)``), which the distillation recipe was set for.

The configured weights are the prior (equal weights by default: no member preferred), and the fitted
ones replace them only when the groups say so: cross-fitted (each fold's weights fitted on the other
folds), the fitted weights must rank the held-out positives higher than the configured ones, by a
one-sided paired t-test on the reciprocal ranks at ``max_p`` (0.05). A proxy this indirect (a source
passage is not a judged relevant one) earns no change on a flat or noisy objective; on the three judged
corpora of ``benchmarks/results/teacher_fusion.md`` an ungated fit lost 0.08 nDCG@10 on one of them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from reranker.errors import RerankerError

from reranker.records import Corpus, Query, Run

from .backends.ensemble import EnsembleTeacher
from .backends.normalize import zscores
from .base import Pair
from .labeling import query_groups

log = logging.getLogger(__name__)

#: groups that hold their source passage needed before a fit is tried (it fits two to a few numbers)
MIN_FIT_GROUPS = 20


@dataclass
class FusionFit:
    """What :func:`fit_ensemble` chose and on what."""

    members: list[str]
    weights: list[float]  # what the teacher uses: ``fitted`` when adopted, else ``configured``
    adopted: bool
    p_value: float  # one-sided paired t-test, cross-fitted reciprocal ranks: fitted > configured
    fitted: list[float]  # the proportions fitted on all groups, scaled to the configured total
    configured: list[float]
    groups: int  # candidate groups with their positive among the candidates
    masked: int  # of them, positives with the query's words taken out
    mrr_configured: float  # mean reciprocal rank of the positives under the configured weights
    mrr_fitted: float  # under each fold's weights fitted on the other folds (out of fold)
    mrr_members: list[float]  # each member alone

    def to_dict(self) -> dict:
        return asdict(self)


def without_query(passage: str, query: str) -> str | None:
    """``passage`` with every occurrence of ``query`` taken out (case and spacing ignored); None when it has none."""
    words = query.split()
    if not words:
        return None
    pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
    out, n = pattern.subn(" ", passage)
    return " ".join(out.split()) if n else None


def fit_weights(features: Sequence[np.ndarray], positives: Sequence[int], l2: float = 1e-4) -> np.ndarray:
    """Non-negative weights of the conditional logit ``P(positive | group) = softmax(F_g w)``.

    ``features[g]`` is ``[candidates, members]`` and ``positives[g]`` the row of the positive. ``l2`` is a
    small ridge on ``w`` that keeps the optimum finite when the groups are separable.
    """
    from scipy.optimize import minimize

    if not features:
        raise RerankerError("fitting fusion weights needs at least one candidate group with its positive")
    m = features[0].shape[1]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        total, grad = l2 * float(w @ w), 2 * l2 * w
        for f, pos in zip(features, positives):
            s = f @ w
            e = np.exp(s - s.max())
            p = e / e.sum()
            total -= np.log(p[pos])
            grad = grad - (f[pos] - p @ f)
        return total / len(features), grad / len(features)

    res = minimize(loss, np.ones(m), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * m)
    return np.asarray(res.x, dtype=np.float64)


def reciprocal_ranks(features: Sequence[np.ndarray], positives: Sequence[int], w: np.ndarray) -> np.ndarray:
    """1 / rank of each group's positive under ``F_g w``; a tie counts half a place (weights of 0 rank no positive first)."""
    out = []
    for f, pos in zip(features, positives):
        s = f @ w
        out.append(1.0 / (1 + int(np.sum(s > s[pos])) + (int(np.sum(s == s[pos])) - 1) / 2))
    return np.array(out)


def cross_fitted_ranks(features: Sequence[np.ndarray], positives: Sequence[int], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each group's reciprocal rank under weights fitted on the other folds (groups dealt to folds by a seeded shuffle)."""
    order = np.random.default_rng(seed).permutation(len(features))
    out = np.zeros(len(features))
    for k in range(min(folds, len(features))):
        held = order[k::folds]
        rest = np.setdiff1d(order, held)
        w = fit_weights([features[i] for i in rest], [positives[i] for i in rest])
        out[held] = reciprocal_ranks([features[i] for i in held], [positives[i] for i in held], w)
    return out


def better(new: np.ndarray, old: np.ndarray) -> float:
    """One-sided paired t-test p-value that ``new`` > ``old`` (1.0 when they never differ)."""
    from scipy.stats import ttest_rel

    if np.allclose(new, old):
        return 1.0
    return float(ttest_rel(new, old, alternative="greater").pvalue)


def member_features(teacher: EnsembleTeacher, groups: Sequence[list[Pair]]) -> list[np.ndarray]:
    """``[candidates, members]`` z-scores of each group, as the ensemble computes them before fusing."""
    flat = [p for g in groups for p in g]
    columns = [zscores(flat, [j.score for j in member.score_batch(flat)]) for member, _ in teacher.members]
    out, start = [], 0
    for g in groups:
        out.append(np.array([[c[i] for c in columns] for i in range(start, start + len(g))], dtype=np.float64))
        start += len(g)
    return out


def fit_ensemble(
    teacher: EnsembleTeacher, groups: Sequence[list[Pair]], positives: Mapping[str, str], batch_pairs: int = 256,
    mask_query: bool = True, max_p: float = 0.05, folds: int = 5,
) -> tuple[EnsembleTeacher, FusionFit]:
    """The ensemble re-weighted by a conditional-logit fit on ``groups`` (prepared teacher; see the module docstring).

    ``groups`` are candidate groups of synthetic queries (one query each); ``positives`` maps a query id to its
    source passage. Groups whose positive is not among their candidates are left out. ``mask_query=False`` scores
    the positives as they are (for comparison: a copied query then favours the lexical member). The teacher comes
    back re-weighted only when the fit is adopted (see the module docstring); else it is ``teacher`` itself.
    """
    usable, pos_rows, masked = [], [], 0
    for g in groups:
        pos = positives.get(g[0].query_id) if g else None
        rows = [i for i, p in enumerate(g) if p.doc_id == pos]
        if not rows or len(g) < 2:
            continue
        p = g[rows[0]]
        text = without_query(p.document, p.query) if mask_query else None
        if text:
            masked += 1
            g = [*g[: rows[0]], Pair(p.query_id, p.doc_id, p.query, text, p.first_stage), *g[rows[0] + 1 :]]
        usable.append(g)
        pos_rows.append(rows[0])
    if not usable:
        raise RerankerError("no candidate group holds its query's source passage: nothing to fit the ensemble's weights on")
    features: list[np.ndarray] = []
    chunk: list[list[Pair]] = []
    for g in [*usable, None]:
        if g is None or (chunk and sum(map(len, chunk)) + len(g) > batch_pairs):
            features += member_features(teacher, chunk)
            chunk = []
        if g is not None:
            chunk.append(g)
    configured = np.array([w for _, w in teacher.members], dtype=np.float64)
    raw = fit_weights(features, pos_rows)
    fitted = np.round(raw / raw.sum() * configured.sum(), 4) if raw.sum() > 0 else configured
    before = reciprocal_ranks(features, pos_rows, configured)
    after = cross_fitted_ranks(features, pos_rows, folds)
    p = better(after, before)
    adopted = bool(p < max_p and raw.sum() > 0)
    eye = np.eye(len(configured))
    fit = FusionFit(
        members=[m.name for m, _ in teacher.members], weights=(fitted if adopted else configured).tolist(), adopted=adopted,
        p_value=p, fitted=fitted.tolist(), configured=configured.tolist(), groups=len(usable), masked=masked,
        mrr_configured=float(before.mean()), mrr_fitted=float(after.mean()),
        mrr_members=[float(reciprocal_ranks(features, pos_rows, e).mean()) for e in eye],
    )
    log.info("ensemble weights on %d synthetic groups (%d positives without the query's words): fitted %s, MRR of the "
             "positives %.4f (configured %s) -> %.4f out of fold, p = %.3g: %s", fit.groups, fit.masked, fit.fitted,
             fit.mrr_configured, fit.configured, fit.mrr_fitted, p, "adopted" if adopted else "the configured weights stay")
    return (teacher.reweighted(fit.weights) if adopted else teacher), fit


def fit_on_queries(
    teacher: EnsembleTeacher, queries: Mapping[str, Query], positives: Mapping[str, str], corpus: Corpus, candidates: Run,
    query_ids: set[str],
) -> tuple[EnsembleTeacher, FusionFit | None]:
    """:func:`fit_ensemble` on the candidate groups of ``query_ids`` (the held-out queries; prepares the teacher).
    With fewer than :data:`MIN_FIT_GROUPS` of them holding their source passage: ``(teacher, None)``."""
    groups = list(query_groups(queries, corpus, candidates.restrict(query_ids)))
    if sum(1 for g in groups if any(p.doc_id == positives.get(p.query_id) for p in g)) < MIN_FIT_GROUPS:
        log.warning("fewer than %d held-out groups hold their source passage: the ensemble keeps its configured weights", MIN_FIT_GROUPS)
        return teacher, None
    teacher.prepare(corpus)
    teacher.warm_up()
    return fit_ensemble(teacher, groups, positives)
