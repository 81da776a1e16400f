"""The book's explanatory diagrams, one per chapter, drawn with matplotlib so that they are
rebuilt from code (and re-drawn by nbval) like every other figure:

- :func:`qkv_flow`: chapter 1, how one residue's embedding becomes q, k, v and then z;
- :func:`heads_split_merge`: chapter 2, the heads being split off and merged back;
- :func:`residue_frame`: chapter 3, a real residue's frame on its N, Cα and C atoms;
- :func:`algorithm6_dataflow`: chapter 4, the dataflow of ESM3's Algorithm 6;
- :func:`key_block_tiling`: chapter 5, key blocks streamed through the online softmax.

Each returns a matplotlib Figure; none of them computes anything the book relies on,
except :func:`residue_frame`, which draws the frame that ``Backbone.frames`` builds.
"""
from __future__ import annotations

__all__ = ["qkv_flow", "heads_split_merge", "residue_frame", "algorithm6_dataflow", "key_block_tiling"]

# One palette for the whole book: queries, keys, values, scores, outputs.
Q_COLOR, K_COLOR, V_COLOR = "#4c72b0", "#dd8452", "#55a868"
S_COLOR, Z_COLOR, GREY = "#c44e52", "#8172b3", "#7f7f7f"


def _canvas(width: float, height: float, xlim: tuple[float, float], ylim: tuple[float, float]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.set(xlim=xlim, ylim=ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax, x: float, y: float, text: str, color: str, *, w: float = 1.6, h: float = 0.7,
         fontsize: float = 10, fill: float = 0.18):
    """A rounded box centred on (x, y), its text inside."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=to_rgba(color, fill), edgecolor=color, lw=1.4))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text: str = "", *, color: str = "0.25", offset=(0.0, 0.0), fontsize: float = 9,
           rad: float = 0.0):
    ax.annotate("", xy=end, xytext=start,
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.3, "shrinkA": 2, "shrinkB": 2,
                            "connectionstyle": f"arc3,rad={rad}"})
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        # On a white patch over the arrow, so that the label never crosses a line.
        ax.text(mx, my, text, ha="center", va="center", fontsize=fontsize, color=color,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})


# ---------------------------------------------------------------------- chapter 1

def qkv_flow(residue: str = "Lys"):
    """One residue's path through self-attention: x → (q, k, v) → scores → α → z."""
    fig, ax = _canvas(7.0, 3.6, (-0.2, 11.4), (-0.3, 5.5))
    _box(ax, 0.9, 2.6, f"$x_{{\\mathrm{{{residue}}}}}$\n(1 × 4)", GREY, w=1.5, h=1.0)
    rows = [(4.4, "q", "W_Q", Q_COLOR, "query: what it looks for"),
            (2.6, "k", "W_K", K_COLOR, "key: what it offers"),
            (0.8, "v", "W_V", V_COLOR, "value: what it passes on")]
    for y, name, weight, color, meaning in rows:
        _arrow(ax, (1.7, 2.6), (3.1, y), f"$\\times {weight}$", color=color)
        _box(ax, 3.9, y, f"${name}_{{\\mathrm{{{residue}}}}}$ (1 × 2)", color, w=2.0)
        # Above the top box, below the others: the arrows from x come in from the lower
        # left, and the query's would otherwise cross its own caption.
        above = y == rows[0][0]
        ax.text(3.9, y + 0.45 if above else y - 0.5, meaning, ha="center", va="bottom" if above else "top",
                fontsize=7.5, color=color)
    _box(ax, 6.9, 4.4, "$s_j = q \\cdot k_j / \\sqrt{d_k}$\nfor every key $j$", S_COLOR, w=2.4, h=0.95,
         fontsize=9)
    _arrow(ax, (4.9, 4.4), (5.7, 4.4), color=Q_COLOR)
    ax.text(6.9, 3.55, "keys $k_j$ of all residues", ha="center", va="top", fontsize=7.5, color=K_COLOR)
    _box(ax, 9.9, 4.4, "$\\alpha = \\mathrm{softmax}(s)$\nweights sum to 1", S_COLOR, w=2.5, h=0.95,
         fontsize=9)
    _arrow(ax, (8.1, 4.4), (8.65, 4.4), color=S_COLOR)
    _box(ax, 9.9, 1.4, f"$z_{{\\mathrm{{{residue}}}}} = \\sum_j \\alpha_j v_j$\n(1 × 2)", Z_COLOR, w=2.5,
         h=0.95, fontsize=9)
    _arrow(ax, (9.9, 3.9), (9.9, 1.9), "$\\alpha_j$", color=S_COLOR)
    _arrow(ax, (4.9, 0.8), (8.65, 1.3), "values $v_j$ of all residues", color=V_COLOR, fontsize=8)
    ax.set_title(f"Self-attention for one residue ({residue})", fontsize=11)
    return fig


# ---------------------------------------------------------------------- chapter 2

def heads_split_merge(length: int = 3, d_model: int = 4, n_heads: int = 2):
    """The (L, d_model) projection split into H heads of d_model/H columns, attention per
    head, and the heads' outputs concatenated and mixed by W_O."""
    from matplotlib.patches import Rectangle

    if d_model % n_heads:
        raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
    d_head = d_model // n_heads
    colors = [Q_COLOR, K_COLOR, V_COLOR, S_COLOR, Z_COLOR, GREY][:n_heads] if n_heads <= 6 else None
    if colors is None:
        raise ValueError(f"n_heads must be at most 6 to be drawn, got {n_heads}")
    cell = 0.42
    fig, ax = _canvas(7.0, 3.3, (-0.6, 15.2), (-2.0, 5.2))

    def grid(x0, y0, cols, color_of, label):
        for i in range(length):
            for j in range(cols):
                ax.add_patch(Rectangle((x0 + j * cell, y0 + (length - 1 - i) * cell), cell, cell,
                                       facecolor=color_of(j), edgecolor="white", lw=1.2, alpha=0.75))
        ax.text(x0 + cols * cell / 2, y0 - 0.25, label, ha="center", va="top", fontsize=8.5)
        return x0 + cols * cell, y0 + length * cell / 2

    right, mid = grid(0.0, 1.2, d_model, lambda j: colors[j // d_head], f"$Q = XW_Q$\n({length} × {d_model})")
    heads_x = right + 1.6
    ys = [3.2 - h * (2.6 / max(n_heads - 1, 1)) for h in range(n_heads)]
    ends = []
    for h, y in enumerate(ys):
        _arrow(ax, (right + 0.1, mid), (heads_x - 0.1, y + length * cell / 2), color=colors[h])
        r, m = grid(heads_x, y, d_head, lambda j, h=h: colors[h], "")
        ax.text(heads_x + d_head * cell / 2, y + length * cell + 0.08, f"head {h}", ha="center", va="bottom",
                fontsize=8.5, color=colors[h])
        _box(ax, r + 1.7, m, f"attention\nhead {h}", colors[h], w=1.9, h=0.85, fontsize=8.5)
        _arrow(ax, (r + 0.1, m), (r + 0.7, m), color=colors[h])
        ends.append((r + 2.7, m))
    ax.text(heads_x + d_head * cell / 2, ys[-1] - 0.2, f"split_heads:\n(B, H, L, {d_head})", ha="center",
            va="top", fontsize=8.5)
    merge_x = ends[0][0] + 1.3
    for h, (x, y) in enumerate(ends):
        _arrow(ax, (x, y), (merge_x - 0.1, 1.2 + length * cell / 2), color=colors[h])
    r, m = grid(merge_x, 1.2, d_model, lambda j: colors[j // d_head], "merge_heads:\nconcatenate")
    _arrow(ax, (r + 0.1, m), (r + 0.9, m), "$W_O$", color="0.25")
    ax.text(r + 1.0, m, "out", ha="left", va="center", fontsize=9)
    ax.set_title(f"Multi-head attention: split into {n_heads} heads, merge back", fontsize=11)
    return fig


# ---------------------------------------------------------------------- chapter 3

def residue_frame(backbone, index: int = 0):
    """Residue ``index`` of ``backbone`` drawn in its own frame: N, Cα and C at their local
    coordinates (all three lie in the frame's xy plane, by construction) with the x and y
    axes; z points out of the page."""
    rotations, translations = backbone.frames()
    n_res = len(backbone)
    if not isinstance(index, int) or not -n_res <= index < n_res:
        raise ValueError(f"index must be an int in [{-n_res}, {n_res}), got {index!r}")
    r, t = rotations[index].double(), translations[index].double()
    atoms = {"N": backbone.n[index], "Cα": backbone.ca[index], "C": backbone.c[index]}
    # Global → local: R^T (p − t).
    local = {name: (r.T @ (p.double() - t)).tolist() for name, p in atoms.items()}
    out_of_plane = max(abs(p[2]) for p in local.values())
    fig, ax = _canvas(5.6, 3.6, (-2.4, 2.4), (-0.9, 2.2))
    ax.set_axis_on()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.set(xlabel="local x (Å)", ylabel="local y (Å)")
    (nx, ny, _), (ax_, ay, _), (cx, cy, _) = local["N"], local["Cα"], local["C"]
    ax.plot([nx, ax_, cx], [ny, ay, cy], color="0.55", lw=3, zorder=1, solid_capstyle="round")
    where = {"N": ((14, 0), "left"), "Cα": ((-10, 12), "right"), "C": ((0, -16), "center")}
    for (name, (x, y, _)), color in zip(local.items(), (Q_COLOR, "0.2", K_COLOR)):
        ax.scatter([x], [y], s=260, color=color, zorder=3)
        x, y = round(x, 2) + 0.0, round(y, 2) + 0.0  # + 0.0: no "-0.00"
        label = f"{name} (origin)" if name == "Cα" else f"{name} ({x:.2f}, {y:.2f})"
        offset, ha = where[name]
        ax.annotate(label, (x, y), xytext=offset, textcoords="offset points", ha=ha, va="center", fontsize=10)
    from .plotting import FRAME_AXIS_COLORS

    x_color, y_color, z_color = FRAME_AXIS_COLORS
    for (dx, dy), color, name in (((1.0, 0.0), x_color, "$e_x$"), ((0.0, 1.0), y_color, "$e_y$")):
        ax.annotate("", xy=(dx, dy), xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2.2})
        ax.text(dx * 1.12 + 0.05 if dx else -0.1, dy * 1.05, name, color=color, fontsize=12,
                ha="left" if dx else "right", va="center")
    ax.scatter([0], [0], s=90, facecolor="white", edgecolor=z_color, lw=1.8, zorder=4)
    ax.scatter([0], [0], s=8, color=z_color, zorder=5)
    ax.text(0.12, -0.22, "$e_z$ (out of the page)", color=z_color, fontsize=9, ha="left", va="top")
    res = f"{backbone.res_names[index]} {backbone.res_ids[index]}"
    if out_of_plane > 1e-3:  # Gram–Schmidt puts all three atoms in the xy plane
        raise AssertionError(f"N, Cα, C are {out_of_plane:.3g} Å off the frame's xy plane")
    ax.set_title(f"The frame of {res}: origin at Cα, x along Cα − C, N in the xy plane", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- chapter 4

def algorithm6_dataflow():
    """Algorithm 6 as a dataflow: one projection, frames applied, two scores, softmax,
    values out and back, the residual update. Boxes carry the paper's line numbers."""
    fig, ax = _canvas(7.2, 4.6, (-0.3, 14.3), (-0.6, 8.6))
    _box(ax, 1.1, 4.0, "$X$\n(L × d)", GREY, w=1.6, h=0.9)
    _box(ax, 3.6, 4.0, "Linear\nline 1–2", GREY, w=1.7, h=0.9, fontsize=9)
    _arrow(ax, (1.9, 4.0), (2.75, 4.0))
    outs = [(7.4, "$q^r, k^r$", "rotate: $R_i\\,[\\cdot]$\nlines 3–4", Q_COLOR),
            (5.5, "$q^d, k^d$", "rotate + shift:\n$R_i[\\cdot] + t_i$, lines 5–6", K_COLOR),
            (1.0, "$v$", "rotate: $R_i\\,[v]$\nline 11", V_COLOR)]
    for y, name, what, color in outs:
        _arrow(ax, (4.45, 4.0), (5.3, y), color=color)
        _box(ax, 6.0, y, name, color, w=1.3, h=0.7, fontsize=9.5)
        _box(ax, 8.3, y, what, color, w=2.7, h=0.95, fontsize=8)
        _arrow(ax, (6.65, y), (6.95, y), color=color)
    _box(ax, 11.6, 7.4, "$q^r_i\\cdot k^r_j/\\sqrt{3}$\nline 7", S_COLOR, w=2.6, h=0.9, fontsize=8.5)
    _box(ax, 11.6, 5.5, "$\\|q^d_i - k^d_j\\|/\\sqrt{3}$\nline 8", S_COLOR, w=2.6, h=0.9, fontsize=8.5)
    _arrow(ax, (9.65, 7.4), (10.3, 7.4), color=Q_COLOR)
    _arrow(ax, (9.65, 5.5), (10.3, 5.5), color=K_COLOR)
    _box(ax, 11.6, 3.6, "$A = w_r R - w_d D$ (9)\nsoftmax over $j$ (10)", S_COLOR, w=3.2, h=0.95, fontsize=8.5)
    _arrow(ax, (11.6, 6.95), (11.6, 5.95), "", color=S_COLOR)
    _arrow(ax, (11.6, 5.05), (11.6, 4.1), "", color=S_COLOR)
    _box(ax, 11.6, 1.0, "$o_i = \\sum_j \\alpha_{ij} v_j$, then $R_i^{\\top} o_i$\nlines 12–13", Z_COLOR, w=3.4,
         h=0.95, fontsize=8.5)
    _arrow(ax, (11.6, 3.1), (11.6, 1.5), "$\\alpha_{ij}$", color=S_COLOR)
    _arrow(ax, (9.65, 1.0), (9.95, 1.0), color=V_COLOR)
    _box(ax, 3.6, 1.0, "$X$ + Linear$(O)$\nline 14", Z_COLOR, w=2.6, h=0.9, fontsize=9)
    _arrow(ax, (10.0, 0.3), (4.9, 0.6), "heads concatenated", color=Z_COLOR, rad=-0.12, fontsize=8)
    _arrow(ax, (1.1, 3.55), (2.3, 1.45), "residual", color=GREY, fontsize=8)
    ax.text(8.3, 8.1, "with the frames $T_i = (R_i, t_i)$", ha="center", fontsize=8.5)
    ax.set_title("Algorithm 6: geometric self-attention, line by line", fontsize=11)
    return fig


# ---------------------------------------------------------------------- chapter 5

def key_block_tiling(length: int = 12, block: int = 4, query: int = 5):
    """The L × L score matrix cut into key blocks: one query row streams through them,
    carrying its running state (m, ℓ, acc) from block to block and rescaling it by
    exp(m_old − m_new) whenever the maximum grows. Only one block of scores exists at a time."""
    from matplotlib.patches import Rectangle

    if not 0 < block <= length or not 0 <= query < length:
        raise ValueError(f"need 0 < block <= length and 0 <= query < length, got {block}, {length}, {query}")
    n_blocks = -(-length // block)
    colors = [Q_COLOR, K_COLOR, V_COLOR, Z_COLOR, S_COLOR, GREY]
    fig, ax = _canvas(7.0, 4.0, (-2.4, length + 7.2), (-3.6, length + 1.4))
    for i in range(length):
        for j in range(length):
            blk = j // block
            on_row = i == query
            ax.add_patch(Rectangle((j, length - 1 - i), 1, 1, lw=0.5, edgecolor="white",
                                   facecolor=colors[blk % len(colors)], alpha=0.85 if on_row else 0.18))
    for b in range(n_blocks):
        x0 = b * block
        w = min(block, length - x0)
        ax.add_patch(Rectangle((x0, 0), w, length, fill=False, edgecolor=colors[b % len(colors)], lw=1.6))
        ax.text(x0 + w / 2, length + 0.25, f"key block {b}", ha="center", va="bottom", fontsize=8,
                color=colors[b % len(colors)])
    ax.text(-0.3, length - 0.5 - query, f"query\ni = {query}", ha="right", va="center", fontsize=8)
    ax.text(length / 2, -0.35, "keys j", ha="center", va="top", fontsize=8.5)
    # The running state, passed from block to block.
    y = -2.3
    for b in range(n_blocks):
        x = b * block + min(block, length - b * block) / 2
        ax.annotate("", xy=(x, y + 0.55), xytext=(x, length - 1 - query), arrowprops={
            "arrowstyle": "-|>", "color": colors[b % len(colors)], "lw": 1.1, "alpha": 0.8})
        # Boxes a whole key apart, so the arrow that carries the state between them shows.
        w = min(block, length) - 0.8
        _box(ax, x, y, f"$(m, \\ell, \\mathrm{{acc}})_{b}$", colors[b % len(colors)], w=w, h=0.9, fontsize=7)
        if b:
            prev = (b - 1) * block + block / 2
            ax.annotate("", xy=(x - w / 2 - 0.1, y), xytext=(prev + w / 2 + 0.1, y),
                        arrowprops={"arrowstyle": "-|>", "color": "0.3", "lw": 1.1, "shrinkA": 0, "shrinkB": 0})
    # Σ as a letter with a subscript: mathtext sets \\sum's limits underneath, into the
    # next line.
    notes = ["For each key block:",
             "$m' = \\max(m,\\, \\mathrm{max}_j\\, S_{ij})$",
             "$\\ell \\leftarrow \\ell\\, e^{m - m'} + \\Sigma_j\\, e^{S_{ij} - m'}$",
             "$\\mathrm{acc} \\leftarrow \\mathrm{acc}\\, e^{m - m'} + \\Sigma_j\\, e^{S_{ij} - m'}\\, v_j$",
             "", "At the end:", "$O_i = \\mathrm{acc} / \\ell$", "lse $= m + \\log \\ell$ (kept for",
             "the backward pass)", "", f"memory: one {block}-key block", "of scores, not L × L"]
    ax.text(length + 0.6, length - 0.2, "\n".join(notes), ha="left", va="top", fontsize=8.5, linespacing=1.7)
    ax.set_title("Online softmax over key blocks", fontsize=11)
    return fig
