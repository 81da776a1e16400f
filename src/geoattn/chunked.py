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

**Fused forward.** Each operator of the tile loop still writes its (R, n) tile to memory.
For long sequences on a CPU (``L >= FUSED_MIN_LENGTH``, ``block_size`` left to the
implementation) the forward instead runs :func:`_fused_rows` compiled by ``torch.compile``
(once per variant, dynamic shapes): the same math written pointwise, which Inductor turns
into one C++ loop nest that makes each pair's score, its exponential and its share of
P·V (ℓ as a column of ones in V) in registers. The backward does the same in two passes
(:func:`_fused_dq` reduces over the keys, :func:`_fused_dkdv` over the queries), with
:math:`\sum_{ij} dS_{ij}\, q^r_i\cdot k^r_j = \sum_i q^r_i \cdot (dS\,k^r)_i` for ∂/∂w_r. Memory stays
O(L). Should compiling fail, the tile loops run instead.

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
import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .chains import chain_ranks
from .contract import check_block_size, check_geometric_inputs, compute_dtype, values_back, values_heads_first
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
    """Online softmax over (query, key) tiles; returns ``out`` (B, H, L, 3m) and ``lse`` (B, H, L).

    Both weights are folded into the vectors before the loop: w_r/√3 into q_r, and w_d/√3
    into both point sets, since ‖w q − w k‖ = w ‖q − k‖ for w ≥ 0. A tile's scores are then
    ``−distance`` plus one ``baddbmm_`` for the rotation term, all in place.
    """
    b, h, length, _ = qr.shape
    folded = (qr * w_r, kr, qd * w_d, kd * w_d, v)
    # v: (B, H, L, 3m), a head's m value vectors side by side
    a, kr, qd, kd, v = (t.reshape(b * h, length, t.shape[-1]) for t in folded)
    kr_t = kr.transpose(1, 2).contiguous()
    guard = _may_overflow(qd, kd)
    rows, keys = tile_sizes(b * h, length, block_size)
    out, lse = torch.empty_like(v), v.new_empty(b * h, length)
    for i0 in range(0, length, rows):
        qi = slice(i0, i0 + rows)
        m, l, acc = online_softmax_init((b * h, a[:, qi].shape[1]),
                                        v.shape[-1], dtype=v.dtype,
                                        device=v.device)
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
    return out.reshape(b, h, length, v.shape[-1]), lse.reshape(b, h, length)


#: Sequences at least this long run the fused path (:func:`_fused_forward`) when the
#: caller leaves ``block_size`` to the implementation: below it the tile loop is fast enough
#: and a first call compiles nothing (torch.compile takes seconds, once per variant).
FUSED_MIN_LENGTH = 1024


def _fused_rows(a, qd, kr_t, kd_t, v_t, groups, seq):
    """The forward for every query row at once, written pointwise so that Inductor fuses
    the scores, the softmax and P·V into loops over the keys: no (L, L) buffer exists.

    ``a, qd``: (B, H, L, 3), already weighted; ``kr_t, kd_t``: (B, H, 3, L), ``v_t``:
    (B, H, d_v + 1, L), v and a row of ones, key-major so that the inner loop reads
    contiguous planes. ``groups``: None, or (query, key) float planes (B, L): a pair is
    kept where they are equal; ``seq``: None or (B, L) floats, +1 where equal.
    """
    def q(t, c):  # (B, H, L, 1)
        return t[..., c, None]

    def k(t, c):  # (B, H, 1, L)
        return t[:, :, None, c]

    rot = q(a, 0) * k(kr_t, 0) + q(a, 1) * k(kr_t, 1) + q(a, 2) * k(kr_t, 2)
    d2 = sum((q(qd, c) - k(kd_t, c)) ** 2 for c in range(3))
    s = rot - torch.sqrt(d2)
    if seq is not None:
        s = s + (seq[:, None, :, None] == seq[:, None, None, :])
    if groups is not None:
        same = groups[0][:, None, :, None] == groups[1][:, None, None, :]
        s = torch.where(same, s, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(m), m, 0.0)
    p = torch.exp(s - shift)
    # one reduction per row of v_t, whose last row is ones: ℓ is one more column of P·V.
    # (A separate p.sum() got a loop of its own, and P was stored to feed it.)
    sums = torch.stack([(p * k(v_t, c)).sum(dim=-1) for c in range(v_t.shape[2])], dim=-1)
    acc, l = sums[..., :-1], sums[..., -1]
    has_key = l > 0
    safe = torch.where(has_key, l, 1.0)
    lse = torch.where(has_key, shift[..., 0] + torch.log(safe), float("inf"))
    return acc / safe[..., None], lse


_FUSED = {"failed": False}


def _compiled(name: str):
    """``_fused_rows`` ("rows"), ``_fused_dq`` or ``_fused_dkdv`` through ``torch.compile``
    (dynamic shapes: one compilation per variant, not per L)."""
    if name not in _FUSED:
        fn = {"rows": _fused_rows, "dq": _fused_dq, "dkdv": _fused_dkdv}[name]
        # Inductor stores a pointwise value with more than 4 reads that has two users (the
        # scores feed the max and the exponentials): an (L, L) buffer. Higher limits keep
        # each pair's terms in registers.
        _FUSED[name] = torch.compile(fn, dynamic=True, fullgraph=True,
                                     options={"realize_reads_threshold": 64,
                                              "realize_cpu_opcount_threshold": 1000,
                                              "realize_cpu_acc_reads_threshold": 64})
    return _FUSED[name]


