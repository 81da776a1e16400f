"""The chunked online-softmax path equals the naive reference, forward and backward."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.chunked import chunked_geometric_attention
from helpers import make_inputs, random_mask

NAMES = ("q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight")


def outputs_and_grads(impl, inputs, key_mask=None, seed=1, **kw):
    out = geoattn.geometric_attention(*inputs, key_mask, impl=impl, **kw)
    gen = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, inputs, d_out)
    return out, grads


def assert_matches_naive(inputs, key_mask=None, *, atol, rtol, **kw):
    out_n, grads_n = outputs_and_grads("naive", inputs, key_mask)
    out_c, grads_c = outputs_and_grads("chunked", inputs, key_mask, **kw)
    torch.testing.assert_close(out_c, out_n, atol=atol, rtol=rtol)
    for name, gc, gn in zip(NAMES, grads_c, grads_n):
        torch.testing.assert_close(gc, gn, atol=atol, rtol=rtol, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize(
    "b, length, h, block_size",
    [
        (1, 7, 1, 3),  # odd L, L not a multiple of the block
        (2, 33, 3, 8),  # H not a power of two
        (1, 5, 5, 64),  # block larger than L
        (2, 16, 2, 16),  # exactly one block
        (1, 9, 2, 1),  # one key at a time
    ],
)
def test_fp64_forward_and_gradients_equal_naive(b, length, h, block_size):
    inputs = make_inputs(0, b, length, h, spread=2.0, requires_grad=True)
    assert_matches_naive(inputs, atol=1e-10, rtol=1e-10, block_size=block_size)


@pytest.mark.parametrize("block_size", [4, 13, 128])
def test_fp64_with_key_mask_and_a_fully_masked_sequence(block_size):
    inputs = make_inputs(3, 3, 13, 2, spread=1.0, requires_grad=True)
    key_mask = random_mask(4, 3, 13)
    key_mask[1] = False  # sequence 1 has no key at all: every row of it is empty
    assert_matches_naive(inputs, key_mask, atol=1e-10, rtol=1e-10, block_size=block_size)


def test_fp32_forward_and_gradients_equal_naive():
    inputs = make_inputs(5, 2, 70, 3, dtype=torch.float32, spread=3.0, requires_grad=True)
    key_mask = random_mask(6, 2, 70)
    assert_matches_naive(inputs, key_mask, atol=2e-5, rtol=1e-4, block_size=16)


def test_fp32_far_from_origin():
    """Coordinates tens of Å from the origin, as in a real protein: the gradient's
    matrix-product form must not cancel digits."""
    inputs = make_inputs(7, 1, 40, 2, dtype=torch.float32, spread=3.0, requires_grad=True)
    with torch.no_grad():
        inputs[2] += 50.0
        inputs[3] += 50.0
    assert_matches_naive(inputs, atol=5e-5, rtol=1e-4, block_size=8)


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    inputs = make_inputs(0, 2, 6, 2, spread=1.0, requires_grad=True)
    key_mask = torch.ones(2, 6, dtype=torch.bool)
    key_mask[0] = False
    out, grads = outputs_and_grads("chunked", inputs, key_mask, block_size=4)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all()
    for name, g in zip(NAMES[:5], grads[:5]):
        assert torch.isfinite(g).all(), name
        assert (g[0] == 0).all(), f"grad of {name} must be zero for a sequence with no key"


def test_coincident_points_have_zero_distance_subgradient():
    """q_d = k_d makes ‖q_d − k_d‖ = 0, where sqrt has no derivative: the subgradient is 0."""
    inputs = make_inputs(0, 1, 1, 1, spread=1.0, requires_grad=True)  # one query, one key: one pair
    with torch.no_grad():
        inputs[3].copy_(inputs[2])
    out, grads = outputs_and_grads("chunked", inputs)
    g = dict(zip(NAMES, grads))
    assert torch.isfinite(out).all()
    # A single key gets weight 1 whatever its score, so every score gradient is 0 here ...
    assert (g["q_dist"] == 0).all() and (g["k_dist"] == 0).all()
    # ... so use two keys, one of them sitting exactly on the query.
    inputs = make_inputs(8, 1, 2, 1, spread=1.0, requires_grad=True)
    with torch.no_grad():
        inputs[3][0, 0].copy_(inputs[2][0, 0])  # key 0 coincides with query 0
    assert_matches_naive(inputs, atol=1e-12, rtol=1e-10, block_size=1)
    _, grads = outputs_and_grads("chunked", inputs, block_size=1)
    assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_fp64(with_mask):
    inputs = make_inputs(9, 2, 5, 2, spread=1.0, requires_grad=True)
    with torch.no_grad():
        inputs[3][0, 2].copy_(inputs[2][0, 1])  # a coincident query-key pair in every head
    key_mask = None
    if with_mask:
        key_mask = torch.tensor([[True, False, True, True, False], [False] * 5])
    assert torch.autograd.gradcheck(
        lambda *a: chunked_geometric_attention(*a, key_mask, block_size=2), tuple(inputs), atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_v_dtype_and_fp32_accuracy(dtype):
    inputs = make_inputs(10, 1, 20, 2, dtype=dtype, spread=1.0, requires_grad=True)
    out = chunked_geometric_attention(*inputs, block_size=8)
    assert out.dtype == dtype
    ref = geoattn.geometric_attention(*(t.detach().double() for t in inputs), impl="naive")
    # the inputs are exactly representable in fp64; only the output's rounding to `dtype` remains
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    for name, t in zip(NAMES, inputs):
        assert t.grad.dtype == dtype, name


def test_fp32_inputs_give_fp32():
    inputs = make_inputs(0, 1, 4, 1, dtype=torch.float32, spread=1.0, requires_grad=True)
    assert chunked_geometric_attention(*inputs).dtype == torch.float32


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("8", TypeError)])
def test_block_size_is_validated(bad, error):
    inputs = make_inputs(0, 1, 4, 1, spread=1.0, requires_grad=True)
    with pytest.raises(error, match="block_size"):
        chunked_geometric_attention(*inputs, block_size=bad)


def test_inputs_are_validated():
    inputs = make_inputs(0, 1, 4, 2, spread=1.0, requires_grad=True)
    inputs[1] = inputs[1][..., :2]
    with pytest.raises(ValueError, match="k_rot"):
        chunked_geometric_attention(*inputs)


def test_dispatcher_routes_chunked_and_auto_on_cpu(monkeypatch):
    import geoattn.chunked as chunked

    calls = []
    real = chunked.chunked_core

    def spy(*args, **kwargs):
        calls.append(kwargs["block_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "chunked_core", spy)
    inputs = make_inputs(0, 1, 6, 2, spread=1.0, requires_grad=True)
    geoattn.geometric_attention(*inputs, impl="chunked", block_size=4)
    geoattn.geometric_attention(*inputs, impl="auto")
    assert calls == [4, None]


def test_memory_grows_linearly_not_quadratically():
    """No intermediate of the chunked forward and backward holds L² numbers."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    length, h, block = 256, 2, 16
    inputs = make_inputs(0, 1, length, h, dtype=torch.float32, spread=1.0, requires_grad=True)
    with LargestTensor() as mode:
        chunked_geometric_attention(*inputs, block_size=block).sum().backward()
    assert mode.largest <= h * length * block
    assert mode.largest < length * length


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 2),
    length=st.integers(1, 12),
    h=st.integers(1, 3),
    block_size=st.integers(1, 16),
    seed=st.integers(0, 2**16),
    masked=st.booleans(),
)
def test_property_matches_naive(b, length, h, block_size, seed, masked):
    inputs = make_inputs(seed, b, length, h, spread=2.0, requires_grad=True)
    key_mask = random_mask(seed + 1, b, length, p_keep=0.6) if masked else None
    assert_matches_naive(inputs, key_mask, atol=1e-10, rtol=1e-9, block_size=block_size)


