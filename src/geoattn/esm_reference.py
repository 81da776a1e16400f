"""ESM3's geometric attention layer as ESM's code computes it, restated for parity tests and
benchmarks: ESM's parameter names, its projection's row order and its memory pattern.

Written from the published description (Hayes et al. 2025, Algorithm 6) and the facts
checked against ``esm/layers/geom_attention.py`` (evolutionaryscale/esm @ 6e89bf7d) that
``DESIGN.md`` lists; it is not ESM's code. What it reproduces:

- parameters ``s_norm`` (LayerNorm), ``proj``, ``out_proj``, ``distance_scale_per_head``,
  ``rotation_scale_per_head`` (softplus of zeros at the start: ln 2);
- the projection's output rows in ESM's order: q_rot, k_rot, v (H·m vectors), q_dist,
  k_dist, each vector's 3 coordinates innermost;
- the score bias: +1 for a pair in one sequence, and ``finfo.min`` for a key without a frame
  (``affine_mask`` False) or in another chain, *replacing* the bias (a fully masked row
  therefore gets a uniform softmax; geoattn returns zeros there);
- the (H, L, L, 3) differences and the full (H, L, L) map materialized, as ESM does;
- ``mask_and_zero_frameless``: zero the vector output of frameless residues (ESM3's
  transformer: True; the structure encoder: False);
- it returns the update Linear(O); ESM's block adds it as ``x + update / sqrt(n_layers/36)``.

One deliberate difference: ESM fills with ``finfo(float64).min`` into a float32 bias, which
overflows, so ESM's layer cannot run in fp64 as written; here the bias takes the compute
dtype's own ``finfo.min``, so fp64 parity tests can run.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["EsmStyleGeometricAttention"]


class EsmStyleGeometricAttention(nn.Module):
    """``forward(s, rotations, translations, affine_mask, sequence_id=None, chain_id=None)``
    → Linear(O), shape (B, L, c_s). ``rotations`` (B, L, 3, 3) local → global,
    ``translations`` (B, L, 3), ``affine_mask`` (B, L) bool (True: the residue has a frame)."""

    def __init__(self, c_s: int, v_heads: int, num_vector_messages: int = 1, mask_and_zero_frameless: bool = True,
                 bias: bool = False):
        super().__init__()
        self.c_s, self.v_heads, self.num_vector_messages = c_s, v_heads, num_vector_messages
        self.mask_and_zero_frameless = mask_and_zero_frameless
        self.s_norm = nn.LayerNorm(c_s, bias=bias)
        dim_proj = 4 * v_heads * 3 + v_heads * 3 * num_vector_messages
        self.proj = nn.Linear(c_s, dim_proj, bias=bias)
        self.out_proj = nn.Linear(v_heads * 3 * num_vector_messages, c_s, bias=bias)
        self.distance_scale_per_head = nn.Parameter(torch.zeros(v_heads))
        self.rotation_scale_per_head = nn.Parameter(torch.zeros(v_heads))

    def forward(self, s: Tensor, rotations: Tensor, translations: Tensor, affine_mask: Tensor,
                sequence_id: Tensor | None = None, chain_id: Tensor | None = None) -> Tensor:
        h, m = self.v_heads, self.num_vector_messages
        if sequence_id is None:
            sequence_id = torch.zeros_like(s[..., 0], dtype=torch.int64)
        if chain_id is None:
            chain_id = torch.zeros_like(s[..., 0], dtype=torch.int64)
        low = torch.finfo(s.dtype).min
        bias = (sequence_id[:, :, None] == sequence_id[:, None, :])[:, None].to(s.dtype)  # (B, 1, L, L)
        bias = bias.masked_fill(~affine_mask[:, None, None, :], low)
        bias = bias.masked_fill((chain_id[:, :, None] != chain_id[:, None, :])[:, None], low)

        vec_rot, vec_dist = self.proj(self.s_norm(s)).split([h * 2 * 3 + h * 3 * m, h * 2 * 3], dim=-1)
        R, t = rotations[:, :, None], translations[:, :, None]  # one frame per residue, for every vector
        rot = (R @ rearrange(vec_rot, "b l (n c) -> b l n c 1", c=3))[..., 0]
        q_rot, k_rot, value = rot.split([h, h, h * m], dim=-2)
        dist = (R @ rearrange(vec_dist, "b l (n c) -> b l n c 1", c=3))[..., 0] + t
        q_dist, k_dist = dist.chunk(2, dim=-2)

        q_dist = rearrange(q_dist, "b l h c -> b h l 1 c")
        k_dist = rearrange(k_dist, "b l h c -> b h 1 l c")
        distance = (q_dist - k_dist).norm(dim=-1) / math.sqrt(3)  # (B, H, L, L), via (B, H, L, L, 3)
        rotation = rearrange(q_rot, "b l h c -> b h l c") @ rearrange(k_rot, "b l h c -> b h c l") / math.sqrt(3)
        w_d = F.softplus(self.distance_scale_per_head)[:, None, None]
        w_r = F.softplus(self.rotation_scale_per_head)[:, None, None]
        attn = torch.softmax(rotation * w_r - distance * w_d + bias, dim=-1)
        out = attn @ rearrange(value, "b l (h m) c -> b h l (m c)", m=m)
        out = rearrange(out, "b h l (m c) -> b l (h m) c 1", c=3)
        out = (rotations[:, :, None].transpose(-1, -2) @ out)[..., 0]  # back to the local frame
        out = rearrange(out, "b l n c -> b l (n c)")
        if self.mask_and_zero_frameless:
            out = out.masked_fill(~affine_mask[..., None], 0.0)
        return self.out_proj(out)
