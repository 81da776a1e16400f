"""The book's structure: every chapter in the TOC exists, is committed executed, asks Colab
for a GPU, and installs geoattn on Colab from the repository named in _config.yml."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]
CHAPTERS = [page for page in PAGES if (ROOT / f"{page}.ipynb").exists()]


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


# ----------------------------------------------------- the course: releases and student copies

VERSION = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
STUDENT_COPIES = ("https://colab.research.google.com/github/"
                  + CONFIG["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
                  + "/blob/student/assignments/")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_install_cell_pins_the_release_of_pyproject(chapter):
    """A copy saved in September installs, in December, the library it was written for."""
    url = CONFIG["repository"]["url"].rstrip("/")
    first = _code_cells(_notebook(chapter))[0].source
    pins = re.findall(r"git\+" + re.escape(url) + r"@v([\w.+-]+)", first)
    assert pins == [VERSION], f"the install cell must install {url}@v{VERSION} (pyproject.toml), got {pins}"
    assert "geoattn @ " in first


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_links_its_own_student_copy_at_its_exercises(chapter):
    cells = _notebook(chapter).cells
    heading = max(i for i, c in enumerate(cells) if c.cell_type == "markdown"
                  and re.search(r"^## Exercises\s*$", c.source, re.M))
    first_exercise = min(i for i, c in enumerate(cells) if c.cell_type == "markdown"
                         and re.search(r"^:::\{exercise\}", c.source, re.M))
    links = [i for i, c in enumerate(cells) if c.cell_type == "markdown"
             and STUDENT_COPIES + Path(chapter).name + ".ipynb" in c.source]
    assert links and all(heading <= i < first_exercise for i in links), (
        f"{chapter}: link its student copy between '## Exercises' (cell {heading}) and the first exercise")


def test_chapters_are_numbered_so_exercises_are_numbered_per_chapter():
    numbered = TOC.get("defaults", {}).get("numbered") or all(p.get("numbered") for p in TOC["parts"])
    assert numbered
    for part in TOC["parts"]:
        if any(f"{c['file']}.ipynb" for c in part["chapters"] if (ROOT / f"{c['file']}.ipynb").exists()):
            assert part.get("numbered", True) is not False


def test_the_teachers_page_is_in_the_book():
    assert "book/for_teachers" in PAGES
    text = (ROOT / "book" / "for_teachers.md").read_text()
    for needed in ("python -m geoattn.course.student", "python -m geoattn.course.grade", "--force",
                   "not attempted", "timed out", "notebook error", "Your answer"):
        assert needed in text
    from geoattn.course import checks

    for name in checks.__all__:
        if name.startswith("check_"):
            assert f"`{name}`" in text, f"for_teachers.md does not describe {name}"


@pytest.mark.skipif(os.environ.get("GEOATTN_SKIP_VENV_TEST") == "1", reason="GEOATTN_SKIP_VENV_TEST=1")
def test_every_chapter_runs_from_the_package_dependencies_alone(tmp_path):
    """As on a CPU-only Colab: a venv with `pip install <repo>` (pyproject's dependencies, no
    requirements.txt, no triton) runs every chapter to the end without an error."""
    start = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch first, pinned, so pip takes the CPU wheel that this machine provides.
    subprocess.run([*pip, "torch==2.13.0"], check=True, env=env, timeout=900)
    subprocess.run([*pip, str(ROOT), "nbclient", "ipykernel"], check=True, env=env, timeout=900)
    runner = tmp_path / "run_chapters.py"
    runner.write_text(RUNNER)
    home = tmp_path / "home"
    home.mkdir()
    run_env = {**env, "HOME": str(home), "JUPYTER_DATA_DIR": str(home / "jupyter"), "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run_env.pop("TRITON_INTERPRET", None)
    chapters = [str(ROOT / f"{c}.ipynb") for c in CHAPTERS]
    run = subprocess.run([python, str(runner), str(tmp_path / "work"), *chapters], env=run_env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, (
        f"chapters failed without the dev requirements:\n{run.stdout[-4000:]}{run.stderr[-3000:]}")
    assert "skipped: triton is not installed" in run.stdout
    print(f"venv from the package's dependencies, every chapter run: {time.monotonic() - start:.0f} s")


RUNNER = r'''
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

work = Path(sys.argv[1])
work.mkdir()
probe = nbformat.v4.new_code_cell(
    "import importlib.util, sys\n"
    f"assert sys.prefix == {sys.prefix!r}, sys.prefix\n"
    "assert importlib.util.find_spec('triton') is None, 'triton is installed'\n"
    "assert 'site-packages' in __import__('geoattn').__file__")
failed = 0
for path in sys.argv[2:]:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, probe)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(work)}}).execute()
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                failed += 1
                print(f"{Path(path).name}, cell {i - 1}: {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and "skipped:" in out.text:
                print(out.text.strip())
    print(Path(path).name, "ran")
sys.exit(1 if failed else 0)
'''


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_image_outputs_carry_their_alt_text_for_jupyter_and_colab(chapter):
    for i, cell in enumerate(_code_cells(_notebook(chapter))):
        alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt")
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        if not images:
            continue
        assert alt, f"cell {i} shows an image without alt text (mystnb.image.alt)"
        for output in images:
            assert output.get("metadata", {}).get("image/png", {}).get("alt") == alt, (
                f"cell {i}: the image output lacks the cell's alt text; re-execute the chapter")
