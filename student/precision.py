"""`reranker export --precision auto`: the fastest graph whose ranking stays within an nDCG budget.

Quantisation trades quality for speed by an amount that depends on the student (how close its
scores sit), the data and the CPU, so the export measures it instead of assuming it. Each
candidate graph (fp32, int8 dynamic, int8 weight-only; see :mod:`student.export`) re-ranks the
calibration sample (the parity sample: the user's pairs or the embedded demo corpus's BM25
candidates) through the serving scorer (:mod:`reranker.onnx_runtime`, CPU, the same threads);
the export keeps the fastest graph whose nDCG@10 is at most ``max_ndcg_drop`` below fp32's.

The drop is measured (ranx nDCG@10) against fp32's own ranking as graded truth (its top 10
graded 10..1): how far a graph's top 10 departs from fp32's, weighted to the top, label-free
and strict (a swap among unjudged documents counts too). When the sample has relevance
judgements (the demo corpus, a data set with qrels, a pairs file with ``label``), the drop on
them is measured too and the larger of the two is held to the budget: a judged nDCG@10 on a
few calibration queries is noisy in both directions, and a lucky gain must not hide a ranking
that departs from fp32's. fp32 is always within the budget, so
there is always a choice. Speed is the best of ``passes`` timed rounds after the parity check's own pass, the
candidates taken in turn within each round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from reranker.onnx_manifest import PrecisionCandidate, PrecisionChoice
from reranker.records import Qrels, Run

from .parity import ParitySample, top_k_agreement

log = logging.getLogger(__name__)

DEFAULT_MAX_NDCG_DROP = 0.005


@dataclass
class Measured:
    """A candidate graph's scores and speed on the calibration sample."""

    name: str
    precision: str
    int8_method: str | None
    scores: np.ndarray
    pairs_per_second: float
    bytes: int


def measure(candidates: list[tuple[Measured, object]], sample: ParitySample, passes: int = 2, batch_size: int = 32,
            clock=time.perf_counter) -> list[Measured]:
    """Time each candidate's scorer (an :class:`~reranker.onnx_runtime.OnnxScorer` that has already scored the sample
    once, the parity check: its warm-up) over ``sample``, ``passes`` rounds that take the candidates in turn (so a change
    in the machine's load falls on all of them alike, not on whichever came last); each keeps its best round.
    ``candidates``: (the candidate with its parity scores and size, its scorer); returns them with pairs/s filled in.
    ``clock``: seconds (a test injects its own)."""
    best = [float("inf")] * len(candidates)
    for _ in range(max(1, passes)):
        for i, (_, scorer) in enumerate(candidates):
            start = clock()
            scorer.score(sample.pairs, batch_size=batch_size)
            best[i] = min(best[i], clock() - start)
    for (m, _), seconds in zip(candidates, best):
        m.pairs_per_second = len(sample.pairs) / seconds
        log.info("%s: %.1f pairs/s on %d pairs", m.name, m.pairs_per_second, len(sample.pairs))
    return [m for m, _ in candidates]


def fidelity_ndcg(scores: np.ndarray, sample: ParitySample, reference: np.ndarray) -> float:
    """nDCG@10 (ranx) of ranking each query group by ``scores`` with fp32's ranking ``reference`` as the truth:
    its top 10 graded 10..1, so fp32 scores 1 and a swap near the top costs more than one near the tenth place."""
    qrels = Qrels(name="fp32")
    members: dict[int, list[int]] = {}
    for i, group in enumerate(sample.groups):
        members.setdefault(group, []).append(i)
    for group, idx in members.items():
        for rank, j in enumerate(np.argsort(-reference[idx], kind="stable")[:10]):
            qrels.add(str(group), str(idx[j]), 10 - rank)
    return _ndcg(qrels, scores, sample)


def judged_ndcg(scores: np.ndarray, sample: ParitySample) -> tuple[float, int] | None:
    """nDCG@10 (ranx) with the sample's relevance judgements over the groups that have a relevant pair, and how many
    groups those are; ``None`` without judgements."""
    if sample.labels is None or not any(label > 0 for label in sample.labels):
        return None
    qrels = Qrels(name="judged")
    for i, (group, label) in enumerate(zip(sample.groups, sample.labels)):
        if label > 0:
            qrels.add(str(group), str(i), int(label))
    return _ndcg(qrels, scores, sample), len(qrels)


