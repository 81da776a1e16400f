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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import softmax
from .frames import apply_frame, apply_rotation

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

IMPLS = ("auto", "naive", "chunked", "triton")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_VECTORS = ("q_rot", "k_rot", "q_dist", "k_dist", "v")


def check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None):
    """Validate the contract's inputs; return (B, L, H). Each error names the offending argument.

    ``v`` may be None (for the attention map alone, which needs no values).
    """
    tensors = dict(zip(_VECTORS, (q_rot, k_rot, q_dist, k_dist, v)))
    if v is None:
        del tensors["v"]
    vectors = tuple(tensors)
    tensors.update(rot_weight=rot_weight, dist_weight=dist_weight)
    if key_mask is not None:
        tensors["key_mask"] = key_mask
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name in vectors:
        t = tensors[name]
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4, shape (B, L, H, 3); got shape {tuple(t.shape)}")
        if t.shape[-1] != 3:
            raise ValueError(f"{name} must have a last dimension of 3 (a 3-D vector); got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} must be floating point (fp64, fp32, fp16 or bf16); got {t.dtype}")
    shape = q_rot.shape
    for name in vectors[1:]:
        if tensors[name].shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensors[name].shape)} but q_rot has {tuple(shape)}: B, L and H must match"
            )
    b, length, h, _ = shape
    for name in ("rot_weight", "dist_weight"):
        if tensors[name].shape != (h,):
            raise ValueError(f"{name} must have shape (H,) = ({h},); got {tuple(tensors[name].shape)}")
        if tensors[name].dtype not in _FLOATS:
            raise ValueError(f"{name} must be floating point; got {tensors[name].dtype}")
    if key_mask is not None:
        if key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be a bool tensor (True = may attend); got {key_mask.dtype}")
        if key_mask.shape != (b, length):
            raise ValueError(f"key_mask must have shape (B, L) = ({b}, {length}); got {tuple(key_mask.shape)}")
    device = q_rot.device
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q_rot is on {device}: all inputs must share one device")
    return b, length, h


def safe_norm(x: Tensor, dim: int = -1) -> Tensor:
    """‖x‖₂ along ``dim`` whose gradient at x = 0 is 0 (the minimal-norm subgradient), not NaN.

    The double ``where`` keeps the value exact (0 at 0) and keeps sqrt's infinite
    derivative at 0 out of the backward pass.
    """
    sq = (x * x).sum(dim)
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def _compute_dtype(t: Tensor) -> torch.dtype:
    # Accumulate in fp32 for fp16/bf16/fp32 inputs; keep fp64 when asked for it.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, *, compute_dtype=None):
    """The scores A of lines 7-9, before the softmax: shape (B, H, L, L).

    A[b,h,i,j] = w_r[h]·(q_r[b,i,h]·k_r[b,j,h])/√3 − w_d[h]·‖q_d[b,i,h] − k_d[b,j,h]‖₂/√3

    Computed in ``compute_dtype``: by default fp32, or fp64 for fp64 input.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, None, rot_weight, dist_weight)
    compute = compute_dtype or _compute_dtype(q_rot)
    qr, kr, qd, kd = (t.to(compute).transpose(1, 2) for t in (q_rot, k_rot, q_dist, k_dist))  # (B, H, L, 3)
    w_r = rot_weight.to(compute)[None, :, None, None]
    w_d = dist_weight.to(compute)[None, :, None, None]
    # line 7: R[i,j,h] = q_r[i,h] · k_r[j,h] / √3
    rot = qr @ kr.transpose(-1, -2) / math.sqrt(3.0)  # (B, H, L, L)
    # line 8 (corrected): D[i,j,h] = ‖q_d[i,h] − k_d[j,h]‖₂ / √3, from the *distance* vectors
    diff = qd[:, :, :, None, :] - kd[:, :, None, :, :]  # (B, H, L, L, 3), as ESM materializes it
    dist = safe_norm(diff) / math.sqrt(3.0)  # (B, H, L, L)
    # line 9: A = softplus(w̄_r) R − softplus(w̄_d) D  (the weights arrive already through softplus)
    return w_r * rot - w_d * dist


def geometric_attention_weights(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, key_mask=None):
    """The attention map of line 10, softmax_j(A): shape (B, H, L, L), rows sum to 1.

    Masked keys (``key_mask`` False) get weight 0; a row with no key left is all zeros.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, None, rot_weight, dist_weight, key_mask)
    logits = geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight)  # lines 7-9
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return softmax(logits, dim=-1, mask=mask)  # line 10


