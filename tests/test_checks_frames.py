"""The chapter-3 exercise checks pass correct answers (including ones written differently
from the library's) and fail plausible wrong ones with a useful hint."""
import pytest
import torch

import geoattn
from geoattn.course.checks import CheckResult, check_frames_from_backbone, check_invert_frame


def _written_out_invert(r, t):
    # A correct answer that shares no code with the library: solve R p = x - t elementwise.
    r_inv = torch.linalg.inv(r.double()).to(r.dtype)
    return r_inv, -torch.einsum("...ij,...j->...i", r_inv, t)


def _esm_style_frames(n, ca, c, eps=1e-12):
    # A correct answer written like ESM's _graham_schmidt (eps inside the sqrt, single pass).
    x = ca - c
    x = x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps)
    y = n - ca
    y = y - x * (x * y).sum(-1, keepdim=True)
    y = y / torch.sqrt((y * y).sum(-1, keepdim=True) + eps)
    return torch.stack([x, y, torch.cross(x, y, dim=-1)], dim=-1), ca


def _unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def test_checks_are_exported():
    assert geoattn.course.checks.check_invert_frame is check_invert_frame
    assert geoattn.course.checks.check_frames_from_backbone is check_frames_from_backbone


@pytest.mark.parametrize("fn", [lambda r, t: geoattn.invert_frame(r, t), _written_out_invert])
def test_invert_frame_check_passes_correct_answers(fn):
    result = check_invert_frame(fn)
    assert isinstance(result, CheckResult) and result.passed, result.message
    assert repr(result).startswith("✓ invert_frame")


@pytest.mark.parametrize(
    "wrong, cause",
    [
        (lambda r, t: (r.transpose(-1, -2), -t), "must be rotated too"),
        (lambda r, t: (r.transpose(-1, -2), (r.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)), "sign"),
        (lambda r, t: (r.transpose(-1, -2), -(r @ t.unsqueeze(-1)).squeeze(-1)), "rotated by R"),
        (lambda r, t: (r, -(r.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)), "not inverted"),
    ],
)
def test_invert_frame_check_names_the_slip(wrong, cause):
    result = check_invert_frame(wrong)
    assert not result.passed
    assert result.message.startswith("✗ invert_frame failed on")
    assert cause in result.message


def test_invert_frame_check_reports_shape_and_unimplemented():
    def batch_blind(r, t):  # transposes the batch axis too
        return r.transpose(0, -1), -(r.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)

    result = check_invert_frame(batch_blind)
    assert not result.passed and "batch of 5" in result.message

    def todo(r, t):
        raise NotImplementedError

    assert "not implemented yet" in check_invert_frame(todo).message


@pytest.mark.parametrize("fn", [lambda n, ca, c: geoattn.frames_from_backbone(n, ca, c), _esm_style_frames])
def test_frames_check_passes_correct_answers(fn):
    result = check_frames_from_backbone(fn)
    assert result.passed, result.message
    assert repr(result).startswith("✓ frames_from_backbone")


def _frames(x_sign=1.0, orthogonalize=True, rows=False, left=False, origin="ca"):
    def fn(n, ca, c):
        e_x = _unit(x_sign * (ca - c))
        v = n - ca
        e_y = _unit(v - (v * e_x).sum(-1, keepdim=True) * e_x) if orthogonalize else _unit(v)
        e_z = torch.cross(e_y, e_x, dim=-1) if left else torch.cross(e_x, e_y, dim=-1)
        return torch.stack([e_x, e_y, e_z], dim=-2 if rows else -1), {"ca": ca, "n": n}[origin]
    return fn


@pytest.mark.parametrize(
    "kwargs, cause",
    [
        (dict(x_sign=-1.0), "x axis points the wrong way"),
        (dict(rows=True), "columns"),
        (dict(orthogonalize=False), "not orthogonal"),
        (dict(left=True), "left-handed"),
        (dict(origin="n"), "origin is at the wrong atom"),
    ],
)
def test_frames_check_names_the_slip(kwargs, cause):
    result = check_frames_from_backbone(_frames(**kwargs))
    assert not result.passed
    assert result.message.startswith("✗ frames_from_backbone failed on")
    assert cause in result.message


def test_frames_check_catches_a_dropped_batch_dimension():
    def flattening(n, ca, c):  # right numbers, but every input treated as (L, 3)
        return geoattn.frames_from_backbone(n.reshape(-1, 3), ca.reshape(-1, 3), c.reshape(-1, 3))

    result = check_frames_from_backbone(flattening)
    assert not result.passed and "shape is (1, 3, 3), expected (3, 3)" in result.message

    def flattening_batches(n, ca, c):  # keeps (L, 3) and (3,) but flattens (2, 5, 3)
        r, t = geoattn.frames_from_backbone(n.reshape(-1, 3), ca.reshape(-1, 3), c.reshape(-1, 3))
        return (r, t) if n.dim() > 2 else (r.reshape(*n.shape, 3), t.reshape(n.shape))

    result = check_frames_from_backbone(flattening_batches)
    assert not result.passed and "(2, 5) batch" in result.message
