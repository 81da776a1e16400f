"""The streaming kernels, for any L: a fused forward and a recomputing backward pass.

The math, per batch b and head h (see ``geometric.py``), is

    A[i,j]   = w_r · (q_r[i] · k_r[j]) / √3  −  w_d · ‖q_d[i] − k_d[j]‖ / √3  (+ 1 same sequence)
    out[i]   = Σ_j softmax_j(A)[i,j] · v[j]      (pairs in two chains and masked keys excluded)

``geoattn.kernels.launch`` folds the constants into the inputs before the kernels run:
a[i] = q_r[i]·w_r·log2(e)/√3 and c = w_d·log2(e)/√3 (one number per head), so that

    S[i,j] = a[i] · k_r[j] − c · ‖q_d[i] − k_d[j]‖ (+ log2(e) same sequence) = A[i,j] · log2(e)

and the kernels work in base 2 (``exp2``, one MUFU instruction). Score tiles are laid out
with the reduced axis first: [keys, queries] in the forward and dQ kernels, [queries,
keys] in the dK/dV kernel, and every reduction runs over axis 0. Keys past L are masked
only in the tail block of the key stream, which the constexpr ``EVEN_L`` (BLOCK_K divides
L) removes altogether; queries past L get LSE = +inf, which makes their P exactly 0 in the
backward. The constexprs HAS_MASK, HAS_SEQ and HAS_CHAIN compile the key bias row, the
sequence bias and the chain mask in only when given, so the plain path pays nothing.
"""
import triton
import triton.language as tl

from .common import _LN2, _chain_mask, _inv_norm, _load3, _mask_keys, _score, _seq_base, _store3

# The autotuner's key (L_KEY, BH_KEY: buckets of L and B·H) is read by the launcher only;
# specializing on it would compile one copy of each kernel per bucket. H and L only index
# and bound (no load's alignment depends on them: LP, kept specialized, is the stride), so
# their specializations (== 1, divisible by 16) would only multiply the copies.
_UNSPECIALIZED = ["H", "L", "L_KEY", "BH_KEY"]


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


@triton.jit
def _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, seq_q, chain_q, c, KR, KD, V, bias_row, seq_row,
              chain_row, start, L, LP, HAS_MASK: tl.constexpr, HAS_SEQ: tl.constexpr,
              HAS_CHAIN: tl.constexpr, TAIL: tl.constexpr, BLOCK_K: tl.constexpr):
    """One key block of the online softmax; returns the updated (m, l, o)."""
    offs_k = start + tl.arange(0, BLOCK_K)
    kx, ky, kz = _load3(KR, offs_k, LP)
    rx, ry, rz = _load3(KD, offs_k, LP)
    vx, vy, vz = _load3(V, offs_k, LP)
    base = 0.0
    if HAS_SEQ:
        base = _seq_base(base, seq_q, tl.load(seq_row + offs_k)[:, None], HAS_SEQ)
    s, dx, dy, dz, sq, n = _score(ax, ay, az, kx[:, None], ky[:, None], kz[:, None],
                                  px, py, pz, rx[:, None], ry[:, None], rz[:, None], c, base)
    s = _mask_keys(s, bias_row, offs_k, L, HAS_MASK, TAIL)
    if HAS_CHAIN:
        s = _chain_mask(s, chain_q, tl.load(chain_row + offs_k)[:, None], HAS_CHAIN)
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


