"""The chapter 6 exercise check (the gradient of one pair's distance term) accepts correct
answers written independently of the library and names the usual slips."""
import math

import pytest
import torch

from geoattn.course import checks


def _not_implemented(*args):
    raise NotImplementedError


def closed_form(q, k, d_s, w_d):
    diff = q - k
    dist = torch.linalg.vector_norm(diff)
    if dist == 0:
        return torch.zeros_like(q)
    return -d_s * w_d / math.sqrt(3) * diff / dist


def plain_floats(q, k, d_s, w_d):  # deliberately plain: Python floats, one coordinate at a time
    diff = [a - b for a, b in zip(q.tolist(), k.tolist())]
    dist = math.sqrt(sum(x * x for x in diff))
    scale = 0.0 if dist == 0 else -d_s * w_d / (math.sqrt(3) * dist)
    return torch.tensor([scale * x for x in diff], dtype=q.dtype)


@pytest.mark.parametrize("fn", [closed_form, plain_floats])
def test_accepts_correct_answers(fn):
    result = checks.check_distance_grad(fn)
    assert result, result.message
    assert repr(result).startswith("✓ distance_grad")


def _unit(q, k):
    diff = q - k
    n = torch.linalg.vector_norm(diff)
    return diff / n if n > 0 else torch.zeros_like(diff)


@pytest.mark.parametrize("wrong, cause", [
    (lambda q, k, ds, wd: ds * wd / math.sqrt(3) * _unit(q, k), "the sign"),
    (lambda q, k, ds, wd: -ds * wd * _unit(q, k), "1/√3 of the score is missing"),
    (lambda q, k, ds, wd: -ds * wd / math.sqrt(3) * (q - k), "not divided by the distance"),
    (lambda q, k, ds, wd: -2 * ds * wd / math.sqrt(3) * (q - k), "squared distance"),
    (lambda q, k, ds, wd: -ds / math.sqrt(3) * _unit(q, k), "w_d is missing"),
    (lambda q, k, ds, wd: -ds * wd / math.sqrt(3) * (q - k) / torch.linalg.vector_norm(q - k), None),  # NaN at 0
    (lambda q, k, ds, wd: -ds * wd / math.sqrt(3) * _unit(k, q) * 0.5, None),
])
def test_rejects_slips_with_their_hint(wrong, cause):
    result = checks.check_distance_grad(wrong)
    assert not result
    assert "✗ distance_grad" in result.message
    if cause is None:
        assert "likely cause" not in result.message
    else:
        assert "likely cause" in result.message and cause in result.message, result.message


def test_nan_at_coincident_points_is_reported():
    fn = lambda q, k, ds, wd: -ds * wd / math.sqrt(3) * (q - k) / torch.linalg.vector_norm(q - k)  # noqa: E731
    result = checks.check_distance_grad(fn)
    assert "coincident points" in result.message and "NaN" in result.message


def test_not_implemented_is_reported():
    result = checks.check_distance_grad(_not_implemented)
    assert not result and "not implemented yet" in result.message


def test_reference_is_the_library_gradient():
    # The library's score differentiated by autograd equals the closed form.
    import geoattn

    q = torch.tensor([[[[0.3, -1.2, 2.0]]]], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[[[1.1, 0.4, -0.5]]]], dtype=torch.float64)
    z = torch.zeros(1, 1, 1, 3, dtype=torch.float64)
    w_r, w_d = torch.zeros(1, dtype=torch.float64), torch.tensor([0.9], dtype=torch.float64)
    s = geoattn.geometric_logits(z, z, q, k, w_r, w_d)
    (g,) = torch.autograd.grad(s.sum() * 1.7, q)
    assert torch.allclose(g[0, 0, 0], closed_form(q.detach()[0, 0, 0], k[0, 0, 0], 1.7, 0.9))
