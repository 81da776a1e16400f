"""Every Triton kernel compiles offline, without a GPU, for Colab's T4 (sm_75), the A100
(sm_80) and the H100 (sm_90): no register spills, register headroom on sm_75, and the
forward's cost per pair with chain ids at most 3 instructions above the plain forward's.

``TRITON_INTERPRET=1`` (set by conftest on machines without CUDA) makes ``@triton.jit``
return interpreted functions at decoration time, which cannot be compiled. So the
compilation runs in a subprocess whose environment has no TRITON_INTERPRET, with its own
Triton cache directory so that nothing is served from an earlier run.

Compiling is slow (seconds per kernel), so this covers the first launch shape of each
kernel in the variant with every flag on (key mask, sequence and chain ids, key splits),
which has the most code and the most live registers, plus the explicit block sizes. The
full matrix (every shape, variant and target) is ``python -m geoattn.kernels.offline``,
whose numbers the kernels' docstrings record.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

# Needs no GPU: benchmarks/gpu_check.py leaves it out of its GPU run (-m "not offline").
pytestmark = pytest.mark.offline

from geoattn.contract import TRITON_BLOCK_SIZES  # noqa: E402

ALL_FLAGS = {"has_mask": True, "has_seq": True, "has_chain": True, "split": True}
STREAMING = ["_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"]
# (label, cc, compile_signatures arguments, kernel names or None for all)
JOBS = [
    ("all-flags", 75, ALL_FLAGS, None),
    ("all-flags", 90, ALL_FLAGS, None),
    ("all-flags", 80, ALL_FLAGS, ["_fwd_kernel", "_bwd_dq_kernel"]),
    ("plain", 90, {"has_mask": False, "even_l": True}, ["_fwd_kernel"]),
    ("chain", 90, {"has_mask": False, "even_l": True, "has_chain": True}, ["_fwd_kernel"]),
    ("explicit", 75, {**ALL_FLAGS, "block_size": max(TRITON_BLOCK_SIZES)}, STREAMING),
    ("explicit", 90, {**ALL_FLAGS, "block_size": max(TRITON_BLOCK_SIZES)}, ["_bwd_dkdv_kernel"]),
]
# sm_75 allows 255 registers per thread; a kernel this close to the limit is one change
# away from spilling on Colab's T4.
SM75_MAX_REGS = 232
# Instructions per pair that chain ids may add to the forward's key loop (a compare, a select, one spare).
CHAIN_EXTRA_PER_PAIR = 3.0

SCRIPT = r"""
import json, sys
from geoattn.kernels import offline

assert type(offline.KERNELS[0]).__name__ != "InterpretedFunction", "decorated under TRITON_INTERPRET"
for label, cc, kwargs, names in json.loads(sys.argv[1]):
    kernels = [k for k in offline.KERNELS if names is None or k.__name__ in names]
    for spec in offline.compile_signatures(kernels=kernels, **kwargs):
        stats = offline.sass_stats(spec, cc)
        print(json.dumps({"label": label, "cc": cc, "kernel": spec["kernel"].__name__, **stats}), flush=True)
"""


def test_triton_wheel_ships_ptxas_and_cuobjdump():
    """Offline compilation needs no CUDA toolkit: Triton's wheel carries its own ptxas and
    cuobjdump (to read the SASS)."""
    for tool in ("ptxas", "cuobjdump"):
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
        assert path.is_file(), f"missing {path}: Triton cannot assemble or read cubins offline"
        assert os.access(path, os.X_OK), f"{path} is not executable"
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "ptxas" in version.stdout.lower(), version.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(JOBS)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"offline compilation failed:\n{res.stderr[-4000:]}"
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_compiles_for_sm75_sm80_and_sm90_without_spills(compiled):
    from geoattn.kernels.launch import KERNELS

    got = {(r["label"], r["cc"], r["kernel"]) for r in compiled}
    for label, cc, _, names in JOBS:
        for name in names or [k.__name__ for k in KERNELS]:
            assert (label, cc, name) in got, f"missing compilation {label} sm_{cc} {name}"
    for r in compiled:
        assert r["cubin"] > 1000, f"empty cubin for {r}"
        assert r["spills"] == 0, f"register spills (STL/LDL) in {r}"
        assert r["ptx_target"] in (f"sm_{r['cc']}", f"sm_{r['cc']}a"), r  # sm_90a: Hopper's arch-specific ISA


def test_sm75_keeps_register_headroom(compiled):
    for r in compiled:
        if r["cc"] == 75:
            assert r["regs"] <= SM75_MAX_REGS, f"{r['kernel']} ({r['label']}) uses {r['regs']} registers on sm_75"


def test_chain_ids_cost_the_forward_at_most_three_instructions_per_pair(compiled):
    """Per (i, j) pair in the forward's key loop, read from the SASS: chain ids add a
    compare and a select, 2 instructions per pair; 3 allows one more for scheduling.

    An absolute margin, not a ratio: the plain loop's length depends on the Triton version
    (21.19 instructions per pair under Triton 3.6, about 23.6 under 3.9), the chain's two
    instructions do not, so a 10% ratio failed on 3.6 (+2.19, i.e. +10.3%)."""
    cost = {r["label"]: r["per_pair"] for r in compiled if r["kernel"] == "_fwd_kernel" and r["cc"] == 90}
    assert 15 < cost["plain"] <= 27, cost  # the plain loop: about 21-27 instructions per pair
    assert cost["plain"] < cost["chain"] <= cost["plain"] + CHAIN_EXTRA_PER_PAIR, cost
