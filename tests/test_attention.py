"""geoattn.attention: softmax, scaled dot-product attention, masks, multi-head attention,
and the chapter 1 worked example (checked against an independent NumPy computation)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn import seed_example
from geoattn.attention import (
    MultiHeadAttention,
    attention_steps,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    softmax,
)

SETTINGS = settings(max_examples=20, deadline=None)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ softmax

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_is_stable_for_huge_logits(dtype):
    x = torch.tensor([[1e4, -1e4, 0.0, 1e4 - 3.0], [-1e4, -1e4 + 1.0, -1e4 + 0.5, -1e4 - 2.0]], dtype=dtype)
    p = softmax(x)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, dtype=dtype))
    # float64 reference, computed with NumPy from the shifted logits
    xs = x.double().numpy()
    ref = np.exp(xs - xs.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(p.double().numpy(), ref, rtol=1e-6, atol=1e-12)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 7), st.floats(0.1, 50.0), st.integers(0, 2**16))
def test_softmax_matches_torch_and_sums_to_one(rows, cols, scale, seed):
    x = torch.randn(rows, cols, generator=_gen(seed), dtype=torch.float64) * scale
    p = softmax(x)
    torch.testing.assert_close(p, torch.softmax(x, -1))
    torch.testing.assert_close(p.sum(-1), torch.ones(rows, dtype=torch.float64))


def test_softmax_other_dim():
    x = torch.randn(3, 4, generator=_gen(0))
    torch.testing.assert_close(softmax(x, dim=0), torch.softmax(x, 0))


def test_softmax_mask_zeroes_masked_entries_and_renormalises():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, True]])
    p = softmax(x, mask=mask)
    assert p[0, 1] == 0
    e = math.exp(1.0), math.exp(3.0)
    torch.testing.assert_close(p[0, [0, 2]], torch.tensor([e[0], e[1]]) / sum(e))


def test_fully_masked_row_gives_zeros_and_finite_gradients():
    x = torch.randn(2, 4, generator=_gen(1), requires_grad=True)
    mask = torch.tensor([[True, True, False, True], [False] * 4])
    p = softmax(x, mask=mask)
    assert torch.equal(p[1], torch.zeros(4))
    (p * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[1], torch.zeros(4))


def test_attention_fully_masked_query_outputs_zero_with_finite_gradients():
    q, k, v = (torch.randn(3, 2, generator=_gen(s), requires_grad=True) for s in (2, 3, 4))
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    z, alpha = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert torch.equal(z[1], torch.zeros(2)) and torch.equal(alpha[1], torch.zeros(3))
    assert torch.isfinite(z).all()
    z.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[1], torch.zeros(2))


# ------------------------------------------------------------ scaled dot-product attention

@SETTINGS
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.integers(1, 5),
       st.integers(0, 2**16), st.booleans())
def test_attention_matches_torch_sdpa(batch, lq, lk, dk, dv, seed, masked):
    g = _gen(seed)
    q = torch.randn(batch, lq, dk, generator=g, dtype=torch.float64)
    k = torch.randn(batch, lk, dk, generator=g, dtype=torch.float64)
    v = torch.randn(batch, lk, dv, generator=g, dtype=torch.float64)
    mask = None
    if masked:
        mask = torch.rand(batch, lq, lk, generator=g) < 0.7
        mask[..., 0] = True  # PyTorch returns NaN or zeros for empty rows; compare only the defined case
    z, alpha = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert z.shape == (batch, lq, dv) and alpha.shape == (batch, lq, lk)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(z, ref)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(batch, lq, dtype=torch.float64))


def test_attention_broadcasts_leading_dimensions():
    q = torch.randn(2, 3, 5, 4, generator=_gen(5))
    k = torch.randn(1, 3, 6, 4, generator=_gen(6))
    v = torch.randn(2, 1, 6, 7, generator=_gen(7))
    assert scaled_dot_product_attention(q, k, v).shape == (2, 3, 5, 7)


@pytest.mark.parametrize("args, match", [
    ((torch.randn(4), torch.randn(3, 4), torch.randn(3, 2)), "q must have rank"),
    ((torch.randn(3, 4), torch.randn(4), torch.randn(3, 2)), "k must have rank"),
    ((torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 2)), "k must have the same last dimension"),
    ((torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 2)), "v must have as many rows as k"),
    ((torch.randn(2, 3, 4), torch.randn(3, 3, 4), torch.randn(3, 3, 2)), "k's leading"),
    ((torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(3, 3, 2)), "v's leading"),
])
def test_attention_rejects_bad_shapes_naming_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(*args)


def test_attention_rejects_bad_masks():
    q = k = v = torch.randn(3, 2)
    with pytest.raises(ValueError, match="mask must be a bool"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 3))
    with pytest.raises(ValueError, match="mask of shape"):
        scaled_dot_product_attention(q, k, v, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask of shape"):
        softmax(q, mask=torch.ones(5, dtype=torch.bool))


# ------------------------------------------------------------------------------- masks

def test_causal_mask_is_lower_triangular_bool():
    m = causal_mask(4)
    assert m.dtype == torch.bool
    assert all(m[i, j] == (j <= i) for i in range(4) for j in range(4))
    with pytest.raises(ValueError, match="length"):
        causal_mask(0)


def test_padding_mask():
    m = padding_mask(torch.tensor([2, 0, 3]), 3)
    assert m.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    with pytest.raises(ValueError, match="lengths"):
        padding_mask(torch.tensor([4]), 3)
    with pytest.raises(ValueError, match="lengths"):
        padding_mask(torch.tensor([[1]]), 3)


# --------------------------------------------------------------------- multi-head attention

def _pair(d_model, n_heads, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=dtype)
    # Non-zero biases, so that copying them is tested too (PyTorch initialises them to 0).
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    ours = MultiHeadAttention(d_model, n_heads).to(dtype).load_from_torch(ref)
    return ours, ref


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6),
       st.integers(0, 2**16), st.sampled_from(["none", "padding", "causal"]))
def test_multi_head_attention_equals_torch(batch, n_heads, d_head, lq, lk, seed, mask_kind):
    d_model = n_heads * d_head
    ours, ref = _pair(d_model, n_heads, seed)
    g = _gen(seed)
    if mask_kind == "causal":
        lk = lq  # a causal mask is square: self-attention
    query = torch.randn(batch, lq, d_model, generator=g, dtype=torch.float64)
    key = torch.randn(batch, lk, d_model, generator=g, dtype=torch.float64)
    value = torch.randn(batch, lk, d_model, generator=g, dtype=torch.float64)
    mask, torch_kwargs = None, {}
    if mask_kind == "padding":
        lengths = torch.randint(1, lk + 1, (batch,), generator=g)  # >= 1 key, so PyTorch gives no NaN
        mask = padding_mask(lengths, lk)
        torch_kwargs = {"key_padding_mask": ~mask}  # PyTorch: True = ignore
    elif mask_kind == "causal":
        mask = causal_mask(lq).unsqueeze(0)  # (1, L, L): unambiguous even when batch == lq
        torch_kwargs = {"attn_mask": ~causal_mask(lq)}
    out, alpha = ours(query, key, value, mask=mask)
    ref_out, ref_alpha = ref(query, key, value, average_attn_weights=False, **torch_kwargs)
    assert out.shape == (batch, lq, d_model) and alpha.shape == (batch, n_heads, lq, lk)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(alpha, ref_alpha)


def test_multi_head_attention_fully_padded_sequence_is_finite():
    ours, _ = _pair(4, 2, 0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=_gen(8))
    out, alpha = ours(x, mask=padding_mask(torch.tensor([3, 0]), 3))
    assert torch.isfinite(out).all()
    assert torch.equal(alpha[1], torch.zeros_like(alpha[1]))


def test_multi_head_attention_is_permutation_equivariant():
    ours, _ = _pair(6, 3, 1)
    x = torch.randn(1, 5, 6, dtype=torch.float64, generator=_gen(9))
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, _ = ours(x)
    out_perm, _ = ours(x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm])


@pytest.mark.parametrize("kwargs, match", [
    ({"d_model": 6, "n_heads": 4}, "divisible"),
    ({"d_model": 0, "n_heads": 1}, "d_model"),
    ({"d_model": 4, "n_heads": 0}, "n_heads"),
])
def test_multi_head_attention_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_multi_head_attention_rejects_bad_inputs():
    mha = MultiHeadAttention(4, 2)
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="query must have shape"):
        mha(torch.randn(3, 4))
    with pytest.raises(ValueError, match="key must have shape"):
        mha(x, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="batch size"):
        mha(x, torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="value must have the same length"):
        mha(x, x, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        mha(x, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool"):
        mha(x, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mha has embed_dim"):
        mha.load_from_torch(torch.nn.MultiheadAttention(8, 2))


# ------------------------------------------------------------- the chapter 1 worked example

def _numpy_chain():
    """The worked example computed from the stated matrices with NumPy alone."""
    x, wq, wk, wv = (np.array(m, dtype=float) for m in
                     (seed_example.X, seed_example.W_Q, seed_example.W_K, seed_example.W_V))
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = q @ k.T
    scaled = scores / np.sqrt(q.shape[1])
    e = np.exp(scaled)
    alpha = e / e.sum(1, keepdims=True)
    return dict(Q=q, K=k, V=v, scores=scores, scaled=scaled, alpha=alpha, z=alpha @ v)


def test_attention_steps_reproduce_the_worked_example():
    steps = attention_steps(*seed_example.seed_tensors())
    ref = _numpy_chain()
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(steps, name).numpy(), value, rtol=1e-12, atol=1e-12, err_msg=name)
    # exp is shifted by the row max; the ratio to the unshifted exponentials is one constant per row
    ratio = np.exp(ref["scaled"]) / steps.exp.numpy()
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 3)), rtol=1e-12)
    assert (steps.exp.numpy() <= 1.0 + 1e-15).all()
    np.testing.assert_allclose(steps.z.numpy(), scaled_dot_product_attention(*steps[:3]).numpy(), rtol=1e-12)


def test_worked_example_facts_and_errata():
    ref = _numpy_chain()
    published = {k: np.array(v) for k, v in seed_example.PUBLISHED.items()}
    lys = seed_example.RESIDUES.index("Lys")
    # K is printed correctly; Q and V are not what the stated weights give.
    np.testing.assert_allclose(published["K"], ref["K"], atol=1e-12)
    assert not np.allclose(published["Q"], ref["Q"], atol=0.05)
    assert not np.allclose(published["V"], ref["V"], atol=0.05)
    # Lys attends most to Asp, with about half of its weight.
    assert ref["alpha"][lys].argmax() == seed_example.RESIDUES.index("Asp")
    assert abs(ref["alpha"][lys, 2] - 0.5) < 0.005
    # The published chain is internally consistent: from its own q_Lys and V it gets its alpha and z.
    scores = published["Q"][lys] @ ref["K"].T
    np.testing.assert_allclose(scores, published["scores_Lys"], atol=1e-12)
    alpha = np.exp(scores / np.sqrt(2)) / np.exp(scores / np.sqrt(2)).sum()
    np.testing.assert_allclose(alpha, published["alpha_Lys"], atol=0.005)
    np.testing.assert_allclose(published["alpha_Lys"] @ published["V"], published["z_Lys"], atol=1e-9)


def test_seed_tensors_are_float64_and_exported():
    x, wq, wk, wv = geoattn.seed_tensors()
    assert x.dtype == torch.float64 and x.shape == (3, 4) and wq.shape == (4, 2)
    assert geoattn.RESIDUES == ("Ala", "Lys", "Asp")


@pytest.mark.parametrize("bad, match", [
    ((torch.randn(3), torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2)), "x must be a matrix"),
    ((torch.randn(3, 4), torch.randn(5, 2), torch.randn(4, 2), torch.randn(4, 2)), "w_q must have d_model"),
    ((torch.randn(3, 4), torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 2)), "k must have the same last"),
])
def test_attention_steps_rejects_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        attention_steps(*bad)


# ---------------------------------------------- masked pairs never matter; invalid arguments

_NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1e300])


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**16), _NONFINITE, st.booleans())
def test_masked_pairs_never_change_the_output(lq, lk, seed, bad, per_pair):
    """Poison every masked pair's key and value: the outputs stay bitwise the same."""
    g = _gen(seed)
    q = torch.randn(2, lq, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, lk, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, lk, 4, generator=g, dtype=torch.float64)
    if per_pair:
        mask = torch.rand(2, lq, lk, generator=g) < 0.6
    else:
        mask = (torch.rand(2, 1, lk, generator=g) < 0.6).expand(2, lq, lk)
    ref = scaled_dot_product_attention(q, k, v, mask)
    # a key that no query may see can hold anything, in k and in v
    unseen = ~mask.any(dim=-2)  # (2, L_k)
    k2, v2 = k.clone(), v.clone()
    k2[unseen], v2[unseen] = bad, bad
    # a key masked for some queries only: a bad value changes exactly the rows that see it
    partly = mask.any(dim=-2) & ~mask.all(dim=-2)
    if partly.any():
        b, j = partly.nonzero()[0].tolist()
        v2[b, j, 0] = bad
    out = scaled_dot_product_attention(q, k2, v2, mask)
    changed = torch.zeros_like(ref, dtype=torch.bool)
    if partly.any():
        changed[b, :, 0] = mask[b, :, j]
    assert torch.equal(out[~changed], ref[~changed])
    if partly.any() and bad != bad:  # NaN at a pair the mask keeps gives NaN
        assert out[changed].isnan().all()
    # fully masked rows are zeros
    assert (out[~mask.any(dim=-1)] == 0).all()


