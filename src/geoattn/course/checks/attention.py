"""Exercise checks for chapters 1 and 2: softmax, scaled dot-product attention, splitting
and merging heads, the causal mask, rotary position embeddings and the cost of attention.

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
from ...positional import rope
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
    "check_rope",
    "check_attention_cost",
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


# ------------------------------------------------------ chapter 2: rotary position embeddings

def _rope_variant(freq: Callable[[int], Tensor] | None = None, sign: float = 1.0,
                  layout: str = "pairs", own_positions: bool = False) -> Callable:
    """RoPE with one slip: other frequencies, the wrong sense of rotation, the other pairing
    of coordinates, no rotation at all (x·cos + x·sin), or positions 0..L-1 ignoring the given ones."""
    def turn(x: Tensor, positions: Tensor) -> Tensor:
        d = x.shape[-1]
        theta = (10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)) if freq is None else freq(d)
        if own_positions:
            positions = torch.arange(x.shape[-2])
        angle = sign * positions.to(torch.float64)[..., None] * theta
        cos, sin = angle.cos(), angle.sin()
        xd = x.double()
        if layout == "half":
            a, b = xd[..., : d // 2], xd[..., d // 2:]
            out = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
        elif layout == "none":
            out = xd * cos.repeat_interleave(2, -1) + xd * sin.repeat_interleave(2, -1)
        else:
            a, b = xd[..., 0::2], xd[..., 1::2]
            out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        return out.to(x.dtype)
    return turn


def check_rope(fn: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """Check ``fn(x, positions)``: RoPE with base 10000 on x (..., L, d), rotating each pair
    (x[..., 2i], x[..., 2i+1]) at position p by the angle p·θ_i, θ_i = 10000^(−2i/d)."""
    inputs = [
        ((_randn(3, 2, seed=40, dtype=torch.float64), torch.arange(3)), "one pair (d = 2), positions 0, 1, 2",
         "the pair (x, y) at position p turns by the angle p·θ_0 = p radians, counterclockwise: "
         "(x cos − y sin, x sin + y cos)."),
        ((_randn(5, 8, seed=41, dtype=torch.float64), torch.arange(5)), "d = 8, positions 0 to 4",
         "pair i = 0, …, d/2 − 1 holds coordinates 2i and 2i + 1 and turns at its own frequency "
         "θ_i = 10000^(−2i/d)."),
        ((_randn(4, 6, seed=42, dtype=torch.float64), torch.tensor([7, 0, 3, 3])), "positions 7, 0, 3, 3",
         "row l turns by the angle positions[l]·θ_i: use the positions you are given."),
        ((_randn(2, 4, 8, seed=43), torch.arange(4)), "a (2, 4, 8) float32 batch",
         "work on the last dimension, for any leading dimensions, and keep the input's dtype."),
    ]
    cases = [Case(label, args, rope(*args), hint, atol=1e-5 if args[0].dtype == torch.float32 else 1e-9)
             for args, label, hint in inputs]
    wrong = [
        (_rope_variant(sign=-1.0), "the pairs turn the wrong way, by −p·θ_i; RoPE turns them by +p·θ_i "
                                   "(x cos − y sin, x sin + y cos)."),
        (_rope_variant(freq=lambda d: 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) / d)),
         "the frequencies are off: pair i turns at θ_i = 10000^(−2i/d) (note the 2), not 10000^(−i/d)."),
        (_rope_variant(freq=lambda d: torch.ones(d // 2, dtype=torch.float64)),
         "every pair turns at the same frequency; pair i turns at θ_i = 10000^(−2i/d)."),
        (_rope_variant(layout="half"), "coordinate i is paired with i + d/2 (the 'rotate half' layout of "
                                       "ESM's code: valid, but not this exercise's); pair adjacent "
                                       "coordinates 2i and 2i + 1."),
        (_rope_variant(layout="none"), "each pair turns in its own 2-D plane: a new coordinate mixes both "
                                       "coordinates of its pair (x cos − y sin), not x·cos + x·sin."),
        (_rope_variant(own_positions=True), "the rotation uses 0, 1, …, L − 1 instead of the positions "
                                            "passed in."),
    ]
    return run_check("rope", fn, cases, wrong)


# ------------------------------------------------------------ chapter 2: the cost of attention

def _attention_cost(batch: int, heads: int, l_q: int, l_k: int, d_model: int, dtype: torch.dtype):
    flops = 2 * 2 * batch * heads * l_q * l_k * (d_model // heads)  # S = Q K^T and O = P V
    return flops, batch * heads * l_q * l_k * dtype.itemsize  # P: one (L_q, L_k) map per head


def check_attention_cost(fn: Callable[[int, int, int, int, int, torch.dtype], tuple]) -> CheckResult:
    """Check ``fn(batch, heads, l_q, l_k, d_model, dtype)`` = (FLOPs of S = QKᵀ and O = PV,
    bytes of the weights P), counting a multiply-add as 2 FLOPs and d_head = d_model / heads."""
    inputs = [((1, 1, 3, 3, 4, torch.float32), "one head, 3 queries, 3 keys, float32"),
              ((2, 8, 100, 100, 512, torch.float32), "B = 2, H = 8, L = 100, d_model = 512"),
              ((1, 4, 10, 30, 64, torch.float16), "cross-attention, 10 queries, 30 keys, float16"),
              ((3, 2, 7, 5, 16, torch.bfloat16), "B = 3, H = 2, 7 queries, 5 keys, bfloat16"),
              ((1, 16, 64, 256, 1024, torch.float64), "H = 16, 64 queries, 256 keys, float64")]
    hint = ("the map P has one (L_q, L_k) entry per head and sequence, each of dtype.itemsize bytes; "
            "each product costs 2·L_q·L_k·d_head FLOPs per head.")
    cases = [Case(label, args, _attention_cost(*args), hint) for args, label in inputs]

    def variant(flops=None, nbytes=None):
        def cost(b, h, lq, lk, d, dtype):
            right = _attention_cost(b, h, lq, lk, d, dtype)
            return (right[0] if flops is None else flops(b, h, lq, lk, d, dtype),
                    right[1] if nbytes is None else nbytes(b, h, lq, lk, d, dtype))
        return cost

    wrong = [
        (variant(flops=lambda b, h, lq, lk, d, t: 4 * b * h * lq * lk * d),
         "each head works in d_head = d_model / H dimensions, so the FLOPs do not grow with H."),
        (variant(flops=lambda b, h, lq, lk, d, t: 2 * b * lq * lk * d),
         "count both products, S = QKᵀ and O = PV, each 2 FLOPs (a multiply and an add) per term."),
        (variant(nbytes=lambda b, h, lq, lk, d, t: b * lq * lk * t.itemsize),
         "there is one (L_q, L_k) map per head: the memory grows H-fold."),
        (variant(nbytes=lambda b, h, lq, lk, d, t: b * h * lq * lk),
         "that is the number of entries; multiply by the bytes of one number, dtype.itemsize."),
        (variant(nbytes=lambda b, h, lq, lk, d, t: 4 * b * h * lq * lk),
         "the bytes per number depend on the dtype (dtype.itemsize), not always 4."),
        (variant(nbytes=lambda b, h, lq, lk, d, t: b * h * lq * lq * t.itemsize),
         "the map has one row per query and one column per key: L_q × L_k, not L_q²."),
        (variant(nbytes=lambda b, h, lq, lk, d, t: b * h * lk * lk * t.itemsize),
         "the map has one row per query and one column per key: L_q × L_k, not L_k²."),
    ]
    return run_check("attention_cost", fn, cases, wrong)
