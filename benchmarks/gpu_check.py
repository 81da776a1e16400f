"""Validate and benchmark geoattn's Triton kernel on one CUDA GPU, in at most 8 minutes.

    python benchmarks/gpu_check.py                     # writes benchmarks/results/<device>.json
    python benchmarks/gpu_check.py --plan              # the plan of a real run; runs nothing
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json   # no GPU: tiny, CPU

A lent GPU machine comes with about 15 minutes in all (its start, the transfers, every
run), so the work is ordered by value and each part has a slot of the budget
(``MODES["cuda"]["slots_s"]``; time a part leaves goes on to the next):

1. ``preflight``: the modules the run imports and their versions, biotite (which must not
   be needed), the GPU and its bf16 support, the C compiler and Python headers that
   Triton needs to build its launchers (benchmarks/gpu/preflight.py).
2. ``correctness``, in a worker process: impl="triton" against impl="naive" in fp64, with
   inputs in fp32, fp16 and bf16; the forward and all seven gradients; a ragged L, a key
   mask, fully masked rows, coincident points, coordinates 1e4 Å from the origin; then
   the layer's SE(3) invariance (benchmarks/gpu/correctness.py). A kernel that kills the
   worker costs the cases after it; they are recorded with the reason.
3. ``bench``, first tier: the triton and flex rows of every series (benchmarks/gpu/bench.py).
4. ``tests``: the gpu-marked tests and the Triton tests, without those that need no GPU
   (offline compilation), each suite in its own process group (benchmarks/gpu/suites.py).
5. ``bench``, the other tiers: naive and chunked, then torch.compile(naive).

The benchmark reserves each row's compile and tuning time before its first call
(Inductor compiles, Triton autotuning: ``Costs``) and skips, with the reason, what cannot
fit; after a sticky CUDA error (an illegal address) every later row is skipped with it.
The JSON is rewritten after every section and every row, so a crash leaves every earlier
row (``complete`` is false until the end).

``--dry-run`` runs the same code on the CPU at tiny sizes, with Triton's interpreter, CPU
timing (``time.perf_counter``), no memory numbers and torch.compile's ``eager`` backend,
so that the script cannot rot without a GPU (tests/test_gpu_check.py runs it). It refuses
to write into benchmarks/results/, which chapter 5 reads. Without CUDA and without
``--dry-run`` the script stops with an error and writes nothing.

Exit status: 0 when every check passed, 1 when a test or a correctness check failed or
the CUDA context was lost (the JSON is written all the same), 2 for a usage error or a
machine without CUDA.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# Triton reads TRITON_INTERPRET once, when it is first imported: set it before anything
# (torch.compile, geoattn's kernels) can import triton. Nothing above imports it.
if "--dry-run" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import correctness as _correctness
from gpu.bench import BenchRun, attention_fns, bench_specs, measure, new_row, plan, reserve_s  # noqa: F401
from gpu.common import (  # noqa: F401
    CASES,
    CHECK_DTYPES,
    FP32_ATOL,
    FP32_RTOL,
    GRAD_NAMES,
    IMPLS,
    LARGE_OFFSET,
    MODES,
    PASSES,
    REPO,
    RESULTS,
    SCHEMA,
    TENSOR_NAMES,
    Costs,
    Timing,
    bench_geometric,
    write_json,
)
from gpu.correctness import check_case, check_invariance, compare  # noqa: F401
from gpu.preflight import preflight
from gpu.report import ROW_HEADER, format_plan, format_row, make_plan, summary
from gpu.suites import junit_counts, run_in_group, run_pytest, run_test_suites, test_suites  # noqa: F401

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

    info = {"name": bench_geometric()._device_name(device)}
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

    return {**bench_geometric()._versions(), "cuda": torch.version.cuda}


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
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Details: benchmarks/README.md and this script's docstring.")
    p.add_argument("--out", help="JSON to write (default on a GPU: benchmarks/results/<device>.json; "
                                 "required with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: the same code on the CPU at tiny sizes, Triton's interpreter, no memory numbers")
    p.add_argument("--plan", action="store_true", help="print the plan of the run (slots, rows, compile time "
                                                       "reserved) and exit; runs nothing")
    p.add_argument("--sections", nargs="+", choices=["tests", "correctness", "bench"],
                   default=["tests", "correctness", "bench"], help="run only these sections")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to time")
    p.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16", "float16"], help="dtypes to time")
    p.add_argument("--pass", dest="passes", nargs="+", choices=PASSES, default=list(PASSES))
    p.add_argument("--L", type=int, nargs="+", help="sweep lengths (default 512 ... 32768)")
    p.add_argument("--H", type=int, nargs="+", help="sweep head counts (default 256 8)")
    p.add_argument("--budget-s", type=float, help="seconds for the whole run (default 480; the slots scale with it)")
    p.add_argument("--max-call-s", type=float, help="skip configurations predicted to take longer per call "
                                                    "(default 3)")
    p.add_argument("--note", default="", help="free text stored in the JSON")
    p.add_argument("--correctness-worker", metavar="OUT", help=argparse.SUPPRESS)
    # "correctness:N" aborts the worker at case N, "bench:N" raises a sticky CUDA error in
    # row N, "bench-abort:N" aborts the run at row N: what a crashing kernel would do
    p.add_argument("--inject-failure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dry_run and not args.out and not args.plan and not args.correctness_worker:
        p.error("--dry-run needs --out (a dry run's numbers are not results)")
    if args.dry_run and args.out and Path(args.out).resolve().is_relative_to(RESULTS.resolve()):
        p.error(f"refusing to write a dry run into {RESULTS.relative_to(REPO)}/: chapter 5 reads every JSON there")
    return args


def _mode(args) -> tuple[str, dict]:
    name = "dry-run" if args.dry_run else "cuda"
    mode = dict(MODES[name])
    sweep = dict(mode["sweep"], **{k: v for k, v in (("L", args.L), ("H", args.H)) if v})
    mode["sweep"] = sweep
    if args.max_call_s is not None:
        mode["timing"] = dataclasses.replace(mode["timing"], max_call_s=args.max_call_s)
    if args.budget_s is not None:
        scale = args.budget_s / mode["budget_s"]
        mode["slots_s"] = {k: v * scale for k, v in mode["slots_s"].items()}
        mode["budget_s"] = args.budget_s
    return name, mode


def _bf16_ok(device: str) -> bool:
    import torch

    return device != "cuda" or torch.cuda.get_device_capability()[0] >= 8


def main(argv=None) -> int:
    args = parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    mode_name, mode = _mode(args)
    dtypes = args.dtype or mode["dtypes"]
    if args.plan:
        print(format_plan(make_plan(mode, args.impl, dtypes, args.passes, args.sections,
                                    "cpu" if args.dry_run else "cuda")))
        return 0
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        if "triton" in sys.modules:
            sys.exit("gpu_check: --dry-run needs TRITON_INTERPRET=1 before triton is imported; run it as a script")
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if args.correctness_worker:
        if args.dry_run:
            torch.set_num_threads(1)
        _correctness.run_worker(mode, device, Path(args.correctness_worker), _bf16_ok(device), args.inject_failure,
                                log=lambda line: print(line, flush=True))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
              "refusing to write GPU results. Run it on a machine with an NVIDIA GPU, or use "
              "--dry-run --out <file> to exercise the code on the CPU.", file=sys.stderr)
        return 2
    if not args.dry_run and os.environ.get("TRITON_INTERPRET"):
        print("gpu_check: TRITON_INTERPRET is set: unset it, or the Triton kernels would not be compiled for the GPU",
              file=sys.stderr)
        return 2
    if args.dry_run:
        torch.set_num_threads(1)  # a shared CPU; and the numbers are not results
    timing, slots = mode["timing"], mode["slots_s"]
    start = time.perf_counter()
    ends, total = {}, 0.0
    for name, slot in slots.items():  # each part must end by the sum of the slots up to it
        total += slot
        ends[name] = start + total
    info = device_info(device)
    out = Path(args.out) if args.out else RESULTS / (re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-")
                                                     + ".json")
    print(f"gpu_check ({mode_name}) on {info['name']}; budget {mode['budget_s']:.0f} s; writing {out}", flush=True)

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
            "sections": args.sections, "budget_s": mode["budget_s"], "slots_s": slots,
            "timing": dataclasses.asdict(timing), "costs": dataclasses.asdict(mode["costs"]), "statistic": "median",
            "timing_method": "CUDA events around each call" if device == "cuda" else "time.perf_counter",
            "memory_method": ("torch.cuda.max_memory_allocated during one call minus memory allocated before it "
                              "(the inputs), after the first call" if device == "cuda" else None),
            "first_call": "first_call_s: wall time of the first call of each configuration (compilation, "
                          "autotuning, warm-up), never part of the median; reserved_s: what the budget set "
                          "aside for it",
            "pairs_per_s": "B*H*L^2 / median time",
            "compiled": {"what": "torch.compile(functools.partial(geoattn.geometric_attention, impl='naive'))",
                         "backend": mode["compile_backend"], "dynamic": True},
            "flex": {"what": "geoattn.flex.flex_geometric_attention: torch.compile(flex_attention) with a "
                             "score_mod", "backend": mode["compile_backend"]},
            "triton": "block_size=None: the autotuned launch (autotuning key: L up to 4096 and B*H, bucketed, "
                      "and the flags)",
            "check": mode["check"], "layer": mode["layer"], "sweep": mode["sweep"], "dtypes": dtypes,
            "impls": args.impl, "passes": args.passes, "fp32_tolerance": {"atol": FP32_ATOL, "rtol": FP32_RTOL},
            "large_coordinate_offset_angstrom": LARGE_OFFSET,
            "fa_rule": "max|triton - ref| <= 2 * max|naive_lowp - ref| + 2 * max|r + 0.3 - 0.3 - r| (r = ref in fp32)",
        },
        "preflight": None, "tests": [], "correctness": {"cases": [], "invariance": None, "pass": None}, "rows": [],
        "context_lost": None, "durations_s": {}, "passed": None, "complete": False,
    }

    def save():
        result["durations_s"]["total"] = round(time.perf_counter() - start, 1)
        write_json(out, result)

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        result["durations_s"][name] = round(result["durations_s"].get(name, 0.0) + time.perf_counter() - t0, 1)
        save()

    def do_preflight():
        result["preflight"] = preflight(device)
        for problem in result["preflight"]["problems"]:
            print(f"preflight: PROBLEM {problem}", flush=True)
        print(f"preflight: ok {result['preflight']['ok']}", flush=True)

    def do_correctness():
        left = ends["correctness"] - time.perf_counter()
        result["correctness"] = _correctness.run_in_subprocess(Path(__file__).resolve(), mode, args.dry_run, left,
                                                               args.inject_failure)

    bench = BenchRun(attention_fns(args.impl, mode["compile_backend"]) if "bench" in args.sections else {},
                     device, timing, mode["costs"], inject=args.inject_failure, bf16=_bf16_ok(device))

    def do_bench(tiers, end):
        if tiers == (0,):
            print("  " + ROW_HEADER, flush=True)
        specs = bench_specs(mode, args.impl, dtypes, args.passes, tiers)

        def on_row(rows):
            result["rows"], result["context_lost"] = rows, bench.context_lost
            save()

        bench.run(specs, end, log=lambda row: print("  " + format_row(row), flush=True), on_row=on_row)

    def do_tests():
        if device == "cuda":
            torch.cuda.empty_cache()  # the suites' processes need the memory the benchmark cached
        print("pytest: the gpu-marked tests and the Triton tests ...", flush=True)
        result["tests"] = run_test_suites(test_suites(mode["pytest_filter"]), ends["tests"] - time.perf_counter())
        for record in result["tests"]:
            print(f"  {record['name']}: {record['status']}: {record['passed']} passed, {record['failed']} failed, "
                  f"{record['skipped']} skipped ({record['duration_s']} s)", flush=True)

    save()
    timed("preflight", do_preflight)
    if "correctness" in args.sections:
        timed("correctness", do_correctness)
    if "bench" in args.sections:
        timed("bench", lambda: do_bench((0,), ends["bench:0"]))
    if "tests" in args.sections:
        timed("tests", do_tests)
    if "bench" in args.sections:
        timed("bench", lambda: do_bench((1, 2), ends["bench:1"]))

    pre_ok = result["preflight"]["ok"]
    result["passed"] = (pre_ok and all(t["status"] == "passed" for t in result["tests"])
                        and result["correctness"]["pass"] is not False and bench.context_lost is None)
    result["complete"] = True
    save()
    print("\n" + summary(result), flush=True)
    print(f"wrote {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
