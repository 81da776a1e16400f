"""Masks of geometric attention and of scaled dot-product attention, shared by every
implementation.

Two kinds of mask: ``key_mask`` (B, L) removes keys, ``chain_id`` (B, L) removes each
(query, key) pair whose residues lie in different chains (a dense (…, L_q, L_k) mask, as
``scaled_dot_product_attention`` takes, may do either).

A masked pair must never influence an output or a gradient. Weighting it by exactly 0 is
not enough: 0 · NaN and 0 · inf are NaN, in P·V and in every product of the backward pass
(dS · k, dS · ‖q − k‖), so a NaN in one chain would reach every query of the others. And a
per-pair ``where`` inside the score tile would cost every pair a compare and a select. So
the one mechanism, for every implementation:

1. :func:`finite_part`: each non-finite input number is replaced by 0 (for geometric
   attention also each vector too large for fp32 arithmetic: see
   :func:`finite_geometric_inputs`) before any arithmetic (O(L) work), so the attention
   itself, forward and backward, sees only finite numbers and overflows nowhere;
2. the rows that read a non-finite number through a pair that the masks keep are found
   in O(L) (:func:`over_keys` for ``key_mask`` and ``chain_id``, :func:`dense_reach` for a
   dense mask), and :func:`nan_where` turns them into NaN afterwards, added to the output,
   so that the gradient passes through unchanged.

A row with no key left is never NaN: it returns zeros, whatever its own query holds.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .chains import chain_ranks, over_keys
from .distances import key_centre

__all__ = ["pair_mask", "zero_masked_keys", "finite_part", "chain_ranks", "over_keys", "dense_reach",
           "nan_where", "finite_geometric_inputs", "finite_attention_inputs", "rowwise"]


def pair_mask(key_mask: Tensor | None, chain_id: Tensor | None) -> Tensor | None:
    """Which (query, key) pairs may attend, broadcastable to (B, H, L, L); None = all."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if chain_id is not None:
        same_chain = (chain_id[:, :, None] == chain_id[:, None, :])[:, None]  # (B, 1, L, L)
        mask = same_chain if mask is None else mask & same_chain
    return mask


def zero_masked_keys(key_mask: Tensor | None, *keys: Tensor) -> tuple[Tensor, ...]:
    """Each (B, L, H, 3) tensor with the rows of masked keys replaced by zeros."""
    if key_mask is None:
        return keys
    keep = key_mask[:, :, None, None]
    return tuple(torch.where(keep, k, torch.zeros((), dtype=k.dtype, device=k.device)) for k in keys)


def finite_part(t: Tensor) -> Tensor:
    """``t`` with every NaN and ±inf replaced by 0 (``where``: their gradient is 0)."""
    return torch.where(torch.isfinite(t), t, torch.zeros((), dtype=t.dtype, device=t.device))


def nan_where(flags: Tensor, like: Tensor) -> Tensor:
    """NaN where ``flags`` is True, 0 elsewhere, in ``like``'s dtype: added to an output."""
    nan = torch.full((), float("nan"), dtype=like.dtype, device=like.device)
    return torch.where(flags, nan, torch.zeros((), dtype=like.dtype, device=like.device))


def dense_reach(flags: Tensor, mask: Tensor | None) -> Tensor:
    """(…, L_q, d): whether a query reads a flagged key through a pair that the dense
    ``mask`` (…, L_q, L_k) keeps; ``flags`` (…, L_k, d) bool. One (L_q, L_k) product."""
    if mask is None:
        return flags.any(dim=-2, keepdim=True)
    return (mask.to(torch.float32) @ flags.to(torch.float32)) > 0


