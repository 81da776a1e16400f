"""The chapter 1 and 2 exercise checks accept correct answers, written independently of the
library, and reject the plausible wrong ones with a useful hint."""
import math

import einops
import pytest
import torch

from geoattn.course import checks


def _not_implemented(*args):
    raise NotImplementedError


# ------------------------------------------------------------------ correct answers pass

def test_softmax_accepts_a_stable_softmax():
    assert checks.check_softmax(lambda x: torch.softmax(x, dim=-1))


def test_scaled_dot_product_accepts_torch_sdpa():
    result = checks.check_scaled_dot_product(
        lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert result, result.message


def test_split_and_merge_heads_accept_einops():
    assert checks.check_split_heads(lambda x, h: einops.rearrange(x, "b l (h d) -> b h l d", h=h))
    assert checks.check_merge_heads(lambda x: einops.rearrange(x, "b h l d -> b l (h d)"))


def test_causal_mask_accepts_a_comparison_of_indices():
    assert checks.check_causal_mask(lambda n: torch.arange(n)[None, :] <= torch.arange(n)[:, None])


def test_passing_message_reads_as_a_pass():
    result = checks.check_softmax(lambda x: torch.softmax(x, dim=-1))
    assert repr(result).startswith("✓ softmax")


# --------------------------------------------------------------- wrong answers fail, with hints

@pytest.mark.parametrize("check", [checks.check_softmax, checks.check_scaled_dot_product,
                                   checks.check_split_heads, checks.check_merge_heads,
                                   checks.check_causal_mask, checks.check_rope,
                                   checks.check_attention_cost])
def test_unimplemented_stub_says_so(check):
    result = check(_not_implemented)
    assert not result and "not implemented" in result.message


def test_softmax_rejects_the_overflowing_textbook_formula():
    result = checks.check_softmax(lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True))
    assert not result
    assert "1e4" in result.message and "NaN or inf" in result.message


def test_softmax_rejects_the_wrong_axis():
    result = checks.check_softmax(lambda x: torch.softmax(x, dim=0))
    assert not result and "wrong dimension" in result.message


@pytest.mark.parametrize("scale, cause", [(lambda d: 1.0, "not scaled"), (lambda d: d, "divided by d_k")])
def test_scaled_dot_product_names_a_wrong_scale(scale, cause):
    def attend(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / scale(q.shape[-1]), dim=-1) @ v
    result = checks.check_scaled_dot_product(attend)
    assert not result and cause in result.message


def test_scaled_dot_product_names_softmax_over_queries():
    def attend(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2) @ v
    result = checks.check_scaled_dot_product(attend)
    assert not result and "over the queries" in result.message


def test_split_heads_rejects_a_single_reshape():
    result = checks.check_split_heads(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1))
    assert not result and "likely cause" in result.message


def test_merge_heads_rejects_view_on_a_transposed_tensor():
    result = checks.check_merge_heads(lambda x: x.transpose(1, 2).view(x.shape[0], x.shape[2], -1))
    assert not result and ".reshape()" in result.message


def test_merge_heads_rejects_a_single_reshape():
    result = checks.check_merge_heads(lambda x: x.reshape(x.shape[0], x.shape[2], -1))
    assert not result and "mixes heads and positions" in result.message


@pytest.mark.parametrize("wrong, cause", [
    (lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "see the future"),
    (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), "diagonal"),
    (lambda n: ~torch.ones(n, n, dtype=torch.bool).tril(), "PyTorch's convention"),
    (lambda n: torch.ones(n, n).tril(), "dtype torch.float32"),
])
def test_causal_mask_names_the_mistake(wrong, cause):
    result = checks.check_causal_mask(wrong)
    assert not result and cause in result.message


# ------------------------------------------------ chapter 2: RoPE and the cost of attention

