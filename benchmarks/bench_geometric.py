"""Benchmark geoattn.geometric_attention: time and peak memory of each implementation.

Sweeps impl × L × H × pass ("fwd", "fwd+bwd") and writes one JSON file:
{"device", "versions", "config", "memory_method", "note", "rows": [{impl, L, H, B, pass,
median_ms, peak_mem_bytes, pairs_per_s, status}]}. ``pairs_per_s`` counts (query, key)
pairs per second summed over batch and heads: B·H·L² / median time.

Timing: median of at least ``--repeats`` runs (more, up to 50, until ``--min-time`` seconds
were timed) after ``--warmup`` runs; CUDA events on a GPU,
``time.perf_counter`` on the CPU. Peak memory:
- GPU: ``torch.cuda.max_memory_allocated`` during one run, minus what was allocated before
  it (the inputs), after one untimed full-size run (compilation, autotuning).
- CPU: PyTorch has no CPU peak counter, so every configuration runs in a fresh
  subprocess. After imports, the inputs and a tiny warm-up call, the process resets its
  peak resident set size (Linux ``/proc/self/clear_refs`` ← 5) and reads its RSS; after one
  full-size run it reads the peak (``VmHWM``). The difference is the peak resident memory
  the run added. Without ``clear_refs`` it falls back to ``ru_maxrss`` differences, which
  can only under-count.
An out-of-memory failure is recorded as status "oom", not raised.

Examples:
    python benchmarks/bench_geometric.py --out bench_cpu.json           # CPU: naive, chunked, compiled, flex
    python benchmarks/bench_geometric.py --shape encoder --out enc.json  # ESM3 structure encoder
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    # ESM3-open layer 0: long sequences, one per batch, a sweep of lengths.
    "sweep": {"L": [256, 512, 1024, 2048, 4096], "H": [8], "B": 1},
    # ESM3's structure encoder: 4096 neighbourhoods of 16 residues, 128 heads.
    "encoder": {"L": [16], "H": [128], "B": 4096},
}
PASSES = ("fwd", "fwd+bwd")
# Whole layers rather than the attention function: ESM's memory pattern restated in
# geoattn.esm_reference, and GeometricSelfAttention with ESM's weights loaded (impl="auto").
LAYER_IMPLS = ("esm-layer", "layer")


def _versions() -> dict:
    import torch

    import geoattn

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
            "geoattn": geoattn.__version__}


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.+)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    return f"cpu: {model}, {os.cpu_count()} logical cores"


def _make_inputs(b, length, h, device, dtype, requires_grad):
    import geoattn

    # distances of a few Å, like neighbouring residues
    return geoattn.random_geometric_inputs(b, length, h, seed=0, dist_scale=5.0, dtype=dtype, device=device,
                                           requires_grad=requires_grad)


def _attention_fn(impl: str, block_size: int | None):
    import torch

    import geoattn

    if impl == "compiled":  # torch.compile of the naive reference: what a compiler finds alone
        return torch.compile(functools.partial(geoattn.geometric_attention, impl="naive"))
    if impl == "flex":  # the FlexAttention peer: torch.compile(flex_attention) with a score_mod
        from geoattn.flex import flex_geometric_attention

        return flex_geometric_attention
    kwargs = {} if block_size is None or impl == "naive" else {"block_size": block_size}
    return functools.partial(geoattn.geometric_attention, impl=impl, **kwargs)


def _layer_step(impl: str, b: int, length: int, h: int, d_model: int, device, dtype, backward: bool):
    """(step, None) for one forward (and backward) of a whole layer on random frames."""
    import torch

    from geoattn import GeometricSelfAttention
    from geoattn.esm_reference import EsmStyleGeometricAttention
    from geoattn.frames import random_rotation

    torch.manual_seed(0)
    esm = EsmStyleGeometricAttention(d_model, h).to(device=device, dtype=dtype)
    layer = esm
    if impl == "layer":
        layer = GeometricSelfAttention(d_model, h, pre_layernorm=True).to(device=device, dtype=dtype)
        layer.load_esm_state_dict(esm.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, length, d_model, generator=g).to(device=device, dtype=dtype).requires_grad_(backward)
    rot = random_rotation(b, length, generator=g).to(device=device, dtype=dtype)
    trans = (torch.randn(b, length, 3, generator=g) * 10).to(device=device, dtype=dtype)  # a protein's spread
    mask = torch.ones(b, length, dtype=torch.bool, device=device)

    def step():
        if backward:
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x, rot, trans, mask).sum().backward()
        else:
            with torch.no_grad():
                layer(x, rot, trans, mask)

    return step


def _git_commit() -> dict:
    """The commit measured, and whether the work tree had uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _status_of(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    oom = ("out of memory", "can't allocate memory", "OutOfMemoryError", "MemoryError")
    return "oom" if any(s in text for s in oom) else "error: " + text.splitlines()[0][:200]


# --- CPU peak memory: the process's own resident set size -----------------------------

def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        return None


def _reset_peak_rss() -> tuple[int, str]:
    """Reset the peak RSS if the kernel lets us; return (baseline bytes, method)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kb("VmRSS") * 1024, "VmHWM-after-clear_refs"
    except (OSError, TypeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"


def _peak_rss(method: str) -> int:
    if method == "ru_maxrss":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return _proc_status_kb("VmHWM") * 1024


# --- one configuration ----------------------------------------------------------------

def _not_run(job: dict) -> str | None:
    """Why a configuration cannot run on this device at all, or None."""
    if job["impl"] == "flex" and job["pass_"] == "fwd+bwd" and job["device"] == "cpu":
        return "skipped: FlexAttention has no backward pass on the CPU"
    return None


def _warm_length(impl: str, length: int) -> int:
    """The length of the warm-up call: 64 at most, but the chunked path (and the layer on
    it) compiles its fused kernel only from ``FUSED_MIN_LENGTH`` on, once for every longer
    L; warmed there, in O(L) memory, neither the compiler's time nor its memory counts as
    the run's (``warmup_s`` records it)."""
    from geoattn.chunked import FUSED_MIN_LENGTH

    if impl in ("chunked", "layer") and length >= FUSED_MIN_LENGTH:
        return FUSED_MIN_LENGTH
    return min(length, 64)


def _make_step(impl, length, h, b, device, dt, backward, block_size, d_model):
    """(step, warm-up seconds): one call (forward, or forward and backward) of ``impl`` on
    fixed inputs, after a warm-up call of B = 1 and L = :func:`_warm_length` that absorbs
    lazy imports, thread-pool start-up and the chunked path's compilation."""
    import torch

    small = _warm_length(impl, length)
    t0 = time.perf_counter()
    if impl in LAYER_IMPLS:
        step = _layer_step(impl, b, length, h, d_model, device, dt, backward)
        _layer_step(impl, 1, small, h, d_model, device, dt, backward)()
        return step, time.perf_counter() - t0
    fn = _attention_fn(impl, block_size)
    inputs = _make_inputs(b, length, h, device, dt, backward)
    d_out = torch.ones(b, length, h, 3, device=device, dtype=dt)

    def step(inputs=inputs, d_out=d_out):
        if backward:
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(d_out)
        else:
            with torch.no_grad():
                fn(*inputs)

    # A small call first, so that lazy imports, the intra-op thread pool (it starts only once
    # an op is big enough to split) and compilation are not counted as the run's memory.
    step(_make_inputs(1, small, h, device, dt, backward),
         torch.ones(1, small, h, 3, device=device, dtype=dt))
    return step, time.perf_counter() - t0


def measure_interleaved(impls, length, h, b, pass_, *, device="cpu", dtype="float32", repeats=5,
                        block_size=None, threads=None, d_model=128, **_) -> list[dict]:
    """Time several implementations side by side in this process: after each one's first
    call (``first_call_s``) and one more warm-up, rounds of one call each, the order rotated
    every round, so that a load change on a shared machine hits every implementation alike.
    Returns one row per implementation (``interleaved``: True; no memory measured)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    backward = pass_ == "fwd+bwd"
    rows, steps = [], []
    for impl in impls:
        row = {"impl": impl, "L": length, "H": h, "B": b, "pass": pass_, "median_ms": None,
               "peak_mem_bytes": None, "pairs_per_s": None, "first_call_s": None, "warmup_s": None,
               "status": "ok", "interleaved": True, "times_ms": []}
        if impl in LAYER_IMPLS:
            row["d_model"] = d_model
        reason = _not_run({"impl": impl, "pass_": pass_, "device": device})
        try:
            if reason:
                raise RuntimeError(reason)
            step, row["warmup_s"] = _make_step(impl, length, h, b, device, dt, backward, block_size, d_model)
            t0 = time.perf_counter()
            step()
            row["first_call_s"] = time.perf_counter() - t0
            step()
        except Exception as err:
            row["status"] = reason or _status_of(err)
            step = None
        rows.append(row)
        steps.append(step)
    live = [i for i, step in enumerate(steps) if step is not None]
    for r in range(repeats):
        for i in live[r % len(live):] + live[:r % len(live)] if live else []:
            t0 = time.perf_counter()
            steps[i]()
            if device == "cuda":
                torch.cuda.synchronize()
            rows[i]["times_ms"].append((time.perf_counter() - t0) * 1e3)
    for i in live:
        rows[i]["median_ms"] = statistics.median(rows[i]["times_ms"])
        rows[i]["pairs_per_s"] = b * h * length**2 / (rows[i]["median_ms"] / 1e3)
    return rows


def measure(impl, length, h, b, pass_, *, device="cpu", dtype="float32", repeats=5, warmup=1,
            block_size=None, min_time=1.0, threads=None, d_model=128) -> dict:
    """Time and measure one configuration in this process; return one result row.

    ``first_call_s`` is the first full-size call's time: it includes torch.compile's
    compilation (``compiled``, ``flex``) and Triton's autotuning, which the timed runs
    (``median_ms``) exclude.
    """
    import gc

    import torch

    row = {"impl": impl, "L": length, "H": h, "B": b, "pass": pass_, "median_ms": None,
           "peak_mem_bytes": None, "pairs_per_s": None, "first_call_s": None, "warmup_s": None,
           "status": "ok"}
    if impl in LAYER_IMPLS:
        row["d_model"] = d_model
    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    backward = pass_ == "fwd+bwd"
    try:
        step, row["warmup_s"] = _make_step(impl, length, h, b, device, dt, backward, block_size, d_model)
        gc.collect()
        if device == "cuda":
            # One full-size run first, so that compilation and autotuning (per shape) are
            # neither timed nor counted; the CUDA counters then measure a clean run.
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - t0
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            row["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - base
        else:
            base, method = _reset_peak_rss()
            t0 = time.perf_counter()
            step()
            row["first_call_s"] = time.perf_counter() - t0
            row["peak_mem_bytes"] = max(0, _peak_rss(method) - base)
        for _ in range(max(0, warmup - 1)):  # the memory run above was the first warm-up
            step()
        times = []
        # At least `repeats` runs, and more (up to 50) until `min_time` seconds were timed: a
        # median over many short runs resists the noise of a shared machine.
        while len(times) < repeats or (sum(times) < min_time * 1e3 and len(times) < 50):
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
        row["median_ms"] = statistics.median(times)
        row["pairs_per_s"] = b * h * length**2 / (row["median_ms"] / 1e3)
    except Exception as err:  # an OOM (or any failure) is a result, not a crash
        row["status"] = _status_of(err)
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def _measure_in_subprocess(job: dict, timeout: float):
    """Run ``measure`` (or, for a job with ``impls``, ``measure_interleaved``, a list of rows)
    in a fresh interpreter so each CPU peak-RSS reading starts clean."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
    failed = [{"impl": impl, "L": job["length"], "H": job["h"], "B": job["b"], "pass": job["pass_"],
               "median_ms": None, "peak_mem_bytes": None, "pairs_per_s": None}
              for impl in job.get("impls", [job.get("impl")])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        status = f"error: timeout after {timeout:.0f} s"
    else:
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        # SIGKILL from the kernel's OOM killer is the usual reason a worker dies silently.
        last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        status = "oom" if proc.returncode == -9 else f"error: worker exit {proc.returncode}: {last}"
    rows = [row | {"status": status} for row in failed]
    return rows if "impls" in job else rows[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="sweep",
                   help="preset of L, H and B; --L, --H and --B override it")
    p.add_argument("--impl", nargs="+", help="implementations: naive chunked compiled flex triton (the attention "
                                             "function), esm-layer layer (whole layers, see LAYER_IMPLS); "
                                             "default: naive chunked compiled flex esm-layer layer, and triton "
                                             "on a GPU")
    p.add_argument("--L", type=int, nargs="+", help="sequence lengths")
    p.add_argument("--H", type=int, nargs="+", help="numbers of heads")
    p.add_argument("--B", type=int, help="batch size")
    p.add_argument("--pass", dest="passes", nargs="+", choices=PASSES, default=list(PASSES))
    p.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="keep timing (up to 50 runs) until this many seconds were timed")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (the first one measures memory)")
    p.add_argument("--block-size", type=int, default=None, help="block size for chunked/triton")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 avoids oversubscribing a shared machine")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--timeout", type=float, default=600, help="seconds per CPU configuration")
    p.add_argument("--d-model", type=int, default=128, help="d_model of the layer rows")
    p.add_argument("--quiet-check", action="store_true",
                   help="refuse to start while the 1-minute load average is above 1.0, and to write results "
                        "if it rose above 1.0 beyond the benchmark's own threads during the run")
    p.add_argument("--interleave", action="store_true",
                   help="time the implementations side by side: per (L, H, pass) one process runs them "
                        "in rotating rounds (--repeats rounds; no memory measured)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    p.add_argument("--out", default="bench_geometric.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:  # a subprocess measuring one configuration (or, interleaved, several)
        job = json.loads(args.worker)
        print(json.dumps(measure_interleaved(**job) if "impls" in job else measure(**job)))
        return {}
    if args.quiet_check and os.getloadavg()[0] > 1.0:
        raise SystemExit(f"--quiet-check: the 1-minute load average is {os.getloadavg()[0]:.2f} (> 1.0); "
                         "timings would be distorted, no results written")
    import torch
    from tqdm import tqdm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = SHAPES[args.shape]
    lengths, heads = args.L or preset["L"], args.H or preset["H"]
    batch = args.B or preset["B"]
    impls = args.impl or ["naive", "chunked", "compiled", "flex", *LAYER_IMPLS,
                          *(["triton"] if device == "cuda" else [])]
    jobs = [dict(impl=i, length=n, h=h, b=batch, pass_=ps, device=device, dtype=args.dtype,
                 repeats=args.repeats, warmup=args.warmup, block_size=args.block_size, min_time=args.min_time,
                 threads=args.threads, d_model=args.d_model)
            for h in heads for n in lengths for i in impls for ps in args.passes]
    load_start = os.getloadavg()
    rows = []
    if args.interleave:
        jobs = [dict(impls=impls, length=n, h=h, b=batch, pass_=ps, device=device, dtype=args.dtype,
                     repeats=args.repeats, block_size=args.block_size, threads=args.threads, d_model=args.d_model)
                for h in heads for n in lengths for ps in args.passes]
    for job in tqdm(jobs, desc="geometric attention", unit="config"):
        if "impls" in job:
            group = (_measure_in_subprocess(job, args.timeout * len(impls)) if device == "cpu"
                     else measure_interleaved(**job))
            rows.extend(group)
            for row in group:
                tqdm.write(f"{row['impl']:>9} L={row['L']:<5} H={row['H']:<4} B={row['B']:<5} {row['pass']:<8} "
                           + (f"{row['median_ms']:10.2f} ms (interleaved)" if row["status"] == "ok"
                              else row["status"]))
            continue
        if _not_run(job):
            row = {"impl": job["impl"], "L": job["length"], "H": job["h"], "B": job["b"], "pass": job["pass_"],
                   "median_ms": None, "peak_mem_bytes": None, "pairs_per_s": None, "first_call_s": None,
                   "status": _not_run(job)}
        elif device == "cpu":
            row = _measure_in_subprocess(job, args.timeout)
        else:
            row = measure(**job)
        rows.append(row)
        # During the run the measuring worker itself adds about one unit per torch thread to
        # the load average, so only the load beyond it counts as other jobs.
        own = args.threads or os.cpu_count()
        if args.quiet_check and os.getloadavg()[0] - own > 1.0:
            raise SystemExit(f"--quiet-check: the load average rose to {os.getloadavg()[0]:.2f} during the run "
                             f"(the benchmark's own {own} thread(s) included); no results written")
        tqdm.write(f"{row['impl']:>9} L={row['L']:<5} H={row['H']:<4} B={row['B']:<5} {row['pass']:<8} "
                   + (f"{row['median_ms']:10.2f} ms {row['peak_mem_bytes'] / 2**20:10.1f} MiB"
                      if row["status"] == "ok" else row["status"]))
    from geoattn.chunked import DEFAULT_BLOCK_SIZE, tile_sizes

    memory_method = (
        "torch.cuda.max_memory_allocated during one run minus memory allocated before it (the inputs)"
        if device == "cuda" else
        "fresh subprocess per configuration; peak resident set size (VmHWM, reset via /proc/self/clear_refs, "
        "else ru_maxrss) during one run minus the RSS before it, after imports, inputs and a small "
        "warm-up call (L <= 64; chunked and layer: L = FUSED_MIN_LENGTH when L is at least that)"
    )
    if args.interleave:
        memory_method = "not measured (--interleave: implementations timed side by side in one process)"
    result = {
        "device": _device_name(device),
        "versions": _versions(),
        "git": _git_commit(),
        "config": {"shape": args.shape, "impls": impls, "L": lengths, "H": heads, "B": batch,
                   "passes": args.passes, "repeats": args.repeats, "min_time_s": args.min_time,
                   "warmup": args.warmup, "dtype": args.dtype, "interleave": args.interleave,
                   "threads": args.threads or torch.get_num_threads(),
                   "block_size": args.block_size or DEFAULT_BLOCK_SIZE, "d_model": args.d_model,
                   "chunked_tiles": {str(n): list(tile_sizes(batch * heads[0], n, args.block_size)) for n in lengths},
                   "timing": "CUDA events" if device == "cuda" else "time.perf_counter",
                   "statistic": "median", "command": " ".join(["python", "benchmarks/bench_geometric.py",
                                                                *(argv if argv is not None else sys.argv[1:])])},
        "memory_method": memory_method,
        "note": args.note,
        # Other processes share the machine: the 1-minute load average before and after the
        # sweep says how noisy the timings may be (ratios within one run are what count).
        "load_average_1min": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2),
                              "cores": os.cpu_count(), "quiet_check": args.quiet_check},
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    return result


if __name__ == "__main__":
    main()
