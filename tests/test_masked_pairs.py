"""A masked pair never influences an output or a gradient; checked head weights; overflow
gives NaN, never a row of zeros; empty inputs; dtype mismatches name the argument.

The classes (issue: NaN across chains, unchecked weights, silent zeros, size 0, dtypes):
- a NaN or inf in one chain of a packed batch reaches only that chain's rows, in the
  output and in every gradient, whichever input holds it, in every implementation;
- per-chain centring: one chain's far or huge points change no digit of another chain;
- scaled dot-product attention and MultiHeadAttention with per-pair masks: the same,
  gradients included;
- head weights: negative, NaN or infinite is a ValueError naming the weight;
- a score that overflows fp32 gives NaN; a row with no key to attend gives zeros;
- a size-0 dimension gives an empty output of the right shape;
- an input whose dtype differs from the layer's parameters is a ValueError naming it.
"""
import math

import pytest
import torch

import geoattn
from geoattn import GeometricSelfAttention, InvariantPointAttention, MultiHeadAttention
from geoattn.attention import scaled_dot_product_attention, softmax
from helpers import make_inputs

IMPLS = ["naive", "chunked", "triton"]  # triton runs in its interpreter on a CPU (tests/conftest.py)
NAMES = ["q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight"]
CHAIN = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
# Triton computes fp64 inputs in fp32 (geoattn.kernels.launch's docstring).
TOL = {"naive": dict(atol=1e-12, rtol=1e-10), "chunked": dict(atol=1e-12, rtol=1e-10),
       "triton": dict(atol=1e-5, rtol=1e-5)}


def _block(impl):
    return 16 if impl == "triton" else 4