def _rope_complex(x, positions, sign=1.0, freq_power=2.0):
    """RoPE written with complex numbers: pair (a, b) is a + ib, multiplied by e^{i p theta}."""
    d = x.shape[-1]
    theta = 10000.0 ** (-freq_power * torch.arange(d // 2, dtype=torch.float64) / d)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    turn = torch.polar(torch.ones_like(theta), sign * positions.double()[..., None] * theta)
    return torch.view_as_real(z * turn).reshape(x.shape).to(x.dtype)


def _rope_half(x, p):
    """RoPE in the "rotate half" layout (coordinate i paired with i + d/2), as in ESM's code."""
    d = x.shape[-1]
    a, b = x.double()[..., : d // 2], x.double()[..., d // 2:]
    angle = p.double()[..., None] * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((a * cos - b * sin, a * sin + b * cos), -1).to(x.dtype)


def test_rope_accepts_a_complex_number_implementation():
    result = checks.check_rope(_rope_complex)
    assert result, result.message


@pytest.mark.parametrize("wrong, cause", [
    (lambda x, p: _rope_complex(x, p, sign=-1.0), "wrong way"),
    (lambda x, p: _rope_complex(x, p, freq_power=1.0), "note the 2"),
    (lambda x, p: _rope_complex(x, p, freq_power=0.0), "same frequency"),
    (lambda x, p: _rope_complex(x, torch.arange(x.shape[-2])), "positions passed in"),
    (lambda x, p: _rope_half(x, p), "rotate half"),
])
def test_rope_names_the_slip(wrong, cause):
    result = checks.check_rope(wrong)
    assert not result and cause in result.message, result.message


def test_rope_without_pairing_is_named():
    def no_pairs(x, p):
        d = x.shape[-1]
        angle = p.double()[..., None] * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = angle.repeat_interleave(2, -1)
        return (x.double() * angle.cos() + x.double() * angle.sin()).to(x.dtype)
    result = checks.check_rope(no_pairs)
    assert not result and "own 2-D plane" in result.message


def _cost(b, h, lq, lk, d, dtype):
    d_head = d // h
    per_head = 2 * lq * lk * d_head + 2 * lq * lk * d_head  # S = Q K^T, then P V
    return b * h * per_head, b * h * lq * lk * torch.empty((), dtype=dtype).element_size()


def test_attention_cost_accepts_a_direct_count():
    result = checks.check_attention_cost(_cost)
    assert result, result.message


@pytest.mark.parametrize("wrong, cause", [
    (lambda b, h, lq, lk, d, t: (4 * b * h * lq * lk * d, _cost(b, h, lq, lk, d, t)[1]), "do not grow with H"),
    (lambda b, h, lq, lk, d, t: (2 * b * lq * lk * d, _cost(b, h, lq, lk, d, t)[1]), "both products"),
    (lambda b, h, lq, lk, d, t: (_cost(b, h, lq, lk, d, t)[0], b * lq * lk * t.itemsize), "H-fold"),
    (lambda b, h, lq, lk, d, t: (_cost(b, h, lq, lk, d, t)[0], b * h * lq * lk), "number of entries"),
    (lambda b, h, lq, lk, d, t: (_cost(b, h, lq, lk, d, t)[0], 4 * b * h * lq * lk), "not always 4"),
    (lambda b, h, lq, lk, d, t: (_cost(b, h, lq, lk, d, t)[0], b * h * lq * lq * t.itemsize), "not L_q²"),
])
def test_attention_cost_names_the_slip(wrong, cause):
    result = checks.check_attention_cost(wrong)
    assert not result and cause in result.message, result.message


def test_hints_do_not_print_the_expected_values():
    # A failing softmax on the (4, 6) case must not reveal the reference weights.
    result = checks.check_softmax(lambda x: torch.softmax(x, dim=0))
    expected = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)), dim=-1)
    assert f"{expected[0, 0].item():.3f}" not in result.message


# ------------------------------------------- the harness survives whatever a student writes

import functools  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import geoattn  # noqa: E402
from geoattn.course.checks import _harness  # noqa: E402


