"""The short-sequence kernels (L ≤ 32): several heads per program, every score at once.

The structure encoder attends over neighbourhoods of L = 16 residues with B·H ≈ 524,288
(batch × residues × heads): padding each to the streaming kernels' 256 would cost 16×
the memory and leave ≥ 94% of the lanes idle. Here planes are padded to LP = 16 or 32
(a power of two, a constexpr), one program takes HEADS consecutive (b·h) planes, and the
score tile [HEADS, LP, LP] holds every pair of those heads at once: no online softmax, no
key loop, and the backward computes all seven gradients in one pass over the tile.

Same math, base-2 scores, masks and biases as :mod:`.streaming` (see there); keys past L
are masked by a compare (or by the bias row, −inf past L), queries past L get LSE = +inf.
"""
import triton
import triton.language as tl

from .common import _LN2, _chain_mask, _inv_norm, _score, _seq_base

# B·H, H and L only index and bound; specializing on them (== 1, divisible by 16) would
# compile a copy per batch shape. LP and HEADS are constexprs.
_UNSPECIALIZED = ["BH", "H", "L"]


@triton.jit
def _planes3(ptr, offs, LP: tl.constexpr):
    return tl.load(ptr + offs), tl.load(ptr + LP + offs), tl.load(ptr + 2 * LP + offs)


