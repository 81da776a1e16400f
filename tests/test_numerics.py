"""Every implementation gives the same answer on every input, non-finite ones included.

The classes (issue: no silent wrong answers):
- values at masked keys never matter, even NaN or ±inf, in the output or any gradient;
- a NaN (or an overflowing distance) where nothing is masked gives NaN, never a finite number;
- empty inputs (B, L or H = 0) give empty outputs and gradients for all seven inputs;
- far-away coordinates keep their digits (points are centred), and distances that overflow
  float32 give NaN, never a row of silent zeros.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from helpers import make_inputs, random_mask

IMPLS = ["naive", "chunked", "triton"]  # triton runs in its interpreter on a CPU (tests/conftest.py)
NAMES = ["q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight"]
KEY_SIDE = (1, 3, 4)  # k_rot, k_dist, v: what a key carries
# Agreement with naive on fp64 inputs: chunked to fp64 round-off; Triton computes fp64
# inputs in fp32 (geoattn.kernels.launch's docstring), so it is held to the fp32 bound.
AGREE = {
    "chunked": {"out": dict(atol=1e-12, rtol=1e-10), "grad": dict(atol=1e-10, rtol=1e-8)},
    "triton": {"out": dict(atol=2e-5, rtol=2e-5), "grad": dict(atol=1e-4, rtol=1e-4)},
}
SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 1e6])


def run(impl, inputs, key_mask=None, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = geoattn.geometric_attention(*leaves, key_mask, impl=impl, block_size=16 if impl == "triton" else 4, **kw)
    cot = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(out, leaves, cot, allow_unused=False)
    return out, grads


def poison(inputs, key_mask, value):
    """The inputs with every masked key's k_rot, k_dist and v set to ``value``."""
    out = [t.detach().clone() for t in inputs]
    for k in KEY_SIDE:
        out[k][~key_mask] = value
    return out


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), value=SPECIAL, length=st.integers(1, 11))
def test_masked_keys_never_matter(impl, seed, value, length):
    inputs = make_inputs(seed, 2, length, 2)
    key_mask = random_mask(seed + 1, 2, length, p_keep=0.6)
    out, grads = run(impl, inputs, key_mask)
    out_p, grads_p = run(impl, poison(inputs, key_mask, value), key_mask)
    assert torch.equal(out, out_p) or torch.allclose(out, out_p, atol=1e-12, rtol=0)
    for name, g, g_p in zip(NAMES, grads, grads_p):
        assert torch.isfinite(g_p).all(), name
        torch.testing.assert_close(g_p, g, atol=1e-12, rtol=0, msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_keys_get_zero_gradients(impl):
    inputs = make_inputs(3, 1, 9, 2)
    key_mask = random_mask(4, 1, 9, p_keep=0.5)
    _, grads = run(impl, inputs, key_mask)
    for k in KEY_SIDE:
        assert torch.all(grads[k][~key_mask] == 0), NAMES[k]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), value=SPECIAL, length=st.integers(1, 11))
