"""Validate and benchmark geoattn's Triton kernel on one CUDA GPU, in about 8 minutes.

    python benchmarks/gpu_check.py                     # writes benchmarks/results/<device>.json
    python benchmarks/gpu_check.py --out benchmarks/results/h100.json
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json   # no GPU: tiny, CPU

Three sections run in order, and the JSON records each:

1. ``tests``: the ``gpu``-marked tests and the Triton tests (tests/test_triton_*.py), run by
   pytest in a subprocess; pass/fail/skip counts and the names of failures.
2. ``correctness``: impl="triton" against impl="naive" in fp64 (the reference), with inputs
   in fp32, fp16 and bf16; the forward and all seven gradients; cases with a ragged L (not a
   multiple of 16), a key mask, fully masked rows, coincident points and coordinates 1e4 Å
   from the origin. fp16/bf16 follow FlashAttention's rule (Dao-AILab/flash-attention's
   tests): the kernel's largest error against the reference must be at most twice that of
   PyTorch's own naive path on the same low-precision inputs, plus twice the round-off of
   fp32 arithmetic at the reference's size. fp32 must stay within the test suite's GPU
   tolerance (atol 5e-5 scaled by the tensor's size, rtol 1e-4). Then the layer
   (geoattn.GeometricSelfAttention) is moved by one global rotation and translation: its
   output must not change, and moving one residue must change it.
3. ``bench`` (the ``rows``): median time (CUDA events) and peak allocated memory of naive,
   torch.compile(naive), chunked and triton for L = 512 ... 32768, H = 256 and 8, fwd and
   fwd+bwd, fp32 and bf16, and ESM3's structure-encoder shape (L = 16, H = 128, B = 4096).
   The first call of each configuration (compilation, autotuning) is timed apart, as
   ``first_call_s``. A failure is a row: ``"status": "oom"`` or ``"error"`` with its
   message. Configurations that cannot fit the time budget are rows with
   ``"status": "skipped"`` and the reason: after an out-of-memory at some L, every larger
   L of that series; a predicted time per call above ``--max-call-s``; or a predicted cost
   above what is left of ``--budget-s``.

``--dry-run`` runs the same code on the CPU at tiny sizes, with Triton's interpreter, CPU
timing (``time.perf_counter``) and no memory numbers, so that the script cannot rot
without a GPU (tests/test_gpu_check.py runs it). It refuses to write into
benchmarks/results/, which chapter 5 reads. Without CUDA and without ``--dry-run`` the
script stops with an error and writes nothing.

Exit status: 0 when every check passed, 1 when a test or a correctness check failed (the
JSON is written all the same), 2 for a usage error or a machine without CUDA.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# Triton reads TRITON_INTERPRET once, when it is first imported: set it before anything
# (torch.compile, geoattn's kernels) can import triton. Nothing above imports it.
if "--dry-run" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCHEMA = "geoattn-gpu-check/1"
GRAD_NAMES = ("q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight")
TENSOR_NAMES = ("out", *(f"grad_{n}" for n in GRAD_NAMES))
CHECK_DTYPES = ("float32", "float16", "bfloat16")
CASES = ("ragged", "key_mask", "fully_masked_rows", "coincident_points", "large_coordinates")
IMPLS = ("triton", "naive", "chunked", "compiled")  # the order they run in: the kernel first
PASSES = ("fwd", "fwd+bwd")
# fp32 tolerance: that of the test suite's GPU test (tests/test_triton_kernels.py)
FP32_ATOL, FP32_RTOL = 5e-5, 1e-4
LARGE_OFFSET = 1e4  # Å, for the large-coordinates case


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long each configuration is timed."""

    min_repeats: int  # timed calls at least
    max_repeats: int  # and at most
    min_time_s: float  # keep timing (up to max_repeats) until this much was timed
    max_call_s: float  # skip a configuration predicted to take longer per call