@triton.jit(do_not_specialize=_UNSPECIALIZED)
def _small_fwd_kernel(
    QR, KR, QD, KD, V, W, BIAS, SEQ, CHAIN, O, LSE,
    BH, H, L,
    HAS_MASK: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_CHAIN: tl.constexpr,
    LP: tl.constexpr, HEADS: tl.constexpr,
):
    """Forward for L ≤ LP ∈ {16, 32}: one program per HEADS planes, tile [HEADS, keys, queries].

        S[g,j,i] = a[g,i]·k_r[g,j] − c_g·‖q_d[g,i] − k_d[g,j]‖ (+ bias, sequence, chain)
        O[g,i] = Σ_j 2^(S − m) v[g,j] / Σ_j 2^(S − m),  LSE[g,i] = m + log2 Σ_j 2^(S − m)

    SASS per (i, j) pair: see ``configs.SMALL_SHAPES``.
    """
    g = tl.program_id(0) * HEADS + tl.arange(0, HEADS)
    live = g < BH
    g = tl.where(live, g, 0)  # planes past B·H re-read plane 0; their stores are masked
    j = tl.arange(0, LP)
    plane = g.to(tl.int64)[:, None] * 3 * LP + j[None, :]  # [HEADS, LP]
    brow = (g // H).to(tl.int64)[:, None] * LP + j[None, :]
    c = tl.load(W + g % H)[:, None, None]

    ax, ay, az = _planes3(QR, plane, LP)
    px, py, pz = _planes3(QD, plane, LP)
    kx, ky, kz = _planes3(KR, plane, LP)
    rx, ry, rz = _planes3(KD, plane, LP)
    vx, vy, vz = _planes3(V, plane, LP)
    base = 0.0
    if HAS_SEQ:
        base = _seq_base(base, tl.load(SEQ + brow)[:, None, :], tl.load(SEQ + brow)[:, :, None], HAS_SEQ)
    s, dx, dy, dz, sq, n = _score(ax[:, None, :], ay[:, None, :], az[:, None, :],
                                  kx[:, :, None], ky[:, :, None], kz[:, :, None],
                                  px[:, None, :], py[:, None, :], pz[:, None, :],
                                  rx[:, :, None], ry[:, :, None], rz[:, :, None], c, base)
    if HAS_MASK:  # the bias row is −inf past L
        s += tl.load(BIAS + brow)[:, :, None]
    else:
        s = tl.where((j < L)[None, :, None], s, float("-inf"))
    if HAS_CHAIN:
        s = _chain_mask(s, tl.load(CHAIN + brow)[:, None, :], tl.load(CHAIN + brow)[:, :, None], HAS_CHAIN)

    m = tl.max(s, axis=1)
    m_ref = tl.where(m == float("-inf"), 0.0, m)  # a row without any key: no inf − inf
    p = tl.exp2(s - m_ref[:, None, :])
    l = tl.sum(p, axis=1)
    has_key = l > 0.0
    inv_l = tl.where(has_key, 1.0 / tl.where(has_key, l, 1.0), 0.0)
    store = live[:, None]
    tl.store(O + plane, tl.sum(p * vx[:, :, None], axis=1) * inv_l, mask=store)
    tl.store(O + LP + plane, tl.sum(p * vy[:, :, None], axis=1) * inv_l, mask=store)
    tl.store(O + 2 * LP + plane, tl.sum(p * vz[:, :, None], axis=1) * inv_l, mask=store)
    lse = tl.where(has_key & (j < L)[None, :], m + tl.log2(tl.where(has_key, l, 1.0)), float("inf"))
    tl.store(LSE + g.to(tl.int64)[:, None] * LP + j[None, :], lse, mask=store)


@triton.jit(do_not_specialize=_UNSPECIALIZED)
def _small_bwd_kernel(
    QR, KR, QD, KD, V, W, BIAS, SEQ, CHAIN, LSE, DELTA, DO,
    DQR, DKR, DQD, DKD, DV, DW,
    BH, H, L,
    HAS_MASK: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_CHAIN: tl.constexpr,
    LP: tl.constexpr, HEADS: tl.constexpr,
):
    """Backward for L ≤ LP: all seven gradients from one tile [HEADS, queries, keys].

    P = 2^(S − LSE), dS = P·(G·v − Δ) (∂loss/∂(S·ln 2)), u = (q_d − k_d)/‖·‖ (0 at 0):
    reduced over the queries (axis 1) dV = Σ P·G, dK_r = ln2 Σ dS·a, dK_d = ln2·c Σ dS·u;
    over the keys (axis 2) dQ_r = ln2 Σ dS·k_r, dQ_d = −ln2·c Σ dS·u, DW = −ln2 Σ dS·‖·‖.
    Queries past L have LSE = +inf (P = 0) and G = Δ = 0; keys past L are masked.
    """
    g = tl.program_id(0) * HEADS + tl.arange(0, HEADS)
    live = g < BH
    g = tl.where(live, g, 0)
    j = tl.arange(0, LP)
    plane = g.to(tl.int64)[:, None] * 3 * LP + j[None, :]
    row = g.to(tl.int64)[:, None] * LP + j[None, :]
    brow = (g // H).to(tl.int64)[:, None] * LP + j[None, :]
    c = tl.load(W + g % H)

    ax, ay, az = _planes3(QR, plane, LP)
    px, py, pz = _planes3(QD, plane, LP)
    gx, gy, gz = _planes3(DO, plane, LP)
    kx, ky, kz = _planes3(KR, plane, LP)
    rx, ry, rz = _planes3(KD, plane, LP)
    vx, vy, vz = _planes3(V, plane, LP)
    ax, ay, az = ax[:, :, None], ay[:, :, None], az[:, :, None]
    gx, gy, gz = gx[:, :, None], gy[:, :, None], gz[:, :, None]
    kx, ky, kz = kx[:, None, :], ky[:, None, :], kz[:, None, :]
    vx, vy, vz = vx[:, None, :], vy[:, None, :], vz[:, None, :]
    start = -tl.load(LSE + row)[:, :, None]
    if HAS_SEQ:
        start = _seq_base(start, tl.load(SEQ + brow)[:, :, None], tl.load(SEQ + brow)[:, None, :], HAS_SEQ)
    s, dx, dy, dz, sq, n = _score(ax, ay, az, kx, ky, kz,
                                  px[:, :, None], py[:, :, None], pz[:, :, None],
                                  rx[:, None, :], ry[:, None, :], rz[:, None, :], c[:, None, None], start)
    if HAS_MASK:
        s += tl.load(BIAS + brow)[:, None, :]
    else:
        s = tl.where((j < L)[None, None, :], s, float("-inf"))
    if HAS_CHAIN:
        s = _chain_mask(s, tl.load(CHAIN + brow)[:, :, None], tl.load(CHAIN + brow)[:, None, :], HAS_CHAIN)
    p = tl.exp2(s)
    delta = tl.load(DELTA + row)[:, :, None]
    ds = p * (gx * vx + (gy * vy + (gz * vz - delta)))
    du = ds * _inv_norm(sq)
    store = live[:, None]
    cl = (c * _LN2)[:, None]

    tl.store(DV + plane, tl.sum(p * gx, axis=1), mask=store)
    tl.store(DV + LP + plane, tl.sum(p * gy, axis=1), mask=store)
    tl.store(DV + 2 * LP + plane, tl.sum(p * gz, axis=1), mask=store)
    tl.store(DKR + plane, tl.sum(ds * ax, axis=1) * _LN2, mask=store)
    tl.store(DKR + LP + plane, tl.sum(ds * ay, axis=1) * _LN2, mask=store)
    tl.store(DKR + 2 * LP + plane, tl.sum(ds * az, axis=1) * _LN2, mask=store)
    tl.store(DKD + plane, tl.sum(du * dx, axis=1) * cl, mask=store)
    tl.store(DKD + LP + plane, tl.sum(du * dy, axis=1) * cl, mask=store)
    tl.store(DKD + 2 * LP + plane, tl.sum(du * dz, axis=1) * cl, mask=store)
    tl.store(DQR + plane, tl.sum(ds * kx, axis=2) * _LN2, mask=store)
    tl.store(DQR + LP + plane, tl.sum(ds * ky, axis=2) * _LN2, mask=store)
    tl.store(DQR + 2 * LP + plane, tl.sum(ds * kz, axis=2) * _LN2, mask=store)
    tl.store(DQD + plane, tl.sum(du * dx, axis=2) * -cl, mask=store)
    tl.store(DQD + LP + plane, tl.sum(du * dy, axis=2) * -cl, mask=store)
    tl.store(DQD + 2 * LP + plane, tl.sum(du * dz, axis=2) * -cl, mask=store)
    tl.store(DW + row, tl.sum(ds * n, axis=2) * -_LN2, mask=store)
