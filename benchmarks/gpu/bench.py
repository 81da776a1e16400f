"""The benchmark: rows ordered by value, a budget that reserves compile time, and crashes
that end a row, or the CUDA context, but never the JSON."""
from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import os
import statistics
import time

from .common import TIERS, Costs, Timing, bench_geometric, context_alive, short_error

# Ask the CUDA context whether it survived only after errors that are not ordinary Python ones.
_ORDINARY = ("ValueError", "TypeError", "AssertionError", "NotImplementedError")


def new_row(spec: dict) -> dict:
    return {**spec, "status": "ok", "message": None, "median_ms": None, "min_ms": None, "repeats": 0,
            "first_call_s": None, "reserved_s": None, "peak_mem_bytes": None, "pairs_per_s": None,
            "autotuned": None}


def not_run(spec: dict, device: str) -> str | None:
    """Why a row cannot run on this device at all, or None."""
    if spec["impl"] == "flex" and spec["pass"] == "fwd+bwd" and device == "cpu":
        return "FlexAttention has no backward pass on the CPU"
    return None


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _triton_autotuned() -> dict | None:
    """The configs the autotuner chose for the last call (private names; None if they moved)."""
    try:
        from geoattn.kernels import launch as tk

        tuned = {"fwd": tk._fwd_tuned, "bwd_dkdv": tk._dkdv_tuned, "bwd_dq": tk._dq_tuned}
    except (ImportError, AttributeError):
        return None
    return {k: str(t.best_config) for k, t in tuned.items() if getattr(t, "best_config", None) is not None} or None


def _time_and_measure(fn, spec: dict, device: str, timing: Timing) -> dict:
    import torch

    b, length, h = spec["B"], spec["L"], spec["H"]
    dtype, backward = getattr(torch, spec["dtype"]), spec["pass"] == "fwd+bwd"
    inputs = bench_geometric()._make_inputs(b, length, h, device, dtype, backward)
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
    The cleanup is inside the ``try`` as well: after an illegal address, CUDA re-raises the
    error from every call, ``empty_cache`` included.
    """
    import torch

    row = new_row(spec)
    try:
        row.update(_time_and_measure(fn, spec, device, timing))
    except Exception as err:
        row["status"] = "oom" if bench_geometric()._status_of(err) == "oom" else "error"
        row["message"] = short_error(err)
    if row["status"] != "ok":  # the exception's frames held the inputs: free them now
        gc.collect()
    if device == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception as err:  # a lost context: the row keeps its own error
            row["message"] = row["message"] or short_error(err)
            row["status"] = "error" if row["status"] == "ok" else row["status"]
    return row


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tuning_key(spec: dict) -> tuple:
    """What the Triton autotuner tunes once: geoattn.kernels.launch.autotune_key's buckets (L
    up to 4096, B·H up to 4096), or the short-sequence kernels' padded length (no tuning)."""
    if spec["L"] <= 32:
        return ("small", 16 if spec["L"] <= 16 else 32, spec["pass"])
    return (min(_pow2(spec["L"]), 4096), min(_pow2(spec["B"] * spec["H"]), 4096), spec["pass"])


# Autotuned configs per streaming kernel (geoattn.kernels.configs.GPU_SHAPES), without importing triton.
_CONFIGS = {"fwd": 6, "fwd+bwd": 6 + 6 + 5}
_GPU_SMS = 132  # an H100's; only decides whether the forward splits its keys


