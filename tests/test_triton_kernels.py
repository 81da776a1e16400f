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
from helpers import BF16, needs_bf16

triton_kernels = pytest.importorskip("geoattn.kernels.launch")

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
    ref, ref_grads = forward_and_grads("naive", inputs, key_mask, **kwargs)
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
    """L = 48 with 16-wide blocks compiles EVEN_L=True; 32-wide blocks leave a ragged tail."""
    heur = triton_kernels._fwd_heur
    assert heur.values["EVEN_L"]({"L": 48, "BLOCK_Q": 16, "BLOCK_K": 16})
    assert not heur.values["EVEN_L"]({"L": 48, "BLOCK_Q": 32, "BLOCK_K": 32})
    inputs = make_inputs(7, 1, 48, 2, dtype=torch.float32)
    even = geoattn.geometric_attention(*inputs, impl="triton", block_size=16)
    ragged = geoattn.geometric_attention(*inputs, impl="triton", block_size=32)
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


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float16, 3e-3, 3e-3),
                                               pytest.param(torch.bfloat16, 2e-2, 2e-2, marks=needs_bf16)])
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
    for bad in (8, 24, 0, 64, 128, 256, 512):
        with pytest.raises(ValueError, match="block_size"):
            geoattn.geometric_attention(*inputs, impl="triton", block_size=bad)
    for bad in (16.0, True):
        with pytest.raises(TypeError, match="block_size"):
            geoattn.geometric_attention(*inputs, impl="triton", block_size=bad)


@pytest.mark.parametrize("b, length, h", [(0, 5, 2), (2, 0, 3), (2, 5, 0), (0, 0, 0)])
def test_empty_inputs_give_empty_output_and_seven_gradients(b, length, h):
    """B, L or H = 0: an empty output, and every input gets a zero gradient of its shape."""
    inputs = make_inputs(0, b, length, h, dtype=torch.float32)
    key_mask = torch.ones(b, length, dtype=torch.bool, device=DEVICE)
    ids = torch.zeros(b, length, dtype=torch.int64, device=DEVICE)
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = geoattn.geometric_attention(*leaves, key_mask, sequence_id=ids, chain_id=ids, impl="triton")
    assert out.shape == (b, length, h, 3) and out.dtype == inputs[4].dtype
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    for name, grad, leaf in zip(INPUT_NAMES, grads, leaves):
        assert grad is not None, f"no gradient for {name}"
        assert grad.shape == leaf.shape and not grad.any(), name


def test_second_derivatives_raise_instead_of_returning_wrong_numbers():
    inputs = [t.requires_grad_(True) for t in make_inputs(2, 1, 6, 1, dtype=torch.float32)]
    out = geoattn.geometric_attention(*inputs, impl="triton")
    (g,) = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiable"):
        g.sum().backward()


def test_kernel_table_and_signatures_name_every_kernel_argument():
    specs = triton_kernels.compile_signatures(has_seq=True, has_chain=True)
    assert [s["kernel"] for s in specs] == list(triton_kernels.KERNELS)
    for spec in specs:
        assert list(spec["signature"]) == list(spec["kernel"].arg_names)
        assert set(spec["constexprs"]) == {n for n, t in spec["signature"].items() if t == "constexpr"}
        assert {spec["signature"][n] for n in ("SEQ", "CHAIN")} == {"*i32"}
        assert spec["constexprs"]["HAS_SEQ"] and spec["constexprs"]["HAS_CHAIN"]


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


# ---- sequence and chain ids inside the kernels ------------------------------------------


