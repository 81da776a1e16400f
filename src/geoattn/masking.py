"""Masks of geometric attention, shared by every implementation.

Two kinds: ``key_mask`` (B, L) removes keys, ``chain_id`` (B, L) removes each (query, key)
pair whose residues lie in different chains. Masked keys are neutralised with ``where``
before any arithmetic, never by multiplying or adding, so that NaN or inf stored at a
masked position can reach neither the output nor a gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pair_mask", "zero_masked_keys"]


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
