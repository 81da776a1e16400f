"""Figures and tables that several chapters draw: an annotated attention heatmap, and a
small table that prints as fixed-width text and renders as HTML.

The table prints its numbers as text on purpose: nbval compares a cell's text output, so
a number in a printed table is checked on every CI run, while a rendered image is not.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import torch

__all__ = ["attention_heatmap", "Table", "fmt", "plot_backbone_frames"]


def fmt(value, digits: int = 3) -> str:
    """Format a number, a vector or a matrix (tensor, array or nested sequence) at fixed precision."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    if hasattr(value, "tolist"):  # tensors and arrays
        value = value.tolist()
        if not isinstance(value, list):
            return fmt(value, digits)
    return "[" + ", ".join(fmt(v, digits) for v in value) + "]"


class Table:
    """A table of already-formatted cells (other values go through :func:`fmt`).

    ``print(table)`` or the notebook's text output gives aligned columns, which nbval
    compares; Jupyter Book renders the HTML version.
    """

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence], *, digits: int = 3):
        self.header = [str(h) for h in header]
        self.rows = [[fmt(c, digits) for c in row] for row in rows]
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"rows[{i}] has {len(row)} cells, but header has {len(self.header)} columns")

    def __str__(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([line(self.header), line(["-" * w for w in widths]), *map(line, self.rows)])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        # HTML rather than Markdown: the book renders notebook Markdown output as
        # CommonMark, which has no tables.
        esc = lambda c: html.escape(c, quote=False)  # noqa: E731
        head = "".join(f"<th>{esc(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def attention_heatmap(weights, query_labels: Sequence[str], key_labels: Sequence[str] | None = None, *,
                      ax=None, title: str | None = None, digits: int = 2, cmap: str = "Blues",
                      colorbar: bool = True):
    r"""Draw attention weights :math:`\alpha_{ij}` (rows: queries i, columns: keys j) with
    each value written in its cell. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    w = torch.as_tensor(weights).detach().cpu().double()
    if w.dim() != 2:
        raise ValueError(f"weights must be a (queries, keys) matrix, got shape {tuple(w.shape)}")
    key_labels = query_labels if key_labels is None else key_labels
    if len(query_labels) != w.shape[0] or len(key_labels) != w.shape[1]:
        raise ValueError(
            f"query_labels/key_labels must have {w.shape[0]}/{w.shape[1]} entries, "
            f"got {len(query_labels)}/{len(key_labels)}"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * w.shape[1] + 1.6, 1.1 * w.shape[0] + 0.8))
    # Fixed 0..1 colour scale, so heatmaps of different heads can be compared by eye.
    image = ax.imshow(w.numpy(), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(w.shape[1]), labels=list(key_labels))
    ax.set_yticks(range(w.shape[0]), labels=list(query_labels))
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            value = w[i, j].item()
            ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center",
                    color="white" if value > 0.6 else "black")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_backbone_frames(backbone, rotations=None, translations=None, *, residues=None,
                         axis_length: float = 2.0, ax=None, title: str | None = None):
    """Draw a backbone's CA trace in 3-D with each residue's frame axes: x red, y green,
    z blue, as arrows of ``axis_length`` Å from CA. Returns the matplotlib 3-D Axes.

    ``backbone`` is a :class:`geoattn.Backbone`; the frames default to ``backbone.frames()``.
    ``residues`` (indices) limits which frames are drawn; the trace is always complete.
    """
    import matplotlib.pyplot as plt

    if rotations is None or translations is None:
        if rotations is not None or translations is not None:
            raise ValueError("rotations and translations must be given together (or neither)")
        rotations, translations = backbone.frames()
    ca = backbone.ca.detach().cpu().double()
    r = torch.as_tensor(rotations).detach().cpu().double()
    t = torch.as_tensor(translations).detach().cpu().double()
    if r.shape != (len(ca), 3, 3) or t.shape != (len(ca), 3):
        raise ValueError(f"rotations/translations must have shapes ({len(ca)}, 3, 3)/({len(ca)}, 3), "
                         f"got {tuple(r.shape)}/{tuple(t.shape)}")
    idx = torch.arange(len(ca)) if residues is None else torch.as_tensor(list(residues), dtype=torch.long)
    if ax is None:
        ax = plt.figure(figsize=(7, 7)).add_subplot(projection="3d")
    ax.plot(*ca.T.numpy(), color="0.45", lw=1.2, marker="o", ms=2.5, label="Cα trace")
    for k, (color, name) in enumerate(zip(("tab:red", "tab:green", "tab:blue"), "xyz")):
        # Column k of R is the frame's k-th axis in global coordinates.
        d = r[idx, :, k] * axis_length
        ax.quiver(*t[idx].T.numpy(), *d.T.numpy(), color=color, lw=1.5, label=f"{name} axis")
    # Equal scales on the three axes, so right angles look right.
    lo, hi = ca.min(0).values, ca.max(0).values
    mid, half = ((lo + hi) / 2).tolist(), (hi - lo).max().item() / 2 + axis_length
    ax.set(xlim=(mid[0] - half, mid[0] + half), ylim=(mid[1] - half, mid[1] + half),
           zlim=(mid[2] - half, mid[2] + half), xlabel="x (Å)", ylabel="y (Å)", zlabel="z (Å)")
    ax.set_box_aspect((1, 1, 1))
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return ax
