"""Geometric attention with Triton kernels: launch, autograd, and the ``impl="triton"`` entry.

This is the only module that imports Triton (through :mod:`geoattn.kernels`); the
dispatcher in ``geometric.py`` imports it only for ``impl="triton"``, so ``import geoattn``
never needs Triton. The kernels themselves live in :mod:`geoattn.kernels`: the streaming
forward and backward for any L (:mod:`geoattn.kernels.streaming`) and the short-sequence
kernels for L ≤ 32 (:mod:`geoattn.kernels.small`).

Before the kernels run, PyTorch folds the constants into the inputs (outside the autograd
Function, so autograd differentiates the folding and hands the weights their gradients):

    a[i] = q_r[i] · w_r · log2(e)/√3         (the rotation term scales only q_r)
    c    = w_d · log2(e)/√3                  (one number per head)
    S[i,j] = a[i] · k_r[j] − c · ‖q_d[i] − k_d[j]‖ = A[i,j] · log2(e)

so the kernels work in base 2 (``exp2``, one MUFU instruction) and see no ``w_r`` at all;
the sequence bias +1 becomes +log2(e) inside them. The distance weight ``c`` is *not*
folded into the points, although ‖c·q − c·k‖ = c·‖q − k‖ for c ≥ 0: folded, a head with
w_d = 0 collapses every point to the origin and its gradient ∂out/∂w_d = Σ ∂out/∂A ·
‖q_d − k_d‖ would come out as 0, and a negative weight would flip sign silently.

Layout: every (B, L, H, 3) input becomes (B·H, 3, LP) fp32 *planes*, zero past L, with LP
a multiple of every block size in use (256 on a GPU), or 16 or 32 for the short-sequence
kernels. Per-batch rows are (B, LP): the key bias (0, or −inf for a masked key and past
L) and the sequence and chain ids as int32 (compared per pair inside the kernels, never
an (L, L) tensor). Masked keys' k_rot, k_dist and v are zeroed with ``where`` before the
kernels (``masking.zero_masked_keys``), so inf or NaN there never meets a 0 weight.

Launch: the autotuner's key is the next power of two of L (capped at ``TUNE_MAX_L``) and a
bucket of B·H (not the exact L: every new length would re-benchmark every configuration);
configs whose blocks exceed the bucket are pruned, and Triton keeps the timings in its
cache directory where it can (``cache_results``). When B·H·⌈L/128⌉
programs cannot fill the GPU, the forward splits the keys across programs too and merges
their partial states with the online-softmax merge (``geoattn.online_softmax``).

Numerics: math and accumulation in fp32 for every input dtype. fp16/bf16 inputs give
an output in their dtype; fp64 inputs are *computed in fp32* and returned as fp64 (use
``impl="naive"`` for an fp64 reference). A query row without any key gets output 0,
log-sum-exp +inf (so the backward's P = 2^(S − lse) is exactly 0) and gradient 0. At
coincident points q_d[i] = k_d[j] the gradient of the norm is taken as 0, as in
``geoattn.geometric.safe_norm``. Non-finite inputs never reach the kernels: they are
replaced by 0, and the rows that read one through a kept pair are NaN (``geoattn.masking``),
so a NaN in one chain reaches no other chain; so are vectors too large for fp32 arithmetic
(a coordinate of about 2.3e18 from their chain's centre: ``masking.finite_geometric_inputs``),
so no score overflows in the kernels and such rows are NaN, never a silent 0, as in every
implementation. q_d and k_d are centred per chain first (``key_centre``). Nothing
reads memory the kernels did not write: Δ = G·O is computed on the first L positions
only and is 0 past them.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..contract import check_block_size, check_geometric_inputs, compute_dtype
from ..distances import key_centre
from ..masking import finite_geometric_inputs, nan_where, zero_masked_keys
from ..online_softmax import OnlineSoftmaxState, online_softmax_merge, online_softmax_result
from . import triton  # the package's import explains a missing triton
from .common import LOG2E
from .configs import EXPLICIT_WARPS, GPU_PAD, GPU_SHAPES, NUM_STAGES, SMALL_MAX_L, SMALL_SHAPES
from .offline import KERNELS, compile_signatures
from .small import _small_bwd_kernel, _small_fwd_kernel
from .streaming import _bwd_dkdv_kernel, _bwd_dq_kernel, _fwd_kernel

__all__ = ["triton_geometric_attention", "triton_core", "KERNELS", "GPU_SHAPES", "compile_signatures",
           "INTERPRETED", "key_splits", "autotune_key", "prune_configs", "TUNE_MAX_L"]

_SCALE = LOG2E / math.sqrt(3.0)  # folds the 1/√3 of the logits and the switch to base 2
_LN2 = math.log(2.0)

# triton.jit decides at decoration time whether a function is compiled or interpreted
# (TRITON_INTERPRET=1): for our kernels that was when geoattn.kernels was imported, for
# Triton's own library functions (tl.sum, tl.max) when triton was first imported. The
# interpreter works only if both agree. Asking the decorated objects works on every
# Triton 3.x, Colab's included.
INTERPRETED = type(_fwd_kernel).__name__ == "InterpretedFunction"
_LIBRARY_INTERPRETED = type(triton.language.sum).__name__ == "InterpretedFunction"


# ----------------------------------------------------------------------------------------
# Launch configuration: autotuned on a GPU, a single cheap config under the interpreter
# ----------------------------------------------------------------------------------------


def _configs(name):
    if INTERPRETED:
        # The interpreter runs each block iteration as numpy calls (milliseconds each): one
        # config, so no benchmarking, with blocks large enough to keep iterations few.
        return [triton.Config({"BLOCK_Q": 32, "BLOCK_K": 32}, num_warps=1)]
    return [triton.Config({"BLOCK_Q": bq, "BLOCK_K": bk}, num_warps=w, num_stages=NUM_STAGES)
            for bq, bk, w in GPU_SHAPES[name]]


# Planes are padded to a multiple of every block size in use, so no block reads past them.
_PAD = 32 if INTERPRETED else GPU_PAD

# EVEN_L: BLOCK_K divides L, so the key stream (forward, dQ) has no tail block to mask.
_even = triton.heuristics({"EVEN_L": lambda a: a["L"] % a["BLOCK_K"] == 0})
_fwd_heur, _dkdv_heur, _dq_heur = _even(_fwd_kernel), _bwd_dkdv_kernel, _even(_bwd_dq_kernel)
_KEY = ["L_KEY", "BH_KEY", "HAS_MASK", "HAS_SEQ", "HAS_CHAIN"]


def prune_configs(configs, named_args, **kwargs):
    """The configs that can win at the tuned length: blocks within the next power of two of L.

    A block longer than that only adds idle lanes to the same number of programs, so it
    cannot beat a shorter one; benchmarking it would cost a compilation and a timing.
    Decided from L_KEY, the tuning key, so that every length of a bucket sees the same
    configs. Keeps the smallest config when none fits.
    """
    fits = [c for c in configs if max(c.kwargs["BLOCK_Q"], c.kwargs["BLOCK_K"]) <= named_args["L_KEY"]]
    return fits or [min(configs, key=lambda c: c.kwargs["BLOCK_Q"] * c.kwargs["BLOCK_K"])]


# Triton ≥ 3.2 can keep the autotuner's timings in its cache directory, so that a second
# process (the test suites, the benchmark) does not re-benchmark what the first one tuned.
_AUTOTUNE_OPTIONS = {"prune_configs_by": {"early_config_prune": prune_configs}}
if "cache_results" in inspect.signature(triton.autotune).parameters:
    _AUTOTUNE_OPTIONS["cache_results"] = True
_fwd_tuned, _dkdv_tuned, _dq_tuned = (
    triton.autotune(configs=_configs(raw.__name__), key=_KEY + (["SPLIT"] if raw is _fwd_kernel else []),
                    **_AUTOTUNE_OPTIONS)(k)
    for raw, k in zip(KERNELS, (_fwd_heur, _dkdv_heur, _dq_heur))
)
# Fused multiply-adds on (Triton 3.9 warns when this is left implicit); ignored by the interpreter.
_LAUNCH = {"enable_fp_fusion": True}


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


#: Lengths from here on share one tuning: the first of them is tuned, the longer ones reuse it.
TUNE_MAX_L = 4096


def autotune_key(bh: int, length: int) -> tuple[int, int]:
    """The autotuner's (L_KEY, BH_KEY): the next power of two of L up to ``TUNE_MAX_L``, and
    of B·H up to 2^12.

    Lengths in one bucket share a configuration (an exact-L key re-benchmarked every
    configuration for every new length, 2-3 s each). From 4096 on, every config has at
    least 16 query blocks per head and a key loop of at least 16 blocks, so the winner is
    taken to stay the same, while benchmarking 6 configs at L = 32768, H = 256 would take
    tens of seconds: the longest length tuned is the first one at or past the cap. B·H
    beyond 4096 programs per query block fills any GPU, so the best configuration no
    longer depends on it.
    """
    return min(_next_pow2(length), TUNE_MAX_L), min(_next_pow2(bh), 1 << 12)


def key_splits(bh: int, length: int, n_sm: int, block_q: int = 128, block_k: int = 32) -> int:
    """Programs per query block in the forward: 1, or enough to give every SM about two.

    B·H·⌈L/block_q⌉ programs (the typical query block) underfill ``n_sm`` SMs at small B·H
    and moderate L (B = 1, H = 8, L ≤ 2048 on 132 SMs). Splitting the keys multiplies the
    programs; each split keeps at least 4 key blocks of ``block_k`` (merging costs one
    O(L) pass per split), and there are at most 16.
    """
    programs = bh * triton.cdiv(length, block_q)
    if programs == 0 or programs >= n_sm:
        return 1
    return max(1, min(triton.cdiv(2 * n_sm, programs), (length // block_k) // 4, 16))


def _sm_count(device) -> int:
    if INTERPRETED or device.type != "cuda":
        return 1 << 30  # the interpreter gains nothing from more programs
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch(tuned, heur, grid_axis, bh, length, block_size, args, splits=1):
    """Launch ``tuned`` (autotuned) or, with an explicit ``block_size``, ``heur`` directly."""
    if block_size is None:
        grid = lambda meta: (bh, triton.cdiv(length, meta[grid_axis]), splits)  # noqa: E731
        tuned[grid](*args, **_LAUNCH)
    else:
        grid = (bh, triton.cdiv(length, block_size), splits)
        heur[grid](*args, BLOCK_Q=block_size, BLOCK_K=block_size, num_warps=EXPLICIT_WARPS,
                   num_stages=NUM_STAGES, **_LAUNCH)


def _empty(*shape, device) -> Tensor:
    """Memory the kernels overwrite: never read before they wrote it (tests fill it with NaN)."""
    return torch.empty(shape, device=device, dtype=torch.float32)


def _merge_splits(o_part: Tensor, m_part: Tensor, l_part: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Merge the forward's per-split states (base 2) into O and the base-2 LSE (+inf past L).

    ``o_part`` (S, B·H, 3, LP) unnormalised, ``m_part`` and ``l_part`` (S, B·H, LP). The
    library's merge works in base e: m·ln 2 is the same maximum in base e, and the merged
    log-sum-exp comes back to base 2 as lse·log2(e). Only the first L positions are read.
    """
    state = None
    for m, l, o in zip(m_part[:, :, :length], l_part[:, :, :length], o_part[..., :length]):
        part = OnlineSoftmaxState(m * _LN2, l, o.transpose(1, 2))
        state = part if state is None else online_softmax_merge(state, part)
    z, lse = online_softmax_result(state)
    bh, _, lp = o_part.shape[1:]
    o = torch.zeros((bh, 3, lp), device=o_part.device, dtype=torch.float32)
    o[:, :, :length] = z.transpose(1, 2)
    lse2 = torch.full((bh, lp), float("inf"), device=o_part.device, dtype=torch.float32)
    lse2[:, :length] = lse * LOG2E
    return o, lse2


