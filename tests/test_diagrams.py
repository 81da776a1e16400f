"""geoattn.diagrams: each chapter's diagram draws, deterministically, and the frame
diagram puts a real residue's atoms where its frame says they are."""
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

import geoattn
from geoattn import diagrams

DRAWERS = {
    "qkv_flow": lambda: diagrams.qkv_flow(),
    "heads_split_merge": lambda: diagrams.heads_split_merge(),
    "residue_frame": lambda: diagrams.residue_frame(geoattn.ubiquitin(), 0),
    "algorithm6_dataflow": lambda: diagrams.algorithm6_dataflow(),
    "key_block_tiling": lambda: diagrams.key_block_tiling(),
}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


@pytest.mark.parametrize("name", DRAWERS)
def test_each_diagram_draws_the_same_picture_twice(name):
    first, second = _png(DRAWERS[name]()), _png(DRAWERS[name]())
    assert len(first) > 2000 and first == second


@pytest.mark.parametrize("name", DRAWERS)
def test_each_diagram_has_a_title_and_labels(name):
    fig = DRAWERS[name]()
    ax = fig.axes[0]
    assert ax.get_title()
    assert len(ax.texts) >= 4
    plt.close(fig)


def test_residue_frame_labels_the_atoms_at_their_local_coordinates():
    bb = geoattn.ubiquitin()
    fig = diagrams.residue_frame(bb, 5)
    labels = [t.get_text() for t in fig.axes[0].texts]
    # C lies on the frame's negative x axis at the Cα–C bond length (about 1.52 Å).
    c_label = next(t for t in labels if t.startswith("C ("))
    x, y = (float(v) for v in c_label[3:-1].split(", "))
    assert -1.6 < x < -1.45 and y == 0.0
    assert any(t.startswith("N (") for t in labels) and "Cα (origin)" in labels
    assert bb.res_names[5] in fig.axes[0].get_title()
    plt.close(fig)


def test_diagrams_reject_impossible_layouts():
    with pytest.raises(ValueError, match="d_model"):
        diagrams.heads_split_merge(d_model=5, n_heads=2)
    with pytest.raises(ValueError, match="block"):
        diagrams.key_block_tiling(length=4, block=0)
    with pytest.raises(ValueError, match="index"):
        diagrams.residue_frame(geoattn.ubiquitin(), 500)
