"""Launch shapes of the Triton kernels, chosen from their offline-compiled SASS.

With d = 3 there is no ``tl.dot``: Triton spreads the program's own block (queries, or
keys in dK/dV) over the 32 lanes of each warp and keeps the streamed block inside each
thread, so the reduction over it is in-thread FADD/FFMA work. The shapes below keep 1-2
own elements and 8-32 streamed elements per thread. Offline-compiled for sm_75, sm_80 and
sm_90 (``geoattn.kernels.offline``), with or without a key mask, none spills, and none
uses more than 232 of the 255 registers a thread may have, so that a change to a
kernel does not tip Colab's T4 (sm_75) into spilling: the forward's (128, 32, 2 warps),
at exactly 255 registers on sm_75, and dQ's (256, 16, 4 warps), at 245, were dropped.
64×64 tiles with 4 warps, FlashAttention's shape, cost 32-35, 43-46 and 49-50
instructions per pair in the three loops, with 9-11 scalar loads per pair.
"""

#: (BLOCK_Q, BLOCK_K, num_warps) searched by the autotuner on a GPU, per streaming kernel.
GPU_SHAPES = {
    "_fwd_kernel": ((128, 16, 2), (64, 16, 2), (128, 16, 4), (128, 32, 4), (256, 16, 4), (256, 32, 8)),
    "_bwd_dkdv_kernel": ((16, 64, 2), (8, 64, 2), (8, 128, 2), (16, 128, 4), (8, 128, 4), (16, 256, 8)),
    "_bwd_dq_kernel": ((128, 8, 2), (64, 16, 2), (128, 16, 4), (256, 8, 4), (128, 8, 4)),
}
NUM_STAGES = 2

#: num_warps for an explicit ``block_size`` (BLOCK_Q = BLOCK_K = block_size, no autotuning).
EXPLICIT_WARPS = 4

#: The short-sequence kernels: for a padded length LP, (heads per program, num_warps) of the
#: forward and of the backward. Measured (sm_90, with sequence and chain ids): the forward
#: at 16 heads × 16² pairs took 255 registers and 70.6 instructions per pair, at 4 × 32²
#: 168 registers and 41.4; the backward at 8 × 16² spilled on sm_75 (255 registers, 172
#: per pair). So programs hold 8-16 pairs per thread: fewer heads, below those limits.
#: Their 3-D tiles reduce across lanes, which costs more per pair than the streaming
#: kernels' in-thread sums; what they save is memory (planes of 16 or 32, not 256) and
#: idle lanes.
SMALL_SHAPES = {
    16: {"_small_fwd_kernel": (8, 4), "_small_bwd_kernel": (4, 4)},
    32: {"_small_fwd_kernel": (4, 4), "_small_bwd_kernel": (1, 4)},
}
#: Sequences up to this length take the short-sequence kernels (without an explicit block_size).
SMALL_MAX_L = max(SMALL_SHAPES)

#: The streaming kernels' planes are padded to a multiple of this on a GPU (every block divides it).
GPU_PAD = max(max(bq, bk) for shapes in GPU_SHAPES.values() for bq, bk, _ in shapes)
