"""Triton kernels for geometric attention: a fused forward and a recomputing backward pass.

This is the only module of ``geoattn`` that imports Triton; the dispatcher in ``geometric.py``
imports it only for ``impl="triton"``, so ``import geoattn`` never needs Triton.

The math, per batch b and head h (see ``geometric.py``), is

    A[i,j]   = w_r · (q_r[i] · k_r[j]) / √3  −  w_d · ‖q_d[i] − k_d[j]‖ / √3
    out[i]   = Σ_j softmax_j(A)[i,j] · v[j]

Before the kernels run, PyTorch folds the constants into the inputs (outside the autograd
Function, so autograd differentiates the folding and hands the weights their gradients):

    a[i] = q_r[i] · w_r · log2(e)/√3         (the rotation term scales only q_r)
    c    = w_d · log2(e)/√3                  (one number per head)
    S[i,j] = a[i] · k_r[j] − c · ‖q_d[i] − k_d[j]‖ = A[i,j] · log2(e)

so the kernels work in base 2 (``exp2``, one MUFU instruction) and see no ``w_r`` at all.
The distance weight ``c`` is *not* folded into the points, although ‖c·q − c·k‖ = c·‖q − k‖
for c ≥ 0: folded, a head with w_d = 0 collapses every point to the origin and its
gradient ∂out/∂w_d = Σ ∂out/∂A · ‖q_d − k_d‖ would come out as 0, and a negative weight
would flip sign silently. One scalar per head costs the kernel one FFMA in place of an FADD.

Layout: every (B, L, H, 3) input becomes (B·H, 3, LP) fp32 *planes*, three contiguous rows
x, y, z per head, zero-padded to a length LP that is a multiple of every block size in use
(256 on a GPU). So a block of keys is three coalesced, vectorized loads (d = 3 is far too
small for ``tl.dot``; the whole kernel is scalar FMA work) and no load or store needs a
bounds mask. Score tiles are laid out with the reduced axis first: [keys, queries] in the
forward and dQ kernels, [queries, keys] in the dK/dV kernel, and every reduction runs over
axis 0. Keys past L are masked only in the tail block of the key stream, which the
constexpr ``EVEN_L`` (BLOCK_K divides L) removes altogether; queries past L get
LSE = +inf, which makes their P exactly 0 in the backward.

Numerics: math and accumulation in fp32 for every input dtype. fp16/bf16 inputs give
an output in their dtype; fp64 inputs are *computed in fp32* and returned as fp64 (use
``impl="naive"`` for an fp64 reference). A query row without any key (its batch's
``key_mask`` all False) gets output 0, log-sum-exp +inf (so the backward's
P = 2^(S − lse) is exactly 0) and gradient 0. At coincident points q_d[i] = k_d[j] the
gradient of the norm is taken as 0, as in ``geoattn.geometric.safe_norm``.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.autograd.function import once_differentiable

from .contract import check_block_size, check_geometric_inputs
from .masking import zero_masked_keys

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "impl='triton' needs the triton package (pip install 'geoattn[triton]'); "
        "use impl='chunked' on machines without it"
    ) from err

__all__ = ["triton_geometric_attention", "KERNELS", "GPU_SHAPES", "compile_signatures", "INTERPRETED"]

_LOG2E = 1.4426950408889634
_LN2 = tl.constexpr(0.6931471805599453)  # read inside kernels: must be a constexpr
_SCALE = _LOG2E / math.sqrt(3.0)  # folds the 1/√3 of the logits and the switch to base 2


# ----------------------------------------------------------------------------------------
# Helpers (inlined into the kernels)
# ----------------------------------------------------------------------------------------


@triton.jit
def _load3(ptr, offs, LP):
    """The x, y, z rows of one head's (3, LP) plane at positions ``offs``.

    Planes are padded to LP ≥ every block's end, so no load needs a bounds mask, and LP is
    a multiple of 16, so the loads vectorize.
    """
    return tl.load(ptr + offs), tl.load(ptr + LP + offs), tl.load(ptr + 2 * LP + offs)


@triton.jit
def _store3(ptr, offs, LP, x, y, z):
    tl.store(ptr + offs, x)
    tl.store(ptr + LP + offs, y)
    tl.store(ptr + 2 * LP + offs, z)


@triton.jit
def _score(ax, ay, az, kx, ky, kz, px, py, pz, rx, ry, rz, c, base):
    """S = a·k − c·‖p − r‖ + base for broadcast query/key operands, and the pieces of the norm.

    Query operands (a = folded q_r, p = q_d) and key operands (k = k_r, r = k_d) arrive
    already shaped as a row and a column, so the same code serves both tile layouts.
    ``base`` (0, or −LSE in the backward) starts the dot product's FMA chain, so subtracting
    it costs no extra instruction. Returns S, the difference d = p − r, ‖d‖² and ‖d‖.
    """
    dot = ax * kx + (ay * ky + (az * kz + base))
    dx = px - rx
    dy = py - ry
    dz = pz - rz
    sq = dx * dx + dy * dy + dz * dz
    n = tl.sqrt(sq)
    return dot - c * n, dx, dy, dz, sq, n


@triton.jit
def _inv_norm(sq):
    """1/‖d‖ from ‖d‖², for the norm's gradient u = d/‖d‖, which must be 0 at d = 0.

    At d = 0 this returns 1e15 instead of inf, and u = d·1e15 = 0 exactly, since every
    component of d is 0. One FMNMX and one MUFU.RSQ: ``ds / n`` would cost a full-range
    IEEE division per pair, and a ``where`` guard a compare and a select more.
    """
    return tl.math.rsqrt(tl.maximum(sq, 1e-30))


@triton.jit
def _mask_keys(s, bias_row, offs_k, L, HAS_MASK: tl.constexpr, TAIL: tl.constexpr):
    """Masked keys get S = −inf. The bias row (0 or −inf) is padded with −inf past L; without
    a key mask only the tail block, which runs past L, needs a compare and a select."""
    if HAS_MASK:
        s += tl.load(bias_row + offs_k)[:, None]
    elif TAIL:
        s = tl.where((offs_k < L)[:, None], s, float("-inf"))
    return s


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


@triton.jit
def _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, c, KR, KD, V, bias_row, start, L, LP,
              HAS_MASK: tl.constexpr, TAIL: tl.constexpr, BLOCK_K: tl.constexpr):
    """One key block of the online softmax; returns the updated (m, l, o)."""
    offs_k = start + tl.arange(0, BLOCK_K)
    kx, ky, kz = _load3(KR, offs_k, LP)
    rx, ry, rz = _load3(KD, offs_k, LP)
    vx, vy, vz = _load3(V, offs_k, LP)
    s, dx, dy, dz, sq, n = _score(ax, ay, az, kx[:, None], ky[:, None], kz[:, None],
                                  px, py, pz, rx[:, None], ry[:, None], rz[:, None], c, 0.0)
    s = _mask_keys(s, bias_row, offs_k, L, HAS_MASK, TAIL)
    m_new = tl.maximum(m, tl.max(s, axis=0))
    # A row that has seen no key yet keeps m = -inf; subtract 0 instead (no inf - inf).
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_ref)
    p = tl.exp2(s - m_ref[None, :])
    l = l * alpha + tl.sum(p, axis=0)
    ox = ox * alpha + tl.sum(p * vx[:, None], axis=0)
    oy = oy * alpha + tl.sum(p * vy[:, None], axis=0)
    oz = oz * alpha + tl.sum(p * vz[:, None], axis=0)
    return m_new, l, ox, oy, oz


@triton.jit
def _fwd_kernel(
    QR, KR, QD, KD, V, W, BIAS, O, LSE,
    H, L, LP,
    HAS_MASK: tl.constexpr, EVEN_L: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Forward pass: one program per (head b·h, block of BLOCK_Q queries), streaming keys.

    Math (base 2; a = folded q_r, c = W[h], bias = 0 or −inf per key):

        S[j,i] = a[i]·k_r[j] − c·‖q_d[i] − k_d[j]‖ + bias[j]          tile [BLOCK_K, BLOCK_Q]
        m_i ← max(m_i, max_j S),  l_i ← l_i·2^(m_old − m_i) + Σ_j 2^(S − m_i)
        o_i ← o_i·2^(m_old − m_i) + Σ_j 2^(S − m_i)·v[j]               (online softmax)
        O[i] = o_i / l_i,   LSE[i] = m_i + log2(l_i)    (O = 0, LSE = +inf when l_i = 0)

    Full key blocks run without any bounds check; the tail block (``EVEN_L`` false: BLOCK_K
    does not divide L) masks the keys past L. Queries past L compute on zero padding and
    get LSE = +inf, which zeroes their P in the backward.

    Memory traffic per launch (fp32 planes, Q = BLOCK_Q): reads 24·B·H·L bytes of queries
    and B·H·L·⌈L/Q⌉·(36 + 4·HAS_MASK) bytes of keys and values (k_r, k_d, v and the bias
    row, once per query block, mostly from L2); writes 12·B·H·L bytes of O and 4·B·H·L of
    LSE. Work is B·H·L² pairs of 22-27 instructions each in the loop's SASS, against at most
    40/Q bytes of (cached) loads per pair: compute-bound.
    """
    bh = tl.program_id(0)
    qb = tl.program_id(1)
    base = bh.to(tl.int64) * 3 * LP
    c = tl.load(W + bh % H)
    bias_row = BIAS + (bh // H).to(tl.int64) * LP

    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ax, ay, az = _load3(QR + base, offs_q, LP)
    px, py, pz = _load3(QD + base, offs_q, LP)
    ax, ay, az = ax[None, :], ay[None, :], az[None, :]
    px, py, pz = px[None, :], py[None, :], pz[None, :]

    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_Q], tl.float32)
    ox = tl.zeros([BLOCK_Q], tl.float32)
    oy = tl.zeros([BLOCK_Q], tl.float32)
    oz = tl.zeros([BLOCK_Q], tl.float32)
    full = (L // BLOCK_K) * BLOCK_K
    for start in range(0, full, BLOCK_K):
        m, l, ox, oy, oz = _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, c, KR + base, KD + base,
                                     V + base, bias_row, start, L, LP, HAS_MASK, False, BLOCK_K)
    if not EVEN_L:
        m, l, ox, oy, oz = _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, c, KR + base, KD + base,
                                     V + base, bias_row, full, L, LP, HAS_MASK, True, BLOCK_K)

    has_key = l > 0.0
    inv_l = tl.where(has_key, 1.0 / tl.where(has_key, l, 1.0), 0.0)
    _store3(O + base, offs_q, LP, ox * inv_l, oy * inv_l, oz * inv_l)
    lse = tl.where(has_key & (offs_q < L), m + tl.log2(tl.where(has_key, l, 1.0)), float("inf"))
    tl.store(LSE + bh.to(tl.int64) * LP + offs_q, lse)


