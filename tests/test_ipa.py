"""Invariant Point Attention (geoattn.ipa): a plain-loop reference, SE(3) invariance,
sensitivity, masks, edge cases, gradients, the SDPA form and the error policy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from geoattn import InvariantPointAttention, ipa_augmented_qk, ipa_logits, ipa_point_weight, random_rotation


def _layer(d_model=8, n_heads=2, *, d_pair=None, d_head=3, pq=2, pv=2, seed=0, dtype=torch.float64, impl="sdpa",
           bias=False, point_norm_eps=1e-8):
    torch.manual_seed(seed)
    layer = InvariantPointAttention(d_model, n_heads, d_pair=d_pair, d_head=d_head, n_query_points=pq,
                                    n_value_points=pv, impl=impl, bias=bias,
                                    point_norm_eps=point_norm_eps).to(dtype)
    with torch.no_grad():  # γ away from 1 and per head, so a slip in its use shows
        layer.set_head_weights(torch.linspace(0.3, 1.7, n_heads))
        if bias:  # nn.Linear starts its biases non-zero already; make them large
            for lin in (layer.scalar_qkv, layer.point_qk, layer.point_v, layer.pair_bias):
                if lin is not None:
                    lin.bias.normal_()
    return layer


def _inputs(b, length, d_model, *, d_pair=None, seed=0, dtype=torch.float64, spread=6.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, d_model, generator=gen, dtype=dtype)
    rot = random_rotation(b, length, generator=gen, dtype=dtype)
    trans = spread * torch.randn(b, length, 3, generator=gen, dtype=dtype)
    pair = None if d_pair is None else torch.randn(b, length, length, d_pair, generator=gen, dtype=dtype)
    return x, rot, trans, pair


# ------------------------------------------------------------ the plain-loop reference

def _loop_reference(layer, x, rot, trans, mask=None, pair=None):
    """Algorithm 22 one residue, head and point at a time, from the layer's weights only."""
    H, c, n_pq, n_pv, dp = layer.n_heads, layer.d_head, layer.n_query_points, layer.n_value_points, layer.d_pair or 0
    w_qkv, w_pqk, w_pv = layer.scalar_qkv.weight, layer.point_qk.weight, layer.point_v.weight
    zero = torch.zeros(1, dtype=x.dtype)
    b_qkv, b_pqk, b_pv = ((zero.expand(lin.out_features) if lin.bias is None else lin.bias)
                          for lin in (layer.scalar_qkv, layer.point_qk, layer.point_v))
    eps = layer.point_norm_eps
    gamma = torch.nn.functional.softplus(layer.gamma_raw)
    w_c, w_l = math.sqrt(2.0 / (9.0 * n_pq)), math.sqrt(1.0 / 3.0)
    B, L, _ = x.shape
    out = x.clone()
    for b in range(B):
        present = [True] * L if mask is None else [bool(m) for m in mask[b]]

        def scal(i, n, h, _b=b):
            rows = [n * H * c + h * c + e for e in range(c)]
            return torch.stack([w_qkv[r] @ x[_b, i] + b_qkv[r] for r in rows])

        def glob(w, bias, n, npts, i, h, p, _b=b):
            base = ((n * H + h) * npts + p) * 3
            local = torch.stack([w[base + a] @ x[_b, i] + bias[base + a] for a in range(3)])
            return rot[_b, i] @ local + trans[_b, i]

        for i in range(L):
            if not present[i]:
                out[b, i] = x[b, i] + layer.out_proj.bias
                continue
            feats = []
            for h in range(H):
                logits = []
                keys = [j for j in range(L) if present[j]]
                for j in keys:
                    s = scal(i, 0, h) @ scal(j, 1, h) / math.sqrt(c)
                    d2 = sum(((glob(w_pqk, b_pqk, 0, n_pq, i, h, p)
                               - glob(w_pqk, b_pqk, 1, n_pq, j, h, p)) ** 2).sum()
                             for p in range(n_pq))
                    bias = 0.0 if pair is None else layer.pair_bias(pair[b, i, j])[h]
                    logits.append(w_l * (s + bias - gamma[h] * w_c / 2 * d2))
                a = torch.softmax(torch.stack(logits), 0)
                o_s = sum(a[n] * scal(j, 2, h) for n, j in enumerate(keys))
                pts = []
                for p in range(n_pv):
                    g = sum(a[n] * glob(w_pv, b_pv, 0, n_pv, j, h, p) for n, j in enumerate(keys))
                    pts.append(rot[b, i].T @ (g - trans[b, i]))
                feats += [o_s, torch.cat(pts), torch.stack([(v.square().sum() + eps).sqrt() for v in pts])]
                if pair is not None:
                    feats.append(sum(a[n] * pair[b, i, j] for n, j in enumerate(keys)))
            out[b, i] = x[b, i] + layer.out_proj(torch.cat(feats))
    assert dp == (0 if pair is None else pair.shape[-1])
    return out


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
@pytest.mark.parametrize("d_pair", [None, 3])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("bias,eps", [(False, 1e-8), (True, 0.0), (True, 0.5)])
def test_matches_plain_loop_reference(impl, d_pair, masked, bias, eps):
    layer = _layer(d_pair=d_pair, impl=impl, bias=bias, point_norm_eps=eps)
    x, rot, trans, pair = _inputs(2, 5, 8, d_pair=d_pair, seed=1)
    mask = torch.tensor([[True, False, True, True, False], [True, True, True, True, True]]) if masked else None
    with torch.no_grad():
        got = layer(x, rot, trans, mask, pair)
        want = _loop_reference(layer, x, rot, trans, mask, pair)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_point_weight_and_defaults_follow_algorithm_22():
    assert ipa_point_weight(4) == pytest.approx(math.sqrt(2 / 36))
    layer = InvariantPointAttention(32, 12)
    assert (layer.d_head, layer.n_query_points, layer.n_value_points) == (16, 4, 8)
    torch.testing.assert_close(layer.head_weights(), torch.ones(12))  # γ starts at 1
    # the supplement's LinearNoBias by default; OpenFold's and AlphaFold2's √(‖o‖² + 1e-8)
    assert layer.scalar_qkv.bias is None and layer.point_qk.bias is None and layer.point_v.bias is None
    assert layer.point_norm_eps == 1e-8
    biased = InvariantPointAttention(32, 12, d_pair=4, bias=True)
    assert all(lin.bias is not None for lin in (biased.scalar_qkv, biased.point_qk, biased.point_v,
                                                 biased.pair_bias))
    assert layer.out_proj.in_features == 12 * (16 + 4 * 8)


