"""Re-execute chapters exactly as nbval will re-run and compare them.

    python -m geoattn.devtools.reexecute                      # every chapter in book/
    python -m geoattn.devtools.reexecute book/03_rigid_frames.ipynb

Each notebook runs top to bottom in a fresh kernel of this Python, on the CPU, with the
environment of :data:`ENVIRONMENT` (Triton's interpreter, one thread for every math
library, so reductions round the same way on any machine). The per-cell timing metadata
that Jupyter writes is dropped, so re-running an unchanged chapter changes no byte of it.
``tests/conftest.py`` sets the same environment for nbval, from this module.

Re-execute a chapter after any change that alters what it prints: an edit of a library
function that the chapter shows (``show_source``), a change of numerics, or a new cell.

After writing a chapter, the command runs the **portability check** on it: nbval re-runs
the chapter under :data:`PORTABLE` (PyTorch's scalar kernels instead of the AVX2/AVX-512
ones, MKL's reproducible code path) and compares every output strictly with the one just
written. A cell whose output differs prints a round-off digit that another CPU would print
differently; the command names it, so that it is fixed before CI (``.ci/check`` runs the
same check over every chapter) or a contributor on another machine finds it.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["ENVIRONMENT", "PORTABLE", "VARIANT_VARIABLE", "apply_environment", "portability_failures",
           "reexecute", "main"]

#: Variables set for every chapter kernel, here and under nbval (tests/conftest.py).
ENVIRONMENT = {
    "TRITON_INTERPRET": "1",  # Triton kernels run in the interpreter on a CPU
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    # No progress bars in stored outputs: a text bar stores every update as a line
    # (chapter 6 had about 30), and a widget bar's output differs from run to run.
    "GEOATTN_PROGRESS": "0",
}

#: A second CPU code path for the portability check. Each switch was seen to change the
#: bits of float results on the project's machines (an AMD EPYC with AVX2): PyTorch's
#: scalar kernels change reductions, norms, softmax and even small matrix products; MKL's
#: conditional-numerical-reproducibility mode changes its GEMMs. `MKL_ENABLE_INSTRUCTIONS`
#: changed nothing there (MKL ignores it on AMD) and the thread count is pinned to 1 by
#: :data:`ENVIRONMENT` and by each chapter, so neither is a switch worth a second run.
PORTABLE = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
}

#: Set to ``portable`` to run nbval (``tests/conftest.py``) under :data:`PORTABLE`.
VARIANT_VARIABLE = "GEOATTN_CPU_VARIANT"

# Written by a run, not by an author.
_VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed")

BOOK = Path(__file__).resolve().parents[3] / "book"


def apply_environment(environ=os.environ) -> None:
    """Set :data:`ENVIRONMENT` in ``environ`` (kernels started later inherit it).

    With ``GEOATTN_CPU_VARIANT=portable`` in ``environ``, :data:`PORTABLE` is set on top.
    """
    environ.update(ENVIRONMENT)
    variant = environ.get(VARIANT_VARIABLE, "")
    if variant == "portable":
        environ.update(PORTABLE)
    elif variant:
        raise ValueError(f"{VARIANT_VARIABLE}: unknown variant {variant!r}; the one known is 'portable'")


_FAILED = re.compile(r"^FAILED \S*::(Cell \d+)", re.MULTILINE)


def portability_failures(paths, *, timeout: int = 300) -> list[tuple[Path, str]]:
    """Run nbval over each of ``paths`` under :data:`PORTABLE`; return the (notebook, cell)
    pairs whose output differs from the stored one.

    nbval compares strictly, as in CI. The environment is passed to the kernels directly,
    so the result does not depend on which conftest.py pytest happens to load.
    """
    env = dict(os.environ, **ENVIRONMENT, **PORTABLE, **{VARIANT_VARIABLE: "portable"})
    root = Path(__file__).resolve().parents[3]
    failed = []
    for path in map(Path, paths):
        # -c: the project's nbval options and sanitize file, wherever the notebook lies
        cmd = [sys.executable, "-m", "pytest", "-c", str(root / "pyproject.toml"), "--rootdir", str(root),
               str(path.resolve()), "-q", "-p", "no:cacheprovider", f"--nbval-cell-timeout={timeout}", "-rf"]
        run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        cells = _FAILED.findall(run.stdout)
        if run.returncode not in (0, 1) or (run.returncode == 1 and not cells):
            raise RuntimeError(f"the portability check of {path} could not run:\n"
                               f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
        failed += [(path, cell) for cell in cells]
    return failed


def reexecute(path: Path, *, timeout: int = 300) -> None:
    """Run the notebook at ``path`` in a fresh kernel and write it back in place."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    for cell in nb.cells:
        for key in _VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        copy_alt_text(cell)
    nbformat.write(nb, path)


_IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def copy_alt_text(cell) -> None:
    """Give each image output of ``cell`` the alt text of its figure metadata.

    The book reads it from the cell (``mystnb.image.alt``); Jupyter, Colab and nbconvert
    read it from the output's own metadata, so a screen reader there gets it too.
    """
    alt = cell.get("metadata", {}).get("mystnb", {}).get("image", {}).get("alt")
    if not alt or cell.get("cell_type") != "code":
        return
    for output in cell.get("outputs", []):
        for mime in _IMAGE_TYPES:
            if mime in output.get("data", {}):
                output.setdefault("metadata", {}).setdefault(mime, {})["alt"] = alt


def describe_cell(notebook: str | Path, nbval_name: str) -> str:
    """Where nbval's ``Cell N`` (the N-th *code* cell) is: its index and its first line."""
    import nbformat

    number = int(nbval_name.split()[1])
    cells = nbformat.read(notebook, as_version=4).cells
    index = [i for i, c in enumerate(cells) if c.cell_type == "code"][number]
    first = next((line for line in cells[index].source.splitlines() if line.strip()), "")
    return f"{Path(notebook).name}, {nbval_name} (cell index {index}: {first[:60]!r})"


def _warn(failures) -> None:
    for notebook, cell in failures:
        print(f"  warning: {describe_cell(notebook, cell)}: its output differs under another CPU "
              "code path; print a bound or a rounded value, not round-off digits (CONTRIBUTING.md)",
              flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoattn.devtools.reexecute", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapters to run (default: every book/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-portability", action="store_true",
                      help="skip the second run under another CPU code path (PORTABLE)")
    mode.add_argument("--check", action="store_true",
                      help="execute nothing; only run the portability check on the stored chapters (CI)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(BOOK.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            parser.error(f"{path}: no such notebook")
    apply_environment()
    if not args.check:
        for path in paths:
            print(f"re-executing {path} ...", flush=True)
            reexecute(path, timeout=args.timeout)
        print(f"done: {len(paths)} notebook(s); check with: python -m pytest {' '.join(str(p) for p in paths)}")
    if args.no_portability:
        return 0
    print(f"portability check of {len(paths)} notebook(s) under "
          f"{', '.join(f'{k}={v}' for k, v in PORTABLE.items())} ...", flush=True)
    failures = portability_failures(paths, timeout=args.timeout)
    _warn(failures)
    if failures:
        print(f"{len(failures)} cell(s) print output that depends on the CPU code path", flush=True)
        return 1
    print("portability check passed: every output is the same under both CPU code paths", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
