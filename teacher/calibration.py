"""Temperature scaling of a teacher's scores on seed judgements (Guo et al. 2017).

A teacher's stored ``score`` is on a logit scale (an LLM's log P(yes) - log P(no), an
ensemble's fused z-score). Calibration fits a temperature ``T`` (and, optionally, a bias
``b``) so that ``sigmoid(score / T + b)`` matches the seed labels, by minimising the mean
negative log-likelihood (binary cross-entropy; graded seeds give soft targets ``grade / G``).
With ``w = 1 / T`` the problem is a convex logistic regression in ``(w, b)``, solved here by
Newton's method with a backtracking line search (NumPy only).

The calibration is stored in the label store beside the labels it belongs to (same teacher
fingerprint and prompt) and applied by :meth:`teacher.store.LabelStore.export_groups`. It is
not the student's distillation temperature (``DistillConfig.temperature``, the softmax
temperature of the listwise KL loss): that one shapes the student's training signal and is
set separately.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reranker.errors import RerankerError
from reranker.scoring import sigmoid

log = logging.getLogger(__name__)
EPS = 1e-12


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    bias: float = 0.0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def apply(self, scores) -> np.ndarray:
        return sigmoid(np.asarray(scores, dtype=np.float64) / self.temperature + self.bias)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nll(probs, targets) -> float:
    """Mean binary cross-entropy of probabilities ``probs`` against targets in [0, 1]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(targets, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ece(probs, targets, bins: int = 10) -> float:
    """Expected calibration error with ``bins`` equal-width bins: sum over bins of |mean p - mean y| * share."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += abs(p[mask].mean() - y[mask].mean()) * mask.sum()
    return float(total / len(p))


def reliability_bins(probs, targets, bins: int = 10) -> list[dict[str, float]]:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(mask.sum()),
                        "confidence": float(p[mask].mean()), "accuracy": float(y[mask].mean())})
    return out


def _objective(params: np.ndarray, s: np.ndarray, y: np.ndarray, fit_bias: bool):
    w, b = params[0], (params[1] if fit_bias else 0.0)
    z = w * s + b
    p = sigmoid(z)
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))  # BCE with logits, stable
    r = p - y
    grad = np.array([np.mean(r * s), np.mean(r)]) if fit_bias else np.array([np.mean(r * s)])
    h = p * (1 - p)
    hess = (np.array([[np.mean(h * s * s), np.mean(h * s)], [np.mean(h * s), np.mean(h)]]) if fit_bias
            else np.array([[np.mean(h * s * s)]]))
    return loss, grad, hess


def fit_calibration(scores, targets, bias: bool = False, max_iter: int = 100, tol: float = 1e-10) -> Calibration:
    """Fit ``T`` (and ``b`` with ``bias=True``) minimising the NLL of ``sigmoid(score / T + b)``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if s.shape != y.shape or s.ndim != 1 or len(s) < 2:
        raise RerankerError(f"calibration needs matching 1-d scores and targets (at least 2), got {s.shape} and {y.shape}")
    if not (np.isfinite(s).all() and ((y >= 0) & (y <= 1)).all()):
        raise RerankerError("calibration needs finite scores and targets in [0, 1]")
    if y.min() == y.max():
        raise RerankerError(f"every seed target is {y[0]:g}: calibration needs both relevant and non-relevant seed pairs")
    params = np.array([1.0, 0.0]) if bias else np.array([1.0])
    loss, grad, hess = _objective(params, s, y, bias)
    start_loss = loss
    for it in range(max_iter):
        try:
            step = np.linalg.solve(hess + 1e-9 * np.eye(len(params)), grad)
        except np.linalg.LinAlgError:
            step = grad
        t = 1.0
        while t > 1e-8:
            cand = params - t * step
            new_loss, new_grad, new_hess = _objective(cand, s, y, bias)
            if new_loss <= loss:
                break
            t *= 0.5
        else:
            break
        improved = loss - new_loss
        params, loss, grad, hess = cand, new_loss, new_grad, new_hess
        if improved < tol:
            break
    w = float(params[0])
    if w <= 0:
        raise RerankerError(
            f"the teacher's scores are not positively related to the seed labels (fitted 1/T = {w:.4g}); "
            "check that the seeds belong to this data set and teacher"
        )
    b = float(params[1]) if bias else 0.0
    log.info("calibration: T=%.4f b=%.4f, NLL %.4f -> %.4f on %d pairs (%d iterations)", 1 / w, b, start_loss, loss, len(s), it + 1)
    return Calibration(temperature=1.0 / w, bias=b, info={"pairs": len(s), "nll_fit": loss})


def report(scores, targets, labels_before, calibration: Calibration, bins: int = 10) -> dict[str, Any]:
    """NLL and ECE of the teacher's own labels and of the calibrated ones, with reliability bins."""
    after = calibration.apply(scores)
    return {
        "pairs": len(targets),
        "positives": float(np.sum(targets)),
        "before": {"nll": nll(labels_before, targets), "ece": ece(labels_before, targets, bins),
                   "bins": reliability_bins(labels_before, targets, bins)},
        "after": {"nll": nll(after, targets), "ece": ece(after, targets, bins), "bins": reliability_bins(after, targets, bins)},
    }


def reliability_plot(path: str | Path, targets, before, after, bins: int = 10, title: str = "") -> None:
    """Reliability diagrams before and after calibration, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, probs, name in ((axes[0], before, "before"), (axes[1], after, "after")):
        rows = reliability_bins(probs, targets, bins)
        centres = [(r["lo"] + r["hi"]) / 2 for r in rows]
        ax.bar(centres, [r["accuracy"] for r in rows], width=1 / bins, edgecolor="black", alpha=0.7, label="share relevant")
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="tab:red", label="mean label")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_title(f"{name}: NLL {nll(probs, targets):.3f}, ECE {ece(probs, targets, bins):.3f}")
        ax.set_xlabel("teacher label (predicted P(relevant))")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("observed share relevant")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibrate_store(store, teacher_fp: str, prompt: str, seeds, bias: bool = False, holdout: float = 0.3,
                    seed: int = 0, bins: int = 10) -> tuple[Calibration, dict[str, Any], dict[str, np.ndarray]]:
    """Fit on the seed pairs the store has labels for (whole queries held out), store the result, report.

    Returns the calibration, the report (NLL/ECE before and after on the held-out pairs, or on
    the fit pairs with ``holdout=0``) and the held-out arrays (``scores``, ``labels``, ``targets``)
    for a plot. Seed pairs without a label are an error naming how many.
    """
    from .seeds import split_by_query

    stored = {(r.query_id, r.doc_id): r for r in store.labels(teacher_fp, prompt)}
    missing = [(j.query_id, j.doc_id) for j in seeds.judgements if (j.query_id, j.doc_id) not in stored]
    if missing:
        raise RerankerError(
            f"{len(missing)} of {len(seeds)} seed pairs have no label of {teacher_fp} / {prompt} in {store.path} "
            f"(e.g. {missing[0]}); label them first"
        )
    fit, held = split_by_query(seeds, holdout, seed)

    def arrays(js) -> dict[str, np.ndarray]:
        rows = [stored[j.query_id, j.doc_id] for j in js]
        return {"scores": np.array([r.score for r in rows]), "labels": np.array([r.label for r in rows]),
                "targets": np.array([j.target(seeds.grade_max) for j in js])}

    a_fit = arrays(fit)
    cal = fit_calibration(a_fit["scores"], a_fit["targets"], bias=bias)
    a_eval = arrays(held) if held else a_fit
    rep = report(a_eval["scores"], a_eval["targets"], a_eval["labels"], cal, bins)
    rep = {"teacher": teacher_fp, "prompt": prompt, "seeds": seeds.path, "temperature": cal.temperature, "bias": cal.bias,
           "fit_pairs": len(fit), "fit_queries": len({j.query_id for j in fit}),
           "evaluated_on": "held-out queries" if held else "the fit pairs (no hold-out)",
           "eval_queries": len({j.query_id for j in (held or fit)}), **rep}
    store.set_calibration(teacher_fp, prompt, cal.temperature, cal.bias,
                          details={k: v for k, v in rep.items() if k not in ("before", "after")}
                          | {"nll_before": rep["before"]["nll"], "nll_after": rep["after"]["nll"]})
    return cal, rep, a_eval
