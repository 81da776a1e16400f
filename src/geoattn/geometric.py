"""ESM3's geometric attention (Algorithm 6): the functional core and its dispatcher.

The functional core takes the five vector sets already in the global frame (Algorithm 6
after lines 3-6 and 13) and computes, per batch b and head h,

    A[b,h,i,j] = w_r[h] · (q_r[b,i,h] · k_r[b,j,h]) / √3  −  w_d[h] · ‖q_d[b,i,h] − k_d[b,j,h]‖₂ / √3
    out[b,i,h] = Σ_j softmax_j(A)[b,h,i,j] · v[b,j,h]

``impl`` picks how: "naive" materializes A (and the (L, L, 3) differences, as ESM does),
"chunked" streams key blocks with an online softmax, "triton" runs the GPU kernel, and
"auto" takes Triton on CUDA and chunked elsewhere.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["geometric_attention", "check_geometric_inputs", "safe_norm", "IMPLS"]

IMPLS = ("auto", "naive", "chunked", "triton")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_VECTORS = ("q_rot", "k_rot", "q_dist", "k_dist", "v")


def check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None):
    """Validate the contract's inputs; return (B, L, H). Each error names the offending argument."""
    tensors = dict(zip(_VECTORS, (q_rot, k_rot, q_dist, k_dist, v)))
    tensors.update(rot_weight=rot_weight, dist_weight=dist_weight)
    if key_mask is not None:
        tensors["key_mask"] = key_mask
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name in _VECTORS:
        t = tensors[name]
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4, shape (B, L, H, 3); got shape {tuple(t.shape)}")
        if t.shape[-1] != 3:
            raise ValueError(f"{name} must have a last dimension of 3 (a 3-D vector); got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} must be floating point (fp64, fp32, fp16 or bf16); got {t.dtype}")
    shape = q_rot.shape
    for name in _VECTORS[1:]:
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


def _naive(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask):
    compute = torch.float64 if v.dtype == torch.float64 else torch.float32
    qr, kr, qd, kd, vv = (t.to(compute).transpose(1, 2) for t in (q_rot, k_rot, q_dist, k_dist, v))  # (B, H, L, 3)
    w_r = rot_weight.to(compute)[None, :, None, None]
    w_d = dist_weight.to(compute)[None, :, None, None]
    rot = qr @ kr.transpose(-1, -2)  # (B, H, L, L): line 7
    dist = safe_norm(qd[:, :, :, None, :] - kd[:, :, None, :, :])  # (B, H, L, L, 3) -> (B, H, L, L): line 8
    logits = (w_r * rot - w_d * dist) / math.sqrt(3.0)  # line 9
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    m = logits.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()  # a fully masked row has max -inf
    p = torch.exp(logits - m)
    denom = p.sum(dim=-1, keepdim=True)
    attn = p / torch.where(denom > 0, denom, torch.ones_like(denom))  # a row with no key gets zeros
    out = attn @ vv  # line 12
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
