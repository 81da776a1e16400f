"""Geometric attention written with PyTorch's FlexAttention: the peer a PyTorch user would write.

FlexAttention (``torch.nn.attention.flex_attention``, PyTorch ≥ 2.5) runs ordinary
attention, softmax(Q·Kᵀ·scale + mods)·V, and lets a ``score_mod`` change every score
inside its fused kernel. Geometric attention fits it as follows (``scale=1.0``):

- the rotation term is the usual Q·Kᵀ, with q_r pre-scaled by w_r/√3 and the head
  dimension padded from 3 to 16 (the smallest FlexAttention compiles for);
- the distance term is computed inside the ``score_mod``, ``s − c[h]·√(dx² + dy² + dz²)``
  with c = w_d/√3, from captured coordinate tensors, each a contiguous (B, H, L) tensor;
- ESM's sequence bias (+1 in one sequence) is a ``score_mod`` term; the key mask and the
  chain mask are a ``mask_mod``, given to FlexAttention as a block mask, so that blocks
  with no pair to attend are skipped. A fully masked query row returns zeros, as the
  contract says (FlexAttention's own convention).

Math runs in fp32 (fp64 for fp64 inputs); the output has ``v``'s dtype. Masked keys are
zeroed before anything else, as in every implementation, so NaN or inf there cannot reach
the output. Both point sets are shifted by the keys' centre (``distances.key_centre``), as
naive and chunked do: a structure far from the origin keeps its digits.

What it cannot do, or does differently:

- no backward pass on the CPU (FlexAttention has none there); on a GPU it has one, and
  it generates its own Triton kernels;
- with a key mask or chain ids, building the block mask evaluates the ``mask_mod`` on
  every (query, key) pair: O(B·L²) booleans per call, while the scores stay O(L) in memory;
- the padded head dimension spends 16 multiply-adds on a 3-term dot product, and the
  distance is recomputed in the backward from the captured tensors;
- the first call compiles (``torch.compile(flex_attention)``: seconds to minutes, once
  per shape class); without compilation FlexAttention materializes every score, as naive.
"""
from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor

from .contract import check_geometric_inputs, compute_dtype, values_back, values_heads_first
from .distances import key_centre
from .masking import finite_geometric_inputs, nan_where, zero_masked_keys

__all__ = ["flex_geometric_attention", "flex_core", "FLEX_HEAD_DIM"]

#: FlexAttention's smallest head dimension: q_r, k_r and v are zero-padded from 3 to it.
FLEX_HEAD_DIM = 16


@functools.cache
def _flex(backend: str | None):
    """flex_attention, compiled once per backend (None: eager, which materializes the scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention if backend is None else torch.compile(flex_attention, backend=backend)


def _padded(width: int) -> int:
    """The value head dimension FlexAttention gets: a power of two, at least 16."""
    return max(FLEX_HEAD_DIM, 1 << (width - 1).bit_length())


def _heads_first(x: Tensor, dtype: torch.dtype, pad: bool) -> Tensor:
    """(B, L, H, 3) → (B, H, L, 16) zero-padded (``pad``), or (B, H, L, 3)."""
    x = x.to(dtype).transpose(1, 2)
    if pad:
        x = torch.nn.functional.pad(x, (0, FLEX_HEAD_DIM - 3))
    return x.contiguous()


def flex_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *, sequence_id=None,
              chain_id=None, block_size=None, backend: str | None = "inductor"):
    """FlexAttention without input validation (see :func:`flex_geometric_attention`).

    ``block_size`` is accepted for the dispatcher's signature and ignored (FlexAttention
    picks its own tiles). ``backend``: the ``torch.compile`` backend of flex_attention, or
    None for eager FlexAttention.
    """
    b, length, h, _ = q_rot.shape
    dtype = compute_dtype(v)
    k_rot, k_dist, v = zero_masked_keys(key_mask, k_rot, k_dist, v)
    # as every implementation: non-finite or too large vectors replaced, their rows NaN at the end
    (q_rot, k_rot, q_dist, k_dist, v), (nan_rows, _) = finite_geometric_inputs(
        q_rot, k_rot, q_dist, k_dist, v, key_mask, chain_id, rot_weight=rot_weight,
        dist_weight=dist_weight, compute=dtype)
    # distances do not change when a chain's points move together: each chain's own centre
    centre = key_centre(k_dist.to(dtype).transpose(1, 2), key_mask, chain_id).transpose(1, 2)
    q = _heads_first(q_rot.to(dtype) * (rot_weight.to(dtype) / math.sqrt(3.0))[:, None], dtype, pad=True)
    k = _heads_first(k_rot, dtype, pad=True)
    # m values per head side by side, (B, H, L, 3m), padded as q and k: one map for them all
    val = values_heads_first(v.to(dtype), h)
    val_width = val.shape[-1]
    val = torch.nn.functional.pad(val, (0, _padded(val.shape[-1]) - val.shape[-1])).contiguous()
    qd = _heads_first(q_dist.to(dtype) - centre, dtype, pad=False)
    kd = _heads_first(k_dist.to(dtype) - centre, dtype, pad=False)
    qx, qy, qz = (qd[..., i].contiguous() for i in range(3))
    kx, ky, kz = (kd[..., i].contiguous() for i in range(3))
    c = (dist_weight.to(dtype) / math.sqrt(3.0)).contiguous()
    seq = None if sequence_id is None else sequence_id.contiguous()

    def score_mod(s, bi, hi, qi, ki):  # s = the rotation term, q·k
        dx = qx[bi, hi, qi] - kx[bi, hi, ki]
        dy = qy[bi, hi, qi] - ky[bi, hi, ki]
        dz = qz[bi, hi, qi] - kz[bi, hi, ki]
        # clamped: √ has an infinite slope at 0; coincident points get 0
        d2 = torch.clamp_min(dx * dx + dy * dy + dz * dz, 1e-30)
        s = s - c[hi] * torch.sqrt(d2)
        if seq is not None:
            s = s + (seq[bi, qi] == seq[bi, ki]).to(s.dtype)
        return s

    block_mask = None
    if key_mask is not None or chain_id is not None:
        from torch.nn.attention.flex_attention import create_block_mask

        keep = key_mask.contiguous() if key_mask is not None else None
        chain = chain_id.contiguous() if chain_id is not None else None

        def mask_mod(bi, hi, qi, ki):
            ok = keep[bi, ki] if keep is not None else qi >= 0
            return ok & (chain[bi, qi] == chain[bi, ki]) if chain is not None else ok

        block_mask = create_block_mask(mask_mod, b, None, length, length, device=v.device)
    with warnings.catch_warnings():
        # eager is asked for on purpose (a check, not a benchmark): no advice needed
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = _flex(backend)(q, k, val, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    out = values_back(out[..., :val_width]).to(v.dtype)
    return out + nan_where(nan_rows, out)


def flex_geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                             sequence_id=None, chain_id=None, backend: str | None = "inductor"):
    """Geometric attention with FlexAttention; the contract of ``geoattn.geometric_attention``.

    Validates its inputs, then runs :func:`flex_core`. ``backend="inductor"`` (the default)
    compiles flex_attention once (its first call is slow); None runs it eagerly.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask,
                           sequence_id=sequence_id, chain_id=chain_id)
    if q_rot.shape[1] == 0 or q_rot.shape[0] == 0 or q_rot.shape[2] == 0:
        return v + 0 * sum(t.sum() for t in (q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight))
    return flex_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask, sequence_id=sequence_id,
                     chain_id=chain_id, backend=backend)
