"""Compile the kernels offline (no GPU) and read their SASS: registers, spills, cost per pair.

``triton.compile`` needs kernels that were *not* decorated under TRITON_INTERPRET, so run
this in a process without it, e.g. ``env -u TRITON_INTERPRET python -m
geoattn.kernels.offline 75 80 90``, which prints one line per kernel, launch shape and
variant. The tests (``tests/test_triton_compile.py``) call the same functions. Triton's
wheel carries ptxas and cuobjdump, so no CUDA toolkit is needed.
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile

import triton

from .configs import EXPLICIT_WARPS, GPU_SHAPES, NUM_STAGES, SMALL_SHAPES
from .small import _small_bwd_kernel, _small_fwd_kernel
from .streaming import _bwd_dkdv_kernel, _bwd_dq_kernel, _fwd_kernel

KERNELS = (_fwd_kernel, _bwd_dkdv_kernel, _bwd_dq_kernel, _small_fwd_kernel, _small_bwd_kernel)
"""The raw ``@triton.jit`` kernels (before autotuning), e.g. for offline compilation."""

_FLAGS = ("HAS_MASK", "HAS_SEQ", "HAS_CHAIN", "SPLIT", "EVEN_L")
_INTS = ("H", "L", "LP", "L_KEY", "BH_KEY", "BH")
_IDS = ("SEQ", "CHAIN")
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _shapes(kernel, all_shapes, block_size):
    """(constexprs, num_warps, pairs per thread per loop iteration or per program) per shape."""
    name = kernel.__name__
    if name in GPU_SHAPES:
        shapes = [(block_size, block_size, EXPLICIT_WARPS)] if block_size else GPU_SHAPES[name]
        shapes = shapes if all_shapes else shapes[:1]
        return [({"BLOCK_Q": bq, "BLOCK_K": bk}, w, bq * bk / (32 * w)) for bq, bk, w in shapes]
    lps = sorted(SMALL_SHAPES) if all_shapes else sorted(SMALL_SHAPES)[:1]
    out = []
    for lp in lps:
        heads, w = SMALL_SHAPES[lp][name]
        out.append(({"LP": lp, "HEADS": heads}, w, heads * lp * lp / (32 * w)))
    return out


def compile_signatures(has_mask: bool = True, even_l: bool = False, all_shapes: bool = False, *,
                       has_seq: bool = False, has_chain: bool = False, split: bool = False,
                       block_size: int | None = None, kernels=KERNELS):
    """Everything ``triton.compile(ASTSource(...))`` needs for each kernel in ``kernels``.

    Returns one dict per kernel and launch shape: the first shape of each kernel's list in
    :mod:`.configs`, all of them with ``all_shapes``, or only BLOCK_Q = BLOCK_K =
    ``block_size`` (the streaming kernels; the short-sequence ones keep their shapes). Each
    holds ``kernel`` (the JITFunction), ``signature`` (argument name → Triton type: planes
    and bias ``*fp32``, ids ``*i32``, sizes ``i32``), ``constexprs`` (the flags the kernel
    has), ``options`` (num_warps, num_stages, FMA fusion), ``attrs`` (the divisibility by 16
    that the launcher detects and specializes on, of every pointer and of LP) and
    ``pairs_per_thread`` (score pairs per thread in one loop iteration, or in the whole
    program of a short-sequence kernel). Only meaningful when the kernels were *not*
    decorated under TRITON_INTERPRET.
    """
    flags = {"HAS_MASK": has_mask, "HAS_SEQ": has_seq, "HAS_CHAIN": has_chain, "SPLIT": split, "EVEN_L": even_l}
    out = []
    for kernel in kernels:
        names = kernel.arg_names
        params = inspect.signature(kernel.fn).parameters  # also works on interpreted kernels
        constexpr_names = {n for n in names if "constexpr" in str(params[n].annotation)}
        signature = {n: "constexpr" if n in constexpr_names else "i32" if n in _INTS
                     else "*i32" if n in _IDS else "*fp32" for n in names}
        aligned = [i for i, n in enumerate(names) if signature[n].startswith("*") or signature.get(n) == "i32"
                   and n == "LP"]
        attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
        for shape, warps, pairs in _shapes(kernel, all_shapes, block_size):
            constexprs = {**{k: bool(v) for k, v in flags.items()}, **shape}
            out.append({
                "kernel": kernel,
                "signature": signature,
                "constexprs": {k: v for k, v in constexprs.items() if k in constexpr_names},
                "attrs": attrs,
                "options": {"num_warps": warps, "num_stages": NUM_STAGES, "enable_fp_fusion": True},
                "pairs_per_thread": pairs,
            })
    return out


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([os.path.join(_BIN, "cuobjdump"), flag, f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)


def _instructions(sass: str) -> list[tuple[int, str]]:
    """(address, text) of every SASS instruction."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2)))
    return out


def longest_loop(sass: str) -> int:
    """Instructions in the longest loop body: from a backward branch's target to the branch."""
    ins = _instructions(sass)
    best = 0
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            target = int(m.group(1), 16)
            best = max(best, sum(1 for a, _ in ins if target <= a <= addr))
    return best


def sass_stats(spec: dict, cc: int) -> dict:
    """Compile ``spec`` (from :func:`compile_signatures`) for sm_``cc``; read its SASS.

    Returns ``name``, ``regs`` (registers per thread), ``spills`` (STL/LDL: local-memory
    loads and stores), ``per_pair`` (instructions per score pair: the longest loop's for a
    streaming kernel, the whole program's, NOPs excluded, for a short-sequence one) and
    ``ptx_target``.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=spec["kernel"], signature=spec["signature"], constexprs=spec["constexprs"],
                    attrs=spec["attrs"])
    kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=spec["options"])
    cubin = kernel.asm["cubin"]
    sass = _cuobjdump(cubin, "-sass")
    regs = int(re.search(r"REG:(\d+)", _cuobjdump(cubin, "-res-usage")).group(1))
    if spec["kernel"].__name__ in GPU_SHAPES:
        work = longest_loop(sass)
    else:
        work = sum(1 for _, text in _instructions(sass) if not text.startswith("NOP"))
    ptx_target = next((line.split()[1] for line in kernel.asm.get("ptx", "").splitlines()
                       if line.startswith(".target")), None)
    return {"name": kernel.metadata.name, "cubin": len(cubin), "regs": regs,
            "spills": len(re.findall(r"\b(?:STL|LDL)\b", sass)),
            "per_pair": round(work / spec["pairs_per_thread"], 2), "ptx_target": ptx_target}


def main(argv: list[str]) -> None:  # pragma: no cover - a report for the docstrings
    targets = [int(a) for a in argv] or [75, 80, 90]
    variants = ({}, {"has_chain": True}, {"has_seq": True, "has_chain": True},
                {"has_mask": False, "even_l": True})
    for cc in targets:
        for variant in variants:
            for spec in compile_signatures(all_shapes=True, **variant):
                c = spec["constexprs"]
                shape = tuple(c[k] for k in ("BLOCK_Q", "BLOCK_K", "LP", "HEADS") if k in c)
                stats = sass_stats(spec, cc)
                print(f"sm_{cc} {spec['kernel'].__name__:18s} {shape!s:10s} w{spec['options']['num_warps']} "
                      f"{variant} regs {stats['regs']} spills {stats['spills']} per pair {stats['per_pair']}",
                      flush=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
