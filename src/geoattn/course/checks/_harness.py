"""The machinery every exercise check shares: run a student's function on cases, compare
with the library's answer, and report a clear pass or a hint, never the answer itself.

A check must survive whatever a student writes, so every call of the student's function:
- has a time limit (:data:`TIME_LIMIT` seconds), after which the check says "took too long";
- gets copies of the inputs, which are compared afterwards to report in-place changes;
- is made once per case: a failure is diagnosed from the results already collected.
Whatever comes back (a complex or meta tensor, the wrong dtype, an exception whose
``str()`` fails) ends as a ✗ with a reason, never as a crash of the check.

When the environment names a file in ``GEOATTN_CHECK_LOG``, each verdict is also appended
there as one JSON line. That log is a convenience for a student's own tools, never a grade:
the student's code can write to it too, so ``python -m geoattn.course.grade`` does not read
it; the grader runs every check itself, in its own process (see its docstring).
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Case", "CheckResult", "run_check", "seeded_randn", "TIME_LIMIT", "call_with_time_limit"]

#: Seconds one call of a student's function may take before the check gives up on it.
TIME_LIMIT = 10.0
LOG_ENV = "GEOATTN_CHECK_LOG"

PASSED, FAILED, NOT_ATTEMPTED, TIMED_OUT = "passed", "failed", "not attempted", "timed out"


def seeded_randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Gaussian inputs from a private generator, so a check sees the same cases every run."""
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@dataclass(frozen=True)
class Case:
    """One trial: call ``fn(*args)`` and compare with ``expected``; ``hint`` is shown on failure.

    ``nonfinite_hint``, if given, replaces ``hint`` when the result holds NaN or inf where
    the reference does not (an overflow), so a merely inaccurate answer is not blamed on one.
    """

    label: str
    args: tuple
    expected: Any
    hint: str = ""
    atol: float = 1e-6
    rtol: float = 1e-5
    nonfinite_hint: str = ""


@dataclass(frozen=True)
class CheckResult:
    """What a check returns: truthy when passed; its repr is the message a student reads.

    ``status`` is one of "passed", "failed", "not attempted", "timed out".
    """

    name: str
    passed: bool
    message: str
    status: str = ""

    def __post_init__(self):
        if not self.status:
            object.__setattr__(self, "status", PASSED if self.passed else FAILED)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    _repr_pretty_ = lambda self, p, cycle: p.text(self.message)  # noqa: E731  (IPython display)


# ---------------------------------------------------------------- describing what came back

def _safe_str(obj: Any) -> str:
    """str(obj), or a description when its __str__ itself fails (the student's class may)."""
    try:
        return str(obj)
    except Exception:  # a broken __str__ may raise anything
        return f"<{type(obj).__name__} whose str() fails>"


def _describe_error(err: BaseException) -> str:
    text = _safe_str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _nonfinite_where_finite(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """True if ``got`` has NaN where ``expected`` has none, or ±inf where expected is finite."""
    bad = torch.isnan(got) & ~torch.isnan(expected)
    bad |= torch.isinf(got) & torch.isfinite(expected)
    return bool(bad.any())


def _compare_tensor(got: torch.Tensor, expected: torch.Tensor, case: Case) -> str | None:
    if got.device != expected.device:
        return f"the result is on device {got.device}, expected {expected.device}"
    if got.shape != expected.shape:
        return f"shape is {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if got.is_complex() and not expected.is_complex():
        return f"the result is complex ({got.dtype}); expected real numbers of dtype {expected.dtype}"
    if expected.dtype == torch.bool:
        if got.dtype != torch.bool:
            return f"expected a bool tensor, got dtype {got.dtype}"
        wrong = int((got != expected).sum())
        return f"{wrong} of {expected.numel()} entries are wrong" if wrong else None
    if got.dtype != expected.dtype:
        return (f"the result has dtype {got.dtype}, expected {expected.dtype} (keep the dtype of the "
                "inputs)")
    if _nonfinite_where_finite(got, expected):
        return "the result contains NaN or inf"
    if not torch.allclose(got, expected, atol=case.atol, rtol=case.rtol, equal_nan=True):
        finite = torch.isfinite(got) & torch.isfinite(expected)
        if not torch.equal(torch.isfinite(got), torch.isfinite(expected)) or not bool(
                (got[~finite] == expected[~finite]).all()):
            return "the infinite entries differ from the reference"
        err = (got[finite] - expected[finite]).abs().max().item() if finite.any() else float("nan")
        return f"values differ from the reference (max abs error {err:.3g})"
    return None


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
        return _compare_tensor(got, expected, case)
    if got != expected:
        return "the value differs from the reference"
    return None


def _safe_compare(got: Any, expected: Any, case: Case) -> str | None:
    try:
        return _compare(got, expected, case)
    except Exception as err:  # e.g. a meta tensor, or a tensor subclass that refuses comparison
        return f"the result could not be compared with the reference ({_describe_error(err)})"


def _has_nonfinite(got: Any, expected: Any) -> bool:
    try:
        if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)):
            return any(_has_nonfinite(g, e) for g, e in zip(got, expected))
        return (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)
                and got.shape == expected.shape and got.device == expected.device
                and not got.is_complex() and got.dtype != torch.bool
                and _nonfinite_where_finite(got, expected.to(got.dtype)))
    except Exception:
        return False