def compile_group(spec: dict) -> tuple:
    """Rows that share one compilation. torch.compile(naive): per dtype and pass, and B = 1
    apart (dynamic=True still specialises a size of 1). flex_attention: per pass and B = 1
    (it sees fp32 for every dtype). Triton: per pass, short or streaming kernels, and
    whether the forward splits its keys (a constexpr); the dtype never reaches it."""
    if spec["impl"] == "compiled":
        return ("compiled", spec["dtype"], spec["pass"], spec["B"] == 1)
    if spec["impl"] == "flex":
        return ("flex", spec["pass"], spec["B"] == 1)
    small = spec["L"] <= 32
    split = not small and spec["B"] * spec["H"] * -(-spec["L"] // 128) < _GPU_SMS
    return ("triton", spec["pass"], small, split)


def reserve_s(spec: dict, seen: dict, costs: Costs) -> float:
    """Seconds the first calls of ``spec`` spend compiling and tuning, beyond its time per call.

    ``seen`` holds what earlier rows already compiled (and is updated): each compile
    group with the shapes it saw, and Triton's tuning keys.
    """
    impl = spec["impl"]
    shapes = seen.setdefault(compile_group(spec), set())
    first = not shapes
    shape = (spec["L"], spec["H"])
    again = impl == "flex" and len(shapes) == 1 and shape not in shapes
    shapes.add(shape)
    if impl == "compiled":
        return first * costs.inductor_compile_s * (1.5 if spec["pass"] == "fwd+bwd" else 1.0)
    if impl == "flex":
        return (first + again) * costs.flex_compile_s * (1.5 if spec["pass"] == "fwd+bwd" else 1.0)
    if impl != "triton":
        return 0.0
    small = spec["L"] <= 32
    kernels = 2 if spec["pass"] == "fwd+bwd" and small else 3 if spec["pass"] == "fwd+bwd" else 1
    configs = kernels if small else _CONFIGS[spec["pass"]]
    reserve = first * configs * costs.triton_compile_s
    keys = seen.setdefault("triton-keys", set())
    if not small and tuning_key(spec) not in keys:
        keys.add(tuning_key(spec))
        reserve += configs * costs.triton_bench_calls * guess_per_call_s(spec, costs) / kernels
    return reserve


def guess_per_call_s(spec: dict, costs: Costs) -> float:
    pairs = spec["B"] * spec["H"] * spec["L"] ** 2
    factor = costs.bwd_factor + 1 if spec["pass"] == "fwd+bwd" else 1.0
    return pairs * factor / costs.guess_pairs_per_s[spec["impl"]]


def plan(spec: dict, previous: list[dict], timing: Timing, seconds_left: float, reserve: float = 0.0,
         costs: Costs | None = None) -> str | None:
    """Why ``spec`` should be skipped, or None to run it.

    ``previous``: the rows already recorded for the same series (section, impl, dtype, pass,
    B, H), smallest L first. The time per call is predicted from the last successful row as
    time × (L / L_then)², which over-estimates while launches, not pairs, dominate; the
    first row of a series uses the first guess in ``costs`` (none: it runs). ``reserve``:
    the seconds its first call compiles or tunes (:func:`reserve_s`).
    """
    if seconds_left <= 0:
        return "time budget exhausted"
    for row in previous:
        if row["status"] == "oom" and row["L"] < spec["L"]:
            return f"larger than L={row['L']}, which ran out of memory"
    done = [r for r in previous if r["status"] == "ok" and r["L"] < spec["L"]]
    if done:
        last = done[-1]
        per_call = last["median_ms"] / 1e3 * (spec["L"] / last["L"]) ** 2
        origin = f"from L={last['L']}"
    elif costs is not None:
        per_call, origin = guess_per_call_s(spec, costs), "first guess"
    else:
        per_call, origin = 0.0, None
    if per_call > timing.max_call_s:
        return f"predicted {per_call:.1f} s per call ({origin}) > --max-call-s {timing.max_call_s:g}"
    cost = reserve + per_call * (2 + timing.min_repeats)
    if cost > seconds_left:
        what = f" ({reserve:.0f} s of it compiling)" if reserve else ""
        return f"predicted {cost:.0f} s{what} > {seconds_left:.0f} s left of the budget"
    return None


def attention_fns(impls, compile_backend: str) -> dict:
    """One callable per impl. "compiled" is torch.compile of the naive reference, built once with
    dynamic shapes; "flex" is geoattn.flex with torch.compile(flex_attention)."""
    import torch

    from geoattn.geometric import geometric_attention

    fns = {}
    for impl in impls:
        if impl == "compiled":
            # dtype × grad mode × the encoder's shape must not reach dynamo's recompile limit
            # (beyond it, dynamo silently runs eager code and the row would time naive).
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, 64)
            fns[impl] = torch.compile(functools.partial(geometric_attention, impl="naive"),
                                      backend=compile_backend, dynamic=True)
        elif impl == "flex":
            from geoattn.flex import flex_geometric_attention

            fns[impl] = functools.partial(flex_geometric_attention, backend=compile_backend)
        else:
            fns[impl] = functools.partial(geometric_attention, impl=impl)
    return fns


