"""geoattn.plotting: the text/HTML table and the annotated attention heatmap."""
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import geoattn
from geoattn.plotting import Table, attention_heatmap, backbone_view, fmt, use_book_style


def test_fmt_numbers_vectors_and_matrices():
    assert fmt(0.5) == "0.500"
    assert fmt(torch.tensor([0.12345, 2.0]), 2) == "[0.12, 2.00]"
    assert fmt(np.array([[1.0, 0.0], [0.25, 1.0]]), 1) == "[[1.0, 0.0], [0.2, 1.0]]"
    assert fmt(torch.tensor(3.14159)) == "3.142"
    assert fmt("text") == "text" and fmt(True) == "True"


def test_table_text_is_aligned_and_html_is_escaped():
    table = Table(["name", "value"], [["a", 1.0], ["longer", torch.tensor([0.5, 0.25])]])
    lines = str(table).splitlines()
    assert lines[0].split() == ["name", "value"]
    assert lines[3].startswith("longer  [0.500, 0.250]")
    # every column starts at the same offset on every line
    assert len({line.index(line.split()[1]) for line in (lines[0], lines[2], lines[3])}) == 1
    assert ">a&lt;b</th>" in Table(["a<b"], [["x"]])._repr_html_()


def test_table_html_is_padded_ruled_and_right_aligns_number_columns():
    table = Table(["name", "value", "range", "note"],
                  [["a", 0.5, "1–18", "-"], ["b", "-inf", "< 1e-10", "yes"]])
    page = table._repr_html_()
    assert page.count("<tr>") == 3 and "padding:" in page and "border-bottom:" in page
    aligned = re.findall(r'<th style="[^"]*text-align:(\w+)', page)
    assert aligned == ["left", "right", "right", "left"]
    # the text form is unchanged: plain aligned columns, no markup
    assert "<" not in str(table).replace("< 1e-10", "")


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        Table(["a", "b"], [["1", "2"], ["3"]])


def test_heatmap_annotates_every_cell():
    weights = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), -1)
    ax = attention_heatmap(weights, ["a", "b", "c"], ["w", "x", "y", "z"], title="t")
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 12 and texts[0] == f"{weights[0, 0].item():.2f}"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    plt.close(ax.figure)


def test_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="weights"):
        attention_heatmap(torch.ones(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="query_labels"):
        attention_heatmap(torch.ones(2, 2), ["a", "b", "c"])


def test_backbone_view_is_deterministic_and_self_contained():
    bb = geoattn.ubiquitin()
    view = backbone_view(bb, residues=range(0, len(bb), 4), element_id="v1")
    again = backbone_view(bb, residues=range(0, len(bb), 4), element_id="v1")
    page = view._repr_html_()
    assert page == again._repr_html_()
    assert 'id="v1"' in page and "<canvas" in page and "src=" not in page  # no script fetched
    assert repr(view) == ("<3-D view 'v1': Cα trace of 76 residues, 19 frames "
                          "(x solid, y dashed, z dotted); drag to rotate>")
    with pytest.raises(ValueError, match="element_id"):
        backbone_view(bb, element_id="1 bad")
    with pytest.raises(ValueError, match="rotations"):
        backbone_view(bb, rotations=torch.eye(3).expand(76, 3, 3))


def test_book_style_sizes_figures_for_the_column():
    use_book_style()
    assert plt.rcParams["figure.dpi"] == 100 and plt.rcParams["figure.figsize"][0] <= 7


def test_book_png_raises_small_text_and_records_its_size():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoattn.plotting import COLUMN_PX, MIN_TEXT_PX, book_png, png_text

    fig, ax = plt.subplots(figsize=(9.0, 3.0), dpi=100)  # 900 px: shrunk to the column
    ax.plot([0, 1], [0, 1], label="a legend")
    ax.legend(fontsize=5)
    data, meta = book_png(fig)
    text = png_text(data)
    width = float(text["geoattn:css-width"])
    assert meta["width"] == int(width) and data[:8] == b"\x89PNG\r\n\x1a\n"
    # Rendered at the column's width, the smallest text is still MIN_TEXT_PX.
    assert float(text["geoattn:min-text-px"]) * min(1.0, COLUMN_PX / width) >= MIN_TEXT_PX - 0.3
    assert book_png(fig) == (data, meta)  # deterministic
    plt.close(fig)


def test_frame_axis_colours_stay_apart_for_deuteranopes():
    """Okabe-Ito vermillion, bluish green, blue: distinct in a deuteranopia simulation
    (Machado et al. 2009, severity 1), by at least 40 in CIELAB."""
    import numpy as np

    from geoattn.plotting import FRAME_AXIS_COLORS

    machado = np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                        [-0.011820, 0.042940, 0.968881]])

    def linear(hex_color):
        c = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)

    def lab(rgb):
        xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
        f = np.cbrt(xyz / np.array([0.9505, 1.0, 1.089]))
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    seen = [lab(np.clip(machado @ linear(c), 0, 1)) for c in FRAME_AXIS_COLORS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.linalg.norm(seen[i] - seen[j]) > 40, (FRAME_AXIS_COLORS[i], FRAME_AXIS_COLORS[j])
