"""Smoke tests of benchmarks/bench_geometric.py: the JSON it writes, and OOM as a result."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_geometric.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_geometric", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_sweep_writes_the_documented_json(bench, tmp_path):
    out = tmp_path / "bench.json"
    result = bench.main(["--L", "16", "--H", "2", "--pass", "fwd", "--repeats", "1", "--min-time", "0",
                         "--impl", "naive", "chunked", "esm-layer", "layer", "--d-model", "8",
                         "--threads", "1", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert {"device", "versions", "git", "config", "memory_method", "note", "load_average_1min", "rows"} <= set(result)
    assert set(result["versions"]) == {"python", "torch", "triton", "geoattn"}
    assert len(result["git"]["commit"]) == 40 and isinstance(result["git"]["dirty"], bool)
    assert [(r["impl"], r["L"], r["pass"]) for r in result["rows"]] == [
        ("naive", 16, "fwd"), ("chunked", 16, "fwd"), ("esm-layer", 16, "fwd"), ("layer", 16, "fwd")]
    fields = {"impl", "L", "H", "B", "pass", "median_ms", "peak_mem_bytes", "pairs_per_s", "first_call_s",
              "warmup_s", "status"}
    for row in result["rows"]:
        assert row["status"] == "ok", row
        assert set(row) == fields | ({"d_model"} if row["impl"] in bench.LAYER_IMPLS else set())
        assert row["median_ms"] > 0 and row["peak_mem_bytes"] >= 0 and row["first_call_s"] > 0
        assert row["pairs_per_s"] == pytest.approx(row["B"] * row["H"] * row["L"] ** 2 / (row["median_ms"] / 1e3))


def test_out_of_memory_is_a_result_not_a_crash(bench, monkeypatch):
    def exhausted(impl, block_size):
        def fn(*args):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return fn

    monkeypatch.setattr(bench, "_attention_fn", exhausted)
    row = bench.measure("naive", 16, 2, 1, "fwd", repeats=1)
    assert row["status"] == "oom" and row["median_ms"] is None


def test_other_failures_are_recorded_as_errors(bench, monkeypatch):
    def broken(impl, block_size):
        def fn(*args):
            raise ValueError("block_size must be a power of two")
        return fn

    monkeypatch.setattr(bench, "_attention_fn", broken)
    row = bench.measure("triton", 16, 2, 1, "fwd+bwd", repeats=1)
    assert row["status"].startswith("error: ValueError")


def test_encoder_preset_is_esm3s_structure_encoder(bench):
    assert bench.SHAPES["encoder"] == {"L": [16], "H": [128], "B": 4096}
    args = bench.parse_args(["--shape", "encoder"])
    assert args.shape == "encoder"


def test_quiet_check_refuses_on_a_busy_machine(bench, monkeypatch, tmp_path):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    with pytest.raises(SystemExit, match="load average"):
        bench.main(["--L", "16", "--H", "2", "--quiet-check", "--device", "cpu", "--out", str(out)])
    assert not out.exists()


def test_flex_rows_time_the_forward_and_skip_the_cpu_backward(bench, tmp_path):
    """The FlexAttention peer: its first call (compilation) apart from the median; no
    backward pass on the CPU, so that row says why it did not run."""
    out = tmp_path / "bench.json"
    result = bench.main(["--L", "16", "--H", "2", "--repeats", "1", "--min-time", "0", "--impl", "flex",
                         "--threads", "1", "--device", "cpu", "--out", str(out)])
    fwd, bwd = result["rows"]
    assert (fwd["impl"], fwd["pass"], fwd["status"]) == ("flex", "fwd", "ok"), fwd
    assert fwd["first_call_s"] > 0 and fwd["median_ms"] > 0
    assert bwd["pass"] == "fwd+bwd" and bwd["status"] == "skipped: FlexAttention has no backward pass on the CPU"
    assert bwd["median_ms"] is None


def test_interleaved_rows_time_implementations_side_by_side(bench, tmp_path):
    out = tmp_path / "side.json"
    result = bench.main(["--interleave", "--L", "16", "--H", "2", "--pass", "fwd", "fwd+bwd", "--repeats", "3",
                         "--impl", "naive", "chunked", "flex", "--threads", "1", "--device", "cpu",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["config"]["interleave"] and "not measured" in result["memory_method"]
    rows = {(r["impl"], r["pass"]): r for r in result["rows"]}
    assert len(rows) == 6
    for (impl, pass_), row in rows.items():
        assert row["interleaved"] and row["peak_mem_bytes"] is None
        if impl == "flex" and pass_ == "fwd+bwd":
            assert row["status"].startswith("skipped") and row["times_ms"] == []
            continue
        assert row["status"] == "ok", row
        assert len(row["times_ms"]) == 3 and row["median_ms"] == sorted(row["times_ms"])[1]
        assert row["first_call_s"] > 0 and row["warmup_s"] > 0


def test_chunked_warms_up_where_it_compiles(bench):
    from geoattn.chunked import FUSED_MIN_LENGTH

    assert bench._warm_length("naive", 4096) == 64 and bench._warm_length("chunked", 100) == 64
    assert bench._warm_length("chunked", 4096) == bench._warm_length("layer", 4096) == FUSED_MIN_LENGTH
