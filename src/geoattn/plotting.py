"""Figures and tables that several chapters draw: an annotated attention heatmap, a small
table that prints as fixed-width text and renders as HTML, the book's figure style, and a
3-D view of a backbone's frames that a reader can rotate in the browser.

The table prints its numbers as text on purpose: nbval compares a cell's text output, so
a number in a printed table is checked on every CI run, while a rendered image is not.
"""
from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence

import torch

__all__ = ["attention_heatmap", "Table", "fmt", "plot_backbone_frames", "use_book_style", "BackboneView",
           "backbone_view", "FRAME_AXIS_COLORS", "MIN_TEXT_PX", "COLUMN_PX", "readable_text", "book_png"]

# Frame axes x, y, z in Okabe and Ito's palette (vermillion, bluish green, blue): they stay
# apart under deuteranopia and protanopia, unlike matplotlib's tab:red/tab:green. They
# keep the red-green-blue order that readers know, and the axes are also labelled.
FRAME_AXIS_COLORS = ("#D55E00", "#009E73", "#0072B2")

# The smallest text a figure may show, in CSS pixels at the size the page renders it, and
# the width of the book's text column at 1280 px (measured in Chromium), which a wider
# figure is shrunk to. The book's extension (book/_ext/geoattn_book_fixes.py) keeps a
# figure from shrinking further on a phone, and tests/test_browser.py checks both, from the
# numbers book_png writes into each PNG.
MIN_TEXT_PX = 9.0
COLUMN_PX = 680

# Characters of a formatted number, a vector of numbers or a range ("1–18", "96°", "< 1e-10").
_NUMBER_CHARS = set("0123456789.,+-−eE[]() <>%×°–")


def _is_number(cell: str) -> bool:
    core = re.sub(r"\b(inf|nan)\b", "0", cell.strip())
    return any(ch.isdigit() for ch in core) and set(core) <= _NUMBER_CHARS


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
        # CommonMark, which has no tables. Inline styles, so the table reads the same in
        # Jupyter and Colab as in the book: padding, a rule under the header and at the
        # end, numbers right-aligned in tabular figures.
        esc = lambda c: html.escape(c, quote=False)  # noqa: E731
        pad = "padding:0.25em 0.75em;"
        numeric = [all(_is_number(row[i]) or row[i] in ("", "-") for row in self.rows) and
                   any(_is_number(row[i]) for row in self.rows) for i in range(len(self.header))]
        align = ["text-align:right;" if n else "text-align:left;" for n in numeric]
        head = "".join(f'<th style="{pad}{a}border-bottom:1.5px solid currentColor;">{esc(h)}</th>'
                       for h, a in zip(self.header, align))
        body = "".join("<tr>" + "".join(f'<td style="{pad}{a}">{esc(c)}</td>' for c, a in zip(row, align))
                       + "</tr>" for row in self.rows)
        style = ("border-collapse:collapse;font-variant-numeric:tabular-nums;"
                 "border-bottom:1.5px solid currentColor;margin:0.5em 0;")
        return (f'<table class="geoattn-table" style="{style}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")


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
    """Draw a backbone's CA trace in 3-D with each residue's frame axes (x, y, z in
    :data:`FRAME_AXIS_COLORS`, solid, dashed and dotted, the first frame's tips labelled),
    as arrows of ``axis_length`` Å from CA. Returns the matplotlib 3-D Axes.

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
    for k, (color, name, style) in enumerate(zip(FRAME_AXIS_COLORS, "xyz", ("solid", "dashed", "dotted"))):
        # Column k of R is the frame's k-th axis in global coordinates.
        d = r[idx, :, k] * axis_length
        ax.quiver(*t[idx].T.numpy(), *d.T.numpy(), color=color, lw=1.5, linestyles=style,
                  label=f"{name} axis")
        if len(idx):  # colour is not the only cue: the letter at the first frame's tip
            tip = (t[idx[0]] + 1.25 * d[0]).tolist()
            ax.text(*tip, name, color=color, fontweight="bold", ha="center", va="center")
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


def use_book_style() -> None:
    """The book's figure style: 2× PNG in the notebook (sharp on high-density screens),
    figures sized for the book's column at 100 dpi, and fonts that stay readable there.

    Call it once per chapter, after importing matplotlib. Outside IPython only the
    matplotlib settings apply.
    """
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 100, "figure.figsize": (6.4, 4.0), "font.size": 10.5,
        "axes.titlesize": 11, "axes.labelsize": 10.5, "legend.fontsize": 9,
        "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "figure.constrained_layout.use": False,
        # Deterministic SVG, should a figure be saved as SVG.
        "svg.hashsalt": "geoattn", "svg.fonttype": "path",
    })
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python: nothing to configure
        return
    ip = get_ipython()
    if ip is not None:
        # "retina": a PNG at twice the resolution, displayed at its nominal size. PNG
        # rather than SVG because nbval compares SVG text, in which round-off moves paths.
        set_matplotlib_formats("retina")
        from matplotlib.figure import Figure

        # The same PNG, with the text floor and the numbers the book's checks read.
        ip.display_formatter.formatters["image/png"].for_type(Figure, book_png)


def readable_text(fig, *, min_px: float = MIN_TEXT_PX, column_px: float = COLUMN_PX) -> float:
    """Enlarge every text of ``fig`` that would render below ``min_px`` CSS pixels once the
    figure is shrunk to the column (``column_px``); return the smallest text size, in CSS
    pixels at the figure's own size.

    A chapter may pass ``fontsize=7`` to a legend; this is the floor under such choices,
    applied when the figure is drawn for the notebook, so a re-executed chapter is readable.
    """
    from matplotlib.text import Text

    width_px = fig.get_size_inches()[0] * fig.dpi
    shrink = min(1.0, column_px / width_px)
    floor_pt = min_px / shrink * 72.0 / fig.dpi
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for t in texts:
        if t.get_fontsize() < floor_pt:
            t.set_fontsize(floor_pt)
    if not texts:
        return float("inf")
    return min(t.get_fontsize() for t in texts) * fig.dpi / 72.0


def book_png(fig):
    """The notebook's PNG of ``fig``: twice the resolution ("retina") and its nominal size
    in the metadata, as IPython's retina format gives, with the text made readable
    (:func:`readable_text`). The PNG carries, as text chunks, its width in CSS pixels and
    its smallest text in CSS pixels at that width, so the built book can be checked.
    """
    import io

    if not fig.axes and not fig.texts:
        return None
    min_px = readable_text(fig)
    # bbox_inches="tight" (as IPython's inline figures) may change the width, and the
    # width is what the reader's screen scales by: measure it on the PNG itself.
    buf = io.BytesIO()
    kw = dict(format="png", dpi=2 * fig.dpi, bbox_inches="tight", facecolor=fig.get_facecolor(),
              edgecolor=fig.get_edgecolor())
    fig.canvas.print_figure(buf, **kw)
    width, height = _png_size(buf.getvalue())
    css_w, css_h = width // 2, height // 2
    meta = {"geoattn:css-width": str(css_w), "geoattn:min-text-px": f"{min_px:.2f}"}
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, metadata=meta, **kw)
    return buf.getvalue(), {"width": css_w, "height": css_h}


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (what :func:`book_png` wrote), as a dict."""
    out, pos = {}, 8
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + n].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        if kind == b"IEND":
            break
        pos += 12 + n
    return out


