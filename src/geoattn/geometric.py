"""ESM3's geometric attention (Algorithm 6 of the ESM3 paper, Hayes et al. 2025): the
functional core, its dispatcher, and the layer.

The functional core takes the five vector sets already in the global frame (Algorithm 6
after lines 3-6 and 11) and computes, per batch b and head h,

    A[b,h,i,j] = w_r[h] · (q_r[b,i,h] · k_r[b,j,h]) / √3  −  w_d[h] · ‖q_d[b,i,h] − k_d[b,j,h]‖₂ / √3
    out[b,i,h] = Σ_j softmax_j(A)[b,h,i,j] · v[b,j,h]

``impl`` picks how: "naive" materializes A (and the (L, L, 3) differences, as ESM does),
"chunked" streams key blocks with an online softmax, "triton" runs the GPU kernel, and
"auto" takes Triton on CUDA and chunked elsewhere.

Line numbers in the comments (``# line 7``) are those of Algorithm 6 as printed in the
paper (14 lines). Line 8 there writes q_r and k_r in the distance term; it must be q_d and
k_d, or the distance term could not see where the residues are.
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
from .contract import (
    IMPLS,
    check_block_size,
    check_geometric_inputs,
    check_impl,
    compute_dtype,
    values_back,
    values_heads_first,
)
from .distances import key_centre, pair_distances, safe_norm
from .frames import apply_frame, apply_rotation
from .masking import finite_geometric_inputs, nan_where, pair_mask, rowwise, zero_masked_keys
from .validation import (
    FLOAT_DTYPES,
    require_bool,
    require_bool_mask,
    require_dtype_arg,
    require_float_dtype,
    require_int,
    require_integer_ids,
    require_number,
    require_param_dtype,
    require_same_device,
    require_shape,
    require_state_value,
    require_tensor,
)

__all__ = [
    "geometric_attention",
    "geometric_logits",
    "geometric_attention_weights",
    "check_geometric_inputs",
    "random_geometric_inputs",
    "safe_norm",
    "IMPLS",
    "GeometricVectors",
    "GeometricSelfAttention",
]

_INV_SQRT3 = 1.0 / math.sqrt(3.0)


def _geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight,
                      sequence_id=None, compute=torch.float32, key_mask=None,
                      chain_id=None):
    # (B, L, H, 3) -> (B, H, L, 3): one attention per batch entry and head
    qr, kr, qd, kd = (t.to(compute).transpose(1, 2)
                      for t in (q_rot, k_rot, q_dist, k_dist))
    # distances ignore a common shift; centred points keep their digits
    # (one centre per chain: pairs across chains are never scored)
    centre = key_centre(kd, key_mask, chain_id)
    # the 1/√3 joins the (H,) weights, not an (L, L) tensor
    w_r = rot_weight.to(compute)[None, :, None, None] * _INV_SQRT3
    w_d = dist_weight.to(compute)[None, :, None, None] * _INV_SQRT3
    # line 8 (corrected), first: D[i,j,h] = ‖q_d[i,h] − k_d[j,h]‖₂, from the
    # *distance* vectors; ESM's (L, L, 3) differences are freed before line 7
    dist = pair_distances(qd - centre, kd - centre)  # (B, H, L, L)
    # line 7: w_r R / √3, R[i,j,h] = q_r[i,h] · k_r[j,h], with w_r / √3 on
    # q_r's (L, 3) numbers
    rot = (w_r * qr) @ kr.transpose(-1, -2)  # (B, H, L, L)
    # line 9: S = w_r R / √3 − w_d D / √3, in place: no third (L, L) tensor
    scores = rot.addcmul_(dist, w_d, value=-1)
    # an infinite score (float32 overflow of either term, or an infinite
    # point) gives NaN, never a silent weight of 0 or a row of zeros
    scores.masked_fill_(torch.isinf(scores), float("nan"))
    if sequence_id is not None:  # ESM's bias: +1 in one sequence (not a mask)
        same = sequence_id[:, :, None] == sequence_id[:, None, :]  # (B, L, L)
        scores += same[:, None]
    return scores


def geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, *, sequence_id=None,
                     compute_dtype=None):
    """The scores A of lines 7-9, before the softmax: shape (B, H, L, L). Validates its inputs.

    A[b,h,i,j] = w_r[h]·(q_r[b,i,h]·k_r[b,j,h])/√3 − w_d[h]·‖q_d[b,i,h] − k_d[b,j,h]‖₂/√3
                 (+ 1 where ``sequence_id`` is given and i, j share a sequence id)

    Computed in ``compute_dtype`` (a floating torch.dtype): by default fp32, or fp64 for
    fp64 input.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, None, rot_weight, dist_weight, sequence_id=sequence_id)
    compute = _compute_dtype_arg(compute_dtype, q_rot)
    return _geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, sequence_id, compute)