def tier_of(impl: str) -> int:
    return next(n for n, tier in enumerate(TIERS) if impl in tier)


def bench_specs(mode: dict, impls, dtypes, passes, tiers=None) -> list[dict]:
    """Every configuration, in the order run: by tier (triton and flex, then naive and chunked,
    then compiled), dtype, impl, the encoder's shape (cheap) before the sweep, H (256
    first: the shape the goals are set for), pass, and L ascending (so each L's prediction
    has the smaller one). Within a tier and dtype, one impl's every series comes before
    the next impl's: flex's compilations must not starve the kernel's own rows."""
    # (the GPU run's encoder is bench_geometric's preset, whose L and H are lists already)
    encoder = mode["encoder"] or bench_geometric().SHAPES["encoder"]
    encoder = {"L": list(encoder["L"]), "H": list(encoder["H"]), "B": encoder["B"]}
    specs = []
    for tier, members in enumerate(TIERS):
        if tiers is not None and tier not in tiers:
            continue
        for dtype in dtypes:
            for impl in (i for i in members if i in impls):
                for section, shape in (("encoder", encoder), ("sweep", mode["sweep"])):
                    for h in shape["H"]:
                        for pass_ in passes:
                            for length in shape["L"]:
                                specs.append({"section": section, "impl": impl, "dtype": dtype, "pass": pass_,
                                              "B": shape["B"], "L": length, "H": h})
    return specs


SERIES = ("section", "impl", "dtype", "pass", "B", "H")


@dataclasses.dataclass
class BenchRun:
    """The benchmark's state across its phases: rows, what was compiled, the CUDA context."""

    fns: dict
    device: str
    timing: Timing
    costs: Costs | None = None
    rows: list = dataclasses.field(default_factory=list)
    seen: dict = dataclasses.field(default_factory=dict)
    context_lost: str | None = None
    bf16: bool = True  # whether the GPU computes in bf16 (sm >= 8.0)
    inject: str | None = None  # "bench:N" raises a sticky CUDA error in row N, "bench-abort:N" aborts

    def run(self, specs, deadline: float, log=print, on_row=None) -> None:
        for spec in specs:
            n = len(self.rows)
            series = [r for r in self.rows if all(r[k] == spec[k] for k in SERIES)]
            seen = copy.deepcopy(self.seen)  # kept only if the row runs: a skipped row compiles nothing
            reserve = reserve_s(spec, seen, self.costs) if self.costs else 0.0
            why = not_run(spec, self.device)
            if spec["dtype"] == "bfloat16" and not self.bf16:
                why = "this GPU has no bf16 arithmetic (sm < 8.0)"
            if self.context_lost:
                row = new_row(spec) | {"status": "skipped", "message": self.context_lost}
            elif why:
                row = new_row(spec) | {"status": "skipped", "message": why}
            elif reason := plan(spec, series, self.timing, deadline - time.perf_counter(), reserve, self.costs):
                row = new_row(spec) | {"status": "skipped", "message": reason}
            else:
                self.seen = seen
                fn = self.fns[spec["impl"]]
                if self.inject == f"bench-abort:{n}":
                    os.abort()  # a kernel that takes the process down: the JSON written so far stays
                if self.inject == f"bench:{n}":
                    fn = _sticky_failure
                row = measure(fn, spec, self.device, self.timing) | {"reserved_s": reserve or None}
                if row["status"] == "error" and not row["message"].startswith(_ORDINARY) \
                        and not context_alive(self.device, row["message"]):
                    self.context_lost = (f"CUDA context lost at row {n} ({spec['impl']} {spec['dtype']} "
                                         f"{spec['pass']} L={spec['L']} H={spec['H']}): {row['message']}")
            self.rows.append(row)
            log(row)
            if on_row:
                on_row(self.rows)


def _sticky_failure(*args):
    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated by --inject-failure)")
