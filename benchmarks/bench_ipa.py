"""Benchmark IPA through SDPA against ESM3's geometric attention, on the CPU.

Times one forward pass (no gradient) of three layers of the same size at each length L:

- ``ipa_sdpa``: ``geoattn.InvariantPointAttention(impl="sdpa")``, whose attention is one
  call of ``torch.nn.functional.scaled_dot_product_attention`` on the augmented vectors;
- ``esm_naive``: ``geoattn.GeometricSelfAttention(impl="naive")``, which materializes the
  (H, L, L) scores and ESM's (H, L, L, 3) differences;
- ``esm_chunked``: the same layer with ``impl="chunked"`` (online softmax over key blocks).

Time: median of ``--repeats`` runs after one warm-up run, ``time.perf_counter``. Peak
memory: ``geoattn.peak_tensor_memory`` over one run, the bytes of live tensors that the
layer allocates (deterministic; a fused kernel's internal scratch is not visible to it).
Ratios are taken within one run: the machine is shared, so absolute times are noisy and
the JSON records the 1-minute load average before and after.

    python benchmarks/bench_ipa.py --out src/geoattn/data/bench_ipa.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

LAYERS = ("ipa_sdpa", "esm_naive", "esm_chunked")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _layer(name: str, d_model: int, heads: int):
    import geoattn

    if name == "ipa_sdpa":
        return geoattn.InvariantPointAttention(d_model, heads, impl="sdpa")
    return geoattn.GeometricSelfAttention(d_model, heads, impl=name.removeprefix("esm_"))


def _inputs(length: int, d_model: int, seed: int):
    import torch

    import geoattn

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, d_model, generator=gen)
    rotations = geoattn.random_rotation(1, length, generator=gen)
    translations = 3.8 * torch.randn(1, length, 3, generator=gen).cumsum(1)  # a random walk of Cα steps
    return x, rotations, translations


def measure(name: str, length: int, *, d_model: int, heads: int, repeats: int, seed: int = 0) -> dict:
    import torch

    import geoattn

    torch.manual_seed(seed)
    layer = _layer(name, d_model, heads).eval()
    args = _inputs(length, d_model, seed)
    with torch.no_grad():
        layer(*args)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            layer(*args)
            times.append(time.perf_counter() - start)
        peak = geoattn.peak_tensor_memory(layer, *args).peak_bytes
    return {"layer": name, "L": length, "median_s": statistics.median(times), "times_s": times,
            "peak_tensor_bytes": peak}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="sequence lengths")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the machine is shared)")
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    a = p.parse_args(argv)

    import torch

    import geoattn

    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()[0]
    rows = []
    for length in a.L:
        for name in a.layers:
            row = measure(name, length, d_model=a.d_model, heads=a.heads, repeats=a.repeats)
            print(f"L={length:5d} {name:12s} {row['median_s'] * 1e3:10.1f} ms "
                  f"{row['peak_tensor_bytes'] / 2**20:10.1f} MiB", flush=True)
            rows.append(row)
    result = {
        "what": "forward pass, no gradient, batch 1; IPA via SDPA vs ESM3's geometric attention",
        "config": {"d_model": a.d_model, "heads": a.heads, "ipa": {"d_head": 16, "n_query_points": 4,
                                                                   "n_value_points": 8, "d_pair": None},
                   "esm": {"num_vector_messages": 1}, "L": a.L, "repeats": a.repeats, "threads": a.threads,
                   "dtype": "float32"},
        "memory_method": "geoattn.peak_tensor_memory: peak bytes of live tensors during one forward",
        "git_commit": _git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "geoattn": geoattn.__version__},
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores",
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }
    text = json.dumps(result, indent=1)
    if a.out is None:
        print(text)
    else:
        a.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
