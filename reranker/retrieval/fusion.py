"""Hybrid retrieval: fuse several runs into one with ranx (reciprocal rank fusion by default)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ..errors import RerankerError
from ..records import Run

METHODS = ("rrf", "wsum", "combsum", "combmnz", "isr", "log_isr", "bordafuse")


def fuse(runs: Sequence[Run], method: str = "rrf", k: int = 60, weights: Sequence[float] | None = None, name: str | None = None) -> Run:
    """Fuse ``runs`` query by query.

    ``rrf`` is reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009):
    ``score(d) = sum over runs of 1 / (k + rank(d))``. ``wsum`` is a weighted sum of
    min-max normalised scores (``weights`` required); the other names are ranx's fusion
    methods. A query missing from some runs is fused from the runs that have it.
    """
    from ranx import fuse as ranx_fuse

    if len(runs) < 2:
        raise RerankerError("fusion needs at least two runs")
    if method not in METHODS:
        raise RerankerError(f"unknown fusion method {method!r}; choose one of: {', '.join(METHODS)}")
    if weights is not None and len(weights) != len(runs):
        raise RerankerError(f"{len(weights)} weights given for {len(runs)} runs")
    if method == "wsum" and weights is None:
        raise RerankerError("wsum fusion needs one weight per run")
    query_ids = sorted(set().union(*(set(r) for r in runs)))
    padded = []
    for i, run in enumerate(runs):
        data = {q: dict(run[q]) if q in run and len(run[q]) else {} for q in query_ids}
        padded.append(Run(data, name=run.name or f"run{i}").to_ranx())
    params = {"k": k} if method == "rrf" else {}
    if weights is not None:
        params["weights"] = list(weights)
    norm = "min-max" if method in ("wsum", "combsum", "combmnz") else None
    with warnings.catch_warnings():  # numba's int cast notes inside ranx
        warnings.filterwarnings("ignore", message=".*unsafe cast.*")
        fused = ranx_fuse(padded, norm=norm, method=method, params=params)
    out = Run(name=name or f"{method}(" + ",".join(r.name or "?" for r in runs) + ")")
    for qid, docs in fused.to_dict().items():
        for docid, score in docs.items():
            out.add(qid, docid, float(score))
    return out
