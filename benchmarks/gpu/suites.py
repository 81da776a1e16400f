"""The pytest suites, each in a subprocess of its own process group.

A suite that runs past its time is killed with its whole group: Triton's and Inductor's
compile workers are its children, and a plain kill of pytest left them compiling through
the benchmark for up to 900 s.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .common import REPO

# The project's addopts only configure nbval, which these test files do not use; without it,
# pytest starts without importing nbformat (whose jsonschema formats take seconds to import).
PYTEST_OPTIONS = ("-q", "-p", "no:cacheprovider", "-p", "no:nbval", "-o", "addopts=")


def run_in_group(cmd: list[str], timeout: float, cwd=REPO, env=None) -> tuple[int | None, str, float]:
    """(returncode or None on timeout, stdout + stderr, seconds) of ``cmd`` in a new session.

    On timeout the whole process group gets SIGKILL, so no child outlives it.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 0.1))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        code = None
    # children that outlived a leader which exited by itself
    kill_group(proc)
    return code, out or "", time.perf_counter() - t0


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_suites(filter_expr: str | None) -> list[dict]:
    """(name, pytest arguments) of the suites: every gpu-marked test, and the rest of the Triton
    tests (tests/test_triton_*.py without their gpu-marked ones, which the first suite runs).
    Offline-compile tests (marker ``offline``) need no GPU: they run in CI, not here."""
    tests = REPO / "tests"
    gpu_files = sorted(str(p.relative_to(REPO)) for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text())
    triton_files = sorted(str(p.relative_to(REPO)) for p in tests.glob("test_triton_*.py"))
    narrow = ["-k", filter_expr] if filter_expr else []
    return [{"name": "gpu-marked", "args": [*gpu_files, "-m", "gpu and not offline"]},
            {"name": "triton", "args": [*triton_files, "-m", "not gpu and not offline", *narrow]}]


def run_test_suites(suites: list[dict], seconds: float) -> list[dict]:
    """Run the suites side by side (each is mostly imports, compilation and small kernels)."""
    from concurrent.futures import ThreadPoolExecutor

    deadline = time.perf_counter() + seconds
    with ThreadPoolExecutor(len(suites)) as pool:
        futures = [pool.submit(lambda s: run_pytest(s["name"], s["args"], deadline - time.perf_counter()), suite)
                   for suite in suites]
        return [f.result() for f in futures]


def junit_counts(path: Path) -> dict:
    """Counts and failing test names from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    names = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
             if case.find("failure") is not None or case.find("error") is not None]
    return {"total": total, "passed": total - failed - errors - skipped, "failed": failed, "errors": errors,
            "skipped": skipped, "failures": names[:20]}


def run_pytest(name: str, args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", *args, *PYTEST_OPTIONS]
    record = {"name": name, "command": " ".join(["python", "-m", "pytest", *args, *PYTEST_OPTIONS]),
              "returncode": None, "duration_s": None, "total": None, "passed": None, "failed": None,
              "errors": None, "skipped": None, "failures": [], "status": None, "output_tail": None}
    if timeout <= 0:
        return record | {"status": "skipped", "output_tail": "no time left in the tests' budget"}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        code, output, seconds = run_in_group([*cmd, f"--junitxml={xml}"], timeout)
        record.update(returncode=code, duration_s=round(seconds, 1))
        if code is None:
            tail = "\n".join(output.strip().splitlines()[-10:])
            return record | {"status": "timeout", "output_tail": f"stopped after {timeout:.0f} s (process group "
                                                                 f"killed)\n{tail}"}
        if xml.is_file():
            record.update(junit_counts(xml))
    # pytest: 0 all passed, 1 some failed, 5 nothing collected; anything else went wrong
    record["status"] = {0: "passed", 1: "failed", 5: "no tests"}.get(code, "error")
    if code != 0:
        record["output_tail"] = "\n".join(output.strip().splitlines()[-15:])
    return record