@pytest.mark.parametrize("check, own", [
    (checks.check_softmax, geoattn.softmax),
    (checks.check_softmax, functools.partial(geoattn.softmax, dim=-1)),
    (checks.check_scaled_dot_product, geoattn.scaled_dot_product_attention),
    (checks.check_split_heads, geoattn.MultiHeadAttention(4, 2).split_heads),
    (checks.check_merge_heads, geoattn.MultiHeadAttention.merge_heads),
    (checks.check_causal_mask, geoattn.causal_mask),
    (checks.check_invert_frame, geoattn.invert_frame),
    (checks.check_online_softmax_merge, geoattn.online_softmax_merge),
    (checks.check_rope, geoattn.rope),
], ids=["softmax", "partial", "sdpa", "split-bound", "merge", "causal", "invert", "merge-states",
        "rope"])
def test_the_librarys_own_function_is_refused(check, own):
    result = check(own)
    assert not result and result.status == "failed"
    assert "the library's own geoattn." in result.message


def test_a_function_that_never_returns_took_too_long(monkeypatch):
    monkeypatch.setattr(_harness, "TIME_LIMIT", 0.5)

    stop = threading.Event()  # ends the abandoned thread below, so it burns no CPU after the test

    def forever(x):
        while not stop.is_set():
            time.sleep(0.01)

    start = time.monotonic()
    result = checks.check_softmax(forever)
    assert time.monotonic() - start < 5
    assert not result and result.status == "timed out" and "took too long" in result.message
    # Off the main thread (no alarm there) the limit holds too.
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("r", checks.check_softmax(forever)))
    worker.start()
    worker.join(10)
    stop.set()
    assert not worker.is_alive() and box["r"].status == "timed out"


def test_a_students_timeout_error_is_their_error_and_nothing_is_called_twice():
    calls = []

    def raises(x):
        calls.append(1)
        raise TimeoutError("my own timeout")

    result = checks.check_softmax(raises)
    assert result.status == "failed" and "raised TimeoutError: my own timeout" in result.message
    assert len(calls) == 1

    def wrong_axis(x):
        calls.append(1)
        return torch.softmax(x, dim=0)

    calls.clear()
    result = checks.check_softmax(wrong_axis)
    assert not result and "wrong dimension" in result.message
    assert len(calls) == len(checks.attention._softmax_cases()), "each case is called once"


def test_in_place_changes_of_the_inputs_are_reported():
    def shifts_in_place(x):
        x -= x.amax(dim=-1, keepdim=True)
        e = torch.exp(x)
        return e / e.sum(dim=-1, keepdim=True)

    result = checks.check_softmax(shifts_in_place)
    assert not result and "changed its input argument 1 in place" in result.message


@pytest.mark.parametrize("returns, says", [
    (lambda x: torch.softmax(x, -1).to(torch.complex64), "complex"),
    (lambda x: torch.softmax(x.double(), -1), "dtype torch.float64"),
    (lambda x: torch.empty_like(x, device="meta"), "device meta"),
    (lambda x: "weights", "expected a torch.Tensor, got str"),
])
def test_any_return_value_is_a_failure_with_a_reason_never_a_crash(returns, says):
    result = checks.check_softmax(returns)
    assert not result and says in result.message


def test_an_exception_whose_str_fails_is_reported():
    class NastyError(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    def raises(x):
        raise NastyError

    result = checks.check_softmax(raises)
    assert not result and "raised NastyError" in result.message and "str() fails" in result.message


def test_softmax_accepts_logsumexp_and_blames_overflow_only_for_overflow():
    assert checks.check_softmax(lambda x: torch.exp(x - torch.logsumexp(x, -1, keepdim=True)))
    # Finite but inaccurate on logits of 1e4: a failure, without the overflow hint.
    sloppy = checks.check_softmax(lambda x: torch.softmax(x, -1) + 1e-2 * (x.abs().amax() > 1e3))
    assert not sloppy and "1e4" in sloppy.message and "overflows" not in sloppy.message


def test_verdicts_are_logged_for_the_grader(tmp_path, monkeypatch):
    log = tmp_path / "checks.jsonl"
    monkeypatch.setenv(_harness.LOG_ENV, str(log))
    checks.check_softmax(lambda x: torch.softmax(x, -1))
    checks.check_causal_mask(_not_implemented)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["check"], r["status"]) for r in records] == [("check_softmax", "passed"),
                                                             ("check_causal_mask", "not attempted")]