def finite_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, key_mask=None, chain_id=None, *,
                            rot_weight=None, dist_weight=None, compute=torch.float32):
    """The five (B, L, H, 3) inputs of geometric attention (``v`` may be None: then four),
    each vector that is not finite, or too large for ``compute`` arithmetic, replaced by a
    neutral one, and ``(nan_rows, has_key)``:

    - ``nan_rows`` (B, L, H, 3) bool (v's shape, (B, L, H·m, 3) for m values per head):
      the outputs that read such a vector (their own
      query's, or a kept key's k_rot, k_dist or that coordinate of v), for rows that have a
      key at all;
    - ``has_key`` (B, L or 1, 1, 1) bool: whether the query may attend any key.

    An implementation computes on the returned inputs and adds ``nan_where(nan_rows, out)``.

    "Too large": a largest coordinate of q_r, k_r, or of q_d, k_d measured from their
    chain's key centre (:func:`geoattn.distances.key_centre`), also times the head's weight
    when it exceeds 1, of at least √max/8 (2.3e18 for fp32). Below that no score, no
    distance and no term of the backward pass can overflow, in any implementation (the
    Triton kernels' log2(e) included), so no inf ever meets a 0 weight, and every
    implementation returns the same NaN rows. A replaced rotation vector is 0, a replaced
    distance vector its chain's centre, a non-finite coordinate of v is 0.
    """
    finite = [None if t is None else torch.isfinite(t) for t in (q_rot, k_rot, q_dist, k_dist, v)]
    b, length = q_rot.shape[:2]
    centre = key_centre(k_dist.detach().to(compute).transpose(1, 2), key_mask, chain_id).transpose(1, 2)
    limit = math.sqrt(torch.finfo(compute).max) / 8

    def size(t, w=None):  # largest |coordinate|, times max(1, w): (B, L, H, 1)
        t = torch.where(torch.isfinite(t), t.detach().to(compute), 0).abs().amax(-1, keepdim=True)
        return t if w is None else t * w.detach().to(compute).clamp(min=1)[:, None]

    big_q = (size(q_rot, rot_weight) >= limit) | (size(q_dist - centre, dist_weight) >= limit)
    big_k = (size(k_rot) >= limit) | (size(k_dist - centre, dist_weight) >= limit)
    out_q = [~f.all(dim=-1, keepdim=True) | big_q for f in (finite[0], finite[2])]
    out_k = [~f.all(dim=-1, keepdim=True) | big_k for f in (finite[1], finite[3])]
    # v may hold m vectors per head (B, L, H·m, 3): a head's flags reach each of them
    m = 1 if v is None else v.shape[2] // max(1, q_rot.shape[2])

    def per_value(t):
        return t.repeat_interleave(m, dim=2) if m > 1 else t

    keys_bad = per_value(out_k[0] | out_k[1]) | (False if v is None else ~finite[4])
    reach = over_keys(keys_bad.to(torch.float32), key_mask, chain_id, "amax") > 0
    ones = torch.ones((b, length, 1, 1), device=q_rot.device)
    has_key = over_keys(ones, key_mask, chain_id, "amax") > 0
    nan_rows = has_key & (per_value(out_q[0] | out_q[1]) | reach)

    def zero(t):
        return torch.zeros((), dtype=t.dtype, device=t.device)

    clean = [torch.where(out_q[0], zero(q_rot), q_rot), torch.where(out_k[0], zero(k_rot), k_rot),
             torch.where(out_q[1], centre.to(q_dist.dtype), q_dist),
             torch.where(out_k[1], centre.to(k_dist.dtype), k_dist)]
    if v is not None:
        clean.append(torch.where(finite[4], v, zero(v)))
    return clean, (nan_rows, has_key)


def finite_attention_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None):
    """``q, k, v`` of scaled dot-product attention through :func:`finite_part`, and the
    tensors (NaN or 0) to add to its output ``z`` and to its weights ``alpha``: NaN in the
    rows that read a non-finite number (their own query, or a kept key's k, or that
    column of its v) and have a key at all. ``mask``: a dense (…, L_q, L_k) mask or None.
    """
    def bad(t):
        return ~torch.isfinite(t).all(dim=-1, keepdim=True)

    if mask is None:
        has_key = torch.tensor(k.shape[-2] > 0, device=q.device)
    else:
        mask = mask if mask.dim() >= 2 else mask[None]
        has_key = mask.any(dim=-1, keepdim=True)
    rows = has_key & (bad(q) | dense_reach(bad(k), mask))  # (…, L_q, 1)
    z_rows = rows | (has_key & dense_reach(~torch.isfinite(v), mask))
    finite = [finite_part(t) for t in (q, k, v)]
    return finite, nan_where(z_rows, v), nan_where(rows, q)


def rowwise(fn, x: Tensor) -> Tensor:
    """``fn(x)`` for a ``fn`` that maps each row (last dim) on its own (``nn.Linear``,
    ``nn.LayerNorm``), computed on the finite rows: a row holding NaN or inf gives a row of
    NaN, added afterwards, so its 0 · NaN never reaches ``fn``'s weight gradient (which
    sums over every row, masked or not).
    """
    bad = ~torch.isfinite(x).all(dim=-1, keepdim=True)
    out = fn(torch.where(bad, torch.zeros((), dtype=x.dtype, device=x.device), x))
    return out + nan_where(bad, out)
