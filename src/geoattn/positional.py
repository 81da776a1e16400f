"""Positional information for attention (chapter 2): sinusoidal encodings
and rotary position embeddings (RoPE).

Attention on its own is permutation equivariant: it sees contents, not
positions.

- ``sinusoidal_encoding`` gives the absolute encodings of Vaswani et al.
  (2017), a (L, d) table that is *added* to the embeddings.
- ``rope`` rotates queries and keys (Su et al., RoFormer): each pair of
  coordinates (x[2i], x[2i+1]) of a vector at position p turns by the
  angle p·θ_i, so that the score of a query at m and a key at n depends
  on m and n only through n − m.

Both compute the angles p·θ_i in float64, whatever the dtype of the
inputs: a float32 angle is off by about |p·θ_i|·6e-8 radians, a whole
radian at p = 2²⁴. Integer positions are exact in float64 up to 2⁵³.

Both use the frequencies θ_i = base^(−2i/d), i = 0, …, d/2 − 1. The pairs
are interleaved, as in the RoFormer paper; ESM3's code pairs coordinate i
with i + d/2 instead ("rotate half"): the same rotations, with the
coordinates listed in another order.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .validation import (
    require_dtype_arg,
    require_int,
    require_number,
    require_tensor,
)

__all__ = ["rope_frequencies", "sinusoidal_encoding", "rope"]


def _require_width(name: str, d) -> int:
    d = require_int(name, d, minimum=2)
    if d % 2:
        raise ValueError(f"{name} must be even (coordinates rotate in "
                         f"pairs), got {d}")
    return d


def _require_base(base) -> float:
    base = require_number("base", base)
    if base <= 1.0:
        raise ValueError(f"base must be > 1, got {base!r}")
    return base


def rope_frequencies(dim: int, *, base: float = 10000.0,
                     dtype=torch.float64) -> Tensor:
    """(dim // 2,): the frequencies θ_i = base^(−2i/dim), from 1 down."""
    _require_width("dim", dim)
    base = _require_base(base)
    require_dtype_arg("dtype", dtype)
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return (base ** -exponent).to(dtype)


def sinusoidal_encoding(length: int, d_model: int, *, base: float = 10000.0,
                        dtype=torch.float32) -> Tensor:
    """(length, d_model): PE[p, 2i] = sin(p·θ_i), PE[p, 2i+1] = cos(p·θ_i)."""
    length = require_int("length", length, minimum=1)
    theta = rope_frequencies(_require_width("d_model", d_model), base=base)
    require_dtype_arg("dtype", dtype)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * theta
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1)  # (L, d/2, 2)
    return pe.flatten(-2).to(dtype)  # interleaved: sin, cos, sin, cos, ...


def _check_rope_inputs(x: Tensor, positions: Tensor) -> None:
    require_tensor("x", x)
    require_tensor("positions", positions)
    if not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"x must be a floating-point tensor (..., d), got "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    if positions.dtype == torch.bool or positions.is_complex():
        raise ValueError(f"positions must be integer or real, got "
                         f"{positions.dtype}")
    lead = x.shape[:-1]
    try:
        fits = torch.broadcast_shapes(positions.shape, lead) == lead
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"positions of shape {tuple(positions.shape)} must "
                         f"broadcast to x.shape[:-1] = {tuple(lead)}")
    if x.shape[-1] < 2 or x.shape[-1] % 2:
        raise ValueError(f"x's last dimension must be even and >= 2 "
                         f"(coordinates rotate in pairs), got {x.shape[-1]}")


def rope(x: Tensor, positions: Tensor, *, base: float = 10000.0) -> Tensor:
    """Turn each pair (x[..., 2i], x[..., 2i+1]) by the angle positions·θ_i.

    ``x`` is (..., L, d) with d even; ``positions`` (integer or real)
    broadcasts to x.shape[:-1], e.g. (L,). Returns a tensor like ``x``.
    """
    _check_rope_inputs(x, positions)
    work = torch.promote_types(x.dtype, torch.float32)  # fp32 or more
    theta = rope_frequencies(x.shape[-1], base=base).to(x.device)
    # p·θ in float64: in float32, p and p + 1 give one angle above 2**24
    angle = positions.to(x.device, torch.float64)[..., None] * theta
    cos, sin = angle.cos().to(work), angle.sin().to(work)  # (..., L, d/2)
    a, b = x[..., 0::2].to(work), x[..., 1::2].to(work)  # each pair: (a, b)
    turned = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return turned.flatten(-2).to(x.dtype)
