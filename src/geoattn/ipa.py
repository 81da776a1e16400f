"""AlphaFold2's Invariant Point Attention (IPA): Algorithm 22 of the supplementary
information of Jumper et al. 2021, as an ``nn.Module``, and its FlashAttention form.

Per batch b, head h, query residue i and key residue j, with frames T_i = (R_i, t_i):

    a[b,h,i,j] = softmax_j( w_L · ( q_i·k_j / √c + b_ij − γ_h · w_C/2 · Σ_p ‖T_i q_ip − T_j k_jp‖² ) )

with w_L = √(1/3), w_C = √(2 / (9 N_query_points)) and γ_h = softplus(γ̄_h) ≥ 0. The outputs
are the attention-weighted scalar values, value points (mapped back by T_i⁻¹), their norms
and, with a pair representation z, the weighted pair features; one Linear maps them back.

Because the distance is *squared*, ‖a − b‖² = ‖a‖² − 2a·b + ‖b‖², the whole logit is one dot
product of augmented query and key vectors (:func:`ipa_augmented_qk`), so
``torch.nn.functional.scaled_dot_product_attention`` computes IPA's attention. This is
the trick of FlashIPA (Liu et al. 2025). ESM3's unsquared ‖q − k‖ has no such form.

Line numbers in the comments (``# line 7``) are those of Algorithm 22 in the supplement:
w_C is line 5, w_L line 6, the attention weights a_ij line 7, the outputs lines 8-10 and
the final Linear line 11.

Which convention, and what it means for weights. By default the projections of lines 1-4
have no bias, as the supplement's Algorithm 22 writes them (LinearNoBias). AlphaFold2's
released code (DeepMind's ``alphafold/model/folding.py``) and OpenFold's monomer IPA
(aqlaboratory/openfold, ``openfold/model/structure_module.py``) give every projection a
bias; OpenFold's own comment says that there they differ from the supplement, and trained
checkpoints hold non-zero biases. So a checkpoint is loaded into a layer built with
``bias=True``, by :meth:`InvariantPointAttention.load_openfold_state_dict` (OpenFold's names
and layout; AlphaFold2's JAX parameters reach that layout through OpenFold's converter).
Both codes take the norm of an output point as √(‖o‖² + 10⁻⁸) where the supplement writes
‖o‖; ``point_norm_eps`` is that 10⁻⁸ by default, so loaded weights give OpenFold's update,
and 0 gives the supplement's plain norm. Both initialise γ to softplus⁻¹(1). The code here
is our own.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import softmax
from .frames import apply_frame, apply_rotation
from .validation import (
    require_bool,
    require_bool_mask,
    require_float_dtype,
    require_int,
    require_number,
    require_param_dtype,
    require_same_device,
    require_shape,
    require_state_value,
    require_tensor,
)

__all__ = [
    "InvariantPointAttention",
    "IPAProjections",
    "ipa_point_weight",
    "ipa_logits",
    "ipa_augmented_qk",
    "IPA_IMPLS",
]

IPA_IMPLS = ("direct", "sdpa")
_W_L = math.sqrt(1.0 / 3.0)  # line 6: three terms (scalar, pair, points) of unit variance each


def ipa_point_weight(n_query_points: int) -> float:
    """w_C = √(2 / (9 N_query_points)) of line 5: the point term has unit variance at the start.

    With unit-variance query and key point coordinates, the part of Σ_p ‖q_p − k_p‖² that
    varies with the key j, −2 q·k + ‖k‖², has variance 12 N + 6 N = 18 N (‖q‖² is the same
    for every key and cancels in the softmax); (w_C / 2)² · 18 N = 1 gives w_C.
    """
    require_int("n_query_points", n_query_points, minimum=1)
    return math.sqrt(2.0 / (9.0 * n_query_points))


def _check_qk(q, k, q_pts, k_pts, gamma, pair_bias=None):
    for name, t in (("q", q), ("k", k), ("q_pts", q_pts), ("k_pts", k_pts), ("gamma", gamma)):
        require_float_dtype(name, require_tensor(name, t))
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both have shape (B, L, H, c); got {tuple(q.shape)} and {tuple(k.shape)}")
    b, length, heads, _ = q.shape
    if q_pts.dim() != 5 or tuple(q_pts.shape[:3]) != (b, length, heads) or q_pts.shape[-1] != 3:
        raise ValueError(f"q_pts must have shape (B, L, H, P, 3) = ({b}, {length}, {heads}, P, 3); "
                         f"got {tuple(q_pts.shape)}")
    require_shape("k_pts", k_pts, tuple(q_pts.shape), "(B, L, H, P, 3), like q_pts")
    require_shape("gamma", gamma, (heads,), "(H,)")
    if pair_bias is not None:
        require_shape("pair_bias", require_tensor("pair_bias", pair_bias), (b, heads, length, length), "(B, H, L, L)")
    require_same_device({"q": q, "k": k, "q_pts": q_pts, "k_pts": k_pts, "gamma": gamma, "pair_bias": pair_bias},
                        "q")


def ipa_logits(q: Tensor, k: Tensor, q_pts: Tensor, k_pts: Tensor, gamma: Tensor,
               pair_bias: Tensor | None = None) -> Tensor:
    """The logits of line 7, before the softmax, the direct way: shape (B, H, L, L).

    ``q, k``: scalar queries and keys (B, L, H, c). ``q_pts, k_pts``: query and key points
    already in the global frame (B, L, H, P, 3). ``gamma``: (H,), non-negative (already
    through softplus). ``pair_bias``: (B, H, L, L) or None. Validates its inputs.
    """
    _check_qk(q, k, q_pts, k_pts, gamma, pair_bias)
    c, n_points = q.shape[-1], q_pts.shape[-2]
    w_c = ipa_point_weight(n_points)
    # q_i · k_j / √c
    scalar = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(c)
    # (B, L, L, H, P, 3): T_i q_ip − T_j k_jp
    diff = q_pts[:, :, None] - k_pts[:, None, :]
    dist2 = diff.square().sum(dim=(-1, -2))  # Σ_p ‖·‖², (B, L, L, H)
    dist2 = rearrange(dist2, "b i j h -> b h i j")
    point = gamma[:, None, None] * (w_c / 2) * dist2
    bias = 0.0 if pair_bias is None else pair_bias
    return _W_L * (scalar + bias - point)  # line 7, inside the softmax


def ipa_augmented_qk(q: Tensor, k: Tensor, q_pts: Tensor, k_pts: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor]:
    """Augmented queries and keys, (B, H, L, c + 3P + 2) each, with q̃_i · k̃_j = the logits.

    ‖a − b‖² = ‖a‖² − 2 a·b + ‖b‖², so with g = w_L γ_h w_C / 2 and a_i, b_j the flattened
    global points (3P numbers each) the logit of line 7 without pair bias is

        [w_L q_i/√c,  2g a_i,  −g ‖a_i‖²,  −g] · [k_j,  b_j,  1,  ‖b_j‖²]

    so ``F.scaled_dot_product_attention(q̃, k̃, v, scale=1)`` is IPA's attention; a pair
    bias enters as its additive float ``attn_mask``, times w_L. Same inputs as :func:`ipa_logits`.
    """
    _check_qk(q, k, q_pts, k_pts, gamma)
    c, n_points = q.shape[-1], q_pts.shape[-2]
    # g = w_L γ_h w_C / 2, shape (H, 1, 1): one factor per head
    g = (_W_L * ipa_point_weight(n_points) / 2) * gamma[:, None, None]
    a = rearrange(q_pts, "b l h p x -> b h l (p x)")  # query points (3P)
    b = rearrange(k_pts, "b l h p x -> b h l (p x)")  # key points (3P)
    a2 = a.square().sum(-1, keepdim=True)  # ‖a_i‖²
    b2 = b.square().sum(-1, keepdim=True)  # ‖b_j‖²
    ones = torch.ones_like(b2)
    q_scalar = _W_L * rearrange(q, "b l h c -> b h l c") / math.sqrt(c)
    k_scalar = rearrange(k, "b l h c -> b h l c")
    q_aug = torch.cat([q_scalar, 2 * g * a, -g * a2, -g * ones], dim=-1)
    k_aug = torch.cat([k_scalar, b, ones, b2], dim=-1)
    return q_aug, k_aug


def _check_impl(impl) -> str:
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")
    if impl not in IPA_IMPLS:
        raise ValueError(f"impl must be one of {IPA_IMPLS}; got {impl!r}")
    return impl


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class IPAProjections(NamedTuple):
    """Lines 1-3 with the points in the global frame: scalar ``q, k, v`` (B, L, H, c), points
    ``q_pts, k_pts`` (B, L, H, N_query_points, 3) and ``v_pts`` (B, L, H, N_value_points, 3)."""

    q: Tensor
    k: Tensor
    v: Tensor
    q_pts: Tensor
    k_pts: Tensor
    v_pts: Tensor


class InvariantPointAttention(nn.Module):
    r"""AlphaFold2's Invariant Point Attention (Jumper et al. 2021, supplement Algorithm 22).

    Each residue i carries an embedding x_i (AlphaFold2's single representation s_i) and a
    frame T_i = (R_i, t_i), local → global, as in :class:`GeometricSelfAttention`. Per head
    h: scalar query, key and value (``d_head`` numbers each); ``n_query_points`` query and
    key points and ``n_value_points`` value points, made in the local frame and moved to
    the global one by T_i. The logits add the scalar product, an optional pair bias
    b_ij = Linear(z_ij), and minus the weighted *squared* distances of the points:

    .. math::
        a_{ijh} = \mathrm{softmax}_j\Big(w_L\big(\tfrac{1}{\sqrt c}\, q_{ih}\cdot k_{jh} + b_{ijh}
                  - \tfrac{\gamma_h w_C}{2}\textstyle\sum_p \lVert T_i q_{ihp} - T_j k_{jhp}\rVert^2\big)\Big)

    The outputs are Σ_j a v (scalars), T_i⁻¹ Σ_j a T_j v_p (value points, back in the local
    frame, translation included), their norms, and Σ_j a z_ij (with a pair representation);
    x_i ← x_i + Linear(concatenation).

    ``forward(x, rotations, translations, mask=None, pair=None)``: ``x`` (B, L, d_model),
    ``rotations`` (B, L, 3, 3), ``translations`` (B, L, 3), ``mask`` (B, L) bool (True =
    residue present), ``pair`` (B, L, L, d_pair) or None (it needs ``d_pair``). A masked
    residue is never attended to; its inputs (embedding, frame, pair rows) are replaced
    by neutral ones, so NaN there cannot leak, and its outputs are zero before the final
    Linear, as in :class:`GeometricSelfAttention`.

    ``d_head`` is AlphaFold2's c (16). ``bias``: False (the default) gives the projections
    of lines 1-4 no bias, as Algorithm 22 writes them (LinearNoBias); True gives them one,
    as AlphaFold2's and OpenFold's code do, which loading their weights needs
    (:meth:`load_openfold_state_dict`). The final Linear always has one.
    ``point_norm_eps``: the norm of an output point is √(‖o‖² + eps); 1e-8, the default, is
    OpenFold's and AlphaFold2's value, 0 the supplement's plain norm ‖o‖.
    γ_h = softplus(γ̄_h) starts at 1 (as in both codes); read it with :meth:`head_weights`,
    set it with :meth:`set_head_weights`.
    ``impl``: "direct" materializes the logits (:func:`ipa_logits`); "sdpa" passes the
    augmented vectors (:func:`ipa_augmented_qk`) to ``F.scaled_dot_product_attention``.
    """

    def __init__(self, d_model: int, n_heads: int, *, d_pair: int | None = None, d_head: int = 16,
                 n_query_points: int = 4, n_value_points: int = 8, impl: str = "sdpa",
                 bias: bool = False, point_norm_eps: float = 1e-8):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("d_head", d_head),
                            ("n_query_points", n_query_points), ("n_value_points", n_value_points)):
            require_int(name, value, minimum=1)
        if d_pair is not None:
            require_int("d_pair", d_pair, minimum=1)
        self.d_model, self.n_heads, self.d_pair, self.d_head = d_model, n_heads, d_pair, d_head
        self.n_query_points, self.n_value_points = n_query_points, n_value_points
        self.impl = impl
        self.bias = require_bool("bias", bias)
        self.point_norm_eps = require_number("point_norm_eps", point_norm_eps, minimum=0.0)
        h, c, pq, pv = n_heads, d_head, n_query_points, n_value_points
        self.scalar_qkv = nn.Linear(d_model, 3 * h * c, bias=bias)  # line 1
        self.point_qk = nn.Linear(d_model, 2 * h * pq * 3, bias=bias)  # line 2
        self.point_v = nn.Linear(d_model, h * pv * 3, bias=bias)  # line 3
        self.pair_bias = None if d_pair is None else nn.Linear(d_pair, h, bias=bias)  # line 4
        self.gamma_raw = nn.Parameter(torch.full((h,), _inverse_softplus(1.0)))  # γ = softplus(γ̄) = 1
        d_out = h * (c + 4 * pv + (d_pair or 0))  # scalars, points (3 coords + norm), pair features
        self.out_proj = nn.Linear(d_out, d_model)  # line 11

    @property
    def impl(self) -> str:
        """How the attention is computed: "direct" or "sdpa"; it may be changed at any time."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = _check_impl(value)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, d_pair={self.d_pair}, d_head={self.d_head}, "
                f"n_query_points={self.n_query_points}, n_value_points={self.n_value_points}, impl={self.impl!r}, "
                f"bias={self.bias}, point_norm_eps={self.point_norm_eps:g}")

    def head_weights(self) -> Tensor:
        """γ_h = softplus(γ̄_h), the non-negative weight of each head's point term, (H,)."""
        return F.softplus(self.gamma_raw)

    @torch.no_grad()
    def set_head_weights(self, gamma) -> InvariantPointAttention:
        """Set γ (after softplus; a positive number or H of them)."""
        w = torch.as_tensor(gamma, dtype=self.gamma_raw.dtype, device=self.gamma_raw.device)
        if w.dim() > 1 or (w.dim() == 1 and w.shape != (self.n_heads,)):
            raise ValueError(f"gamma must be a number or have shape (n_heads,) = ({self.n_heads},); "
                             f"got {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w <= 0).any():
            raise ValueError("gamma must be finite and positive (a weight after softplus)")
        self.gamma_raw.copy_((w + torch.log(-torch.expm1(-w))).expand(self.n_heads))
        return self

    def _check_inputs(self, x, rotations, translations, mask, pair, *, pair_optional=False):
        require_tensor("x", x)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, L, d_model={self.d_model}); got {tuple(x.shape)}")
        require_param_dtype(self, x=x, pair=pair)
        b, length = x.shape[:2]
        require_shape("rotations", require_tensor("rotations", rotations), (b, length, 3, 3), "(B, L, 3, 3)")
        require_shape("translations", require_tensor("translations", translations), (b, length, 3), "(B, L, 3)")
        for name, t in (("x", x), ("rotations", rotations), ("translations", translations)):
            require_float_dtype(name, t)
        require_bool_mask("mask", mask, (b, length), "(B, L)", meaning="True = residue present")
        if pair is not None and self.d_pair is None:
            raise ValueError("pair was given but the layer has no pair bias: construct it with d_pair=...")
        if pair is None and self.d_pair is not None and not pair_optional:
            raise ValueError(f"pair is required: the layer was built with d_pair={self.d_pair}")
        if pair is not None:
            require_shape("pair", require_tensor("pair", pair), (b, length, length, self.d_pair),
                          "(B, L, L, d_pair)")
            require_float_dtype("pair", pair)
        require_same_device({"x": x, "rotations": rotations, "translations": translations, "mask": mask,
                             "pair": pair}, "x")

    def _neutral_inputs(self, x, rotations, translations, mask, pair):
        """Masked residues get x = 0 and the identity frame, masked pairs z = 0 (``where``,
        so NaN there cannot leak); the frames are centred on the present residues, which
        changes no distance but keeps the squared norms of the SDPA form small."""
        R, t = rotations.to(x.dtype), translations.to(x.dtype)
        if mask is not None:
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            R = torch.where(mask[..., None, None], R, torch.eye(3, dtype=R.dtype, device=R.device))
            t = torch.where(mask[..., None], t, torch.zeros((), dtype=t.dtype, device=t.device))
            if pair is not None:
                both = mask[:, :, None, None] & mask[:, None, :, None]
                pair = torch.where(both, pair, torch.zeros((), dtype=pair.dtype, device=pair.device))
        present = torch.ones(t.shape[:2], dtype=t.dtype, device=t.device) if mask is None else mask.to(t.dtype)
        centre = (t * present[..., None]).sum(1, keepdim=True) / present.sum(1, keepdim=True)[..., None].clamp(min=1)
        return x, R, t - centre, pair

    def _project(self, x, R, t) -> IPAProjections:
        h, c = self.n_heads, self.d_head
        pq, pv = self.n_query_points, self.n_value_points
        # line 1: scalar q, k, v = LinearNoBias(s_i) (biased if bias=True)
        q, k, v = rearrange(self.scalar_qkv(x), "b l (n h c) -> n b l h c",
                            n=3, h=h, c=c)
        # lines 2-3: query/key points and value points, residue i's frame
        q_pts, k_pts = rearrange(self.point_qk(x),
                                 "b l (n h p x) -> n b l h p x",
                                 n=2, h=h, p=pq, x=3)
        v_pts = rearrange(self.point_v(x), "b l (h p x) -> b l h p x",
                          h=h, p=pv, x=3)
        # T_i ∘ point: the points of residue i move with its whole frame;
        # one frame per residue, shared by all heads and points
        R, t = R[:, :, None, None], t[:, :, None, None]
        q_pts, k_pts, v_pts = (apply_frame(R, t, p)
                               for p in (q_pts, k_pts, v_pts))
        return IPAProjections(q, k, v, q_pts, k_pts, v_pts)

    def projections(self, x: Tensor, rotations: Tensor, translations: Tensor,
                    mask: Tensor | None = None) -> IPAProjections:
        """Lines 1-3, with the points mapped to the global frame (centred on the present residues)."""
        self._check_inputs(x, rotations, translations, mask, None, pair_optional=True)
        x, R, t, _ = self._neutral_inputs(x, rotations, translations, mask, None)
        return self._project(x, R, t)

    def _bias(self, pair):
        if pair is None:
            return None
        return rearrange(self.pair_bias(pair), "b i j h -> b h i j")  # line 4: b_ij = Linear(z_ij)

    def attention_weights(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None,
                          pair: Tensor | None = None) -> Tensor:
        """The attention map a of line 7, (B, H, L, L), the direct way; masked rows are zero."""
        self._check_inputs(x, rotations, translations, mask, pair)
        x, R, t, pair = self._neutral_inputs(x, rotations, translations, mask, pair)
        p = self._project(x, R, t)
        logits = ipa_logits(p.q, p.k, p.q_pts, p.k_pts, self.head_weights().to(x.dtype), self._bias(pair))
        return _direct_weights(logits, mask)

    def forward(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None,
                pair: Tensor | None = None) -> Tensor:
        """X + Linear(outputs): Algorithm 22 on ``x`` (B, L, d_model) with frames (B, L, 3, 3), (B, L, 3)."""
        self._check_inputs(x, rotations, translations, mask, pair)
        x_in, R, t, pair = self._neutral_inputs(x, rotations, translations,
                                                mask, pair)
        p = self._project(x_in, R, t)  # lines 1-3
        gamma = self.head_weights().to(x.dtype)
        bias = self._bias(pair)  # line 4: the pair bias
        v_pts = rearrange(p.v_pts, "b l h p x -> b l h (p x)")
        values = torch.cat([p.v, v_pts], dim=-1)  # (B, L, H, c + 3 P_v)
        values = rearrange(values, "b l h e -> b h l e")
        a = None
        if self.impl == "direct":  # lines 5-7, 9-10: softmax, then a · values
            logits = ipa_logits(p.q, p.k, p.q_pts, p.k_pts, gamma, bias)
            a = _direct_weights(logits, mask)
            o = a @ values
        else:  # the same through SDPA, on the augmented vectors
            q_aug, k_aug = ipa_augmented_qk(p.q, p.k, p.q_pts, p.k_pts, gamma)
            q_aug, k_aug, v = _one_width(q_aug, k_aug, values)
            o = F.scaled_dot_product_attention(
                q_aug, k_aug, v, attn_mask=_sdpa_mask(bias, mask), scale=1.0)
            o = o[..., :values.shape[-1]]
        o = rearrange(o, "b h l e -> b l h e")
        o_scalar = o[..., :self.d_head]
        o_pts = rearrange(o[..., self.d_head:], "b l h (p x) -> b l h p x",
                          x=3)
        # line 10: back to residue i's frame with the whole inverse frame,
        # T_i⁻¹ y = R_iᵀ (y − t_i)
        r_inv = R.transpose(-1, -2)[:, :, None, None]
        o_pts = apply_rotation(r_inv, o_pts - t[:, :, None, None])
        # √(‖o‖² + eps): OpenFold's and AlphaFold2's norm (eps=0: plain)
        o_norm = _point_norm(o_pts, self.point_norm_eps)
        o_pts = rearrange(o_pts, "b l h p x -> b l h (p x)")
        parts = [o_scalar, o_pts, o_norm]
        if pair is not None:  # line 8: õ_i = Σ_j a_ij z_ij needs the map
            if a is None:
                logits = ipa_logits(p.q, p.k, p.q_pts, p.k_pts, gamma, bias)
                a = _direct_weights(logits, mask)
            parts.append(torch.einsum("bhij,bijd->bihd", a, pair))
        out = torch.cat(parts, dim=-1)  # (B, L, H, c + 4 P_v (+ d_pair))
        if mask is not None:  # a masked residue gets no update
            out = torch.where(mask[..., None, None], out, out.new_zeros(()))
        # line 11, and the residual
        return x + self.out_proj(rearrange(out, "b l h e -> b l (h e)"))

    @torch.no_grad()
    def load_openfold_state_dict(self, state_dict) -> InvariantPointAttention:
        """Load the weights of OpenFold's monomer ``InvariantPointAttention``, as it names them.

        Keys: ``linear_q``, ``linear_kv``, ``linear_q_points``, ``linear_kv_points``,
        ``linear_b`` and ``linear_out`` (each ``.weight`` and ``.bias``) and ``head_weights``.
        OpenFold @ ce0029e wraps the point projections (``linear_q_points.linear.weight``);
        both spellings are read. OpenFold stores the point rows coordinate-major (row
        x·H·P + h·P + p), splits ``linear_kv``'s rows per head into k then v (and
        ``linear_kv_points``' per head into P_qk key points, then P_v value points), and
        concatenates ``linear_out``'s inputs as scalars, x, y, z, norms, pair features;
        this layer's order is per head, so rows and columns are reordered here.

        Build the layer as OpenFold's: ``d_model=c_s``, ``d_pair=c_z``, ``d_head=c_hidden``,
        ``bias=True`` and the default ``point_norm_eps=1e-8``; then ``forward(...) - x`` is
        OpenFold's update for every present residue (OpenFold's masked residues still get
        one, ours get none). A missing, extra or mis-shaped key, or a value that is not a
        floating-point tensor holding numbers, raises an error naming the key; nothing is
        loaded then.
        """
        given = _canonical_openfold_keys(state_dict)
        wanted = self._openfold_shapes()
        for key, (name, _) in given.items():
            if key not in wanted:
                raise ValueError(f"{name}: not a parameter of this layer (bias={self.bias}, "
                                 f"d_pair={self.d_pair}); build it as OpenFold's module is built")
        for key, shape in wanted.items():
            if key not in given:
                raise ValueError(f"{key}: missing from state_dict (OpenFold's module has it)")
            name, value = given[key]
            value = require_state_value(name, value)
            given[key] = (name, value)
            if tuple(value.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit this layer: "
                                 f"OpenFold's module of its size has {shape}")
        ours = _openfold_to_ours({k: v for k, (_, v) in given.items()}, self)
        for name, param in self.named_parameters():
            param.copy_(ours[name])
        return self

    def _openfold_shapes(self) -> dict[str, tuple[int, ...]]:
        """OpenFold's parameter name → its shape, for a module of this layer's size."""
        d, h, c = self.d_model, self.n_heads, self.d_head
        pq, pv, dp = self.n_query_points, self.n_value_points, self.d_pair or 0
        linears = {"linear_q": (h * c, d), "linear_kv": (2 * h * c, d),
                   "linear_q_points": (3 * h * pq, d), "linear_kv_points": (3 * h * (pq + pv), d)}
        if self.d_pair is not None:
            linears["linear_b"] = (h, dp)
        shapes = {}
        for name, shape in linears.items():
            shapes[f"{name}.weight"] = shape
            if self.bias:
                shapes[f"{name}.bias"] = shape[:1]
        shapes["head_weights"] = (h,)
        shapes["linear_out.weight"] = (d, h * (dp + c + 4 * pv))
        shapes["linear_out.bias"] = (d,)
        return shapes


