"""The online softmax gives exactly the softmax-weighted sum, in any order and any blocking."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.online_softmax import (
    OnlineSoftmaxState,
    online_softmax_init,
    online_softmax_merge,
    online_softmax_result,
    online_softmax_step,
    online_softmax_trace,
    online_softmax_update,
)


def reference(scores, values, mask=None):
    alpha = geoattn.softmax(scores, mask=mask)
    return alpha @ values


def test_trace_on_the_worked_example_matches_chapter_1():
    steps = geoattn.attention_steps(*geoattn.seed_tensors())
    states = online_softmax_trace(steps.scaled, steps.V)
    assert len(states) == 4
    z, lse = online_softmax_result(states[-1])
    torch.testing.assert_close(z, steps.z, atol=1e-12, rtol=0)
    alpha = torch.exp(steps.scaled - lse[:, None])
    torch.testing.assert_close(alpha, steps.alpha, atol=1e-12, rtol=0)
    # after the first key the state is (s_0, 1, v_0)
    torch.testing.assert_close(states[1].m, steps.scaled[:, 0])
    torch.testing.assert_close(states[1].l, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(states[1].acc, steps.V[0].expand(3, 2))


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 4), length=st.integers(1, 9), d_v=st.integers(1, 3), block=st.integers(1, 9),
       seed=st.integers(0, 2**16), big=st.booleans(), masked=st.booleans())
def test_blocks_steps_and_merges_agree_with_softmax(rows, length, d_v, block, seed, big, masked):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, rows, length, generator=gen, dtype=torch.float64) * (300.0 if big else 1.0)
    values = torch.randn(2, length, d_v, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, rows, length, generator=gen) < 0.6 if masked else None
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    ref = reference(scores, values, mask)
    # one block at a time
    state = online_softmax_init((2, rows), d_v, dtype=torch.float64)
    for j0 in range(0, length, block):
        state = online_softmax_update(state, s[..., j0:j0 + block], values[:, j0:j0 + block])
    z, _ = online_softmax_result(state)
    torch.testing.assert_close(z, ref, atol=1e-12, rtol=1e-10)
    # one key at a time
    z_steps, _ = online_softmax_result(online_softmax_trace(s, values)[-1])
    torch.testing.assert_close(z_steps, ref, atol=1e-12, rtol=1e-10)
    # split the keys in two, then merge
    cut = length // 2
    empty = online_softmax_init((2, rows), d_v, dtype=torch.float64)
    a = online_softmax_update(empty, s[..., :cut], values[:, :cut])
    b = online_softmax_update(empty, s[..., cut:], values[:, cut:])
    z_merged, _ = online_softmax_result(online_softmax_merge(a, b))
    torch.testing.assert_close(z_merged, ref, atol=1e-12, rtol=1e-10)


def test_a_row_with_no_key_gives_zeros_and_infinite_lse():
    state = online_softmax_init(2, 3)
    state = online_softmax_step(state, torch.tensor([float("-inf"), 0.5]), torch.ones(3))
    z, lse = online_softmax_result(state)
    assert torch.equal(z[0], torch.zeros(3)) and lse[0] == float("inf")
    assert torch.isfinite(z).all()
    merged = online_softmax_merge(state, online_softmax_init(2, 3))
    assert all(torch.equal(x, y) for x, y in zip(merged, state))


def test_the_state_is_a_named_tuple():
    state = online_softmax_init((2, 3), 4)
    assert isinstance(state, OnlineSoftmaxState)
    assert state.m.shape == (2, 3) and state.acc.shape == (2, 3, 4)


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_bad_d_v_raises(bad):
    with pytest.raises(ValueError, match="d_v"):
        online_softmax_init(3, bad)


def test_mismatched_scores_and_values_raise():
    state = online_softmax_init(3, 2)
    with pytest.raises(ValueError, match="scores"):
        online_softmax_update(state, torch.zeros(4, 5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="values"):
        online_softmax_update(state, torch.zeros(3, 5), torch.zeros(4, 2))
