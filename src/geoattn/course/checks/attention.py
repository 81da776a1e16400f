"""Exercise checks for chapters 1 and 2: softmax, scaled dot-product attention, splitting
and merging heads, and the causal mask.

Every check compares the reader's function with the library's on fixed-seed random
inputs and on the edge cases that catch the usual mistakes (overflow, the wrong axis,
a missing scale). When a case fails, a few known wrong variants are tried on it, so the
hint can name the likely slip without giving the answer away.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention, softmax
from ...seed_example import seed_tensors
from . import _harness
from ._harness import Case, CheckResult, call_with_time_limit, run_check, scaled_tolerance
from ._harness import seeded_randn as _randn

__all__ = [
    "check_softmax",
    "check_scaled_dot_product",
    "check_split_heads",
    "check_merge_heads",
    "check_causal_mask",
]


# ---------------------------------------------------------------- chapter 1: softmax

def _softmax_cases() -> list[Case]:
    ramp = torch.tensor([[1e4, 0.0, -1e4], [-1e4, -1e4 + 1.0, -1e4 + 2.0]])
    with_inf = torch.tensor([[0.5, float("-inf"), 1.5, float("-inf")]])
    cases = [
        (_randn(5, seed=1), "a vector of 5 logits",
         "softmax(x)_j = exp(x_j) / sum_k exp(x_k); the weights must be positive and sum to 1."),
        (_randn(4, 6, seed=2), "a (4, 6) batch of rows",
         "normalise each row on its own, over the last dimension (dim=-1)."),
        (_randn(2, 3, 5, seed=3, dtype=torch.float64), "a (2, 3, 5) float64 tensor",
         "work over the last dimension only, and for any number of leading dimensions."),
        (torch.full((2, 4), 3.0), "rows of equal logits", "equal logits must give equal weights."),
        (with_inf, "a row with -inf logits (masked keys)",
         "an entry of -inf must get weight exactly 0, and the others must still sum to 1."),
    ]
    out = [Case(label, (x,), softmax(x, dim=-1), hint) for x, label, hint in cases]
    # Any correct float32 softmax of logits of 1e4 carries round-off of about eps·1e4 (a
    # logsumexp, for one): the tolerance scales with the logits, so it accepts every stable
    # form, while an overflow (NaN or inf) still fails, with the hint that names it.
    tol = scaled_tolerance(ramp, factor=2.0)
    out.insert(4, Case("logits of size 1e4", (ramp,), softmax(ramp, dim=-1),
                       "with logits this large, compute the weights from differences of logits "
                       "(x - max, or x - logsumexp), never from exp(x) itself.", atol=tol, rtol=1e-5,
                       nonfinite_hint="exp(1e4) overflows to inf. Shifting every logit in a row by the "
                                      "same constant does not change the softmax; which constant makes "
                                      "every exponent <= 0?"))
    return out


def check_softmax(fn: Callable[[Tensor], Tensor]) -> CheckResult:
    """Check ``fn(x)``: a numerically stable softmax over the last dimension of ``x``."""
    cases = _softmax_cases()
    wrong = [
        (lambda x: softmax(x, dim=0),
         "the normalisation runs over the wrong dimension: each row (last dimension) must sum to 1."),
        (lambda x: torch.exp(x) / torch.exp(x).sum(), "every entry is divided by the sum over the whole tensor, "
                                                      "not over its own row."),
    ]
    return run_check("softmax", fn, cases, wrong)


# ------------------------------------------------- chapter 1: scaled dot-product attention

def _sdpa_cases() -> list[Case]:
    x, w_q, w_k, w_v = seed_tensors()
    inputs = [
        ((x @ w_q, x @ w_k, x @ w_v), "the Ala-Lys-Asp example (float64)",
         "Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, with the softmax over the keys."),
        ((_randn(3, 4, seed=10), _randn(5, 4, seed=11), _randn(5, 2, seed=12)),
         "3 queries, 5 keys, d_k = 4, d_v = 2",
         "there are as many weights per query as there are keys, and the output has v's last dimension."),
        ((_randn(2, 3, 4, 8, seed=13), _randn(2, 3, 6, 8, seed=14), _randn(2, 3, 6, 5, seed=15)),
         "a batch of shape (2, 3) in front (batch, heads)",
         "transpose only the last two dimensions of k (k.transpose(-2, -1)), and keep leading dimensions."),
        ((_randn(4, 64, seed=16), _randn(4, 64, seed=17), _randn(4, 3, seed=18)),
         "d_k = 64, where the scaling matters most",
         "look at the scale applied to the scores: it depends on d_k."),
    ]
    return [Case(label, args, scaled_dot_product_attention(*args), hint) for args, label, hint in inputs]


def _sdpa_variant(scale: Callable[[int], float], dim: int = -1) -> Callable:
    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return softmax(q @ k.transpose(-2, -1) / scale(q.shape[-1]), dim=dim) @ v
    return attend


def check_scaled_dot_product(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> CheckResult:
    """Check ``fn(q, k, v)`` = softmax(q kᵀ / √d_k) v for shapes (..., L_q, d_k), (..., L_k, d_k), (..., L_k, d_v)."""
    cases = _sdpa_cases()
    wrong = [
        (_sdpa_variant(lambda d: 1.0), "the scores are not scaled; see the 1/sqrt(d_k) factor."),
        (_sdpa_variant(lambda d: float(d)), "the scores are divided by d_k; the factor is 1/sqrt(d_k)."),
        (_sdpa_variant(math.sqrt, dim=-2), "the softmax normalises over the queries; each query's weights "
                                           "over the keys must sum to 1."),
    ]
    return run_check("scaled dot-product attention", fn, cases, wrong)


# --------------------------------------------------- chapter 2: splitting and merging heads

def _split(x: Tensor, n_heads: int) -> Tensor:
    return MultiHeadAttention(x.shape[-1], n_heads).split_heads(x)


def check_split_heads(fn: Callable[[Tensor, int], Tensor]) -> CheckResult:
    """Check ``fn(x, n_heads)``: (B, L, H·d_head) -> (B, H, L, d_head), head h holding columns
    h·d_head … (h+1)·d_head − 1 of the last dimension."""
    inputs = [((_randn(1, 3, 4, seed=20), 2), "B=1, L=3, d_model=4, 2 heads"),
              ((_randn(2, 5, 12, seed=21), 3), "B=2, L=5, d_model=12, 3 heads"),
              ((_randn(2, 4, 6, seed=22), 1), "a single head"),
              ((_randn(3, 2, 8, seed=23), 8), "8 heads of size 1")]
    hint = ("the heads live in the last dimension of x. Split only that dimension into (heads, d_head), "
            "then move the head axis in front of the length axis; one reshape straight to the final "
            "shape mixes positions and heads.")
    cases = [Case(label, args, _split(*args), hint) for args, label in inputs]
    wrong = [(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], x.shape[2] // h),
              "a single reshape to (B, H, L, d_head) puts positions into heads; reshape, then transpose.")]
    return run_check("split_heads", fn, cases, wrong)


def check_merge_heads(fn: Callable[[Tensor], Tensor]) -> CheckResult:
    """Check ``fn(x)``: (B, H, L, d_head) -> (B, L, H·d_head), the concatenation [head_1, …, head_H]."""
    inputs = [(_randn(1, 2, 3, 2, seed=30), "B=1, H=2, L=3, d_head=2"),
              (_randn(2, 3, 5, 4, seed=31), "B=2, H=3, L=5, d_head=4"),
              # What split_heads returns is a transposed view, not contiguous in memory.
              (_split(_randn(2, 4, 6, seed=32), 3), "the (non-contiguous) output of split_heads")]
    hint = ("the result at position l must be the concatenation of every head's row l. Bring the "
            "length axis next to the batch axis before flattening heads and d_head together.")
    cases = [Case(label, (x,), MultiHeadAttention.merge_heads(x), hint) for x, label in inputs]
    wrong = [(lambda x: x.reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3]),
              "a single reshape without moving the head axis mixes heads and positions.")]
    result = run_check("merge_heads", fn, cases, wrong)
    if not result.passed and "view size is not compatible" in result.message:
        # After a transpose the tensor is not contiguous in memory: .view() cannot flatten it.
        return CheckResult(result.name, False, f"{result.message}\n  likely cause: .view() needs contiguous "
                                               "memory; .reshape() copies when it has to.")
    return result


# --------------------------------------------------------------- chapter 2: causal mask

def check_causal_mask(fn: Callable[[int], Tensor]) -> CheckResult:
    """Check ``fn(length)``: a (length, length) bool mask, True where query i may attend key j (j <= i)."""
    name = "causal_mask"
    # A probe for the one slip that the generic comparison words badly; run_check reports
    # everything else (an exception, a timeout, the library's own function) on its own.
    kind, probe = call_with_time_limit(fn, (3,), _harness.TIME_LIMIT) if callable(fn) else ("raised", None)
    if kind == "ok" and isinstance(probe, Tensor) and probe.dtype != torch.bool:
        return run_check(name, lambda n: probe, [Case("length 3", (3,), causal_mask(3),
                                                      f"returned dtype {probe.dtype}; geoattn masks are "
                                                      "bool tensors, True = may attend.")])
    hint = ("row i is query i and column j is key j; query i may see itself and every earlier "
            "position, nothing later.")
    cases = [Case(f"length {n}", (n,), causal_mask(n), hint) for n in (1, 2, 5, 8)]
    wrong = [(lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "the mask lets queries see the future "
                                                                   "(True above the diagonal)."),
             (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), "the diagonal is False: a position may "
                                                                     "attend to itself."),
             (lambda n: ~torch.ones(n, n, dtype=torch.bool).tril(), "True marks the forbidden keys (PyTorch's "
                                                                    "convention); geoattn's True means may attend.")]
    return run_check(name, fn, cases, wrong)