def _canonical_openfold_keys(state_dict) -> dict[str, tuple[str, object]]:
    """OpenFold's key, with ``linear_*_points.linear.`` read as ``linear_*_points.`` →
    (the key as given, its value)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    out: dict[str, tuple[str, object]] = {}
    for name, value in state_dict.items():
        key = name
        for points in ("linear_q_points", "linear_kv_points"):
            key = key.replace(f"{points}.linear.", f"{points}.")
        if key in out:
            raise ValueError(f"{name}: given twice, also as {out[key][0]}")
        out[key] = (name, value)
    return out


def _openfold_to_ours(sd: dict[str, Tensor], layer: InvariantPointAttention) -> dict[str, Tensor]:
    """This layer's parameters from OpenFold's (shapes already checked)."""
    h, c = layer.n_heads, layer.d_head
    pq, pv, dp = layer.n_query_points, layer.n_value_points, layer.d_pair or 0
    out = {"gamma_raw": sd["head_weights"], "out_proj.weight": _out_columns(sd["linear_out.weight"], h, c, pv, dp),
           "out_proj.bias": sd["linear_out.bias"]}
    for part in ("weight", "bias") if layer.bias else ("weight",):
        # per head: k then v; ours: all q, all k, all v, each (h c)
        k, v = rearrange(sd[f"linear_kv.{part}"], "(h n c) ... -> n (h c) ...", h=h, n=2)
        out[f"scalar_qkv.{part}"] = torch.cat([sd[f"linear_q.{part}"], k, v])
        (q_pts,) = _point_rows(sd[f"linear_q_points.{part}"], h, [pq])
        k_pts, v_pts = _point_rows(sd[f"linear_kv_points.{part}"], h, [pq, pv])
        out[f"point_qk.{part}"] = torch.cat([q_pts, k_pts])
        out[f"point_v.{part}"] = v_pts
        if dp:
            out[f"pair_bias.{part}"] = sd[f"linear_b.{part}"]
    return out


def _point_rows(t: Tensor, h: int, sizes: list[int]) -> list[Tensor]:
    """Coordinate-major rows (x h p) split per head into ``sizes`` points → ours, (h p x)."""
    t = rearrange(t, "(x h p) ... -> h p x ...", x=3, h=h)
    return [rearrange(part, "h p x ... -> (h p x) ...") for part in t.split(sizes, dim=1)]


def _out_columns(w: Tensor, h: int, c: int, pv: int, dp: int) -> Tensor:
    """linear_out's columns: OpenFold's [scalars (h c), x, y, z (h p) each, norms (h p),
    pair (h d)] → ours, per head [scalars, points (p x), norms, pair]."""
    o, pts, norm, pair = w.split([h * c, 3 * h * pv, h * pv, h * dp], dim=-1)
    parts = [rearrange(o, "... (h c) -> ... h c", h=h),
             rearrange(pts, "... (x h p) -> ... h (p x)", x=3, h=h),
             rearrange(norm, "... (h p) -> ... h p", h=h)]
    if dp:
        parts.append(rearrange(pair, "... (h d) -> ... h d", h=h))
    return rearrange(torch.cat(parts, dim=-1), "... h e -> ... (h e)")


def _point_norm(o: Tensor, eps: float) -> Tensor:
    """‖o‖ over the last dimension, as √(‖o‖² + eps) when eps > 0.

    With eps = 0 the plain norm, whose gradient at o = 0 is taken as 0 (the square root's
    would be infinite there)."""
    if eps == 0:
        return torch.linalg.vector_norm(o, dim=-1)
    return torch.sqrt(o.square().sum(-1) + eps)


def _direct_weights(logits: Tensor, mask: Tensor | None) -> Tensor:
    """softmax_j over the present keys; rows of absent queries are zero."""
    if logits.shape[-1] == 0:  # no residue at all: nothing to normalise (amax needs one entry)
        return logits
    if mask is None:
        return softmax(logits, dim=-1)
    a = softmax(logits, dim=-1, mask=mask[:, None, None, :])
    return torch.where(mask[:, None, :, None], a, torch.zeros((), dtype=a.dtype, device=a.device))


def _one_width(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Zero columns that give q, k and v one width: PyTorch's fused (flash) kernels need it,
    and otherwise fall back to the math path, which materializes the (L, L) map. A zero
    column changes no dot product; the extra output columns are dropped."""
    width = max(q.shape[-1], v.shape[-1])
    return tuple(F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))


def _sdpa_mask(bias: Tensor | None, mask: Tensor | None) -> Tensor | None:
    """SDPA's ``attn_mask``: w_L times the pair bias as an additive float mask, −inf at absent keys.

    The rows of absent queries may attend every key (their inputs are neutral and their
    outputs are discarded), so no row is fully masked: some torch versions give NaN there.
    """
    bias = None if bias is None else _W_L * bias  # line 7 weighs the pair bias by w_L too
    if mask is None:
        return bias
    allowed = mask[:, None, None, :] | ~mask[:, None, :, None]  # (B, 1, L, L)
    if bias is None:
        return allowed
    return bias.masked_fill(~allowed, float("-inf"))
