"""Pre-flight: what this machine has, checked and listed before anything runs.

A lent GPU machine is bare: its own Python, torch and Triton, hypothesis, and nothing the
run did not bring (as wheels, see benchmarks/README.md). So the run lists, in the JSON,
every module it imports with its version, whether biotite was pulled in (it must not be:
geoattn imports it only to read structures), the GPU, and the C compiler with Python's
headers, which Triton 3.6 needs to build its kernel launchers.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Modules the run imports (the benchmark, the correctness worker, the test suites) and what needs each.
REQUIRED = {
    "torch": "everything",
    "triton": "impl='triton'",
    "einops": "geoattn.geometric, geoattn.kernels.launch",
    "numpy": "geoattn's structure modules (imported by `geoattn.<name>` lookups in the tests)",
    "pytest": "the test suites",
    "hypothesis": "tests/test_triton_kernels.py",
}
# The geoattn modules gpu_check imports; importing them must not import biotite.
GEOATTN_MODULES = ("geoattn.geometric", "geoattn.flex", "geoattn.kernels.launch", "geoattn.frames")


def _module(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except Exception as err:  # a missing wheel, or one built for another Python
        return {"ok": False, "version": None, "error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
    return {"ok": True, "version": str(version), "error": None}


def _compiler() -> dict:
    """The C compiler Triton builds its launchers with, and Python's headers."""
    cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    include = sysconfig.get_paths().get("include")
    header = Path(include, "Python.h") if include else None
    version = None
    if cc:
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            version = None
    has_header = bool(header and header.is_file())
    return {"cc": cc, "cc_version": version, "python_h": str(header) if header else None,
            "python_h_found": has_header, "ok": bool(cc) and has_header}


def _gpu(device: str) -> dict:
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return {"available": torch.cuda.is_available(), "name": None, "compute_capability": None, "bf16": None}
    major, minor = torch.cuda.get_device_capability()
    return {"available": True, "name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            # Ampere and later compute in bf16; a T4 (7.5) only emulates it
            "bf16": major >= 8}


def preflight(device: str) -> dict:
    """Every check, with ``ok`` and the ``problems`` that would make the run fail."""
    modules = {name: dict(_module(name), needed_by=why) for name, why in REQUIRED.items()}
    geo = {}
    for name in GEOATTN_MODULES:
        entry = _module(name)
        geo[name] = {"ok": entry["ok"], "error": entry["error"]}
    biotite = {"installed": importlib.util.find_spec("biotite") is not None,
               "imported_by_the_run": sys.modules.get("biotite") is not None}
    record = {"python": sys.version.split()[0], "executable": sys.executable, "modules": modules,
              "geoattn_modules": geo, "biotite": biotite, "gpu": _gpu(device), "compiler": _compiler()}
    problems = [f"{name} missing ({m['error']}), needed by {m['needed_by']}"
                for name, m in modules.items() if not m["ok"]]
    problems += [f"{name} does not import: {g['error']}" for name, g in geo.items() if not g["ok"]]
    if biotite["imported_by_the_run"]:
        problems.append("importing the run's modules imported biotite, which the GPU machines lack")
    if device == "cuda":
        if not record["compiler"]["ok"]:
            problems.append("no C compiler with Python.h: Triton cannot build its launchers "
                            f"(cc {record['compiler']['cc']}, Python.h {record['compiler']['python_h']})")
        if not record["gpu"]["available"]:
            problems.append("torch sees no CUDA device")
    record.update(ok=not problems, problems=problems)
    return record
