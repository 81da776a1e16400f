"""benchmarks/gpu_check.py: its --dry-run (the whole script on the CPU, Triton's interpreter)
writes the documented JSON; failures become rows; a crash keeps every earlier row; the plan
of a real run fits its 8 minutes; it refuses to write GPU results without CUDA."""
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def script():
    # registered in sys.modules: dataclasses look their module up there
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def _env_without_interpreter():
    # The script must set TRITON_INTERPRET itself, before triton is imported.
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "x.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], env=_env_without_interpreter(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_dry_run_writes_the_header(dry_run, script):
    result, _ = dry_run
    assert result["schema"] == script.SCHEMA and result["mode"] == "dry-run"
    assert {"schema", "mode", "device", "device_info", "versions", "git", "timestamp", "command", "note", "config",
            "preflight", "tests", "correctness", "rows", "context_lost", "durations_s", "passed",
            "complete"} == set(result)
    assert result["complete"] is True and result["context_lost"] is None
    assert result["device"].startswith("cpu: ") and result["device_info"]["name"] == result["device"]
    assert {"python", "torch", "triton", "geoattn", "cuda"} == set(result["versions"])
    assert result["versions"]["torch"] == torch.__version__
    commit = result["git"]["commit"]
    assert commit is None or (len(commit) == 40 and isinstance(result["git"]["dirty"], bool))
    assert result["timestamp"].endswith("+00:00")
    assert result["config"]["memory_method"] is None and result["config"]["timing_method"] == "time.perf_counter"
    assert result["passed"] is True
    assert set(result["durations_s"]) == {"preflight", "tests", "correctness", "bench", "total"}


def test_dry_run_preflight_lists_the_modules_and_needs_no_biotite(dry_run):
    pre = dry_run[0]["preflight"]
    assert pre["ok"] is True and pre["problems"] == []
    assert {"torch", "triton", "einops", "numpy", "pytest", "hypothesis"} <= set(pre["modules"])
    assert all(m["ok"] and m["version"] for m in pre["modules"].values())
    assert all(g["ok"] for g in pre["geoattn_modules"].values())
    assert pre["biotite"]["imported_by_the_run"] is False
    assert {"cc", "python_h", "python_h_found", "ok"} <= set(pre["compiler"])
    assert pre["gpu"]["available"] is False


def test_dry_run_ran_both_test_suites(dry_run):
    result, _ = dry_run
    suites = {t["name"]: t for t in result["tests"]}
    assert set(suites) == {"gpu-marked", "triton"}
    for t in suites.values():
        assert t["status"] == "passed" and t["returncode"] == 0, t
        assert t["total"] == t["passed"] + t["failed"] + t["errors"] + t["skipped"]
        assert "-p no:cacheprovider" in t["command"]
    assert "-m gpu" in suites["gpu-marked"]["command"]
    assert suites["gpu-marked"]["total"] >= 1 and suites["gpu-marked"]["skipped"] == suites["gpu-marked"]["total"]
    assert suites["triton"]["passed"] >= 1  # the interpreted Triton test ran and passed


