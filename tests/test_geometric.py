"""The functional core of geometric attention: the contract of DESIGN.md, checked against a
direct per-head loop, under global rigid motions, on masked and degenerate inputs, and
for every documented ValueError."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.frames import random_rotation
from helpers import make_inputs

IMPLS_CPU = ("naive", "chunked")  # "auto" is chunked on the CPU; Triton has its own tests


def loop_reference(q_r, k_r, q_d, k_d, v, w_r, w_d, key_mask=None):
    """The contract written as loops over (b, h, i): one score per key j, then a softmax."""
    b_, length, h_, _ = v.shape
    out = torch.zeros(b_, length, h_, 3, dtype=torch.float64)
    for b in range(b_):
        keys = [j for j in range(length) if key_mask is None or bool(key_mask[b, j])]
        for h in range(h_):
            for i in range(length):
                if not keys:
                    continue  # no key to attend: zeros
                scores = []
                for j in keys:
                    dot = float(q_r[b, i, h].double() @ k_r[b, j, h].double())
                    dist = math.dist(q_d[b, i, h].double().tolist(), k_d[b, j, h].double().tolist())
                    scores.append(float(w_r[h]) * dot / math.sqrt(3) - float(w_d[h]) * dist / math.sqrt(3))
                top = max(scores)
                e = [math.exp(s - top) for s in scores]
                total = sum(e)
                for j, ej in zip(keys, e):
                    out[b, i, h] += ej / total * v[b, j, h].double()
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_naive_matches_a_per_head_loop_fp64(masked):
    args = make_inputs(0)
    key_mask = torch.tensor([[True, False, True, True, False], [False, False, False, False, False]]) if masked else None
    got = geoattn.geometric_attention(*args, key_mask, impl="naive")
    want = loop_reference(*args, key_mask)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_logits_and_weights_match_the_formula():
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(1, b=1, length=4, h=2)
    logits = geoattn.geometric_logits(q_r, k_r, q_d, k_d, w_r, w_d)
    assert logits.shape == (1, 2, 4, 4)
    # one entry by hand: batch 0, head 1, query 2, key 3
    dot = float(q_r[0, 2, 1] @ k_r[0, 3, 1])
    dist = float(torch.linalg.vector_norm(q_d[0, 2, 1] - k_d[0, 3, 1]))
    assert logits[0, 1, 2, 3].item() == pytest.approx((float(w_r[1]) * dot - float(w_d[1]) * dist) / math.sqrt(3))
    weights = geoattn.geometric_attention_weights(q_r, k_r, q_d, k_d, w_r, w_d)
    torch.testing.assert_close(weights, torch.softmax(logits, dim=-1))
    out = geoattn.geometric_attention(q_r, k_r, q_d, k_d, v, w_r, w_d, impl="naive")
    torch.testing.assert_close(out, (weights @ v.transpose(1, 2)).transpose(1, 2))


def test_the_distance_term_uses_the_distance_vectors():
    # Line 8's typo (q_r, k_r in the distance term) would make q_dist/k_dist irrelevant.
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(2)
    a = geoattn.geometric_logits(q_r, k_r, q_d, k_d, w_r, w_d)
    b = geoattn.geometric_logits(q_r, k_r, q_d + 1.0, k_d, w_r, w_d)  # move the query points only
    assert (a - b).abs().max() > 1e-3


def _global_motion(seed, dtype):
    g = torch.Generator().manual_seed(seed + 10_000)
    rot = random_rotation(generator=g, dtype=dtype)
    shift = (torch.randn(3, generator=g, dtype=torch.float64) * 20).to(dtype)
    return rot, shift


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 2), length=st.integers(1, 7), h=st.integers(1, 3))
def test_equivariance_under_global_rigid_motion_fp64(seed, b, length, h):
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(seed, b, length, h)
    rot, shift = _global_motion(seed, torch.float64)
    out = geoattn.geometric_attention(q_r, k_r, q_d, k_d, v, w_r, w_d, impl="naive")
    moved = geoattn.geometric_attention(q_r @ rot.T, k_r @ rot.T, q_d @ rot.T + shift, k_d @ rot.T + shift,
                                        v @ rot.T, w_r, w_d, impl="naive")
    torch.testing.assert_close(moved, out @ rot.T, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("impl", IMPLS_CPU)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(1, 9), h=st.integers(1, 3))
def test_equivariance_under_global_rigid_motion_fp32(impl, seed, length, h):
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(seed, 2, length, h, dtype=torch.float32)
    rot, shift = _global_motion(seed, torch.float32)
    out = geoattn.geometric_attention(q_r, k_r, q_d, k_d, v, w_r, w_d, impl=impl)
    moved = geoattn.geometric_attention(q_r @ rot.T, k_r @ rot.T, q_d @ rot.T + shift, k_d @ rot.T + shift,
                                        v @ rot.T, w_r, w_d, impl=impl)
    # fp32 round-off of points 20 Å away: ~1e-5 in the scores, so 1e-4 in the output is loose but meaningful
    torch.testing.assert_close(moved, out @ rot.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS_CPU)
def test_fully_masked_batch_element_gives_zeros_and_others_ignore_masked_keys(impl):
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(3, b=2, length=6, dtype=torch.float32)
    key_mask = torch.tensor([[True, True, False, True, False, True], [False] * 6])
    out = geoattn.geometric_attention(q_r, k_r, q_d, k_d, v, w_r, w_d, key_mask, impl=impl)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    # The loop reference skips the masked keys altogether.
    want = loop_reference(q_r[:1], k_r[:1], q_d[:1], k_d[:1], v[:1], w_r, w_d, key_mask[:1])
    torch.testing.assert_close(out[:1].double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS_CPU)
@pytest.mark.parametrize("case", ["coincident", "far"])
def test_degenerate_geometry_gives_finite_values_and_gradients(impl, case):
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(4, b=1, length=5, dtype=torch.float32)
    if case == "coincident":  # every query point on every key point: all distances exactly 0
        q_d = torch.zeros_like(q_d)
        k_d = torch.zeros_like(k_d)
    else:  # coordinates of 1e4 Å
        q_d = q_d * 1e4 / q_d.abs().max()
        k_d = k_d * 1e4 / k_d.abs().max()
    inputs = [t.clone().requires_grad_() for t in (q_r, k_r, q_d, k_d, v, w_r, w_d)]
    out = geoattn.geometric_attention(*inputs, impl=impl)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for t in inputs:
        assert torch.isfinite(t.grad).all()


def test_safe_norm_value_and_gradient_at_zero():
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    n = geoattn.safe_norm(x)
    assert n.tolist() == [0.0, 5.0]
    n.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_v_dtype_close_to_fp32(dtype):
    args = [t.to(dtype) for t in make_inputs(5, b=1, length=8, dtype=torch.float32)]
    out = geoattn.geometric_attention(*args, impl="naive")
    assert out.dtype == dtype
    ref = geoattn.geometric_attention(*(t.float() for t in args), impl="naive")  # same rounded inputs, in fp32
    tol = 1e-2 if dtype == torch.float16 else 2e-2  # one rounding of the output to the half format
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_mixed_input_dtypes_follow_v():
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(6, dtype=torch.float32)
    out = geoattn.geometric_attention(q_r.half(), k_r, q_d.bfloat16(), k_d, v.half(), w_r, w_d, impl="naive")
    assert out.dtype == torch.float16


def _bad(name, value):
    args = dict(zip(("q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight"),
                    make_inputs(7, b=2, length=4, h=3, dtype=torch.float32)))
    args["key_mask"] = torch.ones(2, 4, dtype=torch.bool)
    args[name] = value(args[name])
    return args


BAD_INPUTS = {
    "q_rot rank 3": ("q_rot", lambda t: t[0]),
    "k_rot rank 5": ("k_rot", lambda t: t[None]),
    "q_dist last dim 2": ("q_dist", lambda t: t[..., :2]),
    "v last dim 4": ("v", lambda t: torch.cat([t, t[..., :1]], -1)),
    "k_dist other batch": ("k_dist", lambda t: t[:1]),
    "v other length": ("v", lambda t: t[:, :3]),
    "k_rot other heads": ("k_rot", lambda t: t[:, :, :2]),
    "integer v": ("v", lambda t: t.long()),
    "rot_weight shape (1,)": ("rot_weight", lambda t: t[:1]),
    "dist_weight shape (H, 1)": ("dist_weight", lambda t: t[:, None]),
    "scalar rot_weight": ("rot_weight", lambda t: t[0]),
    "key_mask float": ("key_mask", lambda t: t.float()),
    "key_mask shape (B, L, 1)": ("key_mask", lambda t: t[..., None]),
    "key_mask shape (L,)": ("key_mask", lambda t: t[0]),
    "key_mask on meta": ("key_mask", lambda t: t.to("meta")),
    "v on meta": ("v", lambda t: t.to("meta")),
    "dist_weight on meta": ("dist_weight", lambda t: t.to("meta")),
    "q_dist not a tensor": ("q_dist", lambda t: t.tolist()),
}


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_input_raises_an_error_naming_the_argument(label):
    """The library's policy: TypeError for a wrong type, ValueError for a wrong shape or value."""
    name, change = BAD_INPUTS[label]
    args = _bad(name, change)
    error = TypeError if "not a tensor" in label else ValueError
    with pytest.raises(error, match=name):
        geoattn.geometric_attention(**args, impl="naive")


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl"):
        geoattn.geometric_attention(*make_inputs(8), impl="fast")
    with pytest.raises(TypeError, match="impl"):
        geoattn.geometric_attention(*make_inputs(8), impl=None)


