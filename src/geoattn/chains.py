"""Reductions over the keys each query may attend, per chain, in O(L): never (L, L).

The lowest layer of masking: :mod:`geoattn.distances` (the per-chain key centre) and
:mod:`geoattn.masking` (which rows read a non-finite key) both build on it.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chain_ranks", "over_keys"]


def chain_ranks(chain_id: Tensor) -> Tensor:
    """(B, L) int64 in [0, L): equal within a batch row exactly where ``chain_id`` is equal.

    A sort and a cumsum, no host synchronisation: chain ids may be any integers.
    """
    ordered, order = chain_id.to(torch.int64).sort(dim=1)
    step = torch.zeros_like(ordered)
    step[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.empty_like(step).scatter_(1, order, step.cumsum(1))


def over_keys(x: Tensor, key_mask: Tensor | None, chain_id: Tensor | None, reduce: str, dim: int = 1) -> Tensor:
    """For each query, ``reduce`` ("sum" or "amax") of the per-key ``x`` over the keys it
    may attend: unmasked keys of its own chain. O(L), never (L, L).

    ``x`` has the keys on ``dim`` and the batch on dim 0, like ``key_mask`` and
    ``chain_id`` (B, L). Returns ``x``'s shape with ``dim`` of size L (one value per query,
    its chain's) when ``chain_id`` is given, else of size 1. "amax" needs ``x`` >= 0 (a
    query with no key gets 0).
    """
    x = x.movedim(dim, 1)
    b, length = x.shape[:2]
    tail = (1,) * (x.dim() - 2)
    if key_mask is not None:
        x = torch.where(key_mask.view(b, length, *tail), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if chain_id is None:
        out = x.amax(1, keepdim=True) if reduce == "amax" and length else x.sum(1, keepdim=True)
    else:
        idx = chain_ranks(chain_id).view(b, length, *tail).expand_as(x)
        if reduce == "sum":
            per_chain = torch.zeros_like(x).scatter_add(1, idx, x)
        else:
            per_chain = torch.zeros_like(x).scatter_reduce(1, idx, x, "amax")
        out = per_chain.gather(1, idx)
    return out.movedim(1, dim)
