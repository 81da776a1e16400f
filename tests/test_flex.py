"""geoattn.flex (FlexAttention's score_mod) against the naive reference.

Correctness runs on eager FlexAttention (``backend=None``), which compiles nothing; one
test compiles flex_attention once (tens of seconds on a CPU) and checks that it agrees.
"""
import math
import warnings

import pytest
import torch

from geoattn.flex import flex_geometric_attention
from geoattn.geometric import geometric_attention, random_geometric_inputs

pytest.importorskip("torch.nn.attention.flex_attention")

# eager FlexAttention warns on every call that it is not compiled: that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def inputs(b=2, length=21, h=3, dtype=torch.float64, seed=1):
    return random_geometric_inputs(b, length, h, seed=seed, dist_scale=5.0, dtype=dtype)


def ids(b, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (b, length), generator=g), torch.randint(0, 3, (b, length), generator=g)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_seq, with_chain", [(False, False), (True, False), (False, True), (True, True)])
def test_eager_flex_matches_naive_fp64(masked, with_seq, with_chain):
    x = inputs()
    g = torch.Generator().manual_seed(5)
    key_mask = (torch.rand(2, 21, generator=g) < 0.7) if masked else None
    seq, chain = ids(2, 21, 6)
    kwargs = {"sequence_id": seq if with_seq else None, "chain_id": chain if with_chain else None}
    want = geometric_attention(*x, key_mask, impl="naive", **kwargs)
    got = flex_geometric_attention(*x, key_mask, backend=None, **kwargs)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs_give_v_dtype(dtype, atol):
    x = inputs(dtype=dtype)
    got = flex_geometric_attention(*x, backend=None)
    assert got.dtype == dtype
    want = geometric_attention(*[t.double() for t in x], impl="naive")
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=atol)


def test_fully_masked_rows_return_zeros_and_masked_nan_never_leaks():
    x = inputs()
    key_mask = torch.ones(2, 21, dtype=torch.bool)
    key_mask[1] = False  # the second batch has no key at all
    key_mask[0, 3] = False
    for t in (x[1], x[3], x[4]):  # NaN and inf at masked keys
        t[0, 3] = math.nan
        t[1, 5] = math.inf
    got = flex_geometric_attention(*x, key_mask, backend=None)
    assert torch.isfinite(got).all()
    assert (got[1] == 0).all()
    torch.testing.assert_close(got, geometric_attention(*x, key_mask, impl="naive"), atol=1e-12, rtol=1e-12)


def test_chain_ids_that_leave_a_query_alone_with_masked_keys_give_zeros():
    x = inputs(b=1, length=6, h=2)
    chain = torch.tensor([[0, 0, 0, 1, 1, 2]])
    key_mask = torch.tensor([[True, True, True, True, True, False]])  # chain 2's only key is masked
    got = flex_geometric_attention(*x, key_mask, chain_id=chain, backend=None)
    assert (got[0, 5] == 0).all()
    torch.testing.assert_close(got, geometric_attention(*x, key_mask, chain_id=chain, impl="naive"))


def test_large_coordinates_keep_their_digits():
    x = inputs(dtype=torch.float32)
    offset = torch.tensor([1e4, -1e4, 1e4])
    x[2], x[3] = x[2] + offset, x[3] + offset
    want = geometric_attention(*[t.double() for t in x], impl="naive")
    torch.testing.assert_close(flex_geometric_attention(*x, backend=None).double(), want, atol=2e-5, rtol=1e-4)


def test_bad_input_raises_the_contracts_errors():
    x = inputs()
    with pytest.raises(ValueError, match="q_rot"):
        flex_geometric_attention(x[0][..., :2], *x[1:], backend=None)


def test_empty_inputs_give_an_empty_output():
    x = inputs(b=1, length=0, h=2)
    assert flex_geometric_attention(*x, backend=None).shape == (1, 0, 2, 3)


def test_compiled_flex_matches_naive_fp32():
    """One compiled call (the compile takes tens of seconds on a CPU), with every mod on."""
    x = inputs(b=1, length=20, h=2, dtype=torch.float32)
    key_mask = torch.ones(1, 20, dtype=torch.bool)
    key_mask[0, -3:] = False
    seq, chain = ids(1, 20, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Inductor's own warnings on a CPU build
        got = flex_geometric_attention(*x, key_mask, sequence_id=seq, chain_id=chain)
    want = geometric_attention(*x, key_mask, sequence_id=seq, chain_id=chain, impl="naive")
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_input_in_one_chain_never_reaches_the_other(which, value):
    # forward only: FlexAttention has no backward on the CPU
    inputs = list(random_geometric_inputs(1, 8, 2, seed=5, dist_scale=4.0, dtype=torch.float64))
    chain = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    clean = flex_geometric_attention(*inputs, chain_id=chain, backend=None)
    inputs[which] = inputs[which].clone()
    inputs[which][0, 6, 1, 0] = value
    bad = flex_geometric_attention(*inputs, chain_id=chain, backend=None)
    want = geometric_attention(*inputs, chain_id=chain, impl="naive")
    torch.testing.assert_close(bad[0, :4], clean[0, :4], rtol=0, atol=1e-12)
    assert torch.equal(torch.isnan(bad), torch.isnan(want)), "the same NaN rows as naive"
    assert torch.isnan(bad[0, 4:]).any(), "a NaN inside a chain reaches that chain"


def test_a_rotation_term_that_overflows_gives_nan_like_naive():
    inputs = list(random_geometric_inputs(1, 6, 2, seed=6, dtype=torch.float32))
    inputs[0] = inputs[0].clone()
    inputs[0][0, 2] = 1e20
    inputs[1] = inputs[1].clone() * 1e20
    got = flex_geometric_attention(*inputs, backend=None)
    want = geometric_attention(*inputs, impl="naive")
    assert torch.isnan(got[0, 2]).all()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