def test_dry_run_checked_every_case_dtype_and_gradient(dry_run, script):
    result, _ = dry_run
    cases = result["correctness"]["cases"]
    assert [(c["case"], c["dtype"]) for c in cases] == [(c, d) for c in script.CASES for d in script.CHECK_DTYPES]
    assert result["correctness"]["worker"]["returncode"] == 0  # it ran in a worker process
    for c in cases:
        assert c["error"] is None and c["skipped"] is None and c["pass"] is True, c
        assert c["L"] % 16 != 0  # ragged: the tail block is exercised
        assert list(c["tensors"]) == ["out", *(f"grad_{n}" for n in script.GRAD_NAMES)]
        for name, t in c["tensors"].items():
            assert t["finite"] and t["dtype_ok"] and t["pass"], (c["case"], c["dtype"], name, t)
            # FlashAttention's rule, recorded for every dtype and deciding for fp16/bf16
            assert t["fa_bound"] == pytest.approx(2 * t["baseline_max_abs_err"] + t["fa_atol"])
            if c["dtype"] == "float32":
                assert t["rule"] == "tolerance" and t["tolerance_ratio"] <= 1
            else:
                assert t["rule"] == "flash_attention_2x"
                assert t["max_abs_err"] <= t["fa_bound"]
                if t["fa_bound"] > 0:
                    assert t["fa_ratio"] == pytest.approx(t["max_abs_err"] / t["fa_bound"])
                else:  # an exact zero everywhere (e.g. no key anywhere): nothing to compare
                    assert t["max_abs_err"] == t["fa_ratio"] == 0
    fully_masked = next(c for c in cases if c["case"] == "fully_masked_rows")
    assert fully_masked["B"] >= 2
    inv = result["correctness"]["invariance"]
    assert inv["pass"] is True and inv["error"] is None
    assert inv["max_change"] <= inv["tolerance"] < inv["min_change_one_residue_moved"] < inv[
        "max_change_one_residue_moved"]
    assert result["correctness"]["pass"] is True


def test_dry_run_timed_every_configuration(dry_run, script):
    result, stdout = dry_run
    cfg = result["config"]
    encoder = script.MODES["dry-run"]["encoder"]
    want = {("encoder", i, d, p, encoder["B"], n, h) for i in cfg["impls"] for d in cfg["dtypes"]
            for p in cfg["passes"] for n in encoder["L"] for h in encoder["H"]}
    want |= {("sweep", i, d, p, cfg["sweep"]["B"], n, h) for i in cfg["impls"] for d in cfg["dtypes"]
             for p in cfg["passes"] for n in cfg["sweep"]["L"] for h in cfg["sweep"]["H"]}
    rows = result["rows"]
    assert {(r["section"], r["impl"], r["dtype"], r["pass"], r["B"], r["L"], r["H"]) for r in rows} == want
    assert len(rows) == len(want)
    assert set(cfg["impls"]) == set(script.IMPLS)
    # the kernel and its peer first, compiled last
    assert [r["impl"] for r in rows][:1] == ["triton"] and rows[-1]["impl"] == "compiled"
    for r in rows:
        assert set(r) == set(script.new_row({k: r[k] for k in ("section", "impl", "dtype", "pass", "B", "L", "H")}))
        if r["impl"] == "flex" and r["pass"] == "fwd+bwd":  # no CPU backward: said, not attempted
            assert r["status"] == "skipped" and "no backward pass on the CPU" in r["message"], r
            continue
        assert r["status"] == "ok", r
        assert r["peak_mem_bytes"] is None  # no CPU memory numbers in a dry run
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["first_call_s"] > 0 and r["repeats"] >= 1
        assert r["pairs_per_s"] == pytest.approx(r["B"] * r["H"] * r["L"] ** 2 / (r["median_ms"] / 1e3))
    assert "correctness: triton vs naive fp64" in stdout and "benchmark:" in stdout


# ---- the parts that only a GPU would reach, exercised directly ----------------------------

SPEC = {"section": "sweep", "impl": "naive", "dtype": "float32", "pass": "fwd+bwd", "B": 1, "L": 16, "H": 2}
TIMING = {"min_repeats": 1, "max_repeats": 1, "min_time_s": 0.0, "max_call_s": 10.0}


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 48.00 GiB"),
                                 MemoryError()])
def test_out_of_memory_is_recorded_as_a_row(script, exc):
    def exhausted(*args):
        raise exc

    row = script.measure(exhausted, SPEC, "cpu", script.Timing(**TIMING))
    assert row["status"] == "oom" and row["median_ms"] is None and row["pairs_per_s"] is None
    assert row["message"].startswith(type(exc).__name__)
    assert set(row) == set(script.new_row(SPEC))


