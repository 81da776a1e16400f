"""The chapter 7 exercise checks: a correct solution passes, each known slip fails with its hint."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.course.checks import check_augmented_qk, check_point_weight
from geoattn.course.checks.ipa import _variant


def _augmented(q, k, q_pts, k_pts, gamma):
    """A correct solution in another layout than the library's: keys carry the weights."""
    c, p = q.shape[-1], q_pts.shape[-2]
    g = math.sqrt(1 / 3) * gamma * math.sqrt(2 / (9 * p)) / 2
    a, b = q_pts.reshape(len(q_pts), -1), k_pts.reshape(len(k_pts), -1)
    ones = torch.ones(len(q), 1, dtype=q.dtype)
    q_aug = torch.cat([q, a, (a * a).sum(-1, keepdim=True), ones], -1)
    k_aug = torch.cat([math.sqrt(1 / 3) * k / math.sqrt(c), 2 * g * b, -g * ones, -g * (b * b).sum(-1, keepdim=True)],
                      -1)
    return q_aug, k_aug


def test_correct_augmented_vectors_pass_in_any_layout():
    assert check_augmented_qk(_augmented)
    assert check_augmented_qk(_variant())


@pytest.mark.parametrize("kwargs,hint", [
    ({"cross": 1.0}, "factor 2"),
    ({"w_l": 1.0}, "w_L"),
    ({"sqrt_c": False}, "√c"),
    ({"point_half": 1.0}, "1/2 is missing"),
    ({"key_norm": False}, "‖k_j‖²"),
])
def test_augmented_slips_fail_with_their_hint(kwargs, hint):
    result = check_augmented_qk(_variant(**kwargs))
    assert not result
    assert "likely cause" in result.message and hint in result.message


def test_augmented_rejects_a_precomputed_score_matrix_and_bad_returns():
    def cheat(q, k, q_pts, k_pts, gamma):  # right product, but not vectors of width c + 3P + 2
        right = _augmented(q, k, q_pts, k_pts, gamma)
        return right[0] @ right[1].T, torch.eye(len(q), dtype=q.dtype)

    assert not check_augmented_qk(cheat)
    result = check_augmented_qk(lambda *a: a[0])
    assert not result and "two tensors" in result.message
    result = check_augmented_qk(lambda *a: (_ for _ in ()).throw(NotImplementedError))
    assert not result and "not implemented" in result.message


def test_point_weight_passes_and_names_each_slip():
    assert check_point_weight(lambda n: math.sqrt(2) / (3 * math.sqrt(n)))
    slips = [
        (lambda n: math.sqrt(1 / (6 * n)), "cancels in the softmax"),
        (lambda n: math.sqrt(1 / (18 * n)), "(w_C / 2)²"),
        (lambda n: math.sqrt(4 / (15 * n)), "3 − 1 = 2"),
        (lambda n: math.sqrt(2 / 9), "number of points"),
    ]
    for fn, hint in slips:
        result = check_point_weight(fn)
        assert not result and hint in result.message, result.message