# ------------------------------------------------------------ invariance and sensitivity

def _moved(rot, trans, seed):
    gen = torch.Generator().manual_seed(seed)
    G = random_rotation(generator=gen, dtype=rot.dtype)
    s = 50 * torch.randn(3, generator=gen, dtype=rot.dtype)
    return G @ rot, trans @ G.T + s


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(1, 9), impl=st.sampled_from(["direct", "sdpa"]),
       with_pair=st.booleans())
def test_se3_invariance_fp64(seed, length, impl, with_pair):
    d_pair = 3 if with_pair else None
    layer = _layer(d_pair=d_pair, impl=impl, seed=seed % 7)
    x, rot, trans, pair = _inputs(2, length, 8, d_pair=d_pair, seed=seed)
    with torch.no_grad():
        out = layer(x, rot, trans, None, pair)
        out_moved = layer(x, *_moved(rot, trans, seed + 1), None, pair)
    torch.testing.assert_close(out_moved, out, atol=1e-10, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(1, 12), impl=st.sampled_from(["direct", "sdpa"]))
def test_se3_invariance_fp32(seed, length, impl):
    layer = _layer(d_model=16, n_heads=4, d_head=8, pq=4, pv=4, impl=impl, dtype=torch.float32, seed=seed % 5)
    x, rot, trans, _ = _inputs(1, length, 16, seed=seed, dtype=torch.float32, spread=15.0)
    with torch.no_grad():
        out = layer(x, rot, trans)
        out_moved = layer(x, *_moved(rot, trans, seed + 1))
    torch.testing.assert_close(out_moved, out, atol=2e-4, rtol=1e-4)


