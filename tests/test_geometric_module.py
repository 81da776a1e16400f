"""GeometricSelfAttention, the layer of Algorithm 6: against a residue-by-residue reference,
invariant under global rigid motions, sensitive to moving one residue, masks, options,
per-head weights and every documented ValueError."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import geoattn
from geoattn import GeometricSelfAttention
from geoattn.frames import random_rotation
from helpers import BF16


def make_layer(seed=0, d_model=12, n_heads=3, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    layer = GeometricSelfAttention(d_model, n_heads, impl="naive", **kwargs).to(dtype)
    with torch.no_grad():  # non-default head weights, so both terms matter and differ per head
        layer.rot_scale.copy_(torch.linspace(-1.0, 1.0, n_heads))
        layer.dist_scale.copy_(torch.linspace(0.5, -0.5, n_heads))
    return layer


def make_inputs(seed, b=2, length=6, d_model=12, dtype=torch.float64, spread=8.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, d_model, generator=g, dtype=torch.float64).to(dtype)
    rot = random_rotation(b, length, generator=g, dtype=dtype)
    trans = (torch.randn(b, length, 3, generator=g, dtype=torch.float64) * spread).to(dtype)
    return x, rot, trans


def reference_layer(layer, x, rot, trans):
    """Algorithm 6 residue by residue, from the layer's parameters (fp64, no mask)."""
    h_, m = layer.n_heads, layer.num_vector_messages
    w_r, w_d = F.softplus(layer.rot_scale.double()), F.softplus(layer.dist_scale.double())
    p = layer.proj(layer.norm(x)).double()  # line 1, in the layout "(n h c)" for q_r, k_r, q_d, k_d then v
    b_, length, _ = x.shape
    out = torch.zeros(b_, length, h_ * m * 3, dtype=torch.float64)
    for b in range(b_):
        R, t = rot[b].double(), trans[b].double()

        def local(i, n, h):
            return p[b, i, (n * h_ + h) * 3:(n * h_ + h) * 3 + 3]

        def value(j, h, k):
            start = 4 * h_ * 3 + (h * m + k) * 3
            return R[j] @ p[b, j, start:start + 3]

        for i in range(length):
            for h in range(h_):
                q_r, q_d = R[i] @ local(i, 0, h), R[i] @ local(i, 2, h) + t[i]
                scores = []
                for j in range(length):
                    k_r, k_d = R[j] @ local(j, 1, h), R[j] @ local(j, 3, h) + t[j]
                    scores.append(w_r[h] * (q_r @ k_r) / math.sqrt(3)
                                  - w_d[h] * torch.linalg.vector_norm(q_d - k_d) / math.sqrt(3))
                a = torch.softmax(torch.stack(scores), 0)
                for k in range(m):
                    o = sum(a[j] * value(j, h, k) for j in range(length))
                    out[b, i, (h * m + k) * 3:(h * m + k) * 3 + 3] = R[i].T @ o
    return x.double() + layer.out_proj.double()(out)


@pytest.mark.parametrize("options", [{}, {"num_vector_messages": 2, "pre_layernorm": True, "bias": False}])
def test_layer_matches_a_residue_by_residue_reference(options):
    layer = make_layer(1, **options)
    x, rot, trans = make_inputs(1, length=5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, rot, trans), reference_layer(layer, x, rot, trans),
                                   atol=1e-12, rtol=1e-12)


def test_default_impl_matches_naive():
    layer = make_layer(2, dtype=torch.float32)
    x, rot, trans = make_inputs(2, dtype=torch.float32)
    mask = torch.tensor([[True] * 6, [True, True, False, True, False, False]])
    auto = GeometricSelfAttention(12, 3)
    auto.load_state_dict(layer.state_dict())
    assert auto.impl == "auto"
    torch.testing.assert_close(auto(x, rot, trans, mask), layer(x, rot, trans, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "triton"])  # Triton runs in its interpreter without a GPU
