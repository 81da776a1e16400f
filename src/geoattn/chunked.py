r"""Geometric attention with an online softmax over tiles of queries and keys (chapter 5).

The naive path materializes every score :math:`A_{ij}` (and ESM's (L, L, 3) differences),
so its memory grows as :math:`L^2`. Here the scores are made one tile at a time: a block of
query rows :math:`Q_a` against a block of keys :math:`K_b = \{j_0, \dots, j_0+n-1\}`, and
only three running statistics per query row are kept (Milakov & Gimelshein's online
softmax, FlashAttention's forward pass):

.. math::
    S_{ij} &= \tfrac{w_r}{\sqrt3}\, q^r_i\cdot k^r_j - \tfrac{w_d}{\sqrt3}\,\lVert q^d_i - k^d_j\rVert_2
              \quad (i \in Q_a,\ j \in K_b;\ -\infty \text{ for a masked key}) \\
    m_i' &= \max\big(m_i,\ \max_{j\in K_b} S_{ij}\big) \\
    \ell_i' &= e^{m_i - m_i'}\,\ell_i + \textstyle\sum_{j\in K_b} e^{S_{ij} - m_i'} \\
    \mathrm{acc}_i' &= e^{m_i - m_i'}\,\mathrm{acc}_i + \textstyle\sum_{j\in K_b} e^{S_{ij} - m_i'}\, v_j

starting from :math:`m = -\infty,\ \ell = 0,\ \mathrm{acc} = 0`. At the end
:math:`o_i = \mathrm{acc}_i / \ell_i` is exactly :math:`\sum_j \mathrm{softmax}_j(S_i)\, v_j`,
and :math:`\mathrm{lse}_i = m_i + \log \ell_i` is the row's log-sum-exp. Memory is one tile,
never O(L²); :func:`tile_sizes` picks the tile so that it stays in the CPU's cache.

Two rewrites make a tile cheap: both weights are folded into the vectors once per call
(:math:`\tfrac{w_d}{\sqrt3}\lVert q - k\rVert = \lVert \tfrac{w_d}{\sqrt3}q - \tfrac{w_d}{\sqrt3}k\rVert`
for :math:`w_d \ge 0`), and the tile's scores are built and exponentiated in place.

**Backward.** The forward saves only the inputs, ``out`` and ``lse`` (O(L) each). The
backward recomputes each block's scores and gets the probabilities back without any
normalisation pass, :math:`P_{ij} = e^{S_{ij} - \mathrm{lse}_i}`; then, as in FlashAttention,

.. math::
    \Delta_i = \textstyle\sum_c dO_{ic}\, O_{ic},\qquad dP = dO\, V^\top,\qquad dS = P \circ (dP - \Delta),

because :math:`\partial o_i/\partial S_{ij} = P_{ij}(v_j - o_i)`. The chain rule through
:math:`S` then gives all seven gradients. The distance term's gradient is
:math:`\partial \lVert q^d_i - k^d_j\rVert / \partial q^d_i = (q^d_i - k^d_j)/d_{ij}`; with
:math:`G_{ij} = \tfrac{w_d}{\sqrt3} dS_{ij}/d_{ij}` (and :math:`G_{ij} = 0` where
:math:`d_{ij} = 0`, the minimal-norm subgradient, as :func:`geoattn.geometric.safe_norm`),

.. math::
    dq^d_i = -\Big(\textstyle\sum_j G_{ij}\Big) q^d_i + (G\,k^d)_i,\qquad
    dk^d_j = (G^\top q^d)_j - \Big(\textstyle\sum_i G_{ij}\Big) k^d_j,

two matrix products instead of an (L, n, 3) tensor of differences.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .contract import check_block_size, check_geometric_inputs, compute_dtype
from .distances import finite_or_nan, key_centre
from .masking import finite_geometric_inputs, nan_where, zero_masked_keys
from .online_softmax import OnlineSoftmaxState, online_softmax_init, online_softmax_result

__all__ = ["chunked_geometric_attention", "chunked_core", "tile_sizes", "DEFAULT_BLOCK_SIZE", "TILE_NUMBERS"]

#: Keys per block when ``block_size`` is None. With the query tile below, 64 keys ran fastest
#: at L = 4096, H = 8 on one CPU thread (benchmarks/bench_geometric.py).
DEFAULT_BLOCK_SIZE = 64

#: Numbers in one (B·H, rows, keys) score tile: 2**18 fp32 numbers are 1 MiB, about one
#: core's L2 cache, so the half-dozen passes over a tile stay in cache.
TILE_NUMBERS = 2**18

_INV_SQRT3 = 1.0 / math.sqrt(3.0)


def tile_sizes(bh: int, length: int, block_size: int | None = None) -> tuple[int, int]:
    """(query rows, keys) of one score tile, for B·H = ``bh`` independent attentions over
    ``length`` residues: ``block_size`` keys (default :data:`DEFAULT_BLOCK_SIZE`), and a power
    of two of query rows such that the tile holds about :data:`TILE_NUMBERS` numbers, at
    least 16 rows (fewer tiles mean less Python overhead) and at most ``length``."""
    keys = block_size or DEFAULT_BLOCK_SIZE
    rows = TILE_NUMBERS // max(1, bh * keys)
    rows = 1 << max(4, rows.bit_length() - 1)  # a power of two, >= 16
    return max(1, min(rows, length)), keys


class _Pairs(NamedTuple):
    """Per-pair terms, as (B, L) integers compared one tile at a time (never (L, L))."""

    key_mask: Tensor | None  # (B, L) bool
    sequence_id: Tensor | None  # (B, L) int: +1 for a pair in one sequence
    chain_id: Tensor | None  # (B, L) int: a pair in two chains is masked

    def block(self, blk, rows=slice(None)):
        """(bias, mask) for the query ``rows`` against the keys in ``blk``, (B, 1, R, n) or
        (B, 1, 1, n), or None."""
        mask = None if self.key_mask is None else self.key_mask[:, None, None, blk]
        if self.chain_id is not None:
            same = (self.chain_id[:, rows, None] == self.chain_id[:, None, blk])[:, None]
            mask = same if mask is None else mask & same
        bias = None
        if self.sequence_id is not None:
            bias = (self.sequence_id[:, rows, None] == self.sequence_id[:, None, blk])[:, None]
        return bias, mask


def _distance(qd: Tensor, kd: Tensor) -> Tensor:
    """‖q_d − k_d‖ of every query against every key: (..., R, 3), (..., n, 3) → (..., R, n).

    One coordinate at a time, in place: each difference is formed exactly as the naive path
    forms it (no |q|² + |k|² − 2q·k cancellation), with no (R, n, 3) temporary. Each
    coordinate is first made a contiguous plane, so the loop over keys vectorizes; on a CPU
    this runs about twice as fast as ``torch.cdist``.
    """
    # (..., 3, R) and (..., 3, n): one contiguous plane per coordinate
    q, k = qd.movedim(-1, -2).contiguous(), kd.movedim(-1, -2).contiguous()
    d = q[..., 0, :, None] - k[..., 0, None, :]
    d.square_()
    for c in (1, 2):
        t = q[..., c, :, None] - k[..., c, None, :]
        d.addcmul_(t, t)
    return d.sqrt_()


def _block_scores(qr, qd, kr, kd, w_r, w_d, bias, mask):
    """Scores of every query against one key block, and their two terms (for the backward).

    ``qr, qd``: (B, H, L, 3); ``kr, kd``: (B, H, n, 3); ``w_r, w_d``: (1, H, 1, 1), already
    divided by √3; ``bias``, ``mask``: from :meth:`_Pairs.block`. Returns S, rot, dist,
    each (B, H, L, n).
    """
    rot = qr @ kr.transpose(-1, -2)
    dist = finite_or_nan(_distance(qd, kd))
    s = w_r * rot - w_d * dist
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s, rot, dist


def _fold_(m, l, acc, s, v):
    """``online_softmax_update`` (see :mod:`geoattn.online_softmax`) of one tile, with the
    tile's scores ``s`` consumed in place: m' = max(m, max_j s_j), ℓ' = e^{m−m'}ℓ + Σ_j p_j,
    acc' = e^{m−m'}acc + Σ_j p_j v_j with p_j = e^{s_j − m'}."""
    m_new = torch.maximum(m, s.amax(dim=-1))
    # a row with no key yet (m' = −inf) shifts by 0, never by −inf
    zero = torch.zeros((), dtype=m.dtype)
    shift = torch.where(torch.isfinite(m_new), m_new, zero)
    rescale = torch.exp(m - shift)
    p = s.sub_(shift[..., None]).exp_()
    l_new = l * rescale + p.sum(dim=-1)
    return m_new, l_new, torch.baddbmm(acc * rescale[..., None], p, v)


def _may_overflow(qd: Tensor, kd: Tensor) -> bool:
    # ‖q − k‖ overflows once |q| + |k| nears √(max/3); a NaN or inf anywhere also trips this.
    bound = (qd.abs().amax() + kd.abs().amax()).item() if qd.numel() and kd.numel() else 0.0
    return not bound < math.sqrt(torch.finfo(qd.dtype).max / 3)


def _forward(qr, kr, qd, kd, v, w_r, w_d, pairs, block_size):
    """Online softmax over (query, key) tiles; returns ``out`` (B, H, L, 3) and ``lse`` (B, H, L).

    Both weights are folded into the vectors before the loop: w_r/√3 into q_r, and w_d/√3
    into both point sets, since ‖w q − w k‖ = w ‖q − k‖ for w ≥ 0. A tile's scores are then
    ``−distance`` plus one ``baddbmm_`` for the rotation term, all in place.
    """
    b, h, length, _ = qr.shape
    folded = (qr * w_r, kr, qd * w_d, kd * w_d, v)
    a, kr, qd, kd, v = (t.reshape(b * h, length, 3) for t in folded)
    kr_t = kr.transpose(1, 2).contiguous()
    guard = _may_overflow(qd, kd)
    rows, keys = tile_sizes(b * h, length, block_size)
    out, lse = torch.empty_like(v), v.new_empty(b * h, length)
    for i0 in range(0, length, rows):
        qi = slice(i0, i0 + rows)
        m, l, acc = online_softmax_init((b * h, a[:, qi].shape[1]), 3,
                                        dtype=v.dtype, device=v.device)
        for j0 in range(0, length, keys):
            kj = slice(j0, j0 + keys)
            # line 8, weighted: w_d/√3 · ‖q_d − k_d‖
            s = _distance(qd[:, qi], kd[:, kj])
            if guard:
                s = finite_or_nan(s)
            # lines 7 and 9: S = w_r/√3 · q_r·k_r − that
            s.baddbmm_(a[:, qi], kr_t[:, :, kj], beta=-1)
            bias, mask = pairs.block(kj, qi)
            tile = s.view(b, h, s.shape[1], s.shape[2])
            if bias is not None:
                tile.add_(bias)
            if mask is not None:
                tile.masked_fill_(~mask, float("-inf"))
            # (m, ℓ, acc) <- this tile's keys
            m, l, acc = _fold_(m, l, acc, s, v[:, kj])
        state = OnlineSoftmaxState(m, l, acc)
        out[:, qi], lse[:, qi] = online_softmax_result(state)
    # A row with no key: out = 0, and lse = +inf makes the backward's
    # exp(S - lse) exactly 0.
    return out.reshape(b, h, length, 3), lse.reshape(b, h, length)


def _backward(d_out, out, lse, qr, kr, qd, kd, v, w_r, w_d, pairs,
              block_size):
    """FlashAttention's backward, one key block at a time."""
    delta = (d_out * out).sum(dim=-1)  # Δ_i = dO_i · O_i
    dqr, dqd = torch.zeros_like(qr), torch.zeros_like(qd)
    dkr, dkd = torch.empty_like(kr), torch.empty_like(kd)
    dv = torch.empty_like(v)
    dw_r = w_r.new_zeros(w_r.shape[1])
    dw_d = w_d.new_zeros(w_d.shape[1])
    length = qr.shape[2]
    for j0 in range(0, length, block_size):
        blk = slice(j0, j0 + block_size)
        kr_b, kd_b, v_b = kr[:, :, blk], kd[:, :, blk], v[:, :, blk]
        s, rot, dist = _block_scores(qr, qd, kr_b, kd_b, w_r, w_d,
                                     *pairs.block(blk))
        # the softmax, recovered from the saved log-sum-exp
        p = torch.exp(s - lse[..., None])
        dv[:, :, blk] = p.transpose(-1, -2) @ d_out
        dp = d_out @ v_b.transpose(-1, -2)
        # dL/dS; exactly 0 for masked keys and empty rows
        ds = p * (dp - delta[..., None])
        # rotation term: S += (w_r/√3) q_r·k_r
        dqr += w_r * (ds @ kr_b)
        dkr[:, :, blk] = w_r * (ds.transpose(-1, -2) @ qr)
        dw_r += (ds * rot).sum(dim=(0, 2, 3)) * _INV_SQRT3
        # distance term: S -= (w_d/√3) ‖q_d − k_d‖, gradient 0 where it is 0
        apart = dist > 0
        safe = torch.where(apart, dist, torch.ones_like(dist))
        g = w_d * torch.where(apart, ds / safe, torch.zeros_like(ds))
        dqd += g @ kd_b - g.sum(dim=-1, keepdim=True) * qd
        dkd[:, :, blk] = (g.transpose(-1, -2) @ qd
                          - g.sum(dim=-2)[..., None] * kd_b)
        dw_d -= (ds * dist).sum(dim=(0, 2, 3)) * _INV_SQRT3
    return dqr, dkr, dqd, dkd, dv, dw_r, dw_d


class _ChunkedGeometricAttention(torch.autograd.Function):
    """Autograd wrapper: the forward keeps only (out, lse), the backward recomputes blocks."""

    @staticmethod
    def forward(ctx, q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, pairs, block_size):
        compute = compute_dtype(v)
        # (B, L, H, 3) -> (B, H, L, 3): one independent attention per batch entry and head
        qr, kr, qd, kd, vv = (t.detach().to(compute).transpose(1, 2) for t in (q_rot, k_rot, q_dist, k_dist, v))
        # one centre per chain (see geoattn.distances)
        centre = key_centre(kd, pairs.key_mask, pairs.chain_id)
        qd, kd = qd - centre, kd - centre
        w_r = rot_weight.detach().to(compute)[None, :, None, None] * _INV_SQRT3
        w_d = dist_weight.detach().to(compute)[None, :, None, None] * _INV_SQRT3
        out, lse = _forward(qr, kr, qd, kd, vv, w_r, w_d, pairs, block_size)
        ctx.save_for_backward(qr, kr, qd, kd, vv, w_r, w_d, out, lse, *(t for t in pairs if t is not None))
        ctx.present = tuple(t is not None for t in pairs)
        ctx.block_size = block_size
        ctx.dtypes = tuple(t.dtype for t in (q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight))
        return out.transpose(1, 2).to(v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        qr, kr, qd, kd, vv, w_r, w_d, out, lse, *given = ctx.saved_tensors
        given = iter(given)
        pairs = _Pairs(*(next(given) if present else None for present in ctx.present))
        d_out = grad_out.to(out.dtype).transpose(1, 2)
        grads = _backward(d_out, out, lse, qr, kr, qd, kd, vv, w_r, w_d, pairs, ctx.block_size or DEFAULT_BLOCK_SIZE)
        vectors = tuple(g.transpose(1, 2) for g in grads[:5])  # back to (B, L, H, 3)
        grads = (*vectors, *grads[5:])
        grads = tuple(g.to(dt) if need else None
                      for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad))
        return (*grads, None, None)


def chunked_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *, sequence_id=None,
                 chain_id=None, block_size=None) -> Tensor:
    """The chunked implementation without input validation (the dispatcher validated).

    Non-finite inputs, and vectors too large for fp32 arithmetic, are replaced and mark NaN
    the rows that read them through a kept pair (``geoattn.masking``), so the tile loop
    needs no per-pair ``where`` and overflows nowhere.
    """
    k_rot, k_dist, v = zero_masked_keys(key_mask, k_rot, k_dist, v)
    finite, (nan_rows, _) = finite_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, key_mask, chain_id,
                                                    rot_weight=rot_weight, dist_weight=dist_weight,
                                                    compute=compute_dtype(v))
    pairs = _Pairs(key_mask, sequence_id, chain_id)
    out = _ChunkedGeometricAttention.apply(*finite, rot_weight, dist_weight, pairs, block_size)
    return out + nan_where(nan_rows, out)


def chunked_geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                                sequence_id=None, chain_id=None, block_size: int | None = None) -> Tensor:
    """Geometric attention (the contract of :func:`geoattn.geometric_attention`) in
    O(B·H·L·block_size) memory, forward and backward; see the module docstring for the math.
    Validates its inputs (the dispatcher calls :func:`chunked_core` instead).

    Inputs ``q_rot, k_rot, q_dist, k_dist, v``: (B, L, H, 3); ``rot_weight, dist_weight``:
    (H,); ``key_mask``: (B, L) bool, True = may attend; ``sequence_id``, ``chain_id``:
    (B, L) int. ``block_size``: keys per block (None: ``DEFAULT_BLOCK_SIZE``).
    Accumulates in fp32 (fp64 for fp64 ``v``); returns ``v``'s dtype. A query row with no
    key to attend returns zeros and passes back zero gradients.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask,
                           sequence_id=sequence_id, chain_id=chain_id)
    block_size = check_block_size(block_size, "chunked")
    return chunked_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask,
                        sequence_id=sequence_id, chain_id=chain_id, block_size=block_size)
