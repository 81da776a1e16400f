"""benchmarks/gpu_check.py: its --dry-run (the whole script on the CPU, Triton's interpreter)
writes the documented JSON; failures become rows; it refuses to write GPU results without CUDA."""
import importlib.util
import json
import math
import os
import subprocess
import sys
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
            "tests", "correctness", "rows", "durations_s", "passed"} == set(result)
    assert result["device"].startswith("cpu: ") and result["device_info"]["name"] == result["device"]
    assert {"python", "torch", "triton", "geoattn", "cuda"} == set(result["versions"])
    assert result["versions"]["torch"] == torch.__version__
    commit = result["git"]["commit"]
    assert commit is None or (len(commit) == 40 and isinstance(result["git"]["dirty"], bool))
    assert result["timestamp"].endswith("+00:00")
    assert result["config"]["memory_method"] is None and result["config"]["timing_method"] == "time.perf_counter"
    assert result["passed"] is True
    assert set(result["durations_s"]) == {"tests", "correctness", "bench", "total"}


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
    for c in cases:
        assert c["error"] is None and c["pass"] is True, c
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
    assert set(cfg["impls"]) == {"naive", "compiled", "chunked", "triton"}
    for r in rows:
        assert set(r) == set(script.new_row({k: r[k] for k in ("section", "impl", "dtype", "pass", "B", "L", "H")}))
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
    rows = script.run_benchmark(specs, {"naive": runs_out_above_16}, "cpu", script.Timing(**TIMING), math.inf,
                            log=lambda line: None)
    assert [r["status"] for r in rows] == ["ok", "ok", "oom", "skipped"]
    assert "L=32, which ran out of memory" in rows[3]["message"]


def test_plan_skips_what_cannot_fit(script):
    timing = script.Timing(min_repeats=3, max_repeats=20, min_time_s=0.25, max_call_s=3.0)
    ok = dict(script.new_row(dict(SPEC, impl="triton", L=4096)), median_ms=200.0)  # 0.2 s at L = 4096
    spec = dict(SPEC, impl="triton", L=8192)  # predicted 0.8 s per call
    assert script.plan(spec, [ok], timing, seconds_left=1000) is None
    assert script.plan(dict(spec, L=16384), [ok], timing, seconds_left=1000).startswith("predicted 3.2 s per call")
    # 0.8 s × (2 + 3 repeats + 50 autotuning calls) = 44 s
    assert "44 s > 30 s left" in script.plan(spec, [ok], timing, seconds_left=30, autotune_calls=50)
    assert script.plan(spec, [ok], timing, seconds_left=30) is None  # without autotuning it fits
    assert script.plan(spec, [], timing, seconds_left=0) == "time budget exhausted"


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
