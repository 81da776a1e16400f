"""The Triton kernels (impl="triton") against the naive reference: forward, all seven
gradients, key masks, fully masked rows, coincident points, ragged and exact block tiling,
low-precision inputs, and the errors.

Without a GPU, conftest sets TRITON_INTERPRET=1 before triton is imported, so these run in
Triton's interpreter on CPU tensors (milliseconds per block iteration: shapes stay tiny).
With a GPU the same tests run the compiled kernels on CUDA tensors.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn

triton_kernels = pytest.importorskip("geoattn.triton_kernels")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INPUT_NAMES = ("q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight")


def make_inputs(seed, b, length, h, dtype=torch.float64, spread=2.0):
    """The seven tensor inputs (five (B, L, H, 3) vector sets, two positive (H,) weights)."""
    g = torch.Generator().manual_seed(seed)
    vecs = [torch.randn(b, length, h, 3, generator=g, dtype=torch.float64) for _ in range(5)]
    vecs[2] = vecs[2] * spread  # points, spread out so distances matter
    vecs[3] = vecs[3] * spread
    w_r = torch.rand(h, generator=g, dtype=torch.float64) * 2 + 0.1
    w_d = torch.rand(h, generator=g, dtype=torch.float64) * 2 + 0.1
    return [t.to(device=DEVICE, dtype=dtype) for t in (*vecs, w_r, w_d)]


def random_mask(seed, b, length, p_keep=0.7):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, length, generator=g) < p_keep).to(DEVICE)


def forward_and_grads(impl, inputs, key_mask=None, seed=123, **kwargs):
    """Output and the gradients of <out, G> for a fixed random G, w.r.t. all seven inputs."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = geoattn.geometric_attention(*leaves, key_mask, impl=impl, **kwargs)
    g = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, cotangent)
    return out, grads


def assert_matches_naive(inputs, key_mask=None, atol=2e-5, rtol=1e-4, **kwargs):
    out, grads = forward_and_grads("triton", inputs, key_mask, **kwargs)
    ref, ref_grads = forward_and_grads("naive", inputs, key_mask)
    assert out.dtype == ref.dtype == inputs[4].dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    for name, got, want in zip(INPUT_NAMES, grads, ref_grads):
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"grad of {name}: {m}")
    return out, grads


# (B, L, H, block_size, masked). The interpreter's single config has 32-wide blocks; an
# explicit block_size launches that block size without autotuning.
CASES = [
    pytest.param(2, 17, 3, None, False, id="L17-ragged-default-blocks"),
    pytest.param(2, 33, 3, 16, True, id="L33-ragged-block16-mask"),
    pytest.param(2, 32, 3, 16, True, id="L32-even-block16-mask"),
    pytest.param(1, 64, 2, None, False, id="L64-even-default-blocks"),
    pytest.param(3, 1, 1, 16, False, id="L1-one-key"),
]


@pytest.mark.parametrize("b, length, h, block_size, masked", CASES)
def test_forward_and_all_gradients_match_naive_fp64(b, length, h, block_size, masked):
    """fp64 inputs are computed in fp32 by the kernels and returned as fp64."""
    inputs = make_inputs(length, b, length, h)
    key_mask = random_mask(length, b, length) if masked else None
    assert_matches_naive(inputs, key_mask, block_size=block_size)