def _small_launch(kernel, bh, lp, args):
    heads, warps = SMALL_SHAPES[lp][kernel.__name__]
    kernel[(triton.cdiv(bh, heads),)](*args, LP=lp, HEADS=heads, num_warps=warps, **_LAUNCH)


class _GeometricAttentionFn(torch.autograd.Function):
    """Autograd wrapper over the planes.

    Inputs: five (B·H, 3, LP) fp32 planes, zero past L; c (H,); rows: a tuple (bias, seq,
    chain) of (B, LP) tensors or None (bias 0 / −inf, −inf past L; ids int32); H; L;
    block_size or None; small (the short-sequence kernels, LP ∈ SMALL_SHAPES); splits (key
    splits of the forward). Output: O as a (B·H, 3, LP) plane.
    """

    @staticmethod
    def forward(ctx, qr, kr, qd, kd, v, c, rows, n_heads, length, block_size, small, splits):
        bh, _, lp = qr.shape
        dev = v.device
        bias, seq, chain = rows
        flags = (bias is not None, seq is not None, chain is not None)
        dummy = c  # never read: the kernel's flag for that row is off
        row_args = tuple(dummy if t is None else t for t in rows)
        key = autotune_key(bh, length)
        if small:
            o = _empty(bh, 3, lp, device=dev)
            lse = _empty(bh, lp, device=dev)
            _small_launch(_small_fwd_kernel, bh, lp, (qr, kr, qd, kd, v, c, *row_args, o, lse, bh, n_heads, length,
                                                      *flags))
        elif splits > 1:
            o_part = _empty(splits, bh, 3, lp, device=dev)
            m_part, l_part = _empty(splits, bh, lp, device=dev), _empty(splits, bh, lp, device=dev)
            _launch(_fwd_tuned, _fwd_heur, "BLOCK_Q", bh, length, block_size,
                    (qr, kr, qd, kd, v, c, *row_args, o_part, m_part, l_part, n_heads, length, lp, *key,
                     *flags, True), splits)
            o, lse = _merge_splits(o_part, m_part, l_part, length)
        else:
            o = _empty(bh, 3, lp, device=dev)
            lse = torch.full((bh, lp), float("inf"), device=dev, dtype=torch.float32)  # +inf: P = 0
            _launch(_fwd_tuned, _fwd_heur, "BLOCK_Q", bh, length, block_size,
                    (qr, kr, qd, kd, v, c, *row_args, o, lse, dummy, n_heads, length, lp, *key, *flags, False))
        ctx.save_for_backward(qr, kr, qd, kd, v, c, *row_args, o, lse)
        ctx.flags, ctx.n_heads, ctx.length, ctx.block_size, ctx.small = flags, n_heads, length, block_size, small
        return o

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: say so, loudly
    def backward(ctx, do):
        qr, kr, qd, kd, v, c, bias, seq, chain, o, lse = ctx.saved_tensors
        bh, _, lp = qr.shape
        length, dev = ctx.length, qr.device
        do = do.contiguous().float()  # zero past L: the padding's share of the output is sliced off
        # Δ[i] = G[i]·O[i] = Σ_j P[i,j] (G[i]·v[j]), (B·H, LP). Only the first L positions:
        # O's padding may be memory no kernel wrote, and 0·NaN would be NaN.
        delta = torch.zeros((bh, lp), device=dev, dtype=torch.float32)
        delta[:, :length] = (do[:, :, :length] * o[:, :, :length]).sum(1)
        dkr, dkd, dv, dqr, dqd = (_empty(bh, 3, lp, device=dev) for _ in range(5))
        dw = _empty(bh, lp, device=dev)
        common = (qr, kr, qd, kd, v, c, bias, seq, chain, lse, delta, do)
        if ctx.small:
            _small_launch(_small_bwd_kernel, bh, lp, common + (dqr, dkr, dqd, dkd, dv, dw, bh, ctx.n_heads, length,
                                                               *ctx.flags))
        else:
            tail = (ctx.n_heads, length, lp, *autotune_key(bh, length), *ctx.flags)
            _launch(_dkdv_tuned, _dkdv_heur, "BLOCK_K", bh, length, ctx.block_size, common + (dkr, dkd, dv) + tail)
            _launch(_dq_tuned, _dq_heur, "BLOCK_Q", bh, length, ctx.block_size, common + (dqr, dqd, dw) + tail)
        dc = dw[:, :length].reshape(-1, ctx.n_heads, length).sum((0, 2))
        return dqr, dkr, dqd, dkd, dv, dc, None, None, None, None, None, None