@triton.jit(do_not_specialize=_UNSPECIALIZED)
def _fwd_kernel(
    QR, KR, QD, KD, V, W, BIAS, SEQ, CHAIN, O, LSE, LSUM,
    H, L, LP, L_KEY, BH_KEY,
    HAS_MASK: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_CHAIN: tl.constexpr, SPLIT: tl.constexpr,
    EVEN_L: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Forward pass: one program per (head b·h, block of BLOCK_Q queries[, key split]).

    Math (base 2; a = folded q_r, c = W[h], bias = 0 or −inf per key):

        S[j,i] = a[i]·k_r[j] − c·‖q_d[i] − k_d[j]‖ + bias[j]          tile [BLOCK_K, BLOCK_Q]
                 (+ log2 e if seq[i] = seq[j];  −inf if chain[i] ≠ chain[j])
        m_i ← max(m_i, max_j S),  l_i ← l_i·2^(m_old − m_i) + Σ_j 2^(S − m_i)
        o_i ← o_i·2^(m_old − m_i) + Σ_j 2^(S − m_i)·v[j]               (online softmax)
        O[i] = o_i / l_i,   LSE[i] = m_i + log2(l_i)    (O = 0, LSE = +inf when l_i = 0)

    With ``SPLIT`` the grid has a third axis that divides the key blocks between programs
    (for grids too small to fill the GPU); each writes its partial state (m → LSE,
    l → LSUM, the unnormalised o → O, one slice per split) and the launcher merges them
    with the online-softmax merge. Full key blocks run without any bounds check; the tail
    block (``EVEN_L`` false) masks the keys past L. Queries past L compute on zero padding
    and get LSE = +inf, which zeroes their P in the backward.

    Memory traffic per launch (fp32 planes, Q = BLOCK_Q): reads 24·B·H·L bytes of queries
    and B·H·L·⌈L/Q⌉·(36 + 4·HAS_MASK + 4·HAS_SEQ + 4·HAS_CHAIN) bytes of keys, values and
    per-key rows (once per query block, mostly from L2); writes 16·B·H·L bytes of O and LSE.

    SASS per (i, j) pair in the key loop (offline compile, the autotuned shapes, with a key
    mask): 23.6-26.3 instructions on sm_90, 23.8-27.0 on sm_75; with chain ids 25.8-28.8
    on sm_90 (a compare and a select more, at most +9.5%). Sequence ids add another
    compare and select (not measured separately). Against at most 48/Q bytes of (cached)
    loads per pair: compute-bound.
    """
    bh = tl.program_id(0)
    qb = tl.program_id(1)
    base = bh.to(tl.int64) * 3 * LP
    c = tl.load(W + bh % H)
    brow = (bh // H).to(tl.int64) * LP  # the batch's per-key rows: bias, sequence, chain
    bias_row = BIAS + brow

    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ax, ay, az = _load3(QR + base, offs_q, LP)
    px, py, pz = _load3(QD + base, offs_q, LP)
    ax, ay, az = ax[None, :], ay[None, :], az[None, :]
    px, py, pz = px[None, :], py[None, :], pz[None, :]
    seq_q = 0
    chain_q = 0
    if HAS_SEQ:
        seq_q = tl.load(SEQ + brow + offs_q)[None, :]
    if HAS_CHAIN:
        chain_q = tl.load(CHAIN + brow + offs_q)[None, :]

    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_Q], tl.float32)
    ox = tl.zeros([BLOCK_Q], tl.float32)
    oy = tl.zeros([BLOCK_Q], tl.float32)
    oz = tl.zeros([BLOCK_Q], tl.float32)
    full = (L // BLOCK_K) * BLOCK_K
    lo = 0
    hi = full
    if SPLIT:  # this program's share of the full key blocks; the last split takes the tail
        split = tl.program_id(2)
        n_split = tl.num_programs(2)
        per = tl.cdiv(L // BLOCK_K, n_split) * BLOCK_K
        lo = tl.minimum(split * per, full)
        hi = tl.minimum(lo + per, full)
    for start in range(lo, hi, BLOCK_K):
        m, l, ox, oy, oz = _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, seq_q, chain_q, c,
                                     KR + base, KD + base, V + base, bias_row, SEQ + brow, CHAIN + brow,
                                     start, L, LP, HAS_MASK, HAS_SEQ, HAS_CHAIN, False, BLOCK_K)
    if not EVEN_L:
        if SPLIT:  # zero or one tail block: a loop, so that m, l, o stay loop-carried values
            for start in range(full, full + BLOCK_K * (split == n_split - 1), BLOCK_K):
                m, l, ox, oy, oz = _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, seq_q, chain_q, c,
                                             KR + base, KD + base, V + base, bias_row, SEQ + brow,
                                             CHAIN + brow, start, L, LP, HAS_MASK, HAS_SEQ, HAS_CHAIN,
                                             True, BLOCK_K)
        else:
            m, l, ox, oy, oz = _fwd_step(m, l, ox, oy, oz, ax, ay, az, px, py, pz, seq_q, chain_q, c,
                                         KR + base, KD + base, V + base, bias_row, SEQ + brow, CHAIN + brow,
                                         full, L, LP, HAS_MASK, HAS_SEQ, HAS_CHAIN, True, BLOCK_K)

    row = bh.to(tl.int64) * LP
    if SPLIT:  # the partial state, merged by the launcher
        part = split.to(tl.int64) * tl.num_programs(0)
        _store3(O + part * 3 * LP + base, offs_q, LP, ox, oy, oz)
        tl.store(LSE + part * LP + row + offs_q, m)
        tl.store(LSUM + part * LP + row + offs_q, l)
    else:
        has_key = l > 0.0
        inv_l = tl.where(has_key, 1.0 / tl.where(has_key, l, 1.0), 0.0)
        _store3(O + base, offs_q, LP, ox * inv_l, oy * inv_l, oz * inv_l)
        lse = tl.where(has_key & (offs_q < L), m + tl.log2(tl.where(has_key, l, 1.0)), float("inf"))
        tl.store(LSE + row + offs_q, lse)


# ----------------------------------------------------------------------------------------
# Backward: dK, dV (one program per key block) and dQ (one program per query block)
# ----------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_UNSPECIALIZED)
def _bwd_dkdv_kernel(
    QR, KR, QD, KD, V, W, BIAS, SEQ, CHAIN, LSE, DELTA, DO, DKR, DKD, DV,
    H, L, LP, L_KEY, BH_KEY,
    HAS_MASK: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_CHAIN: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward for keys and values: one program per (b·h, block of BLOCK_K keys), streaming queries.

    Recomputes P from the stored log-sum-exp, then (tile [BLOCK_Q, BLOCK_K], reduced over
    the queries on axis 0; G = ∂loss/∂O, Δ[i] = G[i]·O[i], u = (q_d[i] − k_d[j])/‖·‖, 0 at 0):

        P[i,j]  = 2^(S[i,j] − LSE[i])            (S with the same bias and masks as the forward)
        dV[j]   = Σ_i P[i,j] · G[i]
        dS[i,j] = P[i,j] · (G[i]·v[j] − Δ[i])                 (∂loss/∂(S·ln 2))
        dK_r[j] = ln2 · Σ_i dS[i,j] · a[i]
        dK_d[j] = ln2 · c · Σ_i dS[i,j] · u[i,j]

    No bounds checks at all: queries past L have LSE = +inf (so P = 0) and zero G and Δ
    (the launcher writes Δ = 0 there; it never reads O's padding); keys past L compute on
    zero padding and their results land in the padding.

    Memory traffic per launch (K = BLOCK_K): reads 36·B·H·L bytes of keys/values (+4 of bias)
    and B·H·L·⌈L/K⌉·(44 + 4·HAS_SEQ + 4·HAS_CHAIN) bytes of queries, G, LSE, Δ and ids;
    writes 36·B·H·L bytes (dK_r, dK_d, dV).

    SASS per pair in the query loop, with a key mask: 35.8-41.9 instructions on sm_90,
    36.8-40.3 on sm_75 (measured before the ids were added; without them the code is the
    same). Chain and sequence ids add a compare and a select each (not measured separately).
    """
    bh = tl.program_id(0)
    kb = tl.program_id(1)
    base = bh.to(tl.int64) * 3 * LP
    row = bh.to(tl.int64) * LP
    brow = (bh // H).to(tl.int64) * LP
    c = tl.load(W + bh % H)

    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    kx, ky, kz = _load3(KR + base, offs_k, LP)
    rx, ry, rz = _load3(KD + base, offs_k, LP)
    vx, vy, vz = _load3(V + base, offs_k, LP)
    kx, ky, kz = kx[None, :], ky[None, :], kz[None, :]
    rx, ry, rz = rx[None, :], ry[None, :], rz[None, :]
    vx, vy, vz = vx[None, :], vy[None, :], vz[None, :]
    if HAS_MASK:
        bias = tl.load(BIAS + brow + offs_k)[None, :]
    seq_k = 0
    chain_k = 0
    if HAS_SEQ:
        seq_k = tl.load(SEQ + brow + offs_k)[None, :]
    if HAS_CHAIN:
        chain_k = tl.load(CHAIN + brow + offs_k)[None, :]

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
        start_s = -lse[:, None]
        if HAS_SEQ:
            start_s = _seq_base(start_s, tl.load(SEQ + brow + offs_q)[:, None], seq_k, HAS_SEQ)
        s, dx, dy, dz, sq, n = _score(ax, ay, az, kx, ky, kz,
                                      px[:, None], py[:, None], pz[:, None], rx, ry, rz, c, start_s)
        if HAS_MASK:
            s += bias
        if HAS_CHAIN:
            s = _chain_mask(s, tl.load(CHAIN + brow + offs_q)[:, None], chain_k, HAS_CHAIN)
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
def _dq_step(dax, day, daz, dpx, dpy, dpz, dw, ax, ay, az, px, py, pz, gx, gy, gz, lse, delta, seq_q, chain_q, c,
             KR, KD, V, bias_row, seq_row, chain_row, start, L, LP, HAS_MASK: tl.constexpr,
             HAS_SEQ: tl.constexpr, HAS_CHAIN: tl.constexpr, TAIL: tl.constexpr, BLOCK_K: tl.constexpr):
    """One key block of the dQ accumulation; returns the updated accumulators."""
    offs_k = start + tl.arange(0, BLOCK_K)
    kx, ky, kz = _load3(KR, offs_k, LP)
    rx, ry, rz = _load3(KD, offs_k, LP)
    vx, vy, vz = _load3(V, offs_k, LP)
    kx, ky, kz = kx[:, None], ky[:, None], kz[:, None]
    start_s = -lse
    if HAS_SEQ:
        start_s = _seq_base(start_s, seq_q, tl.load(seq_row + offs_k)[:, None], HAS_SEQ)
    s, dx, dy, dz, sq, n = _score(ax, ay, az, kx, ky, kz,
                                  px, py, pz, rx[:, None], ry[:, None], rz[:, None], c, start_s)
    s = _mask_keys(s, bias_row, offs_k, L, HAS_MASK, TAIL)
    if HAS_CHAIN:
        s = _chain_mask(s, chain_q, tl.load(chain_row + offs_k)[:, None], HAS_CHAIN)
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


@triton.jit(do_not_specialize=_UNSPECIALIZED)
def _bwd_dq_kernel(
    QR, KR, QD, KD, V, W, BIAS, SEQ, CHAIN, LSE, DELTA, DO, DQR, DQD, DW,
    H, L, LP, L_KEY, BH_KEY,
    HAS_MASK: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_CHAIN: tl.constexpr,
    EVEN_L: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward for queries and the distance weight: one program per (b·h, query block).

    Recomputes P and dS as ``_bwd_dkdv_kernel`` does (tile [BLOCK_K, BLOCK_Q], reduced over
    the keys on axis 0, the tail block masked as in the forward) and accumulates

        dQ_r[i] = ln2 · Σ_j dS[i,j] · k_r[j]
        dQ_d[i] = −ln2 · c · Σ_j dS[i,j] · u[i,j]
        DW[i]   = −ln2 · Σ_j dS[i,j] · ‖q_d[i] − k_d[j]‖      (∂loss/∂c = Σ_{b,i} DW)

    Memory traffic per launch (Q = BLOCK_Q): reads 44·B·H·L bytes of queries, G, LSE, Δ
    and B·H·L·⌈L/Q⌉·(36 + 4·HAS_MASK + 4·HAS_SEQ + 4·HAS_CHAIN) bytes of keys, values and
    per-key rows; writes 28·B·H·L bytes.

    SASS per pair in the key loop, with a key mask: 33.3-39.0 instructions on sm_90,
    33.6-37.4 on sm_75 (measured before the ids were added, with the shapes of that time).
    Chain and sequence ids add a compare and a select each (not measured separately).
    """
    bh = tl.program_id(0)
    qb = tl.program_id(1)
    base = bh.to(tl.int64) * 3 * LP
    row = bh.to(tl.int64) * LP
    c = tl.load(W + bh % H)
    brow = (bh // H).to(tl.int64) * LP
    bias_row = BIAS + brow

    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ax, ay, az = _load3(QR + base, offs_q, LP)
    px, py, pz = _load3(QD + base, offs_q, LP)
    gx, gy, gz = _load3(DO + base, offs_q, LP)
    lse = tl.load(LSE + row + offs_q)[None, :]
    delta = tl.load(DELTA + row + offs_q)[None, :]
    ax, ay, az = ax[None, :], ay[None, :], az[None, :]
    px, py, pz = px[None, :], py[None, :], pz[None, :]
    gx, gy, gz = gx[None, :], gy[None, :], gz[None, :]
    seq_q = 0
    chain_q = 0
    if HAS_SEQ:
        seq_q = tl.load(SEQ + brow + offs_q)[None, :]
    if HAS_CHAIN:
        chain_q = tl.load(CHAIN + brow + offs_q)[None, :]

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
            dax, day, daz, dpx, dpy, dpz, dw, ax, ay, az, px, py, pz, gx, gy, gz, lse, delta, seq_q, chain_q, c,
            KR + base, KD + base, V + base, bias_row, SEQ + brow, CHAIN + brow, start, L, LP,
            HAS_MASK, HAS_SEQ, HAS_CHAIN, False, BLOCK_K)
    if not EVEN_L:
        dax, day, daz, dpx, dpy, dpz, dw = _dq_step(
            dax, day, daz, dpx, dpy, dpz, dw, ax, ay, az, px, py, pz, gx, gy, gz, lse, delta, seq_q, chain_q, c,
            KR + base, KD + base, V + base, bias_row, SEQ + brow, CHAIN + brow, full, L, LP,
            HAS_MASK, HAS_SEQ, HAS_CHAIN, True, BLOCK_K)

    _store3(DQR + base, offs_q, LP, dax * _LN2, day * _LN2, daz * _LN2)
    cl = -c * _LN2
    _store3(DQD + base, offs_q, LP, dpx * cl, dpy * cl, dpz * cl)
    tl.store(DW + row + offs_q, dw * -_LN2)
