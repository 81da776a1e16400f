"""Exercise checks for chapter 4: the distance term (Algorithm 6, line 8) and the geometric
score of one head (lines 7-9).

Each check compares the reader's function with the library's on fixed-seed random inputs
and on the cases that catch the usual slips: a missing 1/√3, the squared distance of ESM's
docstring, the printed line 8 (which uses the rotation vectors in the distance term), and
the sign of the distance term. When a case fails, those wrong variants are tried on it, so
the hint can name the likely slip without showing the answer.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...geometric import geometric_logits
from ._harness import Case, CheckResult, run_check
from ._harness import seeded_randn as _randn

__all__ = ["check_distance_term", "check_geometric_scores"]


def _scores(q_rot, k_rot, q_dist, k_dist, w_r, w_d) -> Tensor:
    """The library's scores for one head: (L, 3) vectors and two numbers -> (L, L)."""
    dtype = q_rot.dtype
    vecs = [t[None, :, None, :] for t in (q_rot, k_rot, q_dist, k_dist)]
    w = [torch.tensor([float(x)], dtype=dtype) for x in (w_r, w_d)]
    return geometric_logits(*vecs, *w)[0, 0].to(dtype)


# ------------------------------------------------------------- line 8: the distance term

def _distance_reference(q_dist: Tensor, k_dist: Tensor) -> Tensor:
    # The library computes the term inside geometric_logits: w_r = 0, w_d = 1 leaves −D.
    zeros_q, zeros_k = torch.zeros_like(q_dist), torch.zeros_like(k_dist)
    return -_scores(zeros_q, zeros_k, q_dist, k_dist, 0.0, 1.0)


_far = torch.tensor([1e4, -1e4, 1e4])


def _distance_cases() -> list[Case]:
    same = _randn(4, 3, seed=23, scale=5.0)
    inputs = [
        ((_randn(5, 3, seed=20, scale=4.0), _randn(5, 3, seed=21, scale=4.0)), "5 random points (Å)",
         "D[i, j] = ‖q_d[i] − k_d[j]‖₂ / √3, one entry per (query i, key j) pair."),
        ((_randn(6, 3, seed=22, dtype=torch.float64), _randn(6, 3, seed=24, dtype=torch.float64)),
         "float64 points", "pair every query with every key: q_d[:, None, :] − k_d[None, :, :] has shape (L, L, 3)."),
        ((same, same.clone()), "queries on top of the keys",
         "a point at zero distance from itself must give exactly 0 on the diagonal."),
        ((_randn(5, 3, seed=25, scale=1e4), _randn(5, 3, seed=26, scale=1e4)), "coordinates of 1e4 Å",
         "large coordinates must still give finite, accurate distances."),
        # Residues 1-3 Å apart, 1e4 Å from the origin: |q|² + |k|² − 2 q·k subtracts numbers
        # of 3e8 whose float32 round-off (about 20) swamps the squared distance itself.
        ((_far + _randn(6, 3, seed=27, scale=1.5), _far + _randn(6, 3, seed=28, scale=1.5)),
         "nearby points 1e4 Å from the origin",
         "|q|² + |k|² − 2 q·k cancels catastrophically when the points are close to each other but far "
         "from the origin; subtract the points first, then take the norm of the difference."),
    ]
    return [Case(label, args, _distance_reference(*args), hint, atol=1e-5, rtol=1e-5)
            for args, label, hint in inputs]


