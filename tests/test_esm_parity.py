"""GeometricSelfAttention with ESM's weights loaded reproduces ESM's layer (restated in
geoattn.esm_reference in ESM's names, row order and memory pattern), for ESM3's transformer
(mask_and_zero_frameless=True, bias=False) and its structure encoder (False, bias=True), for
every implementation and any mix of mask, chain_id and sequence_id."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn import GeometricSelfAttention
from geoattn.esm_reference import EsmStyleGeometricAttention
from geoattn.frames import random_rotation

TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def tol(impl, dtype):
    """Triton computes fp64 inputs in fp32 (its module docstring), so it meets the fp32 bound."""
    return TOL[torch.float32 if impl == "triton" else dtype]


def esm_module(seed, c_s, heads, m, zero, bias, dtype, noise=0.3):
    torch.manual_seed(seed)
    esm = EsmStyleGeometricAttention(c_s, heads, m, mask_and_zero_frameless=zero, bias=bias)
    with torch.no_grad():  # move every parameter away from its initial value
        for name, p in esm.named_parameters():
            scale = noise if name.endswith(("per_head", "bias")) or name.startswith("s_norm") else noise / c_s**0.5
            p.add_(torch.randn_like(p) * scale)
    return esm.to(dtype)


def ours_for(esm, impl, residual_scale=1.0):
    layer = GeometricSelfAttention(esm.c_s, esm.v_heads, num_vector_messages=esm.num_vector_messages,
                                   pre_layernorm=True, bias=esm.proj.bias is not None,
                                   zero_masked_outputs=esm.mask_and_zero_frameless, residual_scale=residual_scale,
                                   impl=impl)
    return layer.to(esm.proj.weight.dtype).load_esm_state_dict(esm.state_dict())


def inputs(seed, b, length, c_s, dtype, n_chains=1, n_seqs=1, p_mask=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, c_s, generator=g, dtype=torch.float64)
    rot = random_rotation(b, length, generator=g, dtype=torch.float64)
    trans = torch.randn(b, length, 3, generator=g, dtype=torch.float64) * 6
    chain = torch.sort(torch.randint(0, n_chains, (b, length), generator=g), dim=-1).values
    seq = torch.sort(torch.randint(0, n_seqs, (b, length), generator=g), dim=-1).values
    mask = torch.rand(b, length, generator=g) >= p_mask
    # Every chain keeps one residue with a frame: a row with no key at all is where the two
    # differ by design (ESM: uniform softmax; geoattn: zeros), tested separately below.
    for bi in range(b):
        for c in chain[bi].unique():
            mask[bi, (chain[bi] == c).nonzero()[0]] = True
    return x.to(dtype), rot.to(dtype), trans.to(dtype), mask, seq, chain


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("zero, bias", [(True, False), (False, True)], ids=["transformer", "encoder"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), length=st.integers(1, 12), chains=st.integers(1, 3), seqs=st.integers(1, 3),
       p_mask=st.sampled_from([0.0, 0.3]), m=st.integers(1, 2))
def test_layer_reproduces_esm(impl, dtype, zero, bias, seed, length, chains, seqs, p_mask, m):
    esm = esm_module(seed, 8, 3, m, zero, bias, dtype)
    ours = ours_for(esm, impl, residual_scale=0.75)
    x, rot, trans, mask, seq, chain = inputs(seed, 2, length, 8, dtype, chains, seqs, p_mask)
    with torch.no_grad():
        want = x + 0.75 * esm(x, rot, trans, mask, seq, chain)
        got = ours(x, rot, trans, mask, sequence_id=seq, chain_id=chain)
    torch.testing.assert_close(got, want, atol=tol(impl, dtype), rtol=tol(impl, dtype))


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_esm3_open_layer0_and_encoder_sizes(impl, dtype):
    """ESM3-open's layer-0 width with 256 heads (shortened L), and the encoder's 16-residue neighbourhoods."""
    for c_s, heads, zero, bias, b, length in ((1536, 256, True, False, 1, 24), (1024, 128, False, True, 6, 16)):
        esm = esm_module(0, c_s, heads, 1, zero, bias, dtype)
        ours = ours_for(esm, impl, residual_scale=1 / math.sqrt(48 / 36))
        x, rot, trans, mask, seq, chain = inputs(1, b, length, c_s, dtype, n_chains=2, p_mask=0.2)
        with torch.no_grad():
            want = x + esm(x, rot, trans, mask, seq, chain) / math.sqrt(48 / 36)
            got = ours(x, rot, trans, mask, sequence_id=seq, chain_id=chain)
        torch.testing.assert_close(got, want, atol=tol(impl, dtype), rtol=tol(impl, dtype))


def test_chain_id_is_not_a_key_mask():
    """Passing the chains as a key mask (what the old docstring said) gives another answer."""
    esm = esm_module(2, 8, 2, 1, True, False, torch.float64)
    ours = ours_for(esm, "naive")
    x, rot, trans, mask, seq, _ = inputs(3, 1, 10, 8, torch.float64)
    chain = torch.tensor([[0] * 5 + [1] * 5])
    with torch.no_grad():
        want = x + esm(x, rot, trans, mask, seq, chain)
        right = ours(x, rot, trans, mask, chain_id=chain)
        wrong = ours(x, rot, trans, chain == 0)  # "mask the other chain"
    torch.testing.assert_close(right, want, atol=1e-12, rtol=1e-12)
    assert (wrong - want).abs().max() > 1e-3


def test_a_row_with_no_key_is_zero_here_and_uniform_in_esm():
    esm = esm_module(4, 8, 2, 1, False, True, torch.float64)
    ours = ours_for(esm, "naive")
    x, rot, trans, _, seq, _ = inputs(5, 1, 6, 8, torch.float64)
    chain = torch.tensor([[0, 0, 0, 1, 1, 1]])
    mask = torch.tensor([[True, True, True, False, False, False]])  # chain 1 has no frame at all
    with torch.no_grad():
        got = ours(x, rot, trans, mask, chain_id=chain)
        want = x + esm(x, rot, trans, mask, seq, chain)
    torch.testing.assert_close(got[:, :3], want[:, :3], atol=1e-12, rtol=1e-12)
    o_zero = ours.out_proj.bias.expand(3, -1)  # O = 0: the update is the output bias alone
    torch.testing.assert_close(got[0, 3:] - x[0, 3:], o_zero, atol=1e-12, rtol=0)


def test_load_esm_state_dict_reorders_the_projection_rows():
    esm = esm_module(6, 8, 2, 2, True, False, torch.float64)
    ours = ours_for(esm, "naive")
    h, m = 2, 2
    w = esm.proj.weight
    rot_qk, v, dist_qk = w.split([2 * h * 3, m * h * 3, 2 * h * 3])
    assert torch.equal(ours.proj.weight, torch.cat([rot_qk, dist_qk, v]))
    assert torch.equal(ours.rot_scale, esm.rotation_scale_per_head)
    assert torch.equal(ours.dist_scale, esm.distance_scale_per_head)


@pytest.mark.parametrize("change, key", [
    (lambda sd: sd.pop("out_proj.weight"), "out_proj.weight"),
    (lambda sd: sd.update({"proj.bias": torch.zeros(36)}), "proj.bias"),
    (lambda sd: sd.update({"distance_scale_per_head": torch.zeros(3)}), "distance_scale_per_head"),
    (lambda sd: sd.update({"proj.weight": torch.zeros(31, 8, dtype=torch.float64)}), "proj.weight"),
])
def test_load_esm_state_dict_names_the_bad_key(change, key):
    esm = esm_module(7, 8, 2, 1, True, False, torch.float64)
    sd = dict(esm.state_dict())
    change(sd)
    layer = GeometricSelfAttention(8, 2, pre_layernorm=True).double()
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        layer.load_esm_state_dict(sd)


def _complex(t):
    return torch.complex(t, torch.ones_like(t))


@pytest.mark.parametrize("key", ["proj.weight", "out_proj.weight", "rotation_scale_per_head", "s_norm.weight"])
@pytest.mark.parametrize("bad, error", [
    (_complex, ValueError),                                      # copy_ would drop the imaginary part
    (lambda t: t.round().to(torch.int64), ValueError),           # copy_ would cast it silently
    (lambda t: t > 0, ValueError),
    (lambda t: torch.empty_like(t, device="meta"), ValueError),  # no data to copy
    (lambda t: None, TypeError),
    (lambda t: "weights.pt", TypeError),
    (lambda t: t.tolist(), TypeError),
    (lambda t: _complex(t).numpy(), ValueError),
    (lambda t: t.numpy().astype(np.int32), ValueError),
    (lambda t: t.numpy().astype(object), ValueError),
])
def test_load_esm_state_dict_refuses_a_bad_value_naming_its_key(key, bad, error):
    esm = esm_module(8, 8, 2, 1, True, False, torch.float64)
    sd = dict(esm.state_dict())
    sd[key] = bad(sd[key])
    layer = GeometricSelfAttention(8, 2, pre_layernorm=True).double()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(error, match="^" + key.replace(".", r"\.") + ":"):
        layer.load_esm_state_dict(sd)
    for k, v in layer.state_dict().items():  # nothing was copied
        assert torch.equal(v, before[k]), k


def test_load_esm_state_dict_takes_numpy_arrays_and_other_float_dtypes():
    esm = esm_module(9, 8, 2, 1, True, True, torch.float64)
    expected = ours_for(esm, "naive")
    sd = {k: (v.numpy() if k.startswith("proj") else v.float()) for k, v in esm.state_dict().items()}
    layer = GeometricSelfAttention(8, 2, pre_layernorm=True, bias=True).double().load_esm_state_dict(sd)
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, expected.state_dict()[k], rtol=1e-6, atol=1e-7)


def test_load_esm_state_dict_needs_a_mapping():
    layer = GeometricSelfAttention(8, 2, pre_layernorm=True)
    with pytest.raises(TypeError, match="^state_dict"):
        layer.load_esm_state_dict([("proj.weight", torch.zeros(3))])


@pytest.mark.parametrize("kwargs, error", [({"residual_scale": math.inf}, ValueError),
                                           ({"residual_scale": "1"}, TypeError),
                                           ({"zero_masked_outputs": 1}, TypeError)])
def test_new_options_are_validated(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        GeometricSelfAttention(8, 2, **kwargs)
