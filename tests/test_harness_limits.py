"""The per-call time limit of every check holds even when the student's function switches
off the alarm that enforces it (``signal.setitimer(ITIMER_REAL, 0)``)."""
from __future__ import annotations

import signal
import time

import torch

from geoattn.course.checks import _harness
from geoattn.course.checks._harness import Case, call_with_time_limit, run_check


def _disarms_then_spins(x):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass


def test_a_function_that_switches_off_the_alarm_still_times_out():
    start = time.monotonic()
    kind, _ = call_with_time_limit(_disarms_then_spins, (1,), 0.3)
    took = time.monotonic() - start
    assert kind == "timeout"
    assert took < 0.3 + _harness.WATCHDOG_GRACE + 2.0


def test_the_check_reports_it_as_took_too_long():
    x = torch.zeros(3)
    result = run_check("spin", _disarms_then_spins, [Case("three zeros", (x,), x)], time_limit=0.3)
    assert result.status == "timed out" and "took too long" in result.message


def test_a_quick_call_is_never_interrupted_afterwards():
    # The watchdog is withdrawn when the call ends: later code runs past the grace period.
    for _ in range(20):
        assert call_with_time_limit(lambda: 1, (), 0.05) == ("ok", 1)
    time.sleep(0.05 + _harness.WATCHDOG_GRACE + 0.3)
    assert sum(range(10**5)) > 0
