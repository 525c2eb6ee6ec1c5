"""CREAM's DPO loss against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from cream_stages.losses import cream_dpo_loss, spin_loss

POLICY_C = torch.tensor([-10.0, -3.0, -50.0, -7.0], dtype=torch.float64)
POLICY_R = torch.tensor([-12.0, -2.0, -40.0, -7.5], dtype=torch.float64)
REF_C = torch.tensor([-11.0, -3.5, -45.0, -6.0], dtype=torch.float64)
REF_R = torch.tensor([-11.5, -2.5, -44.0, -8.0], dtype=torch.float64)
BETA = 0.1


def _closed_form(pc, pr, rc, rr, c, beta):
    z = beta * ((pc - rc) - (pr - rr))
    sig = 1 / (1 + math.exp(-z))
    return c * -math.log(sig) + (1 - c) * -math.log(1 - sig)


@pytest.mark.parametrize("c", [0.0, 0.3, 0.5, 0.85, 1.0])
def test_matches_the_closed_form(c):
    weight = torch.full((4,), c, dtype=torch.float64)
    got = cream_dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, weight, BETA)
    for i in range(4):
        expected = _closed_form(POLICY_C[i].item(), POLICY_R[i].item(), REF_C[i].item(),
                                REF_R[i].item(), c, BETA)
        assert got[i].item() == pytest.approx(expected, rel=1e-12)


def test_c_one_is_plain_dpo_and_c_zero_the_reversed_preference():
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    z = BETA * ((POLICY_C - REF_C) - (POLICY_R - REF_R))
    plain = -torch.nn.functional.logsigmoid(z)
    assert torch.allclose(cream_dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, ones, BETA), plain)
    # C = 0: the same loss with chosen and rejected swapped.
    swapped = cream_dpo_loss(POLICY_R, POLICY_C, REF_R, REF_C, ones, BETA)
    assert torch.allclose(cream_dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, zeros, BETA), swapped)


def test_per_pair_weights_apply_to_their_own_pair():
    weight = torch.tensor([1.0, 0.0, 0.5, 0.25], dtype=torch.float64)
    got = cream_dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, weight, BETA)
    for i in range(4):
        expected = _closed_form(POLICY_C[i].item(), POLICY_R[i].item(), REF_C[i].item(),
                                REF_R[i].item(), weight[i].item(), BETA)
        assert got[i].item() == pytest.approx(expected, rel=1e-12)


def test_at_the_reference_the_loss_is_log_2_for_any_c():
    weight = torch.tensor([0.0, 0.2, 0.7, 1.0])
    got = cream_dpo_loss(REF_C.float(), REF_R.float(), REF_C.float(), REF_R.float(), weight, BETA)
    assert torch.allclose(got, torch.full((4,), math.log(2.0)))


def test_finite_for_huge_margins():
    big = torch.tensor([1e4, -1e4])
    got = cream_dpo_loss(big, -big, torch.zeros(2), torch.zeros(2), torch.tensor([0.9, 0.1]), 1.0)
    assert torch.isfinite(got).all()


# SPIN (Chen et al. 2024, eq. 4.2 with the logistic loss l(u) = log(1 + exp(-u))).
@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0, 5.0])
def test_spin_loss_and_its_gradient_match_the_closed_form(lam):
    real = POLICY_C.clone().requires_grad_(True)
    own = POLICY_R.clone().requires_grad_(True)
    got = spin_loss(real, own, REF_C, REF_R, lam)
    got.sum().backward()
    for i in range(4):
        u = lam * ((POLICY_C[i].item() - REF_C[i].item()) - (POLICY_R[i].item() - REF_R[i].item()))
        assert got[i].item() == pytest.approx(math.log1p(math.exp(-u)), rel=1e-12)
        # dl/du = -1 / (1 + e^u): the real answer's log-prob pushed up, the own one's down.
        dl_du = -1 / (1 + math.exp(u))
        assert real.grad[i].item() == pytest.approx(lam * dl_du, rel=1e-12)
        assert own.grad[i].item() == pytest.approx(-lam * dl_du, rel=1e-12)


def test_spin_loss_is_the_dpo_stage_loss_with_beta_lambda_and_weight_one():
    ones = torch.ones(4, dtype=torch.float64)
    assert torch.equal(spin_loss(POLICY_C, POLICY_R, REF_C, REF_R, 0.3),
                       cream_dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, ones, 0.3))