# -------------------------------------------------------------- calling the student's code

class _TookTooLong(BaseException):
    """Raised inside the student's code by the alarm; a BaseException, so that the student's
    own ``except Exception`` cannot swallow it (and a student's TimeoutError stays theirs)."""


#: Seconds past the limit after which the watchdog interrupts a call whose alarm was switched off.
WATCHDOG_GRACE = 1.0


def _start_watchdog(thread_id: int, after: float) -> Callable[[], None]:
    """Raise _TookTooLong in thread ``thread_id`` after ``after`` s, every 0.2 s, until stopped.

    The returned function stops it and withdraws an exception not yet delivered; the lock
    keeps the watchdog from raising one between those two steps.
    """
    import ctypes

    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    lock, done = threading.Lock(), threading.Event()

    def watch():
        if done.wait(after):
            return
        while True:
            with lock:
                if done.is_set():
                    return
                set_async(ctypes.c_ulong(thread_id), ctypes.py_object(_TookTooLong))
            if done.wait(0.2):
                return

    threading.Thread(target=watch, daemon=True, name="geoattn-check-watchdog").start()

    def stop():
        with lock:
            done.set()
            set_async(ctypes.c_ulong(thread_id), None)  # NULL: withdraw a pending one

    return stop


def call_with_time_limit(fn: Callable, args: tuple, limit: float) -> tuple[str, Any]:
    """Call ``fn(*args)``: ("ok", result), ("raised", exception) or ("timeout", None).

    In the main thread of a POSIX process (a Jupyter kernel) an alarm interrupts the call;
    elsewhere the call runs in a daemon thread that is abandoned when the limit passes.
    The alarm is the student's to switch off (``signal.setitimer(ITIMER_REAL, 0)``), so a
    watchdog thread raises the same exception in the call :data:`WATCHDOG_GRACE` seconds
    later, and again until the call ends. A function that swallows ``BaseException`` in a
    loop still outlasts both: only the grader, which calls the function in another process,
    enforces the limit against such code.
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def alarm(signum, frame):
            raise _TookTooLong

        previous = signal.signal(signal.SIGALRM, alarm)
        stop_watchdog = _start_watchdog(threading.get_ident(), limit + WATCHDOG_GRACE)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            try:
                return "ok", fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                stop_watchdog()
        except _TookTooLong:
            return "timeout", None
        except Exception as err:  # the student's code may raise anything
            return "raised", err
        finally:
            signal.signal(signal.SIGALRM, previous)
    box: dict[str, Any] = {}

    def target():
        try:
            box["ok"] = fn(*args)
        except Exception as err:
            box["raised"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        return "timeout", None
    return ("ok", box["ok"]) if "ok" in box else ("raised", box.get("raised"))


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, tuple):
        return tuple(_clone(e) for e in x)
    if isinstance(x, list):
        return [_clone(e) for e in x]
    return x


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        try:
            return (a.shape == b.shape and a.dtype == b.dtype
                    and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all()))
        except Exception:
            return False
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return True


def _library_name(fn: Callable) -> str | None:
    """The dotted name of ``fn`` if it is (a wrapper of) the library's own code, else None."""
    target = fn
    for _ in range(8):
        if isinstance(target, functools.partial):
            target = target.func
        elif inspect.ismethod(target):
            target = target.__func__
        elif getattr(target, "__wrapped__", None) is not None:
            target = target.__wrapped__
        else:
            break
    module = getattr(target, "__module__", None) or ""
    if (module == "geoattn" or module.startswith("geoattn.")) and not module.startswith("geoattn.course"):
        return f"{module}.{getattr(target, '__qualname__', type(target).__name__)}"
    return None


# -------------------------------------------------------------------------- running checks

def run_check(name: str, fn: Callable, cases: Iterable[Case],
              wrong_variants: Iterable[tuple[Callable, str]] = (), *,
              time_limit: float | None = None) -> CheckResult:
    """Run ``fn`` on every case (each call once, with a time limit) and report the first failure.

    ``wrong_variants`` pairs functions that make a known slip (no scaling, the wrong axis,
    ...) with a hint naming it. When ``fn`` fails and behaves like one of them, the
    result adds that hint as the likely cause.
    """
    result = _run(name, fn, list(cases), list(wrong_variants), TIME_LIMIT if time_limit is None else time_limit)
    _log(result)
    return result