def run(impl, inputs, key_mask=None, rows=slice(None), **kw):
    """Output, and the gradients of the sum of ``out[:, rows]`` (e.g. chain 0's loss)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = geoattn.geometric_attention(*leaves, key_mask, impl=impl, block_size=_block(impl), **kw)
    cot = torch.zeros_like(out)
    cot[:, rows] = torch.linspace(-1, 1, cot[:, rows].numel(), dtype=out.dtype).reshape(cot[:, rows].shape)
    return out, torch.autograd.grad(out, leaves, cot)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_input_in_one_chain_never_reaches_the_other(impl, which, value):
    inputs = make_inputs(11, 1, 8, 2)
    out, grads = run(impl, inputs, chain_id=CHAIN, rows=slice(0, 4))
    bad = [t.clone() for t in inputs]
    bad[which][0, 6, 1, 0] = value  # residue 6 (chain 1), head 1
    out_bad, grads_bad = run(impl, bad, chain_id=CHAIN, rows=slice(0, 4))
    # chain 0: the same output and the same, finite gradients of its own loss
    torch.testing.assert_close(out_bad[0, :4], out[0, :4], **TOL[impl])
    for name, g, g_bad in zip(NAMES, grads, grads_bad):
        assert torch.isfinite(g_bad).all(), name
        torch.testing.assert_close(g_bad, g, **TOL[impl], msg=f"gradient of {name}")
    # chain 1: the NaN still reaches the rows that read it
    if which in (0, 2):  # a query: its own row
        assert out_bad[0, 6, 1].isnan().all()
    elif which == 4:  # a value coordinate: that coordinate of every query of its chain and head
        assert out_bad[0, 4:, 1, 0].isnan().all() and not out_bad[0, 4:, 1, 1:].isnan().any()
    else:  # a key: every query of its chain and head
        assert out_bad[0, 4:, 1].isnan().all()
    assert not out_bad[0, :, 0].isnan().any(), "head 0 holds no NaN"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_masked_pair_gives_no_nan_gradient_with_a_loss_over_every_output(impl):
    # Every query of chain 1 may read the NaN; chain 0's gradients must stay those of the
    # clean input (a masked pair's dS = 0 must never meet the NaN, e.g. in dS · k_r).
    inputs = make_inputs(12, 1, 8, 2)
    bad = [t.clone() for t in inputs]
    bad[1][0, 5] = math.nan
    _, grads = run(impl, inputs, chain_id=CHAIN, rows=slice(0, 4))
    leaves = [t.detach().clone().requires_grad_(True) for t in bad]
    out = geoattn.geometric_attention(*leaves, chain_id=CHAIN, impl=impl, block_size=_block(impl))
    out[:, :4].sum().backward()
    for name, leaf in zip(NAMES, leaves):
        if leaf.grad.dim() == 4:
            assert torch.isfinite(leaf.grad[0, :4]).all(), name
            assert torch.all(leaf.grad[0, 4:] == 0), name  # chain 0's loss does not depend on chain 1


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scale", [1e6, 1e30])
def test_one_chain_far_away_or_huge_costs_another_no_digit(impl, scale):
    """Chain 1's points at 1e6 Å (a global centre costs chain 0 its digits in fp32) or at
    1e30 (the global centre, or a global overflow bound, made chain 0 NaN)."""
    inputs = make_inputs(13, 1, 8, 2, dtype=torch.float32)
    alone = geoattn.geometric_attention(*[t[:, :4] for t in inputs[:5]], *inputs[5:], impl=impl)
    far = [t.clone() for t in inputs]
    far[2][0, 4:] += scale
    far[3][0, 4:] += scale
    out = geoattn.geometric_attention(*far, chain_id=CHAIN, impl=impl)
    torch.testing.assert_close(out[0, :4], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_of_one_chain_are_independent_of_a_far_other_chain(impl):
    # Cross-chain distances of ~1e30 overflowed (0 · inf in dS · ‖q − k‖ of the backward)
    # before the points were centred per chain.
    inputs = make_inputs(14, 1, 8, 2, dtype=torch.float32)
    _, grads = run(impl, [t[:, :4] for t in inputs[:5]] + inputs[5:])
    far = [t.clone() for t in inputs]
    far[2][0, 4:] += 1e30
    far[3][0, 4:] += 1e30
    _, grads_far = run(impl, far, chain_id=CHAIN, rows=slice(0, 4))
    for name, g, g_far in zip(NAMES, grads, grads_far):
        g_far = g_far[:, :4] if g_far.dim() == 4 else g_far
        torch.testing.assert_close(g_far, g, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


def test_key_centre_is_per_chain():
    kd = torch.arange(24, dtype=torch.float64).reshape(1, 1, 8, 3)
    key_mask = torch.tensor([[True, True, False, True, True, True, True, False]])
    centre = geoattn.distances.key_centre(kd, key_mask, CHAIN)
    assert centre.shape == (1, 1, 8, 3)
    torch.testing.assert_close(centre[0, 0, 0], kd[0, 0, [0, 1, 3]].mean(0))
    torch.testing.assert_close(centre[0, 0, 7], kd[0, 0, [4, 5, 6]].mean(0))


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("where", ["k", "v"])
def test_sdpa_per_pair_mask_keeps_gradients_of_unmasked_rows(value, where):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    chain = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = chain[:, None] == chain[None, :]  # (L_q, L_k): per pair, as chains
    bad = {"k": k.clone(), "v": v.clone()}
    bad[where][:, 4, 1] = value

    def grads(k_, v_):
        leaves = [t.clone().requires_grad_(True) for t in (q, k_, v_)]
        z = scaled_dot_product_attention(*leaves, mask)
        z[:, :3].sum().backward()
        return z, [t.grad for t in leaves]

    z, ref = grads(k, v)
    z_bad, got = grads(bad["k"], bad["v"])
    assert torch.equal(z_bad[:, :3], z[:, :3])
    assert z_bad[:, 3:].isnan().any()
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_mha_with_a_per_pair_mask_keeps_a_nan_in_its_own_rows():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = mask[:, None] == mask[None, :]
    x_bad = x.clone()
    x_bad[0, 4, 2] = math.nan
    out, _ = mha(x, mask=mask)
    leaf = x_bad.clone().requires_grad_(True)
    out_bad, alpha = mha(leaf, mask=mask)
    torch.testing.assert_close(out_bad[0, :3], out[0, :3])
    assert out_bad[0, 3:].isnan().all() and alpha[0, :, 3:].isnan().all()
    out_bad[0, :3].sum().backward()
    assert torch.isfinite(leaf.grad).all() and torch.all(leaf.grad[0, 3:] == 0)
    # the shared projections' gradients: 0 · NaN of the NaN row must not reach them
    got = {n: p.grad.clone() for n, p in mha.named_parameters()}
    mha.zero_grad()
    mha(x.clone(), mask=mask)[0][0, :3].sum().backward()
    for n, p in mha.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("where", ["x", "rotations", "translations"])
def test_layer_nan_in_one_chain_leaves_the_other_chains_parameter_gradients(impl, where):
    torch.manual_seed(0)
    layer = GeometricSelfAttention(12, 2, pre_layernorm=True, bias=True, impl=impl)
    x, trans = torch.randn(1, 8, 12), torch.randn(1, 8, 3) * 3
    rot = torch.linalg.qr(torch.randn(1, 8, 3, 3))[0]
    inputs = {"x": x, "rotations": rot, "translations": trans}

    def grads(given):
        layer.zero_grad()
        out = layer(given["x"], given["rotations"], given["translations"], chain_id=CHAIN)
        out[0, :4].sum().backward()
        return out, {n: p.grad.clone() for n, p in layer.named_parameters()}

    ref, ref_grads = grads(inputs)
    bad = dict(inputs)
    bad[where] = inputs[where].clone()
    bad[where][0, 6, 0] = math.nan
    out, got = grads(bad)
    torch.testing.assert_close(out[0, :4], ref[0, :4])
    assert out[0, 4:].isnan().any()
    for n in ref_grads:
        torch.testing.assert_close(got[n], ref_grads[n], msg=n)


# ------------------------------------------------------------------------ head weights


@pytest.mark.parametrize("name", ["rot_weight", "dist_weight"])
@pytest.mark.parametrize("value", [-0.5, -1e-30, math.nan, math.inf])
def test_a_bad_head_weight_is_a_value_error_naming_it(name, value):
    inputs = make_inputs(15, 1, 5, 2)
    index = NAMES.index(name)
    inputs[index] = inputs[index].clone()
    inputs[index][1] = value
    calls = [lambda impl=impl: geoattn.geometric_attention(*inputs, impl=impl) for impl in IMPLS]
    calls += [lambda: geoattn.geometric_attention_weights(*inputs[:4], *inputs[5:]),
              lambda: geoattn.geometric_logits(*inputs[:4], *inputs[5:]),
              lambda: geoattn.chunked.chunked_geometric_attention(*inputs)]
    for call in calls:
        with pytest.raises(ValueError, match=f"^{name} must be finite and non-negative"):
            call()


@pytest.mark.parametrize("raw", [-1e4, -80.0, 0.0, 50.0, 1e4])
def test_the_layers_own_weights_never_trip_the_check(raw):
    layer = GeometricSelfAttention(12, 2, impl="chunked")
    with torch.no_grad():
        layer.rot_scale.fill_(raw)
        layer.dist_scale.fill_(-raw)
    x, rot, trans = torch.randn(1, 5, 12), torch.eye(3).expand(1, 5, 3, 3), torch.randn(1, 5, 3)
    assert torch.isfinite(layer(x, rot, trans)).all()
    layer.set_head_weights(rot_weight=0.0, dist_weight=0.0)
    assert torch.isfinite(layer(x, rot, trans)).all()


# ------------------------------------------------------------ overflow, no key, empty


@pytest.mark.parametrize("impl", IMPLS)
def test_a_rotation_term_overflowing_for_every_key_gives_nan_not_zeros(impl):
    inputs = make_inputs(16, 2, 6, 2, dtype=torch.float32)
    inputs[0], inputs[1] = inputs[0].clone(), inputs[1].clone()
    inputs[0][0, 2, 1] = torch.tensor([1e20, 0.0, 0.0])  # query 2, head 1
    inputs[1][0, :, 1] = torch.tensor([-1e20, 0.0, 0.0])  # every key of head 1: q·k = -1e40
    key_mask = torch.ones(2, 6, dtype=torch.bool)
    key_mask[1] = False  # batch 1 has no key at all: its rows are zeros
    out = geoattn.geometric_attention(*inputs, key_mask, impl=impl)
    assert out[0, 2, 1].isnan().all(), "overflow to -inf at every key is NaN, not a row of zeros"
    assert torch.all(out[1] == 0), "a row with no key to attend is zeros"
    assert not out[0, :, 0].isnan().any()
    ref = geoattn.geometric_attention(*inputs, key_mask, impl="naive")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_rotation_term_overflowing_at_one_key_gives_nan(impl):
    # As an overflowing distance does: never a silent weight of 0.
    inputs = make_inputs(17, 1, 6, 2, dtype=torch.float32)
    inputs[0], inputs[1] = inputs[0].clone(), inputs[1].clone()
    inputs[0][0, 2, 1] = torch.tensor([1e20, 0.0, 0.0])
    inputs[1][0, 4, 1] = torch.tensor([-1e20, 0.0, 0.0])
    out = geoattn.geometric_attention(*inputs, impl=impl)
    assert out[0, 2, 1].isnan().all()
    assert not out[0, :, 0].isnan().any()


@pytest.mark.parametrize("impl", IMPLS)
def test_a_masked_query_row_with_a_nan_query_gives_zeros(impl):
    inputs = make_inputs(18, 1, 6, 2)
    inputs[0] = inputs[0].clone()
    inputs[0][0, 1] = math.nan
    chain = torch.tensor([[0, 1, 2, 2, 2, 2]])
    key_mask = torch.tensor([[True, False, True, True, True, True]])  # chain 1 has no key
    out, grads = run(impl, inputs, key_mask, chain_id=chain)
    assert torch.all(out[0, 1] == 0)
    assert all(torch.isfinite(g).all() for g in grads)


def test_softmax_over_a_dimension_of_size_0():
    for shape, dim in (((2, 0), -1), ((0, 3), 0), ((2, 0, 4), 1)):
        x = torch.randn(shape, requires_grad=True)
        p = softmax(x, dim=dim, mask=torch.ones(shape, dtype=torch.bool))
        assert p.shape == shape
        p.sum().backward()
        assert x.grad.shape == shape
        assert softmax(x, dim=dim).shape == shape


def test_attention_with_no_keys_or_no_queries():
    z, alpha = scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 0, 4), torch.randn(2, 0, 5),
                                            return_weights=True)
    assert z.shape == (2, 3, 5) and torch.all(z == 0) and alpha.shape == (2, 3, 0)
    z = scaled_dot_product_attention(torch.randn(2, 0, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    assert z.shape == (2, 0, 5)
    mha = MultiHeadAttention(8, 2)
    out, alpha = mha(torch.randn(3, 0, 8))
    assert out.shape == (3, 0, 8) and alpha.shape == (3, 2, 0, 0)
    out, alpha = mha(torch.randn(3, 4, 8), torch.randn(3, 0, 8))
    assert out.shape == (3, 4, 8) and alpha.shape == (3, 2, 4, 0)


def test_geometric_attention_weights_at_length_0():
    inputs = make_inputs(0, 2, 0, 3)
    assert geoattn.geometric_attention_weights(*inputs[:4], *inputs[5:]).shape == (2, 3, 0, 0)
    layer = GeometricSelfAttention(12, 3)
    x, rot, trans = torch.randn(2, 0, 12), torch.randn(2, 0, 3, 3), torch.randn(2, 0, 3)
    assert layer.attention_weights(x, rot, trans).shape == (2, 3, 0, 0)
    assert layer(x, rot, trans).shape == (2, 0, 12)


# ------------------------------------------------------------------------------ dtypes


def _layers():
    return [GeometricSelfAttention(12, 2), InvariantPointAttention(12, 2)]


@pytest.mark.parametrize("layer", _layers(), ids=["geometric", "ipa"])
def test_x_of_another_dtype_than_the_layer_is_a_value_error(layer):
    x, rot, trans = torch.randn(1, 5, 12), torch.eye(3).expand(1, 5, 3, 3), torch.randn(1, 5, 3)
    with pytest.raises(ValueError, match=r"^x has dtype torch.float64 but the layer's parameters are torch.float32"):
        layer(x.double(), rot, trans)
    layer.double()
    with pytest.raises(ValueError, match=r"^x has dtype torch.float32 but the layer's parameters are torch.float64"):
        layer(x, rot, trans)
    layer.float()


@pytest.mark.parametrize("layer", _layers(), ids=["geometric", "ipa"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_frames_of_any_float_dtype_are_converted(layer, dtype):
    torch.manual_seed(1)
    x, rot, trans = torch.randn(1, 5, 12), torch.eye(3).expand(1, 5, 3, 3), torch.randn(1, 5, 3)
    rounded = trans.to(dtype).float()  # the identity rotations are exact in every dtype
    ref = layer(x, rot, rounded)
    for r, t in ((rot.to(dtype), rounded), (rot, trans.to(dtype))):
        out = layer(x, r, t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref)


def test_mha_inputs_of_another_dtype_are_a_value_error():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 4, 8)
    for args, name in (((x.double(),), "query"), ((x, x.double()), "key"), ((x, x, x.half()), "value")):
        with pytest.raises(ValueError, match=f"^{name} has dtype"):
            mha(*args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", ["distance", "rotation"])
def test_a_chain_too_large_for_fp32_leaves_the_other_chain_and_its_gradients(impl, which):
    # Chain 1's own scores would overflow (0 · inf or NaN · 0 inside reached the shared
    # head weights' gradients of chain 0's loss): its rows are NaN, chain 0 is untouched.
    inputs = make_inputs(19, 1, 8, 2, dtype=torch.float32)
    _, grads = run(impl, [t[:, :4] for t in inputs[:5]] + inputs[5:])
    big = [t.clone() for t in inputs]
    for k in ((2, 3) if which == "distance" else (0, 1)):
        big[k][0, 4:] *= 1e30
    out, got = run(impl, big, chain_id=CHAIN, rows=slice(0, 4))
    assert out[0, 4:].isnan().all()
    torch.testing.assert_close(out[0, :4], run(impl, [t[:, :4] for t in inputs[:5]] + inputs[5:])[0][0])
    for name, g, g_big in zip(NAMES, grads, got):
        if g_big.dim() == 4:
            assert torch.all(g_big[:, 4:] == 0), name
            g_big = g_big[:, :4]
        torch.testing.assert_close(g_big, g, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("scale", [1e17, 1e18, 3e18, 1e19])
def test_every_implementation_gives_the_same_nan_rows_near_fp32s_range(scale):
    inputs = make_inputs(20, 2, 9, 2, dtype=torch.float32)
    for k in (0, 2, 3):
        inputs[k] = inputs[k] * torch.logspace(0, math.log10(scale), 9)[None, :, None, None]
    ref = geoattn.geometric_attention(*inputs, impl="naive")
    for impl in IMPLS[1:]:
        out = geoattn.geometric_attention(*inputs, impl=impl)
        assert torch.equal(out.isnan(), ref.isnan()), impl
        torch.testing.assert_close(out, ref, equal_nan=True, atol=1e-5, rtol=1e-4)
