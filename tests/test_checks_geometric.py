"""The chapter 4 exercise checks accept correct answers, written independently of the
library or from its pieces, and reject the plausible wrong ones with a hint that names the
slip; the update check's reference is the layer's own forward pass."""
import math

import pytest
import torch

import geoattn
from geoattn.course import checks
from geoattn.course.checks.geometric import (
    _UPDATE_SLIPS,
    _distance_cases,
    _layer_update_reference,
    _slipped_update,
    _update_cases,
)


def _not_implemented(*args):
    raise NotImplementedError


def cdist_term(q, k):  # exact: cdist without its matrix-product shortcut
    return torch.cdist(q[None], k[None], compute_mode="donot_use_mm_for_euclid_dist")[0] / math.sqrt(3)


def chapter_term(q, k):  # the chapter's solution
    diff = q[:, None, :] - k[None, :, :]
    return torch.linalg.vector_norm(diff, dim=-1) / math.sqrt(3)


def loop_term(q, k):  # deliberately plain: one pair at a time
    out = torch.empty(q.shape[0], k.shape[0], dtype=q.dtype)
    for i in range(q.shape[0]):
        for j in range(k.shape[0]):
            out[i, j] = math.dist(q[i].tolist(), k[j].tolist()) / math.sqrt(3)
    return out


@pytest.mark.parametrize("fn", [cdist_term, loop_term, chapter_term])
def test_distance_term_accepts_correct_answers(fn):
    result = checks.check_distance_term(fn)
    assert result, result.message
    assert repr(result) == "✓ distance_term: passed all 5 cases"  # as chapter 4 prints it


@pytest.mark.parametrize("cdist", [
    lambda q, k: torch.cdist(q, k),
    lambda q, k: torch.cdist(q[None], k[None])[0],
    lambda q, k: torch.cdist(q, k, compute_mode="use_mm_for_euclid_dist"),
])
def test_distance_term_rejects_cdists_matrix_product(cdist):
    """cdist's default switches to |q|² + |k|² − 2 q·k above 25 points: 5 Å off on 64 points
    1e4 Å from the origin, the slip the check's hint describes."""
    result = checks.check_distance_term(lambda q, k: cdist(q, k) / math.sqrt(3))
    assert not result, result.message
    assert "likely cause: torch.cdist" in result.message, result.message


@pytest.mark.parametrize("wrong, cause", [
    (lambda q, k: cdist_term(q, k) ** 2 * math.sqrt(3), "squared distance"),
    (lambda q, k: cdist_term(q, k) * math.sqrt(3), "1/√3 scale is missing"),
    (lambda q, k: cdist_term(q, k) * math.sqrt(3) / 3, "not 1/3"),
    (lambda q, k: (q @ k.T) / math.sqrt(3), None),  # a dot product, not a distance
    (lambda q, k: -cdist_term(q, k), None),
])
def test_distance_term_rejects_wrong_answers(wrong, cause):
    result = checks.check_distance_term(wrong)
    assert not result
    assert result.message.startswith("✗ distance_term")
    if cause:
        assert cause in result.message


def test_hints_do_not_leak_the_reference_values():
    result = checks.check_layer_update(lambda *a: torch.zeros(8, 5))
    assert not result
    assert "tensor(" not in result.message


def test_not_implemented_is_reported_as_such():
    for check in (checks.check_distance_term, checks.check_layer_update):
        result = check(_not_implemented)
        assert not result and "not implemented" in result.message


def test_distance_term_rejects_the_cancelling_expansion():
    """|q|² + |k|² − 2q·k is fine near the origin and wrong for nearby points far from it."""
    def expanded(q, k):
        sq = (q * q).sum(-1)[:, None] + (k * k).sum(-1)[None, :] - 2 * q @ k.T
        return sq.clamp_min(0).sqrt() / math.sqrt(3)

    result = checks.check_distance_term(expanded)
    assert not result.passed
    assert "likely cause: the expansion" in result.message
    assert "subtract the points first" in result.message


