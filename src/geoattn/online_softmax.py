r"""The online softmax: attention over keys that arrive one at a time, or one block at a time.

Softmax needs the row's maximum and its sum before any weight is known, which seems to
force storing every score. It does not (Milakov & Gimelshein 2018). Keep, per query row,

- :math:`m`, the largest score seen so far,
- :math:`\ell = \sum_{j\ \mathrm{seen}} e^{s_j - m}`, the softmax denominator in the scale of :math:`m`,
- :math:`\mathrm{acc} = \sum_{j\ \mathrm{seen}} e^{s_j - m}\, v_j`, the numerator of the output,

starting from :math:`(m, \ell, \mathrm{acc}) = (-\infty, 0, 0)`. When new scores arrive the
maximum may grow to :math:`m'`; multiplying the old sums by :math:`e^{m - m'}` rewrites
them in the new scale, exactly. At the end
:math:`z = \mathrm{acc}/\ell = \sum_j \mathrm{softmax}(s)_j\, v_j`, and any weight can be
recovered later as :math:`\alpha_j = e^{s_j - m}/\ell = e^{s_j - \mathrm{lse}}` with
:math:`\mathrm{lse} = m + \log \ell`.

Shapes: a state holds ``m`` and ``l`` of shape (..., R) and ``acc`` of shape (..., R, d_v)
for R query rows; scores are (..., R, n) for n keys, values (..., n, d_v). A row that has
seen no key (all scores -inf) keeps m = -inf, ℓ = 0 and gives z = 0, never NaN.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "OnlineSoftmaxState",
    "online_softmax_init",
    "online_softmax_update",
    "online_softmax_step",
    "online_softmax_merge",
    "online_softmax_result",
    "online_softmax_trace",
]


class OnlineSoftmaxState(NamedTuple):
    """Running statistics of an online softmax, per query row."""

    m: Tensor  # (..., R) running maximum of the scores
    l: Tensor  # (..., R) running sum of exp(s - m)
    acc: Tensor  # (..., R, d_v) running sum of exp(s - m) v


def online_softmax_init(rows_shape, d_v: int, *, dtype=torch.float32, device=None) -> OnlineSoftmaxState:
    """The empty state (m, ℓ, acc) = (-∞, 0, 0) for query rows of shape ``rows_shape``."""
    rows_shape = (rows_shape,) if isinstance(rows_shape, int) else tuple(rows_shape)
    if not isinstance(d_v, int) or d_v < 1:
        raise ValueError(f"d_v must be a positive int, got {d_v!r}")
    return OnlineSoftmaxState(
        torch.full(rows_shape, float("-inf"), dtype=dtype, device=device),
        torch.zeros(rows_shape, dtype=dtype, device=device),
        torch.zeros((*rows_shape, d_v), dtype=dtype, device=device),
    )


def _finite_or_zero(m: Tensor) -> Tensor:
    # A row that has seen only -inf scores has m = -inf; shifting by 0 there keeps
    # exp(-inf) = 0 instead of exp(-inf - (-inf)) = NaN.
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def online_softmax_update(state: OnlineSoftmaxState, scores: Tensor, values: Tensor) -> OnlineSoftmaxState:
    r"""Fold a block of n keys into the state.

    .. math::
        m' = \max(m, \max_j s_j),\quad
        \ell' = e^{m - m'}\ell + \sum_j e^{s_j - m'},\quad
        \mathrm{acc}' = e^{m - m'}\mathrm{acc} + \sum_j e^{s_j - m'} v_j

    ``scores``: (..., R, n), -inf for a key that may not be attended; ``values``: (..., n, d_v).
    """
    m, l, acc = state
    if scores.shape[:-1] != m.shape:
        raise ValueError(f"scores must have shape (*rows, n) with rows {tuple(m.shape)}; got {tuple(scores.shape)}")
    if values.dim() < 2 or values.shape[-2] != scores.shape[-1] or values.shape[-1] != acc.shape[-1]:
        raise ValueError(f"values must have shape (..., n={scores.shape[-1]}, d_v={acc.shape[-1]}); "
                         f"got {tuple(values.shape)}")
    if scores.shape[-1] == 0:  # no keys in this block
        return state
    m_new = torch.maximum(m, scores.amax(dim=-1))
    shift = _finite_or_zero(m_new)
    # this block's weights, in the scale of m'
    p = torch.exp(scores - shift[..., None])
    # e^{m - m'}: the old sums, rewritten in the scale of m'
    rescale = torch.exp(m - shift)
    l_new = l * rescale + p.sum(dim=-1)
    acc_new = acc * rescale[..., None] + p @ values
    return OnlineSoftmaxState(m_new, l_new, acc_new)


def online_softmax_step(state: OnlineSoftmaxState, score: Tensor, value: Tensor) -> OnlineSoftmaxState:
    """Fold ONE key into the state: ``score`` (..., R), ``value`` (..., d_v). The block update with n = 1."""
    return online_softmax_update(state, score[..., None], value[..., None, :])


def online_softmax_merge(a: OnlineSoftmaxState, b: OnlineSoftmaxState) -> OnlineSoftmaxState:
    r"""Combine two states built from disjoint sets of keys, as if one had seen them all.

    .. math::
        m = \max(m_a, m_b),\quad \ell = e^{m_a - m}\ell_a + e^{m_b - m}\ell_b,\quad
        \mathrm{acc} = e^{m_a - m}\mathrm{acc}_a + e^{m_b - m}\mathrm{acc}_b

    This is what lets different workers (or GPU blocks) split the keys between them.
    """
    m = torch.maximum(a.m, b.m)
    shift = _finite_or_zero(m)
    ca, cb = torch.exp(a.m - shift), torch.exp(b.m - shift)
    return OnlineSoftmaxState(m, ca * a.l + cb * b.l, ca[..., None] * a.acc + cb[..., None] * b.acc)


def online_softmax_result(state: OnlineSoftmaxState) -> tuple[Tensor, Tensor]:
    """``(z, lse)``: the attention output acc/ℓ and the log-sum-exp m + log ℓ of each row.

    A row that saw no key gets z = 0 and lse = +inf, so that e^{s - lse} = 0 for any s.
    """
    m, l, acc = state
    has_key = l > 0
    safe_l = torch.where(has_key, l, torch.ones_like(l))
    lse = torch.where(has_key, m + torch.log(safe_l), torch.full_like(l, float("inf")))
    return acc / safe_l[..., None], lse


def online_softmax_trace(scores: Tensor, values: Tensor) -> list[OnlineSoftmaxState]:
    """The states after each key, feeding the keys one at a time: ``scores`` (..., R, L),
    ``values`` (..., L, d_v). Element 0 is the empty state; element j is after j keys."""
    if scores.dim() < 1 or values.dim() < 2 or values.shape[-2] != scores.shape[-1]:
        raise ValueError(f"scores (..., R, L) and values (..., L, d_v) must agree on L; "
                         f"got {tuple(scores.shape)} and {tuple(values.shape)}")
    state = online_softmax_init(scores.shape[:-1], values.shape[-1], dtype=scores.dtype, device=scores.device)
    states = [state]
    for j in range(scores.shape[-1]):
        state = online_softmax_step(state, scores[..., j], values[..., j, :])
        states.append(state)
    return states