def _ndcg(qrels: Qrels, scores: np.ndarray, sample: ParitySample) -> float:
    from reranker.evaluation import evaluate

    run = Run(name="candidate")
    for i, (group, score) in enumerate(zip(sample.groups, scores)):
        if str(group) in qrels:
            run.add(str(group), str(i), float(score))
    return evaluate(qrels, run, ["ndcg@10"])["candidate"]["ndcg@10"]


def drop_bases(reference: np.ndarray, sample: ParitySample) -> tuple[float, tuple[float, int] | None]:
    """fp32's own figures that :func:`ndcg_drop` subtracts from: its fidelity nDCG@10 (1, less where fp32 itself has
    ties) and its judged nDCG@10 with the number of judged groups (``None`` without judgements)."""
    return fidelity_ndcg(reference, sample, reference), judged_ndcg(reference, sample)


def ndcg_drop(scores: np.ndarray, sample: ParitySample, reference: np.ndarray,
              bases: tuple[float, tuple[float, int] | None] | None = None) -> tuple[float, float, float | None]:
    """The drop held to the budget, and its parts: (max of the two, the drop against fp32's own ranking, the drop on
    the sample's judgements or ``None``); ``reference``: fp32's scores; ``bases``: :func:`drop_bases` of it, when
    several candidates are compared with the same reference."""
    fidelity_base, judged_base = bases or drop_bases(reference, sample)
    fidelity = fidelity_base - fidelity_ndcg(scores, sample, reference)
    judged = None if judged_base is None else judged_base[0] - judged_ndcg(scores, sample)[0]
    return (fidelity if judged is None else max(fidelity, judged)), fidelity, judged


def choose(measured: list[Measured], sample: ParitySample, max_ndcg_drop: float = DEFAULT_MAX_NDCG_DROP,
           threads: int | None = None, excluded: list[str] | None = None) -> PrecisionChoice:
    """The fastest of ``measured`` (fp32 among them) within ``max_ndcg_drop`` of fp32's nDCG@10; ties go to the smaller file.

    ``excluded``: graphs that were built but not measured (why, in words), for the reason."""
    reference = next(m for m in measured if m.precision == "fp32")
    bases = drop_bases(reference.scores, sample)
    judged_base = bases[1]
    rows = []
    for m in measured:
        drop, fidelity, judged = ndcg_drop(m.scores, sample, reference.scores, bases)
        rows.append(PrecisionCandidate(
            name=m.name, precision=m.precision, int8_method=m.int8_method, pairs_per_second=round(m.pairs_per_second, 2),
            ndcg_drop=round(drop, 6), fidelity_drop=round(fidelity, 6), judged_drop=None if judged is None else round(judged, 6),
            top10_agreement=top_k_agreement(reference.scores, m.scores, sample.groups, 10),
            bytes=m.bytes, within_budget=m is reference or drop <= max_ndcg_drop))
    what = "fp32's own ranking as graded truth (the sample has no judgements)" if judged_base is None else (
        f"the larger of the drop against fp32's own ranking and the drop on the sample's judgements ({judged_base[1]} judged queries)")
    allowed = [r for r in rows if r.within_budget]
    best = max(allowed, key=lambda r: (r.pairs_per_second, -r.bytes))
    faster = [r for r in rows if not r.within_budget and r.pairs_per_second > best.pairs_per_second]
    reason = f"{best.name}: the fastest within the budget ({best.pairs_per_second:.1f} pairs/s, nDCG@10 drop {best.ndcg_drop:+.4f})"
    if faster:
        reason += "; faster but over the budget: " + ", ".join(
            f"{r.name} ({r.pairs_per_second:.1f} pairs/s, drop {r.ndcg_drop:+.4f})" for r in faster)
    if excluded:
        reason += "; not candidates: " + ", ".join(excluded)
    log.info("precision auto: %s", reason)
    return PrecisionChoice(precision=best.precision, candidate=best.name, max_ndcg_drop=max_ndcg_drop, measured_against=what,
                           pairs=len(sample.pairs), queries=sample.num_queries, sample=sample.source, threads=threads,
                           candidates=rows, reason=reason)
