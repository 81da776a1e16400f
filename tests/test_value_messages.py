"""m value vectors per head (v: (B, L, H·m, 3), ESM's num_vector_messages): every
implementation weights them by their head's one map, and gives what repeating q and k
m times gave before, forward and backward, masked and non-finite inputs included."""
import pytest
import torch

import geoattn
from helpers import make_inputs, random_mask

IMPLS = ["naive", "chunked", "flex", "triton"]


def attend(impl, q_rot, k_rot, q_dist, k_dist, v, w_r, w_d, **kw):
    if impl == "flex":
        from geoattn.flex import flex_geometric_attention

        return flex_geometric_attention(q_rot, k_rot, q_dist, k_dist, v, w_r, w_d, backend=None, **kw)
    if impl == "triton":
        pytest.importorskip("geoattn.kernels.launch")
    return geoattn.geometric_attention(q_rot, k_rot, q_dist, k_dist, v, w_r, w_d, impl=impl, **kw)


def repeated(q_rot, k_rot, q_dist, k_dist, v, w_r, w_d, m):
    """Today's formulation: each head's q and k (and weights) repeated for its m values."""
    rep = [t.repeat_interleave(m, dim=2) for t in (q_rot, k_rot, q_dist, k_dist)]
    return (*rep, v, w_r.repeat_interleave(m), w_d.repeat_interleave(m))


def message_inputs(seed, b, length, h, m, dtype=torch.float64):
    inputs = make_inputs(seed, b, length, h, dtype=dtype, spread=2.0)
    gen = torch.Generator().manual_seed(seed + 100)
    inputs[4] = torch.randn(b, length, h * m, 3, generator=gen, dtype=torch.float64).to(dtype)
    return inputs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m", [1, 3])
def test_m_values_per_head_equal_repeating_q_and_k(impl, m):
    b, length, h = 2, 19, 2
    dtype = torch.float32 if impl == "triton" else torch.float64
    inputs = message_inputs(0, b, length, h, m, dtype)
    key_mask = random_mask(1, b, length)
    key_mask[1, :] = False  # empty rows: zeros
    chain = (torch.arange(length) >= 8).long().expand(b, length)
    seq = (torch.arange(length) >= 13).long().expand(b, length)
    # non-finite numbers at a masked key (no effect) and at a kept one (NaN rows)
    inputs[4][0, ~key_mask[0]] = float("nan")
    kept = int(key_mask[0].nonzero()[0])
    inputs[1][0, kept, 1, 0] = float("inf")
    kw = dict(key_mask=key_mask, chain_id=chain, sequence_id=seq)
    want = geoattn.geometric_attention(*repeated(*inputs, m), impl="naive", **kw)
    got = attend(impl, *inputs, **kw)
    assert got.shape == inputs[4].shape
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want.to(got.dtype), atol=tol, rtol=tol, equal_nan=True)
    assert got.isnan().any() and (got[1] == 0).all()


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_gradients_with_m_values_equal_repeating(impl):
    m = 2
    inputs = [t.requires_grad_() for t in message_inputs(3, 2, 11, 3, m)]
    key_mask = random_mask(4, 2, 11)
    d_out = torch.randn(inputs[4].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = torch.autograd.grad(geoattn.geometric_attention(*repeated(*inputs, m), key_mask, impl="naive"),
                               inputs, d_out)
    for block_size in (None, 4):
        got = torch.autograd.grad(geoattn.geometric_attention(*inputs, key_mask, impl=impl, block_size=block_size),
                                  inputs, d_out)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-10)


def test_chunked_fused_forward_takes_m_values(monkeypatch):
    import geoattn.chunked as chunked

    monkeypatch.setattr(chunked, "FUSED_MIN_LENGTH", 1)
    monkeypatch.setitem(chunked._FUSED, "failed", False)
    inputs = message_inputs(6, 1, 30, 2, 3, torch.float32)
    want = geoattn.geometric_attention(*repeated(*inputs, 3), impl="naive")
    got = geoattn.geometric_attention(*inputs, impl="chunked")
    assert not chunked._FUSED["failed"]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_v_heads_must_be_a_multiple_of_h():
    inputs = message_inputs(0, 1, 4, 2, 1)
    inputs[4] = torch.zeros(1, 4, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="^v has shape"):
        geoattn.geometric_attention(*inputs)


def test_the_layer_makes_each_heads_map_once(monkeypatch):
    """With num_vector_messages = m the layer passes H heads of q and k and H·m values."""
    import geoattn.geometric as geometric

    seen = []
    real = geometric.geometric_attention

    def spy(q_rot, k_rot, q_dist, k_dist, v, rot_weight, *args, **kwargs):
        seen.append((q_rot.shape[2], v.shape[2], rot_weight.shape[0]))
        return real(q_rot, k_rot, q_dist, k_dist, v, rot_weight, *args, **kwargs)

    monkeypatch.setattr(geometric, "geometric_attention", spy)
    layer = geoattn.GeometricSelfAttention(12, 3, num_vector_messages=4)
    x = torch.randn(1, 5, 12)
    rot = geoattn.frames.random_rotation(1, 5)
    layer(x, rot, torch.randn(1, 5, 3))
    assert seen == [(3, 12, 3)]