def test_other_failures_are_recorded_as_errors_with_the_message(script):
    def broken(*args):
        raise ValueError("block_size must be one of (16, 32, 64)")

    row = script.measure(broken, SPEC, "cpu", script.Timing(**TIMING))
    assert row["status"] == "error" and row["message"] == "ValueError: block_size must be one of (16, 32, 64)"


def test_after_an_oom_larger_sizes_are_skipped_and_smaller_ones_run(script):
    import geoattn

    def runs_out_above_16(*args):
        if args[0].shape[1] > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return geoattn.geometric_attention(*args, impl="naive")

    specs = [dict(SPEC, L=n) for n in (8, 16, 32, 64)]
    run = script.BenchRun({"naive": runs_out_above_16}, "cpu", script.Timing(**TIMING))
    run.run(specs, math.inf, log=lambda row: None)
    rows = run.rows
    assert [r["status"] for r in rows] == ["ok", "ok", "oom", "skipped"]
    assert "L=32, which ran out of memory" in rows[3]["message"]


def test_plan_skips_what_cannot_fit(script):
    timing = script.Timing(min_repeats=3, max_repeats=20, min_time_s=0.25, max_call_s=3.0)
    ok = dict(script.new_row(dict(SPEC, impl="triton", L=4096)), median_ms=200.0)  # 0.2 s at L = 4096
    spec = dict(SPEC, impl="triton", L=8192)  # predicted 0.8 s per call
    assert script.plan(spec, [ok], timing, seconds_left=1000) is None
    assert script.plan(dict(spec, L=16384), [ok], timing, seconds_left=1000).startswith("predicted 3.2 s per call")
    # 0.8 s × (2 + 3 repeats) + 40 s compiling = 44 s
    assert "44 s (40 s of it compiling) > 30 s left" in script.plan(spec, [ok], timing, seconds_left=30, reserve=40)
    assert script.plan(spec, [ok], timing, seconds_left=30) is None  # without compiling it fits
    assert script.plan(spec, [], timing, seconds_left=0) == "time budget exhausted"


def test_compile_time_is_reserved_once_per_compilation(script):
    costs = script.MODES["cuda"]["costs"]
    seen = {}
    row = dict(SPEC, impl="compiled", dtype="float32", **{"pass": "fwd"})
    assert script.reserve_s(dict(row, L=512), seen, costs) == costs.inductor_compile_s
    assert script.reserve_s(dict(row, L=1024), seen, costs) == 0  # dynamic=True: one compile for the sweep
    assert script.reserve_s(dict(row, L=16, B=4096), seen, costs) == costs.inductor_compile_s  # B = 1 is special
    assert script.reserve_s(dict(row, L=512, dtype="bfloat16"), seen, costs) == costs.inductor_compile_s
    flex = dict(row, impl="flex")
    assert script.reserve_s(dict(flex, L=512), seen, costs) == costs.flex_compile_s
    assert script.reserve_s(dict(flex, L=1024), seen, costs) == costs.flex_compile_s  # automatic dynamic
    assert script.reserve_s(dict(flex, L=2048), seen, costs) == 0
    assert script.reserve_s(dict(flex, L=512, dtype="bfloat16"), seen, costs) == 0  # flex computes in fp32
    triton = dict(row, impl="triton", H=256)
    first = script.reserve_s(dict(triton, L=512), seen, costs)
    assert first > 6 * costs.triton_compile_s  # every config compiled, then timed
    assert 0 < script.reserve_s(dict(triton, L=1024), seen, costs) < costs.triton_compile_s  # timed only
    assert script.reserve_s(dict(triton, L=8192), seen, costs) > 0  # the capped tuning length, 4096 ...
    assert script.reserve_s(dict(triton, L=16384), seen, costs) == 0  # ... serves every longer one


