"""Inputs shared by the tests: one maker of geometric-attention inputs, one mask maker."""
from __future__ import annotations

import pytest
import torch

import geoattn

# A T4 (sm_75) has no bf16 arithmetic: PyTorch emulates some of it, Triton none, so bf16
# tests there would test the emulation. The CPU computes bf16 itself.
_NO_BF16 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8
needs_bf16 = pytest.mark.skipif(_NO_BF16, reason="this GPU has no bf16 arithmetic (compute capability < 8.0)")
BF16 = pytest.param(torch.bfloat16, marks=needs_bf16, id="bfloat16")


def make_inputs(seed: int = 0, b: int = 2, length: int = 5, h: int = 3, *, dtype=torch.float64, spread: float = 3.0,
                device="cpu", requires_grad: bool = False) -> list[torch.Tensor]:
    """The seven tensor arguments of ``geometric_attention``, from ``geoattn.random_geometric_inputs``.

    ``spread`` scales the distance points so that distances matter; the per-head weights
    are moved to [0.1, 2.1) so that both terms matter in every head.
    """
    inputs = geoattn.random_geometric_inputs(b, length, h, seed=seed, dist_scale=spread, dtype=torch.float64)
    inputs[5], inputs[6] = inputs[5] * 2 + 0.1, inputs[6] * 2 + 0.1
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in inputs]


def random_mask(seed: int, b: int, length: int, p_keep: float = 0.7, device="cpu") -> torch.Tensor:
    """A (b, length) bool key mask, True with probability ``p_keep``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, length, generator=g) < p_keep).to(device)
