"""The book's structure: every chapter in the TOC exists, is committed executed, asks Colab
for a GPU, and installs geoattn on Colab from the repository named in _config.yml."""
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]


def _notebook(chapter: str):
    return nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def test_every_book_notebook_is_in_the_toc():
    on_disk = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").glob("*.ipynb")}
    assert on_disk == set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_install_cell_names_the_configured_repository(chapter):
    url = CONFIG["repository"]["url"].rstrip("/")
    first = _code_cells(_notebook(chapter))[0].source
    assert "google.colab" in first, "the first code cell must install geoattn only inside Colab"
    assert f"git+{url}" in first, f"the install cell must name {url} (repository.url in _config.yml)"
    install = first[first.index('"install"'):]
    install = install[: install.index("check=True")]
    assert "torch" not in install, "the install cell must not (re)install torch"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_asks_colab_for_a_gpu(chapter):
    assert _notebook(chapter).metadata.get("accelerator") == "GPU"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_code_cell_is_executed_with_an_output(chapter):
    for i, cell in enumerate(_code_cells(_notebook(chapter))):
        assert cell.execution_count is not None, f"cell {i} was never executed"
        assert cell.outputs, f"cell {i} has no stored output for nbval to compare"
        assert not any(o.output_type == "error" for o in cell.outputs), f"cell {i} stores an error"


def test_launch_buttons_point_at_colab():
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["execute"]["execute_notebooks"] == "off"
