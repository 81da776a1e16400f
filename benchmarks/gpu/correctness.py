"""Correctness: impl="triton" against the fp64 naive reference, in a worker process.

The worker writes its JSON after every case, so a kernel that kills its process (an illegal
address makes the CUDA context unusable, a crash ends the process) costs the cases after
it, never the ones before, nor the benchmark in the parent process.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import CASES, CHECK_DTYPES, FP32_ATOL, FP32_RTOL, LARGE_OFFSET, REPO, TENSOR_NAMES, short_error, write_json
from .suites import run_in_group


def case_inputs(case: str, b: int, length: int, h: int, device: str):
    """fp64 inputs and key mask of one correctness case (seeded, so every run checks the same)."""
    import torch

    from geoattn.geometric import random_geometric_inputs

    seed = CASES.index(case)
    inputs = random_geometric_inputs(b, length, h, seed=seed, dist_scale=5.0, dtype=torch.float64, device=device)
    gen = torch.Generator().manual_seed(100 + seed)
    random_mask = (torch.rand(b, length, generator=gen) < 0.7).to(device)
    key_mask = None
    if case == "key_mask":
        key_mask = random_mask
    elif case == "fully_masked_rows":  # the last batch has no key: all its query rows are empty
        key_mask = random_mask.clone()
        key_mask[-1] = False
    elif case == "coincident_points":  # every q_d[i] = k_d[i], and one key on another query
        inputs[3] = inputs[2].clone()
        inputs[3][:, min(4, length - 1)] = inputs[2][:, length // 2]
    elif case == "large_coordinates":  # a whole structure 1e4 Å from the origin
        offset = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64, device=device) * LARGE_OFFSET
        inputs[2], inputs[3] = inputs[2] + offset, inputs[3] + offset
        key_mask = random_mask
    return inputs, key_mask


def forward_and_grads(impl: str, inputs, key_mask, cotangent):
    """Output and the gradients of <out, cotangent> with respect to all seven inputs."""
    import torch

    from geoattn.geometric import geometric_attention

    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = geometric_attention(*leaves, key_mask, impl=impl)
    grads = torch.autograd.grad(out, leaves, cotangent)
    return [out.detach(), *grads]


def compare(got, baseline, ref, dtype: str) -> dict:
    """The kernel's error (``got``) and the naive path's (``baseline``) against ``ref`` (fp64).

    FlashAttention's rule: err ≤ 2·baseline_err + atol, with atol twice the round-off of
    fp32 arithmetic at the reference's size (``r + 0.3 − 0.3 − r``). fp32 has its own
    elementwise tolerance. Both ratios are recorded for every dtype; ``rule`` says which
    decides ``pass``.
    """
    import torch

    got, baseline, ref = got.double(), baseline.double(), ref.double()
    diff = (got - ref).abs()
    err = float(diff.max()) if diff.numel() else 0.0
    base_err = float((baseline - ref).abs().max()) if diff.numel() else 0.0
    ref32 = ref.float()
    atol = 2 * float((ref32 + 0.3 - 0.3 - ref32).abs().max()) if diff.numel() else 0.0
    bound = 2 * base_err + atol
    fa_ratio = err / bound if bound > 0 else (0.0 if err == 0 else None)
    scale = float(ref.abs().max()) if diff.numel() else 0.0
    tolerance = FP32_ATOL * max(scale, 1.0) + FP32_RTOL * ref.abs()
    tol_ratio = float((diff / tolerance).max()) if diff.numel() else 0.0
    finite = bool(torch.isfinite(got).all())
    rule = "tolerance" if dtype == "float32" else "flash_attention_2x"
    decisive = tol_ratio if rule == "tolerance" else fa_ratio
    return {"max_abs_err": err, "baseline_max_abs_err": base_err, "ref_max_abs": scale, "fa_atol": atol,
            "fa_bound": bound, "fa_ratio": fa_ratio, "tolerance_ratio": tol_ratio, "rule": rule, "finite": finite,
            "pass": finite and decisive is not None and decisive <= 1.0}


def new_case(case: str, dtype: str, sizes: dict) -> dict:
    h, length = sizes["H"], sizes["L_ragged"] if case == "ragged" else sizes["L"]
    b = max(sizes["B"], 2) if case == "fully_masked_rows" else sizes["B"]  # an empty batch beside a full one
    return {"case": case, "dtype": dtype, "B": b, "L": length, "H": h, "tensors": {}, "pass": False, "error": None,
            "skipped": None}


def check_case(case: str, dtype: str, sizes: dict, device: str) -> dict:
    import torch

    record = new_case(case, dtype, sizes)
    b, length, h = record["B"], record["L"], record["H"]
    try:
        inputs64, key_mask = case_inputs(case, b, length, h, device)
        low = [t.to(getattr(torch, dtype)) for t in inputs64]
        gen = torch.Generator().manual_seed(7)
        cotangent = torch.randn(inputs64[4].shape, generator=gen, dtype=torch.float64).to(device=device,
                                                                                          dtype=low[4].dtype)
        # The reference sees exactly the low-precision inputs, upcast: only the arithmetic differs.
        ref = forward_and_grads("naive", [t.double() for t in low], key_mask, cotangent.double())
        baseline = forward_and_grads("naive", low, key_mask, cotangent)
        got = forward_and_grads("triton", low, key_mask, cotangent)
        for name, g, bl, r, inp in zip(TENSOR_NAMES, got, baseline, ref, [low[4], *low]):
            entry = compare(g, bl, r, dtype)
            entry["dtype_ok"] = g.dtype == inp.dtype
            entry["pass"] = entry["pass"] and entry["dtype_ok"]
            record["tensors"][name] = entry
        record["pass"] = all(e["pass"] for e in record["tensors"].values())
    except Exception as err:  # a crash is a failed check, recorded, not the end of the run
        record["error"] = short_error(err)
    return record


def new_invariance(sizes: dict) -> dict:
    return {"B": sizes["B"], "L": sizes["L"], "d_model": sizes["d_model"], "n_heads": sizes["n_heads"],
            "dtype": "float32", "max_update": None, "max_change": None, "tolerance": None,
            "max_change_one_residue_moved": None, "min_change_one_residue_moved": None, "pass": False, "error": None}


def check_invariance(sizes: dict, device: str) -> dict:
    """The layer on impl="triton", fp32: one global rotation + translation must not change its
    output, and moving one residue must.

    Both are measured against the size of the layer's update u = out − x (the residual x
    would hide a broken update): the global motion may change the output by at most
    1e-3·max|u| plus the round-off of adding x (4 fp32 ulps of max|out|); moving one residue
    3.7 Å must change it by more than 1e-2·max|u|.
    """
    import torch

    from geoattn.frames import random_rotation
    from geoattn.geometric import GeometricSelfAttention

    b, length = sizes["B"], sizes["L"]
    record = new_invariance(sizes)
    try:
        torch.manual_seed(0)
        layer = GeometricSelfAttention(sizes["d_model"], sizes["n_heads"], impl="triton").to(device)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(b, length, sizes["d_model"], generator=gen).to(device)
        rot = random_rotation(b, length, generator=gen).to(device)
        # a random walk with 3.8 Å steps, as consecutive Cα atoms: neighbours are close enough
        # to share attention, so moving one residue shows in the others' outputs
        trans = (torch.randn(b, length, 3, generator=gen) * 3.8 / 3**0.5).cumsum(1).to(device)
        mask = torch.ones(b, length, dtype=torch.bool, device=device)
        mask[-1, length - max(1, length // 4):] = False  # frameless residues at the end
        glob = random_rotation(generator=gen).to(device)
        shift = torch.tensor([30.0, -20.0, 10.0], device=device)
        moved = trans.clone()
        moved[0, length // 3] += torch.tensor([3.0, -2.0, 1.0], device=device)
        with torch.no_grad():
            out = layer(x, rot, trans, mask)
            out_global = layer(x, glob @ rot, trans @ glob.T + shift, mask)
            out_moved = layer(x, rot, moved, mask)
        update = float((out.double() - x.double()).abs().max())
        change = float((out_global - out).abs().max())
        tolerance = 1e-3 * update + 4 * torch.finfo(torch.float32).eps * float(out.abs().max())
        one = float((out_moved - out).abs().max())
        record.update(max_update=update, max_change=change, tolerance=tolerance, max_change_one_residue_moved=one,
                      min_change_one_residue_moved=1e-2 * update,
                      **{"pass": change <= tolerance and one > 1e-2 * update})
    except Exception as err:
        record["error"] = short_error(err)
    return record


def plan_cases(sizes: dict) -> list[tuple[str, str]]:
    return [(case, dtype) for case in CASES for dtype in CHECK_DTYPES]


def summarise(cases: list[dict], invariance: dict | None) -> dict:
    """The section's record: every case (skipped ones excluded from the verdict)."""
    checked = [c for c in cases if not c["skipped"]]
    ok = bool(checked) and all(c["pass"] for c in checked) and invariance is not None and invariance["pass"]
    return {"cases": cases, "invariance": invariance, "pass": ok}


