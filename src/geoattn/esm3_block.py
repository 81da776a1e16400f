"""The layer inside ESM3: its first transformer block, and the structure
encoder's use of geometric attention, built from geoattn's parts.

Read from evolutionaryscale/esm @ 6e89bf7 (our code, not ESM's):

- ``esm/layers/blocks.py``, ``UnifiedTransformerBlock.forward`` (lines
  146-157): on the residual stream, in this order, plain attention, then
  geometric attention, then the feed-forward, each update divided by
  ``sqrt(n_layers / 36)`` (``esm/layers/transformer_stack.py``, lines
  50-52). ESM3 builds its stack with ``n_layers_geom=1`` (line 32 there):
  only the first block has geometric attention. ESM3-open: d_model 1536,
  24 heads, 256 geometric heads, 48 layers (``esm/pretrained.py``, lines
  97-101), so every update is divided by √(48/36) ≈ 1.1547.
- The plain attention (``esm/layers/attention.py``, lines 16-82): a
  LayerNorm, one bias-free Linear to q, k, v, a LayerNorm over all of q and
  one over all of k (``qk_layernorm``), rotary position embeddings per head
  at positions 0, …, L−1, softmax(q·k/√d_head) among the residues of one
  ``sequence_id`` (a mask, unlike geometric attention's +1 bias), and a
  bias-free output Linear. It does not read ``chain_id``.
- The feed-forward (``blocks.py``, lines 10-38): LayerNorm, Linear to 2·h,
  SiLU(first half) · second half, Linear back; h is expansion_ratio ·
  d_model rounded *up* to a multiple of 256 (``swiglu_correction_fn``),
  with expansion_ratio 8/3 in ESM3 (4096 for d_model 1536).
- The structure encoder (``esm/models/vqvae.py``, lines 142-322; sizes in
  ``esm/pretrained.py``, lines 24-28: d_model 1024, 128 geometric heads,
  2 blocks, d_out 128, 4096 codes): for every residue, its 16 nearest
  residues by Cα distance, itself included (``knn_graph`` in
  ``esm/utils/misc.py``, lines 135-174); each neighbourhood starts from a
  learnt embedding of the clamped sequence offset to the centre (±32) and
  goes, as one batch entry, through 2 geometric-only blocks (geometric
  attention with ``bias=True`` and ``mask_and_zero_frameless=False``, and
  a feed-forward with expansion ratio 4, no residual scaling). The centre
  residue's output (position 0 of its neighbourhood) is set to 0 where the
  residue has no frame and goes through ``pre_vq_proj`` (Linear 1024 → 128);
  that vector is what the codebook quantises (lines 317-320).

The rotary embedding here pairs coordinates (2i, 2i+1) where ESM pairs i
and i + d/2 ("rotate half"): the same rotations, the coordinates listed in
another order (see :mod:`geoattn.positional`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import scaled_dot_product_attention
from .geometric import GeometricSelfAttention
from .positional import rope
from .validation import (
    require_bool,
    require_bool_mask,
    require_float_dtype,
    require_int,
    require_integer_ids,
    require_number,
    require_shape,
    require_tensor,
)

__all__ = [
    "swiglu_hidden_size",
    "esm3_residual_scale",
    "SwiGLUFeedForward",
    "RotarySelfAttention",
    "ESM3Block",
    "nearest_neighbours",
    "StructureEncoder",
]


def swiglu_hidden_size(d_model: int, expansion_ratio: float) -> int:
    """ESM's SwiGLU width: expansion_ratio · d_model, rounded up to a
    multiple of 256."""
    require_int("d_model", d_model, minimum=1)
    require_number("expansion_ratio", expansion_ratio, minimum=0.0)
    return int((expansion_ratio * d_model + 255) // 256 * 256)


def esm3_residual_scale(n_layers: int) -> float:
    """1 / √(n_layers / 36): ESM's scale of every update in n layers."""
    require_int("n_layers", n_layers, minimum=1)
    return 1.0 / math.sqrt(n_layers / 36)


class SwiGLUFeedForward(nn.Module):
    """ESM's feed-forward: LayerNorm, Linear to 2h, SiLU(a) · b, Linear back.

    The LayerNorm always has a bias (ESM's ``nn.LayerNorm(d_model)``); the
    Linear layers have one when ``bias``. h = :func:`swiglu_hidden_size`.
    """

    def __init__(self, d_model: int, *, expansion_ratio: float = 8 / 3,
                 bias: bool = False):
        super().__init__()
        hidden = swiglu_hidden_size(d_model, expansion_ratio)
        require_bool("bias", bias)
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.down(F.silu(a) * b)