def chains_and_sequences(b, length):
    """Ids that exercise every case: a chain of length 1, a chain whose keys are all masked
    in batch 0 (its queries have no key: zeros), two sequences, and int64 ids far beyond
    int32 (the launcher ranks them)."""
    cuts = [0, length // 3, length // 3 + 1, (2 * length) // 3, length]
    chain = torch.zeros(b, length, dtype=torch.int64)
    for n, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        chain[:, lo:hi] = n * 2**40 - 7  # chain 1 is the single residue at length // 3
    seq = (torch.arange(length) >= length // 2).long().expand(b, length).clone()
    seq[-1] = 5 - seq[-1]  # another batch, other ids
    key_mask = random_mask(length + 1, b, length, p_keep=0.8).cpu()
    key_mask[0, cuts[3]:] = False  # batch 0: the last chain has no key left
    key_mask[0, cuts[1]] = True  # the single-residue chain keeps its key
    return key_mask.to(DEVICE), seq.to(DEVICE), chain.to(DEVICE), cuts


@pytest.mark.parametrize("length, block_size", [(21, None), (37, 16)], ids=["short-kernels", "streaming"])
def test_sequence_and_chain_ids_match_naive_fp64(length, block_size):
    """fp64: forward and all seven gradients, both kernel families, ragged L."""
    b, h = 2, 1
    inputs = make_inputs(length + 3, b, length, h)
    key_mask, seq, chain, cuts = chains_and_sequences(b, length)
    out, grads = assert_matches_naive(inputs, key_mask, sequence_id=seq, chain_id=chain, block_size=block_size)
    masked_chain = slice(cuts[3], None)
    assert torch.equal(out[0, masked_chain], torch.zeros_like(out[0, masked_chain]))
    for name, grad in zip(("q_rot", "q_dist"), (grads[0], grads[2])):
        assert torch.equal(grad[0, masked_chain], torch.zeros_like(grad[0, masked_chain])), name
    # the single-residue chain attends only to itself: its output is its own value
    torch.testing.assert_close(out[:, cuts[1]], inputs[4][:, cuts[1]])


def test_ids_in_the_reference_differ_from_no_ids():
    """The test above could not pass with ids ignored: they change the answer."""
    b, length, h = 2, 21, 2
    inputs = make_inputs(24, b, length, h, dtype=torch.float32)
    key_mask, seq, chain, _ = chains_and_sequences(b, length)
    plain = geoattn.geometric_attention(*inputs, key_mask, impl="triton")
    with_seq = geoattn.geometric_attention(*inputs, key_mask, sequence_id=seq, impl="triton")
    with_chain = geoattn.geometric_attention(*inputs, key_mask, chain_id=chain, impl="triton")
    assert (plain - with_seq).abs().max() > 1e-2 and (plain - with_chain).abs().max() > 1e-2
    torch.testing.assert_close(with_seq, geoattn.geometric_attention(*inputs, key_mask, sequence_id=seq,
                                                                      impl="naive"), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-5), (torch.float16, 3e-3),
                                         pytest.param(torch.bfloat16, 2e-2, marks=needs_bf16)])
def test_sequence_and_chain_ids_in_low_precision(dtype, atol):
    """fp32, fp16, bf16: against the fp32 reference on the same (rounded) inputs."""
    b, length, h = 2, 19, 2
    low = make_inputs(19, b, length, h, dtype=dtype)
    key_mask, seq, chain, _ = chains_and_sequences(b, length)
    kwargs = {"sequence_id": seq, "chain_id": chain}
    out, grads = forward_and_grads("triton", low, key_mask, **kwargs)
    ref, ref_grads = forward_and_grads("naive", [t.float() for t in low], key_mask, **kwargs)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=atol)
    for name, got, want in zip(INPUT_NAMES, grads, ref_grads):
        scale = max(float(want.abs().max()), 1.0)
        torch.testing.assert_close(got.float(), want, atol=atol * scale, rtol=atol, msg=lambda m: f"{name}: {m}")


# ---- the kernel fixes of issue 14 ---------------------------------------------------------


def test_short_sequences_take_the_small_kernels_and_pad_to_16_or_32():
    padded = triton_kernels._padded_length
    assert padded(16, None) == (16, True) and padded(1, None) == (16, True)
    assert padded(17, None) == (32, True) and padded(32, None) == (32, True)
    assert padded(33, None)[1] is False and padded(16, 16) == (16, False)
    # the encoder's shape: (B·H, 3, 16) planes instead of (B·H, 3, 256) on a GPU
    assert triton_kernels.GPU_SHAPES and triton_kernels._PAD in (32, 256)


@pytest.mark.parametrize("b, length, h", [(3, 16, 3), (2, 20, 3), (1, 32, 2)])
def test_small_kernels_match_naive_with_dead_heads_in_the_last_program(b, length, h):
    """B·H = 9, 6, 2 planes: fewer than one program's HEADS, so some lanes hold no head."""
    inputs = make_inputs(length, b, length, h)
    assert_matches_naive(inputs, random_mask(length, b, length))


@pytest.mark.parametrize("splits", [2, 5])
def test_key_splits_merge_to_the_unsplit_answer(splits):
    """L = 40, 16-wide blocks: 2 full key blocks and a tail, split 2 or 5 ways (3 splits
    get no key block at all), with a key mask and chains: forward and gradients."""
    b, length, h = 2, 40, 1
    inputs = make_inputs(splits, b, length, h)
    key_mask, seq, chain, _ = chains_and_sequences(b, length)
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = triton_kernels._attention(*leaves, key_mask, seq, chain, block_size=16, splits=splits)
    ref, ref_grads = forward_and_grads("naive", inputs, key_mask, sequence_id=seq, chain_id=chain)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, cotangent.to(out))
    for name, got, want in zip(INPUT_NAMES, grads, ref_grads):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_key_split_rule_fills_the_gpu_only_when_the_grid_is_small():
    splits = triton_kernels.key_splits
    assert splits(8, 2048, 132) > 1  # B = 1, H = 8: 128 programs on 132 SMs
    assert splits(8, 2048, 132) * 8 * 16 >= 132
    assert splits(64, 4096, 132) == 1  # 2048 programs: full
    assert splits(1, 100, 132) == 1  # 3 key blocks: nothing to split
    assert splits(1, 4096, 10_000) == 16  # at most 16
    assert splits(1, 1024, 132) == 8  # each split keeps 4 blocks of 32 keys
    assert splits(0, 100, 132) == 1


