"""Constants, sizes per mode, the budget's cost model and the JSON writer shared by the sections."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
SCHEMA = "geoattn-gpu-check/2"
GRAD_NAMES = ("q_rot", "k_rot", "q_dist", "k_dist", "v", "rot_weight", "dist_weight")
TENSOR_NAMES = ("out", *(f"grad_{n}" for n in GRAD_NAMES))
CHECK_DTYPES = ("float32", "float16", "bfloat16")
CASES = ("ragged", "key_mask", "fully_masked_rows", "coincident_points", "large_coordinates")
IMPLS = ("triton", "flex", "naive", "chunked", "compiled")
# What the benchmark measures first: the kernel and its peer, then the PyTorch paths, then
# the torch.compile of naive, whose compilations cost the most minutes per row.
TIERS = (("triton", "flex"), ("naive", "chunked"), ("compiled",))
PASSES = ("fwd", "fwd+bwd")
# fp32 tolerance: that of the test suite's GPU test (tests/test_triton_kernels.py)
FP32_ATOL, FP32_RTOL = 5e-5, 1e-4
LARGE_OFFSET = 1e4  # Å, for the large-coordinates case
SECTIONS = ("preflight", "correctness", "bench", "tests")


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long each configuration is timed."""

    min_repeats: int  # timed calls at least
    max_repeats: int  # and at most
    min_time_s: float  # keep timing (up to max_repeats) until this much was timed
    max_call_s: float  # skip a configuration predicted to take longer per call


@dataclasses.dataclass(frozen=True)
class Costs:
    """The budget's cost model: seconds reserved before a row's first call, since none of
    it shows in the time per call that predicts the rest.

    - ``inductor_compile_s``: one Inductor compilation of torch.compile(naive), 20-60 s on
      a GPU machine. dynamic=True still specialises a size of 1, so the encoder (B = 4096)
      and the sweep (B = 1) compile apart, per dtype and pass.
    - ``flex_compile_s``: one compilation of torch.compile(flex_attention). It sees fp32
      tensors for every input dtype (geoattn.flex computes in fp32), so it compiles per
      pass and shape class: once for the encoder, and for the sweep at its first shape and
      again at its second (automatic dynamic shapes).
    - ``triton_compile_s``: one Triton kernel variant; the first autotuned call of a pass
      compiles every config of every kernel it launches (6, 6 and 5 configs), and the
      forward compiles once more when it splits the keys (small grids).
    - ``triton_bench_calls``: calls per config when the autotuner times a new key.
    - ``guess_pairs_per_s``: a first guess of each impl's forward throughput (a backward
      costs ``bwd_factor`` times more), for the first row of a series and for --plan.
    """

    inductor_compile_s: float
    flex_compile_s: float
    triton_compile_s: float
    triton_bench_calls: int
    guess_pairs_per_s: dict
    bwd_factor: float = 3.0


# Sizes per mode. "cuda" is the real run; "dry-run" the same code on the CPU, tiny.
MODES = {
    "cuda": {
        "check": {"B": 2, "H": 4, "L": 203, "L_ragged": 1000},
        "layer": {"B": 2, "L": 203, "d_model": 128, "n_heads": 8},
        "sweep": {"L": [512, 1024, 2048, 4096, 8192, 16384, 32768], "H": [256, 8], "B": 1},
        "encoder": None,  # bench_geometric.SHAPES["encoder"]: L = 16, H = 128, B = 4096
        "dtypes": ["float32", "bfloat16"],
        "timing": Timing(min_repeats=3, max_repeats=20, min_time_s=0.25, max_call_s=3.0),
        "costs": Costs(inductor_compile_s=40.0, flex_compile_s=25.0, triton_compile_s=1.0, triton_bench_calls=10,
                       guess_pairs_per_s={"triton": 1e11, "flex": 5e10, "naive": 1e10, "chunked": 5e9,
                                          "compiled": 2e10}),
        # Seconds per section, in the order run; what a section leaves unused goes to the next.
        # 8 minutes in all: a lent machine has about 15, with its start and the transfers.
        "budget_s": 480.0,
        "slots_s": {"preflight": 15.0, "correctness": 75.0, "bench:0": 200.0, "tests": 100.0, "bench:1": 80.0,
                    "report": 10.0},
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
        "costs": Costs(inductor_compile_s=2.0, flex_compile_s=2.0, triton_compile_s=0.0, triton_bench_calls=0,
                       guess_pairs_per_s={"triton": 1e4, "flex": 1e5, "naive": 1e6, "chunked": 1e6,
                                          "compiled": 1e5}),
        # Safety nets only: a dry run takes ~30 s of CPU time, but a shared CPU can stretch it.
        "budget_s": 900.0,
        "slots_s": {"preflight": 60.0, "correctness": 300.0, "bench:0": 200.0, "tests": 240.0, "bench:1": 90.0,
                    "report": 10.0},
        # One quick interpreted Triton test: the pytest path runs, the full suite does not.
        "pytest_filter": "L17-ragged-default-blocks",
        # Dynamo traces the function as on a GPU; Inductor's C++ build would take minutes on the CPU.
        "compile_backend": "eager",
    },
}


@functools.cache
def bench_geometric():
    """benchmarks/bench_geometric.py, whose helpers (inputs, versions, device name, failure
    classification) gpu_check shares."""
    path = REPO / "benchmarks" / "bench_geometric.py"
    spec = importlib.util.spec_from_file_location("bench_geometric", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


# Errors after which the CUDA context is unusable: every later CUDA call re-raises them.
STICKY = re.compile(r"illegal memory access|illegal instruction|misaligned address|unspecified launch failure|"
                    r"device-side assert|an illegal|CUDA error: launch failure", re.I)


def context_alive(device: str, message: str | None) -> bool:
    """Whether CUDA still works after an error with ``message``. On a GPU a tiny launch and a
    synchronize answer it; in a dry run (which has no context) the message decides."""
    if device != "cuda":
        return not (message and STICKY.search(message))
    import torch

    try:
        (torch.ones(1, device="cuda") + 1).item()
        torch.cuda.synchronize()
        return True
    except Exception:  # the context is gone: whatever it raises
        return False


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` whole, atomically: a crash between two writes leaves the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