def run_worker(mode: dict, device: str, out: Path, bf16: bool, inject: str | None = None, log=print) -> None:
    """The worker's loop: every case, then the invariance, the JSON rewritten after each."""
    cases = []
    for n, (case, dtype) in enumerate(plan_cases(mode["check"])):
        if inject == f"correctness:{n}":  # a kernel that takes its process down
            os.abort()
        if dtype == "bfloat16" and not bf16:
            record = new_case(case, dtype, mode["check"]) | {"pass": None,
                                                             "skipped": "this GPU has no bf16 arithmetic (sm < 8.0)"}
        else:
            record = check_case(case, dtype, mode["check"], device)
        cases.append(record)
        write_json(out, summarise(cases, None) | {"pass": None})
        log(f"correctness {case:<19}{dtype:<10}pass {record['pass']}"
            + (f"  {record['error']}" if record["error"] else "") + (f"  skipped: {record['skipped']}"
                                                                       if record["skipped"] else ""))
    invariance = check_invariance(mode["layer"], device)
    log(f"SE(3) invariance: pass {invariance['pass']}")
    write_json(out, summarise(cases, invariance))


def run_in_subprocess(script: Path, mode: dict, dry_run: bool, seconds: float, inject: str | None) -> dict:
    """Run the worker (``gpu_check.py --correctness-worker``) and read what it wrote, however it ended.

    Cases it never reached are recorded as errors that say why: a timeout, or how the
    worker exited (a negative code is the signal that ended it).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "correctness.json"
        cmd = [sys.executable, str(script), "--correctness-worker", str(out)] + (["--dry-run"] if dry_run else [])
        cmd += ["--inject-failure", inject] if inject else []
        code, output, duration = run_in_group(cmd, seconds, cwd=REPO, env=dict(os.environ))
        got = json.loads(out.read_text()) if out.is_file() else {"cases": [], "invariance": None}
    sys.stdout.write(output)
    sys.stdout.flush()
    cases = got["cases"]
    reason = None
    if code is None:
        reason = f"correctness worker stopped after {seconds:.0f} s (its time in the budget)"
    elif code != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])[-300:]
        reason = f"correctness worker exited with code {code} after {len(cases)} case(s): {tail}"
    for case, dtype in plan_cases(mode["check"])[len(cases):]:
        cases.append(new_case(case, dtype, mode["check"]) | {"error": reason or "not run"})
    invariance = got["invariance"] or new_invariance(mode["layer"]) | {"error": reason or "not run"}
    record = summarise(cases, invariance)
    record.update(worker={"returncode": code, "duration_s": round(duration, 1), "error": reason})
    return record