# ----------------------------------------------------------------------------------------
# Backward: dK, dV (one program per key block) and dQ (one program per query block)
# ----------------------------------------------------------------------------------------


@triton.jit
def _bwd_dkdv_kernel(
    QR, KR, QD, KD, V, W, BIAS, LSE, DELTA, DO, DKR, DKD, DV,
    H, L, LP,
    HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward for keys and values: one program per (b·h, block of BLOCK_K keys), streaming queries.

    Recomputes P from the stored log-sum-exp, then (tile [BLOCK_Q, BLOCK_K], reduced over
    the queries on axis 0; G = ∂loss/∂O, Δ[i] = G[i]·O[i], u = (q_d[i] − k_d[j])/‖·‖, 0 at 0):

        P[i,j]  = 2^(S[i,j] − LSE[i])
        dV[j]   = Σ_i P[i,j] · G[i]
        dS[i,j] = P[i,j] · (G[i]·v[j] − Δ[i])                 (∂loss/∂(S·ln 2))
        dK_r[j] = ln2 · Σ_i dS[i,j] · a[i]
        dK_d[j] = ln2 · c · Σ_i dS[i,j] · u[i,j]

    No bounds checks at all: queries past L have LSE = +inf (so P = 0) and zero G and Δ;
    keys past L compute on zero padding and their results land in the padding.

    Memory traffic per launch (K = BLOCK_K): reads 36·B·H·L bytes of keys/values (+4 of bias)
    and B·H·L·⌈L/K⌉·44 bytes of queries, G, LSE and Δ; writes 36·B·H·L bytes (dK_r, dK_d, dV).
    """
    bh = tl.program_id(0)
    kb = tl.program_id(1)
    base = bh.to(tl.int64) * 3 * LP
    row = bh.to(tl.int64) * LP
    c = tl.load(W + bh % H)

    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    kx, ky, kz = _load3(KR + base, offs_k, LP)
    rx, ry, rz = _load3(KD + base, offs_k, LP)
    vx, vy, vz = _load3(V + base, offs_k, LP)
    kx, ky, kz = kx[None, :], ky[None, :], kz[None, :]
    rx, ry, rz = rx[None, :], ry[None, :], rz[None, :]
    vx, vy, vz = vx[None, :], vy[None, :], vz[None, :]
    if HAS_MASK:
        bias = tl.load(BIAS + (bh // H).to(tl.int64) * LP + offs_k)[None, :]

    dkx = tl.zeros([BLOCK_K], tl.float32)
    dky = tl.zeros([BLOCK_K], tl.float32)
    dkz = tl.zeros([BLOCK_K], tl.float32)
    drx = tl.zeros([BLOCK_K], tl.float32)
    dry = tl.zeros([BLOCK_K], tl.float32)
    drz = tl.zeros([BLOCK_K], tl.float32)
    dvx = tl.zeros([BLOCK_K], tl.float32)
    dvy = tl.zeros([BLOCK_K], tl.float32)
    dvz = tl.zeros([BLOCK_K], tl.float32)
    for start in range(0, L, BLOCK_Q):
        offs_q = start + tl.arange(0, BLOCK_Q)
        ax, ay, az = _load3(QR + base, offs_q, LP)
        px, py, pz = _load3(QD + base, offs_q, LP)
        gx, gy, gz = _load3(DO + base, offs_q, LP)
        lse = tl.load(LSE + row + offs_q)
        delta = tl.load(DELTA + row + offs_q)
        ax, ay, az = ax[:, None], ay[:, None], az[:, None]
        gx, gy, gz = gx[:, None], gy[:, None], gz[:, None]
        s, dx, dy, dz, sq, n = _score(ax, ay, az, kx, ky, kz,
                                      px[:, None], py[:, None], pz[:, None], rx, ry, rz, c, -lse[:, None])
        if HAS_MASK:
            s += bias
        p = tl.exp2(s)  # S − LSE: the probabilities of the forward pass
        dvx += tl.sum(p * gx, axis=0)
        dvy += tl.sum(p * gy, axis=0)
        dvz += tl.sum(p * gz, axis=0)
        ds = p * (gx * vx + (gy * vy + (gz * vz - delta[:, None])))
        dkx += tl.sum(ds * ax, axis=0)
        dky += tl.sum(ds * ay, axis=0)
        dkz += tl.sum(ds * az, axis=0)
        du = ds * _inv_norm(sq)
        drx += tl.sum(du * dx, axis=0)
        dry += tl.sum(du * dy, axis=0)
        drz += tl.sum(du * dz, axis=0)

    _store3(DKR + base, offs_k, LP, dkx * _LN2, dky * _LN2, dkz * _LN2)
    cl = c * _LN2
    _store3(DKD + base, offs_k, LP, drx * cl, dry * cl, drz * cl)
    _store3(DV + base, offs_k, LP, dvx, dvy, dvz)


@triton.jit
def _dq_step(dax, day, daz, dpx, dpy, dpz, dw, ax, ay, az, px, py, pz, gx, gy, gz, lse, delta, c,
             KR, KD, V, bias_row, start, L, LP,
             HAS_MASK: tl.constexpr, TAIL: tl.constexpr, BLOCK_K: tl.constexpr):
    """One key block of the dQ accumulation; returns the updated accumulators."""
    offs_k = start + tl.arange(0, BLOCK_K)
    kx, ky, kz = _load3(KR, offs_k, LP)
    rx, ry, rz = _load3(KD, offs_k, LP)
    vx, vy, vz = _load3(V, offs_k, LP)
    kx, ky, kz = kx[:, None], ky[:, None], kz[:, None]
    s, dx, dy, dz, sq, n = _score(ax, ay, az, kx, ky, kz,
                                  px, py, pz, rx[:, None], ry[:, None], rz[:, None], c, -lse)
    s = _mask_keys(s, bias_row, offs_k, L, HAS_MASK, TAIL)
    p = tl.exp2(s)
    ds = p * (gx * vx[:, None] + (gy * vy[:, None] + (gz * vz[:, None] - delta)))
    dax += tl.sum(ds * kx, axis=0)
    day += tl.sum(ds * ky, axis=0)
    daz += tl.sum(ds * kz, axis=0)
    du = ds * _inv_norm(sq)
    dpx += tl.sum(du * dx, axis=0)
    dpy += tl.sum(du * dy, axis=0)
    dpz += tl.sum(du * dz, axis=0)
    dw += tl.sum(ds * n, axis=0)
    return dax, day, daz, dpx, dpy, dpz, dw


@triton.jit
def _bwd_dq_kernel(
    QR, KR, QD, KD, V, W, BIAS, LSE, DELTA, DO, DQR, DQD, DW,
    H, L, LP,
    HAS_MASK: tl.constexpr, EVEN_L: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward for queries and the distance weight: one program per (b·h, query block).

    Recomputes P and dS as ``_bwd_dkdv_kernel`` does (tile [BLOCK_K, BLOCK_Q], reduced over
    the keys on axis 0, the tail block masked as in the forward) and accumulates

        dQ_r[i] = ln2 · Σ_j dS[i,j] · k_r[j]
        dQ_d[i] = −ln2 · c · Σ_j dS[i,j] · u[i,j]
        DW[i]   = −ln2 · Σ_j dS[i,j] · ‖q_d[i] − k_d[j]‖      (∂loss/∂c = Σ_{b,i} DW)

    Memory traffic per launch (Q = BLOCK_Q): reads 44·B·H·L bytes of queries, G, LSE, Δ
    and B·H·L·⌈L/Q⌉·(36 + 4·HAS_MASK) bytes of keys and values; writes 28·B·H·L bytes.
    """
    bh = tl.program_id(0)
    qb = tl.program_id(1)
    base = bh.to(tl.int64) * 3 * LP
    row = bh.to(tl.int64) * LP
    c = tl.load(W + bh % H)
    bias_row = BIAS + (bh // H).to(tl.int64) * LP

    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ax, ay, az = _load3(QR + base, offs_q, LP)
    px, py, pz = _load3(QD + base, offs_q, LP)
    gx, gy, gz = _load3(DO + base, offs_q, LP)
    lse = tl.load(LSE + row + offs_q)[None, :]
    delta = tl.load(DELTA + row + offs_q)[None, :]
    ax, ay, az = ax[None, :], ay[None, :], az[None, :]
    px, py, pz = px[None, :], py[None, :], pz[None, :]
    gx, gy, gz = gx[None, :], gy[None, :], gz[None, :]

    dax = tl.zeros([BLOCK_Q], tl.float32)
    day = tl.zeros([BLOCK_Q], tl.float32)
    daz = tl.zeros([BLOCK_Q], tl.float32)
    dpx = tl.zeros([BLOCK_Q], tl.float32)
    dpy = tl.zeros([BLOCK_Q], tl.float32)
    dpz = tl.zeros([BLOCK_Q], tl.float32)
    dw = tl.zeros([BLOCK_Q], tl.float32)
    full = (L // BLOCK_K) * BLOCK_K
    for start in range(0, full, BLOCK_K):
        dax, day, daz, dpx, dpy, dpz, dw = _dq_step(
            dax, day, daz, dpx, dpy, dpz, dw, ax, ay, az, px, py, pz, gx, gy, gz, lse, delta, c,
            KR + base, KD + base, V + base, bias_row, start, L, LP, HAS_MASK, False, BLOCK_K)
    if not EVEN_L:
        dax, day, daz, dpx, dpy, dpz, dw = _dq_step(
            dax, day, daz, dpx, dpy, dpz, dw, ax, ay, az, px, py, pz, gx, gy, gz, lse, delta, c,
            KR + base, KD + base, V + base, bias_row, full, L, LP, HAS_MASK, True, BLOCK_K)

    _store3(DQR + base, offs_q, LP, dax * _LN2, day * _LN2, daz * _LN2)
    cl = -c * _LN2
    _store3(DQD + base, offs_q, LP, dpx * cl, dpy * cl, dpz * cl)
    tl.store(DW + row + offs_q, dw * -_LN2)


KERNELS = (_fwd_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel)
"""The raw ``@triton.jit`` kernels (before autotuning), e.g. for offline compilation."""

# triton.jit decides at decoration time whether a function is compiled or interpreted
# (TRITON_INTERPRET=1): for our kernels that was just now, for Triton's own library functions
# (tl.sum, tl.max) when triton was first imported. The interpreter works only if both agree.
# Asking the decorated objects works on every Triton 3.x, Colab's included.
INTERPRETED = type(_fwd_kernel).__name__ == "InterpretedFunction"
_LIBRARY_INTERPRETED = type(tl.sum).__name__ == "InterpretedFunction"

_CONSTEXPRS = ("HAS_MASK", "EVEN_L", "BLOCK_Q", "BLOCK_K")
_INTS = ("H", "L", "LP")


def compile_signatures(has_mask: bool = True, even_l: bool = False, all_shapes: bool = False):
    """Everything ``triton.compile(ASTSource(...))`` needs for each kernel in ``KERNELS``.

    Returns one dict per kernel and launch shape: the first shape of ``GPU_SHAPES`` for each
    kernel, or all of them with ``all_shapes``. Each holds ``kernel`` (the JITFunction),
    ``signature`` (argument name → Triton type: every tensor is an fp32 plane ``*fp32``,
    sizes are ``i32``), ``constexprs`` (``even_l`` only where the kernel has EVEN_L),
    ``options`` (num_warps, num_stages, FMA fusion) and ``attrs``: the divisibility by 16
    that the launcher itself detects and specializes on, of every pointer (torch
    allocations) and of the padded plane length LP. Only meaningful when the kernels were
    *not* decorated under TRITON_INTERPRET.
    """
    out = []
    for kernel in KERNELS:
        names = kernel.arg_names
        signature = {n: "constexpr" if n in _CONSTEXPRS else "i32" if n in _INTS else "*fp32" for n in names}
        aligned = [i for i, n in enumerate(names) if signature[n] == "*fp32" or n == "LP"]
        attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
        shapes = GPU_SHAPES[kernel.__name__]
        for bq, bk, warps in shapes if all_shapes else shapes[:1]:
            constexprs = {"HAS_MASK": bool(has_mask), "EVEN_L": bool(even_l), "BLOCK_Q": bq, "BLOCK_K": bk}
            out.append({
                "kernel": kernel,
                "signature": signature,
                "constexprs": {k: v for k, v in constexprs.items() if k in names},
                "attrs": attrs,
                "options": {"num_warps": warps, "num_stages": _NUM_STAGES, "enable_fp_fusion": True},
            })
    return out


# ----------------------------------------------------------------------------------------
# Launch configuration: autotuned on a GPU, a single cheap config under the interpreter
# ----------------------------------------------------------------------------------------

# (BLOCK_Q, BLOCK_K, num_warps) searched by the autotuner on a GPU. With d = 3 there is
# no tl.dot: Triton spreads the program's own block (queries, or keys in dK/dV) over the 32
# lanes of each warp and keeps the streamed block inside each thread, so the reduction over
# it is in-thread FADD/FFMA work. These shapes keep 1-2 own elements and 8-32 streamed
# elements per thread: in the offline-compiled SASS (sm_90 and sm_75 alike, with or
# without a key mask) they cost 22-27 instructions per (i, j) pair in the forward's loop,
# 32-39 in dQ's and 35-42 in dK/dV's, with no register spills. 64×64 tiles with 4 warps,
# FlashAttention's shape, cost 32-35, 43-46 and 49-50, with 9-11 scalar loads per pair.
GPU_SHAPES = {
    "_fwd_kernel": ((128, 16, 2), (64, 16, 2), (128, 32, 2), (128, 16, 4), (128, 32, 4), (256, 16, 4), (256, 32, 8)),
    "_bwd_dkdv_kernel": ((16, 64, 2), (8, 64, 2), (8, 128, 2), (16, 128, 4), (8, 128, 4), (16, 256, 8)),
    "_bwd_dq_kernel": ((128, 8, 2), (64, 16, 2), (128, 16, 4), (256, 8, 4), (256, 16, 4), (128, 8, 4)),
}
_NUM_STAGES = 2


def _configs(name):
    if INTERPRETED:
        # The interpreter runs each block iteration as numpy calls (milliseconds each): one
        # config, so no benchmarking, with blocks large enough to keep iterations few.
        return [triton.Config({"BLOCK_Q": 32, "BLOCK_K": 32}, num_warps=1)]
    return [triton.Config({"BLOCK_Q": bq, "BLOCK_K": bk}, num_warps=w, num_stages=_NUM_STAGES)
            for bq, bk, w in GPU_SHAPES[name]]


# Planes are padded to a multiple of every block size in use, so no block reads past them.
_PAD = 32 if INTERPRETED else max(max(bq, bk) for shapes in GPU_SHAPES.values() for bq, bk, _ in shapes)

# EVEN_L: BLOCK_K divides L, so the key stream (forward, dQ) has no tail block to mask.
_even = triton.heuristics({"EVEN_L": lambda a: a["L"] % a["BLOCK_K"] == 0})
_fwd_heur, _dkdv_heur, _dq_heur = _even(_fwd_kernel), _bwd_dkdv_kernel, _even(_bwd_dq_kernel)
_fwd_tuned, _dkdv_tuned, _dq_tuned = (
    triton.autotune(configs=_configs(raw.__name__), key=["L", "HAS_MASK"])(k)
    for raw, k in zip(KERNELS, (_fwd_heur, _dkdv_heur, _dq_heur))
)
# Fused multiply-adds on (Triton 3.9 warns when this is left implicit); ignored by the interpreter.
_LAUNCH = {"enable_fp_fusion": True}


def _launch(tuned, heur, grid_axis, bh, length, block_size, args):
    """Launch ``tuned`` (autotuned) or, with an explicit ``block_size``, ``heur`` directly."""
    if block_size is None:
        grid = lambda meta: (bh, triton.cdiv(length, meta[grid_axis]))  # noqa: E731
        tuned[grid](*args, **_LAUNCH)
    else:
        grid = (bh, triton.cdiv(length, block_size))
        heur[grid](*args, BLOCK_Q=block_size, BLOCK_K=block_size, num_warps=4, num_stages=_NUM_STAGES, **_LAUNCH)


class _GeometricAttentionFn(torch.autograd.Function):
    """Autograd wrapper over the planes.

    Inputs: five (B·H, 3, LP) fp32 planes, zero past L; c (H,); bias (B, LP) with 0 / −inf
    (−inf past L) or None; H; L; block_size or None. Output: O as a (B·H, 3, LP) plane.
    """

    @staticmethod
    def forward(ctx, qr, kr, qd, kd, v, c, bias, n_heads, length, block_size):
        bh, _, lp = qr.shape
        o = torch.empty_like(v)
        lse = torch.full((bh, lp), float("inf"), device=v.device, dtype=torch.float32)  # +inf: P = 0
        has_mask = bias is not None
        bias_arg = bias if has_mask else lse  # never read without a mask
        _launch(_fwd_tuned, _fwd_heur, "BLOCK_Q", bh, length, block_size,
                (qr, kr, qd, kd, v, c, bias_arg, o, lse, n_heads, length, lp, has_mask))
        ctx.save_for_backward(qr, kr, qd, kd, v, c, bias_arg, o, lse)
        ctx.has_mask, ctx.n_heads, ctx.length, ctx.block_size = has_mask, n_heads, length, block_size
        return o

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: say so, loudly
    def backward(ctx, do):
        qr, kr, qd, kd, v, c, bias, o, lse = ctx.saved_tensors
        bh, _, lp = qr.shape
        length = ctx.length
        do = do.contiguous().float()  # zero past L: the padding's share of the output is sliced off
        delta = (do * o).sum(1)  # Δ[i] = G[i]·O[i] = Σ_j P[i,j] (G[i]·v[j]), (B·H, LP)
        dkr, dkd, dv, dqr, dqd = (torch.empty_like(qr) for _ in range(5))
        dw = torch.empty_like(lse)
        common = (qr, kr, qd, kd, v, c, bias, lse, delta, do)
        tail = (ctx.n_heads, length, lp, ctx.has_mask)
        _launch(_dkdv_tuned, _dkdv_heur, "BLOCK_K", bh, length, ctx.block_size, common + (dkr, dkd, dv) + tail)
        _launch(_dq_tuned, _dq_heur, "BLOCK_Q", bh, length, ctx.block_size, common + (dqr, dqd, dw) + tail)
        dc = dw[:, :length].reshape(-1, ctx.n_heads, length).sum((0, 2))
        return dqr, dkr, dqd, dkd, dv, dc, None, None, None, None


def _planes(x: Tensor, padded: int) -> Tensor:
    """(B, L, H, 3) → (B·H, 3, padded) fp32, zero past L (differentiable)."""
    planes = F.pad(rearrange(x.float(), "b l h c -> (b h) c l"), (0, padded - x.shape[1]))
    return planes.contiguous()  # a zero pad may hand back the strided view itself


def triton_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *, sequence_id=None,
                chain_id=None, block_size=None):
    """The Triton implementation without input validation (the dispatcher validated).

    Inputs must be CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before
    triton was first imported (Triton's interpreter: correct but slow). ``block_size`` (one
    of ``contract.TRITON_BLOCK_SIZES``) fixes BLOCK_Q = BLOCK_K and skips autotuning. Math in
    fp32; the output has ``v``'s dtype (fp64 inputs are computed in fp32). Differentiable in
    all seven tensor inputs.
    """
    if (not q_rot.is_cuda and not INTERPRETED) or INTERPRETED != _LIBRARY_INTERPRETED:
        late = ""
        if INTERPRETED != _LIBRARY_INTERPRETED or os.environ.get("TRITON_INTERPRET"):
            late = " (TRITON_INTERPRET was set only after triton had been imported)"
        raise ValueError(
            "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run Triton's interpreter on the CPU; "
            f"q_rot is on {q_rot.device}{late}. Set TRITON_INTERPRET=1 before anything imports triton "
            "(e.g. at the top of the notebook or script), or use impl='chunked'."
        )
    if sequence_id is not None or chain_id is not None:
        raise NotImplementedError("impl='triton' does not take sequence_id or chain_id yet; use impl='chunked'")
    b, length, h, _ = q_rot.shape
    if v.numel() == 0:
        return v.clone()
    k_rot, k_dist, v = zero_masked_keys(key_mask, k_rot, k_dist, v)
    padded = triton.cdiv(length, block_size or _PAD) * (block_size or _PAD)
    a = q_rot.float() * (rot_weight.float() * _SCALE)[:, None]  # the rotation term scales only q_rot
    c = (dist_weight.float() * _SCALE).contiguous()
    bias = None
    if key_mask is not None:
        bias = torch.full((b, padded), float("-inf"), device=v.device, dtype=torch.float32)
        bias[:, :length].masked_fill_(key_mask, 0.0)
    planes = [_planes(t, padded) for t in (a, k_rot, q_dist, k_dist, v)]  # O(L) PyTorch passes, not O(L²)
    with torch.cuda.device(v.device) if v.is_cuda else contextlib.nullcontext():  # launch on the inputs' GPU
        o = _GeometricAttentionFn.apply(*planes, c, bias, h, length, block_size)
    return rearrange(o[:, :, :length], "(b h) c l -> b l h c", b=b).to(v.dtype)


def triton_geometric_attention(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask=None, *,
                               sequence_id=None, chain_id=None, block_size=None):
    """Geometric attention with the Triton kernels; the contract of ``geoattn.geometric_attention``.
    Validates its inputs (the dispatcher calls :func:`triton_core` instead)."""
    check_geometric_inputs(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask,
                           sequence_id=sequence_id, chain_id=chain_id)
    block_size = check_block_size(block_size, "triton")
    return triton_core(q_rot, k_rot, q_dist, k_dist, v, rot_weight, dist_weight, key_mask, sequence_id=sequence_id,
                       chain_id=chain_id, block_size=block_size)
