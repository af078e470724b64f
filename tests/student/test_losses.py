"""The distillation losses against values worked out by hand (math / numpy) on tiny examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reranker.errors import RerankerError
from student.losses import LOSSES, combined_loss, listwise_kl, margin_mse, pointwise_bce

S = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]  # student scores: 2 queries x 3 candidates
T = [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]]  # teacher scores
Y = [[0.9, 0.5, 0.1], [0.2, 0.6, 1.0]]  # teacher soft labels


def t(x, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, requires_grad=grad)


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- listwise KL ---------------------------------------------------------------------------


def test_listwise_kl_closed_form():
    # teacher [0, 0] -> p = (1/2, 1/2); student [ln 3, 0] -> q = (3/4, 1/4)
    # KL(p || q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert listwise_kl(t([[math.log(3), 0.0]]), t([[0.0, 0.0]])).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_listwise_kl_matches_numpy(temperature):
    s, tt = np.array(S), np.array(T)
    p, q = np_softmax(tt / temperature), np_softmax(s / temperature)
    per_query = (p * np.log(p / q)).sum(axis=1)  # KL(teacher || student) per query
    expected = per_query.mean() * temperature**2
    assert listwise_kl(t(S), t(T), temperature).item() == pytest.approx(expected, rel=1e-5)


def test_listwise_kl_is_zero_on_itself_and_never_negative():
    assert listwise_kl(t(S), t(S)).item() == pytest.approx(0.0, abs=1e-7)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        s, tt = torch.randn(4, 7, generator=gen) * 3, torch.randn(4, 7, generator=gen) * 3
        assert listwise_kl(s, tt, temperature=1.5).item() >= 0.0


def test_listwise_kl_temperature_squared_scaling():
    # softmax(2s / 2) = softmax(s): the same distributions, so only the T^2 factor differs
    base = listwise_kl(t(S), t(T), temperature=1.0).item()
    assert listwise_kl(t(S) * 2, t(T) * 2, temperature=2.0).item() == pytest.approx(4 * base, rel=1e-5)
    # without the T^2 factor the loss would shrink like 1/T^2 for large T; with it, it tends to a
    # constant: (1/n) sum_j (d_j - mean d)^2 / 2, d = s - t (second-order expansion of the KL)
    d = np.array(S) - np.array(T)
    limit = (((d - d.mean(axis=1, keepdims=True)) ** 2).mean(axis=1) / 2).mean()
    assert listwise_kl(t(S), t(T), temperature=50.0).item() == pytest.approx(limit, rel=1e-2)


def test_listwise_kl_ignores_a_constant_per_query():
    shift = t([[10.0], [-3.0]])
    assert listwise_kl(t(S) + shift, t(T) - 2 * shift).item() == pytest.approx(listwise_kl(t(S), t(T)).item(), abs=1e-6)


def test_listwise_kl_computes_in_fp32():
    out = listwise_kl(t(S).to(torch.bfloat16), t(T).to(torch.bfloat16))
    assert out.dtype == torch.float32


# --- pointwise BCE -------------------------------------------------------------------------


def test_pointwise_bce_closed_form():
    # sigmoid(0) = 1/2 with label 1/2: -(1/2 ln 1/2 + 1/2 ln 1/2) = ln 2
    # sigmoid(ln 3) = 3/4 with label 1: -ln(3/4) = ln(4/3)
    got = pointwise_bce(t([[0.0, math.log(3)]]), t([[0.5, 1.0]])).item()
    assert got == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)


def test_pointwise_bce_matches_numpy():
    s, y = np.array(S), np.array(Y)
    p = 1 / (1 + np.exp(-s))
    expected = (-(y * np.log(p) + (1 - y) * np.log(1 - p))).mean()
    assert pointwise_bce(t(S), t(Y)).item() == pytest.approx(expected, rel=1e-5)


# --- MarginMSE -----------------------------------------------------------------------------


def test_margin_mse_by_hand():
    # query 1: student margins 1-0=1, 1-(-1)=2; teacher 2-1=1, 2-0=2 -> errors 0, 0
    # query 2: student 0.5-0.5=0, 0.5-2=-1.5; teacher 0-1=-1, 0-1=-1 -> errors 1, -0.5
    expected = (0**2 + 0**2 + 1**2 + 0.5**2) / 4
    assert margin_mse(t(S), t(T)).item() == pytest.approx(expected, abs=1e-6)
    shift = t([[5.0], [-1.0]])
    assert margin_mse(t(S) + shift, t(T)).item() == pytest.approx(expected, abs=1e-6)


def test_margin_mse_needs_two_candidates():
    with pytest.raises(RerankerError, match="two candidates"):
        margin_mse(t([[1.0], [2.0]]), t([[1.0], [2.0]]))


# --- masks and gradients -------------------------------------------------------------------

GARBAGE = [[float("nan")], [float("inf")]]  # padding may hold anything


@pytest.mark.parametrize("fn, target", [(listwise_kl, T), (pointwise_bce, Y), (margin_mse, T)])
def test_a_masked_candidate_changes_nothing(fn, target):
    padded_s = torch.cat([t(S), t(GARBAGE)], dim=1)
    padded_t = torch.cat([t(target), t([[0.3], [-7.0]])], dim=1)
    mask = torch.tensor([[True, True, True, False]] * 2)
    assert fn(padded_s, padded_t, mask=mask).item() == pytest.approx(fn(t(S), t(target)).item(), abs=1e-6)


def test_ragged_masks_by_hand():
    # query 2 has only its first two candidates
    mask = torch.tensor([[True, True, True], [True, True, False]])
    s, tt, y = np.array(S), np.array(T), np.array(Y)
    p1, q1 = np_softmax(tt[0]), np_softmax(s[0])
    p2, q2 = np_softmax(tt[1, :2]), np_softmax(s[1, :2])
    kl = ((p1 * np.log(p1 / q1)).sum() + (p2 * np.log(p2 / q2)).sum()) / 2
    assert listwise_kl(t(S), t(T), mask=mask).item() == pytest.approx(kl, rel=1e-5)
    sig = 1 / (1 + np.exp(-s))
    bce = -(y * np.log(sig) + (1 - y) * np.log(1 - sig))
    assert pointwise_bce(t(S), t(Y), mask=mask).item() == pytest.approx((bce[0].sum() + bce[1, :2].sum()) / 5, rel=1e-5)
    assert margin_mse(t(S), t(T), mask=mask).item() == pytest.approx((0 + 0 + 1**2) / 3, abs=1e-6)
    # a masked positive leaves out every pair of its query
    no_pos = torch.tensor([[True, True, True], [False, True, True]])
    assert margin_mse(t(S), t(T), mask=no_pos).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fn, target", [(listwise_kl, T), (pointwise_bce, Y), (margin_mse, T)])
def test_gradients_flow_and_skip_padding(fn, target):
    s = torch.cat([t(S), t(GARBAGE)], dim=1).requires_grad_(True)
    mask = torch.tensor([[True, True, True, False]] * 2)
    fn(s, torch.cat([t(target), t([[0.0], [0.0]])], dim=1), mask=mask).backward()
    assert torch.isfinite(s.grad).all()
    assert (s.grad[:, 3] == 0).all()
    assert s.grad[:, :3].abs().sum() > 0


def test_a_query_with_no_candidates_is_left_out():
    mask = torch.tensor([[True, True, True], [False, False, False]])
    full = listwise_kl(t(S[:1]), t(T[:1])).item()
    assert listwise_kl(t(S), t(T), mask=mask).item() == pytest.approx(full, abs=1e-6)


def test_shape_and_mask_checks():
    with pytest.raises(RerankerError, match="n_queries, n_candidates"):
        listwise_kl(t(S), t(T[:1]))
    with pytest.raises(RerankerError, match="bool"):
        pointwise_bce(t(S), t(Y), mask=torch.ones(2, 3))
    with pytest.raises(RerankerError, match="temperature"):
        listwise_kl(t(S), t(T), temperature=0.0)


# --- combined loss and the registry --------------------------------------------------------


def test_combined_loss_is_the_weighted_sum():
    s = t(S, grad=True)
    got = combined_loss({"listwise_kl": 1.0, "pointwise_bce": 0.5, "margin_mse": 0.0}, s,
                        teacher_scores=t(T), teacher_labels=t(Y), temperature=2.0)
    expected = listwise_kl(t(S), t(T), 2.0) + 0.5 * pointwise_bce(t(S), t(Y))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(s.grad).all()


def test_combined_loss_errors():
    with pytest.raises(RerankerError, match="listwise_kl, pointwise_bce, margin_mse"):
        combined_loss({"ranknet": 1.0}, t(S), teacher_scores=t(T))
    with pytest.raises(RerankerError, match="teacher_labels"):
        combined_loss({"pointwise_bce": 1.0}, t(S), teacher_scores=t(T))
    with pytest.raises(RerankerError, match=">= 0"):
        combined_loss({"margin_mse": -1.0}, t(S), teacher_scores=t(T))
    with pytest.raises(RerankerError, match="no losses"):
        combined_loss({}, t(S), teacher_scores=t(T))
    assert list(LOSSES) == ["listwise_kl", "pointwise_bce", "margin_mse"]
    assert LOSSES.load("margin_mse") is margin_mse
