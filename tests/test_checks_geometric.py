"""The chapter 4 exercise checks accept correct answers, written independently of the
library, and reject the plausible wrong ones with a hint that names the slip."""
import math

import pytest
import torch

from geoattn.course import checks


def _not_implemented(*args):
    raise NotImplementedError


def cdist_term(q, k):
    return torch.cdist(q[None], k[None])[0] / math.sqrt(3)


def loop_term(q, k):  # deliberately plain: one pair at a time
    out = torch.empty(q.shape[0], k.shape[0], dtype=q.dtype)
    for i in range(q.shape[0]):
        for j in range(k.shape[0]):
            out[i, j] = math.dist(q[i].tolist(), k[j].tolist()) / math.sqrt(3)
    return out


def einsum_scores(qr, kr, qd, kd, wr, wd):
    rot = torch.einsum("ic,jc->ij", qr, kr)
    return (wr * rot - wd * cdist_term(qd, kd) * math.sqrt(3)) / math.sqrt(3)


@pytest.mark.parametrize("fn", [cdist_term, loop_term])
def test_distance_term_accepts_correct_answers(fn):
    result = checks.check_distance_term(fn)
    assert result, result.message
    assert repr(result).startswith("✓ distance_term")


def test_geometric_scores_accepts_a_correct_answer():
    result = checks.check_geometric_scores(einsum_scores)
    assert result, result.message


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


@pytest.mark.parametrize("wrong, cause", [
    (lambda qr, kr, qd, kd, wr, wd: einsum_scores(qr, kr, qr, kr, wr, wd), "as line 8 is printed"),
    (lambda qr, kr, qd, kd, wr, wd: einsum_scores(qr, kr, qd, kd, wr, -wd), "must be subtracted"),
    (lambda qr, kr, qd, kd, wr, wd: einsum_scores(qr, kr, qd, kd, wd, wr), "swapped"),
    (lambda qr, kr, qd, kd, wr, wd: einsum_scores(qr, kr, qd, kd, wr, wd) * math.sqrt(3), "scale is missing"),
    (lambda qr, kr, qd, kd, wr, wd: einsum_scores(qr, kr, qd, kd, wr, wd).T, None),  # keys and queries swapped
    (lambda qr, kr, qd, kd, wr, wd: torch.softmax(einsum_scores(qr, kr, qd, kd, wr, wd), -1), None),
])
def test_geometric_scores_rejects_wrong_answers(wrong, cause):
    result = checks.check_geometric_scores(wrong)
    assert not result
    if cause:
        assert "likely cause" in result.message and cause in result.message


def test_hints_do_not_leak_the_reference_values():
    result = checks.check_geometric_scores(lambda *a: torch.zeros(5, 5))
    assert not result
    assert "tensor(" not in result.message


def test_not_implemented_is_reported_as_such():
    for check in (checks.check_distance_term, checks.check_geometric_scores):
        result = check(_not_implemented)
        assert not result and "not implemented" in result.message


def test_distance_term_rejects_the_cancelling_expansion():
    """|q|² + |k|² − 2q·k is fine near the origin and wrong for nearby points far from it."""
    def expanded(q, k):
        sq = (q * q).sum(-1)[:, None] + (k * k).sum(-1)[None, :] - 2 * q @ k.T
        return sq.clamp_min(0).sqrt() / math.sqrt(3)

    result = checks.check_distance_term(expanded)
    assert not result.passed
    assert "nearby points 1e4 Å from the origin" in result.message
    assert "subtract the points first" in result.message