def _naive(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask):
    compute = _compute_dtype(v)
    if q_rot.shape[1] == 0:  # no residues: nothing to attend, nothing to return
        return torch.zeros_like(v)
    logits = geometric_logits(q_rot, k_rot, q_dist, k_dist, rot_weight, dist_weight, compute_dtype=compute)
    attn = softmax(logits, dim=-1, mask=None if key_mask is None else key_mask[:, None, None, :])  # line 10
    out = attn @ v.to(compute).transpose(1, 2)  # line 12: O = A · V, (B, H, L, 3)
    return out.transpose(1, 2).to(v.dtype)


def geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *, impl="auto",
                        **kwargs):
    """Geometric attention over vectors already in the global frame; see the module docstring.

    Inputs ``q_rot, k_rot, q_dist, k_dist, v``: (B, L, H, 3). ``rot_weight``, ``dist_weight``:
    (H,), non-negative (already through softplus). ``key_mask``: (B, L) bool, True = key
    may be attended. Returns a tensor shaped and typed like ``v``; math runs in fp32
    (fp64 for fp64 inputs). A query row with no key to attend returns zeros.
    Extra keyword arguments (e.g. ``block_size``) go to the chosen implementation.
    """
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    if impl == "auto":
        impl = "triton" if q_rot.is_cuda else "chunked"
    args = (q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask)
    if impl == "naive":
        if kwargs:
            raise ValueError(f"impl='naive' takes no extra options; got {sorted(kwargs)}")
        return _naive(*args)
    if impl == "chunked":
        from .chunked import chunked_geometric_attention

        return chunked_geometric_attention(*args, **kwargs)
    from .triton_kernels import triton_geometric_attention

    return triton_geometric_attention(*args, **kwargs)


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


