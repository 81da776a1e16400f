"""The chapter 5 exercise checks pass correct answers and fail plausible wrong ones."""
import torch

from geoattn.course.checks import check_online_softmax_merge, check_online_softmax_step


def good_step(m, l, acc, s, v):
    m_new = torch.maximum(m, s)
    shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
    c, p = torch.exp(m - shift), torch.exp(s - shift)
    return m_new, c * l + p, c[:, None] * acc + p[:, None] * v


def plain_step(m, l, acc, s, v):
    """The textbook update without guarding the empty state: NaN for a masked key on an empty row."""
    m_new = torch.maximum(m, s)
    c, p = torch.exp(m - m_new), torch.exp(s - m_new)
    return m_new, c * l + p, c[:, None] * acc + p[:, None] * v


def test_step_accepts_correct_answers():
    result = check_online_softmax_step(good_step)
    assert result.passed, result.message
    assert repr(result).startswith("✓")


def test_step_without_the_minus_infinity_guard_fails_and_says_why():
    """A masked key on the empty state gives exp(-inf - (-inf)) = NaN: the chapter warns of it."""
    result = check_online_softmax_step(plain_step)
    assert not result.passed
    assert "masked key (score -inf) on the empty state" in result.message
    assert "NaN" in result.message and "shift by 0" in result.message


def test_step_rejects_a_forgotten_rescale():
    def no_rescale(m, l, acc, s, v):
        m_new = torch.maximum(m, s)
        p = torch.exp(s - m_new)
        return m_new, l + p, acc + p[:, None] * v

    result = check_online_softmax_step(no_rescale)
    assert not result.passed
    assert "hint" in result.message
    assert "likely cause" in result.message and "exp(m - m_new)" in result.message


def test_step_names_a_forgotten_rescale_of_acc():
    def half_rescaled(m, l, acc, s, v):
        m_new = torch.maximum(m, s)
        c, p = torch.exp(m - m_new), torch.exp(s - m_new)
        return m_new, c * l + p, acc + p[:, None] * v

    result = check_online_softmax_step(half_rescaled)
    assert not result.passed and "acc must be rescaled" in result.message


def test_step_rejects_the_wrong_sign_of_the_rescale():
    def flipped(m, l, acc, s, v):
        m_new = torch.maximum(m, s)
        c = torch.exp(torch.nan_to_num(m_new - m, posinf=0.0))
        p = torch.exp(s - m_new)
        return m_new, c * l + p, c[:, None] * acc + p[:, None] * v

    result = check_online_softmax_step(flipped)
    assert not result.passed and "inverted" in result.message


def test_step_rejects_an_unshifted_exponential():
    def unshifted(m, l, acc, s, v):  # keeps sums of exp(s) and never subtracts a maximum
        e = torch.exp(s)
        return torch.maximum(m, s), l + e, acc + e[:, None] * v

    result = check_online_softmax_step(unshifted)
    assert not result.passed


def test_step_rejects_a_stale_maximum_and_reports_not_implemented():
    def stale(m, l, acc, s, v):
        c, p = torch.ones_like(m), torch.exp(s - torch.where(torch.isfinite(m), m, s))
        return m, c * l + p, acc + p[:, None] * v

    assert not check_online_softmax_step(stale).passed

    def todo(m, l, acc, s, v):
        raise NotImplementedError

    assert "not implemented" in check_online_softmax_step(todo).message


def good_merge(m_a, l_a, acc_a, m_b, l_b, acc_b):
    m = torch.maximum(m_a, m_b)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    ca, cb = torch.exp(m_a - shift), torch.exp(m_b - shift)
    return m, ca * l_a + cb * l_b, ca[:, None] * acc_a + cb[:, None] * acc_b


def unguarded_merge(m_a, l_a, acc_a, m_b, l_b, acc_b):
    m = torch.maximum(m_a, m_b)
    ca, cb = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, ca * l_a + cb * l_b, ca[:, None] * acc_a + cb[:, None] * acc_b


def test_merge_accepts_a_correct_answer():
    result = check_online_softmax_merge(good_merge)
    assert result.passed, result.message


def test_merge_without_the_minus_infinity_guard_fails_on_two_empty_states():
    result = check_online_softmax_merge(unguarded_merge)
    assert not result.passed
    assert "two empty states" in result.message and "shift by 0" in result.message


def test_merge_rejects_plain_addition():
    def add(m_a, l_a, acc_a, m_b, l_b, acc_b):
        return torch.maximum(m_a, m_b), l_a + l_b, acc_a + acc_b

    result = check_online_softmax_merge(add)
    assert not result.passed and "hint" in result.message
    assert "likely cause" in result.message and "larger one" in result.message


def test_merge_rejects_unshifted_weights():
    def unshifted(m_a, l_a, acc_a, m_b, l_b, acc_b):  # rescales by exp(m) itself: overflows near 1000
        m = torch.maximum(m_a, m_b)
        ca, cb = torch.exp(m_a) / torch.exp(m), torch.exp(m_b) / torch.exp(m)
        return m, ca * l_a + cb * l_b, ca[:, None] * acc_a + cb[:, None] * acc_b

    result = check_online_softmax_merge(unshifted)
    assert not result.passed
    assert "1000" in result.message


def test_merge_rejects_an_average_of_outputs():
    def average(m_a, l_a, acc_a, m_b, l_b, acc_b):
        m = torch.maximum(m_a, m_b)
        return m, (l_a + l_b) / 2, (acc_a + acc_b) / 2

    assert not check_online_softmax_merge(average).passed