class RotarySelfAttention(nn.Module):
    """ESM3's plain attention: pre-LayerNorm, q/k LayerNorms, RoPE, softmax.

    ``forward(x, sequence_id=None)`` returns the update (B, L, d_model); a
    residue attends only to residues of its own ``sequence_id``.
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = False):
        super().__init__()
        require_int("d_model", d_model, minimum=1)
        require_int("n_heads", n_heads, minimum=1)
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must be n_heads "
                             f"({n_heads}) times an even head size "
                             "(RoPE turns pairs)")
        require_bool("bias", bias)
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.q_norm = nn.LayerNorm(d_model, bias=bias)
        self.k_norm = nn.LayerNorm(d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, sequence_id: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        # ESM normalises q and k over all heads at once, before RoPE
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.n_heads)
                   for t in (q, k, v))
        positions = torch.arange(x.shape[1], device=x.device)
        q, k = rope(q, positions), rope(k, positions)
        mask = None
        if sequence_id is not None:  # a mask here, not a bias
            same = sequence_id[:, :, None] == sequence_id[:, None, :]
            mask = same[:, None]  # (B, 1, L, L)
        o = scaled_dot_product_attention(q, k, v, mask)
        return self.out_proj(rearrange(o, "b h l d -> b l (h d)"))


class ESM3Block(nn.Module):
    """One block of ESM3's transformer (``UnifiedTransformerBlock``).

    On the residual stream, in ESM's order: x += s · attention(x); then
    geometric attention (:class:`GeometricSelfAttention`, pre-LayerNorm,
    adding its own s · update); then x += s · feed-forward(x), with
    s = ``residual_scale`` (:func:`esm3_residual_scale`; 1/√(48/36) in
    ESM3-open). ``plain_attention=False`` drops the first step, as in the
    structure encoder's blocks.

    ``forward(x, rotations, translations, mask=None, *, sequence_id=None,
    chain_id=None)``: ``mask`` (B, L) bool marks residues with a frame (only
    geometric attention reads it); ``sequence_id`` masks plain attention
    and adds geometric attention's +1; ``chain_id`` masks geometric
    attention between chains. The defaults (no bias, outputs of frameless
    residues zeroed, expansion ratio 8/3) are ESM3's first block.
    """

    def __init__(self, d_model: int, n_heads: int, v_heads: int, *,
                 plain_attention: bool = True, bias: bool = False,
                 expansion_ratio: float = 8 / 3, residual_scale: float = 1.0,
                 zero_masked_outputs: bool = True, impl: str = "auto"):
        super().__init__()
        self.residual_scale = require_number("residual_scale", residual_scale)
        self.attention = None
        if require_bool("plain_attention", plain_attention):
            self.attention = RotarySelfAttention(d_model, n_heads, bias=bias)
        self.geometric = GeometricSelfAttention(
            d_model, v_heads, pre_layernorm=True, bias=bias,
            zero_masked_outputs=zero_masked_outputs,
            residual_scale=residual_scale, impl=impl)
        self.ffn = SwiGLUFeedForward(d_model, expansion_ratio=expansion_ratio,
                                     bias=bias)

    def forward(self, x: Tensor, rotations: Tensor, translations: Tensor,
                mask: Tensor | None = None, *,
                sequence_id: Tensor | None = None,
                chain_id: Tensor | None = None) -> Tensor:
        self.geometric._check_inputs(x, rotations, translations, mask,
                                     sequence_id, chain_id)
        s = self.residual_scale
        if self.attention is not None:
            x = x + s * self.attention(x, sequence_id)
        x = self.geometric(x, rotations, translations, mask,
                           sequence_id=sequence_id, chain_id=chain_id)
        return x + s * self.ffn(x)


def nearest_neighbours(ca: Tensor, k: int = 16,
                       mask: Tensor | None = None) -> Tensor:
    """(B, L, min(k, L)) indices: each residue's k nearest residues by Cα
    distance, nearest first, the residue itself first of all.

    ``ca`` (B, L, 3); ``mask`` (B, L) bool, True where the residue has
    coordinates. As in ESM's ``knn_graph``, a pair with a residue without
    coordinates ranks after every real distance, by sequence distance.
    """
    require_float_dtype("ca", require_tensor("ca", ca))
    if ca.dim() != 3 or ca.shape[-1] != 3:
        raise ValueError(f"ca must have shape (B, L, 3); "
                         f"got {tuple(ca.shape)}")
    b, length, _ = ca.shape
    require_bool_mask("mask", mask, (b, length), "(B, L)",
                      meaning="True = residue has coordinates")
    k = min(require_int("k", k, minimum=1), length)
    with torch.no_grad():
        d = (ca[:, :, None] - ca[:, None, :]).norm(dim=-1)  # (B, L, L)
        if mask is not None:
            i = torch.arange(length, device=ca.device)
            apart = (i[:, None] - i[None, :]).abs().to(d.dtype)
            both = mask[:, :, None] & mask[:, None, :]
            d = torch.where(both, d, 1e6 + 100 * apart)
        # itself first, even if another residue sits at distance 0
        d = d.masked_fill(torch.eye(length, dtype=torch.bool,
                                    device=ca.device), -1.0)
        return d.topk(k, dim=-1, largest=False).indices


class StructureEncoder(nn.Module):
    """ESM3's VQ-VAE structure encoder, up to the codebook.

    For each residue: its ``k`` nearest residues (:func:`nearest_neighbours`),
    a learnt embedding of each one's sequence offset to the centre (clamped
    to ±``max_offset``), ``n_blocks`` geometric-only :class:`ESM3Block`
    (bias, frameless residues not zeroed, expansion ratio 4, no residual
    scaling) run on all neighbourhoods as one batch, and the centre's
    output (position 0) through ``pre_vq_proj``: the vector ESM quantises.

    ``forward(ca, rotations, translations, mask=None, residue_index=None)``:
    ``ca`` (B, L, 3) Cα coordinates, frames (B, L, 3, 3) and (B, L, 3), all
    finite (ESM gives residues without coordinates an average frame);
    ``mask`` (B, L) bool, True for residues with coordinates (others are
    attended by no one and encode to ``pre_vq_proj``'s bias);
    ``residue_index`` (B, L) int, default 0, …, L−1. Returns (B, L, d_out).
    """

    def __init__(self, d_model: int = 1024, v_heads: int = 128, *,
                 n_blocks: int = 2, d_out: int = 128, k: int = 16,
                 max_offset: int = 32, impl: str = "auto"):
        super().__init__()
        self.k = require_int("k", k, minimum=1)
        self.max_offset = require_int("max_offset", max_offset, minimum=0)
        # offsets −max..max at 1..2·max+1; ESM keeps row 0 for padding
        self.offset_embedding = nn.Embedding(2 * max_offset + 2, d_model)
        nn.init.normal_(self.offset_embedding.weight, std=0.02)  # ESM's init
        self.blocks = nn.ModuleList(
            ESM3Block(d_model, 1, v_heads, plain_attention=False, bias=True,
                      expansion_ratio=4, zero_masked_outputs=False, impl=impl)
            for _ in range(require_int("n_blocks", n_blocks, minimum=1)))
        self.pre_vq_proj = nn.Linear(d_model, d_out)

    def forward(self, ca: Tensor, rotations: Tensor, translations: Tensor,
                mask: Tensor | None = None,
                residue_index: Tensor | None = None) -> Tensor:
        nbr = nearest_neighbours(ca, self.k, mask)  # (B, L, K)
        b, length, k = nbr.shape
        _check_frames(rotations, translations, (b, length))
        require_integer_ids("residue_index", residue_index, (b, length))
        if residue_index is None:
            residue_index = torch.arange(length, device=ca.device)
            residue_index = residue_index.expand(b, -1)
        rows = torch.arange(b, device=ca.device)[:, None, None]

        def gather(t):  # (B, L, ...) -> (B·L, K, ...): one entry per centre
            return t[rows, nbr].flatten(0, 1)

        offset = gather(residue_index) - gather(residue_index)[:, :1]
        offset = offset.clamp(-self.max_offset, self.max_offset)
        z = self.offset_embedding(offset + self.max_offset + 1)
        R, t = gather(rotations), gather(translations)
        m = None if mask is None else gather(mask)
        for block in self.blocks:
            z = block(z, R, t, m)
        z = z[:, 0].unflatten(0, (b, length))  # each centre's own output
        if mask is not None:  # ESM: residues without a frame encode to 0
            z = z.masked_fill(~mask[..., None], 0.0)
        return self.pre_vq_proj(z)


def _check_frames(rotations, translations, lead: tuple[int, int]) -> None:
    require_tensor("rotations", rotations)
    require_tensor("translations", translations)
    require_shape("rotations", rotations, (*lead, 3, 3), "(B, L, 3, 3)")
    require_shape("translations", translations, (*lead, 3), "(B, L, 3)")
