"""Rigid frames: rotations are rotations, the frame algebra's identities hold, and
backbone frames follow ESM3's convention and move with the protein."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geoattn.frames import (
    apply_frame,
    apply_rotation,
    compose_frames,
    degenerate_residues,
    frames_from_backbone,
    invert_frame,
    is_rotation,
    random_rigid,
    random_rotation,
    rotation_angle,
)

SETTINGS = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from([torch.float32, torch.float64])
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


def _orthonormality_error(r):
    eye = torch.eye(3, dtype=r.dtype)
    return (r.transpose(-1, -2) @ r - eye).abs().max().item()


def _random_backbone(seed, L, dtype=torch.float64, spread=10.0):
    """Random N, CA, C with realistic bond lengths (N–CA 1.46 Å, CA–C 1.52 Å) and
    random directions; resample until no residue is nearly collinear."""
    g = _gen(seed)
    ca = torch.randn(L, 3, generator=g, dtype=torch.float64) * spread
    d1 = torch.nn.functional.normalize(torch.randn(L, 3, generator=g, dtype=torch.float64), dim=-1)
    d2 = torch.nn.functional.normalize(torch.randn(L, 3, generator=g, dtype=torch.float64), dim=-1)
    n, c = ca + 1.46 * d1, ca + 1.52 * d2
    sin = torch.linalg.cross(d1, d2, dim=-1).norm(dim=-1)
    assume(bool((sin > 0.05).all()))
    return n.to(dtype), ca.to(dtype), c.to(dtype)


# --- rotations --------------------------------------------------------------------------

@SETTINGS
@given(seed=seeds, shape=shapes, dtype=dtypes)
def test_random_rotation_is_orthonormal_with_det_one(seed, shape, dtype):
    r = random_rotation(*shape, generator=_gen(seed), dtype=dtype)
    assert r.shape == (*shape, 3, 3) and r.dtype == dtype
    assert _orthonormality_error(r) < _tol(dtype)
    assert torch.allclose(torch.linalg.det(r), torch.ones((), dtype=dtype), atol=_tol(dtype))
    assert is_rotation(r, atol=_tol(dtype)).all()


def test_random_rotation_accepts_a_shape_tuple_and_is_reproducible():
    a = random_rotation((2, 3), generator=_gen(7))
    b = random_rotation(2, 3, generator=_gen(7))
    assert a.shape == (2, 3, 3, 3) and torch.equal(a, b)
    # Drawn in float64 then cast: the same seed gives the same rotation in every dtype.
    c = random_rotation(2, 3, generator=_gen(7), dtype=torch.float64)
    assert torch.allclose(a.double(), c, atol=1e-7)
    assert random_rotation().shape == (3, 3)
    with pytest.raises(ValueError, match="batch_shape"):
        random_rotation(-1)


def test_random_rotation_is_uniform_on_so3():
    # Under the Haar measure the angle θ has density (1 - cos θ)/π on [0, π], i.e.
    # CDF F(θ) = (θ - sin θ)/π. Compare with a Kolmogorov–Smirnov bound.
    n = 20000
    theta = rotation_angle(random_rotation(n, generator=_gen(0), dtype=torch.float64)).sort().values.numpy()
    cdf = (theta - np.sin(theta)) / math.pi
    ecdf_hi = np.arange(1, n + 1) / n
    ks = max(np.abs(ecdf_hi - cdf).max(), np.abs(ecdf_hi - 1 / n - cdf).max())
    assert ks < 1.63 / math.sqrt(n)  # the 1% critical value
    # A uniform rotation sends a fixed axis to a uniform direction: mean ≈ 0.
    axes = random_rotation(n, generator=_gen(1), dtype=torch.float64)[..., :, 0]
    assert axes.mean(0).abs().max() < 4 / math.sqrt(3 * n)


def test_rotation_angle_of_known_rotations():
    for theta in (0.0, 0.3, math.pi / 2, 2.5, math.pi):
        c, s = math.cos(theta), math.sin(theta)
        rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        assert rotation_angle(rz).item() == pytest.approx(theta, abs=1e-7)


def _axis_angle(theta: torch.Tensor, seed: int) -> torch.Tensor:
    """Rodrigues' rotations (n, 3, 3) in float64 about random axes, by the angles theta."""
    u = torch.randn(len(theta), 3, generator=_gen(seed), dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    k = torch.zeros(len(theta), 3, 3, dtype=torch.float64)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -u[:, 2], u[:, 1], -u[:, 0]
    k = k - k.transpose(-1, -2)
    s, c = theta.sin()[:, None, None], theta.cos()[:, None, None]
    return torch.eye(3, dtype=torch.float64) + s * k + (1 - c) * (k @ k)


def test_rotation_angle_keeps_small_angles_in_float32():
    # acos((tr R − 1)/2) returns exactly 0 in float32 below about 3e-4 rad: cos θ rounds to 1.
    theta = torch.logspace(-8, -1, 15, dtype=torch.float64)
    r64 = _axis_angle(theta, seed=3)
    got = rotation_angle(r64.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), theta, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(rotation_angle(r64), theta, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_rotation_angle_near_pi(dtype, atol):
    # Near π, (tr R − 1)/2 ≈ −1 + δ²/2 is as flat as acos is steep: δ = 1e-4 rounds to π in float32.
    theta = math.pi - torch.tensor([1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0], dtype=torch.float64)
    got = rotation_angle(_axis_angle(theta, seed=4).to(dtype))
    torch.testing.assert_close(got.double(), theta, rtol=0.0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_angle_agrees_with_float64_on_random_rotations(dtype):
    r = random_rotation(1000, generator=_gen(5), dtype=torch.float64)
    theta = torch.acos(((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    well_conditioned = (theta > 0.1) & (theta < math.pi - 0.1)  # where acos itself is accurate
    got = rotation_angle(r.to(dtype)).double()
    torch.testing.assert_close(got[well_conditioned], theta[well_conditioned],
                               rtol=0.0, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_is_rotation_rejects_reflections_and_scalings():
    assert is_rotation(torch.eye(3)).item()
    assert not is_rotation(torch.diag(torch.tensor([1.0, 1.0, -1.0]))).item()
    assert not is_rotation(2 * torch.eye(3)).item()


# --- frame algebra ----------------------------------------------------------------------

@SETTINGS
@given(seed=seeds, shape=shapes, dtype=dtypes)
def test_apply_then_apply_inverse_is_identity(seed, shape, dtype):
    g = _gen(seed)
    r, t = random_rigid(*shape, generator=g, dtype=dtype, translation_scale=10.0)
    p = torch.randn(*shape, 3, generator=g, dtype=torch.float64).to(dtype) * 10
    ri, ti = invert_frame(r, t)
    assert torch.allclose(apply_frame(ri, ti, apply_frame(r, t, p)), p, atol=100 * _tol(dtype))
    assert torch.allclose(apply_frame(r, t, apply_frame(ri, ti, p)), p, atol=100 * _tol(dtype))


@SETTINGS
@given(seed=seeds, shape=shapes, dtype=dtypes)
def test_compose_with_inverse_is_identity(seed, shape, dtype):
    r, t = random_rigid(*shape, generator=_gen(seed), dtype=dtype, translation_scale=10.0)
    eye = torch.eye(3, dtype=dtype).expand(*shape, 3, 3)
    for rc, tc in (compose_frames(r, t, *invert_frame(r, t)), compose_frames(*invert_frame(r, t), r, t)):
        assert torch.allclose(rc, eye, atol=_tol(dtype))
        assert torch.allclose(tc, torch.zeros_like(tc), atol=100 * _tol(dtype))


@SETTINGS
@given(seed=seeds, shape=shapes, dtype=dtypes)
def test_compose_applies_frame_two_first(seed, shape, dtype):
    g = _gen(seed)
    r1, t1 = random_rigid(*shape, generator=g, dtype=dtype, translation_scale=5.0)
    r2, t2 = random_rigid(*shape, generator=g, dtype=dtype, translation_scale=5.0)
    p = torch.randn(*shape, 3, generator=g, dtype=torch.float64).to(dtype)
    rc, tc = compose_frames(r1, t1, r2, t2)
    expected = apply_frame(r1, t1, apply_frame(r2, t2, p))
    assert torch.allclose(apply_frame(rc, tc, p), expected, atol=100 * _tol(dtype))
    # Composition is not commutative: the other order is a different frame.
    if shape == ():
        assert not torch.allclose(compose_frames(r2, t2, r1, t1)[1], tc, atol=1e-3)


def test_apply_frame_and_rotation_by_hand():
    # 90° about z, then shift by (1, 2, 3): (1, 0, 0) -> (0, 1, 0) -> (1, 3, 3).
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([1.0, 2.0, 3.0])
    p = torch.tensor([1.0, 0.0, 0.0])
    assert torch.equal(apply_rotation(rz, p), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(apply_frame(rz, t, p), torch.tensor([1.0, 3.0, 3.0]))
    ri, ti = invert_frame(rz, t)
    assert torch.equal(ri, rz.T)
    assert torch.equal(ti, -(rz.T @ t))


def test_leading_dimensions_broadcast():
    g = _gen(3)
    r, t = random_rigid(5, generator=g)  # five frames
    pts = torch.randn(7, 1, 3, generator=g)  # seven points, each seen from every frame
    out = apply_frame(r, t, pts)
    assert out.shape == (7, 5, 3)
    assert torch.allclose(out[2, 4], r[4] @ pts[2, 0] + t[4], atol=1e-6)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: apply_frame(torch.eye(3)[:2], torch.zeros(3), torch.zeros(3)), "rotations"),
        (lambda: apply_frame(torch.eye(3), torch.zeros(4), torch.zeros(3)), "translations"),
        (lambda: apply_frame(torch.eye(3), torch.zeros(3), torch.zeros(2)), "points"),
        (lambda: apply_rotation(torch.eye(3).expand(4, 3, 3), torch.zeros(5, 3)), "vectors"),
        (lambda: invert_frame(torch.eye(3), torch.zeros(2, 2)), "translations"),
        (lambda: compose_frames(torch.eye(3), torch.zeros(3), torch.eye(2), torch.zeros(3)), "r2"),
        (lambda: frames_from_backbone(torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, 3)), "ca's leading"),
        (lambda: frames_from_backbone(torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 3)), "n must"),
        (lambda: frames_from_backbone(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), torch.zeros(4, 3)),
         "floating"),
        (lambda: apply_frame(torch.eye(3), torch.zeros(3, dtype=torch.float64), torch.zeros(3)),
         "translations has dtype"),
        (lambda: random_rotation(dtype=torch.int64), "dtype"),
        (lambda: random_rotation(dtype=torch.bool), "dtype"),
        (lambda: random_rigid(2, translation_scale=float("inf")), "translation_scale"),
        (lambda: random_rigid(2, translation_scale=float("nan")), "translation_scale"),
        (lambda: frames_from_backbone(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3), missing="x"),
         "missing"),
        (lambda: random_rigid(2, translation_scale=-1.0), "translation_scale"),
        (lambda: rotation_angle(torch.zeros(3)), "rotations"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- backbone frames --------------------------------------------------------------------

@SETTINGS
@given(seed=seeds, L=st.integers(1, 8), dtype=dtypes)
def test_backbone_frames_are_rotations(seed, L, dtype):
    n, ca, c = _random_backbone(seed, L, dtype)
    r, t = frames_from_backbone(n, ca, c)
    assert r.shape == (L, 3, 3) and t.shape == (L, 3) and r.dtype == dtype
    assert _orthonormality_error(r) < _tol(dtype)
    assert torch.allclose(torch.linalg.det(r), torch.ones((), dtype=dtype), atol=_tol(dtype))
    assert torch.equal(t, ca)


@SETTINGS
@given(seed=seeds, L=st.integers(1, 8))
def test_esm_convention_in_the_local_frame(seed, L):
    n, ca, c = _random_backbone(seed, L)
    r, t = frames_from_backbone(n, ca, c)
    ri, ti = invert_frame(r, t)
    n_loc, ca_loc, c_loc = (apply_frame(ri, ti, x) for x in (n, ca, c))
    zeros = torch.zeros(L, dtype=torch.float64)
    # CA at the origin.
    assert torch.allclose(ca_loc, torch.zeros_like(ca_loc), atol=1e-12)
    # C on the negative x axis, at the CA–C bond length.
    assert torch.allclose(c_loc[:, 1:], torch.zeros(L, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(c_loc[:, 0], -(c - ca).norm(dim=-1), atol=1e-12)
    # N in the xy plane, on the positive-y side, at the N–CA bond length.
    assert torch.allclose(n_loc[:, 2], zeros, atol=1e-12)
    assert (n_loc[:, 1] > 0).all()
    assert torch.allclose(n_loc.norm(dim=-1), (n - ca).norm(dim=-1), atol=1e-12)


def test_esm_convention_on_a_hand_made_residue():
    # CA at (1, 1, 1), C along +x, N up and behind: x axis = CA - C = -x̂, the part of
    # N - CA orthogonal to it is +ŷ, z = (-x̂) × ŷ = -ẑ; R = diag(-1, 1, -1), a half turn about y.
    ca = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    c = ca + torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)
    n = ca + torch.tensor([-0.5, 1.4, 0.0], dtype=torch.float64)
    r, t = frames_from_backbone(n, ca, c)
    expected = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(r, expected, atol=1e-15)
    assert torch.equal(t, ca)


@SETTINGS
@given(seed=seeds, L=st.integers(1, 8), dtype=dtypes)
def test_frames_move_with_a_global_motion(seed, L, dtype):
    # Moving every atom by (Q, s) moves every frame by it: F(Q x + s) = (Q, s) ∘ F(x).
    n, ca, c = _random_backbone(seed, L, dtype)
    q, s = random_rigid(generator=_gen(seed + 1), dtype=dtype, translation_scale=20.0)
    r, t = frames_from_backbone(n, ca, c)
    r_moved, t_moved = frames_from_backbone(*(apply_frame(q, s, x) for x in (n, ca, c)))
    r_expected, t_expected = compose_frames(q, s, r, t)
    assert torch.allclose(r_moved, r_expected, atol=10 * _tol(dtype))
    assert torch.allclose(t_moved, t_expected, atol=100 * _tol(dtype))


def test_nearly_straight_residue_still_gives_an_orthonormal_frame():
    # Just above the collinearity threshold, the second Gram–Schmidt pass keeps R orthonormal.
    ca = torch.zeros(3)
    c = torch.tensor([1.5, 0.0, 0.0])
    n = torch.tensor([-1.46, 1e-3, 0.0])
    r, _ = frames_from_backbone(n, ca, c)
    assert _orthonormality_error(r) < 1e-6
    assert torch.allclose(torch.linalg.det(r), torch.ones(()), atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["coincident_ca_c", "coincident_n_ca", "collinear", "nan", "inf"],
)
def test_degenerate_residue_raises_naming_it(case):
    n, ca, c = (x.float() for x in _fixed_backbone(4))
    if case == "coincident_ca_c":
        c[2] = ca[2]
    elif case == "coincident_n_ca":
        n[2] = ca[2]
    elif case == "collinear":
        n[2] = ca[2] + 0.9 * (ca[2] - c[2])
    elif case == "nan":
        n[2, 1] = float("nan")
    else:
        c[2, 0] = float("inf")
    with pytest.raises(ValueError, match="at index 2: no frame"):
        frames_from_backbone(n, ca, c)
    assert degenerate_residues(n, ca, c).tolist() == [False, False, True, False]
    # Batched input names the full index.
    with pytest.raises(ValueError, match=r"index \(1, 2\)"):
        frames_from_backbone(*(torch.stack([x0, x]) for x0, x in zip(_fixed_backbone(4, torch.float32), (n, ca, c))))


def test_valid_backbone_has_finite_gradients():
    # Frames are differentiable; the degeneracy check must not poison the gradient.
    n, ca, c = (x.clone().requires_grad_(True) for x in _fixed_backbone(3))
    r, t = frames_from_backbone(n, ca, c)
    (r.sum() + t.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (n, ca, c))


def _fixed_backbone(L, dtype=torch.float64):
    g = _gen(11)
    ca = torch.randn(L, 3, generator=g, dtype=torch.float64) * 5
    n = ca + torch.tensor([-0.5, 1.37, 0.0], dtype=torch.float64)
    c = ca + torch.tensor([1.52, 0.0, 0.0], dtype=torch.float64)
    return n.to(dtype), ca.to(dtype), c.to(dtype)


# --- the error policy: wrong types, mixed devices -------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: apply_frame([[1.0]], torch.zeros(3), torch.zeros(3)), "rotations"),
    (lambda: compose_frames(torch.eye(3), (0.0, 0.0, 0.0), torch.eye(3), torch.zeros(3)), "t1"),
    (lambda: random_rotation(2.0), "batch_shape"),
    (lambda: random_rotation(dtype="float32"), "dtype"),
    (lambda: random_rigid(translation_scale="1"), "translation_scale"),
])
def test_a_wrong_type_raises_type_error_naming_the_argument(call, name):
    with pytest.raises(TypeError, match=name):
        call()


@pytest.mark.parametrize("which", ["rotations", "vectors"])
def test_mixed_devices_raise_instead_of_returning_garbage(which):
    r, v = torch.eye(3), torch.ones(4, 3)
    args = {"rotations": r, "vectors": v}
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match="meta"):
        apply_rotation(**args)
    with pytest.raises(ValueError, match="translations is on meta"):
        apply_frame(r, torch.zeros(3, device="meta"), v)
    with pytest.raises(ValueError, match="points is on meta"):
        apply_frame(r, torch.zeros(3), v.to("meta"))
    assert apply_rotation(r.to("meta"), v.to("meta")).device.type == "meta"  # one device is fine


# --- residues without coordinates: ESM's "black hole" frame ----------------------------------

def test_missing_average_gives_absent_residues_the_frame_of_the_average_atoms():
    n, ca, c = _fixed_backbone(6)
    absent = torch.tensor([False, True, False, False, True, False])
    n2, ca2, c2 = n.clone(), ca.clone(), c.clone()
    n2[1, 0], c2[4] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="index 1"):
        frames_from_backbone(n2, ca2, c2)
    r, t = frames_from_backbone(n2, ca2, c2, missing="average")
    r_ref, t_ref = frames_from_backbone(n, ca, c)
    assert torch.equal(r[~absent], r_ref[~absent]) and torch.equal(t[~absent], t_ref[~absent])
    keep = ~absent
    r_avg, t_avg = frames_from_backbone(n[keep].mean(0), ca[keep].mean(0), c[keep].mean(0))
    for i in (1, 4):
        torch.testing.assert_close(r[i], r_avg, rtol=0, atol=1e-14)
        torch.testing.assert_close(t[i], t_avg, rtol=0, atol=1e-14)
    assert is_rotation(r, atol=1e-12).all()
    assert degenerate_residues(n2, ca2, c2).tolist() == absent.tolist()


def test_missing_average_per_chain_and_with_no_coordinates_at_all():
    n, ca, c = (torch.stack([x, x + 10.0]) for x in _fixed_backbone(3))  # (2, 3, 3)
    for x in (n, ca, c):
        x[1] = float("nan")  # the second chain has no coordinates at all
    r, t = frames_from_backbone(n, ca, c, missing="average")
    assert torch.equal(r[1], torch.eye(3, dtype=r.dtype).expand(3, 3, 3))
    assert torch.equal(t[1], torch.zeros(3, 3, dtype=t.dtype))
    assert torch.equal(r[0], frames_from_backbone(n[0], ca[0], c[0])[0])


def test_missing_average_still_raises_on_finite_degenerate_atoms_and_keeps_gradients_finite():
    n, ca, c = _fixed_backbone(4)
    n[0] = float("nan")
    c2 = c.clone()
    c2[2] = ca[2]
    with pytest.raises(ValueError, match="index 2"):
        frames_from_backbone(n, ca, c2, missing="average")
    n, ca, c = (x.clone().requires_grad_(True) for x in (n, ca, c))
    r, t = frames_from_backbone(n, ca, c, missing="average")
    (r.sum() + t.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (n, ca, c))