# Sizes per mode. "cuda" is the real run; "dry-run" the same code on the CPU, tiny.
MODES = {
    "cuda": {
        "check": {"B": 2, "H": 4, "L": 203, "L_ragged": 1000},
        "layer": {"B": 2, "L": 203, "d_model": 128, "n_heads": 8},
        "sweep": {"L": [512, 1024, 2048, 4096, 8192, 16384, 32768], "H": [256, 8], "B": 1},
        "encoder": None,  # bench_geometric.SHAPES["encoder"]: L = 16, H = 128, B = 4096
        "dtypes": ["float32", "bfloat16"],
        "timing": Timing(min_repeats=3, max_repeats=20, min_time_s=0.25, max_call_s=3.0),
        # Triton's autotuner runs each of its 6-7 configs several times on the first call at a
        # new L: the budget counts that call as this many ordinary calls.
        "autotune_calls": 50,
        "budget_s": 480.0,
        "tests_budget_s": 200.0,
        "pytest_filter": None,
        "compile_backend": "inductor",
    },
    "dry-run": {
        # B = H = 1 keeps the interpreter to one program per launch (fully_masked_rows takes B = 2),
        # and lets dynamo compile once per pass for the sweep and the encoder's stand-in.
        "check": {"B": 1, "H": 1, "L": 17, "L_ragged": 19},
        "layer": {"B": 1, "L": 6, "d_model": 12, "n_heads": 1},
        "sweep": {"L": [16, 32], "H": [1], "B": 1},
        "encoder": {"L": [8], "H": [1], "B": 1},
        # Each interpreted Triton call costs ~0.1-0.5 s of CPU and each dynamo compilation ~2 s:
        # one dtype (bf16, the one that is converted) keeps the whole dry run within ~30 s.
        "dtypes": ["bfloat16"],
        "timing": Timing(min_repeats=1, max_repeats=1, min_time_s=0.0, max_call_s=30.0),
        "autotune_calls": 0,  # the interpreter has one config and no autotuning
        # Safety nets only: a dry run takes ~30 s of CPU time, but a shared CPU can stretch it.
        "budget_s": 900.0,
        "tests_budget_s": 400.0,
        # One quick interpreted Triton test: the pytest path runs, the full suite does not.
        "pytest_filter": "L17-ragged-default-blocks",
        # Dynamo traces the function as on a GPU; Inductor's C++ build would take minutes on the CPU.
        "compile_backend": "eager",
    },
}


@functools.cache
def _bench():
    """benchmarks/bench_geometric.py, whose helpers (inputs, versions, device name, failure
    classification, the implementations) this script shares."""
    spec = importlib.util.spec_from_file_location("bench_geometric", Path(__file__).with_name("bench_geometric.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------
# Header: device, versions, git
# --------------------------------------------------------------------------------------


def _nvidia_smi(field: str) -> str | None:
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def device_info(device: str) -> dict:
    import torch

    info = {"name": _bench()._device_name(device)}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        max_clock = _nvidia_smi("clocks.max.sm")
        info.update(
            compute_capability=f"{props.major}.{props.minor}",
            total_memory_bytes=props.total_memory,
            multiprocessor_count=props.multi_processor_count,
            # the chapter's ceiling (16 MUFU ops per SM per clock) needs the SM clock
            max_sm_clock_mhz=float(max_clock) if max_clock and max_clock.replace(".", "").isdigit() else None,
            driver=_nvidia_smi("driver_version"),
        )
    return info


def versions() -> dict:
    import torch

    return {**_bench()._versions(), "cuda": torch.version.cuda}


def git_state() -> dict:
    """The commit measured, and whether tracked or new files differ from it (results excluded)."""
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise OSError(proc.stderr.strip())
        return proc.stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line for line in git("status", "--porcelain").splitlines()
                   if not line[3:].startswith("benchmarks/results/")]
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changed)}


# --------------------------------------------------------------------------------------
# 1. The test suites, in a subprocess
# --------------------------------------------------------------------------------------


def test_suites(filter_expr: str | None) -> list[dict]:
    """(name, pytest arguments) of the suites: every gpu-marked test, and the rest of the Triton
    tests (tests/test_triton_*.py without their gpu-marked ones, which the first suite runs)."""
    tests = REPO / "tests"
    gpu_files = sorted(str(p.relative_to(REPO)) for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text())
    triton_files = sorted(str(p.relative_to(REPO)) for p in tests.glob("test_triton_*.py"))
    narrow = ["-k", filter_expr] if filter_expr else []
    return [{"name": "gpu-marked", "args": [*gpu_files, "-m", "gpu"]},
            {"name": "triton", "args": [*triton_files, "-m", "not gpu", *narrow]}]


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


