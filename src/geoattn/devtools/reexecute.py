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
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["ENVIRONMENT", "apply_environment", "reexecute", "main"]

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

# Written by a run, not by an author.
_VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed")

BOOK = Path(__file__).resolve().parents[3] / "book"


def apply_environment(environ=os.environ) -> None:
    """Set :data:`ENVIRONMENT` in ``environ`` (kernels started later inherit it)."""
    environ.update(ENVIRONMENT)


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
    nbformat.write(nb, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoattn.devtools.reexecute", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapters to run (default: every book/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(BOOK.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            parser.error(f"{path}: no such notebook")
    apply_environment()
    for path in paths:
        print(f"re-executing {path} ...", flush=True)
        reexecute(path, timeout=args.timeout)
    print(f"done: {len(paths)} notebook(s); check with: python -m pytest {' '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
