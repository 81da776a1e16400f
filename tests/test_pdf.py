"""Every chapter printed to PDF as the release attaches it (geoattn.devtools.print_pdf):
the chapter's figures are in it, and no exercise solution, no code that answers an
exercise and no folded-code line is. Reads the PDFs from GEOATTN_PDF_DIR (the release
workflow prints them first), else prints them from the built HTML with the browser test's
Chromium. Needs pypdf (pinned in requirements.txt)."""
from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_browser import CHAPTERS, chromium, html_dir  # noqa: F401  (fixtures)

pypdf = pytest.importorskip("pypdf")

# What a screen shows and paper must not: the labels of folds and buttons.
ARTEFACTS = ("Show code cell", "Hide code cell", "Show the library", "Click to show", "Toggle hidden content")


@pytest.fixture(scope="module")
def printed(chromium, html_dir, tmp_path_factory) -> dict[str, dict]:  # noqa: F811
    given = os.environ.get("GEOATTN_PDF_DIR")
    if given:  # printed already (the release workflow checks what print_pdf reported)
        return {c: {"pdf": Path(given) / f"{Path(c).name}.pdf", "cut": []} for c in CHAPTERS}
    from geoattn.devtools.print_pdf import print_pdfs

    return print_pdfs(html_dir, tmp_path_factory.mktemp("pdf"), CHAPTERS, chromium=chromium)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_nothing_is_cut_off_on_paper(printed, chapter):
    cut = printed[chapter]["cut"]
    assert not cut, f"{chapter}: wider than the printed page: {cut[:5]}"


class _Hidden(HTMLParser):
    """The text of each solution and solution-source cell of a page, and its figures."""

    def __init__(self):
        super().__init__()
        self.depth, self.pieces, self.texts, self.figures, self.outside = 0, [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "img" and "_images/" in (a.get("src") or ""):
            self.figures += 1
        if tag in ("br", "img", "input", "meta", "link", "hr", "wbr"):
            return
        if self.depth:
            self.depth += 1
        elif "solution" in classes or "tag_solution-source" in classes:
            self.depth, self.pieces = 1, []

    def handle_endtag(self, tag):
        if tag in ("br", "img", "input", "meta", "link", "hr", "wbr"):
            return
        if self.depth:
            self.depth -= 1
            if not self.depth:
                self.texts.append(" ".join(self.pieces))

    def handle_data(self, data):
        if self.depth:
            self.pieces.append(data)
        else:
            self.outside.append(data)


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _snippets(text: str) -> list[str]:
    """Distinctive stretches of a hidden block: lines of 30+ letters and digits."""
    out = []
    for line in re.split(r"[\n.]", text):
        w = _words(line)
        if len(w) >= 30:
            out.append(w[:60])
    return out


def _pdf_text_and_images(path: Path) -> tuple[str, int]:
    reader = pypdf.PdfReader(str(path))
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    images = 0
    for page in reader.pages:
        xobjects = (page.get("/Resources") or {}).get("/XObject") or {}
        images += sum(1 for obj in xobjects.values() if obj.get_object().get("/Subtype") == "/Image")
    return text, images


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_pdf_has_the_figures_and_no_answers(printed, html_dir, chapter):  # noqa: F811
    path = printed[chapter]["pdf"]
    assert path.is_file() and path.stat().st_size > 10_000, f"no PDF of {chapter} at {path}"
    hidden = _Hidden()
    hidden.feed((html_dir / f"{chapter}.html").read_text())
    text, images = _pdf_text_and_images(path)
    assert images >= hidden.figures, f"{chapter}: {images} images in the PDF, {hidden.figures} figures on the page"
    flat = _words(text)
    # A solution's title repeats its exercise's, and a check's call may be in the
    # exercise too: only what the page shows nowhere else counts.
    shown = _words(" ".join(hidden.outside))
    leaked = [s for block in hidden.texts for s in _snippets(block) if s in flat and s not in shown]
    assert hidden.texts, f"{chapter}: found no solution on the page to look for"
    assert not leaked, f"{chapter}: solution text in the PDF: {leaked[:3]}"
    labels = [a for a in ARTEFACTS if a in text]
    assert not labels, f"{chapter}: screen-only labels in the PDF: {labels}"
    assert re.search(r"Exercise \d+\.\d+", text), f"{chapter}: the PDF has no exercise"
