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

from .masking import finite_attention_inputs, rowwise
from .validation import (
    require_bool_mask,
    require_int,
    require_param_dtype,
    require_same_device,
    require_tensor,
)

__all__ = [
    "softmax",
    "scaled_dot_product_attention",
    "attention_steps",
    "AttentionSteps",
    "causal_mask",
    "padding_mask",
    "MultiHeadAttention",
]


def _check_mask(mask: Tensor | None, shape: tuple, what: str) -> None:
    """``mask`` is None or a bool tensor that broadcasts to ``shape`` without growing it."""
    if require_bool_mask("mask", mask) is None:
        return
    try:
        fits = torch.broadcast_shapes(mask.shape, shape) == torch.Size(shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {what} "
                         f"of shape {tuple(shape)}")


def softmax(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    r"""Numerically stable softmax, :math:`\mathrm{softmax}(x)_j = e^{x_j - m} / \sum_k e^{x_k - m}`.

    Subtracting the row maximum ``m`` changes nothing mathematically but keeps every
    exponent ≤ 0, so logits of ±1e4 neither overflow nor produce NaN.

    ``mask`` (bool, broadcastable to ``x``) marks the entries that take part; the rest
    get weight exactly 0, whatever they hold (NaN and ±inf included). A row with no
    entry left returns all zeros.
    """
    require_tensor("x", x)
    _check_mask(mask, x.shape, "x")
    if x.numel() == 0:  # nothing to normalise (amax over a size-0 dim would raise)
        return x.clone()
    if mask is not None:
        require_same_device({"x": x, "mask": mask}, "x")
        # where, not arithmetic: a NaN or inf logit at a masked entry must not leak.
        x = torch.where(mask, x, float("-inf"))
    m = x.amax(dim=dim, keepdim=True)
    # A fully masked row has max -inf: shift it by 0 instead (no inf - inf).
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must have rank >= 2 (..., length, dim), "
                             f"got shape {tuple(t.shape)}")
    require_same_device({"q": q, "k": k, "v": v, "mask": mask}, "q")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k must have the same last dimension d_k as q: q has {q.shape[-1]}, "
                         f"k has {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"v must have as many rows as k (one value per key): k has "
                         f"{k.shape[-2]}, v has {v.shape[-2]}")
    # Leading (batch, head) dimensions broadcast, as in torch.matmul; name the culprit.
    for name, others in (("k", (q,)), ("v", (q, k))):
        lead = {"k": k, "v": v}[name].shape[:-2]
        try:
            torch.broadcast_shapes(lead, *(t.shape[:-2] for t in others))
        except RuntimeError:
            seen = ", ".join(str(tuple(t.shape[:-2])) for t in others)
            raise ValueError(f"{name}'s leading (batch) dimensions {tuple(lead)} do not "
                             f"broadcast with those of q/k: {seen}") from None
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    _check_mask(mask, (*lead, q.shape[-2], k.shape[-2]), "the scores")


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, return_weights: bool = False
):
    r""":math:`\mathrm{Attention}(Q,K,V) = \mathrm{softmax}\!\left(QK^\top/\sqrt{d_k}\right)V`.

    Shapes: ``q`` (..., L_q, d_k), ``k`` (..., L_k, d_k), ``v`` (..., L_k, d_v); leading
    dimensions broadcast. ``mask`` is bool, broadcastable to (..., L_q, L_k), True where a
    query may attend to a key. Returns ``z`` of shape (..., L_q, d_v), and the weights
    ``alpha`` (..., L_q, L_k) too when ``return_weights`` is set.

    A masked (query, key) pair never influences the output or a gradient, even when
    the key's ``k`` or ``v`` holds NaN or ±inf; a non-finite number at a pair the mask
    keeps gives NaN in the rows that read it. A row with no key gives zeros.
    """
    _check_qkv(q, k, v, mask)
    # Masked pairs weigh 0, but 0 · NaN = NaN, forward and backward: each
    # non-finite number becomes 0, and the rows that read one through a kept
    # pair get NaN afterwards (geoattn.masking).
    (q, k, v), nan_z, nan_alpha = finite_attention_inputs(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    alpha = softmax(scores, dim=-1, mask=mask)
    z = alpha @ v + nan_z
    alpha = alpha + nan_alpha
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
        require_tensor(name, t)
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
    length = require_int("length", length, minimum=1)
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor, max_length: int) -> Tensor:
    """(B, max_length) bool mask, True for the first ``lengths[b]`` positions of sequence b.

    ``lengths`` is a 1-D integer tensor (a float one, NaN included, is refused) with
    every entry in [0, max_length]; ``max_length`` is a non-negative int.
    """
    require_tensor("lengths", lengths)
    max_length = require_int("max_length", max_length, minimum=0)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}")
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if (lengths < 0).any() or (lengths > max_length).any():
        raise ValueError(f"lengths must lie in [0, max_length={max_length}], got {lengths.tolist()}")
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


