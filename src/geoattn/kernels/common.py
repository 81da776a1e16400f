"""``@triton.jit`` helpers inlined into every kernel, and the constants they read.

Planes: every (B, L, H, 3) input reaches the kernels as a (B·H, 3, LP) fp32 *plane*,
three contiguous rows x, y, z per head, zero past L; per-batch rows (the key bias, the
sequence and chain ids) are (B, LP). Scores are in base 2: S = A · log2(e).
"""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# read inside kernels: must be constexprs
_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


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


@triton.jit
def _seq_base(base, seq_q, seq_k, HAS_SEQ: tl.constexpr):
    """ESM's sequence "bias": +1 (log2(e) in base 2) on the score of a pair in one sequence.

    It enters through ``base``, which starts the dot product's FMA chain, so the bias
    costs a compare and a select per pair and no add. ``base + log2(e)`` has the shape of
    ``base`` (a scalar or one value per query), not of the tile.
    """
    if HAS_SEQ:
        base = tl.where(seq_q == seq_k, base + _LOG2E, base)
    return base


@triton.jit
def _chain_mask(s, chain_q, chain_k, HAS_CHAIN: tl.constexpr):
    """A pair in two chains gets S = −inf: a compare and a select per pair. It selects, never
    adds, so that a non-finite key in another chain cannot reach this query (as ``where``
    in the reference)."""
    if HAS_CHAIN:
        s = tl.where(chain_q == chain_k, s, float("-inf"))
    return s