def _compute_dtype_arg(dtype, reference: Tensor) -> torch.dtype:
    return compute_dtype(reference) if dtype is None else require_dtype_arg("compute_dtype", dtype, FLOAT_DTYPES)


def _attention_map(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, key_mask, sequence_id, chain_id,
                   compute):
    k_rot, k_dist = zero_masked_keys(key_mask, k_rot, k_dist)
    # lines 7-9
    logits = _geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight,
                               dist_weight, sequence_id, compute, key_mask,
                               chain_id)
    # line 10
    return softmax(logits, dim=-1, mask=pair_mask(key_mask, chain_id))


def geometric_attention_weights(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, key_mask=None, *,
                                sequence_id=None, chain_id=None):
    """The attention map of line 10, softmax_j(A): shape (B, H, L, L), rows sum to 1.
    Validates its inputs.

    Masked keys (``key_mask`` False) and pairs in different chains (``chain_id``) get
    weight 0 and never matter, even NaN; a row with no key left is all zeros; a row that
    reads a non-finite number through a kept pair, or whose score overflows, is NaN.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, None, rot_weight, dist_weight, key_mask,
                           sequence_id=sequence_id, chain_id=chain_id)
    finite, (nan_rows, _) = finite_geometric_inputs(q_rot, k_rot, q_dist, k_dist, None, key_mask, chain_id,
                                                    rot_weight=rot_weight, dist_weight=dist_weight,
                                                    compute=compute_dtype(q_rot))
    attn = _attention_map(*finite, rot_weight, dist_weight, key_mask, sequence_id, chain_id, compute_dtype(q_rot))
    return attn + nan_where(nan_rows.transpose(1, 2), attn)


def naive_geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                              sequence_id=None, chain_id=None, block_size=None):
    """The readable reference: materializes A (and ESM's (L, L, 3) differences).

    Does not validate: :func:`geometric_attention` checks the contract once and calls this.
    ``block_size`` is accepted and ignored, so every implementation takes the same options.
    """
    del block_size  # naive holds every score at once
    if q_rot.shape[1] == 0:  # no residues; an output tied to every input, so each gets its (empty or 0) gradient
        return v + 0 * sum(t.sum() for t in (q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight))
    compute = compute_dtype(v)
    (v,) = zero_masked_keys(key_mask, v)
    # Non-finite (or too large) vectors are replaced and mark NaN the rows that read them
    # through a kept pair (geoattn.masking): a masked pair then meets no 0 · NaN, forward
    # or backward, and nothing overflows.
    (q_rot, k_rot, q_dist, k_dist, v), (nan_rows, _) = finite_geometric_inputs(
        q_rot, k_rot, q_dist, k_dist, v, key_mask, chain_id, rot_weight=rot_weight, dist_weight=dist_weight,
        compute=compute)
    attn = _attention_map(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, key_mask, sequence_id, chain_id,
                          compute)  # lines 7-10
    # line 12: O = A · V, (B, H, L, 3m): one map for a head's m value vectors
    out = attn @ values_heads_first(v.to(compute), q_rot.shape[2])
    return values_back(out).to(v.dtype) + nan_where(nan_rows, v)


def _implementation(impl: str):
    if impl == "naive":
        return naive_geometric_attention
    if impl == "chunked":
        from .chunked import chunked_core

        return chunked_core
    from .kernels.launch import triton_core  # imports Triton: only when asked for

    return triton_core


def geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                        sequence_id=None, chain_id=None, block_size=None, impl="auto"):
    """Geometric attention over vectors already in the global frame; see the module docstring.

    Inputs ``q_rot, k_rot, q_dist, k_dist, v``: (B, L, H, 3); ``v`` may be (B, L, H·m, 3),
    m value vectors per head (heads outer), each weighted by its head's map, which every
    implementation but triton computes once (triton repeats q and k m times). ``rot_weight``, ``dist_weight``:
    (H,), the weights *after* softplus: every entry finite and >= 0 (0 included); a
    negative, NaN or infinite weight is a ValueError naming it. ``key_mask``: (B, L) bool, True = key
    may be attended. ``sequence_id``: (B, L) int, adds +1 to the score of every pair in one
    sequence (ESM's bias). ``chain_id``: (B, L) int, masks every pair in different chains.

    ``impl``: "naive", "chunked", "triton" or "auto" (Triton on CUDA, chunked elsewhere).
    ``block_size``: keys per block, or None for the implementation's own choice; naive
    ignores it, chunked takes any int >= 1, triton one of ``contract.TRITON_BLOCK_SIZES``.

    Validates the inputs once, then runs the chosen implementation. Returns a tensor shaped
    and typed like ``v``; math runs in fp32 (fp64 for fp64 inputs). A query row with no key
    to attend returns zeros (and zero gradients).

    A masked pair (a masked key, or two chains) never influences an output or a gradient,
    even where what it would read is NaN, ±inf or overflows: a NaN in one chain of a packed
    batch reaches only its own chain. A non-finite number read through a kept pair gives
    NaN in the outputs that read it, never a finite number or a row of zeros; so does a
    vector too large for fp32 arithmetic (a coordinate of at least √max/8, 2.3e18 in fp32,
    from its chain's key centre, or times a weight > 1: ``masking.finite_geometric_inputs``),
    the same rows in every implementation, so no score ever overflows to a silent 0.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask,
                           sequence_id=sequence_id, chain_id=chain_id)
    impl = check_impl(impl)
    if impl == "auto":
        impl = "triton" if q_rot.is_cuda else "chunked"
    block_size = check_block_size(block_size, impl)
    run = _implementation(impl)
    return run(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask, sequence_id=sequence_id,
               chain_id=chain_id, block_size=block_size)


def random_geometric_inputs(batch: int, length: int, heads: int, *, seed: int = 0, dist_scale: float = 1.0,
                            dtype: torch.dtype = torch.float32, device="cpu", requires_grad: bool = False):
    """Reproducible random arguments for :func:`geometric_attention`:
    ``[q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight]``.

    The five vector sets are standard normal, shape (batch, length, heads, 3); ``q_dist``
    and ``k_dist`` are multiplied by ``dist_scale`` (e.g. 5 for distances of a few Å);
    the weights are uniform in [0, 1). Drawn on the CPU from one generator seeded with
    ``seed``, so every device gets the same numbers.
    """
    gen = torch.Generator().manual_seed(seed)
    drawn = [torch.randn(batch, length, heads, 3, generator=gen) for _ in range(5)]
    drawn += [torch.rand(heads, generator=gen) for _ in range(2)]
    out = [t.to(device=device, dtype=dtype) for t in drawn]
    out[2], out[3] = out[2] * dist_scale, out[3] * dist_scale
    return [t.requires_grad_(requires_grad) for t in out]


# ----------------------------------------------------------------------------------------
# The layer: Algorithm 6, lines 1-14.


def _finite_frames(rotations: Tensor, translations: Tensor) -> Tensor:
    """(B, L) bool: whether each residue's frame (R and t) is finite."""
    return torch.isfinite(rotations).flatten(-2).all(-1) & torch.isfinite(translations).all(-1)


def _frames(rotations: Tensor, translations: Tensor, mask: Tensor | None, dtype: torch.dtype):
    """(R, t) in ``dtype``; a masked residue, or one whose frame is not finite, gets the
    identity frame, so a NaN frame cannot leak, not even as 0 · NaN in a gradient (the
    layer makes the vectors of a non-finite frame NaN instead: :func:`_lost_frames`)."""
    R, t = rotations.to(dtype), translations.to(dtype)
    keep = _finite_frames(R, t)
    if mask is not None:
        keep = keep & mask
    R = torch.where(keep[..., None, None], R, torch.eye(3, dtype=dtype, device=R.device))
    t = torch.where(keep[..., None], t, torch.zeros_like(t))
    return R, t


def _lost_frames(rotations: Tensor, translations: Tensor, mask: Tensor | None) -> Tensor:
    """(B, L, 1) bool: residues whose frame is used (not masked by ``mask``) but not finite."""
    lost = ~_finite_frames(rotations, translations)
    return (lost if mask is None else lost & mask)[..., None]


def _inverse_softplus(y: Tensor) -> Tensor:
    # softplus⁻¹(y) = log(eʸ − 1) = y + log(1 − e⁻ʸ), the second form does not overflow for large y;
    # y = 0 maps to −inf, and softplus(−inf) = 0 exactly.
    return y + torch.log(-torch.expm1(-y))


class GeometricVectors(NamedTuple):
    """The five vector sets of Algorithm 6 in the global frame, each (B, L, H, 3)
    ((B, L, H·m, 3) for ``v`` with m vector messages per head)."""

    q_rot: Tensor
    k_rot: Tensor
    q_dist: Tensor
    k_dist: Tensor
    v: Tensor


class GeometricSelfAttention(nn.Module):
    r"""ESM3's Geometric Self-Attention (Algorithm 6 of the ESM3 paper), as an ``nn.Module``.

    Each residue i carries an embedding x_i and a rigid frame T_i = (R_i, t_i), local → global.
    One Linear layer makes, per head h, five 3-D vectors in residue i's local frame; the
    frames move them to the global frame, where their dot products and distances do not
    depend on where the whole protein sits or how it is turned:

    .. math::
        q^r_i = R_i\,\hat q^r_i,\quad k^r_i = R_i\,\hat k^r_i,\quad
        q^d_i = R_i\,\hat q^d_i + t_i,\quad k^d_i = R_i\,\hat k^d_i + t_i,\quad v_i = R_i\,\hat v_i

        A_{ijh} = \mathrm{softplus}(\bar w^r_h)\,\frac{q^r_{ih}\cdot k^r_{jh}}{\sqrt 3}
                - \mathrm{softplus}(\bar w^d_h)\,\frac{\lVert q^d_{ih} - k^d_{jh}\rVert_2}{\sqrt 3}

        o_{ih} = R_i^{-1} \sum_j \mathrm{softmax}_j(A)_{ijh}\, v_{jh},\qquad
        x_i \leftarrow x_i + \mathrm{Linear}(o_i)

    ``forward(x, rotations, translations, mask=None, *, sequence_id=None, chain_id=None)``:
    ``x`` (B, L, d_model), ``rotations`` (B, L, 3, 3) local → global, ``translations``
    (B, L, 3), ``mask`` (B, L) bool, True for residues that exist and have a frame;
    ``sequence_id`` (B, L) int adds +1 to the score of every pair in one sequence (ESM's
    bias); ``chain_id`` (B, L) int masks every pair in two different chains (ESM masks per
    pair). Returns X + residual_scale · Linear(O), shape (B, L, d_model). A masked residue is
    never attended to.

    Options that reproduce ESM3's code where it differs from the paper:

    - ``pre_layernorm``: ESM normalizes x with a LayerNorm before the projection (paper: no).
    - ``num_vector_messages``: m value vectors per head, all weighted by that head's map
      (ESM's ``num_vector_messages``; ESM calls the number of heads ``v_heads``).
    - ``bias``: biases of the LayerNorm and both Linear layers; False in ESM3's transformer,
      True in its structure encoder.
    - ``zero_masked_outputs``: zero the vector output O of masked residues (ESM's
      ``mask_and_zero_frameless``: True in ESM3's transformer, False in the structure
      encoder, where masked residues still get an update from their own, finite frames).
      When True, a masked residue's frame is replaced by the identity, so the NaN frame of
      a missing residue cannot leak.
    - ``residual_scale``: the layer returns X + residual_scale · Linear(O). ESM's layer
      returns Linear(O), and its block adds it divided by √(n_layers/36): pass
      ``1 / math.sqrt(48 / 36)`` for ESM3-open (48 layers).

    :meth:`load_esm_state_dict` loads the weights of ESM's ``GeometricReasoningOriginalImpl``
    (its names and its projection's row order). A query row with no key left (possible only
    with ``zero_masked_outputs=False``) returns zeros, where ESM's code gives a uniform
    softmax over all keys.

    ``impl`` picks the implementation of lines 7-12 (see :func:`geometric_attention`);
    ``attention_weights`` always uses the naive path. The per-head weights start at
    softplus(0) = ln 2, as in ESM; read them with :meth:`head_weights` and set them with
    :meth:`set_head_weights`.
    """

    def __init__(self, d_model: int, n_heads: int, *, num_vector_messages: int = 1, pre_layernorm: bool = False,
                 bias: bool = False, zero_masked_outputs: bool = True, residual_scale: float = 1.0,
                 impl: str = "auto"):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("num_vector_messages", num_vector_messages)):
            require_int(name, value, minimum=1)
        for name, value in (("pre_layernorm", pre_layernorm), ("bias", bias),
                            ("zero_masked_outputs", zero_masked_outputs)):
            require_bool(name, value)
        self.residual_scale = require_number("residual_scale", residual_scale)
        self.zero_masked_outputs = zero_masked_outputs
        self.d_model, self.n_heads, self.num_vector_messages = d_model, n_heads, num_vector_messages
        self.impl = impl
        self.norm = nn.LayerNorm(d_model, bias=bias) if pre_layernorm else nn.Identity()
        # 4 query/key vector sets per head + m value vectors per head, 3 coordinates each
        self.proj = nn.Linear(d_model, (4 + num_vector_messages) * n_heads * 3, bias=bias)
        self.out_proj = nn.Linear(num_vector_messages * n_heads * 3, d_model, bias=bias)
        # Raw per-head weights w̄_r, w̄_d; zeros give softplus(0) = ln 2, ESM's start.
        self.rot_scale = nn.Parameter(torch.zeros(n_heads))
        self.dist_scale = nn.Parameter(torch.zeros(n_heads))

    @property
    def impl(self) -> str:
        """Which implementation runs lines 7-12: one of ``IMPLS``; it may be changed at any time."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = check_impl(value)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, "
                f"num_vector_messages={self.num_vector_messages}, zero_masked_outputs={self.zero_masked_outputs}, "
                f"residual_scale={self.residual_scale:g}, impl={self.impl!r}")

    def head_weights(self) -> tuple[Tensor, Tensor]:
        """(softplus(w̄_r), softplus(w̄_d)): the non-negative per-head weights of line 9, each (H,)."""
        return F.softplus(self.rot_scale), F.softplus(self.dist_scale)

    @torch.no_grad()
    def set_head_weights(self, rot_weight=None, dist_weight=None) -> GeometricSelfAttention:
        """Set the per-head weights *after* softplus (non-negative; a number or H numbers).

        For demonstrations, e.g. a pure distance head: ``set_head_weights(rot_weight=0, dist_weight=3)``.
        A weight of exactly 0 stores w̄ = −inf (softplus(−inf) = 0).
        """
        for name, value, param in (("rot_weight", rot_weight, self.rot_scale),
                                   ("dist_weight", dist_weight, self.dist_scale)):
            if value is None:
                continue
            w = torch.as_tensor(value, dtype=param.dtype, device=param.device)
            if w.dim() > 1 or (w.dim() == 1 and w.shape != (self.n_heads,)):
                raise ValueError(f"{name} must be a number or have shape (n_heads,) = ({self.n_heads},); "
                                 f"got {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"{name} must be finite and non-negative (a weight after softplus)")
            param.copy_(_inverse_softplus(w).expand(self.n_heads))
        return self

    def _check_inputs(self, x, rotations, translations, mask, sequence_id=None, chain_id=None):
        require_tensor("x", x)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, L, d_model={self.d_model}); got {tuple(x.shape)}")
        require_param_dtype(self, x=x)  # frames may have any float dtype: they are converted
        b, length = x.shape[:2]
        require_shape("rotations", require_tensor("rotations", rotations), (b, length, 3, 3), "(B, L, 3, 3)")
        require_shape("translations", require_tensor("translations", translations), (b, length, 3), "(B, L, 3)")
        for name, t in (("x", x), ("rotations", rotations), ("translations", translations)):
            require_float_dtype(name, t)
        require_bool_mask("mask", mask, (b, length), "(B, L)", meaning="True = residue present")
        require_integer_ids("sequence_id", sequence_id, (b, length))
        require_integer_ids("chain_id", chain_id, (b, length))
        require_same_device({"x": x, "rotations": rotations, "translations": translations, "mask": mask,
                             "sequence_id": sequence_id, "chain_id": chain_id}, "x")

    def _frame_mask(self, mask: Tensor | None) -> Tensor | None:
        # Masked residues get the identity frame only when their outputs are zeroed anyway.
        return mask if self.zero_masked_outputs else None

    def vectors(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None):
        """Lines 1-6 and 11: the five vector sets in the global frame, as :class:`GeometricVectors`."""
        self._check_inputs(x, rotations, translations, mask)
        return self._vectors(x, rotations, translations, mask)

    def _vectors(self, x, rotations, translations, mask):
        # ESM only: LayerNorm before the projection (nn.Identity by default)
        # (rowwise: f(x), but a NaN row never meets f's weight gradient)
        h = rowwise(self.norm, x)
        # a residue whose frame is not finite computes with the identity frame
        # (_frames) and a NaN row of h, so NaN vectors: NaN where it is read,
        # finite gradients
        lost = _lost_frames(rotations, translations, self._frame_mask(mask))
        h = h + nan_where(lost, h)
        # line 1: Q_r, K_r, Q_d, K_d, V = Linear(X), each (B, L, H, 3) in
        # residue i's local frame
        n_qk = 4 * self.n_heads * 3
        n_v = self.num_vector_messages * self.n_heads * 3
        qk, v = rowwise(self.proj, h).split([n_qk, n_v], dim=-1)
        q_rot, k_rot, q_dist, k_dist = rearrange(
            qk, "b l (n h c) -> n b l h c", n=4, c=3)
        # heads outer, messages inner
        v = rearrange(v, "b l (hm c) -> b l hm c", c=3)
        # line 2: (R_i, t_i) = T_i
        R, t = _frames(rotations, translations, self._frame_mask(mask),
                       qk.dtype)
        # one frame per residue, shared by its H heads
        R, t = R[:, :, None], t[:, :, None]
        q_rot = apply_rotation(R, q_rot)  # line 3: [Q_r]_i = R_i [Q_r]_i
        k_rot = apply_rotation(R, k_rot)  # line 4: [K_r]_i = R_i [K_r]_i
        # line 5: [Q_d]_i = T_i [Q_d]_i = R_i [Q_d]_i + t_i
        q_dist = apply_frame(R, t, q_dist)
        k_dist = apply_frame(R, t, k_dist)  # line 6: [K_d]_i = T_i [K_d]_i
        # line 11: [V]_i = R_i [V]_i (rotated, not translated; needs no A)
        v = apply_rotation(R, v)
        return GeometricVectors(q_rot, k_rot, q_dist, k_dist, v)

    def attention_weights(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None, *,
                          sequence_id: Tensor | None = None, chain_id: Tensor | None = None) -> Tensor:
        """The attention map softmax_j(A) of line 10, (B, H, L, L), by the naive path."""
        self._check_inputs(x, rotations, translations, mask, sequence_id, chain_id)
        g = self._vectors(x, rotations, translations, mask)
        w_r, w_d = self.head_weights()
        return geometric_attention_weights(g.q_rot, g.k_rot, g.q_dist, g.k_dist, w_r, w_d, mask,
                                           sequence_id=sequence_id, chain_id=chain_id)

    def forward(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None, *,
                sequence_id: Tensor | None = None, chain_id: Tensor | None = None) -> Tensor:
        """X + residual_scale · Linear(O): Algorithm 6 on ``x`` (B, L, d_model) with frames."""
        self._check_inputs(x, rotations, translations, mask, sequence_id, chain_id)
        # lines 1-6 and 11
        g = self._vectors(x, rotations, translations, mask)
        # softplus(w̄_r), softplus(w̄_d) of line 9
        w_r, w_d = self.head_weights()
        # lines 7-10 and 12: O = softmax_j(A) · V; g.v holds m messages per
        # head (B, L, H·m, 3), and each head's map weights all m of them
        o = geometric_attention(*g[:4], g.v, w_r, w_d, mask,
                                sequence_id=sequence_id, chain_id=chain_id,
                                impl=self.impl)
        R, _ = _frames(rotations, translations, self._frame_mask(mask),
                       o.dtype)
        # line 13: [O]_i = R_i⁻¹ [O]_i, back to residue i's local frame
        # (R⁻¹ = Rᵀ for a rotation)
        o = apply_rotation(R.transpose(-1, -2)[:, :, None], o)
        # ESM3's mask_and_zero_frameless: a frameless residue's OWN output
        # O_i is set to 0. (It sends no message either way: as a key it was
        # masked in geometric_attention above.)
        if mask is not None and self.zero_masked_outputs:
            zero = torch.zeros((), dtype=o.dtype, device=o.device)
            o = torch.where(mask[..., None, None], o, zero)
        # rowwise(f, x) = f(x), but a NaN row never meets f's weight gradient
        o = rearrange(o, "b l hm c -> b l (hm c)")
        update = rowwise(self.out_proj, o)
        # line 14: X = X + Linear(O) (ESM: scale 1/√(n_layers/36))
        return x + self.residual_scale * update

    @torch.no_grad()
    def load_esm_state_dict(self, state_dict) -> GeometricSelfAttention:
        """Load the weights of ESM's ``GeometricReasoningOriginalImpl``, keys as ESM names them.

        ESM's projection emits q_rot, k_rot, v, q_dist, k_dist; this layer's emits q_rot,
        k_rot, q_dist, k_dist, v, so the rows are reordered. A missing key, an extra key, a
        shape that does not fit, or a value that is not a real floating-point tensor (or
        NumPy array) with data raises a ValueError or TypeError naming the key; nothing is
        copied unless every value fits.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
        ours = _esm_key_map(self)
        given = dict(state_dict)
        for key in given:
            if key not in ours:
                options = f"pre_layernorm={not isinstance(self.norm, nn.Identity)}, bias={self.proj.bias is not None}"
                raise ValueError(f"{key}: not a parameter of this layer ({options}); "
                                 "build the layer with the options ESM's module was built with")
        values = {}
        for key, target in ours.items():
            if key not in given:
                raise ValueError(f"{key}: missing from state_dict (ESM's module has it with these options)")
            value = require_state_value(key, given[key])
            if key.startswith("proj."):
                value = _esm_rows_to_ours(value, self.n_heads, self.num_vector_messages)
            if value.shape != target.shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit this layer's {tuple(target.shape)}")
            values[key] = value
        for key, target in ours.items():
            target.copy_(values[key])
        return self


def _esm_key_map(layer: GeometricSelfAttention) -> dict[str, Tensor]:
    """ESM's parameter name → this layer's tensor."""
    names = {"distance_scale_per_head": layer.dist_scale, "rotation_scale_per_head": layer.rot_scale}
    for prefix, module in (("s_norm", layer.norm), ("proj", layer.proj), ("out_proj", layer.out_proj)):
        for name, param in module.named_parameters():
            names[f"{prefix}.{name}"] = param
    return names


def _esm_rows_to_ours(value: Tensor, n_heads: int, m: int) -> Tensor:
    """Reorder the projection's output rows from ESM's (q_r, k_r, v, q_d, k_d) to ours (q_r, k_r, q_d, k_d, v)."""
    sizes = [2 * n_heads * 3, m * n_heads * 3, 2 * n_heads * 3]
    if value.shape[0] != sum(sizes):
        return value  # the shape check names the key
    rot_qk, v, dist_qk = value.split(sizes, dim=0)
    return torch.cat([rot_qk, dist_qk, v], dim=0)