def _frames(rotations: Tensor, translations: Tensor, mask: Tensor | None, dtype: torch.dtype):
    """(R, t) in ``dtype``; a masked residue gets the identity frame, so a NaN frame cannot leak."""
    R, t = rotations.to(dtype), translations.to(dtype)
    if mask is not None:
        R = torch.where(mask[..., None, None], R, torch.eye(3, dtype=dtype, device=R.device))
        t = torch.where(mask[..., None], t, torch.zeros_like(t))
    return R, t


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

    ``forward(x, rotations, translations, mask=None)``: ``x`` (B, L, d_model), ``rotations``
    (B, L, 3, 3) local → global, ``translations`` (B, L, 3), ``mask`` (B, L) bool, True for
    residues that exist and have a frame. Returns (B, L, d_model). A masked residue is never
    attended to, its frame is replaced by the identity (so NaN frames of missing residues
    cannot leak), and its vector output O is zero (as ESM's ``mask_and_zero_frameless``).

    Options that reproduce ESM3's code where it differs from the paper:

    - ``pre_layernorm``: ESM normalizes x with a LayerNorm before the projection (paper: no).
    - ``num_vector_messages``: m value vectors per head, all weighted by that head's map
      (ESM's ``num_vector_messages``; ESM calls the number of heads ``v_heads``).
    - ``bias``: ESM uses ``bias=False`` for the projections and the LayerNorm.

    ``GeometricSelfAttention(d, h, pre_layernorm=True, bias=False)`` computes ESM's layer, except
    that ESM returns Linear(O) (its transformer block adds the residual x), adds a sequence-id
    bias and masks other chains (here: pass ``mask``), and orders the projection's outputs
    differently (q_r, k_r, v, q_d, k_d), so its weights need reordering to be loaded here.

    ``impl`` picks the implementation of lines 7-12 (see :func:`geometric_attention`);
    ``attention_weights`` always uses the naive path. The per-head weights start at
    softplus(0) = ln 2, as in ESM; read them with :meth:`head_weights` and set them with
    :meth:`set_head_weights`.
    """

    def __init__(self, d_model: int, n_heads: int, *, num_vector_messages: int = 1, pre_layernorm: bool = False,
                 bias: bool = True, impl: str = "auto"):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("num_vector_messages", num_vector_messages)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
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
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}; got {value!r}")
        self._impl = value

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, "
                f"num_vector_messages={self.num_vector_messages}, impl={self.impl!r}")

    def head_weights(self) -> tuple[Tensor, Tensor]:
        """(softplus(w̄_r), softplus(w̄_d)): the non-negative per-head weights of line 9, each (H,)."""
        return F.softplus(self.rot_scale), F.softplus(self.dist_scale)

    @torch.no_grad()
    def set_head_weights(self, rot_weight=None, dist_weight=None) -> "GeometricSelfAttention":
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

    def _check_inputs(self, x, rotations, translations, mask):
        for name, t in (("x", x), ("rotations", rotations), ("translations", translations)):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, L, d_model={self.d_model}); got {tuple(x.shape)}")
        b, length = x.shape[:2]
        if rotations.shape != (b, length, 3, 3):
            raise ValueError(f"rotations must have shape (B, L, 3, 3) = ({b}, {length}, 3, 3); "
                             f"got {tuple(rotations.shape)}")
        if translations.shape != (b, length, 3):
            raise ValueError(f"translations must have shape (B, L, 3) = ({b}, {length}, 3); "
                             f"got {tuple(translations.shape)}")
        for name, t in (("x", x), ("rotations", rotations), ("translations", translations)):
            if t.dtype not in _FLOATS:
                raise ValueError(f"{name} must be floating point; got {t.dtype}")
        tensors = {"rotations": rotations, "translations": translations}
        if mask is not None:
            if not isinstance(mask, Tensor):
                raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor (True = residue present); got {mask.dtype}")
            if mask.shape != (b, length):
                raise ValueError(f"mask must have shape (B, L) = ({b}, {length}); got {tuple(mask.shape)}")
            tensors["mask"] = mask
        for name, t in tensors.items():
            if t.device != x.device:
                raise ValueError(f"{name} is on {t.device} but x is on {x.device}: all inputs must share one device")

    def vectors(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None):
        """Lines 1-6 and 11: the five vector sets in the global frame, as :class:`GeometricVectors`."""
        self._check_inputs(x, rotations, translations, mask)
        h = self.norm(x)  # ESM only: LayerNorm before the projection (nn.Identity by default)
        # line 1: Q_r, K_r, Q_d, K_d, V = Linear(X), each (B, L, H, 3) in residue i's local frame
        qk, v = self.proj(h).split([4 * self.n_heads * 3, self.num_vector_messages * self.n_heads * 3], dim=-1)
        q_rot, k_rot, q_dist, k_dist = rearrange(qk, "b l (n h c) -> n b l h c", n=4, c=3)
        v = rearrange(v, "b l (hm c) -> b l hm c", c=3)  # heads outer, messages inner
        R, t = _frames(rotations, translations, mask, qk.dtype)  # line 2: (R_i, t_i) = T_i
        R, t = R[:, :, None], t[:, :, None]  # one frame per residue, shared by its H heads
        q_rot = apply_rotation(R, q_rot)  # line 3: [Q_r]_i = R_i [Q_r]_i
        k_rot = apply_rotation(R, k_rot)  # line 4: [K_r]_i = R_i [K_r]_i
        q_dist = apply_frame(R, t, q_dist)  # line 5: [Q_d]_i = T_i [Q_d]_i = R_i [Q_d]_i + t_i
        k_dist = apply_frame(R, t, k_dist)  # line 6: [K_d]_i = T_i [K_d]_i
        v = apply_rotation(R, v)  # line 11: [V]_i = R_i [V]_i (rotated, not translated; needs no A)
        return GeometricVectors(q_rot, k_rot, q_dist, k_dist, v)

    def attention_weights(self, x: Tensor, rotations: Tensor, translations: Tensor,
                          mask: Tensor | None = None) -> Tensor:
        """The attention map softmax_j(A) of line 10, (B, H, L, L), by the naive path."""
        g = self.vectors(x, rotations, translations, mask)
        w_r, w_d = self.head_weights()
        return geometric_attention_weights(g.q_rot, g.k_rot, g.q_dist, g.k_dist, w_r, w_d, mask)

    def forward(self, x: Tensor, rotations: Tensor, translations: Tensor, mask: Tensor | None = None) -> Tensor:
        """X + Linear(O): Algorithm 6 on ``x`` (B, L, d_model) with frames (B, L, 3, 3), (B, L, 3)."""
        g = self.vectors(x, rotations, translations, mask)  # lines 1-6 and 11
        w_r, w_d = self.head_weights()  # softplus(w̄_r), softplus(w̄_d) of line 9
        m = self.num_vector_messages
        # lines 7-10 and 12: O = softmax_j(A) · V; with m messages per head, each head's map is reused m times
        q_rot, k_rot, q_dist, k_dist = (t.repeat_interleave(m, dim=2) for t in g[:4])
        o = geometric_attention(q_rot, k_rot, q_dist, k_dist, g.v, w_r.repeat_interleave(m),
                                w_d.repeat_interleave(m), mask, impl=self.impl)
        R, _ = _frames(rotations, translations, mask, o.dtype)
        # line 13: [O]_i = R_i⁻¹ [O]_i, back to residue i's local frame (R⁻¹ = Rᵀ for a rotation)
        o = apply_rotation(R.transpose(-1, -2)[:, :, None], o)
        if mask is not None:
            o = o.masked_fill(~mask[..., None, None], 0.0)  # a masked residue sends no message
        return x + self.out_proj(rearrange(o, "b l hm c -> b l (hm c)"))  # line 14: X = X + Linear(O)
