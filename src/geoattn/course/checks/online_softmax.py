"""Exercise checks for chapter 5: one online-softmax step, and merging two partial states.

The reader's functions work on plain tensors: ``m``, ``l`` of shape (R,) for R query rows,
``acc`` (R, d_v); they are compared with :mod:`geoattn.online_softmax` on fixed-seed
states and on the edge cases that catch the usual slips (overflow, a forgotten rescale,
the empty state, a masked key).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...online_softmax import OnlineSoftmaxState, online_softmax_merge, online_softmax_step
from ._harness import Case, CheckResult, run_check
from ._harness import seeded_randn as _randn

__all__ = ["check_online_softmax_step", "check_online_softmax_merge"]

_INF = float("inf")


def _state(rows: int, d_v: int, *, seed: int, scale: float = 1.0, offset: float = 0.0,
           dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """A state that could come from a few keys: m = max score, ℓ ≥ 1, acc = ℓ-weighted values."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, generator=gen, dtype=dtype) * scale + offset
    l = 1.0 + 2.0 * torch.rand(rows, generator=gen, dtype=dtype)
    acc = l[:, None] * torch.randn(rows, d_v, generator=gen, dtype=dtype)
    return m, l, acc


def _empty(rows: int, d_v: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    return torch.full((rows,), -_INF, dtype=dtype), torch.zeros(rows, dtype=dtype), torch.zeros(rows, d_v, dtype=dtype)


def _step_case(label: str, hint: str, m, l, acc, s, v) -> Case:
    expected = tuple(online_softmax_step(OnlineSoftmaxState(m, l, acc), s, v))
    return Case(label, (m.clone(), l.clone(), acc.clone(), s.clone(), v.clone()), expected, hint)


def _step_cases() -> list[Case]:
    rescale = ("the old ℓ and acc were summed in the scale of the old maximum m; when the maximum "
               "changes, both must be rewritten in the new scale before the new key is added.")
    m, l, acc = _state(4, 3, seed=1)
    return [
        _step_case("the empty state (m = -inf, ℓ = 0, acc = 0)",
                   "after one key the state must be (m, ℓ, acc) = (s, 1, v). Make sure exp(m - m_new) "
                   "is 0 here, not NaN.", *_empty(3, 2), _randn(3, seed=2), _randn(2, seed=3)),
        _step_case("a key below the running maximum",
                   "the maximum does not change; ℓ gains exp(s - m) and acc gains exp(s - m)·v.",
                   m, l, acc, m - 1.5, _randn(3, seed=4)),
        _step_case("a key above the running maximum", rescale, m, l, acc, m + 2.0, _randn(3, seed=5)),
        _step_case("random scores around the maximum", rescale, m, l, acc, m + _randn(4, seed=6), _randn(3, seed=7)),
        _step_case("scores near 1000 (float32)",
                   "exp(1000) overflows to inf in float32: exponentiate only differences to the running maximum.",
                   *_state(3, 2, seed=8, offset=1000.0), torch.tensor([1001.0, 999.0, 1000.5]), _randn(2, seed=9)),
        _step_case("a masked key (score -inf)",
                   "a key with score -inf has weight exp(-inf) = 0: the state must come back unchanged.",
                   m, l, acc, torch.full((4,), -_INF), _randn(3, seed=10)),
        _step_case("a single row in float64", rescale,
                   *_state(1, 5, seed=11, dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64),
                   _randn(5, seed=12, dtype=torch.float64)),
        # Last, so that a reader with an earlier slip hears about that one first.
        _step_case("a masked key (score -inf) on the empty state",
                   "a row that has seen only masked keys keeps m = -inf, and exp(m - m_new) is then "
                   "exp(-inf - (-inf)) = NaN. Guard it: when m_new is -inf, shift by 0 instead.",
                   *_empty(3, 2), torch.full((3,), -_INF), _randn(2, seed=13)),
    ]


def _shift(m: Tensor) -> Tensor:
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _step_without_rescale(m, l, acc, s, v):
    m_new = torch.maximum(m, s)
    p = torch.exp(s - _shift(m_new))
    return m_new, l + p, acc + p[:, None] * v


def _step_rescaling_only_l(m, l, acc, s, v):
    m_new = torch.maximum(m, s)
    c, p = torch.exp(m - _shift(m_new)), torch.exp(s - _shift(m_new))
    return m_new, c * l + p, acc + p[:, None] * v


def _step_with_inverted_rescale(m, l, acc, s, v):
    m_new = torch.maximum(m, s)
    c = torch.exp(torch.nan_to_num(m_new - m, posinf=0.0))
    p = torch.exp(s - _shift(m_new))
    return m_new, c * l + p, c[:, None] * acc + p[:, None] * v


def _step_without_guard(m, l, acc, s, v):
    m_new = torch.maximum(m, s)
    c, p = torch.exp(m - m_new), torch.exp(s - m_new)
    return m_new, c * l + p, c[:, None] * acc + p[:, None] * v


_STEP_SLIPS = [
    (_step_without_guard, "exp(m - m_new) is NaN when both are -inf (a masked key on a row that has "
                          "seen no key yet): shift by 0 when m_new is -inf."),
    (_step_without_rescale, "ℓ and acc are not multiplied by exp(m - m_new) when the maximum grows."),
    (_step_rescaling_only_l, "ℓ is rescaled, but acc must be rescaled by the same factor."),
    (_step_with_inverted_rescale, "the rescale factor is inverted: it is exp(m_old - m_new), at most 1."),
]


def check_online_softmax_step(fn) -> CheckResult:
    """Check ``fn(m, l, acc, s, v) -> (m, l, acc)``: fold one key (score ``s`` (R,) per query
    row, value ``v`` (d_v,)) into the running state ``m`` (R,), ``l`` (R,), ``acc`` (R, d_v)."""
    return run_check("online_softmax_step", fn, _step_cases(), wrong_variants=_STEP_SLIPS)


def _merge_case(label: str, hint: str, a, b) -> Case:
    expected = tuple(online_softmax_merge(OnlineSoftmaxState(*a), OnlineSoftmaxState(*b)))
    return Case(label, tuple(t.clone() for t in (*a, *b)), expected, hint)


def _merge_cases() -> list[Case]:
    scale = ("each state is summed in the scale of its own maximum; bring both to the scale of the "
             "larger maximum before adding ℓ's and acc's.")
    a, b = _state(4, 3, seed=21), _state(4, 3, seed=22)
    return [
        _merge_case("two states with different maxima", scale, a, b),
        _merge_case("the same two states, swapped", "merging must not depend on the order of the two states.",
                    b, a),
        _merge_case("a state merged with the empty state",
                    "the empty state (m = -inf, ℓ = 0, acc = 0) holds no key: the merge must return the other "
                    "state unchanged, with no NaN.", a, _empty(4, 3)),
        _merge_case("maxima near 1000 (float32)",
                    "exp(1000) overflows in float32: use only exp(m_a - m) and exp(m_b - m), with m the larger "
                    "maximum.", _state(3, 2, seed=23, offset=1000.0), _state(3, 2, seed=24, offset=1003.0)),
        _merge_case("maxima far apart", scale, _state(2, 4, seed=25, scale=5.0),
                    _state(2, 4, seed=26, scale=5.0, offset=-8.0)),
        _merge_case("float64 states", scale, _state(3, 2, seed=27, dtype=torch.float64),
                    _state(3, 2, seed=28, dtype=torch.float64)),
        # Last, so that a reader with an earlier slip hears about that one first.
        _merge_case("two empty states",
                    "two empty states (m = -inf) merge into the empty state, but exp(m_a - m) is then "
                    "exp(-inf - (-inf)) = NaN. Guard it: when m is -inf, shift by 0 instead.",
                    _empty(3, 2), _empty(3, 2)),
    ]


def _merge_by_adding(m_a, l_a, acc_a, m_b, l_b, acc_b):
    return torch.maximum(m_a, m_b), l_a + l_b, acc_a + acc_b


def _merge_rescaling_only_l(m_a, l_a, acc_a, m_b, l_b, acc_b):
    m = torch.maximum(m_a, m_b)
    ca, cb = torch.exp(m_a - _shift(m)), torch.exp(m_b - _shift(m))
    return m, ca * l_a + cb * l_b, acc_a + acc_b


def _merge_without_guard(m_a, l_a, acc_a, m_b, l_b, acc_b):
    m = torch.maximum(m_a, m_b)
    ca, cb = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, ca * l_a + cb * l_b, ca[:, None] * acc_a + cb[:, None] * acc_b


_MERGE_SLIPS = [
    (_merge_without_guard, "exp(m_a - m) is NaN when both maxima are -inf (two empty states): shift "
                           "by 0 when m is -inf."),
    (_merge_by_adding, "the two states are added as they are, but each is in the scale of its own "
                       "maximum: rescale both to the larger one first."),
    (_merge_rescaling_only_l, "the ℓ's are rescaled, but the acc's need the same factors."),
]


def check_online_softmax_merge(fn) -> CheckResult:
    """Check ``fn(m_a, l_a, acc_a, m_b, l_b, acc_b) -> (m, l, acc)``: combine two states built
    from disjoint sets of keys into the state of all of them."""
    return run_check("online_softmax_merge", fn, _merge_cases(), wrong_variants=_MERGE_SLIPS)
