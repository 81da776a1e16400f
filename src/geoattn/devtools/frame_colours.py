"""Chapter 3's words for the frame axes' colours, brought in line with the figures.

    python -m geoattn.devtools.frame_colours             # book/03_rigid_frames.ipynb
    python -m geoattn.devtools.frame_colours --check     # exit 1 if a phrase is still old

The frame axes used to be drawn red, green and blue; they are now drawn in Okabe and Ito's
vermillion, bluish green and blue, solid, dashed and dotted, with letters at the first
frame (``geoattn.plotting.FRAME_AXIS_COLORS``), so that no reader depends on telling red
from green. The chapter's prose, captions and alt text still name the old colours. This
rewrites those phrases only (markdown sources and the figure metadata of code cells, never
a code cell's source or outputs), and a second run changes nothing. The chapter's figures
themselves change only when it is re-executed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["REPLACEMENTS", "rewrite", "main"]

CHAPTER = Path(__file__).resolve().parents[3] / "book" / "03_rigid_frames.ipynb"

REPLACEMENTS = [
    # the prose before the backbone figure
    (r"$\mathbf{e}_x$ in red, $\mathbf{e}_y$ in green, $\mathbf{e}_z$ in blue.",
     r"$\mathbf{e}_x$ in vermillion (solid), $\mathbf{e}_y$ in bluish green (dashed), "
     r"$\mathbf{e}_z$ in blue (dotted), lettered at the first frame."),
    # the backbone figure's caption and alt text
    ("$x$ red, $y$ green, $z$ blue.",
     "$x$ vermillion (solid), $y$ bluish green (dashed), $z$ blue (dotted)."),
    ("with short red, green and blue arrows at every second residue showing its frame axes.",
     "with short vermillion (solid), bluish-green (dashed) and blue (dotted) arrows at every second "
     "residue showing its frame axes, lettered x, y, z at the first."),
    # the residue-frame diagram's alt text
    ("a red arrow e_x along the positive x axis, a green arrow e_y along y,",
     "a vermillion arrow e_x along the positive x axis, a bluish-green arrow e_y along y,"),
]


def _replace(text: str) -> str:
    for old, new in REPLACEMENTS:
        text = text.replace(old, new)
    return text


def rewrite(path: Path, *, check: bool = False) -> list[int]:
    """Rewrite the phrases in the notebook at ``path``; return the indices of the cells that
    held an old phrase. With ``check``, only report."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = []
    for i, cell in enumerate(nb.cells):
        before = (cell.source, json.dumps(cell.metadata, sort_keys=True))
        if cell.cell_type == "markdown":
            new_source = _replace(cell.source)
        else:
            new_source = cell.source
        new_meta = json.loads(_replace(before[1]))
        if (new_source, json.dumps(new_meta, sort_keys=True)) != before:
            changed.append(i)
            if not check:
                cell.source = new_source
                cell.metadata = nbformat.from_dict(new_meta)
    if changed and not check:
        nbformat.write(nb, path)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=CHAPTER)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    changed = rewrite(args.notebook, check=args.check)
    verb = "still old" if args.check else "rewrote"
    print(f"{args.notebook}: {verb} cells {changed}" if changed else f"{args.notebook}: up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
