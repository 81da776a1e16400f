"""The input contract of geometric attention, checked once per call.

Every implementation (``naive`` in :mod:`geoattn.geometric`, ``chunked`` in
:mod:`geoattn.chunked`, ``triton`` in :mod:`geoattn.kernels.launch`) imports this module,
and none imports another, so imports only go down. The dispatcher
:func:`geoattn.geometric_attention` calls :func:`check_geometric_inputs` once and then the
chosen implementation's unchecked core.

The contract (see ``DESIGN.md``):

- ``q_rot, k_rot, q_dist, k_dist, v``: (B, L, H, 3), floating point (fp64, fp32, fp16,
  bf16), one device; ``v`` may instead be (B, L, H·m, 3): m value vectors per head, heads
  outer, messages inner (ESM's ``num_vector_messages``), all weighted by their head's
  map, which is computed once;
- ``rot_weight, dist_weight``: (H,), floating point, every entry finite and >= 0: the
  weights *after* softplus. A negative, NaN or infinite weight is a ValueError that names
  it (chunked folds w_d into the points, ‖w q − w k‖ = w ‖q − k‖, which holds for w ≥ 0
  only; an infinite weight has no finite score);
- ``key_mask``: (B, L) bool, True = the key may be attended;
- ``sequence_id``: (B, L) integer; +1 on the score of every pair in one sequence;
- ``chain_id``: (B, L) integer; a pair in different chains is masked;
- ``block_size``: None (the implementation's choice) or an int that :data:`BLOCK_SIZES`
  allows for the implementation.

What a masked pair guarantees (a masked key, or a query and key in different chains): it
never influences an output or a gradient, even where the numbers it would read are NaN,
±inf or overflow fp32. So a NaN in one chain of a packed batch reaches only the rows of
its own chain, and a row with no key left returns zeros (and zero gradients). A
non-finite number read through a pair that is kept gives NaN in the rows that read it,
never a finite number; so does a vector too large for the compute dtype's arithmetic (a
coordinate of at least √max/8, 2.3e18 in fp32, measured from its chain's key centre, or
times a head weight > 1), so that no score overflows (to a silent weight of 0, or a row of
zeros) in any implementation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .validation import (
    require_bool_mask,
    require_float_dtype,
    require_head_weight,
    require_int,
    require_integer_ids,
    require_same_device,
    require_shape,
    require_tensor,
)

__all__ = ["IMPLS", "BLOCK_SIZES", "TRITON_BLOCK_SIZES", "check_geometric_inputs", "check_impl",
           "values_heads_first", "values_back",
           "check_block_size", "compute_dtype"]

IMPLS = ("auto", "naive", "chunked", "triton")

#: Explicit key-block sizes the Triton kernels accept: 16 and 32 compile without spills on
#: sm_75/80/90; at 64 both backward kernels reach 255 registers and spill (offline compile).
TRITON_BLOCK_SIZES = (16, 32)

#: Which ``block_size`` each implementation accepts, besides None (its own choice):
#: naive materializes every score, so it accepts any positive int and ignores it (callers
#: need no special case); chunked takes any positive int; triton only the sizes above.
BLOCK_SIZES = {
    "naive": "any int >= 1 (ignored: naive holds every score at once)",
    "chunked": "any int >= 1",
    "triton": f"one of {TRITON_BLOCK_SIZES}",
}

_VECTORS = ("q_rot", "k_rot", "q_dist", "k_dist", "v")


def compute_dtype(t: Tensor) -> torch.dtype:
    """fp32 accumulation for fp16, bf16 and fp32 inputs; fp64 kept when asked for."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_impl(impl) -> str:
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, one of {IMPLS}; got {type(impl).__name__}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    return impl


def check_block_size(block_size, impl: str) -> int | None:
    """None, or a block size that ``impl`` (already resolved, not "auto") accepts."""
    if block_size is None:
        return None
    block_size = require_int("block_size", block_size, minimum=1)
    if impl == "triton" and block_size not in TRITON_BLOCK_SIZES:
        raise ValueError(f"block_size for impl='triton' must be one of {TRITON_BLOCK_SIZES} (sizes that "
                         f"compile without register spills) or None; got {block_size}")
    return block_size


def check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                           sequence_id=None, chain_id=None) -> tuple[int, int, int]:
    """Validate the contract's inputs; return (B, L, H). Errors name the argument.

    ``v`` may be None (the attention map alone needs no values).
    """
    given = dict(zip(_VECTORS, (q_rot, k_rot, q_dist, k_dist, v)))
    if v is None:
        del given["v"]
    for name, t in given.items():
        require_tensor(name, t)
        if t.dim() != 4 or t.shape[-1] != 3:
            raise ValueError(f"{name} must have shape (B, L, H, 3); got {tuple(t.shape)}")
        require_float_dtype(name, t)
    shape = q_rot.shape
    for name, t in given.items():
        if name == "v" and t.shape[:2] == shape[:2] and shape[2] and t.shape[2] % shape[2] == 0 and t.shape[2]:
            continue  # m >= 1 value vectors per head
        if t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q_rot has {tuple(shape)}: "
                             "B, L and H must match" + (" (v: H·m heads, m >= 1 values per head)"
                                                        if name == "v" else ""))
    b, length, h, _ = shape
    for name, w in (("rot_weight", rot_weight), ("dist_weight", dist_weight)):
        require_tensor(name, w)
        require_shape(name, w, (h,), "(H,)")
        require_float_dtype(name, w)
    require_bool_mask("key_mask", key_mask, (b, length), "(B, L)")
    require_integer_ids("sequence_id", sequence_id, (b, length))
    require_integer_ids("chain_id", chain_id, (b, length))
    require_same_device({**given, "rot_weight": rot_weight, "dist_weight": dist_weight, "key_mask": key_mask,
                         "sequence_id": sequence_id, "chain_id": chain_id}, "q_rot")
    for name, w in (("rot_weight", rot_weight), ("dist_weight", dist_weight)):
        require_head_weight(name, w)  # on a GPU: a host synchronisation each
    return b, length, h


def values_heads_first(v: Tensor, heads: int) -> Tensor:
    """(B, L, H·m, 3) → (B, H, L, 3m): a head's m value vectors side by side, so that one
    map multiplies all of them (a view-free transpose for m = 1)."""
    b, length, hm, c = v.shape
    m = hm // heads if heads else 1
    return v.reshape(b, length, heads, m * c).transpose(1, 2)


def values_back(out: Tensor) -> Tensor:
    """The inverse of :func:`values_heads_first`: (B, H, L, 3m) → (B, L, H·m, 3)."""
    b, h, length, mc = out.shape
    return out.transpose(1, 2).reshape(b, length, h * (mc // 3), 3)