def test_a_nan_at_an_unmasked_position_gives_nan():
    q, k, v = torch.randn(3, 2), torch.randn(4, 2), torch.randn(4, 2)
    mask = torch.tensor([True, False, True, True])
    v[2, 1] = float("nan")
    z = scaled_dot_product_attention(q, k, v, mask)
    assert z[:, 1].isnan().all() and torch.isfinite(z[:, 0]).all()
    k[0, 0] = float("nan")
    assert scaled_dot_product_attention(q, k, v, mask).isnan().all()


def test_gradients_ignore_keys_masked_for_every_query():
    g = _gen(3)
    q = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])[:, None, :]
    grads = []
    for bad in (None, float("nan"), float("inf")):
        k2, v2 = k.clone(), v.clone()
        if bad is not None:
            k2[~mask[:, 0]], v2[~mask[:, 0]] = bad, bad
        k2.requires_grad_(), v2.requires_grad_()
        scaled_dot_product_attention(q, k2, v2, mask).sum().backward()
        grads.append((q.grad.clone(), k2.grad[mask[:, 0]], v2.grad[mask[:, 0]]))
        q.grad = None
    for got in grads[1:]:
        for a, b in zip(got, grads[0]):
            assert torch.equal(a, b)


def test_softmax_ignores_masked_logits_even_nan():
    x = torch.tensor([[1.0, float("nan"), 3.0], [float("inf"), 0.0, 1.0]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    p = softmax(x, mask=mask)
    torch.testing.assert_close(p, softmax(torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 1.0]]), mask=mask))
    assert softmax(x).isnan().any()


