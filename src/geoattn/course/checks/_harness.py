"""The machinery every exercise check shares: run a student's function on cases, compare
with the library's answer, and report a clear pass or a hint, never the answer itself."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Case", "CheckResult", "run_check", "seeded_randn"]


def seeded_randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Gaussian inputs from a private generator, so a check sees the same cases every run."""
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@dataclass(frozen=True)
class Case:
    """One trial: call ``fn(*args)`` and compare with ``expected``; ``hint`` is shown on failure."""

    label: str
    args: tuple
    expected: Any
    hint: str = ""
    atol: float = 1e-6
    rtol: float = 1e-5


@dataclass(frozen=True)
class CheckResult:
    """What a check returns: truthy when passed; its repr is the message a student reads."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    _repr_pretty_ = lambda self, p, cycle: p.text(self.message)  # noqa: E731  (IPython display)


def _compare(got: Any, expected: Any, case: Case) -> str | None:
    """None if ``got`` matches ``expected``; else what is wrong, without the expected values."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} results, got {type(got).__name__}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _compare(g, e, case)
            if problem:
                return f"result {i}: {problem}"
        return None
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"shape is {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if expected.dtype == torch.bool:
            if got.dtype != torch.bool:
                return f"expected a bool tensor, got dtype {got.dtype}"
            wrong = int((got != expected).sum())
            return f"{wrong} of {expected.numel()} entries are wrong" if wrong else None
        if not got.is_floating_point() and expected.is_floating_point():
            got = got.to(expected.dtype)
        if not torch.isfinite(got).all() and torch.isfinite(expected).all():
            return "the result contains NaN or inf"
        if not torch.allclose(got.to(expected.dtype), expected, atol=case.atol, rtol=case.rtol):
            err = (got.to(expected.dtype) - expected).abs().max().item()
            return f"values differ from the reference (max abs error {err:.3g})"
        return None
    if got != expected:
        return "the value differs from the reference"
    return None


def run_check(name: str, fn: Callable, cases: Iterable[Case],
              wrong_variants: Iterable[tuple[Callable, str]] = ()) -> CheckResult:
    """Run ``fn`` on every case and stop at the first failure.

    ``wrong_variants`` pairs functions that make a known slip (no scaling, the wrong axis,
    ...) with a hint naming it. When ``fn`` fails and behaves like one of them, the
    result adds that hint as the likely cause.
    """
    cases = list(cases)
    result = _run(name, fn, cases)
    if result.passed:
        return result
    return _name_the_slip(result, fn, cases, list(wrong_variants))


def _finite(x: Any) -> bool:
    if isinstance(x, (tuple, list)):
        return all(_finite(e) for e in x)
    return not isinstance(x, torch.Tensor) or x.dtype == torch.bool or bool(torch.isfinite(x).all())


def _agrees(a: Any, b: Any, case: Case) -> bool:
    return _compare(a, b, case) is None


def _name_the_slip(result: CheckResult, fn: Callable, cases: list[Case],
                   wrong_variants: list[tuple[Callable, str]]) -> CheckResult:
    """Add the hint of the first wrong variant that ``fn`` agrees with on every case where
    both give finite numbers (the reader may have a second slip, such as overflow, on the
    rest), provided the variant really is wrong on one of those cases."""
    try:
        got = [fn(*case.args) for case in cases]
    except Exception:  # run_check already said what was raised
        return result
    for variant, hint in wrong_variants:
        try:
            bad = [variant(*case.args) for case in cases]
        except Exception:
            continue
        both = [(g, b, c) for g, b, c in zip(got, bad, cases) if _finite(g) and _finite(b)]
        if (both and all(_agrees(g, b, c) for g, b, c in both)
                and any(not _agrees(b, c.expected, c) for _, b, c in both)):
            return CheckResult(result.name, False, f"{result.message}\n  likely cause: {hint}")
    return result


def _run(name: str, fn: Callable, cases: list[Case]) -> CheckResult:
    if not callable(fn):
        return CheckResult(name, False, f"✗ {name}: expected a function, got {type(fn).__name__}")
    n = 0
    for case in cases:
        n += 1
        try:
            got = fn(*case.args)
        except NotImplementedError:
            return CheckResult(name, False, f"✗ {name}: not implemented yet (replace the `raise NotImplementedError`)")
        except Exception as err:  # the student's code may raise anything
            msg = f"✗ {name} failed on {case.label}: raised {type(err).__name__}: {err}"
            return CheckResult(name, False, msg + (f"\n  hint: {case.hint}" if case.hint else ""))
        problem = _compare(got, case.expected, case)
        if problem:
            msg = f"✗ {name} failed on {case.label}: {problem}"
            return CheckResult(name, False, msg + (f"\n  hint: {case.hint}" if case.hint else ""))
    return CheckResult(name, True, f"✓ {name}: passed all {n} cases")