class BackboneView:
    """A backbone's Cα trace with its residue frames, as a self-contained HTML canvas that
    a reader rotates by dragging (mouse or touch). No script is loaded from anywhere: the
    viewer's JavaScript is written into the HTML, so it works offline, in the built book,
    in Jupyter and in Colab.

    Its text form (what nbval compares and what a terminal shows) is a one-line summary.
    The HTML is deterministic: a fixed element id and coordinates rounded to 0.01 Å.
    """

    def __init__(self, ca, axes, *, names: Sequence[str], element_id: str, axis_length: float,
                 title: str):
        self.ca, self.axes, self.names = ca, axes, list(names)
        self.element_id, self.axis_length, self.title = element_id, axis_length, title

    def __repr__(self) -> str:
        return (f"<3-D view {self.element_id!r}: Cα trace of {len(self.ca)} residues, "
                f"{len(self.axes)} frames (x solid, y dashed, z dotted); drag to rotate>")

    def _repr_html_(self) -> str:
        data = {"ca": self.ca, "axes": self.axes, "names": self.names, "len": self.axis_length}
        payload = json.dumps(data, separators=(",", ":"))
        eid = html.escape(self.element_id)
        return _VIEW_TEMPLATE.replace("@ID@", eid).replace("@TITLE@", html.escape(self.title)) \
                             .replace("@DATA@", payload.replace("</", "<\\/"))


def backbone_view(backbone, rotations=None, translations=None, *, residues=None, axis_length: float = 2.5,
                  element_id: str = "geoattn-backbone-view", title: str = "") -> BackboneView:
    """A rotatable 3-D view of ``backbone`` (a :class:`geoattn.Backbone`): its Cα trace and,
    for the residues in ``residues`` (default: all), the frame axes of length ``axis_length`` Å.

    ``element_id`` must be unique on the page; it is fixed (not random) so that the cell's
    output is the same on every run.
    """
    if not isinstance(element_id, str) or not re.fullmatch(r"[A-Za-z][\w-]*", element_id):
        raise ValueError(f"element_id must be a letter followed by letters, digits, _ or -, got {element_id!r}")
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
    idx = range(len(ca)) if residues is None else [int(i) for i in residues]
    centre = ca.mean(0)
    rnd = lambda x: [round(float(v), 2) + 0.0 for v in x]  # noqa: E731  (+0.0: no "-0.0")
    # Column k of R_i is the frame's k-th axis in global coordinates.
    axes = [[rnd(t[i] - centre), *(rnd(r[i, :, k]) for k in range(3))] for i in idx]
    names = [f"{n} {i}" for n, i in zip(backbone.res_names, backbone.res_ids)]
    return BackboneView([rnd(p) for p in ca - centre], axes, names=names, element_id=element_id,
                        axis_length=float(axis_length), title=title)