def _run_compiled(name: str, *args):
    """Call a compiled function. Each variant (dtype, which pair terms, d_v, B or H of 1)
    is a compilation of its own; past Dynamo's default limit of 8 it would silently run
    the function eagerly, with its (L, L) tensors. A higher limit here, and an error past
    it, so that the tile loop takes over instead."""
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        return _compiled(name)(*args)


def _compile_failed(err: Exception) -> None:
    _FUSED["failed"] = True
    warnings.warn(f"geoattn.chunked: torch.compile failed ({type(err).__name__}: {err}); "
                  "using the eager tile loop", RuntimeWarning, stacklevel=3)


def _use_fused(qd, kd, length, block_size) -> bool:
    return (block_size is None and length >= FUSED_MIN_LENGTH and qd.device.type == "cpu"
            and not _FUSED["failed"] and not _may_overflow(qd, kd))


def _float_pairs(pairs, b, length):
    """(groups, seq) for :func:`_fused_rows`: the pair masks as one float compare per
    pair (vectorized, where bools and int64 ids were not), from ranks exact in fp32."""
    key_mask, sequence_id, chain_id = pairs
    groups = None
    if key_mask is not None or chain_id is not None:
        g = (torch.zeros((b, length), device=key_mask.device) if chain_id is None
             else chain_ranks(chain_id).to(torch.float32))
        # a masked key is in group -1, which no query is in
        groups = (g, g if key_mask is None else torch.where(key_mask, g, -1.0))
    seq = None if sequence_id is None else chain_ranks(sequence_id).to(torch.float32)
    return groups, seq


def _fused_forward(qr, kr, qd, kd, v, w_r, w_d, pairs):
    """:func:`_forward` in one compiled call; same inputs and outputs, no ``block_size``."""
    a, qd, kd = qr * w_r, qd * w_d, kd * w_d
    ones = v.new_ones(v.shape[:-1] + (1,))
    planes = (t.transpose(-1, -2).contiguous() for t in (kr, kd, torch.cat([v, ones], -1)))
    args = (a.contiguous(), qd.contiguous(), *planes, *_float_pairs(pairs, qr.shape[0], qr.shape[2]))
    try:
        return _run_compiled("rows", *args)
    except Exception as err:  # a machine that cannot compile still runs the exact tile loop
        _compile_failed(err)
        return None


def _pair_terms(rot, dist, w_r, w_d, lse, dp, delta, seq, same):
    """Per pair, from its two terms: P = e^{S − lse}, dS = P ∘ (dP − Δ), and the distance
    term's G = w_d dS / d (0 at d = 0), for :func:`_fused_dq` and :func:`_fused_dkdv`."""
    s = w_r * rot - w_d * dist
    if seq is not None:
        s = s + seq
    if same is not None:
        s = torch.where(same, s, float("-inf"))
    p = torch.exp(s - lse)
    ds = p * (dp - delta)
    g = torch.where(dist > 0, w_d * ds / dist, 0.0)
    return p, ds, g


def _fused_dq(qr, qd, d_o, lse, delta, kr_t, kd_t, v_t, w_r, w_d, groups, seq):
    """dq_r, dq_d and each row's shares of dw_r, dw_d: reductions over the keys, for every
    query row at once (queries on dim −2, keys on dim −1, as in :func:`_fused_rows`).
    ``d_o``: (B, H, L, d_v); ``lse, delta``: (B, H, L, 1); weights (1, H, 1, 1)."""
    def q(t, c):
        return t[..., c, None]

    def k(t, c):
        return t[:, :, None, c]

    rot = sum(q(qr, c) * k(kr_t, c) for c in range(3))
    dist = torch.sqrt(sum((q(qd, c) - k(kd_t, c)) ** 2 for c in range(3)))
    dp = sum(q(d_o, c) * k(v_t, c) for c in range(v_t.shape[2]))
    seq = None if seq is None else (seq[:, None, :, None] == seq[:, None, None, :])
    same = None if groups is None else groups[0][:, None, :, None] == groups[1][:, None, None, :]
    _, ds, g = _pair_terms(rot, dist, w_r, w_d, lse, dp, delta, seq, same)
    sums = [(ds * k(kr_t, c)).sum(-1) for c in range(3)]
    sums += [(g * k(kd_t, c)).sum(-1) for c in range(3)]
    sums += [g.sum(-1), (ds * dist).sum(-1)]
    return torch.stack(sums, dim=-1)


