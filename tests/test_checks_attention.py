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
                                   checks.check_causal_mask])
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


def test_hints_do_not_print_the_expected_values():
    # A failing softmax on the (4, 6) case must not reveal the reference weights.
    result = checks.check_softmax(lambda x: torch.softmax(x, dim=0))
    expected = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)), dim=-1)
    assert f"{expected[0, 0].item():.3f}" not in result.message