# The legend shows each axis's colour and dash as a line beside a letter in the text
# colour: letters in the palette's colours would fail the 4.5:1 text contrast on white.
# The viewer: orthographic projection on a 2-D canvas, drawn back to front; dragging
# turns the molecule about the screen's vertical (left-right) and horizontal (up-down) axes.
_VIEW_TEMPLATE = """<div class="geoattn-view" style="max-width:560px;margin:0.5em 0;">
<canvas id="@ID@" role="img" aria-label="@TITLE@ Drag to rotate."
 style="width:100%;aspect-ratio:1/1;touch-action:none;cursor:grab;border:1px solid #8884;border-radius:4px;">
</canvas>
<div style="font-size:0.85em;">Drag to rotate. Cα trace in grey; frame axes
<span style="display:inline-block;width:1.6em;border-top:3px solid #D55E00;vertical-align:middle"></span> x,
<span style="display:inline-block;width:1.6em;border-top:3px dashed #009E73;vertical-align:middle"></span> y,
<span style="display:inline-block;width:1.6em;border-top:3px dotted #0072B2;vertical-align:middle"></span> z
at every drawn residue.</div>
<script type="application/json" id="@ID@-data">@DATA@</script>
<script>
(function () {
  const canvas = document.getElementById("@ID@");
  if (!canvas || canvas.dataset.ready) return;
  canvas.dataset.ready = "1";
  const d = JSON.parse(document.getElementById("@ID@-data").textContent);
  let yaw = 0.6, pitch = -0.4, drag = null;
  const rot = p => {
    const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    const x = cy * p[0] + sy * p[2], z = -sy * p[0] + cy * p[2];
    return [x, cp * p[1] - sp * z, sp * p[1] + cp * z];
  };
  const radius = Math.max(...d.ca.map(p => Math.hypot(p[0], p[1], p[2]))) + d.len;
  function draw() {
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth || 400;
    if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = canvas.width; }
    const ctx = canvas.getContext("2d"), s = canvas.width / (2.0 * radius), c = canvas.width / 2;
    const xy = p => [c + s * p[0], c - s * p[1]];
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const segs = [];
    for (let i = 1; i < d.ca.length; i++) segs.push([rot(d.ca[i - 1]), rot(d.ca[i]), "#888", 2.5]);
    const colors = ["#D55E00", "#009E73", "#0072B2"], dashes = [[], [4, 3], [1, 3]];
    for (const [o, ...ax] of d.axes) {
      const a = rot(o);
      ax.forEach((u, k) => segs.push([a, rot([o[0] + d.len * u[0], o[1] + d.len * u[1],
                                              o[2] + d.len * u[2]]), colors[k], 2, dashes[k]]));
    }
    segs.sort((p, q) => (p[0][2] + p[1][2]) - (q[0][2] + q[1][2]));
    ctx.lineCap = "round";
    for (const [a, b, color, width, dash] of segs) {
      ctx.strokeStyle = color; ctx.lineWidth = width * dpr;
      ctx.setLineDash((dash || []).map(x => x * dpr));
      ctx.beginPath(); ctx.moveTo(...xy(a)); ctx.lineTo(...xy(b)); ctx.stroke();
    }
    ctx.setLineDash([]);
    if (d.axes.length) {  // colour is not the only cue: the first frame's tips are lettered
      const [o, ...ax] = d.axes[0];
      ctx.font = `bold ${12 * dpr}px sans-serif`; ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ax.forEach((u, k) => {
        ctx.fillStyle = colors[k];
        ctx.fillText("xyz"[k], ...xy(rot([o[0] + 1.4 * d.len * u[0], o[1] + 1.4 * d.len * u[1],
                                           o[2] + 1.4 * d.len * u[2]])));
      });
    }
    canvas.dataset.rendered = String(segs.length);
  }
  canvas.addEventListener("pointerdown", e => {
    drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", e => {
    if (!drag) return;
    yaw += (e.clientX - drag[0]) * 0.01; pitch += (e.clientY - drag[1]) * 0.01;
    drag = [e.clientX, e.clientY]; draw();
  });
  const stop = () => { drag = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  window.addEventListener("resize", draw);
  draw();
})();
</script>
</div>"""