def test_plan_of_a_real_run_fits_8_minutes_with_compile_time_reserved(script):
    mode = script.MODES["cuda"]
    plan = script.make_plan(mode, list(script.IMPLS), mode["dtypes"], list(script.PASSES),
                            ["tests", "correctness", "bench"])
    assert plan["budget_s"] == 480
    assert plan["total_s"] <= 480 and sum(p["planned_s"] for p in plan["phases"]) == plan["total_s"]
    assert [p["name"] for p in plan["phases"]] == ["preflight", "correctness", "bench:0", "tests", "bench:1",
                                                   "report"]
    assert plan["compile_reserved_s"] >= 100  # Inductor and flex compilations, Triton's autotuning
    runs = [r for r in plan["rows"] if r["planned"] == "run"]
    # what the book needs is planned: the kernel's fp32 sweep at H = 256, forward and backward,
    # every L whose calls stay within --max-call-s
    for pass_ in script.PASSES:
        sweep = [r for r in plan["rows"] if (r["impl"], r["dtype"], r["pass"], r["H"], r["section"])
                 == ("triton", "float32", pass_, 256, "sweep")]
        assert all(r["planned"] == "run" or "max-call-s" in r["reason"] for r in sweep), sweep
        assert sum(r["planned"] == "run" for r in sweep) >= 5
    assert any(r["impl"] == "flex" for r in runs)
    assert all(r["reserved_s"] >= 0 for r in plan["rows"])


def test_plan_is_printed_without_a_gpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--plan"], env=_env_without_interpreter(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    total = next(line for line in proc.stdout.splitlines() if line.startswith("total"))
    assert float(total.split()[1]) <= 480 and "reserved for compiling" in total


def _dry(tmp_path, *args, timeout=600):
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args],
                          env=_env_without_interpreter(), capture_output=True, text=True, timeout=timeout)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_a_sticky_cuda_error_skips_every_later_row_and_keeps_the_json(tmp_path):
    """Row 3 fails as an illegal address would: its row says so, every later row is skipped
    with the reason, every earlier row is kept, and the run fails."""
    proc, result = _dry(tmp_path, "--sections", "bench", "--impl", "naive", "chunked", "--inject-failure", "bench:3")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = result["rows"]
    assert [r["status"] for r in rows[:3]] == ["ok"] * 3
    assert rows[3]["status"] == "error" and "illegal memory access" in rows[3]["message"]
    assert len(rows) > 4 and all(r["status"] == "skipped" and r["message"].startswith("CUDA context lost at row 3")
                                 for r in rows[4:])
    assert result["context_lost"].startswith("CUDA context lost at row 3")
    assert result["passed"] is False and result["complete"] is True


def test_a_crash_that_ends_the_process_leaves_every_earlier_row(tmp_path):
    proc, result = _dry(tmp_path, "--sections", "bench", "--impl", "naive", "chunked",
                        "--inject-failure", "bench-abort:3")
    assert proc.returncode != 0
    assert result is not None and result["complete"] is False
    assert [r["status"] for r in result["rows"]] == ["ok"] * 3
    assert result["preflight"]["ok"] is True


def test_a_crashing_correctness_worker_costs_only_the_cases_after_it(tmp_path, script):
    proc, result = _dry(tmp_path, "--sections", "correctness", "--inject-failure", "correctness:1")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    cases = result["correctness"]["cases"]
    assert len(cases) == len(script.CASES) * len(script.CHECK_DTYPES)
    assert cases[0]["pass"] is True and cases[0]["error"] is None
    assert all("correctness worker exited with code" in c["error"] and "after 1 case(s)" in c["error"]
               for c in cases[1:])
    assert result["correctness"]["invariance"]["error"] and result["correctness"]["pass"] is False
    assert result["complete"] is True


def test_a_gpu_without_bf16_skips_its_rows_with_the_reason(script):
    import geoattn

    run = script.BenchRun({"naive": functools.partial(geoattn.geometric_attention, impl="naive")}, "cpu",
                          script.Timing(**TIMING), bf16=False)
    run.run([dict(SPEC, dtype="bfloat16"), dict(SPEC, dtype="float32")], math.inf, log=lambda row: None)
    assert [r["status"] for r in run.rows] == ["skipped", "ok"]
    assert "no bf16" in run.rows[0]["message"]


