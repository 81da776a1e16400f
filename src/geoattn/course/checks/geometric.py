"""Exercise checks for chapter 4: the distance term (Algorithm 6, line 8) and the whole
update of the layer, from the local vectors of line 1 to the Linear(O) of line 14.

Each check compares the reader's function with the library's on fixed-seed random inputs
and on the cases that catch the usual slips: a missing 1/√3, the squared distance of ESM's
docstring, the printed line 8 (which uses the rotation vectors in the distance term),
translated values, a missing rotation back (line 13), the rotation applied as Rᵀ, and for
the distance term |q|² + |k|² − 2 q·k (which ``torch.cdist`` computes for many points). When a
case fails, those wrong variants are tried on it, so the hint can name the likely slip
without showing the answer.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...frames import apply_frame, apply_rotation, random_rotation
from ...geometric import geometric_attention, geometric_logits
from ...structure import ubiquitin
from ._harness import Case, CheckResult, run_check
from ._harness import seeded_randn as _randn

__all__ = ["check_distance_term", "check_layer_update", "check_kernel_weights"]


def _scores(q_rot, k_rot, q_dist, k_dist, w_r, w_d) -> Tensor:
    """The library's scores for one head: (L, 3) vectors and two numbers -> (L, L)."""
    dtype = q_rot.dtype
    vecs = [t[None, :, None, :] for t in (q_rot, k_rot, q_dist, k_dist)]
    w = [torch.tensor([float(x)], dtype=dtype) for x in (w_r, w_d)]
    return geometric_logits(*vecs, *w)[0, 0].to(dtype)


# ------------------------------------------------------------- line 8: the distance term

def _distance_reference(q_dist: Tensor, k_dist: Tensor) -> Tensor:
    # The library computes the term inside geometric_logits: w_r = 0, w_d = 1 leaves −D.
    zeros_q, zeros_k = torch.zeros_like(q_dist), torch.zeros_like(k_dist)
    return -_scores(zeros_q, zeros_k, q_dist, k_dist, 0.0, 1.0)


_far = torch.tensor([1e4, -1e4, 1e4])


# torch.cdist switches to |q|² + |k|² − 2 q·k (a matrix product) above 25 points; the cases
# that must be exact have more, or that slip passes them unseen.
_MANY = 64


def _distance_cases() -> list[Case]:
    same = _randn(_MANY, 3, seed=23, scale=5.0)
    inputs = [
        ((_randn(5, 3, seed=20, scale=4.0), _randn(5, 3, seed=21, scale=4.0)), "5 random points (Å)",
         "D[i, j] = ‖q_d[i] − k_d[j]‖₂ / √3, one entry per (query i, key j) pair."),
        ((_randn(6, 3, seed=22, dtype=torch.float64), _randn(6, 3, seed=24, dtype=torch.float64)),
         "float64 points", "pair every query with every key: q_d[:, None, :] − k_d[None, :, :] has shape (L, L, 3)."),
        ((same, same.clone()), "queries on top of the keys",
         "a point at zero distance from itself must give exactly 0 on the diagonal."),
        ((_randn(5, 3, seed=25, scale=1e4), _randn(5, 3, seed=26, scale=1e4)), "coordinates of 1e4 Å",
         "large coordinates must still give finite, accurate distances."),
        # Residues 1-3 Å apart, 1e4 Å from the origin: |q|² + |k|² − 2 q·k subtracts numbers
        # of 3e8 whose float32 round-off (about 20) swamps the squared distance itself.
        ((_far + _randn(_MANY, 3, seed=27, scale=1.5), _far + _randn(_MANY, 3, seed=28, scale=1.5)),
         "nearby points 1e4 Å from the origin",
         "|q|² + |k|² − 2 q·k cancels catastrophically when the points are close to each other but far "
         "from the origin (torch.cdist computes it so for more than 25 points); subtract the points "
         "first, then take the norm of the difference."),
    ]
    return [Case(label, args, _distance_reference(*args), hint, atol=1e-5, rtol=1e-5)
            for args, label, hint in inputs]


