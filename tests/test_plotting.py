"""geoattn.plotting: the text/HTML table and the annotated attention heatmap."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from geoattn.plotting import Table, attention_heatmap, fmt


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
    assert "<th>a&lt;b</th>" in Table(["a<b"], [["x"]])._repr_html_()


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