def test_a_timed_out_suite_leaves_no_process_behind(script):
    """The whole process group is killed: a child (a compile worker) must not outlive pytest."""
    code = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); print(p.pid, flush=True); " \
           "time.sleep(300)"
    returncode, output, seconds = script.run_in_group([sys.executable, "-c", code], timeout=3)
    assert returncode is None and seconds < 60
    child = int(output.split()[0])
    time.sleep(0.5)
    try:  # gone, or a zombie that this container's init has not reaped yet: either way not running
        state = next(line for line in Path(f"/proc/{child}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except FileNotFoundError:
        return
    assert "Z" in state.split()[1], state


def test_the_gpu_run_leaves_out_tests_that_need_no_gpu(script):
    suites = {s["name"]: s["args"] for s in script.test_suites(None)}
    assert "tests/test_triton_compile.py" in suites["triton"]  # collected, then deselected by its marker
    assert "not offline" in suites["triton"][suites["triton"].index("-m") + 1]
    assert "not offline" in suites["gpu-marked"][suites["gpu-marked"].index("-m") + 1]
    assert "pytestmark = pytest.mark.offline" in (SCRIPT.parents[1] / "tests" / "test_triton_compile.py").read_text()


def test_fa_rule_decides_low_precision_and_fails_past_twice_the_baseline(script):
    ref = torch.tensor([1.0, -2.0], dtype=torch.float64)
    baseline = ref + torch.tensor([1e-3, 0.0], dtype=torch.float64)
    within = script.compare(ref + torch.tensor([0.0, 1.9e-3], dtype=torch.float64), baseline, ref, "bfloat16")
    beyond = script.compare(ref + torch.tensor([0.0, 2.5e-3], dtype=torch.float64), baseline, ref, "bfloat16")
    assert within["rule"] == beyond["rule"] == "flash_attention_2x"
    assert within["pass"] and not beyond["pass"]
    assert beyond["max_abs_err"] == pytest.approx(2.5e-3) and beyond["baseline_max_abs_err"] == pytest.approx(1e-3)
    nan = script.compare(ref + torch.tensor([0.0, math.nan], dtype=torch.float64), baseline, ref, "float16")
    assert not nan["finite"] and not nan["pass"]


def test_junit_counts(script, tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_a" name="test_ok"/>'
                   '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
                   '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
                   '<testcase classname="tests.test_a" name="test_ok2"/></testsuite></testsuites>')
    assert script.junit_counts(xml) == {"total": 4, "passed": 2, "failed": 1, "errors": 0, "skipped": 1,
                                    "failures": ["tests.test_a::test_bad"]}


def test_dry_run_needs_an_out_outside_the_results_folder(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--dry-run"])
    with pytest.raises(SystemExit):
        script.parse_args(["--dry-run", "--out", str(script.RESULTS / "x.json")])
    assert "chapter 5 reads every JSON there" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_to_write_gpu_results(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env=_env_without_interpreter(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr and "--dry-run" in proc.stderr
    assert not out.exists()


def test_what_the_gpu_run_imports_works_without_biotite():
    """The lent GPU machines have no biotite: the run's modules, and geoattn's lazy names that
    the tests use, must import with biotite unimportable."""
    code = ("import sys; sys.modules['biotite'] = None\n"  # `import biotite` now raises ImportError
            f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
            "import geoattn, geoattn.flex, geoattn.kernels.launch, geoattn.triton_kernels\n"
            "geoattn.geometric_attention, geoattn.random_geometric_inputs, geoattn.GeometricSelfAttention\n"
            "from gpu import bench, correctness, preflight, report, suites\n"
            "record = preflight.preflight('cpu')\n"
            "assert record['ok'], record['problems']\n"
            "print('ok')\n")
    env = dict(_env_without_interpreter(), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
