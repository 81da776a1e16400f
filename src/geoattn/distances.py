"""The distance term's numerics, shared by the naive and chunked paths.

- :func:`safe_norm`: ‖x‖₂ with gradient 0 at x = 0, and NaN (never a silent 0 or inf)
  where the norm is not finite.
- :func:`pair_distances`: ‖q_i − k_j‖₂ for every (query, key) pair, through the (…, L, L, 3)
  differences that ESM's code forms, freed as soon as their norm exists.
- :func:`key_centre`: a point near each chain's keys that masked and non-finite keys,
  and other chains, cannot move.
  Distances do not change when q_d and k_d shift together, so both paths subtract it
  first: points far from the origin but near each other keep every digit.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .chains import over_keys

__all__ = ["safe_norm", "pair_distances", "finite_or_nan", "key_centre"]


def finite_or_nan(d: Tensor) -> Tensor:
    """``d`` with ±inf replaced by NaN.

    An infinite distance comes from an infinite coordinate at a key that is not masked, or
    from float32 overflow (points more than ~1.8e19 apart). Its score would be −inf: a
    weight of exactly 0, or a row of silent zeros. NaN makes the failure visible.
    """
    return torch.where(torch.isinf(d), torch.full((), float("nan"), dtype=d.dtype, device=d.device), d)


def safe_norm(x: Tensor, dim: int = -1) -> Tensor:
    """‖x‖₂ along ``dim``: gradient 0 at x = 0 (the minimal-norm subgradient, as
    ``torch.linalg.vector_norm`` defines it), NaN for a NaN vector or a norm that is not
    finite. ``vector_norm`` needs no (…, 3) temporary for the squares."""
    return finite_or_nan(torch.linalg.vector_norm(x, dim=dim))


def pair_distances(q: Tensor, k: Tensor) -> Tensor:
    """‖q_i − k_j‖₂ for every pair: (…, Lq, 3), (…, Lk, 3) → (…, Lq, Lk); gradient 0 at
    coincident points, as :func:`safe_norm`, but no check for infinite norms (the caller
    makes that check where it costs no extra (Lq, Lk) copy).

    The (…, Lq, Lk, 3) differences exist only inside this function, so in inference they
    are freed before the caller makes its next tensor: the peak is those differences and
    their norm, 4 numbers per pair. (In training autograd keeps the differences for the
    backward pass, as in ESM's code.)
    """
    return torch.linalg.vector_norm(q[..., :, None, :] - k[..., None, :, :], dim=-1)


def key_centre(k_dist: Tensor, key_mask: Tensor | None,
               chain_id: Tensor | None = None) -> Tensor:
    """Mean of the finite, unmasked key points of each chain: (B, H, L, 3),
    the centre of residue l's chain, for ``k_dist`` (B, H, L, 3) and
    ``key_mask``, ``chain_id`` (B, L); (B, H, 1, 3) without ``chain_id``;
    0 where no key qualifies.

    Per chain, because only pairs within a chain are scored: shifting each
    chain's queries and keys by its own centre changes no score, and one
    chain's points (far away, or huge) cannot cost another its digits.
    """
    keep = torch.isfinite(k_dist).all(dim=-1, keepdim=True)  # (B, H, L, 1)
    zero = torch.zeros((), dtype=k_dist.dtype, device=k_dist.device)
    points = torch.where(keep, k_dist, zero)
    count = keep.to(k_dist.dtype)
    # sums over the keys each residue may attend (geoattn.chains)
    total = over_keys(points, key_mask, chain_id, "sum", dim=-2)
    count = over_keys(count, key_mask, chain_id, "sum", dim=-2)
    return total / count.clamp(min=1)
