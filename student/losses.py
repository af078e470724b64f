"""Distillation losses: pure functions of the student's and the teacher's scores.

Every loss takes ``[n_queries, n_candidates]`` tensors (one row per query, its candidates
as in :class:`teacher.store.LabelGroup`, the first one being the positive where a loss needs
one) and an optional boolean ``mask`` of the same shape, ``True`` for real candidates and
``False`` for padding: a masked candidate changes nothing. All arithmetic is in float32,
whatever the dtype of the scores. :data:`LOSSES` names them; :func:`combined_loss` mixes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from reranker.errors import RerankerError
from reranker.registry import BackendSpec, Registry

LOSSES = Registry("loss", {
    "listwise_kl": BackendSpec("student.losses", "listwise_kl", "train", "KL(teacher || student) over each query's candidates, x T^2"),
    "pointwise_bce": BackendSpec("student.losses", "pointwise_bce", "train", "binary cross-entropy on the teacher's soft labels"),
    "margin_mse": BackendSpec("student.losses", "margin_mse", "train", "MSE of the positive-minus-negative score margins"),
})
_TARGET = {"listwise_kl": "teacher_scores", "pointwise_bce": "teacher_labels", "margin_mse": "teacher_scores"}


def _prepare(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, name: str):
    if student.dim() != 2 or student.shape != teacher.shape:
        raise RerankerError(f"{name}: student and teacher scores must both be [n_queries, n_candidates], got "
                            f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if mask is None:
        mask = torch.ones(student.shape, dtype=torch.bool, device=student.device)
    elif mask.shape != student.shape or mask.dtype != torch.bool:
        raise RerankerError(f"{name}: the mask must be a bool tensor of shape {tuple(student.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    mask = mask.to(student.device)
    # padded entries may hold anything (even inf / NaN): zero them before any arithmetic, so
    # neither the value nor the gradient of a loss can see them
    s, t = student.float(), teacher.float().to(student.device)
    return torch.where(mask, s, torch.zeros_like(s)), torch.where(mask, t, torch.zeros_like(t)), mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (still differentiable) when nothing is unmasked."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T^2``, mean over the queries.

    Knowledge distillation as in Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a
    Neural Network": the ``T^2`` factor keeps the gradients' size independent of ``T``. Both
    sides go through ``log_softmax`` in fp32; adding a constant to a query's scores changes
    nothing. Queries with no unmasked candidate are left out of the mean.
    """
    if temperature <= 0:
        raise RerankerError(f"listwise_kl: the temperature must be positive, got {temperature}")
    s, t, mask = _prepare(student, teacher, mask, "listwise_kl")
    neg_inf = torch.tensor(float("-inf"), device=s.device)
    log_s = torch.log_softmax(torch.where(mask, s / temperature, neg_inf), dim=-1)
    log_t = torch.log_softmax(torch.where(mask, t / temperature, neg_inf), dim=-1)
    zero = torch.zeros_like(log_s)  # masked (and all-masked rows) contribute exactly 0, never inf - inf
    log_s, log_t = torch.where(mask, log_s, zero), torch.where(mask, log_t, zero)
    per_query = (log_t.exp() * (log_t - log_s) * mask).sum(dim=-1)
    return _masked_mean(per_query, mask.any(dim=-1)) * temperature**2


def pointwise_bce(student: torch.Tensor, teacher_labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(student)`` against the teacher's soft labels in [0, 1].

    The soft-label (probability target) form of the pointwise monoT5 / cross-encoder loss
    (Nogueira & Cho 2019, "Passage Re-ranking with BERT"; soft targets as in Hinton et al. 2015),
    via ``binary_cross_entropy_with_logits``; mean over the unmasked candidates. Its minimum is
    the labels' entropy, not 0, unless the labels are 0 or 1.
    """
    s, y, mask = _prepare(student, teacher_labels, mask, "pointwise_bce")
    losses = F.binary_cross_entropy_with_logits(s, y, reduction="none")
    return _masked_mean(losses, mask)


def margin_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MarginMSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation"): the mean squared error between the student's and
    the teacher's margins ``score[:, 0] - score[:, j]`` of the first candidate (the positive) over
    each other candidate ``j``; mean over the unmasked pairs.
    """
    s, t, mask = _prepare(student, teacher, mask, "margin_mse")
    if s.shape[1] < 2:
        raise RerankerError("margin_mse needs at least two candidates per query (a positive, then negatives)")
    pair_mask = mask[:, :1] & mask[:, 1:]
    diff = (s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])
    return _masked_mean(diff**2, pair_mask)


def combined_loss(
    weights: Mapping[str, float], student: torch.Tensor, *, teacher_scores: torch.Tensor | None = None,
    teacher_labels: torch.Tensor | None = None, mask: torch.Tensor | None = None, temperature: float = 1.0,
) -> torch.Tensor:
    """``sum(weight * loss)`` over the named :data:`LOSSES` (weights 0 are skipped).

    ``listwise_kl`` and ``margin_mse`` read ``teacher_scores`` (the teacher's raw scores),
    ``pointwise_bce`` reads ``teacher_labels`` (its soft labels); ``temperature`` is listwise_kl's.
    """
    if not weights:
        raise RerankerError(f"combined_loss: no losses given; choose from: {', '.join(LOSSES)}")
    targets = {"teacher_scores": teacher_scores, "teacher_labels": teacher_labels}
    total = None
    for name, weight in weights.items():
        fn = LOSSES.load(name)  # an unknown name lists the known ones
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise RerankerError(f"combined_loss: the weight of {name!r} must be a number >= 0, got {weight!r}")
        if weight == 0:
            continue
        target = targets[_TARGET[name]]
        if target is None:
            raise RerankerError(f"combined_loss: {name!r} needs {_TARGET[name]}")
        extra = {"temperature": temperature} if name == "listwise_kl" else {}
        term = weight * fn(student, target, mask=mask, **extra)
        total = term if total is None else total + term
    if total is None:
        raise RerankerError("combined_loss: every weight is 0")
    return total
