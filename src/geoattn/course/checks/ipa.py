"""Exercise checks for chapter 7: the augmented query and key vectors of IPA's
FlashAttention form, and the weight w_C of its point term (AlphaFold2, Algorithm 22).

``check_augmented_qk`` accepts any layout of the augmented vectors: it multiplies the
reader's q̃ and k̃ and compares q̃ k̃ᵀ with the library's logits, and it checks the width
c + 3P + 2 (so that a (L, L) "vector" cannot pass). The slips it names: the cross term
without its factor 2, a missing w_L or 1/√c, w_C without its 1/2, and no ‖k_j‖² column.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...ipa import ipa_logits, ipa_point_weight
from ._harness import Case, CheckResult, run_check
from ._harness import seeded_randn as _randn

__all__ = ["check_augmented_qk", "check_point_weight"]

_W_L = math.sqrt(1.0 / 3.0)


# ------------------------------------------------------------- the augmented vectors

def _logits(q, k, q_pts, k_pts, gamma) -> Tensor:
    """The library's logits of one head: (L, c), (L, c), (L, P, 3), (L, P, 3), a number -> (L, L)."""
    g = torch.tensor([float(gamma)], dtype=q.dtype)
    return ipa_logits(q[None, :, None], k[None, :, None], q_pts[None, :, None], k_pts[None, :, None], g)[0, 0]


def _product(fn: Callable) -> Callable:
    """What the check compares: (q̃ k̃ᵀ, width of q̃), from a function returning (q̃, k̃)."""
    def run(*args):
        out = fn(*args)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
            raise TypeError("return two tensors, (q_aug, k_aug), each of shape (L, c + 3P + 2)")
        q_aug, k_aug = out
        if q_aug.shape != k_aug.shape or q_aug.dim() != 2:
            raise ValueError(f"q_aug and k_aug must both be (L, width); got {tuple(q_aug.shape)} "
                             f"and {tuple(k_aug.shape)}")
        return q_aug @ k_aug.T, q_aug.shape[-1]
    return run


def _augmented_cases() -> list[Case]:
    def head(seed, n=5, c=4, p=2, dtype=torch.float32, scale=3.0):
        return (_randn(n, c, seed=seed, dtype=dtype), _randn(n, c, seed=seed + 1, dtype=dtype),
                _randn(n, p, 3, seed=seed + 2, dtype=dtype, scale=scale),
                _randn(n, p, 3, seed=seed + 3, dtype=dtype, scale=scale))

    same = head(90, n=4, c=2, p=3)
    inputs = [
        ((*head(70), 0.8), "5 residues, c = 4, P = 2, γ = 0.8",
         "q̃_i · k̃_j must equal w_L (q_i·k_j/√c − γ w_C/2 Σ_p ‖q_ip − k_jp‖²), with w_C = √(2/(9P))."),
        ((*head(80, n=6, c=3, p=4, dtype=torch.float64, scale=10.0), 1.5), "float64, P = 4, points 10 Å apart",
         "expand ‖a − b‖² = ‖a‖² − 2 a·b + ‖b‖² over the flattened points (3P numbers)."),
        ((*head(60, c=5, p=1), 0.0), "γ = 0: the scalar term alone",
         "with γ = 0 only w_L q_i·k_j/√c is left."),
        ((same[0], same[1], same[2], same[2].clone(), 2.0), "query points on top of the key points",
         "the point term of a query and a key at the same place must be 0."),
    ]
    return [Case(label, args, (_logits(*args), args[0].shape[-1] + 3 * args[2].shape[-2] + 2), hint,
                 atol=1e-3, rtol=1e-4) for args, label, hint in inputs]


def _variant(sqrt_c=True, cross=2.0, point_half=0.5, key_norm=True, w_l=_W_L):
    """A (possibly wrong) way to build the augmented vectors; the defaults are right."""
    def build(q, k, q_pts, k_pts, gamma):
        c, p = q.shape[-1], q_pts.shape[-2]
        g = w_l * gamma * ipa_point_weight(p) * point_half
        a, b = q_pts.flatten(-2), k_pts.flatten(-2)
        a2, b2 = a.square().sum(-1, keepdim=True), b.square().sum(-1, keepdim=True)
        ones = torch.ones_like(a2)
        q_aug = [w_l * q / (math.sqrt(c) if sqrt_c else 1.0), cross * g * a, -g * a2]
        k_aug = [k, b, ones]
        if key_norm:
            q_aug, k_aug = q_aug + [-g * ones], k_aug + [b2]
        return torch.cat(q_aug, -1), torch.cat(k_aug, -1)
    return build


def check_augmented_qk(fn: Callable[..., tuple[Tensor, Tensor]]) -> CheckResult:
    """Check ``fn(q, k, q_pts, k_pts, gamma)`` for one head -> ``(q_aug, k_aug)``, each
    (L, c + 3P + 2), with q_aug @ k_aug.T = IPA's logits (line 7 without pair bias)."""
    wrong = [
        (_variant(cross=1.0), "the cross term: ‖a − b‖² = ‖a‖² − 2 a·b + ‖b‖², the factor 2 is missing."),
        (_variant(w_l=1.0), "w_L = √(1/3) multiplies the whole logit, scalar and point terms."),
        (_variant(sqrt_c=False), "the scalar product is divided by √c, c = q.shape[-1]."),
        (_variant(point_half=1.0), "the point term is γ w_C / 2 · Σ_p ‖·‖²: the 1/2 is missing."),
        (_variant(key_norm=False), "‖k_j‖² changes with the key j, so it cannot be dropped: it needs "
                                   "its own column (and the width is c + 3P + 2)."),
    ]
    return run_check("augmented_qk", _product(fn), _augmented_cases(),
                     [(_product(v), hint) for v, hint in wrong])


# ------------------------------------------------------------- w_C

def _as_tensor(fn: Callable) -> Callable:
    def run(n):
        return torch.as_tensor(float(fn(n)), dtype=torch.float64)
    return run


def check_point_weight(fn: Callable[[int], float]) -> CheckResult:
    """Check ``fn(n_query_points)`` -> w_C, the weight that gives the point term unit variance."""
    cases = [Case(f"N_query_points = {n}", (n,), torch.tensor(ipa_point_weight(n), dtype=torch.float64),
                  "(w_C / 2)² · Var(−2 q·k + ‖k‖²) = 1, with unit-variance coordinates.",
                  atol=1e-9, rtol=1e-9)
             for n in (1, 2, 4, 8)]
    wrong = [
        (lambda n: math.sqrt(1.0 / (6.0 * n)),
         "‖q_i‖² is the same for every key j and cancels in the softmax; leave it out of the variance."),
        (lambda n: math.sqrt(1.0 / (18.0 * n)),
         "the point term carries w_C / 2, so (w_C / 2)², not w_C², multiplies the variance."),
        (lambda n: math.sqrt(4.0 / (15.0 * n)),
         "Var(k²) of a standard normal coordinate k is E k⁴ − (E k²)² = 3 − 1 = 2, not 1."),
        (lambda n: math.sqrt(2.0 / 9.0),
         "the variance grows with the number of points: the sum runs over N_query_points points."),
    ]
    return run_check("point_weight", _as_tensor(fn), cases, [(_as_tensor(v), h) for v, h in wrong])
