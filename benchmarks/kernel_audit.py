"""Count the distinct Triton kernels a GPU would compile for a test run, without a GPU.

A pytest plugin: it records every launch that Triton's interpreter runs, then emulates
Triton's specialisation to count the distinct compiled kernels that the same launches
would need on a GPU, with and without the two savings (``do_not_specialize`` on H and L,
or B·H, H and L in the short kernels; pruning the autotuner's configs beyond the tuned
length)::

    PYTHONPATH=src:benchmarks python -m pytest tests/test_triton_kernels.py -m "not gpu" \\
        -p kernel_audit -p no:nbval -o addopts= -q

The emulation: an int argument that is not in ``do_not_specialize`` is specialised on
``== 1`` and on divisibility by 16; pointers are all freshly allocated, hence aligned;
constexprs and num_warps distinguish kernels. An autotuned launch (the interpreter's one
config) stands for every GPU config of that kernel, pruned or not, each with its own
EVEN_L; the key-split rule sees an H100's 132 SMs. Under the interpreter the gpu-marked
tests are skipped, so they are not counted.
"""
from __future__ import annotations

LAUNCHES: list[dict] = []
_CONSTS = {"BLOCK_Q", "BLOCK_K", "LP", "HEADS", "HAS_MASK", "HAS_SEQ", "HAS_CHAIN", "SPLIT", "EVEN_L"}
_SMALL = {"_small_fwd_kernel", "_small_bwd_kernel"}
_OPTIONS = {"num_warps", "num_stages", "enable_fp_fusion"}


def pytest_configure(config):
    from triton.runtime.interpreter import InterpretedFunction

    import geoattn.kernels.launch as tk

    tk._sm_count = lambda device: 132  # as on an H100, so that the forward splits its keys as there
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        LAUNCHES.append({"kernel": self.fn.__name__, "num_warps": kwargs.get("num_warps"),
                         "bools": {n: v for n, v in named.items() if isinstance(v, bool)},
                         "ints": {n: v for n, v in named.items() if type(v) is int and n not in _OPTIONS}})
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run


def _int_key(value: int) -> str:
    return "1" if value == 1 else "D" if value % 16 == 0 else "i"


def count(launches, unspecialized: dict, prune: bool) -> int:
    from geoattn.kernels.configs import EXPLICIT_WARPS, GPU_SHAPES

    kernels = set()
    for r in launches:
        name = r["kernel"]
        ints = {n: v for n, v in r["ints"].items() if n not in _CONSTS}
        base = tuple(sorted((n, "i" if n in unspecialized.get(name, ()) else _int_key(v)) for n, v in ints.items()))
        const = {**r["bools"], **{n: v for n, v in r["ints"].items() if n in _CONSTS}}
        if name in _SMALL or r["num_warps"] == EXPLICIT_WARPS:  # no autotuning: one kernel per launch shape
            kernels.add((name, base, tuple(sorted(const.items())), r["num_warps"]))
            continue
        shapes = GPU_SHAPES[name]
        if prune:
            fits = [s for s in shapes if max(s[0], s[1]) <= r["ints"]["L_KEY"]]
            shapes = fits or [min(shapes, key=lambda s: s[0] * s[1])]
        for bq, bk, warps in shapes:
            c = dict(const, BLOCK_Q=bq, BLOCK_K=bk)
            if "EVEN_L" in c:
                c["EVEN_L"] = r["ints"]["L"] % bk == 0
            kernels.add((name, base, tuple(sorted(c.items())), warps))
    return len(kernels)


def pytest_terminal_summary(terminalreporter):
    from geoattn.kernels.configs import GPU_SHAPES

    before = {k: ("L_KEY", "BH_KEY") for k in GPU_SHAPES}
    after = {**{k: ("H", "L", "L_KEY", "BH_KEY") for k in GPU_SHAPES}, **{k: ("BH", "H", "L") for k in _SMALL}}
    write = terminalreporter.write_line
    write(f"kernel audit: {len(LAUNCHES)} launches; distinct kernels a GPU would compile:")
    write(f"  H and L specialised, every config:    {count(LAUNCHES, before, False)}")
    write(f"  do_not_specialize on H and L:         {count(LAUNCHES, after, False)}")
    write(f"  configs pruned only:                  {count(LAUNCHES, before, True)}")
    write(f"  both (this tree):                     {count(LAUNCHES, after, True)}")