def test_implementations_agree_with_non_finite_values_at_masked_keys(seed, value, length):
    inputs = make_inputs(seed, 2, length, 2)
    key_mask = random_mask(seed + 1, 2, length, p_keep=0.6)
    poisoned = poison(inputs, key_mask, value)
    ref, ref_grads = run("naive", poisoned, key_mask)
    for impl in IMPLS[1:]:
        out, grads = run(impl, poisoned, key_mask)
        tol = AGREE[impl]
        torch.testing.assert_close(out, ref, **tol["out"], msg=f"{impl}: output")
        for name, g, g_ref in zip(NAMES, grads, ref_grads):
            torch.testing.assert_close(g, g_ref, **tol["grad"], msg=f"{impl}: gradient of {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_are_independent_of_a_far_masked_key(impl):
    """A padding key at 1e6 Å changes no gradient (the chunked backward once centred on it)."""
    inputs = make_inputs(5, 1, 12, 2, dtype=torch.float32)
    key_mask = torch.ones(1, 12, dtype=torch.bool)
    key_mask[0, -1] = False
    _, grads = run(impl, inputs, key_mask)
    _, grads_far = run(impl, poison(inputs, key_mask, 1e6), key_mask)
    for name, g, g_far in zip(NAMES, grads, grads_far):
        torch.testing.assert_close(g_far, g, atol=1e-6, rtol=1e-5, msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", [0, 1, 2, 3, 4])
def test_a_nan_that_is_not_masked_gives_nan(impl, which):
    inputs = make_inputs(6, 1, 5, 2)
    inputs[which] = inputs[which].clone()
    inputs[which][0, 2, 1, 0] = math.nan  # residue 2, head 1
    out = geoattn.geometric_attention(*inputs, impl=impl)
    if which in (0, 2):  # a NaN query (q_rot or q_dist) spoils its own row only
        assert out[0, 2, 1].isnan().all() and not out[0, :2].isnan().any()
    elif which == 4:  # a NaN value coordinate reaches that coordinate of every query of its head
        assert out[0, :, 1, 0].isnan().all() and not out[0, :, 1, 1:].isnan().any()
    else:  # a NaN key reaches every query of its head
        assert out[0, :, 1].isnan().all()
    assert not out[0, :, 0].isnan().any(), "head 0 holds no NaN"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1, 0, 2), (0, 4, 2), (1, 4, 0), (0, 0, 0)])
def test_empty_inputs_give_empty_outputs_and_all_seven_gradients(impl, shape):
    inputs = make_inputs(0, *shape, requires_grad=True)
    out = geoattn.geometric_attention(*inputs, impl=impl)
    assert out.shape == (*shape, 3)
    out.sum().backward()
    for name, t in zip(NAMES, inputs):
        assert t.grad is not None and t.grad.shape == t.shape, name
        assert torch.all(t.grad == 0), name


@pytest.mark.parametrize("impl", IMPLS)
def test_points_far_from_the_origin_keep_their_digits(impl):
    """Shifting q_d and k_d together changes no distance; the centred computation agrees."""
    inputs = make_inputs(7, 1, 10, 2, dtype=torch.float32, spread=5.0)
    ref = geoattn.geometric_attention(*inputs, impl=impl)
    shifted = list(inputs)
    offset = torch.tensor([3e4, -2e4, 1e4])  # exactly representable shift, 1e4 Å scale
    shifted[2], shifted[3] = inputs[2] + offset, inputs[3] + offset
    torch.testing.assert_close(geoattn.geometric_attention(*shifted, impl=impl), ref, atol=5e-3, rtol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scale", [1e19, 1e25])
def test_overflowing_distances_give_nan_never_silent_zeros(impl, scale):
    inputs = make_inputs(8, 1, 6, 2, dtype=torch.float32)
    inputs[2], inputs[3] = inputs[2] * scale, inputs[3] * scale
    out = geoattn.geometric_attention(*inputs, impl=impl)
    ref = geoattn.geometric_attention(*[t.double() for t in inputs], impl="naive")
    for row, ref_row in zip(out.reshape(-1, 3), ref.reshape(-1, 3)):
        # each row is either right (within fp32) or NaN: never a finite wrong answer
        assert row.isnan().all() or torch.allclose(row.double(), ref_row, atol=1e-5), (row, ref_row)
    assert not (out == 0).all(dim=-1).any(), "no row of silent zeros"


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_gradients_at_zero_head_weights(impl):
    # A weight of exactly 0 (set_head_weights(dist_weight=0)) still has the gradient of
    # w·D, namely D: folding w_d into the points, ‖w q − w k‖, would give 0 there.
    inputs = make_inputs(9, 1, 7, 2)
    inputs[5], inputs[6] = torch.tensor([0.0, 0.7], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64)
    out, grads = run("naive", inputs)
    assert grads[6].abs().min() > 1e-3 and grads[5][0].abs() > 1e-6
    other_out, other_grads = run(impl, inputs)
    tol = AGREE[impl]
    torch.testing.assert_close(other_out, out, **tol["out"])
    for g, ref in zip(other_grads, grads):
        torch.testing.assert_close(g, ref, **tol["grad"])