def test_reflection_changes_the_output():
    """SE(3), not E(3): a mirror image (with right-handed frames rebuilt) is another input."""
    layer = _layer(n_heads=2)
    x, rot, trans, _ = _inputs(1, 6, 8, seed=3)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    flip = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    with torch.no_grad():
        out = layer(x, rot, trans)
        mirrored = layer(x, mirror @ rot @ flip, trans @ mirror.T)
    assert (mirrored - out).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
def test_moving_one_residue_changes_its_output(impl):
    layer = _layer(impl=impl)
    x, rot, trans, _ = _inputs(1, 6, 8, seed=4)
    moved = trans.clone()
    moved[0, 2] += torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        change = (layer(x, rot, moved) - layer(x, rot, trans)).abs().amax(-1)[0]
    assert change[2] > 1e-3
    assert (change > 1e-6).sum() > 1  # the others see it move too


# ------------------------------------------------------------ the SDPA form

@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-4)])
def test_augmented_vectors_give_the_logits_and_sdpa_the_attention(with_bias, dtype, tol):
    gen = torch.Generator().manual_seed(5)
    B, L, H, c, P = 2, 9, 3, 4, 3
    q, k = (torch.randn(B, L, H, c, generator=gen, dtype=dtype) for _ in range(2))
    q_pts, k_pts = (10 * torch.randn(B, L, H, P, 3, generator=gen, dtype=dtype) for _ in range(2))
    gamma = torch.rand(H, generator=gen, dtype=dtype) + 0.1
    bias = torch.randn(B, H, L, L, generator=gen, dtype=dtype) if with_bias else None
    logits = ipa_logits(q, k, q_pts, k_pts, gamma, bias)
    q_aug, k_aug = ipa_augmented_qk(q, k, q_pts, k_pts, gamma)
    assert q_aug.shape == k_aug.shape == (B, H, L, c + 3 * P + 2)
    w_l = math.sqrt(1 / 3)
    dot = q_aug @ k_aug.transpose(-1, -2) + (0 if bias is None else w_l * bias)
    scale = logits.abs().max()
    torch.testing.assert_close(dot / scale, logits / scale, atol=tol, rtol=0)
    v = torch.randn(B, H, L, 5, generator=gen, dtype=dtype)
    direct = torch.softmax(logits.double(), -1).to(dtype) @ v
    fused = F.scaled_dot_product_attention(q_aug, k_aug, v, attn_mask=None if bias is None else w_l * bias,
                                           scale=1.0)
    torch.testing.assert_close(fused, direct, atol=50 * tol, rtol=0)


def test_ipa_logits_is_squared_distance_not_norm():
    # one head, one point each, nothing else: −w_L γ w_C/2 ‖q − k‖²
    q = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    pts = torch.tensor([[0.0, 0, 0], [3.0, 4, 0]], dtype=torch.float64).reshape(1, 2, 1, 1, 3)
    logits = ipa_logits(q, q, pts, pts, torch.ones(1, dtype=torch.float64))
    expected = -math.sqrt(1 / 3) * math.sqrt(2 / 9) / 2 * 25
    assert logits[0, 0, 0, 1].item() == pytest.approx(expected)
    assert logits[0, 0, 0, 0].item() == 0.0


