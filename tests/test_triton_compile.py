"""Every Triton kernel compiles offline, without a GPU, to a cubin for Colab's T4 (sm_75)
and for the H100 (sm_90), in the first launch shape of its autotuning list.

``TRITON_INTERPRET=1`` (set by conftest on machines without CUDA) makes ``@triton.jit``
return interpreted functions at decoration time, which cannot be compiled. So the
compilation runs in a subprocess whose environment has no TRITON_INTERPRET, with its own
Triton cache directory so that nothing is served from an earlier run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

TARGETS = (75, 90)
# The general path (key mask, bounds checks) and the fast path (no mask, L divisible by the
# blocks). Every kernel reads and writes fp32 planes whatever the input dtype, so there is
# one dtype variant.
VARIANTS = ({"has_mask": True, "even_l": False}, {"has_mask": False, "even_l": True})

SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import geoattn.triton_kernels as tk

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def local_memory_ops(cubin):
    # STL/LDL in the SASS: registers spilled to local memory
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    return len(re.findall(r"\b(?:STL|LDL)\b", sass))


assert not tk.INTERPRETED, "kernels were decorated under TRITON_INTERPRET"
targets, variants = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for cc in targets:
    for variant in variants:
        for spec in tk.compile_signatures(**variant):
            src = ASTSource(fn=spec["kernel"], signature=spec["signature"],
                            constexprs=spec["constexprs"], attrs=spec["attrs"])
            kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=spec["options"])
            print(json.dumps({"cc": cc, **variant, "name": kernel.metadata.name,
                              "cubin": len(kernel.asm.get("cubin", b"")),
                              "spills": local_memory_ops(kernel.asm["cubin"]),
                              "ptx_target": next((l.split()[1] for l in kernel.asm.get("ptx", "").splitlines()
                                                  if l.startswith(".target")), None)}), flush=True)
"""


def test_triton_wheel_ships_ptxas():
    """Offline compilation needs no CUDA toolkit: Triton's wheel carries its own ptxas."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    assert ptxas.is_file(), f"missing {ptxas}: Triton cannot assemble cubins offline"
    assert os.access(ptxas, os.X_OK), f"{ptxas} is not executable"
    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "ptxas" in version.stdout.lower(), version.stderr


def test_every_kernel_compiles_for_sm75_and_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(TARGETS), json.dumps(VARIANTS)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, f"offline compilation failed:\n{res.stderr[-4000:]}"
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]

    from geoattn.triton_kernels import KERNELS

    names = [k.__name__ for k in KERNELS]
    expected = {(cc, v["has_mask"], v["even_l"], n) for cc in TARGETS for v in VARIANTS for n in names}
    got = {(r["cc"], r["has_mask"], r["even_l"], r["name"]) for r in results}
    assert got == expected, f"missing compilations: {sorted(expected - got)}"
    for r in results:
        assert r["cubin"] > 1000, f"empty cubin for {r}"
        # the launch shapes were chosen so that no kernel spills registers (see GPU_SHAPES)
        assert r["spills"] == 0, f"register spills (STL/LDL) in {r}"
        assert r["ptx_target"] in (f"sm_{r['cc']}", f"sm_{r['cc']}a"), r  # sm_90a: Hopper's arch-specific ISA
