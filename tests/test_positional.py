"""geoattn.positional: sinusoidal encodings and rotary position embeddings (RoPE)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.positional import rope, rope_frequencies, sinusoidal_encoding

SETTINGS = settings(max_examples=25, deadline=None)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_exported_from_the_package():
    assert geoattn.rope is rope and geoattn.sinusoidal_encoding is sinusoidal_encoding


# ---------------------------------------------------------------- frequencies, encodings

def test_frequencies_follow_vaswani():
    theta = rope_frequencies(8)
    expected = torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(theta, expected)
    assert theta[0] == 1.0 and theta.dtype == torch.float64


@pytest.mark.parametrize("length, d_model", [(1, 2), (3, 4), (50, 16)])
def test_sinusoidal_shape_values_and_dtype(length, d_model):
    pe = sinusoidal_encoding(length, d_model)
    assert pe.shape == (length, d_model) and pe.dtype == torch.float32
    for p in range(length):
        for i in range(d_model // 2):
            angle = p / 10000.0 ** (2 * i / d_model)
            assert math.isclose(pe[p, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)
    # Every pair (sin, cos) is a unit vector.
    pairs = pe.double().view(length, -1, 2)
    torch.testing.assert_close(pairs.norm(dim=-1), torch.ones(length, d_model // 2, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_sinusoidal_dtype_argument():
    assert sinusoidal_encoding(3, 4, dtype=torch.float64).dtype == torch.float64


# -------------------------------------------------------------------------------- rope

def test_rope_at_position_zero_is_the_identity():
    x = torch.randn(2, 5, 6, generator=_gen(0), dtype=torch.float64)
    torch.testing.assert_close(rope(x, torch.zeros(5)), x)


def test_rope_rotates_each_pair_by_position_times_frequency():
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    out = rope(x, torch.tensor([3]), base=100.0)
    a0, a1 = 3.0, 3.0 / 10.0  # theta = 100^0, 100^(-2/4)
    expected = torch.tensor([[math.cos(a0), math.sin(a0), math.cos(a1), math.sin(a1)]],
                            dtype=torch.float64)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_rope_keeps_shape_and_dtype(dtype):
    x = torch.randn(2, 3, 4, 8, generator=_gen(1)).to(dtype)
    out = rope(x, torch.arange(4))
    assert out.shape == x.shape and out.dtype == dtype


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**16))
def test_rope_preserves_norms(length, pairs, seed):
    x = torch.randn(length, 2 * pairs, generator=_gen(seed), dtype=torch.float64)
    positions = torch.randint(-1000, 1000, (length,), generator=_gen(seed + 1))
    out = rope(x, positions)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    # ... and the norm of every pair, since each pair turns in its own plane.
    torch.testing.assert_close(out.view(length, pairs, 2).norm(dim=-1), x.view(length, pairs, 2).norm(dim=-1))


@SETTINGS
@given(st.integers(1, 4), st.integers(0, 2**16), st.integers(-500, 500), st.integers(-500, 500),
       st.integers(-10_000, 10_000))
def test_rope_scores_depend_only_on_the_relative_position(pairs, seed, m, n, shift):
    q = torch.randn(2 * pairs, generator=_gen(seed), dtype=torch.float64)
    k = torch.randn(2 * pairs, generator=_gen(seed + 1), dtype=torch.float64)

    def score(pos_q, pos_k):
        return (rope(q[None], torch.tensor([pos_q])) @ rope(k[None], torch.tensor([pos_k])).T).item()

    # Shifting both positions by the same offset leaves the score unchanged ...
    assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-9, abs_tol=1e-9)
    # ... and the score equals the one of q at 0 against k at n - m.
    assert math.isclose(score(m, n), score(0, n - m), rel_tol=1e-9, abs_tol=1e-9)


def test_rope_distinguishes_relative_positions():
    q = torch.randn(1, 8, generator=_gen(2), dtype=torch.float64)
    scores = [(rope(q, torch.tensor([0])) @ rope(q, torch.tensor([d])).T).item() for d in range(4)]
    assert len({round(s, 6) for s in scores}) == 4


def test_rope_positions_broadcast_over_heads():
    x = torch.randn(2, 3, 5, 4, generator=_gen(3), dtype=torch.float64)  # (B, H, L, d)
    out = rope(x, torch.arange(5))
    for h in range(3):
        torch.testing.assert_close(out[:, h], rope(x[:, h], torch.arange(5)))
    # Per-sequence positions of shape (B, 1, L) broadcast as well.
    per_seq = torch.stack([torch.arange(5), torch.arange(5) + 7])[:, None]
    torch.testing.assert_close(out[0], rope(x, per_seq)[0])


def test_rope_float_and_integer_positions_agree():
    x = torch.randn(3, 4, generator=_gen(4), dtype=torch.float64)
    torch.testing.assert_close(rope(x, torch.arange(3)), rope(x, torch.arange(3.0)))


def _rope_float64(x: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
    """RoPE written out in NumPy float64: the reference for the low-precision dtypes."""
    d = x.shape[-1]
    theta = 10000.0 ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    angle = positions.numpy().astype(np.float64)[..., None] * theta
    a, b = x.double().numpy()[..., 0::2], x.double().numpy()[..., 1::2]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack((a * cos - b * sin, a * sin + b * cos), axis=-1).reshape(x.shape)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_rope_at_large_positions_matches_float64(dtype, atol):
    # In float32, p·θ_i carries an error of about |p·θ_i|·6e-8: a whole radian at p = 2**24,
    # where p and p + 1 round to the same angle.
    positions = torch.tensor([2**24, 2**24 + 1, 2**24 + 2, 10**8 + 7, 2**31 - 1, 3 * 10**9])
    x = torch.randn(2, len(positions), 8, generator=_gen(6)).to(dtype)
    got = rope(x, positions)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), _rope_float64(x, positions), rtol=0, atol=atol)
    # the same positions given as floating-point numbers, where float64 holds them exactly
    got = rope(x, positions.double())
    np.testing.assert_allclose(got.double().numpy(), _rope_float64(x, positions), rtol=0, atol=atol)


def test_rope_tells_neighbouring_large_positions_apart():
    x = torch.ones(2, 2)
    out = rope(x, torch.tensor([2**24, 2**24 + 1]))
    assert not torch.allclose(out[0], out[1], atol=0.1)  # the angles differ by one radian


# ------------------------------------------------------------------------ error policy

@pytest.mark.parametrize("call, name", [
    (lambda: rope([[1.0, 2.0]], torch.arange(1)), "x"),
    (lambda: rope(torch.ones(1, 2), [0]), "positions"),
    (lambda: sinusoidal_encoding(3.0, 4), "length"),
    (lambda: sinusoidal_encoding(3, 4.0), "d_model"),
    (lambda: sinusoidal_encoding(3, 4, base="big"), "base"),
    (lambda: sinusoidal_encoding(3, 4, dtype="float32"), "dtype"),
    (lambda: rope_frequencies(True), "dim"),
])
def test_wrong_types_raise_type_error(call, name):
    with pytest.raises(TypeError, match=f"^{name}"):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: rope(torch.ones(2, 3), torch.arange(2)), "x's last dimension"),
    (lambda: rope(torch.ones(2, 0), torch.arange(2)), "x's last dimension"),
    (lambda: rope(torch.ones(2, 4, dtype=torch.int64), torch.arange(2)), "x"),
    (lambda: rope(torch.ones(2, 4), torch.arange(3)), "positions"),
    (lambda: rope(torch.ones(2, 4), torch.ones(2, dtype=torch.bool)), "positions"),
    (lambda: rope(torch.ones(2, 4), torch.ones(2, 4)), "positions"),
    (lambda: rope(torch.ones(2, 4), torch.arange(2), base=1.0), "base"),
    (lambda: sinusoidal_encoding(0, 4), "length"),
    (lambda: sinusoidal_encoding(3, 5), "d_model"),
    (lambda: rope_frequencies(0), "dim"),
    (lambda: sinusoidal_encoding(3, 4, base=float("nan")), "base"),
    (lambda: sinusoidal_encoding(3, 4, dtype=torch.int32), "dtype"),
])
def test_wrong_values_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        call()