@pytest.mark.parametrize("d_pair", [None, 4])
def test_direct_and_sdpa_layers_agree(d_pair):
    layer = _layer(d_model=16, n_heads=3, d_head=5, pq=4, pv=3, d_pair=d_pair)
    x, rot, trans, pair = _inputs(2, 11, 16, d_pair=d_pair, seed=6)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        fused = layer(x, rot, trans, mask, pair)
        layer.impl = "direct"
        direct = layer(x, rot, trans, mask, pair)
    torch.testing.assert_close(fused, direct, atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------ masks and edge cases

@pytest.mark.parametrize("impl", ["direct", "sdpa"])
def test_masked_residues_never_leak_even_as_nan(impl):
    layer = _layer(d_pair=2, impl=impl)
    x, rot, trans, pair = _inputs(1, 6, 8, d_pair=2, seed=7)
    mask = torch.tensor([[True, True, False, True, False, True]])
    with torch.no_grad():
        ref = layer(x, rot, trans, mask, pair)
    x2, rot2, trans2, pair2 = x.clone(), rot.clone(), trans.clone(), pair.clone()
    x2[~mask], rot2[~mask], trans2[~mask] = float("nan"), float("nan"), float("inf")
    pair2[:, ~mask[0]] = float("nan")
    pair2[:, :, ~mask[0]] = float("nan")
    x2.requires_grad_(True)
    rot2.requires_grad_(True)
    out = layer(x2, rot2, trans2, mask, pair2)
    keep = mask[0]
    torch.testing.assert_close(out[:, keep], ref[:, keep], atol=1e-12, rtol=0)
    out[:, keep].sum().backward()
    assert torch.isfinite(x2.grad[:, keep]).all() and (x2.grad[~mask] == 0).all()
    assert torch.isfinite(rot2.grad).all()


def test_masked_keys_get_zero_weight_and_masked_rows_are_zero():
    layer = _layer()
    x, rot, trans, _ = _inputs(1, 5, 8, seed=8)
    mask = torch.tensor([[True, False, True, True, False]])
    with torch.no_grad():
        a = layer.attention_weights(x, rot, trans, mask)
        sub = layer.attention_weights(x[:, mask[0]], rot[:, mask[0]], trans[:, mask[0]])
    assert (a[..., ~mask[0]] == 0).all() and (a[:, :, ~mask[0]] == 0).all()
    torch.testing.assert_close(a[:, :, mask[0]][..., mask[0]], sub)
    torch.testing.assert_close(a[:, :, mask[0]].sum(-1), torch.ones(1, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
def test_removing_masked_residues_gives_the_same_outputs(impl):
    layer = _layer(d_pair=2, impl=impl)
    x, rot, trans, pair = _inputs(1, 7, 8, d_pair=2, seed=9)
    mask = torch.tensor([[True, False, True, True, True, False, True]])
    keep = mask[0]
    with torch.no_grad():
        full = layer(x, rot, trans, mask, pair)
        small = layer(x[:, keep], rot[:, keep], trans[:, keep], None, pair[:, keep][:, :, keep])
        all_masked = layer(x, rot, trans, torch.zeros_like(mask), pair)
    torch.testing.assert_close(full[:, keep], small, atol=1e-12, rtol=0)
    torch.testing.assert_close(all_masked, x + layer.out_proj.bias)  # no residue, no message, no NaN


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
@pytest.mark.parametrize("shape", [(0, 5), (2, 0), (0, 0)])
def test_zero_size_inputs(impl, shape):
    layer = _layer(d_pair=2, impl=impl)
    b, length = shape
    x, rot, trans, pair = _inputs(b, length, 8, d_pair=2)
    mask = torch.ones(b, length, dtype=torch.bool)
    out = layer(x, rot, trans, mask, pair)
    assert out.shape == (b, length, 8)


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
def test_degenerate_inputs_stay_finite(impl):
    layer = _layer(impl=impl)
    x = torch.zeros(1, 4, 8, dtype=torch.float64)  # every point at its Cα, every output point there too
    rot = torch.eye(3, dtype=torch.float64).expand(1, 4, 3, 3)
    trans = torch.zeros(1, 4, 3, dtype=torch.float64)  # four residues on top of each other
    out = layer(x.requires_grad_(True), rot, trans)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()  # ‖0‖ of the output points has a finite (zero) gradient
    far = layer(torch.randn(1, 3, 8, dtype=torch.float64), rot[:, :3], 1e4 * torch.randn(1, 3, 3, dtype=torch.float64))
    assert torch.isfinite(far).all()


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
def test_gradcheck_fp64(impl):
    layer = _layer(d_model=4, n_heads=2, d_head=2, pq=2, pv=1, d_pair=2, impl=impl)
    x, rot, trans, pair = _inputs(1, 3, 4, d_pair=2, seed=10, spread=2.0)
    mask = torch.tensor([[True, True, False]])

    def fn(x, trans, pair):
        return layer(x, rot, trans, mask, pair)

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), trans.requires_grad_(), pair.requires_grad_()))

    names = ["gamma_raw", "point_qk.weight", "point_v.weight", "pair_bias.weight"]
    base = dict(layer.named_parameters())

    def fn_params(*values):
        params = {**base, **dict(zip(names, values))}
        return torch.func.functional_call(layer, params, (x.detach(), rot, trans.detach(), mask, pair.detach()))

    values = tuple(base[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn_params, values)


# ------------------------------------------------------------ the error policy

def test_constructor_errors_name_the_argument():
    with pytest.raises(TypeError, match="d_model"):
        InvariantPointAttention(8.0, 2)
    with pytest.raises(ValueError, match="n_heads"):
        InvariantPointAttention(8, 0)
    with pytest.raises(ValueError, match="n_query_points"):
        InvariantPointAttention(8, 2, n_query_points=0)
    with pytest.raises(TypeError, match="d_pair"):
        InvariantPointAttention(8, 2, d_pair="4")
    with pytest.raises(ValueError, match="impl"):
        InvariantPointAttention(8, 2, impl="flash")
    with pytest.raises(TypeError, match="impl"):
        InvariantPointAttention(8, 2, impl=None)
    with pytest.raises(ValueError, match="gamma"):
        InvariantPointAttention(8, 2).set_head_weights([1.0, -1.0])
    with pytest.raises(TypeError, match="^bias"):
        InvariantPointAttention(8, 2, bias=1)
    with pytest.raises(ValueError, match="^point_norm_eps"):
        InvariantPointAttention(8, 2, point_norm_eps=-1e-8)


@pytest.mark.parametrize("mutate,exc,name", [
    (lambda a: {**a, "x": a["x"].tolist()}, TypeError, "x"),
    (lambda a: {**a, "x": a["x"][..., :5]}, ValueError, "x"),
    (lambda a: {**a, "rotations": a["rotations"][:, :, :2]}, ValueError, "rotations"),
    (lambda a: {**a, "translations": a["translations"][..., :2]}, ValueError, "translations"),
    (lambda a: {**a, "translations": a["translations"].long()}, ValueError, "translations"),
    (lambda a: {**a, "mask": torch.ones(1, 4)}, ValueError, "mask"),
    (lambda a: {**a, "mask": torch.ones(1, 3, dtype=torch.bool)}, ValueError, "mask"),
    (lambda a: {**a, "pair": None}, ValueError, "pair"),
    (lambda a: {**a, "pair": a["pair"][..., :1]}, ValueError, "pair"),
    (lambda a: {**a, "pair": "z"}, TypeError, "pair"),
])
def test_forward_errors_name_the_argument(mutate, exc, name):
    layer = _layer(d_pair=2)
    x, rot, trans, pair = _inputs(1, 4, 8, d_pair=2)
    args = {"x": x, "rotations": rot, "translations": trans, "mask": None, "pair": pair}
    with pytest.raises(exc, match=f"^{name}"):
        layer(**mutate(args))


def test_pair_without_d_pair_is_refused():
    layer = _layer()
    x, rot, trans, _ = _inputs(1, 4, 8)
    with pytest.raises(ValueError, match="^pair"):
        layer(x, rot, trans, pair=torch.zeros(1, 4, 4, 2, dtype=torch.float64))


def test_functional_errors_name_the_argument():
    q = torch.zeros(1, 3, 2, 4)
    pts = torch.zeros(1, 3, 2, 2, 3)
    g = torch.ones(2)
    with pytest.raises(TypeError, match="^q_pts"):
        ipa_logits(q, q, pts.numpy(), pts, g)
    with pytest.raises(ValueError, match="^k_pts"):
        ipa_augmented_qk(q, q, pts, pts[..., :1, :], g)
    with pytest.raises(ValueError, match="^gamma"):
        ipa_logits(q, q, pts, pts, torch.ones(3))
    with pytest.raises(ValueError, match="^pair_bias"):
        ipa_logits(q, q, pts, pts, g, torch.zeros(1, 2, 3, 4))
    with pytest.raises(TypeError, match="n_query_points"):
        ipa_point_weight(2.0)


# ------------------------------------------------------------ OpenFold's weights

class _OpenFoldLayoutIPA(torch.nn.Module):
    """An IPA written from OpenFold's and AlphaFold2's published description, with their
    parameter names and layout, to check the loader against (not OpenFold's code):

    - every Linear has a bias; ``linear_kv``'s rows are split per head into k, then v;
    - point rows are coordinate-major: row x·H·P + h·P + p; ``linear_kv_points`` holds,
      per head, P_qk key points and then P_v value points;
    - logits q·k/√(3c) + b/√3 − γ √(2/(27 P_qk))/2 Σ‖·‖², and −1e5 on pairs with a
      masked residue (so a masked query attends to every residue);
    - output points' norms √(‖o‖² + 1e-8); ``linear_out`` reads
      [scalars (h c), x (h p), y (h p), z (h p), norms (h p), pair (h d)].

    ``forward`` returns the update (OpenFold's structure module adds it to s).
    """

    def __init__(self, c_s, c_z, c, h, pq, pv):
        super().__init__()
        self.c, self.h, self.pq, self.pv = c, h, pq, pv
        lin = torch.nn.Linear
        self.linear_q, self.linear_kv = lin(c_s, h * c), lin(c_s, 2 * h * c)
        self.linear_q_points = lin(c_s, 3 * h * pq)
        self.linear_kv_points = lin(c_s, 3 * h * (pq + pv))
        self.linear_b = lin(c_z, h)
        self.head_weights = torch.nn.Parameter(torch.rand(h) + 0.2)
        self.linear_out = lin(h * (c_z + c + 4 * pv), c_s)
        with torch.no_grad():  # every number non-zero and of order 1
            for param in self.parameters():
                param.normal_()
            self.linear_out.weight.mul_(0.1)

    def _points(self, linear, s, n_points, R, t):
        flat = linear(s)  # (B, L, 3·h·P): x block, y block, z block
        local = torch.stack(flat.chunk(3, dim=-1), dim=-1)  # (B, L, h·P, 3)
        local = local.unflatten(-2, (self.h, n_points))  # (B, L, h, P, 3)
        return torch.einsum("blxy,blhpy->blhpx", R, local) + t[:, :, None, None]

    def forward(self, s, z, R, t, mask):
        B, L, _ = s.shape
        h, c, pq = self.h, self.c, self.pq
        q = self.linear_q(s).unflatten(-1, (h, c))
        k, v = self.linear_kv(s).unflatten(-1, (h, 2 * c)).split(c, dim=-1)
        q_pts = self._points(self.linear_q_points, s, pq, R, t)
        k_pts, v_pts = self._points(self.linear_kv_points, s, pq + self.pv, R, t).split([pq, self.pv], dim=-2)
        logits = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(3 * c)
        logits = logits + math.sqrt(1 / 3) * self.linear_b(z).permute(0, 3, 1, 2)
        d2 = (q_pts[:, :, None] - k_pts[:, None]).square().sum((-1, -2))  # (B, i, j, h)
        w = F.softplus(self.head_weights) * math.sqrt(1 / (3 * pq * 9 / 2))
        logits = logits - 0.5 * (w * d2).permute(0, 3, 1, 2)
        m = mask.to(s.dtype)
        logits = logits + 1e5 * (m[:, None, :, None] * m[:, None, None, :] - 1)
        a = torch.softmax(logits, dim=-1)
        o = torch.einsum("bhij,bjhc->bihc", a, v).flatten(-2)
        g = torch.einsum("bhij,bjhpx->bihpx", a, v_pts) - t[:, :, None, None]
        local = torch.einsum("blyx,blhpy->blhpx", R, g)  # R_iᵀ (g − t_i)
        norms = (local.square().sum(-1) + 1e-8).sqrt().flatten(-2)
        xyz = [local[..., i].flatten(-2) for i in range(3)]
        pair = torch.einsum("bhij,bijd->bihd", a, z).flatten(-2)
        return self.linear_out(torch.cat([o, *xyz, norms, pair], dim=-1))


def _openfold_pair(*, c_s=10, c_z=3, c=4, h=3, pq=2, pv=3, seed=0):
    torch.manual_seed(seed)
    ref = _OpenFoldLayoutIPA(c_s, c_z, c, h, pq, pv).double()
    ours = InvariantPointAttention(c_s, h, d_pair=c_z, d_head=c, n_query_points=pq, n_value_points=pv,
                                   bias=True).double()
    return ref, ours


@pytest.mark.parametrize("impl", ["direct", "sdpa"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_openfold_weights_give_openfold_update(impl, wrapped):
    ref, ours = _openfold_pair()
    sd = ref.state_dict()
    if wrapped:  # OpenFold @ ce0029e: PointProjection holds the Linear as `.linear`
        sd = {k.replace("_points.", "_points.linear."): v for k, v in sd.items()}
    ours.load_openfold_state_dict(sd)
    ours.impl = impl
    x, rot, trans, pair = _inputs(2, 7, 10, d_pair=3, seed=11)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, [2, 5]] = False
    with torch.no_grad():
        want = ref(x, pair, rot, trans, mask)
        got = ours(x, rot, trans, mask, pair) - x
    scale = want.abs().max()
    assert scale > 1  # the update is not trivially small
    # every present residue; OpenFold's masked ones get an update, ours none
    torch.testing.assert_close(got[mask], want[mask], atol=1e-11 * scale, rtol=1e-11)


def test_point_norm_eps_is_the_only_numerical_difference():
    ref, ours = _openfold_pair(seed=1)
    ours.load_openfold_state_dict(ref.state_dict())
    x, rot, trans, pair = _inputs(1, 5, 10, d_pair=3, seed=12)
    x = 1e-3 * x  # small embeddings: output points near the origin, where eps shows
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        want = ref(x, pair, rot, trans, mask)
        close = ours(x, rot, trans, mask, pair) - x
        ours.point_norm_eps = 0.0
        plain = ours(x, rot, trans, mask, pair) - x
    torch.testing.assert_close(close, want, atol=1e-12, rtol=1e-11)
    assert (plain - want).abs().max() > 1e-9


def test_openfold_load_copies_each_parameter_where_it_belongs():
    # the loaded layer's own projections, read back in OpenFold's layout
    ref, ours = _openfold_pair(seed=2)
    ours.load_openfold_state_dict(ref.state_dict())
    h, c, pq, pv = 3, 4, 2, 3
    s = torch.randn(4, 10, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = ours.scalar_qkv(s).unflatten(-1, (3, h, c)).unbind(1)
        ref_k, ref_v = ref.linear_kv(s).unflatten(-1, (h, 2, c)).unbind(-2)
        torch.testing.assert_close(q, ref.linear_q(s).unflatten(-1, (h, c)))
        torch.testing.assert_close((k, v), (ref_k, ref_v))
        qk_pts = ours.point_qk(s).unflatten(-1, (2, h, pq, 3))
        ref_q_pts = ref.linear_q_points(s).unflatten(-1, (3, h, pq)).permute(0, 2, 3, 1)
        ref_kv_pts = ref.linear_kv_points(s).unflatten(-1, (3, h, pq + pv)).permute(0, 2, 3, 1)
        torch.testing.assert_close(qk_pts[:, 0], ref_q_pts)
        torch.testing.assert_close(qk_pts[:, 1], ref_kv_pts[:, :, :pq])
        torch.testing.assert_close(ours.point_v(s).unflatten(-1, (h, pv, 3)), ref_kv_pts[:, :, pq:])
    torch.testing.assert_close(ours.head_weights(), F.softplus(ref.head_weights))


def _openfold_sd():
    ref, _ = _openfold_pair()
    return dict(ref.state_dict())


@pytest.mark.parametrize("edit,exc,key", [
    (lambda sd: {k: v for k, v in sd.items() if k != "linear_kv.bias"}, ValueError, "linear_kv.bias"),
    (lambda sd: {**sd, "linear_z.weight": torch.zeros(3)}, ValueError, "linear_z.weight"),
    (lambda sd: {**sd, "linear_q_points.weight": torch.zeros(17, 10)}, ValueError, "linear_q_points.weight"),
    (lambda sd: {**sd, "linear_out.weight": sd["linear_out.weight"][:, :-1]}, ValueError, "linear_out.weight"),
    (lambda sd: {**sd, "head_weights": None}, TypeError, "head_weights"),
    (lambda sd: {**sd, "head_weights": [1.0, 1.0, 1.0]}, TypeError, "head_weights"),
    (lambda sd: {**sd, "linear_b.bias": torch.zeros(3, dtype=torch.complex64)}, ValueError, "linear_b.bias"),
    (lambda sd: {**sd, "linear_b.bias": torch.zeros(3, dtype=torch.int64)}, ValueError, "linear_b.bias"),
    (lambda sd: {**sd, "linear_q.bias": torch.empty(12, device="meta")}, ValueError, "linear_q.bias"),
    (lambda sd: {**sd, "linear_q_points.linear.weight": sd["linear_q_points.weight"]}, ValueError,
     "linear_q_points.linear.weight"),
])
def test_openfold_load_errors_name_the_key_and_load_nothing(edit, exc, key):
    _, ours = _openfold_pair()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(exc, match=f"^{key}"):
        ours.load_openfold_state_dict(edit(_openfold_sd()))
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_openfold_load_needs_the_layer_built_like_openfold():
    with pytest.raises(ValueError, match=r"^linear_\w+\.bias: .*bias=False"):
        InvariantPointAttention(10, 3, d_pair=3, d_head=4, n_query_points=2, n_value_points=3
                                ).double().load_openfold_state_dict(_openfold_sd())
    with pytest.raises(ValueError, match=r"^linear_b\.\w+: .*d_pair=None"):
        InvariantPointAttention(10, 3, d_head=4, n_query_points=2, n_value_points=3,
                                bias=True).load_openfold_state_dict(_openfold_sd())
    with pytest.raises(TypeError, match="^state_dict"):
        InvariantPointAttention(10, 3).load_openfold_state_dict([("head_weights", torch.ones(3))])


# ------------------------------------------------------------ the measurement chapter 7 reads

def test_bench_json_has_every_row_the_chapter_reads():
    import json
    from importlib.resources import files

    bench = json.loads(files("geoattn").joinpath("data/bench_ipa.json").read_text())
    assert bench["config"]["threads"] == 1 and bench["git_commit"] and bench["versions"]["torch"]
    assert set(bench["load_average_1min"]) == {"start", "end"}
    rows = {(r["layer"], r["L"]) for r in bench["rows"]}
    assert rows == {(n, k) for n in ("ipa_sdpa", "esm_naive", "esm_chunked") for k in bench["config"]["L"]}
    assert bench["config"]["L"] == [512, 1024, 2048, 4096]
    assert all(r["median_s"] > 0 and r["peak_tensor_bytes"] > 0 for r in bench["rows"])


def test_bench_script_runs_at_a_tiny_size(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ipa.py"
    spec = importlib.util.spec_from_file_location("bench_ipa", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    bench.main(["--L", "16", "32", "--repeats", "1", "--d-model", "16", "--heads", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["layer"], r["L"]) for r in rows] == [(n, k) for k in (16, 32) for n in bench.LAYERS]