def test_even_fast_path_is_taken_and_agrees_with_the_ragged_path():
    """L = 32 with 16-wide blocks compiles EVEN_L=True; the same data padded-by-masking must agree."""
    heur = triton_kernels._fwd_heur
    assert heur.values["EVEN_L"]({"L": 32, "BLOCK_Q": 16, "BLOCK_K": 16})
    assert not heur.values["EVEN_L"]({"L": 33, "BLOCK_Q": 16, "BLOCK_K": 16})
    inputs = make_inputs(7, 1, 32, 3, dtype=torch.float32)
    even = geoattn.geometric_attention(*inputs, impl="triton", block_size=16)
    ragged = geoattn.geometric_attention(*inputs, impl="triton", block_size=64)  # one ragged block
    torch.testing.assert_close(even, ragged, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("length", [32, 45])
def test_non_contiguous_inputs_in_one_batch(length):
    """Strided views ((B, H, L, 3) storage seen as (B, L, H, 3)), B = 1, and L = 32 where the
    planes need no padding (their layout must still be made contiguous)."""
    inputs = make_inputs(4, 1, length, 2, dtype=torch.float32)
    inputs[:5] = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs[:5]]
    assert not inputs[0].is_contiguous()
    assert_matches_naive(inputs)


def test_fp32_inputs_match_naive_fp32_with_a_mask():
    inputs = make_inputs(3, 2, 33, 3, dtype=torch.float32)
    assert_matches_naive(inputs, random_mask(3, 2, 33), atol=2e-5, rtol=1e-4)


def test_fully_masked_batch_gives_zero_output_and_zero_gradients():
    b, length, h = 2, 20, 3
    inputs = make_inputs(11, b, length, h, dtype=torch.float32)
    key_mask = random_mask(11, b, length)
    key_mask[1] = False  # batch 1: no query has a key to attend
    out, grads = assert_matches_naive(inputs, key_mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for name, grad in zip(INPUT_NAMES[:5], grads[:5]):
        assert torch.equal(grad[1], torch.zeros_like(grad[1])), name
    assert all(torch.isfinite(g).all() for g in grads)
    assert out[0].abs().sum() > 0


def test_coincident_points_have_zero_norm_gradient_and_no_nan():
    """q_d[i] = k_d[j] for every i = j (and a repeated point): the norm's gradient there is 0."""
    b, length, h = 2, 19, 3
    inputs = make_inputs(5, b, length, h)
    inputs[3] = inputs[2].clone()  # k_dist = q_dist: every diagonal pair coincides
    inputs[3][:, 4] = inputs[2][:, 9]  # and one key sits on another query too
    out, grads = assert_matches_naive(inputs, block_size=16)
    assert all(torch.isfinite(g).all() for g in grads)


def test_all_points_coincide():
    """Every q_d and k_d equal: the distance term is 0 everywhere and so are its gradients."""
    inputs = make_inputs(6, 1, 18, 2)
    inputs[2] = torch.ones_like(inputs[2])
    inputs[3] = torch.ones_like(inputs[3])
    out, grads = assert_matches_naive(inputs, block_size=16)
    assert torch.equal(grads[2], torch.zeros_like(grads[2]))
    assert torch.equal(grads[3], torch.zeros_like(grads[3]))


def test_zero_distance_weight_still_gets_its_gradient():
    """dist_weight is not folded into the points, so a head with w_d = 0 keeps ∂/∂w_d."""
    inputs = make_inputs(8, 2, 17, 3)
    inputs[6] = torch.tensor([0.0, 0.7, 0.0], dtype=torch.float64, device=DEVICE)
    inputs[5] = torch.tensor([0.0, 1.3, 0.4], dtype=torch.float64, device=DEVICE)
    _, grads = assert_matches_naive(inputs)
    assert grads[6][0].abs() > 1e-3 and grads[5][0].abs() > 1e-3


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float16, 3e-3, 3e-3), (torch.bfloat16, 2e-2, 2e-2)])
def test_low_precision_inputs_give_v_dtype_close_to_the_fp32_reference(dtype, atol, rtol):
    """fp16/bf16 inputs: fp32 math inside, so the only extra error is the final rounding."""
    b, length, h = 2, 21, 3
    low = make_inputs(9, b, length, h, dtype=dtype)
    key_mask = random_mask(9, b, length)
    out, grads = forward_and_grads("triton", low, key_mask)
    ref, ref_grads = forward_and_grads("naive", [t.float() for t in low], key_mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)
    for name, got, want, inp in zip(INPUT_NAMES, grads, ref_grads, low):
        assert got.dtype == inp.dtype, name
        # the gradients' own magnitude sets the scale of their rounding error
        scale = float(want.abs().max())
        torch.testing.assert_close(got.float(), want, atol=atol * max(scale, 1.0), rtol=rtol,
                                   msg=lambda m: f"grad of {name}: {m}")


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 2),
    length=st.integers(1, 20),
    h=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    masked=st.booleans(),
)
def test_property_forward_matches_naive(b, length, h, seed, masked):
    inputs = make_inputs(seed, b, length, h, dtype=torch.float32)
    key_mask = random_mask(seed, b, length, p_keep=0.5) if masked else None
    got = geoattn.geometric_attention(*inputs, key_mask, impl="triton", block_size=16)
    want = geoattn.geometric_attention(*inputs, key_mask, impl="naive")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_block_size_must_be_one_that_compiles_without_spills():
    inputs = make_inputs(0, 1, 4, 1, dtype=torch.float32)
    for bad in (8, 24, 0, 128, 256, 512):
        with pytest.raises(ValueError, match="block_size"):
            geoattn.geometric_attention(*inputs, impl="triton", block_size=bad)
    for bad in (16.0, True):
        with pytest.raises(TypeError, match="block_size"):
            geoattn.geometric_attention(*inputs, impl="triton", block_size=bad)


