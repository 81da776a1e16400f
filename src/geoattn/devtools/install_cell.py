"""The Colab install cell of every chapter, written once, and the tool that puts it there.

    python -m geoattn.devtools.install_cell            # rewrite cell 1 of every chapter in book/
    python -m geoattn.devtools.install_cell --check    # exit 1 if a chapter's cell differs
    python -m geoattn.devtools.install_cell book/03_rigid_frames.ipynb

The cell installs the release that the chapter was executed with, ``geoattn @
git+<repository.url>@v<version>`` (``_config.yml``, ``pyproject.toml``), only inside
Colab or on Kaggle (which sets ``KAGGLE_KERNEL_RUN_TYPE``), and keeps the platform's own
torch. Where that ref cannot be fetched (a fork without the
tag, a release not pushed yet), it installs the default branch instead and prints a
warning, so the chapter still runs and the reader knows that the library may differ.

Only the cell's source changes: its outputs, which nbval compares, are those of a run
outside Colab (the version line, which ``book/nbval_sanitize.cfg`` sanitizes), so no
chapter needs re-executing. Running the tool twice changes nothing the second time.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["ROOT", "repository_url", "project_version", "install_cell_source", "rewrite", "main"]

ROOT = Path(__file__).resolve().parents[3]

_TEMPLATE = '''\
# On Colab or Kaggle only: install the release of geoattn this chapter was
# written for (a pinned tag, so a saved copy keeps working; torch is kept).
# Every cell runs on a CPU. A GPU is used only by chapter 5's Triton cells,
# which then run compiled kernels instead of Triton's interpreter.
import os
import sys

if "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
    import subprocess
    release = "git+{url}@v{version}"
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if subprocess.run([*pip, f"geoattn @ {{release}}"]).returncode != 0:
        # The tag cannot be fetched: fall back to the default branch.
        print("WARNING: could not install geoattn v{version}; installing the "
              "default branch instead, which may differ from this chapter.",
              file=sys.stderr)
        default_branch = release.rsplit("@", 1)[0]
        subprocess.run([*pip, f"geoattn @ {{default_branch}}"], check=True)

import geoattn
print("geoattn", geoattn.__version__)'''


def repository_url(root: Path = ROOT) -> str:
    """``repository.url`` of ``_config.yml`` (the one place the address is written)."""
    text = (root / "_config.yml").read_text()
    found = re.search(r"(?m)^repository:\s*\n(?:[ \t]+#.*\n|[ \t]+\w+:.*\n)*?[ \t]+url:\s*(\S+)", text)
    if not found:
        raise ValueError(f"no repository.url in {root / '_config.yml'}")
    return found.group(1).strip("\"'").rstrip("/")


def project_version(root: Path = ROOT) -> str:
    """``version`` of ``pyproject.toml``."""
    found = re.search(r'(?m)^version = "([^"]+)"', (root / "pyproject.toml").read_text())
    if not found:
        raise ValueError(f"no version in {root / 'pyproject.toml'}")
    return found.group(1)


def install_cell_source(url: str | None = None, version: str | None = None) -> str:
    """The source of every chapter's first code cell."""
    return _TEMPLATE.format(url=url or repository_url(), version=version or project_version())


def rewrite(path: Path, source: str, *, check: bool = False) -> bool:
    """Give the first code cell of the notebook at ``path`` the source ``source``; return
    whether it differed. With ``check``, only report."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells if c.cell_type == "code"), None)
    if cell is None:
        raise ValueError(f"{path}: no code cell")
    if cell.source == source:
        return False
    if not check:
        cell.source = source
        nbformat.write(nb, path)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every .ipynb in book/")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a cell differs")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    source = install_cell_source()
    changed = [p for p in paths if rewrite(p, source, check=args.check)]
    for p in changed:
        print(f"{'differs' if args.check else 'rewrote'}: {p}")
    if not changed:
        print(f"{len(paths)} notebooks: the install cell is already the canonical one")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
