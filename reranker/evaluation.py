"""Evaluation with ranx: metrics, paired significance tests, and reports (markdown and JSON).

Conventions are trec_eval's: nDCG uses linear gains, and a query judged in the qrels but
missing from a run counts as 0 (so a run cannot gain by dropping hard queries). Queries
in the run but not in the qrels are ignored. A warning says how many were affected.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import RerankerError
from .records import Qrels, Run

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")
TESTS = ("student", "fisher", "tukey")


def _check(qrels: Qrels, run: Run) -> None:
    common = set(qrels) & set(run)
    if not common:
        q_ex = ", ".join(sorted(qrels)[:3])
        r_ex = ", ".join(sorted(run)[:3])
        raise RerankerError(
            f"the qrels ({qrels.name or 'qrels'}) and the run {run.name!r} have no query in common "
            f"(qrels ids: {q_ex}, ...; run ids: {r_ex}, ...). Are they for the same data set and split?"
        )
    missing = len(set(qrels) - common)
    if missing:
        log.warning("run %r has no results for %d of %d judged queries; they count as 0", run.name, missing, len(qrels))


def _unique_names(runs: Sequence[Run]) -> list[Run]:
    seen: dict[str, int] = {}
    out = []
    for i, run in enumerate(runs):
        name = run.name or f"run{i + 1}"
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        else:
            seen[name] = 1
        out.append(Run(run.to_dict(), name=name) if name != run.name else run)
    return out


def _ranx_call(fn, *args, **kwargs):
    try:
        with warnings.catch_warnings():  # numba's int cast notes inside ranx are not the user's concern
            warnings.filterwarnings("ignore", message=".*unsafe cast.*")
            return fn(*args, **kwargs)
    except (KeyError, ValueError, AssertionError) as exc:
        raise RerankerError(f"ranx could not evaluate: {exc!r}; check the metric names (e.g. {', '.join(DEFAULT_METRICS)})") from None


def evaluate(qrels: Qrels, runs: Run | Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """Mean of each metric for each run: ``{run name: {metric: value}}``."""
    from ranx import evaluate as ranx_evaluate

    runs = _unique_names([runs] if isinstance(runs, Run) else list(runs))
    rq = qrels.to_ranx()
    out: dict[str, dict[str, float]] = {}
    for run in runs:
        _check(qrels, run)
        scores = _ranx_call(ranx_evaluate, rq, run.to_ranx(), list(metrics), make_comparable=True)
        if not isinstance(scores, dict):
            scores = {metrics[0]: scores}
        out[run.name] = {m: float(scores[m]) for m in metrics}
    return out


@dataclass
class Comparison:
    """Scores of several runs with paired significance tests against each other."""

    metrics: list[str]
    scores: dict[str, dict[str, float]]
    p_values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    test: str = "student"
    max_p: float = 0.05
    num_queries: int = 0

    def better_than(self, run: str, metric: str) -> list[str]:
        """Runs that ``run`` beats significantly on ``metric``."""
        return [
            other for other, ps in self.p_values.get(run, {}).items()
            if ps[metric] < self.max_p and self.scores[run][metric] > self.scores[other][metric]
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics, "test": self.test, "max_p": self.max_p, "num_queries": self.num_queries,
            "scores": self.scores, "p_values": self.p_values,
        }

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table; superscript letters name the runs a score is significantly better than."""
        names = list(self.scores)
        letters = {n: chr(ord("a") + i) for i, n in enumerate(names)}
        head = "| | run | " + " | ".join(self.metrics) + " |"
        lines = [head, "|---|---|" + "---|" * len(self.metrics)]
        for name in names:
            cells = []
            for m in self.metrics:
                marks = "".join(sorted(letters[o] for o in self.better_than(name, m)))
                cells.append(f"{self.scores[name][m]:.{digits}f}" + (f"<sup>{marks}</sup>" if marks else ""))
            lines.append(f"| {letters[name]} | {name} | " + " | ".join(cells) + " |")
        if len(names) > 1:
            test = {"student": "two-sided paired t-test", "fisher": "Fisher's randomisation test", "tukey": "Tukey's HSD"}[self.test]
            lines.append("")
            lines.append(f"Superscripts: significantly better than that run ({test}, p < {self.max_p}; {self.num_queries} queries).")
        return "\n".join(lines)


def compare(
    qrels: Qrels, runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS,
    test: str = "student", max_p: float = 0.05, seed: int = 42,
) -> Comparison:
    """Evaluate ``runs`` on ``qrels`` and test every pair of runs for significance (ranx.compare)."""
    from ranx import compare as ranx_compare

    if test not in TESTS:
        raise RerankerError(f"unknown significance test {test!r}; choose one of: {', '.join(TESTS)}")
    runs = _unique_names(list(runs))
    if not runs:
        raise RerankerError("no run to evaluate")
    for run in runs:
        _check(qrels, run)
    metrics = list(metrics)
    if len(runs) == 1:
        return Comparison(metrics, evaluate(qrels, runs, metrics), test=test, max_p=max_p, num_queries=len(qrels))
    report = _ranx_call(
        ranx_compare, qrels.to_ranx(), [r.to_ranx() for r in runs], metrics,
        stat_test=test, max_p=max_p, random_seed=seed, make_comparable=True,
    )
    d = report.to_dict()
    scores = {n: {m: float(d[n]["scores"][m]) for m in metrics} for n in d["model_names"]}
    p_values = {n: {o: {m: float(p) for m, p in ps.items()} for o, ps in d[n]["comparisons"].items()} for n in d["model_names"]}
    return Comparison(metrics, scores, p_values, test=test, max_p=max_p, num_queries=len(qrels))