def test_empty_batch_returns_empty():
    inputs = make_inputs(0, 0, 5, 2, dtype=torch.float32)
    out = geoattn.geometric_attention(*inputs, impl="triton")
    assert out.shape == (0, 5, 2, 3)


def test_second_derivatives_raise_instead_of_returning_wrong_numbers():
    inputs = [t.requires_grad_(True) for t in make_inputs(2, 1, 6, 1, dtype=torch.float32)]
    out = geoattn.geometric_attention(*inputs, impl="triton")
    (g,) = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiable"):
        g.sum().backward()


def test_kernel_table_and_signatures_name_every_kernel_argument():
    specs = triton_kernels.compile_signatures()
    assert [s["kernel"] for s in specs] == list(triton_kernels.KERNELS)
    for spec in specs:
        assert list(spec["signature"]) == list(spec["kernel"].arg_names)
        assert set(spec["constexprs"]) == {n for n, t in spec["signature"].items() if t == "constexpr"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised for CPU tensors without a GPU")
def test_cpu_tensors_without_the_interpreter_raise_a_clear_error():
    """Without TRITON_INTERPRET, and with it set too late (after triton was imported)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = (
        "import os, torch, geoattn\n"
        "x = torch.randn(1, 4, 2, 3); w = torch.ones(2)\n"
        "for late in (False, True):\n"
        "    if late:\n"
        "        os.environ['TRITON_INTERPRET'] = '1'\n"
        "    try:\n"
        "        geoattn.geometric_attention(x, x, x, x, x, w, w, impl='triton')\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout
    assert all("impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1" in line for line in lines)
    assert "only after triton had been imported" in lines[1]


def test_import_geoattn_does_not_import_triton():
    script = "import sys, geoattn; geoattn.geometric_attention; print('triton' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


# ---- compiled kernels on a real GPU (skipped without CUDA by conftest) -------------------


@pytest.mark.gpu
@pytest.mark.parametrize("length", [200, 256])
def test_gpu_autotuned_kernels_match_naive(length):
    assert not triton_kernels.INTERPRETED
    inputs = make_inputs(length, 2, length, 5, dtype=torch.float32)
    key_mask = random_mask(length, 2, length)
    key_mask[1, :] = False
    assert_matches_naive(inputs, key_mask, atol=5e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_low_precision(dtype):
    low = make_inputs(1, 2, 300, 4, dtype=dtype)
    out = geoattn.geometric_attention(*low, impl="triton")
    ref = geoattn.geometric_attention(*[t.float() for t in low], impl="naive")
    assert out.dtype == dtype
    tol = 3e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