def check_distance_term(fn: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """Check ``fn(q_dist, k_dist)``: (L, 3) and (L, 3) points -> (L, L) with D[i, j] = ‖q_i − k_j‖₂/√3."""
    cases = _distance_cases()

    def diff(q, k):
        return q[:, None, :] - k[None, :, :]

    wrong = [
        (lambda q, k: torch.cdist(q, k) / math.sqrt(3),
         "torch.cdist computes |q|² + |k|² − 2 q·k for more than 25 points, which loses the distance "
         "of nearby points far from the origin to round-off (and is not exactly 0 for a point and "
         "itself): subtract the points first, or pass compute_mode='donot_use_mm_for_euclid_dist'."),
        (lambda q, k: (diff(q, k) ** 2).sum(-1) / math.sqrt(3),
         "this is the squared distance (ESM's docstring says −‖·‖², but the paper and ESM's code use ‖·‖₂)."),
        (lambda q, k: torch.linalg.vector_norm(diff(q, k), dim=-1),
         "the 1/√3 scale is missing (the same scale as the rotation term of line 7)."),
        (lambda q, k: torch.linalg.vector_norm(diff(q, k), dim=-1) / 3,
         "the scale is 1/√3, not 1/3."),
        (lambda q, k: ((q * q).sum(-1)[:, None] + (k * k).sum(-1)[None, :] - 2 * q @ k.T).clamp_min(0).sqrt()
         / math.sqrt(3),
         "the expansion |q|² + |k|² − 2 q·k loses the distance to round-off for nearby points far from "
         "the origin: subtract the points first."),
    ]
    return run_check("distance_term", fn, cases, wrong)


# ------------------------------------------- lines 3-14: the update of the whole layer

def _layer_update_reference(q_rot, k_rot, q_dist, k_dist, v, R, t, w_r, w_d, out_proj) -> Tensor:
    """The library's Linear(O) for one protein: local (L, H, 3) vectors and (L, 3, 3), (L, 3)
    frames -> (L, d). The same steps as ``GeometricSelfAttention.forward`` (the tests check
    that they agree)."""
    with torch.no_grad():
        rb, tb = R[None, :, None], t[None, :, None]  # one frame per residue, shared by its heads
        rot = [apply_rotation(rb, a[None]) for a in (q_rot, k_rot, v)]
        dist = [apply_frame(rb, tb, a[None]) for a in (q_dist, k_dist)]
        o = geometric_attention(rot[0], rot[1], dist[0], dist[1], rot[2], w_r, w_d, impl="naive")
        o = apply_rotation(rb.transpose(-1, -2), o)[0]  # (L, H, 3) in each residue's frame
        return out_proj(o.flatten(-2))


def _slipped_update(slip: str) -> Callable[..., Tensor]:
    """The update with one known slip, written out with einsum (not the library)."""
    def update(q_rot, k_rot, q_dist, k_dist, v, R, t, w_r, w_d, out_proj):
        def turn(rot, x):  # R_i applied to every head's vector of residue i
            return torch.einsum("lab,lhb->lha", rot, x)

        with torch.no_grad():
            fwd = R.transpose(-1, -2) if slip == "transposed" else R
            qr, kr, vg = turn(fwd, q_rot), turn(fwd, k_rot), turn(fwd, v)
            qd, kd = turn(fwd, q_dist) + t[:, None], turn(fwd, k_dist) + t[:, None]
            if slip == "translated values":
                vg = vg + t[:, None]
            if slip == "line 8 as printed":
                qd, kd = qr, kr
            scale = 1.0 if slip == "no sqrt3" else 1 / math.sqrt(3)
            dot = torch.einsum("ihc,jhc->hij", qr, kr) * scale
            dist = torch.linalg.vector_norm(qd[:, None] - kd[None], dim=-1).permute(2, 0, 1) * scale
            scores = w_r[:, None, None] * dot - w_d[:, None, None] * dist  # (H, L, L)
            p = torch.softmax(scores, dim=-2 if slip == "softmax over queries" else -1)
            o = torch.einsum("hij,jhc->ihc", p, vg)
            if slip == "rotated back by R":
                o = turn(R, o)
            elif slip != "no rotation back":
                o = turn(fwd.transpose(-1, -2), o)
            return out_proj(o.flatten(-2))

    return update


_UPDATE_SLIPS = [
    ("translated values",
     "the values were translated. Line 11 only rotates them, v_j = R_j v̂_j: values are directions, "
     "like q^r, and ESM3's code adds no t_j (with a t_j the output would move with the protein)."),
    ("line 8 as printed",
     "the distance term uses the rotation vectors q^r, k^r, as line 8 is printed. Which vectors were "
     "moved by the full frame T_i, translation included?"),
    ("no rotation back",
     "O was left in the global frame. Line 13 rotates each O_i back into residue i's own frame "
     "with R_iᵀ; without it the output turns when the protein turns."),
    ("rotated back by R",
     "line 13 applies R_i⁻¹ = R_iᵀ, not R_i again."),
    ("transposed",
     "the frames were applied as Rᵀ. R_i maps local to global as a matrix times a column vector, "
     "R_i @ v (geoattn.apply_rotation does this)."),
    ("no sqrt3",
     "the 1/√3 of lines 7 and 8 is missing (geoattn.geometric_attention applies it for you)."),
    ("softmax over queries",
     "the softmax runs over the queries; line 10 normalizes over the keys j, so each row sums to 1."),
]


def _update_cases() -> list[Case]:
    def case(label, hint, R, t, heads, w_r, w_d, seed, d=5, dtype=torch.float32):
        n = R.shape[0]
        vecs = [_randn(n, heads, 3, seed=seed + i, dtype=dtype, scale=3.0 if i in (2, 3) else 1.0)
                for i in range(5)]  # q_rot, k_rot, q_dist (Å), k_dist (Å), v
        with torch.random.fork_rng(devices=[]):  # Linear's own init must not move the reader's seed
            out_proj = torch.nn.Linear(3 * heads, d, dtype=dtype).requires_grad_(False)
        with torch.no_grad():  # from the check's own generator
            out_proj.weight.copy_(_randn(d, 3 * heads, seed=seed + 5, dtype=dtype, scale=0.3))
            out_proj.bias.copy_(_randn(d, seed=seed + 6, dtype=dtype, scale=0.1))
        w = [torch.tensor(x, dtype=dtype) for x in (w_r, w_d)]
        args = (*vecs, R.to(dtype), t.to(dtype), *w, out_proj)
        return Case(label, args, _layer_update_reference(*args), hint, atol=1e-5, rtol=1e-5)

    rot, trans = ubiquitin().frames()
    gen = torch.Generator().manual_seed(70)
    far_rot = random_rotation(6, generator=gen)
    far_t = 30.0 + 5.0 * torch.randn(6, 3, generator=gen)
    one = (rot[:1], trans[:1])
    return [
        case("ubiquitin's first 8 residues, 2 heads", "O = Linear(R_iᵀ Σ_j P_ij R_j v̂_j): rotate the "
             "vectors into the global frame (lines 3-6, 11), attend (7-12), rotate back (13), then out_proj.",
             rot[:8], trans[:8], 2, [0.7, 1.3], [1.1, 0.4], seed=80),
        case("6 random frames 30 Å from the origin", "only q^d and k^d get the translation t_i.",
             far_rot, far_t, 2, [0.5, 0.9], [0.8, 0.3], seed=90),
        case("float64, ubiquitin residues 20-26, 3 heads", "keep the dtype of the inputs.",
             rot[20:27], trans[20:27], 3, [0.3, 1.0, 2.0], [1.0, 0.6, 0.0], seed=100, dtype=torch.float64),
        case("a pure distance head (w_r = 0), ubiquitin residues 40-49",
             "with w_r = 0 only the distance term is left: nearby keys get the most weight.",
             rot[40:50], trans[40:50], 1, [0.0], [2.0], seed=110),
        case("a single residue", "with one residue, P = 1: the update is out_proj of its own local value.",
             one[0], one[1], 2, [0.7, 0.7], [0.7, 0.7], seed=120),
    ]


def check_layer_update(fn: Callable[..., Tensor]) -> CheckResult:
    """Check ``fn(q_rot, k_rot, q_dist, k_dist, v, R, t, w_r, w_d, out_proj)``: the five local
    vector sets (L, H, 3), frames R (L, 3, 3) and t (L, 3), weights (H,) after softplus and
    an ``nn.Linear(3H, d)`` -> the update Linear(O) of line 14, shape (L, d)."""
    cases = _update_cases()
    wrong = [(_slipped_update(slip), hint) for slip, hint in _UPDATE_SLIPS]
    return run_check("layer_update", fn, cases, wrong)


# ------------------------------------------------- the two distance kernels at step 0

_LN2, _SQRT3 = math.log(2.0), math.sqrt(3.0)
# IPA at its start: gamma = 1, w_L = sqrt(1/3), w_C = sqrt(2 / (9 N_qp)), N_qp = 4 points
_IPA_C = math.sqrt(1 / 3) * math.sqrt(2 / 36) / 2 * 4


def _kernels(d: Tensor, *, esm_c=_LN2 / _SQRT3, esm_power=1, ipa_c=_IPA_C, ipa_unit=10.0):
    """(ESM3's, IPA's) weight of a key at distance d (Å) relative to one at distance 0."""
    return torch.exp(-esm_c * d ** esm_power), torch.exp(-ipa_c * (d / ipa_unit) ** 2)


def check_kernel_weights(fn: Callable[[Tensor], tuple[Tensor, Tensor]]) -> CheckResult:
    """Check ``fn(d)``: distances (Å) -> (ESM3's weight, IPA's weight), each relative to a key
    at distance 0, both at their initial weights (chapter 4's "Why ESM3 made these choices")."""
    inputs = [
        (torch.tensor([0.0, 4.0, 8.0, 15.0, 30.0], dtype=torch.float64), "d = 0, 4, 8, 15, 30 Å",
         "ESM3: exp(−w_d·d/√3) with w_d = softplus(0) = ln 2; IPA: exp(−w_L·γ·w_C/2 · Σ_p d²)."),
        (torch.linspace(0.0, 50.0, 11, dtype=torch.float64), "eleven distances up to 50 Å",
         "both kernels are 1 at d = 0 and fall with d."),
        (torch.tensor([[1.0, 2.0], [3.0, 12.0]], dtype=torch.float64), "a (2, 2) tensor of distances",
         "work elementwise, for any shape."),
    ]
    cases = [Case(label, (d,), _kernels(d), hint, atol=1e-12, rtol=1e-9) for d, label, hint in inputs]
    wrong = [
        (lambda d: _kernels(d, ipa_unit=1.0),
         "IPA's distances are in AlphaFold2's units of 10 Å (OpenFold's trans_scale_factor): divide d by 10."),
        (lambda d: _kernels(d, esm_power=2),
         "ESM3's distance term is the plain norm, not the square (ESM's docstring says ‖·‖², its code does not)."),
        (lambda d: _kernels(d, esm_c=_LN2),
         "the distance term is divided by √3, as the rotation term is."),
        (lambda d: _kernels(d, esm_c=1 / _SQRT3),
         "the initial weight is softplus(0) = ln 2, not 1."),
        (lambda d: _kernels(d, ipa_c=_IPA_C / 4),
         "IPA sums the squared distances of its N_qp = 4 query and key points (all at distance d here)."),
        (lambda d: _kernels(d, ipa_c=_IPA_C / math.sqrt(1 / 3)),
         "IPA multiplies the whole score, the point term included, by w_L = √(1/3)."),
    ]
    return run_check("kernel_weights", fn, cases, wrong)