def _fused_dkdv(kr, kd, v, qr_t, qd_t, do_t, lse_t, delta_t, w_r, w_d, groups, seq):
    """dv, dk_r, dk_d: reductions over the queries, for every key at once (keys on dim
    −2, queries on dim −1): :func:`_fused_dq` transposed."""
    def k(t, c):
        return t[..., c, None]

    def q(t, c):
        return t[:, :, None, c]

    rot = sum(q(qr_t, c) * k(kr, c) for c in range(3))
    dist = torch.sqrt(sum((q(qd_t, c) - k(kd, c)) ** 2 for c in range(3)))
    dp = sum(q(do_t, c) * k(v, c) for c in range(v.shape[-1]))
    seq = None if seq is None else (seq[:, None, None, :] == seq[:, None, :, None])
    same = None if groups is None else groups[0][:, None, None, :] == groups[1][:, None, :, None]
    p, ds, g = _pair_terms(rot, dist, w_r, w_d, lse_t, dp, delta_t, seq, same)
    sums = [(p * q(do_t, c)).sum(-1) for c in range(do_t.shape[2])]
    sums += [(ds * q(qr_t, c)).sum(-1) for c in range(3)]
    sums += [(g * q(qd_t, c)).sum(-1) for c in range(3)]
    sums += [g.sum(-1)]
    return torch.stack(sums, dim=-1)


def _fused_backward(d_out, out, lse, qr, kr, qd, kd, v, w_r, w_d, pairs):
    """:func:`_backward` as two compiled passes over the pairs (one per side of the
    products), returning the same seven gradients; None where compiling failed."""
    b, h, length, dv = v.shape
    delta = (d_out * out).sum(dim=-1, keepdim=True)
    lse = lse[..., None]
    groups, seq = _float_pairs(pairs, b, length)

    def planes(t):
        return t.transpose(-1, -2).contiguous()

    try:
        rows = _run_compiled("dq", qr.contiguous(), qd.contiguous(), d_out.contiguous(), lse, delta,
                               planes(kr), planes(kd), planes(v), w_r, w_d, groups, seq)
        cols = _run_compiled("dkdv", kr.contiguous(), kd.contiguous(), v.contiguous(), planes(qr), planes(qd),
                                 planes(d_out), planes(lse), planes(delta), w_r, w_d, groups, seq)
    except Exception as err:  # a machine that cannot compile still runs the exact block loop
        _compile_failed(err)
        return None
    ds_kr, g_kd, g_sum, ds_dist = rows[..., :3], rows[..., 3:6], rows[..., 6:7], rows[..., 7]
    dqr = w_r * ds_kr
    dqd = g_kd - g_sum * qd
    dw_r = (qr * ds_kr).sum(dim=(0, 2, 3)) * _INV_SQRT3
    dw_d = -ds_dist.sum(dim=(0, 2)) * _INV_SQRT3
    dv_, ds_qr, g_qd, g_sum_k = cols[..., :dv], cols[..., dv:dv + 3], cols[..., dv + 3:dv + 6], cols[..., -1:]
    dkr = w_r * ds_qr
    dkd = g_qd - g_sum_k * kd
    return dqr, dkr, dqd, dkd, dv_, dw_r, dw_d


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
        qr, kr, qd, kd = (t.detach().to(compute).transpose(1, 2) for t in (q_rot, k_rot, q_dist, k_dist))
        # (B, L, H·m, 3) -> (B, H, L, 3m): each head's map is made once for its m values
        vv = values_heads_first(v.detach().to(compute), q_rot.shape[2])
        # one centre per chain (see geoattn.distances)
        centre = key_centre(kd, pairs.key_mask, pairs.chain_id)
        qd, kd = qd - centre, kd - centre
        w_r = rot_weight.detach().to(compute)[None, :, None, None] * _INV_SQRT3
        w_d = dist_weight.detach().to(compute)[None, :, None, None] * _INV_SQRT3
        fused = None
        if _use_fused(qd, kd, qr.shape[2], block_size):
            fused = _fused_forward(qr, kr, qd, kd, vv, w_r, w_d, pairs)
        out, lse = fused or _forward(qr, kr, qd, kd, vv, w_r, w_d, pairs, block_size)
        ctx.save_for_backward(qr, kr, qd, kd, vv, w_r, w_d, out, lse, *(t for t in pairs if t is not None))
        ctx.present = tuple(t is not None for t in pairs)
        ctx.block_size = block_size
        ctx.dtypes = tuple(t.dtype for t in (q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight))
        return values_back(out).to(v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        qr, kr, qd, kd, vv, w_r, w_d, out, lse, *given = ctx.saved_tensors
        given = iter(given)
        pairs = _Pairs(*(next(given) if present else None for present in ctx.present))
        d_out = values_heads_first(grad_out.to(out.dtype), qr.shape[1])
        grads = None
        if _use_fused(qd, kd, qr.shape[2], ctx.block_size):
            grads = _fused_backward(d_out, out, lse, qr, kr, qd, kd, vv, w_r, w_d, pairs)
        grads = grads or _backward(d_out, out, lse, qr, kr, qd, kd, vv, w_r, w_d, pairs,
                                   ctx.block_size or DEFAULT_BLOCK_SIZE)
        vectors = (*(g.transpose(1, 2) for g in grads[:4]), values_back(grads[4]))  # back to (B, L, H, 3)
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
