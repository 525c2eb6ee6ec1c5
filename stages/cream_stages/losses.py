"""CREAM's consistency-regularised DPO loss (ours to own: TRL has no per-example weights).

z = beta * ((s_theta(c) - s_ref(c)) - (s_theta(r) - s_ref(r)))
loss = C * -log sigmoid(z) + (1 - C) * -log sigmoid(-z)

C = 1 is plain DPO; C = 0 trains on the reversed preference; C = 1/2 pulls z towards 0.
logsigmoid keeps it finite for any z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_margins(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """z per pair: the chosen response's implicit reward minus the rejected one's (TRL logs its
    mean as rewards/margins, and the share of z > 0 as rewards/accuracies)."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def cream_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                   ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                   weight: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair losses (shape [batch]) from summed sequence log-probs and the weights C."""
    z = dpo_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return -(weight * F.logsigmoid(z) + (1.0 - weight) * F.logsigmoid(-z))


def spin_loss(policy_real: torch.Tensor, policy_own: torch.Tensor, ref_real: torch.Tensor,
              ref_own: torch.Tensor, lam: float) -> torch.Tensor:
    """SPIN's per-pair loss: l(lam * (log p_theta/p_t (real) - log p_theta/p_t (own))) with the
    logistic l(u) = log(1 + exp(-u)); the DPO form with beta = lam and C = 1, which is how the
    dpo stage trains a SPIN iteration."""
    return cream_dpo_loss(policy_real, policy_own, ref_real, ref_own,
                          torch.ones_like(policy_real), lam)