def _fail(name: str, message: str, status: str = FAILED) -> CheckResult:
    return CheckResult(name, False, f"✗ {name}{message}", status)


def _run(name: str, fn: Callable, cases: list[Case], wrong_variants: list, limit: float) -> CheckResult:
    if not callable(fn):
        return _fail(name, f": expected a function, got {type(fn).__name__}")
    library = _library_name(fn)
    if library is not None:
        return _fail(name, f": this is the library's own {library}; the exercise asks for your own "
                           "function, so the check does not count it")
    got_all: list[Any] = []
    first: tuple[Case, str] | None = None
    for case in cases:
        args = _clone(case.args)
        kind, got = call_with_time_limit(fn, args, limit)
        if kind == "timeout":
            return _fail(name, f" took too long on {case.label} (more than {limit:g} s): look for a loop "
                               "that never ends, or work that grows too fast", TIMED_OUT)
        if kind == "raised":
            if isinstance(got, NotImplementedError):
                return _fail(name, ": not implemented yet (replace the `raise NotImplementedError`)",
                             NOT_ATTEMPTED)
            msg = f" failed on {case.label}: raised {_describe_error(got)}"
            return _fail(name, msg + (f"\n  hint: {case.hint}" if case.hint else ""))
        if not _same(args, case.args):
            changed = [i for i, (a, b) in enumerate(zip(args, case.args)) if not _same(a, b)]
            return _fail(name, f" failed on {case.label}: it changed its input argument {changed[0] + 1} in "
                               "place; compute a new tensor instead (in-place operations such as x -= ... or "
                               "x[...] = ... change the caller's data)")
        got_all.append(got)
        if first is None:
            problem = _safe_compare(got, case.expected, case)
            if problem:
                hint = case.nonfinite_hint if case.nonfinite_hint and _has_nonfinite(got, case.expected) \
                    else case.hint
                first = (case, f" failed on {case.label}: {problem}" + (f"\n  hint: {hint}" if hint else ""))
    if first is None:
        return CheckResult(name, True, f"✓ {name}: passed all {len(cases)} cases", PASSED)
    result = _fail(name, first[1])
    return _name_the_slip(result, got_all, cases, wrong_variants)


def _finite(x: Any) -> bool:
    try:
        if isinstance(x, (tuple, list)):
            return all(_finite(e) for e in x)
        if not isinstance(x, torch.Tensor) or x.dtype == torch.bool:
            return True
        return not x.is_complex() and bool(torch.isfinite(x).all())
    except Exception:
        return False


def _agrees(a: Any, b: Any, case: Case) -> bool:
    return _safe_compare(a, b, case) is None


def _name_the_slip(result: CheckResult, got: list[Any], cases: list[Case],
                   wrong_variants: list[tuple[Callable, str]]) -> CheckResult:
    """Add the hint of the first wrong variant that the results agree with on every case where
    both give finite numbers (the reader may have a second slip, such as overflow, on the
    rest), provided the variant really is wrong on one of those cases."""
    for variant, hint in wrong_variants:
        try:
            bad = [variant(*_clone(case.args)) for case in cases]
        except Exception:
            continue
        both = [(g, b, c) for g, b, c in zip(got, bad, cases) if _finite(g) and _finite(b)]
        if (both and all(_agrees(g, b, c) for g, b, c in both)
                and any(not _agrees(b, c.expected, c) for _, b, c in both)):
            return CheckResult(result.name, False, f"{result.message}\n  likely cause: {hint}", result.status)
    return result


def scaled_tolerance(x: torch.Tensor, factor: float = 16.0) -> float:
    """A tolerance for results that, computed correctly in ``x``'s dtype, still carry
    round-off proportional to the size of the inputs (a logsumexp of logits of 1e4)."""
    return factor * torch.finfo(x.dtype).eps * max(1.0, float(x[torch.isfinite(x)].abs().max()))


# --------------------------------------------------------------------- the grader's record

def _calling_check() -> str | None:
    """The name of the public ``check_*`` function that called run_check, if any."""
    frame = sys._getframe(1)
    while frame is not None:
        code_name = frame.f_code.co_name
        if code_name.startswith("check_") and frame.f_globals.get("__name__", "").startswith("geoattn.course"):
            return code_name
        frame = frame.f_back
    return None


def _log(result: CheckResult) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    record = {"check": _calling_check() or result.name, "name": result.name, "status": result.status,
              "message": result.message}
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    except OSError:
        pass  # grading is the grader's business; the student still sees the verdict


__all__ += ["scaled_tolerance", "PASSED", "FAILED", "NOT_ATTEMPTED", "TIMED_OUT"]