def _check_heads(d_model: int, n_heads: int) -> None:
    require_int("d_model", d_model, minimum=1)
    require_int("n_heads", n_heads, minimum=1)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")


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
        _check_heads(d_model, n_heads)
        self.d_model, self.n_heads = d_model, n_heads
        self.d_head = d_model // n_heads
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
        """(B, H, L, d_head) -> (B, L, H·d_head): [head_1, ..., head_H]."""
        b, h, length, d = x.shape
        return x.transpose(1, 2).reshape(b, length, h * d)

    def _mask_for_scores(self, mask: Tensor, b: int, lq: int, lk: int) -> Tensor:
        require_bool_mask("mask", mask)
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
            require_tensor(name, t)
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (B, L, d_model={self.d_model}), got {tuple(t.shape)}")
        require_param_dtype(self, query=query, key=key, value=value)
        b, lq, _ = query.shape
        if key.shape[0] != b or value.shape[0] != b:
            raise ValueError(f"key and value must have batch size {b} like query, "
                             f"got {key.shape[0]} and {value.shape[0]}")
        if value.shape[1] != key.shape[1]:
            raise ValueError(f"value must have the same length as key: {value.shape[1]} != {key.shape[1]}")
        lk = key.shape[1]
        m = None if mask is None else self._mask_for_scores(mask, b, lq, lk)
        q = self.split_heads(rowwise(self.w_q, query))
        k = self.split_heads(rowwise(self.w_k, key))
        v = self.split_heads(rowwise(self.w_v, value))
        # rowwise(f, x) = f(x), except that a NaN row of x never reaches f's
        # weight gradient (geoattn.masking)
        z, alpha = scaled_dot_product_attention(q, k, v, m,
                                                return_weights=True)
        return rowwise(self.w_o, self.merge_heads(z)), alpha

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` into this module.

        Only what can be copied exactly: the same d_model and heads, one packed
        ``in_proj_weight`` (kdim = vdim = embed_dim), biases on both or on neither, and
        no ``add_bias_kv`` or ``add_zero_attn`` (extra keys this module does not have).
        Anything else raises a ValueError naming it, rather than giving a module whose
        outputs differ from PyTorch's. (Dropout is not a weight: compare in eval mode.)
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.embed_dim != self.d_model or mha.num_heads != self.n_heads:
            raise ValueError(
                f"mha has embed_dim={mha.embed_dim}, num_heads={mha.num_heads}; "
                f"this module has d_model={self.d_model}, n_heads={self.n_heads}"
            )
        if not mha._qkv_same_embed_dim:
            raise ValueError(f"mha has kdim={mha.kdim}, vdim={mha.vdim}: this module needs "
                             f"kdim = vdim = embed_dim = {mha.embed_dim}")
        if mha.bias_k is not None or mha.bias_v is not None:
            raise ValueError("mha was built with add_bias_kv=True: its extra key and value "
                             "have no counterpart here")
        if mha.add_zero_attn:
            raise ValueError("mha was built with add_zero_attn=True: its extra zero key "
                             "has no counterpart here")
        has_bias = self.w_q.bias is not None
        if (mha.in_proj_bias is not None) != has_bias or (mha.out_proj.bias is not None) != has_bias:
            raise ValueError(f"mha {'has no' if has_bias else 'has'} biases but this module was "
                             f"built with bias={has_bias}: build it with bias={not has_bias}")
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        for lin, w in ((self.w_q, w_q), (self.w_k, w_k), (self.w_v, w_v)):
            lin.weight.copy_(w)
        self.w_o.weight.copy_(mha.out_proj.weight)
        if has_bias:
            b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
            for lin, bias in ((self.w_q, b_q), (self.w_k, b_k), (self.w_v, b_v)):
                lin.bias.copy_(bias)
            self.w_o.bias.copy_(mha.out_proj.bias)
        return self