@pytest.mark.parametrize("label", ["queries on top of the keys", "nearby points 1e4 Å from the origin"])
@pytest.mark.parametrize("slip", [
    lambda q, k: torch.cdist(q, k),
    lambda q, k: ((q * q).sum(-1)[:, None] + (k * k).sum(-1)[None, :] - 2 * q @ k.T).clamp_min(0).sqrt(),
])
def test_each_exactness_case_alone_catches_the_expansion(label, slip):
    """Either case fails cdist and the expansion by itself, so neither rests on the other."""
    case = next(c for c in _distance_cases() if c.label == label)
    got = slip(*case.args) / math.sqrt(3)
    assert not torch.allclose(got, case.expected, atol=case.atol, rtol=case.rtol)
    assert torch.allclose(chapter_term(*case.args), case.expected, atol=case.atol, rtol=case.rtol)


# ------------------------------------------------------------ the update of the whole layer

def einsum_update(qr, kr, qd, kd, v, R, t, wr, wd, out_proj):
    """Lines 3-14 written out by hand, one einsum per line."""
    turn = lambda rot, x: torch.einsum("lab,lhb->lha", rot, x)  # noqa: E731
    qr, kr, vg = turn(R, qr), turn(R, kr), turn(R, v)
    qd, kd = turn(R, qd) + t[:, None], turn(R, kd) + t[:, None]
    dot = torch.einsum("ihc,jhc->hij", qr, kr)
    dist = (qd[:, None] - kd[None]).pow(2).sum(-1).sqrt().permute(2, 0, 1)
    p = torch.softmax((wr[:, None, None] * dot - wd[:, None, None] * dist) / math.sqrt(3), dim=-1)
    o = turn(R.transpose(-1, -2), torch.einsum("hij,jhc->ihc", p, vg))
    return out_proj(o.reshape(o.shape[0], -1))


def pieces_update(qr, kr, qd, kd, v, R, t, wr, wd, out_proj):
    """The chapter's solution: the library's pieces, batch of one."""
    R, t = R[None, :, None], t[None, :, None]
    g_rot = [geoattn.apply_rotation(R, a[None]) for a in (qr, kr, v)]
    g_dist = [geoattn.apply_frame(R, t, a[None]) for a in (qd, kd)]
    o = geoattn.geometric_attention(g_rot[0], g_rot[1], *g_dist, g_rot[2], wr, wd)
    return out_proj(geoattn.apply_rotation(R.transpose(-1, -2), o)[0].flatten(-2))


@pytest.mark.parametrize("fn", [einsum_update, pieces_update])
def test_layer_update_accepts_correct_answers(fn):
    result = checks.check_layer_update(fn)
    assert result, result.message
    assert repr(result) == "✓ layer_update: passed all 5 cases"


@pytest.mark.parametrize("case", range(5))
def test_the_update_reference_is_the_layers_forward(case):
    """With an identity projection, GeometricSelfAttention(x) − x is exactly the update."""
    qr, kr, qd, kd, v, R, t, wr, wd, out_proj = _update_cases()[case].args
    L, H, _ = qr.shape
    layer = geoattn.GeometricSelfAttention(15 * H, H, bias=True, impl="naive").to(qr.dtype)
    x = torch.cat([a.flatten(-2) for a in (qr, kr, qd, kd, v)], dim=-1)[None]  # the layer's row order
    with torch.no_grad():
        layer.proj.weight.copy_(torch.eye(15 * H, dtype=qr.dtype))
        layer.proj.bias.zero_()
        layer.out_proj.weight.zero_()
        layer.out_proj.weight[:out_proj.out_features].copy_(out_proj.weight)
        layer.out_proj.bias.zero_()
        layer.out_proj.bias[:out_proj.out_features].copy_(out_proj.bias)
        layer.set_head_weights(wr, wd)
        update = (layer(x, R[None], t[None]) - x)[0, :, :out_proj.out_features]
    expected = _layer_update_reference(qr, kr, qd, kd, v, R, t, wr, wd, out_proj)
    torch.testing.assert_close(update, expected, atol=1e-5, rtol=1e-5)