def test_every_impl_gives_the_naive_output_and_gradients(impl):
    layer = make_layer(9, dtype=torch.float32)
    x, rot, trans = make_inputs(9, length=7, dtype=torch.float32)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    results = []
    for name in ("naive", impl):
        layer.impl = name
        layer.zero_grad()
        xx, tt = x.clone().requires_grad_(), trans.clone().requires_grad_()
        out = layer(xx, rot, tt, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xx.grad, tt.grad, layer.proj.weight.grad.clone(), layer.dist_scale.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_layer_on_cuda_matches_the_cpu(dtype):
    layer = make_layer(10, dtype=torch.float32)
    x, rot, trans = make_inputs(10, length=33, dtype=torch.float32)
    with torch.no_grad():
        ref = layer(x, rot, trans)
        gpu = layer.to("cuda", dtype)
        gpu.impl = "auto"  # Triton on CUDA
        out = gpu(*(t.to("cuda", dtype) for t in (x, rot, trans)))
    assert out.dtype == dtype
    tol = 2e-3 if dtype == torch.float32 else 0.1  # fp32: tl.dot may round its inputs to TF32 on CUDA
    torch.testing.assert_close(out.float().cpu(), ref, atol=tol, rtol=tol)


def _move_globally(rot, trans, seed):
    g = torch.Generator().manual_seed(seed + 1)
    glob = random_rotation(generator=g, dtype=rot.dtype)
    shift = (torch.randn(3, generator=g, dtype=torch.float64) * 30).to(rot.dtype)
    return glob @ rot, trans @ glob.T + shift  # T_i -> G ∘ T_i: R_i -> G R_i, t_i -> G t_i + s


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(1, 8), n_heads=st.integers(1, 3))
def test_invariance_under_global_rigid_motion_fp64(seed, length, n_heads):
    layer = make_layer(seed % 1000, n_heads=n_heads)
    x, rot, trans = make_inputs(seed, length=length)
    rot2, trans2 = _move_globally(rot, trans, seed)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, rot2, trans2), layer(x, rot, trans), atol=1e-10, rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(1, 10), pre_layernorm=st.booleans())