# The project's addopts only configure nbval, which these test files do not use; without it,
# pytest starts without importing nbformat (whose jsonschema formats take seconds to import).
PYTEST_OPTIONS = ("-q", "-p", "no:cacheprovider", "-p", "no:nbval", "-o", "addopts=")


def run_pytest(name: str, args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", *args, *PYTEST_OPTIONS]
    record = {"name": name, "command": " ".join(["python", "-m", "pytest", *args, *PYTEST_OPTIONS]),
              "returncode": None, "duration_s": None, "total": None, "passed": None, "failed": None,
              "errors": None, "skipped": None, "failures": [], "status": None, "output_tail": None}
    if timeout <= 0:
        return record | {"status": "skipped", "output_tail": "no time left in the tests' budget"}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([*cmd, f"--junitxml={xml}"], cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return record | {"status": "timeout", "duration_s": round(time.perf_counter() - t0, 1),
                             "output_tail": f"stopped after {timeout:.0f} s"}
        record.update(returncode=proc.returncode, duration_s=round(time.perf_counter() - t0, 1))
        if xml.is_file():
            record.update(junit_counts(xml))
    # pytest: 0 all passed, 1 some failed, 5 nothing collected; anything else went wrong
    record["status"] = {0: "passed", 1: "failed", 5: "no tests"}.get(proc.returncode, "error")
    if proc.returncode != 0:
        record["output_tail"] = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return record


# --------------------------------------------------------------------------------------
# 2. Correctness: triton against the fp64 naive reference
# --------------------------------------------------------------------------------------


def case_inputs(case: str, b: int, length: int, h: int, device: str):
    """fp64 inputs and key mask of one correctness case (seeded, so every run checks the same)."""
    import torch

    import geoattn

    seed = CASES.index(case)
    inputs = geoattn.random_geometric_inputs(b, length, h, seed=seed, dist_scale=5.0, dtype=torch.float64,
                                             device=device)
    gen = torch.Generator().manual_seed(100 + seed)
    random_mask = (torch.rand(b, length, generator=gen) < 0.7).to(device)
    key_mask = None
    if case == "key_mask":
        key_mask = random_mask
    elif case == "fully_masked_rows":  # the last batch has no key: all its query rows are empty
        key_mask = random_mask.clone()
        key_mask[-1] = False
    elif case == "coincident_points":  # every q_d[i] = k_d[i], and one key on another query
        inputs[3] = inputs[2].clone()
        inputs[3][:, min(4, length - 1)] = inputs[2][:, length // 2]
    elif case == "large_coordinates":  # a whole structure 1e4 Å from the origin
        offset = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64, device=device) * LARGE_OFFSET
        inputs[2], inputs[3] = inputs[2] + offset, inputs[3] + offset
        key_mask = random_mask
    return inputs, key_mask


def forward_and_grads(impl: str, inputs, key_mask, cotangent):
    """Output and the gradients of <out, cotangent> with respect to all seven inputs."""
    import torch

    import geoattn

    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = geoattn.geometric_attention(*leaves, key_mask, impl=impl)
    grads = torch.autograd.grad(out, leaves, cotangent)
    return [out.detach(), *grads]


def compare(got, baseline, ref, dtype: str) -> dict:
    """The kernel's error (``got``) and the naive path's (``baseline``) against ``ref`` (fp64).

    FlashAttention's rule: err ≤ 2·baseline_err + atol, with atol twice the round-off of
    fp32 arithmetic at the reference's size (``r + 0.3 − 0.3 − r``). fp32 has its own
    elementwise tolerance. Both ratios are recorded for every dtype; ``rule`` says which
    decides ``pass``.
    """
    import torch

    got, baseline, ref = got.double(), baseline.double(), ref.double()
    diff = (got - ref).abs()
    err = float(diff.max()) if diff.numel() else 0.0
    base_err = float((baseline - ref).abs().max()) if diff.numel() else 0.0
    ref32 = ref.float()
    atol = 2 * float((ref32 + 0.3 - 0.3 - ref32).abs().max()) if diff.numel() else 0.0
    bound = 2 * base_err + atol
    fa_ratio = err / bound if bound > 0 else (0.0 if err == 0 else None)
    scale = float(ref.abs().max()) if diff.numel() else 0.0
    tolerance = FP32_ATOL * max(scale, 1.0) + FP32_RTOL * ref.abs()
    tol_ratio = float((diff / tolerance).max()) if diff.numel() else 0.0
    finite = bool(torch.isfinite(got).all())
    rule = "tolerance" if dtype == "float32" else "flash_attention_2x"
    decisive = tol_ratio if rule == "tolerance" else fa_ratio
    return {"max_abs_err": err, "baseline_max_abs_err": base_err, "ref_max_abs": scale, "fa_atol": atol,
            "fa_bound": bound, "fa_ratio": fa_ratio, "tolerance_ratio": tol_ratio, "rule": rule, "finite": finite,
            "pass": finite and decisive is not None and decisive <= 1.0}


def check_case(case: str, dtype: str, sizes: dict, device: str) -> dict:
    import torch

    h, length = sizes["H"], sizes["L_ragged"] if case == "ragged" else sizes["L"]
    b = max(sizes["B"], 2) if case == "fully_masked_rows" else sizes["B"]  # an empty batch beside a full one
    record = {"case": case, "dtype": dtype, "B": b, "L": length, "H": h, "tensors": {}, "pass": False, "error": None}
    try:
        inputs64, key_mask = case_inputs(case, b, length, h, device)
        low = [t.to(getattr(torch, dtype)) for t in inputs64]
        gen = torch.Generator().manual_seed(7)
        cotangent = torch.randn(inputs64[4].shape, generator=gen, dtype=torch.float64).to(device=device,
                                                                                          dtype=low[4].dtype)
        # The reference sees exactly the low-precision inputs, upcast: only the arithmetic differs.
        ref = forward_and_grads("naive", [t.double() for t in low], key_mask, cotangent.double())
        baseline = forward_and_grads("naive", low, key_mask, cotangent)
        got = forward_and_grads("triton", low, key_mask, cotangent)
        for name, g, bl, r, inp in zip(TENSOR_NAMES, got, baseline, ref, [low[4], *low]):
            entry = compare(g, bl, r, dtype)
            entry["dtype_ok"] = g.dtype == inp.dtype
            entry["pass"] = entry["pass"] and entry["dtype_ok"]
            record["tensors"][name] = entry
        record["pass"] = all(e["pass"] for e in record["tensors"].values())
    except Exception as err:  # a crash is a failed check, recorded, not the end of the run
        record["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return record


def check_invariance(sizes: dict, device: str) -> dict:
    """The layer on impl="triton", fp32: one global rotation + translation must not change its
    output, and moving one residue must.

    Both are measured against the size of the layer's update u = out − x (the residual x
    would hide a broken update): the global motion may change the output by at most
    1e-3·max|u| plus the round-off of adding x (4 fp32 ulps of max|out|); moving one residue
    3.7 Å must change it by more than 1e-2·max|u|.
    """
    import torch

    import geoattn
    from geoattn.frames import random_rotation

    b, length = sizes["B"], sizes["L"]
    record = {"B": b, "L": length, "d_model": sizes["d_model"], "n_heads": sizes["n_heads"], "dtype": "float32",
              "max_update": None, "max_change": None, "tolerance": None, "max_change_one_residue_moved": None,
              "min_change_one_residue_moved": None, "pass": False, "error": None}
    try:
        torch.manual_seed(0)
        layer = geoattn.GeometricSelfAttention(sizes["d_model"], sizes["n_heads"], impl="triton").to(device)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(b, length, sizes["d_model"], generator=gen).to(device)
        rot = random_rotation(b, length, generator=gen).to(device)
        # a random walk with 3.8 Å steps, as consecutive Cα atoms: neighbours are close enough
        # to share attention, so moving one residue shows in the others' outputs
        trans = (torch.randn(b, length, 3, generator=gen) * 3.8 / 3**0.5).cumsum(1).to(device)
        mask = torch.ones(b, length, dtype=torch.bool, device=device)
        mask[-1, length - max(1, length // 4):] = False  # frameless residues at the end
        glob = random_rotation(generator=gen).to(device)
        shift = torch.tensor([30.0, -20.0, 10.0], device=device)
        moved = trans.clone()
        moved[0, length // 3] += torch.tensor([3.0, -2.0, 1.0], device=device)
        with torch.no_grad():
            out = layer(x, rot, trans, mask)
            out_global = layer(x, glob @ rot, trans @ glob.T + shift, mask)
            out_moved = layer(x, rot, moved, mask)
        update = float((out.double() - x.double()).abs().max())
        change = float((out_global - out).abs().max())
        tolerance = 1e-3 * update + 4 * torch.finfo(torch.float32).eps * float(out.abs().max())
        one = float((out_moved - out).abs().max())
        record.update(max_update=update, max_change=change, tolerance=tolerance, max_change_one_residue_moved=one,
                      min_change_one_residue_moved=1e-2 * update,
                      **{"pass": change <= tolerance and one > 1e-2 * update})
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return record


# --------------------------------------------------------------------------------------
# 3. Speed and memory
# --------------------------------------------------------------------------------------


def new_row(spec: dict) -> dict:
    return {**spec, "status": "ok", "message": None, "median_ms": None, "min_ms": None, "repeats": 0,
            "first_call_s": None, "peak_mem_bytes": None, "pairs_per_s": None, "autotuned": None}


def _triton_autotuned() -> dict | None:
    """The configs the autotuner chose for the last call (private names; None if they moved)."""
    try:
        from geoattn import triton_kernels as tk

        tuned = {"fwd": tk._fwd_tuned, "bwd_dkdv": tk._dkdv_tuned, "bwd_dq": tk._dq_tuned}
    except (ImportError, AttributeError):
        return None
    return {k: str(t.best_config) for k, t in tuned.items() if getattr(t, "best_config", None) is not None} or None


def _time_and_measure(fn, spec: dict, device: str, timing: Timing) -> dict:
    import torch

    bench = _bench()
    b, length, h = spec["B"], spec["L"], spec["H"]
    dtype, backward = getattr(torch, spec["dtype"]), spec["pass"] == "fwd+bwd"
    inputs = bench._make_inputs(b, length, h, device, dtype, backward)
    d_out = torch.ones_like(inputs[4])

    def step():
        if backward:
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(d_out)
        else:
            with torch.no_grad():
                fn(*inputs)

    fields = {}
    # The first call compiles and autotunes: timed apart, never part of the median.
    t0 = time.perf_counter()
    step()
    _sync(device)
    fields["first_call_s"] = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        fields["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - base
    times = []
    while len(times) < timing.min_repeats or (sum(times) < timing.min_time_s * 1e3 and len(times) < timing.max_repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    fields.update(median_ms=statistics.median(times), min_ms=min(times), repeats=len(times))
    fields["pairs_per_s"] = b * h * length**2 / (fields["median_ms"] / 1e3)
    if spec["impl"] == "triton":  # a forward-only row must not report a backward tuned earlier
        tuned = _triton_autotuned() or {}
        fields["autotuned"] = {k: v for k, v in tuned.items() if backward or k == "fwd"} or None
    return fields


def measure(fn, spec: dict, device: str, timing: Timing) -> dict:
    """One result row for ``fn`` (a geometric_attention callable) on ``spec``'s shape.

    Never raises for a failure of the run: an out-of-memory becomes ``status "oom"``, any
    other exception ``status "error"``, each with the exception's first line as ``message``.
    """
    import torch

    row = new_row(spec)
    try:
        row.update(_time_and_measure(fn, spec, device, timing))
    except Exception as err:
        row["status"] = "oom" if _bench()._status_of(err) == "oom" else "error"
        row["message"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    if row["status"] != "ok":  # the exception's frames held the inputs: free them now
        gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def plan(spec: dict, previous: list[dict], timing: Timing, seconds_left: float, autotune_calls: int = 0) -> str | None:
    """Why ``spec`` should be skipped, or None to run it.

    ``previous``: the rows already recorded for the same series (section, impl, dtype, pass,
    B, H), smallest L first. The time per call is predicted from the last successful row as
    time × (L / L_then)², which over-estimates while launches, not pairs, dominate.
    """
    if seconds_left <= 0:
        return "time budget exhausted"
    for row in previous:
        if row["status"] == "oom" and row["L"] < spec["L"]:
            return f"larger than L={row['L']}, which ran out of memory"
    done = [r for r in previous if r["status"] == "ok" and r["L"] < spec["L"]]
    if not done:
        return None
    last = done[-1]
    per_call = last["median_ms"] / 1e3 * (spec["L"] / last["L"]) ** 2
    if per_call > timing.max_call_s:
        return f"predicted {per_call:.1f} s per call (from L={last['L']}) > --max-call-s {timing.max_call_s:g}"
    calls = 2 + timing.min_repeats + (autotune_calls if spec["impl"] == "triton" else 0)
    if per_call * calls > seconds_left:
        return f"predicted {per_call * calls:.0f} s > {seconds_left:.0f} s left of --budget-s"
    return None


def attention_fns(impls, compile_backend: str) -> dict:
    """One callable per impl. "compiled" is torch.compile of the naive reference, built once with
    dynamic shapes, so that it compiles once per dtype and pass instead of once per shape."""
    import torch

    import geoattn

    fns = {}
    for impl in impls:
        if impl == "compiled":
            # dtype × grad mode × the encoder's shape must not reach dynamo's recompile limit
            # (beyond it, dynamo silently runs eager code and the row would time naive).
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, 64)
            fns[impl] = torch.compile(functools.partial(geoattn.geometric_attention, impl="naive"),
                                      backend=compile_backend, dynamic=True)
        else:
            fns[impl] = _bench()._attention_fn(impl, None)
    return fns


def bench_specs(mode: dict, impls, dtypes, passes) -> list[dict]:
    """Every configuration, in the order run: the encoder's shape (cheap) first, then the sweep
    by dtype, H (256 first: the shape the goals are set for, and where autotuning happens),
    pass, impl, and L ascending (so each L's prediction has the smaller one)."""
    encoder = mode["encoder"] or {k: [v] if k != "B" else v for k, v in _bench().SHAPES["encoder"].items()}
    encoder = {"L": list(encoder["L"]), "H": list(encoder["H"]), "B": encoder["B"]}
    specs = []
    for section, shape in (("encoder", encoder), ("sweep", mode["sweep"])):
        for dtype in dtypes:
            for h in shape["H"]:
                for pass_ in passes:
                    for impl in impls:
                        for length in shape["L"]:
                            specs.append({"section": section, "impl": impl, "dtype": dtype, "pass": pass_,
                                          "B": shape["B"], "L": length, "H": h})
    return specs


def run_benchmark(specs, fns, device: str, timing: Timing, deadline: float, autotune_calls: int = 0,
                  log=print) -> list[dict]:
    rows = []
    for spec in specs:
        series = [r for r in rows if all(r[k] == spec[k] for k in ("section", "impl", "dtype", "pass", "B", "H"))]
        reason = plan(spec, series, timing, deadline - time.perf_counter(), autotune_calls)
        if reason:
            row = new_row(spec) | {"status": "skipped", "message": reason}
        else:
            row = measure(fns[spec["impl"]], spec, device, timing)
        rows.append(row)
        log(format_row(row))
    return rows


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def _fmt(x, spec):
    width = re.match(r"\d*", spec).group()
    return format("-", f">{width}") if x is None else format(x, spec)


ROW_HEADER = (f"{'section':<8}{'impl':<9}{'dtype':<9}{'pass':<8}{'B':>5}{'H':>5}{'L':>7}  {'status':<8}"
              f"{'median ms':>11}{'pairs/s':>10}{'peak MiB':>10}{'1st s':>7}")


def format_row(row: dict) -> str:
    mem = None if row["peak_mem_bytes"] is None else row["peak_mem_bytes"] / 2**20
    line = (f"{row['section']:<8}{row['impl']:<9}{row['dtype']:<9}{row['pass']:<8}{row['B']:>5}{row['H']:>5}"
            f"{row['L']:>7}  {row['status']:<8}{_fmt(row['median_ms'], '11.3f')}{_fmt(row['pairs_per_s'], '10.2e')}"
            f"{_fmt(mem, '10.1f')}{_fmt(row['first_call_s'], '7.1f')}")
    return line + (f"  {row['message'][:80]}" if row["message"] else "")


def summary(result: dict) -> str:
    lines = [f"device: {result['device']}  ({result['mode']})",
             f"commit: {result['git']['commit']}{' (dirty)' if result['git']['dirty'] else ''}", "", "tests:"]
    for t in result["tests"]:
        counts = ("" if t["total"] is None else
                  f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped")
        lines.append(f"  {t['name']:<11}{t['status']:<9}{counts}  ({_fmt(t['duration_s'], '.1f')} s)")
        lines += [f"    FAILED {name}" for name in t["failures"]]
    lines += ["", "correctness: triton vs naive fp64; ratio = error / allowed (pass if <= 1)",
              f"  {'case':<19}{'dtype':<10}{'rule':<20}{'worst tensor':<18}{'ratio':>8}  pass"]
    for c in result["correctness"]["cases"]:
        if c["error"]:
            lines.append(f"  {c['case']:<19}{c['dtype']:<10}ERROR {c['error'][:60]}")
            continue
        key = "tolerance_ratio" if c["dtype"] == "float32" else "fa_ratio"
        worst = max(c["tensors"], key=lambda n: float("inf") if c["tensors"][n][key] is None else c["tensors"][n][key])
        entry = c["tensors"][worst]
        lines.append(f"  {c['case']:<19}{c['dtype']:<10}{entry['rule']:<20}{worst:<18}"
                     f"{_fmt(entry[key], '8.3f')}  {c['pass']}")
    inv = result["correctness"]["invariance"]
    if inv is not None:
        lines.append(f"  SE(3) invariance of the layer: max change {_fmt(inv['max_change'], '.2e')} "
                     f"(allowed {_fmt(inv['tolerance'], '.1e')}); one residue moved: "
                     f"{_fmt(inv['max_change_one_residue_moved'], '.2e')} (needed > "
                     f"{_fmt(inv['min_change_one_residue_moved'], '.1e')}); pass {inv['pass']}"
                     + (f"  ERROR {inv['error']}" if inv["error"] else ""))
    lines += ["", "benchmark:", "  " + ROW_HEADER] + ["  " + format_row(r) for r in result["rows"]]
    lines += ["", f"total {result['durations_s']['total']:.0f} s; all checks passed: {result['passed']}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Details: benchmarks/README.md and this script's docstring.")
    p.add_argument("--out", help="JSON to write (default on a GPU: benchmarks/results/<device>.json; "
                                 "required with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: the same code on the CPU at tiny sizes, Triton's interpreter, no memory numbers")
    p.add_argument("--sections", nargs="+", choices=["tests", "correctness", "bench"],
                   default=["tests", "correctness", "bench"], help="run only these sections")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to time")
    p.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16", "float16"], help="dtypes to time")
    p.add_argument("--pass", dest="passes", nargs="+", choices=PASSES, default=list(PASSES))
    p.add_argument("--L", type=int, nargs="+", help="sweep lengths (default 512 ... 32768)")
    p.add_argument("--H", type=int, nargs="+", help="sweep head counts (default 256 8)")
    p.add_argument("--budget-s", type=float, help="seconds for the whole run (default 480; the benchmark skips "
                                                  "what would not fit)")
    p.add_argument("--max-call-s", type=float, help="skip configurations predicted to take longer per call "
                                                    "(default 3)")
    p.add_argument("--note", default="", help="free text stored in the JSON")
    args = p.parse_args(argv)
    if args.dry_run and not args.out:
        p.error("--dry-run needs --out (a dry run's numbers are not results)")
    if args.dry_run and args.out and Path(args.out).resolve().is_relative_to(RESULTS.resolve()):
        p.error(f"refusing to write a dry run into {RESULTS.relative_to(REPO)}/: chapter 5 reads every JSON there")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        if "triton" in sys.modules:
            sys.exit("gpu_check: --dry-run needs TRITON_INTERPRET=1 before triton is imported; run it as a script")
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
              "refusing to write GPU results. Run it on a machine with an NVIDIA GPU, or use "
              "--dry-run --out <file> to exercise the code on the CPU.", file=sys.stderr)
        return 2
    if not args.dry_run and os.environ.get("TRITON_INTERPRET"):
        print("gpu_check: TRITON_INTERPRET is set: unset it, or the Triton kernels would not be compiled for the GPU",
              file=sys.stderr)
        return 2
    mode_name = "dry-run" if args.dry_run else "cuda"
    mode = MODES[mode_name]
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        torch.set_num_threads(1)  # a shared CPU; and the numbers are not results
    timing = mode["timing"]
    if args.max_call_s is not None:
        timing = dataclasses.replace(timing, max_call_s=args.max_call_s)
    budget = args.budget_s if args.budget_s is not None else mode["budget_s"]
    start = time.perf_counter()
    deadline = start + budget
    info = device_info(device)
    out = Path(args.out) if args.out else RESULTS / (re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-")
                                                     + ".json")
    sweep = dict(mode["sweep"], **{k: v for k, v in (("L", args.L), ("H", args.H)) if v})
    mode = dict(mode, sweep=sweep)
    dtypes = args.dtype or mode["dtypes"]
    print(f"gpu_check ({mode_name}) on {info['name']}; budget {budget:.0f} s; writing {out}", flush=True)

    result = {
        "schema": SCHEMA,
        "mode": mode_name,
        "device": info["name"],
        "device_info": info,
        "versions": versions(),
        "git": git_state(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/gpu_check.py", *argv_used]),
        "note": args.note,
        "config": {
            "sections": args.sections, "budget_s": budget, "tests_budget_s": mode["tests_budget_s"],
            "timing": dataclasses.asdict(timing), "autotune_calls": mode["autotune_calls"], "statistic": "median",
            "timing_method": "CUDA events around each call" if device == "cuda" else "time.perf_counter",
            "memory_method": ("torch.cuda.max_memory_allocated during one call minus memory allocated before it "
                              "(the inputs), after the first call" if device == "cuda" else None),
            "first_call": "first_call_s: wall time of the first call of each configuration (compilation, "
                          "autotuning, warm-up), never part of the median",
            "pairs_per_s": "B*H*L^2 / median time",
            "compiled": {"what": "torch.compile(functools.partial(geoattn.geometric_attention, impl='naive'))",
                         "backend": mode["compile_backend"], "dynamic": True},
            "triton": "block_size=None: the autotuned launch (autotuning key: L and whether there is a mask)",
            "check": mode["check"], "layer": mode["layer"], "sweep": sweep, "dtypes": dtypes,
            "impls": args.impl, "passes": args.passes, "fp32_tolerance": {"atol": FP32_ATOL, "rtol": FP32_RTOL},
            "large_coordinate_offset_angstrom": LARGE_OFFSET,
            "fa_rule": "max|triton - ref| <= 2 * max|naive_lowp - ref| + 2 * max|r + 0.3 - 0.3 - r| (r = ref in fp32)",
        },
        "tests": [], "correctness": {"cases": [], "invariance": None, "pass": None}, "rows": [],
        "durations_s": {},
    }

    if "tests" in args.sections:
        t0 = time.perf_counter()
        print("pytest: the gpu-marked tests and the Triton tests ...", flush=True)
        result["tests"] = run_test_suites(test_suites(mode["pytest_filter"]), min(mode["tests_budget_s"], budget / 2))
        for record in result["tests"]:
            print(f"  {record['name']}: {record['status']}: {record['passed']} passed, {record['failed']} failed, "
                  f"{record['skipped']} skipped ({record['duration_s']} s)", flush=True)
        result["durations_s"]["tests"] = round(time.perf_counter() - t0, 1)

    if "correctness" in args.sections:
        t0 = time.perf_counter()
        cases = []
        for case in CASES:
            for dtype in CHECK_DTYPES:
                cases.append(check_case(case, dtype, mode["check"], device))
                print(f"correctness {case:<19}{dtype:<10}pass {cases[-1]['pass']}"
                      + (f"  {cases[-1]['error']}" if cases[-1]["error"] else ""), flush=True)
        invariance = check_invariance(mode["layer"], device)
        print(f"SE(3) invariance: pass {invariance['pass']}", flush=True)
        result["correctness"] = {"cases": cases, "invariance": invariance,
                                 "pass": all(c["pass"] for c in cases) and invariance["pass"]}
        result["durations_s"]["correctness"] = round(time.perf_counter() - t0, 1)

    if "bench" in args.sections:
        t0 = time.perf_counter()
        print("  " + ROW_HEADER, flush=True)
        fns = attention_fns(args.impl, mode["compile_backend"])
        specs = bench_specs(mode, args.impl, dtypes, args.passes)
        result["rows"] = run_benchmark(specs, fns, device, timing, deadline, mode["autotune_calls"],
                                       log=lambda line: print("  " + line, flush=True))
        result["durations_s"]["bench"] = round(time.perf_counter() - t0, 1)

    result["durations_s"]["total"] = round(time.perf_counter() - start, 1)
    result["passed"] = (all(t["status"] == "passed" for t in result["tests"])
                        and result["correctness"]["pass"] is not False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + summary(result), flush=True)
    print(f"wrote {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