@pytest.mark.parametrize("other", ["meta", "k", "v", "mask"])
def test_mixed_devices_raise(other):
    q, k, v = torch.randn(3, 2), torch.randn(4, 2), torch.randn(4, 2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    args = {"q": q, "k": k, "v": v, "mask": mask}
    name = "q" if other == "meta" else other
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} is on meta|is on cpu but {name} is on meta"):
        scaled_dot_product_attention(**args)
    with pytest.raises(ValueError, match="mask is on meta"):
        softmax(torch.randn(3, 4), mask=mask.to("meta"))


def test_a_mask_larger_than_its_tensor_is_refused():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="mask of shape"):
        softmax(x, mask=torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask of shape"):
        scaled_dot_product_attention(x, x, x, torch.ones(2, 3, 3, dtype=torch.bool))


def test_invalid_lengths_and_sizes_follow_the_error_policy():
    with pytest.raises(ValueError, match="lengths must be an integer"):
        padding_mask(torch.tensor([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="lengths must be an integer"):
        padding_mask(torch.tensor([float("nan")]), 3)
    with pytest.raises(TypeError, match="max_length"):
        padding_mask(torch.tensor([1, 2]), 3.5)
    with pytest.raises(TypeError, match="lengths"):
        padding_mask([1, 2], 3)
    with pytest.raises(TypeError, match="length"):
        causal_mask(2.0)
    with pytest.raises(TypeError, match="d_model"):
        MultiHeadAttention(4.0, 2)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        scaled_dot_product_attention([[1.0]], torch.ones(1, 1), torch.ones(1, 1))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        softmax([1.0, 2.0])


@pytest.mark.parametrize("kwargs, ours_bias, match", [
    ({"bias": True}, False, "bias=True"),
    ({"bias": False}, True, "bias=False"),
    ({"add_bias_kv": True}, True, "add_bias_kv"),
    ({"add_zero_attn": True}, True, "add_zero_attn"),
    ({"kdim": 3, "vdim": 5}, True, "kdim=3, vdim=5"),
])
def test_load_from_torch_refuses_what_it_cannot_copy(kwargs, ours_bias, match):
    ref = torch.nn.MultiheadAttention(4, 2, batch_first=True, **kwargs)
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(4, 2, bias=ours_bias).load_from_torch(ref)


@pytest.mark.parametrize("bias", [True, False])
def test_load_from_torch_copies_exactly_what_it_accepts(bias):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(4, 2, batch_first=True, bias=bias).double().eval()
    ours = MultiHeadAttention(4, 2, bias=bias).double().load_from_torch(ref)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x, x, x)[0], rtol=1e-12, atol=1e-12)
