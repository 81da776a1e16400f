"""The sections of benchmarks/gpu_check.py, one module each, in the order a run reaches them.

- :mod:`.common`: sizes per mode, timing, the budget's cost model, writing the JSON;
- :mod:`.preflight`: what the machine has (modules, GPU, compiler) before anything runs;
- :mod:`.correctness`: triton against the fp64 naive reference (run in a subprocess);
- :mod:`.suites`: the pytest suites, each in its own process group;
- :mod:`.bench`: the timed rows, their order by value and the budget's skips;
- :mod:`.report`: the printed plan and summary.

Nothing here imports torch or triton at module level: gpu_check.py sets TRITON_INTERPRET
(for a dry run) before anything may import triton.
"""