class _EmptyFn(torch.autograd.Function):
    """B, L or H = 0: an empty output whose backward gives each input a zero gradient of its
    own shape (zero-size for the vectors; zeros for the weights when only B or L is 0)."""

    @staticmethod
    def forward(ctx, *inputs):
        ctx.shapes = [(t.shape, t.dtype, t.device) for t in inputs]
        return inputs[4].new_empty(inputs[4].shape)

    @staticmethod
    def backward(ctx, grad):
        return tuple(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.shapes)


def _planes(x: Tensor, padded: int) -> Tensor:
    """(B, L, H, 3) → (B·H, 3, padded) fp32, zero past L (differentiable)."""
    planes = F.pad(rearrange(x.float(), "b l h c -> (b h) c l"), (0, padded - x.shape[1]))
    return planes.contiguous()  # a zero pad may hand back the strided view itself


def _id_rows(ids: Tensor | None, padded: int) -> Tensor | None:
    """(B, L) integer ids → (B, padded) int32 that compare equal exactly where ``ids`` do.

    int32 and narrower convert exactly; wider ids are replaced by their rank within the
    row (a sort and a cumsum, no host sync), since only equality within a batch row matters.
    """
    if ids is None:
        return None
    if ids.dtype in (torch.int64, torch.uint64, torch.uint32):
        ordered, order = ids.to(torch.int64).sort(dim=1)
        step = torch.zeros_like(ordered, dtype=torch.int32)
        step[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        ids = torch.empty_like(step).scatter_(1, order, step.cumsum(1, dtype=torch.int32))
    return F.pad(ids.to(torch.int32), (0, padded - ids.shape[1]), value=-1).contiguous()


def _padded_length(length: int, block_size: int | None) -> tuple[int, bool]:
    """(LP, small): the planes' padded length and whether the short-sequence kernels run."""
    if block_size is None and length <= SMALL_MAX_L:
        return min(lp for lp in SMALL_SHAPES if lp >= length), True
    unit = block_size or _PAD
    return triton.cdiv(length, unit) * unit, False


def _attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, sequence_id=None,
               chain_id=None, block_size=None, splits=None, small=None):
    """:func:`triton_core` with the launch choices open to tests: ``splits`` (key splits of
    the forward; None: :func:`key_splits`) and ``small`` (False forces the streaming kernels)."""
    b, length, h, _ = q_rot.shape
    if v.numel() == 0:
        return _EmptyFn.apply(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight)
    k_rot, k_dist, v = zero_masked_keys(key_mask, k_rot, k_dist, v)
    # Non-finite vectors, and vectors too large for fp32 arithmetic, are replaced and mark
    # NaN the rows that read them through a kept pair (geoattn.masking): the kernels see
    # finite numbers only, overflow nowhere and need no per-pair select.
    # (the kernels compute in fp32, so "too large" is judged for fp32)
    (q_rot, k_rot, q_dist, k_dist, v_in), (nan_rows, _) = finite_geometric_inputs(
        q_rot, k_rot, q_dist, k_dist, v, key_mask, chain_id, rot_weight=rot_weight, dist_weight=dist_weight)
    q_dist, k_dist = _centred(q_dist, k_dist, key_mask, chain_id, compute_dtype(v))
    padded, use_small = _padded_length(length, block_size)
    if small is False and use_small:
        padded, use_small = _padded_length(length, _PAD)[0], False
    if splits is None:
        splits = 1 if use_small else key_splits(b * h, length, _sm_count(v.device))
    a = q_rot.float() * (rot_weight.float() * _SCALE)[:, None]  # the rotation term scales only q_rot
    c = (dist_weight.float() * _SCALE).contiguous()
    bias = None
    if key_mask is not None:
        bias = torch.full((b, padded), float("-inf"), device=v.device, dtype=torch.float32)
        bias[:, :length].masked_fill_(key_mask, 0.0)
    rows = (bias, _id_rows(sequence_id, padded), _id_rows(chain_id, padded))
    planes = [_planes(t, padded) for t in (a, k_rot, q_dist, k_dist, v_in)]  # O(L) PyTorch passes, not O(L²)
    with torch.cuda.device(v.device) if v.is_cuda else contextlib.nullcontext():  # launch on the inputs' GPU
        o = _GeometricAttentionFn.apply(*planes, c, rows, h, length, block_size, use_small, splits)
    return rearrange(o[:, :, :length], "(b h) c l -> b l h c", b=b).to(v.dtype) + nan_where(nan_rows, v)


