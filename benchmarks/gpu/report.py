"""What gpu_check prints: the rows as they come, the summary, and the plan (--plan)."""
from __future__ import annotations

import copy
import math
import re

from .bench import bench_specs, guess_per_call_s, not_run, reserve_s
from .common import Timing


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
             f"commit: {result['git']['commit']}{' (dirty)' if result['git']['dirty'] else ''}"]
    pre = result.get("preflight")
    if pre:
        lines.append(f"preflight: ok {pre['ok']}" + "".join(f"\n  PROBLEM {p}" for p in pre["problems"]))
    lines += ["", "tests:"]
    for t in result["tests"]:
        counts = ("" if t["total"] is None else
                  f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped")
        lines.append(f"  {t['name']:<11}{t['status']:<9}{counts}  ({_fmt(t['duration_s'], '.1f')} s)")
        lines += [f"    FAILED {name}" for name in t["failures"]]
    lines += ["", "correctness: triton vs naive fp64; ratio = error / allowed (pass if <= 1)",
              f"  {'case':<19}{'dtype':<10}{'rule':<20}{'worst tensor':<18}{'ratio':>8}  pass"]
    for c in result["correctness"]["cases"]:
        if c["error"] or c.get("skipped"):
            what = f"ERROR {c['error'][:60]}" if c["error"] else f"skipped: {c['skipped']}"
            lines.append(f"  {c['case']:<19}{c['dtype']:<10}{what}")
            continue
        key = "tolerance_ratio" if c["dtype"] == "float32" else "fa_ratio"
        worst = max(c["tensors"], key=lambda n: math.inf if c["tensors"][n][key] is None else c["tensors"][n][key])
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


def _calls(per_call: float, timing: Timing) -> int:
    """Calls of a row: the first, the memory run, and the timed repeats."""
    timed = timing.min_repeats
    if per_call > 0:
        timed = max(timed, min(timing.max_repeats, math.ceil(timing.min_time_s / per_call)))
    return 2 + timed


def make_plan(mode: dict, impls, dtypes, passes, sections, device: str = "cuda") -> dict:
    """The run's plan before it starts: each section's slot, and each benchmark row's reserved
    compile time and predicted cost from the first guesses in ``mode["costs"]``.

    Slots are spent in order; each section must end by the sum of the slots up to it, so
    what one leaves goes to the next (as in the run). The fixed sections are planned at
    their whole slot; rows that would not fit what is left of their phase are planned as
    skipped.
    """
    timing, costs, slots = mode["timing"], mode["costs"], mode["slots_s"]
    seen: dict = {}
    rows, phases, carry = [], [], 0.0
    for name, slot in slots.items():
        if name.startswith("bench:"):
            if "bench" not in sections:
                continue
            tiers = (0,) if name == "bench:0" else (1, 2)
            left, used, reserved = slot + carry, 0.0, 0.0
            for spec in bench_specs(mode, impls, dtypes, passes, tiers):
                trial = copy.deepcopy(seen)
                reserve = reserve_s(spec, trial, costs)
                per_call = guess_per_call_s(spec, costs)
                cost = reserve + per_call * _calls(per_call, timing)
                reason = not_run(spec, device)
                if reason is None and per_call > timing.max_call_s:
                    reason = f"predicted {per_call:.1f} s per call > --max-call-s {timing.max_call_s:g}"
                elif reason is None and cost > left - used:
                    reason = f"predicted {cost:.0f} s > {left - used:.0f} s left"
                if reason is None:
                    seen, used, reserved = trial, used + cost, reserved + reserve
                rows.append(dict(spec, phase=name, reserved_s=round(reserve, 1), predicted_s=round(cost, 2),
                                 planned="skip" if reason else "run", reason=reason))
            phases.append({"name": name, "slot_s": slot, "planned_s": round(used, 1),
                           "compile_reserved_s": round(reserved, 1)})
            carry = max(0.0, left - used)
        else:
            if name in ("tests", "correctness") and name not in sections:
                continue
            # a fixed section may run to its slot; time it leaves goes on to the next one
            phases.append({"name": name, "slot_s": slot, "planned_s": slot, "compile_reserved_s": None})
    total = sum(p["planned_s"] for p in phases)
    return {"phases": phases, "rows": rows, "total_s": round(total, 1), "budget_s": mode["budget_s"],
            "compile_reserved_s": round(sum(p["compile_reserved_s"] or 0 for p in phases), 1),
            "rows_planned": sum(r["planned"] == "run" for r in rows), "rows_skipped": sum(r["planned"] == "skip"
                                                                                       for r in rows)}


def format_plan(plan: dict) -> str:
    lines = [f"{'phase':<12}{'slot s':>8}{'planned s':>11}{'compiling s':>13}"]
    for p in plan["phases"]:
        lines.append(f"{p['name']:<12}{p['slot_s']:>8.0f}{p['planned_s']:>11.1f}"
                     f"{_fmt(p['compile_reserved_s'], '13.1f')}")
    lines.append(f"{'total':<12}{'':>8}{plan['total_s']:>11.1f}   (budget {plan['budget_s']:.0f} s; "
                 f"{plan['compile_reserved_s']:.0f} s reserved for compiling and tuning)")
    lines += ["", f"benchmark rows: {plan['rows_planned']} planned, {plan['rows_skipped']} skipped",
              f"  {'phase':<9}{'impl':<9}{'dtype':<9}{'pass':<8}{'B':>5}{'H':>5}{'L':>7}{'compile s':>11}"
              f"{'cost s':>9}  plan"]
    for r in plan["rows"]:
        lines.append(f"  {r['phase']:<9}{r['impl']:<9}{r['dtype']:<9}{r['pass']:<8}{r['B']:>5}{r['H']:>5}{r['L']:>7}"
                     f"{r['reserved_s']:>11.1f}{r['predicted_s']:>9.2f}  {r['planned']}"
                     + (f" ({r['reason']})" if r["reason"] else ""))
    return "\n".join(lines)