def test_autotune_key_is_bucketed():
    key = triton_kernels.autotune_key
    assert key(8, 1000) == key(8, 1024) == (1024, 8)
    assert key(5, 1025) == (2048, 8)
    assert key(1 << 20, 16) == (16, 4096)
    # tuned at most at the cap: the longer lengths of a sweep reuse its config
    assert key(1, 32768) == key(1, triton_kernels.TUNE_MAX_L) == (triton_kernels.TUNE_MAX_L, 1)
    assert triton_kernels._fwd_tuned.keys[:2] == ["L_KEY", "BH_KEY"]
    assert "L" not in triton_kernels._dq_tuned.keys and "L" not in triton_kernels._dkdv_tuned.keys


def test_configs_longer_than_the_tuned_length_are_pruned():
    from types import SimpleNamespace

    configs = [SimpleNamespace(kwargs={"BLOCK_Q": q, "BLOCK_K": k}) for q, k in ((128, 16), (64, 16), (256, 32))]
    prune = triton_kernels.prune_configs
    assert prune(configs, {"L_KEY": 64}) == [configs[1]]
    assert prune(configs, {"L_KEY": 128}) == configs[:2]
    assert prune(configs, {"L_KEY": 4096}) == configs
    assert prune(configs[::2], {"L_KEY": 64}) == [configs[0]]  # none fits: the smallest


@pytest.mark.parametrize("block_size, small", [(16, None), (None, None)], ids=["streaming", "short-kernels"])
def test_no_kernel_reads_memory_it_did_not_write(monkeypatch, block_size, small):
    """Every buffer the launcher leaves to the kernels starts as NaN, like uninitialised GPU
    memory could: the answer must not change."""
    nan_empty = lambda *shape, device: torch.full(shape, float("nan"), device=device)  # noqa: E731
    inputs = make_inputs(12, 2, 19, 2)
    key_mask = random_mask(12, 2, 19)
    want, want_grads = forward_and_grads("naive", inputs, key_mask)
    monkeypatch.setattr(triton_kernels, "_empty", nan_empty)
    got, grads = forward_and_grads("triton", inputs, key_mask, block_size=block_size)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    for name, g, w in zip(INPUT_NAMES, grads, want_grads):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_nan_in_the_output_padding_does_not_reach_the_backward():
    """The forward's O past L (padding no query owns) is filled with NaN before the backward,
    as a GPU forward whose query blocks end before the plane does would leave it."""
    b, length, h = 1, 19, 2
    inputs = [t.float() for t in make_inputs(13, b, length, h)]
    planes = [triton_kernels._planes(t, 32).requires_grad_(True) for t in inputs[:5]]
    c = inputs[6].float() * triton_kernels._SCALE
    o = triton_kernels._GeometricAttentionFn.apply(*planes, c, (None, None, None), h, length, 16, False, 1)
    clean = torch.autograd.grad(o[:, :, :length].sum(), planes, retain_graph=True)
    o.data[:, :, length:] = float("nan")  # .data: the autograd graph keeps this very tensor
    poisoned = torch.autograd.grad(o[:, :, :length].sum(), planes)
    for name, x, y in zip(INPUT_NAMES, clean, poisoned):
        assert torch.isfinite(y[:, :, :length]).all(), name
        torch.testing.assert_close(y[:, :, :length], x[:, :, :length], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("length", [12, 37])
def test_masked_key_with_infinite_values_gives_no_nan(length):
    """k_rot = inf (and k_dist, v) at a masked key: zeroed before the kernels, never −inf + inf."""
    inputs = make_inputs(3, 1, length, 2, dtype=torch.float32)
    key_mask = torch.ones(1, length, dtype=torch.bool, device=DEVICE)
    key_mask[0, 5] = False
    dirty = [t.clone() for t in inputs]
    for i, value in ((1, float("inf")), (3, float("-inf")), (4, float("nan"))):
        dirty[i][0, 5] = value
    out, grads = forward_and_grads("triton", dirty, key_mask)
    clean, clean_grads = forward_and_grads("triton", inputs, key_mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean)
    for name, g, w in zip(INPUT_NAMES, grads, clean_grads):
        if name in ("k_rot", "k_dist", "v"):
            g, w = g[0, torch.arange(length) != 5], w[0, torch.arange(length) != 5]
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, msg=lambda m: f"{name}: {m}")


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
@pytest.mark.parametrize("dtype", [torch.float16, BF16])
def test_gpu_low_precision(dtype):
    low = make_inputs(1, 2, 300, 4, dtype=dtype)
    out = geoattn.geometric_attention(*low, impl="triton")
    ref = geoattn.geometric_attention(*[t.float() for t in low], impl="naive")
    assert out.dtype == dtype
    tol = 3e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_the_old_module_name_is_the_launch_module():
    """geoattn.triton_kernels stays importable for one release, as the same module object,
    so code that patches its private names patches what runs."""
    import geoattn.triton_kernels as old

    assert old is triton_kernels