def _centred(q_dist: Tensor, k_dist: Tensor, key_mask, chain_id, dtype) -> tuple[Tensor, Tensor]:
    """q_d and k_d shifted by their chain's key centre (``geoattn.distances.key_centre``),
    in ``dtype``: no score changes, and points far from the origin keep their digits. The
    centre is a constant for autograd (distances do not depend on it)."""
    q_dist, k_dist = q_dist.to(dtype), k_dist.to(dtype)
    centre = key_centre(k_dist.detach().transpose(1, 2), key_mask, chain_id).transpose(1, 2)
    return q_dist - centre, k_dist - centre


def _check_device(q_rot):
    if (not q_rot.is_cuda and not INTERPRETED) or INTERPRETED != _LIBRARY_INTERPRETED:
        late = ""
        if INTERPRETED != _LIBRARY_INTERPRETED or os.environ.get("TRITON_INTERPRET"):
            late = " (TRITON_INTERPRET was set only after triton had been imported)"
        raise ValueError(
            "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run Triton's interpreter on the CPU; "
            f"q_rot is on {q_rot.device}{late}. Set TRITON_INTERPRET=1 before anything imports triton "
            "(e.g. at the top of the notebook or script), or use impl='chunked'."
        )


def triton_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *, sequence_id=None,
                chain_id=None, block_size=None):
    """The Triton implementation without input validation (the dispatcher validated).

    Inputs must be CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before
    triton was first imported (Triton's interpreter: correct but slow). ``block_size`` (one
    of ``contract.TRITON_BLOCK_SIZES``) fixes BLOCK_Q = BLOCK_K and skips autotuning and
    the short-sequence kernels. ``sequence_id`` and ``chain_id`` are compared per pair
    inside the kernels. Math in fp32; the output has ``v``'s dtype (fp64 inputs are
    computed in fp32). Differentiable in all seven tensor inputs. With m > 1 values per
    head (``v`` (B, L, H·m, 3)) q and k are repeated m times: the kernels take 3 values.
    """
    _check_device(q_rot)
    m = v.shape[2] // max(1, q_rot.shape[2])
    if m > 1:  # m values per head: the kernels load 3 value planes, so each map is made m times
        q_rot, k_rot, q_dist, k_dist = (t.repeat_interleave(m, dim=2) for t in (q_rot, k_rot, q_dist, k_dist))
        rot_weight, dist_weight = rot_weight.repeat_interleave(m), dist_weight.repeat_interleave(m)
    return _attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask, sequence_id, chain_id,
                      block_size)


def triton_geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                               sequence_id=None, chain_id=None, block_size=None):
    """Geometric attention with the Triton kernels; the contract of ``geoattn.geometric_attention``.
    Validates its inputs (the dispatcher calls :func:`triton_core` instead)."""
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask,
                           sequence_id=sequence_id, chain_id=chain_id)
    block_size = check_block_size(block_size, "triton")
    return triton_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask, sequence_id=sequence_id,
                       chain_id=chain_id, block_size=block_size)