def test_invariance_under_global_rigid_motion_fp32(seed, length, pre_layernorm):
    layer = make_layer(seed % 1000, dtype=torch.float32, pre_layernorm=pre_layernorm)
    layer.impl = "auto"  # the path a reader gets
    x, rot, trans = make_inputs(seed, length=length, dtype=torch.float32)
    rot2, trans2 = _move_globally(rot, trans, seed)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, length // 2:] = False
    with torch.no_grad():
        torch.testing.assert_close(layer(x, rot2, trans2, mask), layer(x, rot, trans, mask), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("motion", ["translate", "rotate"])
def test_moving_one_residue_changes_the_output(motion):
    layer = make_layer(3, dtype=torch.float32)
    x, rot, trans = make_inputs(3, b=1, length=6, dtype=torch.float32)
    rot2, trans2 = rot.clone(), trans.clone()
    if motion == "translate":
        trans2[0, 2] += torch.tensor([3.0, -2.0, 1.0])
    else:
        rot2[0, 2] = random_rotation(generator=torch.Generator().manual_seed(5)) @ rot[0, 2]
    with torch.no_grad():
        change = (layer(x, rot2, trans2) - layer(x, rot, trans)).abs().amax(-1)[0]
    assert change[2] > 1e-2, change  # the moved residue sees the others from a new place
    assert torch.cat([change[:2], change[3:]]).max() > 1e-2, change  # and its neighbours see it move


def test_masked_residues_are_ignored_even_with_nan_frames():
    layer = make_layer(4, bias=True)
    x, rot, trans = make_inputs(4, b=2, length=6)
    mask = torch.tensor([[True, True, True, True, False, False], [False] * 6])
    rot, trans = rot.clone(), trans.clone()
    rot[0, 4:] = float("nan")  # residues without a frame
    trans[1] = float("nan")
    with torch.no_grad():
        out = layer(x, rot, trans, mask)
        assert torch.isfinite(out).all()
        short = layer(x[:1, :4], rot[:1, :4], trans[:1, :4])  # the same protein without its masked tail
        torch.testing.assert_close(out[0, :4], short[0], atol=1e-12, rtol=1e-12)
        # a masked residue's own output O is zeroed: its update is Linear(0), the output bias
        torch.testing.assert_close(out[0, 4:], x[0, 4:] + layer.out_proj.bias)
        torch.testing.assert_close(out[1], x[1] + layer.out_proj.bias)


def test_gradients_are_finite_for_far_and_coincident_frames():
    layer = make_layer(5, dtype=torch.float32)
    x, rot, trans = make_inputs(5, b=1, length=5, dtype=torch.float32)
    for t in (torch.zeros_like(trans), trans / trans.abs().max() * 1e4):  # all residues at one point; 1e4 Å
        xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
        out = layer(xx, rot, tt)
        assert torch.isfinite(out).all()
        out.square().sum().backward()
        assert torch.isfinite(xx.grad).all() and torch.isfinite(tt.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        layer.zero_grad()


def test_attention_weights():
    layer = make_layer(6)
    x, rot, trans = make_inputs(6, b=2, length=5)
    mask = torch.tensor([[True, False, True, True, True], [True] * 5])
    with torch.no_grad():
        a = layer.attention_weights(x, rot, trans, mask)
    assert a.shape == (2, 3, 5, 5)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert torch.equal(a[0, :, :, 1], torch.zeros(3, 5, dtype=torch.float64))
    # A pure distance head with weight w: row i is softmax_j(−w‖q_d,i − k_d,j‖/√3) of the layer's own vectors.
    layer.set_head_weights(rot_weight=0.0, dist_weight=2.0)
    g = layer.vectors(x, rot, trans)
    dist = torch.cdist(g.q_dist.transpose(1, 2), g.k_dist.transpose(1, 2))
    with torch.no_grad():
        expected = torch.softmax(-2.0 * dist / math.sqrt(3), -1)
        torch.testing.assert_close(layer.attention_weights(x, rot, trans), expected)


def test_head_weights_start_at_ln2_and_can_be_set():
    layer = GeometricSelfAttention(8, 4)
    w_r, w_d = layer.head_weights()
    torch.testing.assert_close(w_r, torch.full((4,), math.log(2.0)))
    torch.testing.assert_close(w_d, torch.full((4,), math.log(2.0)))
    layer.set_head_weights(rot_weight=[0.0, 0.5, 2.0, 30.0], dist_weight=3.0)
    w_r, w_d = layer.head_weights()
    torch.testing.assert_close(w_r, torch.tensor([0.0, 0.5, 2.0, 30.0]))
    torch.testing.assert_close(w_d, torch.full((4,), 3.0))
    assert w_r[0].item() == 0.0
    for bad in ([1.0, 2.0], -0.5, float("nan"), [[1.0] * 4]):
        with pytest.raises(ValueError, match="rot_weight"):
            layer.set_head_weights(rot_weight=bad)


def test_half_precision_layer():
    layer = make_layer(7, dtype=torch.float32)
    x, rot, trans = make_inputs(7, b=1, length=6, dtype=torch.float32)
    with torch.no_grad():
        ref = layer(x, rot, trans)
        out = layer.to(torch.bfloat16)(x.bfloat16(), rot.bfloat16(), trans.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("kwargs, name, error", [
    ({"d_model": 0}, "d_model", ValueError), ({"n_heads": 2.5}, "n_heads", TypeError),
    ({"num_vector_messages": 0}, "num_vector_messages", ValueError), ({"impl": "cuda"}, "impl", ValueError),
])
def test_constructor_errors(kwargs, name, error):
    args = {"d_model": 8, "n_heads": 2, **kwargs}
    with pytest.raises(error, match=name):
        GeometricSelfAttention(args.pop("d_model"), args.pop("n_heads"), **args)


BAD_FORWARD = {
    "x rank 2": ("x", lambda t: t[0]),
    "x wrong d_model": ("x", lambda t: t[..., :5]),
    "x integer": ("x", lambda t: t.long()),
    "rotations (B, L, 3)": ("rotations", lambda t: t[..., 0]),
    "rotations other length": ("rotations", lambda t: t[:, :3]),
    "rotations 4x4": ("rotations", lambda t: torch.zeros(2, 6, 4, 4, dtype=t.dtype)),
    "translations (B, L, 2)": ("translations", lambda t: t[..., :2]),
    "translations other batch": ("translations", lambda t: t[:1]),
    "mask int": ("mask", lambda t: t.long()),
    "mask (B, L, 1)": ("mask", lambda t: t[..., None]),
    "mask (L,)": ("mask", lambda t: t[0]),
    "translations on meta": ("translations", lambda t: t.to("meta")),
    "mask on meta": ("mask", lambda t: t.to("meta")),
    "rotations not a tensor": ("rotations", lambda t: t.tolist()),
}


@pytest.mark.parametrize("label", list(BAD_FORWARD))
def test_forward_errors_name_the_argument(label):
    layer = make_layer(8)
    x, rot, trans = make_inputs(8)
    args = {"x": x, "rotations": rot, "translations": trans, "mask": torch.ones(2, 6, dtype=torch.bool)}
    name, change = BAD_FORWARD[label]
    args[name] = change(args[name])
    error = TypeError if "not a tensor" in label else ValueError
    with pytest.raises(error, match=name):
        layer(**args)
    with pytest.raises(error, match=name):
        layer.attention_weights(**args)


def test_exported_at_top_level():
    assert geoattn.GeometricSelfAttention is GeometricSelfAttention


def test_impl_can_be_changed_but_only_to_a_known_one():
    layer = GeometricSelfAttention(8, 2)
    layer.impl = "naive"
    assert layer.impl == "naive" and "impl='naive'" in repr(layer)
    with pytest.raises(ValueError, match="impl"):
        layer.impl = "flash"