def check_distance_term(fn: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """Check ``fn(q_dist, k_dist)``: (L, 3) and (L, 3) points -> (L, L) with D[i, j] = ‖q_i − k_j‖₂/√3."""
    cases = _distance_cases()

    def diff(q, k):
        return q[:, None, :] - k[None, :, :]

    wrong = [
        (lambda q, k: (diff(q, k) ** 2).sum(-1) / math.sqrt(3),
         "this is the squared distance (ESM's docstring says −‖·‖², but the paper and ESM's code use ‖·‖₂)."),
        (lambda q, k: torch.linalg.vector_norm(diff(q, k), dim=-1),
         "the 1/√3 scale is missing (the same scale as the rotation term of line 7)."),
        (lambda q, k: torch.linalg.vector_norm(diff(q, k), dim=-1) / 3,
         "the scale is 1/√3, not 1/3."),
        (lambda q, k: ((q * q).sum(-1)[:, None] + (k * k).sum(-1)[None, :] - 2 * q @ k.T).clamp_min(0).sqrt()
         / math.sqrt(3),
         "the expansion |q|² + |k|² − 2 q·k loses the distance to round-off for nearby points far from "
         "the origin: subtract the points first."),
    ]
    return run_check("distance_term", fn, cases, wrong)


# -------------------------------------------------------- lines 7-9: one head's scores

def _score_cases() -> list[Case]:
    def vecs(seed, n=5, dtype=torch.float32):
        return (_randn(n, 3, seed=seed, dtype=dtype), _randn(n, 3, seed=seed + 1, dtype=dtype),
                _randn(n, 3, seed=seed + 2, dtype=dtype, scale=6.0),
                _randn(n, 3, seed=seed + 3, dtype=dtype, scale=6.0))

    inputs = [
        ((*vecs(30), 0.7, 1.3), "random vectors, w_r = 0.7, w_d = 1.3",
         "A[i, j] = w_r · (q_r[i] · k_r[j]) / √3 − w_d · ‖q_d[i] − k_d[j]‖₂ / √3."),
        ((*vecs(40), 2.0, 0.0), "a pure rotation head (w_d = 0)",
         "with w_d = 0 only line 7 is left: the dot products of the rotation vectors, over √3."),
        ((*vecs(50), 0.0, 2.0), "a pure distance head (w_r = 0)",
         "with w_r = 0 only line 8 is left, with a minus sign: far keys must get low scores."),
        ((*vecs(60, n=7, dtype=torch.float64), float(math.log(2.0)), float(math.log(2.0))),
         "float64, 7 residues, both weights ln 2 (ESM's start)",
         "row i holds query i's scores against every key j; the result is (L, L)."),
    ]
    return [Case(label, args, _scores(*args), hint, atol=1e-5, rtol=1e-5) for args, label, hint in inputs]


def check_geometric_scores(fn: Callable[..., Tensor]) -> CheckResult:
    """Check ``fn(q_rot, k_rot, q_dist, k_dist, w_r, w_d)``: (L, 3) vectors and two numbers -> (L, L) scores A."""
    cases = _score_cases()

    def rot(qr, kr):
        return qr @ kr.T / math.sqrt(3)

    def dist(qd, kd):
        return torch.linalg.vector_norm(qd[:, None, :] - kd[None, :, :], dim=-1) / math.sqrt(3)

    wrong = [
        (lambda qr, kr, qd, kd, wr, wd: wr * rot(qr, kr) - wd * dist(qr, kr),
         "the distance term uses the rotation vectors q_r, k_r, as line 8 is printed. Which vectors were "
         "moved by the full frame T_i, translation included?"),
        (lambda qr, kr, qd, kd, wr, wd: wr * rot(qr, kr) + wd * dist(qd, kd),
         "the distance term is added; it must be subtracted, so that nearby keys score higher."),
        (lambda qr, kr, qd, kd, wr, wd: wr * rot(qr, kr) - wd * dist(qd, kd) ** 2 * math.sqrt(3),
         "the distance is squared (ESM's docstring says −‖·‖², but the paper and ESM's code use ‖·‖₂)."),
        (lambda qr, kr, qd, kd, wr, wd: (wr * rot(qr, kr) - wd * dist(qd, kd)) * math.sqrt(3),
         "the 1/√3 scale is missing."),
        (lambda qr, kr, qd, kd, wr, wd: wd * rot(qr, kr) - wr * dist(qd, kd),
         "the two weights are swapped: w_r scales the rotation term, w_d the distance term."),
    ]
    return run_check("geometric_scores", fn, cases, wrong)