def _slip(kind):
    def update(qr, kr, qd, kd, v, R, t, wr, wd, out_proj):
        turn = lambda rot, x: torch.einsum("lab,lhb->lha", rot, x)  # noqa: E731
        fwd = R.transpose(-1, -2) if kind == "Rt" else R
        q_r, k_r, vg = turn(fwd, qr), turn(fwd, kr), turn(fwd, v)
        q_d, k_d = turn(fwd, qd) + t[:, None], turn(fwd, kd) + t[:, None]
        if kind == "translate":
            vg = vg + t[:, None]
        if kind == "typo":
            q_d, k_d = q_r, k_r
        scale = 1.0 if kind == "sqrt3" else math.sqrt(3)
        dot = torch.einsum("ihc,jhc->hij", q_r, k_r)
        dist = torch.cdist(q_d.transpose(0, 1), k_d.transpose(0, 1))  # (H, L, L)
        p = torch.softmax((wr[:, None, None] * dot - wd[:, None, None] * dist) / scale, dim=-1)
        o = torch.einsum("hij,jhc->ihc", p, vg)
        if kind != "no back":
            o = turn(fwd.transpose(-1, -2), o)
        return out_proj(o.reshape(o.shape[0], -1))

    return update


@pytest.mark.parametrize("kind, cause", [
    ("translate", "values were translated"),
    ("typo", "as line 8 is printed"),
    ("no back", "left in the global frame"),
    ("Rt", "applied as Rᵀ"),
    ("sqrt3", "1/√3"),
])
def test_layer_update_names_each_slip(kind, cause):
    result = checks.check_layer_update(_slip(kind))
    assert not result and result.message.startswith("✗ layer_update")
    assert "likely cause" in result.message and cause in result.message, result.message


@pytest.mark.parametrize("slip, hint", _UPDATE_SLIPS, ids=[s for s, _ in _UPDATE_SLIPS])
def test_every_listed_update_slip_fails_with_its_own_hint(slip, hint):
    """Each slip the check claims to name shows on its cases (not only the five above)."""
    result = checks.check_layer_update(_slipped_update(slip))
    assert not result
    assert f"likely cause: {hint}" in result.message, result.message


def test_layer_update_reports_a_wrong_shape_and_leaves_the_random_state_alone():
    state = torch.random.get_rng_state()
    result = checks.check_layer_update(lambda *a: torch.zeros(3))
    assert not result and "shape" in result.message
    assert torch.equal(state, torch.random.get_rng_state())


# ------------------------------------------------- chapter 4: the two kernels at step 0

def _kernels_answer(d):
    c_ipa = math.sqrt(1 / 3) * math.sqrt(2 / 36) / 2 * 4
    return torch.exp(-math.log(2) / math.sqrt(3) * d), torch.exp(-c_ipa * (d / 10) ** 2)


def test_kernel_weights_passes_a_correct_answer():
    assert checks.check_kernel_weights(_kernels_answer)


@pytest.mark.parametrize("slip, hint", [
    (lambda d: (_kernels_answer(d)[0], _kernels_answer(10 * d)[1]), "units of 10 Å"),
    (lambda d: (_kernels_answer(d * d)[0], _kernels_answer(d)[1]), "plain norm"),
    (lambda d: (_kernels_answer(math.sqrt(3) * d)[0], _kernels_answer(d)[1]), "divided by √3"),
    (lambda d: (_kernels_answer(d / math.log(2))[0], _kernels_answer(d)[1]), "ln 2"),
    (lambda d: (_kernels_answer(d)[0], _kernels_answer(d / 2)[1]), "N_qp = 4"),
    (lambda d: (_kernels_answer(d)[0], _kernels_answer(d * 3 ** 0.25)[1]), "w_L"),
])
def test_kernel_weights_names_each_known_slip(slip, hint):
    result = checks.check_kernel_weights(slip)
    assert not result
    assert hint in repr(result), repr(result)