def test_every_impl_takes_the_same_options():
    """naive accepts block_size (and ignores it), so callers need no special case."""
    inputs = make_inputs(8)
    ref = geoattn.geometric_attention(*inputs, impl="naive")
    for impl in ("naive", "chunked"):
        out = geoattn.geometric_attention(*inputs, impl=impl, block_size=4)
        torch.testing.assert_close(out, ref)


def test_attention_weights_validate_the_mask():
    q_r, k_r, q_d, k_d, v, w_r, w_d = make_inputs(9)
    with pytest.raises(ValueError, match="key_mask"):
        geoattn.geometric_attention_weights(q_r, k_r, q_d, k_d, w_r, w_d, torch.ones(2, 5))
    weights = geoattn.geometric_attention_weights(q_r, k_r, q_d, k_d, w_r, w_d,
                                                  torch.tensor([[True] * 5, [False] * 5]))
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 5, dtype=torch.float64))
    assert torch.equal(weights[1], torch.zeros_like(weights[1]))


def test_random_geometric_inputs_are_reproducible_and_valid():
    from geoattn import random_geometric_inputs

    a = random_geometric_inputs(2, 7, 3, seed=4, dist_scale=5.0, dtype=torch.float64, requires_grad=True)
    b = random_geometric_inputs(2, 7, 3, seed=4, dtype=torch.float64)
    assert [tuple(t.shape) for t in a] == [(2, 7, 3, 3)] * 5 + [(3,)] * 2
    assert all(t.dtype == torch.float64 and t.requires_grad for t in a)
    assert torch.equal(a[0].detach(), b[0]) and torch.equal(a[2].detach(), 5.0 * b[2])
    assert all((w >= 0).all() for w in a[5:])
    geoattn.geometric_attention(*a, impl="naive")  # passes the contract's validation
    assert not torch.equal(a[0].detach(), random_geometric_inputs(2, 7, 3, seed=5)[0].double())
