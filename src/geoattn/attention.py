"""Scaled dot-product attention and multi-head attention (chapters 1 and 2).

Mask convention, used everywhere in geoattn: a boolean mask is True where a query
*may* attend to a key. (``torch.nn.MultiheadAttention``'s ``key_padding_mask`` is the
opposite: True there means "ignore".) A query row whose mask is all False gets
attention weights of zero and an output of zero, never NaN.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "softmax",
    "scaled_dot_product_attention",
    "attention_steps",
    "AttentionSteps",
    "causal_mask",
    "padding_mask",
    "MultiHeadAttention",
]


def _require_tensor(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def softmax(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    r"""Numerically stable softmax, :math:`\mathrm{softmax}(x)_j = e^{x_j - m} / \sum_k e^{x_k - m}`.

    Subtracting the row maximum ``m`` changes nothing mathematically but keeps every
    exponent ≤ 0, so logits of ±1e4 neither overflow nor produce NaN.

    ``mask`` (bool, broadcastable to ``x``) marks the entries that take part; the rest
    get weight 0. A row with no entry left returns all zeros.
    """
    x = _require_tensor("x", x)
    if mask is not None:
        mask = _require_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        try:
            torch.broadcast_shapes(mask.shape, x.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to x of shape {tuple(x.shape)}"
            ) from None
        x = x.masked_fill(~mask, float("-inf"))
    m = x.amax(dim=dim, keepdim=True)
    # A fully masked row has max -inf; shifting by 0 there keeps exp(-inf) = 0 and avoids inf - inf.
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must have rank >= 2 (..., length, dim), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k must have the same last dimension d_k as q: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"v must have as many rows as k (one value per key): k has {k.shape[-2]}, v has {v.shape[-2]}")
    # Leading (batch, head) dimensions broadcast, as in torch.matmul; name the culprit.
    for name, others in (("k", (q,)), ("v", (q, k))):
        lead = {"k": k, "v": v}[name].shape[:-2]
        try:
            torch.broadcast_shapes(lead, *(t.shape[:-2] for t in others))
        except RuntimeError:
            seen = ", ".join(str(tuple(t.shape[:-2])) for t in others)
            raise ValueError(
                f"{name}'s leading (batch) dimensions {tuple(lead)} do not broadcast with those of q/k: {seen}"
            ) from None
    if mask is not None:
        _require_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        scores_shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
        try:
            if torch.broadcast_shapes(mask.shape, scores_shape) != scores_shape:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {scores_shape}"
            ) from None


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, return_weights: bool = False
):
    r""":math:`\mathrm{Attention}(Q,K,V) = \mathrm{softmax}\!\left(QK^\top/\sqrt{d_k}\right)V`.

    Shapes: ``q`` (..., L_q, d_k), ``k`` (..., L_k, d_k), ``v`` (..., L_k, d_v); leading
    dimensions broadcast. ``mask`` is bool, broadcastable to (..., L_q, L_k), True where a
    query may attend to a key. Returns ``z`` of shape (..., L_q, d_v), and the weights
    ``alpha`` (..., L_q, L_k) too when ``return_weights`` is set.
    """
    _check_qkv(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    alpha = softmax(scores, dim=-1, mask=mask)
    z = alpha @ v
    return (z, alpha) if return_weights else z


class AttentionSteps(NamedTuple):
    """Every intermediate of single-head self-attention, in the order chapter 1 derives them."""

    Q: Tensor
    K: Tensor
    V: Tensor
    scores: Tensor  # Q K^T
    scaled: Tensor  # Q K^T / sqrt(d_k)
    exp: Tensor  # exp(scaled - row max): the softmax numerators, shifted for stability
    alpha: Tensor  # attention weights, rows sum to 1
    z: Tensor  # alpha V


def attention_steps(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> AttentionSteps:
    """Self-attention of ``x`` (L, d_model) with projection matrices (d_model, d_k or d_v),
    returning every intermediate so that a reader can check each by hand.

    ``exp`` holds :math:`e^{s - \\max s}`: the published derivation exponentiates the raw
    scaled scores instead, which differs from this by one factor per row and gives the
    same ``alpha``.
    """
    for name, t in (("x", x), ("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        _require_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must be a matrix (rank 2), got shape {tuple(t.shape)}")
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        if w.shape[0] != x.shape[1]:
            raise ValueError(f"{name} must have d_model = {x.shape[1]} rows to multiply x, got {w.shape[0]}")
    Q, K, V = x @ w_q, x @ w_k, x @ w_v
    _check_qkv(Q, K, V, None)
    scores = Q @ K.T
    scaled = scores / math.sqrt(Q.shape[-1])
    e = torch.exp(scaled - scaled.amax(dim=-1, keepdim=True))
    alpha = e / e.sum(dim=-1, keepdim=True)
    return AttentionSteps(Q, K, V, scores, scaled, e, alpha, alpha @ V)


def causal_mask(length: int, *, device=None) -> Tensor:
    """(length, length) bool mask, True on and below the diagonal: query i sees keys j <= i."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B, max_length) bool mask, True for the first ``lengths[b]`` positions of sequence b."""
    lengths = _require_tensor("lengths", lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}")
    if (lengths < 0).any() or (lengths > max_length).any():
        raise ValueError(f"lengths must lie in [0, max_length={max_length}], got {lengths.tolist()}")
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention, written out: per-head projections, attention, concatenation, W_O.

    .. math::
        \mathrm{head}_h = \mathrm{Attention}(X_q W_Q^{(h)}, X_k W_K^{(h)}, X_v W_V^{(h)}),\qquad
        \mathrm{MHA} = [\mathrm{head}_1, \dots, \mathrm{head}_H]\, W_O

    The H per-head matrices :math:`W_Q^{(h)}` (d_model × d_head) are stored side by side as
    the columns of one ``nn.Linear(d_model, d_model)``; ``weight`` follows PyTorch's
    (out, in) layout, so column block h of ``w_q.weight.T`` is :math:`W_Q^{(h)}`.

    ``forward(query, key=None, value=None, mask=None)`` takes (B, L, d_model) inputs
    (key and value default to query: self-attention). ``mask`` is bool, True = may
    attend, of shape (L_k,), (B, L_k) (padding), (L_q, L_k) (e.g. causal) or
    (B or 1, L_q, L_k); when B == L_q a 2-D mask is read as padding (B, L_k), so pass a
    causal mask as (1, L_q, L_k) then. Returns the output (B, L_q, d_model) and the
    per-head weights (B, H, L_q, L_k).
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, L, H·d_head) -> (B, H, L, d_head)."""
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.d_head).transpose(1, 2)

    @staticmethod
    def merge_heads(x: Tensor) -> Tensor:
        """(B, H, L, d_head) -> (B, L, H·d_head): the concatenation [head_1, ..., head_H]."""
        b, h, length, d = x.shape
        return x.transpose(1, 2).reshape(b, length, h * d)

    def _mask_for_scores(self, mask: Tensor, b: int, lq: int, lk: int) -> Tensor:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
        if mask.shape == (lk,):
            return mask.view(1, 1, 1, lk)
        if mask.shape == (b, lk):
            return mask.view(b, 1, 1, lk)
        if mask.shape == (lq, lk):
            return mask.view(1, 1, lq, lk)
        if mask.dim() == 3 and mask.shape[0] in (1, b) and mask.shape[1:] == (lq, lk):
            return mask.unsqueeze(1)
        raise ValueError(
            f"mask must have shape (L_k,), (B, L_k), (L_q, L_k) or (B or 1, L_q, L_k) = "
            f"({lk},), ({b}, {lk}), ({lq}, {lk}) or ({b}, {lq}, {lk}); got {tuple(mask.shape)}"
        )

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        key = query if key is None else key
        value = key if value is None else value
        for name, t in (("query", query), ("key", key), ("value", value)):
            _require_tensor(name, t)
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (B, L, d_model={self.d_model}), got {tuple(t.shape)}")
        b, lq, _ = query.shape
        if key.shape[0] != b or value.shape[0] != b:
            raise ValueError(f"key and value must have batch size {b} like query, "
                             f"got {key.shape[0]} and {value.shape[0]}")
        if value.shape[1] != key.shape[1]:
            raise ValueError(f"value must have the same length as key: {value.shape[1]} != {key.shape[1]}")
        lk = key.shape[1]
        m = None if mask is None else self._mask_for_scores(_require_tensor("mask", mask), b, lq, lk)
        q = self.split_heads(self.w_q(query))
        k = self.split_heads(self.w_k(key))
        v = self.split_heads(self.w_v(value))
        z, alpha = scaled_dot_product_attention(q, k, v, m, return_weights=True)
        return self.w_o(self.merge_heads(z)), alpha

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (same d_model and heads) into this module."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.embed_dim != self.d_model or mha.num_heads != self.n_heads:
            raise ValueError(
                f"mha has embed_dim={mha.embed_dim}, num_heads={mha.num_heads}; "
                f"this module has d_model={self.d_model}, n_heads={self.n_heads}"
            )
        if not mha._qkv_same_embed_dim:
            raise ValueError("mha must use one packed in_proj_weight (kdim = vdim = embed_dim)")
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        for lin, w in ((self.w_q, w_q), (self.w_k, w_k), (self.w_v, w_v)):
            lin.weight.copy_(w)
        self.w_o.weight.copy_(mha.out_proj.weight)
        if self.w_q.bias is not None:
            if mha.in_proj_bias is None:
                raise ValueError("this module has biases but mha has none: build it with bias=False")
            b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
            for lin, bias in ((self.w_q, b_q), (self.w_k, b_k), (self.w_v, b_v)):
                lin.bias.copy_(bias)
            self.w_o.bias.copy_(mha.out_proj.bias)
        return self
