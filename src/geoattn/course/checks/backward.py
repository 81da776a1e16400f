"""Exercise check for chapter 6: the gradient of one pair's distance term with respect to the
query point q_d (the backward pass of Algorithm 6, line 8).

The reference is autograd through the library's own score, :func:`geoattn.geometric_logits`
with w_r = 0, so the check does not repeat the formula it tests. The wrong variants are
the usual slips: the minus sign of the distance term, the 1/√3, the unit vector left
unnormalised, the squared distance's gradient, and w_d forgotten.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...geometric import geometric_logits
from ._harness import Case, CheckResult, run_check
from ._harness import seeded_randn as _randn

__all__ = ["check_distance_grad"]


def _reference(q_dist: Tensor, k_dist: Tensor, d_s: float, w_d: float) -> Tensor:
    """dL/dq_d for L = d_s · S with S the pair's score, by autograd through the library."""
    dtype = q_dist.dtype
    q = q_dist.detach().clone().requires_grad_()
    zeros = torch.zeros(1, 1, 1, 3, dtype=dtype)
    s = geometric_logits(zeros, zeros, q[None, None, None], k_dist[None, None, None].detach(),
                         torch.zeros(1, dtype=dtype), torch.tensor([float(w_d)], dtype=dtype))
    (grad,) = torch.autograd.grad(s.sum() * d_s, q)
    return grad


def _cases() -> list[Case]:
    inputs = [
        ((_randn(3, seed=70, scale=5.0), _randn(3, seed=71, scale=5.0), 1.0, 0.7), "one pair, dS = 1, w_d = 0.7",
         "S = −(w_d/√3)·‖q_d − k_d‖, so dL/dq_d = dS · ∂S/∂q_d; start from ∂‖x‖/∂x."),
        ((_randn(3, seed=72, scale=5.0, dtype=torch.float64), _randn(3, seed=73, scale=5.0, dtype=torch.float64),
          -0.4, 1.9), "float64, dS = −0.4, w_d = 1.9",
         "the result scales with both dS and w_d."),
        ((_randn(3, seed=74, scale=3.0), _randn(3, seed=75, scale=3.0), 2.5, 0.3), "dS = 2.5, w_d = 0.3",
         "the direction is the unit vector from k_d to q_d; its length does not depend on the distance."),
        ((torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, -2.0, 0.5]), 1.0, 1.0), "coincident points",
         "where q_d = k_d the distance has no gradient; return 0 (the minimal-norm subgradient), never NaN."),
        ((_randn(3, seed=76, scale=1e4), None, 0.8, 1.1), "points 1e4 Å from the origin, 2 Å apart",
         "large coordinates must still give an accurate gradient."),
    ]
    cases = []
    for (q, k, d_s, w_d), label, hint in inputs:
        if k is None:  # a nearby key far from the origin
            k = q + torch.tensor([2.0, 0.0, 0.0])
        cases.append(Case(label, (q, k, d_s, w_d), _reference(q, k, d_s, w_d), hint, atol=1e-5, rtol=1e-4))
    return cases


def check_distance_grad(fn: Callable[[Tensor, Tensor, float, float], Tensor]) -> CheckResult:
    """Check ``fn(q_dist, k_dist, d_s, w_d)``: two (3,) points, the upstream gradient dS of
    the pair's score and the head's weight w_d -> dL/dq_d, a (3,) tensor."""
    cases = _cases()

    def unit(q, k):
        diff = q - k
        norm = torch.linalg.vector_norm(diff)
        return diff / norm if norm > 0 else torch.zeros_like(diff)

    wrong = [
        (lambda q, k, ds, wd: ds * wd / math.sqrt(3) * unit(q, k),
         "the sign: the distance term enters the score with a minus sign, so the gradient points from q_d "
         "towards k_d when dS > 0."),
        (lambda q, k, ds, wd: -ds * wd * unit(q, k),
         "the 1/√3 of the score is missing."),
        (lambda q, k, ds, wd: -ds * wd / math.sqrt(3) * (q - k),
         "the difference q_d − k_d is not divided by the distance: ∂‖x‖/∂x = x/‖x‖, a unit vector."),
        (lambda q, k, ds, wd: -ds * wd / math.sqrt(3) * 2 * (q - k),
         "this is the gradient of the squared distance; the score uses the plain norm ‖·‖₂."),
        (lambda q, k, ds, wd: -ds / math.sqrt(3) * unit(q, k),
         "the head's weight w_d is missing."),
    ]
    return run_check("distance_grad", fn, cases, wrong)