def test_gradients_only_for_inputs_that_require_them():
    inputs = [t.detach() for t in make_inputs(11, 1, 9, 2, spread=1.0, requires_grad=True)]
    inputs[4].requires_grad_()  # only v
    inputs[6].requires_grad_()  # and dist_weight
    out = chunked_geometric_attention(*inputs, block_size=4)
    g_v, g_w = torch.autograd.grad(out.sum(), [inputs[4], inputs[6]])
    ref = geoattn.geometric_attention(*inputs, impl="naive")
    r_v, r_w = torch.autograd.grad(ref.sum(), [inputs[4], inputs[6]])
    torch.testing.assert_close(g_v, r_v, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g_w, r_w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("bh", [1, 8, 256, 131_072])
@pytest.mark.parametrize("length", [1, 16, 100, 4096])
def test_tile_rule_fits_the_cache_budget(bh, length):
    from geoattn.chunked import DEFAULT_BLOCK_SIZE, TILE_NUMBERS, tile_sizes

    rows, keys = tile_sizes(bh, length)
    assert keys == DEFAULT_BLOCK_SIZE and tile_sizes(bh, length, 32)[1] == 32
    assert 1 <= rows <= length
    if rows < length:  # a partial tile: a power of two, at least 16 rows, within the budget unless at 16
        assert rows & (rows - 1) == 0 and rows >= 16
        assert bh * rows * keys <= TILE_NUMBERS or rows == 16
    assert tile_sizes(2 * bh, 1 << 20)[0] <= tile_sizes(bh, 1 << 20)[0], "more heads, fewer rows per tile"


@pytest.fixture
def fused_from_length_1(monkeypatch):
    """The fused (compiled) forward for any L, as for L >= FUSED_MIN_LENGTH."""
    import geoattn.chunked as chunked

    monkeypatch.setattr(chunked, "FUSED_MIN_LENGTH", 1)
    monkeypatch.setitem(chunked._FUSED, "failed", False)
    return chunked


def test_fused_forward_fp64_with_every_pair_term_equals_naive(fused_from_length_1):
    chunked = fused_from_length_1
    inputs = make_inputs(7, 3, 21, 2, spread=2.0, requires_grad=True)
    key_mask = random_mask(8, 3, 21)
    key_mask[1] = False  # every row of sequence 1 is empty: zeros, lse = +inf
    chain = (torch.arange(21) >= 9).long().expand(3, 21) * 5 - 3  # ids need not be ranks
    seq = (torch.arange(21) >= 15).long().expand(3, 21)
    kw = dict(chain_id=chain, sequence_id=seq)
    assert chunked._use_fused(inputs[2], inputs[3], 21, None)
    out_n, grads_n = outputs_and_grads("naive", inputs, key_mask, **kw)
    out_c, grads_c = outputs_and_grads("chunked", inputs, key_mask, **kw)
    assert not chunked._FUSED["failed"]
    torch.testing.assert_close(out_c, out_n, atol=1e-10, rtol=1e-10)
    # the eager backward reads the fused forward's lse
    for name, gc, gn in zip(NAMES, grads_c, grads_n):
        torch.testing.assert_close(gc, gn, atol=1e-10, rtol=1e-10, msg=lambda m, name=name: f"grad of {name}: {m}")
    assert (out_c[1] == 0).all()


def test_fused_forward_fp32_equals_naive(fused_from_length_1):
    inputs = make_inputs(5, 2, 70, 3, dtype=torch.float32, spread=3.0, requires_grad=True)
    assert_matches_naive(inputs, atol=2e-5, rtol=1e-4)
    assert not fused_from_length_1._FUSED["failed"]


def test_short_sequences_and_explicit_blocks_run_the_tile_loop(monkeypatch):
    """Below FUSED_MIN_LENGTH (every chapter's sizes) nothing is compiled, and a
    caller's block_size always gets the tile loop it asked for."""
    import geoattn.chunked as chunked

    calls = []
    monkeypatch.setattr(chunked, "_fused_forward", lambda *a: calls.append(a[0].shape[2]))  # None: eager
    monkeypatch.setattr(chunked, "FUSED_MIN_LENGTH", 12)
    monkeypatch.setitem(chunked._FUSED, "failed", False)
    for length, block_size in ((11, None), (12, 4), (12, None)):
        inputs = make_inputs(0, 1, length, 2, spread=1.0)
        out = geoattn.geometric_attention(*inputs, impl="chunked", block_size=block_size)
        torch.testing.assert_close(out, geoattn.geometric_attention(*inputs, impl="naive"))
    assert calls == [12]
    assert chunked.FUSED_MIN_LENGTH == 12 and chunked.tile_sizes(8, 12)[1] == chunked.DEFAULT_BLOCK_SIZE


def test_a_failed_compilation_falls_back_to_the_tile_loop_once(fused_from_length_1, monkeypatch):
    chunked = fused_from_length_1

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(chunked, "_compiled", lambda name: broken)
    inputs = make_inputs(2, 1, 9, 2, spread=1.0)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        out = geoattn.geometric_attention(*inputs, impl="chunked")
    torch.testing.assert_close(out, geoattn.geometric_attention(*inputs, impl="naive"))
    assert chunked._FUSED["failed"] and not chunked._use_fused(inputs[2], inputs[3], 9, None)
