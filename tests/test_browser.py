"""The book's HTML as a reader sees it: every page of ``_toc.yml`` opened in headless
Chromium (driven by Playwright), served from 127.0.0.1.

Per page: the equations are typeset by MathJax (no raw TeX left, no MathJax errors), every
image loads, the Colab launch button opens that chapter's notebook, and the console shows
no JavaScript error. At 1280 px no output block or display equation is wider than its
column and at most 3 code blocks scroll sideways; every figure has a numbered caption and
written alt text. At a phone's 390 px the page never scrolls sideways, and the chapter
list and "Contents" drawers open when tapped. Chapter 3's 3-D view draws and turns.
Figures keep their aspect ratio at both widths, and their smallest text (which each PNG
records, see geoattn.plotting.book_png) renders at 9 px or more; cells that show an
exercise's answer (tag solution-source) are folded; every equation carries MathJax's
assistive MathML; axe-core (tests/vendor/axe-core) finds no serious or critical
violation, and in dark mode no contrast fault; what scrolls sideways on a phone shows a cue. The machine has no internet, so MathJax's CDN request is answered
from the copy of MathJax 3 in the ``django-static-mathjax`` package (pinned in
requirements.txt), and every other off-machine request is aborted (and its network error
ignored). Skipped when no Chromium is installed (``.ci/run`` installs Debian's), unless
``GEOATTN_REQUIRE_BROWSER=1``, which turns that skip into a failure.
"""
from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))  # the book's own Sphinx extensions
BOOK_FIXES = importlib.import_module("geoattn_book_fixes")
png_text = BOOK_FIXES.png_text
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [entry["file"] for part in TOC["parts"] for entry in part["chapters"]
            if (ROOT / f"{entry['file']}.ipynb").exists()]  # notebooks: the pages with a Colab button
PAGES = [TOC["root"], *CHAPTERS]
# The other pages of the TOC (notation, the teachers' page): checked for accessibility too.
OTHER_PAGES = [entry["file"] for part in TOC["parts"] for entry in part["chapters"] if entry["file"] not in PAGES]
REPO = CONFIG["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
BRANCH = CONFIG["repository"].get("branch", "main")
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/"
# The address Jupyter Book's pages load MathJax from (see any built page's <script> tags).
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
SCREENSHOT = ROOT / "_build" / "screenshots" / f"{Path(CHAPTERS[0]).name}.png"
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"  # see its README.md
AXE_VERSION = "4.14.1"
# The smallest text a figure may render at, in CSS px (geoattn.plotting.MIN_TEXT_PX).
MIN_TEXT_PX = 9.0
# How far a figure's rendered width/height may differ from its natural one (rounding).
MAX_ASPECT_ERROR = 0.02
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _skip_or_fail(reason: str):
    if os.environ.get("GEOATTN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (GEOATTN_REQUIRE_BROWSER=1 forbids skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        _skip_or_fail("no Chromium (neither /usr/bin/chromium nor `chromium` on PATH): "
                      "install it, e.g. `apt-get install chromium`, to test the HTML in a browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_or_fail("the `playwright` package is missing: `python -m pip install -r requirements.txt`")
    return path


def _mathjax_dir() -> Path:
    from importlib.resources import files

    path = Path(str(files("mathjax"))) / "static" / "mathjax"
    assert (path / "es5" / "tex-mml-chtml.js").is_file(), f"no MathJax 3 in {path}: is django-static-mathjax installed?"
    return path


# ------------------------------------------------------------------------ the HTML

def _sources() -> dict[str, Path]:
    found = {}
    for page in PAGES:
        hits = [ROOT / f"{page}{ext}" for ext in (".ipynb", ".md") if (ROOT / f"{page}{ext}").exists()]
        if hits:
            found[page] = hits[0]
    return found


def _is_fresh(html: Path) -> bool:
    """True if ``html`` holds every TOC page, each built after its source and after the config
    (and the book's extensions, static files and templates)."""
    # The book's extensions, styles and templates shape every page, like the config.
    shaping = [ROOT / name for name in ("_config.yml", "_toc.yml", "book/references.bib")]
    shaping += [p for d in ("book/_ext", "book/_static", "book/_templates") for p in (ROOT / d).glob("*")
                if p.is_file()]
    config = max(p.stat().st_mtime for p in shaping if p.exists())
    for page, src in _sources().items():  # a page without a source fails its tests anyway
        built = html / f"{page}.html"
        if not built.exists() or built.stat().st_mtime < max(src.stat().st_mtime, config):
            return False
    return True


@pytest.fixture(scope="module")
def html_dir(chromium, tmp_path_factory) -> Path:
    """``_build/html`` when it is up to date, else a fresh build in a temporary folder."""
    existing = ROOT / "_build" / "html"
    if existing.is_dir() and _is_fresh(existing):
        return existing
    out = tmp_path_factory.mktemp("book")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(ROOT), "--path-output", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` failed:\n{(run.stdout + run.stderr)[-3000:]}")
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def server(html_dir):
    """Serve the HTML on a free port of 127.0.0.1 for the duration of this module."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output readable
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html_dir)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------- the browser

MATH_JS = r"""() => {
  const maths = [...document.querySelectorAll('span.math, div.math')];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  const tex = /\$\$|\\\(|\\\)|\\\[|\\\]|\\(frac|sqrt|mathrm|mathbf|sum|cdot|alpha|begin|left|right)\b|\$[^\s$][^$\n]{0,80}[^\s$\\]\$/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest('pre, code, script, style, textarea, noscript, mjx-container, .highlight')) continue;
    if (tex.test(n.textContent)) raw.push(n.textContent.trim().slice(0, 100));
  }
  return {
    maths: maths.length,
    unrendered: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 100)),
    containers: document.querySelectorAll('mjx-container').length,
    errors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
    raw,
  };
}"""

IMAGES_JS = r"""async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  const settled = Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  await Promise.race([settled, new Promise(r => setTimeout(r, 15000))]);
  return imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
}"""

LINKS_JS = r"""() => {
  const colab = a => a.href.startsWith('https://colab.research.google.com/');
  const header = [...document.querySelectorAll('.bd-header-article a, .article-header-buttons a')];
  return {
    launch: [...new Set(header.filter(colab).map(a => a.href))],
    kaggle: [...new Set(header.filter(a => a.href.startsWith('https://kaggle.com/')).map(a => a.href))],
    all: [...new Set([...document.querySelectorAll('a')].filter(colab).map(a => a.href))],
  };
}"""


# What is cut off at the current width: output blocks and display equations wider than
# their box (their box never grows past the column, so wider means hidden behind a scroll
# bar), and code blocks that scroll sideways.
OVERFLOW_JS = r"""() => {
  const wide = el => el.scrollWidth > el.clientWidth + 1;
  const text = el => el.textContent.trim().replace(/\s+/g, ' ').slice(0, 80);
  const outputs = [...document.querySelectorAll('.cell_output pre, .output pre')];
  const equations = [...document.querySelectorAll('mjx-container[display="true"]')];
  const code = [...document.querySelectorAll('pre')].filter(p => !p.closest('.cell_output, .output'));
  return {
    outputs: outputs.filter(wide).map(text),
    equations: equations.filter(el => wide(el) || wide(el.parentElement)).map(text),
    scrolling_code: code.filter(wide).map(text),
    page: [document.documentElement.scrollWidth, window.innerWidth],
  };
}"""

FIGURES_JS = r"""() => [...document.querySelectorAll('.cell_output img, figure img')].map(img => {
  const fig = img.closest('figure');
  const cap = fig && fig.querySelector('figcaption');
  return {src: img.currentSrc || img.src, alt: img.alt || '',
          caption: cap ? cap.textContent.trim() : '',
          number: cap && cap.querySelector('.caption-number') ? cap.querySelector('.caption-number').textContent : ''};
})"""


# Each figure as the reader sees it: its rendered box and its natural (file) shape.
FIGURE_BOXES_JS = r"""() => [...document.querySelectorAll('.cell_output img, figure img')]
  .filter(img => img.src.includes('/_images/')).map(img => {
    const r = img.getBoundingClientRect();
    return {name: decodeURIComponent(img.src.split('/').pop()), width: r.width, height: r.height,
            natural: [img.naturalWidth, img.naturalHeight]};
  })"""

# The cells that show the library's answer to an exercise (tag solution-source): folded,
# labelled, and their code out of sight until the reader opens them.
SOLUTION_SOURCE_JS = r"""() => [...document.querySelectorAll('div.cell.tag_solution-source')].map(cell => {
  const details = cell.querySelector('details');
  const pre = cell.querySelector('.cell_output pre');
  return {folded: !!details && !details.open,
          label: details ? details.querySelector('summary').textContent.replace(/\s+/g, ' ').trim() : '',
          code_visible: !!pre && pre.checkVisibility() && pre.getClientRects().length > 0};
})"""

# A screen reader reads MathJax's hidden MathML copy of each equation.
ASSISTIVE_JS = r"""() => ({
  containers: document.querySelectorAll('mjx-container').length,
  mathml: document.querySelectorAll('mjx-container mjx-assistive-mml math').length,
})"""

AXE_JS = r"""async (rules) => {
  const options = {resultTypes: ['violations']};
  if (rules) options.runOnly = {type: 'rule', values: rules};
  const result = await axe.run(document, options);
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
                                      targets: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
}"""


def _axe(page, rules=None) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    return page.evaluate(AXE_JS, rules)


def _visit(context, base: str, page_name: str, screenshot: Path | None) -> dict:
    page = context.new_page()
    errors: list[tuple[str, str]] = []
    page.on("console", lambda m: m.type == "error" and errors.append((m.text, m.location.get("url", ""))))
    page.on("pageerror", lambda e: errors.append((f"uncaught {e.name}: {e.message}", "")))
    try:
        response = page.goto(base + f"{page_name}.html", wait_until="load", timeout=60_000)
        # MathJax 3 resolves startup.promise once the first typesetting pass is done.
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                               timeout=30_000)
        page.evaluate("() => MathJax.startup.promise.then(() => true)")
        result = {
            "status": response.status if response else None,
            "math": page.evaluate(MATH_JS),
            "images": page.evaluate(IMAGES_JS),
            "links": page.evaluate(LINKS_JS),
            "overflow": page.evaluate(OVERFLOW_JS),
            "figures": page.evaluate(FIGURES_JS),
            "figure_boxes": page.evaluate(FIGURE_BOXES_JS),
            "solution_source": page.evaluate(SOLUTION_SOURCE_JS),
            "assistive": page.evaluate(ASSISTIVE_JS),
        }
        result["axe"] = _axe(page)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            print(f"screenshot of {page_name}: {screenshot}")
        page.wait_for_timeout(300)  # let late console messages arrive
    finally:
        page.close()
    result["errors"] = errors
    return result


@pytest.fixture(scope="module")
def visits(chromium, server, tmp_path_factory) -> dict[str, dict]:
    """Open every page once, in one browser; return what each page showed."""
    from playwright.sync_api import sync_playwright

    mathjax = _mathjax_dir()
    aborted: set[str] = set()

    def route(r):
        url = r.request.url
        if url.startswith(server):
            return r.continue_()
        if url.startswith(MATHJAX_CDN):
            local = mathjax / url[len(MATHJAX_CDN):].split("?")[0]
            if local.is_file():
                return r.fulfill(path=str(local))
            return r.fulfill(status=404, body=f"not in the local MathJax: {local.name}")
        aborted.add(url)  # no internet here: fail fast and recognisably
        return r.abort("blockedbyclient")

    results: dict[str, dict] = {}
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            context.route("**/*", route)
            for page_name in PAGES:
                shot = SCREENSHOT if page_name == CHAPTERS[0] else None
                try:
                    results[page_name] = _visit(context, server, page_name, shot)
                except Exception as err:  # reported by each test for this page
                    results[page_name] = {"failure": f"{type(err).__name__}: {err}"}
        finally:
            context.close()
    # An aborted off-machine request logs "Failed to load resource: net::ERR_BLOCKED_BY_CLIENT":
    # network noise of this sandbox, not a bug of the page. Every other console error counts.
    for result in results.values():
        if "errors" in result:
            result["errors"] = [(text, url) for text, url in result["errors"]
                                if not ("ERR_BLOCKED_BY_CLIENT" in text and url in aborted)]
    return results


def _result(visits, page_name) -> dict:
    result = visits[page_name]
    assert "failure" not in result, f"{page_name}: could not open the page: {result.get('failure')}"
    assert result["status"] == 200, f"{page_name}: HTTP {result['status']}"
    return result


# -------------------------------------------------------------------------- the tests

MAX_SCROLLING_CODE = 3


@pytest.mark.parametrize("page_name", PAGES)
def test_nothing_is_cut_off_at_1280_px(visits, page_name):
    over = _result(visits, page_name)["overflow"]
    assert not over["outputs"], f"{page_name}: output blocks wider than the column: {over['outputs'][:5]}"
    assert not over["equations"], f"{page_name}: display equations wider than the column: {over['equations'][:5]}"
    assert len(over["scrolling_code"]) <= MAX_SCROLLING_CODE, (
        f"{page_name}: {len(over['scrolling_code'])} code blocks scroll sideways: {over['scrolling_code'][:5]}")
    assert over["page"][0] <= over["page"][1], f"{page_name}: the page scrolls sideways at 1280 px: {over['page']}"


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_every_figure_has_a_numbered_caption_and_alt_text(visits, page_name):
    figures = _result(visits, page_name)["figures"]
    assert figures, f"{page_name}: no figure"
    for fig in figures:
        name = fig["src"].rsplit("/", 1)[-1]
        assert fig["caption"], f"{page_name}: figure {name} has no caption"
        assert fig["number"].startswith("Fig"), f"{page_name}: figure {name} has no number: {fig['caption'][:60]}"
        alt = fig["alt"]
        assert len(alt) > 40 and not alt.endswith((".png", ".svg")), f"{page_name}: figure {name} alt text: {alt!r}"

@pytest.mark.parametrize("page_name", PAGES)
def test_equations_are_typeset(visits, page_name):
    math = _result(visits, page_name)["math"]
    assert math["containers"] > 0, f"{page_name}: no equation was typeset by MathJax"
    assert not math["unrendered"], f"{page_name}: math left untypeset: {math['unrendered'][:5]}"
    assert not math["errors"], f"{page_name}: MathJax errors: {math['errors'][:5]}"
    assert not math["raw"], f"{page_name}: raw TeX in the text: {math['raw'][:5]}"


@pytest.mark.parametrize("page_name", PAGES)
def test_every_image_loads(visits, page_name):
    broken = [img["src"] for img in _result(visits, page_name)["images"] if not img["ok"]]
    assert not broken, f"{page_name}: images that did not load: {broken}"


def test_the_chapters_show_figures(visits):
    figures = [img for page in CHAPTERS for img in _result(visits, page)["images"] if "/_images/" in img["src"]]
    assert figures, "no chapter shows a figure; expected the notebooks' plots under _images/"


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_colab_button_opens_this_chapter(visits, page_name):
    links = _result(visits, page_name)["links"]
    assert links["launch"] == [f"{COLAB}{page_name}.ipynb"], (
        f"{page_name}: the Colab launch button points at {links['launch']}")


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_kaggle_button_opens_this_chapter(visits, page_name):
    links = _result(visits, page_name)["links"]
    want = f"https://kaggle.com/kernels/welcome?src=https://github.com/{REPO}/blob/{BRANCH}/{page_name}.ipynb"
    assert links["kaggle"] == [want], f"{page_name}: the Kaggle launch button points at {links['kaggle']}"


def test_intro_links_the_student_copies_on_colab(visits):
    links = _result(visits, TOC["root"])["links"]
    assert links["all"], "the intro links no student copy on Colab"
    student = f"https://colab.research.google.com/github/{REPO}/blob/student/assignments/"
    chapters = {f"{Path(c).name}.ipynb" for c in CHAPTERS}
    for href in links["all"]:
        assert href.startswith(student), href
        assert href.removeprefix(student) in chapters, f"{href} names no chapter's student copy"


@pytest.mark.parametrize("page_name", PAGES)
def test_no_javascript_errors(visits, page_name):
    errors = _result(visits, page_name)["errors"]
    assert not errors, f"{page_name}: console errors: {errors}"


# ------------------------------------------------------------ figures, answers, access

def _shape_errors(boxes) -> list[str]:
    bad = []
    for box in boxes:
        (nw, nh), w, h = box["natural"], box["width"], box["height"]
        if not (nw and nh and w and h):
            bad.append(f"{box['name']}: not rendered ({w:.0f} x {h:.0f})")
            continue
        error = (w / h) / (nw / nh) - 1
        if abs(error) > MAX_ASPECT_ERROR:
            bad.append(f"{box['name']}: {w:.0f} x {h:.0f} px, squeezed {1 + abs(error):.2f}x "
                       f"{'sideways' if error < 0 else 'vertically'}")
    return bad


def _small_text(boxes, html_dir: Path) -> list[str]:
    """Figures whose smallest text renders under MIN_TEXT_PX: the PNG says how large its
    smallest text is at its own width (geoattn.plotting.book_png); the page scales it."""
    bad = []
    for box in boxes:
        meta = png_text((html_dir / "_images" / box["name"]).read_bytes())
        if "geoattn:min-text-px" not in meta:
            bad.append(f"{box['name']}: the PNG does not say its text size; re-execute its chapter "
                       "(python -m geoattn.devtools.reexecute) so that geoattn.use_book_style draws it")
            continue
        px = float(meta["geoattn:min-text-px"]) * box["width"] / float(meta["geoattn:css-width"])
        if px < MIN_TEXT_PX - 0.05:
            bad.append(f"{box['name']}: smallest text {px:.1f} px at {box['width']:.0f} px wide")
    return bad


def test_the_book_and_its_extension_agree_on_the_smallest_text():
    from geoattn.plotting import MIN_TEXT_PX as LIBRARY

    assert MIN_TEXT_PX == BOOK_FIXES.MIN_TEXT_PX == LIBRARY


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_figures_keep_their_shape_at_1280_px(visits, page_name):
    bad = _shape_errors(_result(visits, page_name)["figure_boxes"])
    assert not bad, f"{page_name}: {bad}"


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_figure_text_is_readable_at_1280_px(visits, html_dir, page_name):
    bad = _small_text(_result(visits, page_name)["figure_boxes"], html_dir)
    assert not bad, f"{page_name}: {bad}"


def test_cells_that_answer_an_exercise_are_folded_and_labelled(visits):
    cells = {page: _result(visits, page)["solution_source"] for page in CHAPTERS}
    assert sum(map(len, cells.values())) >= 1, "no cell tagged solution-source in any chapter"
    for page, found in cells.items():
        for i, cell in enumerate(found):
            assert cell["folded"], f"{page}: solution-source cell {i} is not folded"
            assert "answers an exercise" in cell["label"], f"{page}: cell {i}'s toggle says {cell['label']!r}"
            assert not cell["code_visible"], f"{page}: solution-source cell {i} shows its code unopened"


def test_a_reader_unfolds_a_cell_that_answers_an_exercise(browser):
    chapter = CHAPTERS[0]
    page = browser(chapter, {"width": 1280, "height": 900})
    try:
        cell = page.locator("div.cell.tag_solution-source").first
        code = cell.locator(".cell_output pre").first
        assert not code.is_visible()
        cell.locator("summary").first.click()
        page.wait_for_timeout(200)
        assert code.is_visible(), "one click on the toggle shows the code"
        page.emulate_media(media="print")
        assert not cell.is_visible(), "a cell that answers an exercise prints, though opened"
    finally:
        page.context.close()


@pytest.mark.parametrize("page_name", PAGES)
def test_equations_carry_mathml_for_screen_readers(visits, page_name):
    found = _result(visits, page_name)["assistive"]
    assert found["mathml"] == found["containers"] > 0, (
        f"{page_name}: {found['mathml']} of {found['containers']} equations carry assistive MathML")


SERIOUS = ("serious", "critical")


@pytest.mark.parametrize("page_name", PAGES)
def test_no_serious_accessibility_violations(visits, page_name):
    """axe-core (tests/vendor/axe-core) on the page as loaded, at 1280 px."""
    violations = _result(visits, page_name)["axe"]
    print(f"axe {AXE_VERSION} on {page_name}: " + (", ".join(
        f"{v['id']} ({v['impact']}, {v['nodes']})" for v in violations) or "no violations"))
    serious = [v for v in violations if v["impact"] in SERIOUS]
    assert not serious, f"{page_name}: serious or critical axe violations: {serious}"


# ---------------------------------------------------------------- phone and 3-D view

PHONE = {"width": 390, "height": 844}
DARK = {"width": 1280, "height": 900, "dark": True}
DRAWER_LINKS_JS = r"""sel => [...document.querySelectorAll(sel + ' a')].filter(a => {
  const r = a.getBoundingClientRect(), st = getComputedStyle(a);
  return r.width > 0 && r.height > 0 && r.right > 0 && r.left < window.innerWidth &&
         st.visibility !== 'hidden' && a.textContent.trim();
}).length"""


@pytest.fixture(scope="module")
def browser(chromium, server, tmp_path_factory):
    """A second browser, for the interactive tests (phone drawers, the 3-D view)."""
    from playwright.sync_api import sync_playwright

    mathjax = _mathjax_dir()

    def route(r):
        url = r.request.url
        if url.startswith(server):
            return r.continue_()
        if url.startswith(MATHJAX_CDN):
            local = mathjax / url[len(MATHJAX_CDN):].split("?")[0]
            return r.fulfill(path=str(local)) if local.is_file() else r.fulfill(status=404, body="")
        return r.abort("blockedbyclient")

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            def open_page(page_name, viewport):
                size = {"width": viewport["width"], "height": viewport["height"]}
                context = b.new_context(viewport=size, has_touch=viewport is PHONE, is_mobile=viewport is PHONE,
                                        color_scheme="dark" if viewport.get("dark") else "light")
                context.route("**/*", route)
                page = context.new_page()
                page.goto(server + f"{page_name}.html", wait_until="load", timeout=60_000)
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                       timeout=30_000)
                page.evaluate("() => MathJax.startup.promise.then(() => true)")
                return page
            yield open_page
        finally:
            b.close()


# What scrolls sideways inside its own box on a phone (equations, tables, figures), and
# whether it shows that it does: a shadow at the edge (a background gradient, geoattn.css),
# or for a figure, whose image would hide that shadow, a line above its caption.
SCROLLERS_JS = r"""() => {
  const wide = el => el.scrollWidth > el.clientWidth + 1;
  const figureCue = el => {  // an opaque image hides a shadow: a line above the caption says it
    const cap = el.parentElement.querySelector(':scope > figcaption');
    return el.classList.contains('geoattn-scrolls') && !!cap && getComputedStyle(cap, '::before').content !== 'none';
  };
  const cue = el => el.matches('a.image-reference') ? figureCue(el)
                                                     : getComputedStyle(el).backgroundImage.includes('gradient');
  const text = el => el.textContent.trim().replace(/\s+/g, ' ').slice(0, 60);
  const boxes = [...document.querySelectorAll('mjx-container[display="true"], div.cell_output table, '
                                              + '.bd-article table, a.image-reference')];
  return boxes.filter(wide).filter(el => !cue(el)).map(el => el.tagName.toLowerCase() + ': ' + text(el));
}"""


@pytest.fixture(scope="module")
def phone_visits(browser) -> dict[str, dict]:
    """Every page once at 390 px: its width, its figures, what scrolls without a cue."""
    results = {}
    for page_name in PAGES:
        page = browser(page_name, PHONE)
        try:
            page.evaluate(IMAGES_JS)  # lazy images load before they are measured
            results[page_name] = {
                "width": page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]"),
                "figure_boxes": page.evaluate(FIGURE_BOXES_JS),
                "uncued": page.evaluate(SCROLLERS_JS),
            }
        finally:
            page.context.close()
    return results


@pytest.mark.parametrize("page_name", PAGES)
def test_the_page_never_scrolls_sideways_on_a_phone(phone_visits, page_name):
    width, inner = phone_visits[page_name]["width"]
    assert width <= inner, f"{page_name}: at 390 px the page is {width} px wide and scrolls sideways"


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_figures_keep_their_shape_on_a_phone(phone_visits, page_name):
    bad = _shape_errors(phone_visits[page_name]["figure_boxes"])
    assert not bad, f"{page_name}: {bad}"


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_figure_text_is_readable_on_a_phone(phone_visits, html_dir, page_name):
    bad = _small_text(phone_visits[page_name]["figure_boxes"], html_dir)
    assert not bad, f"{page_name}: {bad}"


@pytest.mark.parametrize("page_name", PAGES)
def test_what_scrolls_sideways_on_a_phone_shows_it(phone_visits, page_name):
    uncued = phone_visits[page_name]["uncued"]
    assert not uncued, f"{page_name}: at 390 px these scroll sideways with no cue: {uncued[:5]}"


@pytest.mark.parametrize("page_name", OTHER_PAGES)
@pytest.mark.parametrize("mode", ["light", "dark"])
def test_no_serious_accessibility_violations_on_the_other_pages(browser, page_name, mode):
    page = browser(page_name, DARK if mode == "dark" else {"width": 1280, "height": 900})
    try:
        violations = _axe(page, ["color-contrast", "link-in-text-block"] if mode == "dark" else None)
    finally:
        page.context.close()
    print(f"axe {AXE_VERSION} ({mode}) on {page_name}: " + (", ".join(
        f"{v['id']} ({v['impact']}, {v['nodes']})" for v in violations) or "no violations"))
    serious = [v for v in violations if v["impact"] in SERIOUS]
    assert not serious, f"{page_name} ({mode}): serious or critical axe violations: {serious}"


# ----------------------------------------------------------------------- dark mode

# Under each figure's image: the colour its transparent pixels would show, and whether its
# corners are transparent (matplotlib's PNGs are opaque white unless a cell says otherwise).
DARK_JS = r"""async () => {
  const figures = [];
  for (const img of document.querySelectorAll('.cell_output img, figure img')) {
    if (!img.src.includes('/_images/')) continue;
    if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const corners = [[0, 0], [c.width - 1, 0], [0, c.height - 1], [c.width - 1, c.height - 1]]
      .map(([x, y]) => ctx.getImageData(x, y, 1, 1).data[3]);
    figures.push({name: img.src.split('/').pop(), opaque: corners.every(a => a === 255),
                  background: getComputedStyle(img).backgroundColor});
  }
  return {theme: document.documentElement.dataset.theme, figures};
}"""


@pytest.fixture(scope="module")
def dark_visits(browser) -> dict[str, dict]:
    """Every page once in dark mode (the reader's system asks for it; the theme follows)."""
    results = {}
    for page_name in PAGES:
        page = browser(page_name, DARK)
        try:
            results[page_name] = page.evaluate(DARK_JS)
            # Text on its background: prose, code, tables, captions, toggles.
            results[page_name]["axe"] = _axe(page, ["color-contrast", "link-in-text-block"])
        finally:
            page.context.close()
    return results


@pytest.mark.parametrize("page_name", PAGES)
def test_dark_mode_keeps_text_readable(dark_visits, page_name):
    found = dark_visits[page_name]
    assert found["theme"] == "dark", f"{page_name}: the page did not switch to dark mode ({found['theme']})"
    print(f"axe {AXE_VERSION} (dark mode, contrast) on {page_name}: "
          + (", ".join(f"{v['id']} ({v['impact']}, {v['nodes']})" for v in found["axe"]) or "no violations"))
    serious = [v for v in found["axe"] if v["impact"] in SERIOUS]
    assert not serious, f"{page_name}: in dark mode, text without enough contrast: {serious}"


@pytest.mark.parametrize("page_name", CHAPTERS)
def test_dark_mode_figures_keep_a_light_background(dark_visits, page_name):
    """A figure's black text and lines need a light ground: an opaque PNG brings its own,
    a transparent one must get one from the stylesheet."""
    for fig in dark_visits[page_name]["figures"]:
        if fig["opaque"]:
            continue
        rgb = [int(x) for x in re.findall(r"\d+", fig["background"])[:3]]
        assert len(rgb) == 3 and min(rgb) >= 200, (
            f"{page_name}: {fig['name']} is transparent and sits on {fig['background']} in dark mode")


@pytest.mark.parametrize("button, drawer, what", [
    ("button.primary-toggle", ".bd-sidebar-primary", "chapter list"),
    ("button.secondary-toggle", ".bd-sidebar-secondary", "Contents"),
])
def test_phone_drawers_open_when_tapped(browser, button, drawer, what):
    page = browser(CHAPTERS[0], PHONE)
    try:
        assert page.evaluate(DRAWER_LINKS_JS, drawer) == 0, f"the {what} drawer is open before any tap"
        toggle = page.locator(button).first
        assert toggle.is_visible(), f"no visible {what} button ({button}) at 390 px"
        toggle.tap()
        page.wait_for_timeout(600)  # the drawer slides in
        shown = page.evaluate(DRAWER_LINKS_JS, drawer)
        assert shown >= 3, f"tapping the {what} button shows {shown} links in {drawer}"
        if what == "chapter list":
            names = page.evaluate(f"() => [...document.querySelectorAll('{drawer} a')].map(a => a.href)")
            assert any(Path(c).name in href for c in CHAPTERS[1:] for href in names), names
    finally:
        page.context.close()


def test_the_3d_view_renders_and_turns(browser):
    chapter = next(c for c in CHAPTERS if "rigid_frames" in c)
    page = browser(chapter, {"width": 1280, "height": 900})
    try:
        canvas = page.locator("canvas#ubiquitin-frames")
        canvas.scroll_into_view_if_needed()
        assert int(canvas.get_attribute("data-rendered") or 0) > 75, "the 3-D view drew nothing"
        pixels = "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; " \
                 "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
        snapshot = "c => c.toDataURL()"
        assert canvas.evaluate(pixels) > 2000, "the 3-D view's canvas is blank"
        before = canvas.evaluate(snapshot)
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 40, steps=8)
        page.mouse.up()
        assert canvas.evaluate(snapshot) != before, "dragging did not turn the 3-D view"
    finally:
        page.context.close()


def test_screenshot_was_taken(visits):
    _result(visits, CHAPTERS[0])
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 20_000, f"no usable screenshot at {SCREENSHOT}"


# ------------------------------------------------------- publishing (no browser needed)

def _workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())


def test_workflow_and_ci_run_the_same_checks():
    """One definition of the checks: GitHub's build job and .ci/run both call .ci/check, which
    lints, tests, then builds the book; only main is deployed, and only after the build."""
    wf = _workflow()
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    runs = "\n".join(step.get("run", "") for step in build["steps"])
    ci_run = (ROOT / ".ci" / "run").read_text()
    for text in (runs, ci_run):
        assert "python -m pip install -r requirements.txt" in text
        assert text.index("pip install -r requirements.txt") < text.index("bash .ci/check")
    check = [line.strip() for line in (ROOT / ".ci" / "check").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith(("#", "echo"))]
    steps = [i for i, line in enumerate(check) if line.startswith(("ruff check", "python -m pytest", "jupyter-book build"))]
    assert [check[i].split()[0] for i in steps] == ["ruff", "python", "jupyter-book"], check
    assert build["env"]["GEOATTN_REQUIRE_BROWSER"] == "1"
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and "refs/heads/main" in deploy["if"]


def test_readme_links_the_workflow_badge_and_the_pages_site():
    readme = (ROOT / "README.md").read_text()
    owner, name = REPO.split("/")
    assert f"https://github.com/{REPO}/actions/workflows/book.yml/badge.svg" in readme
    assert f"https://{owner}.github.io/{name}/" in readme


def test_sphinx_fix_keeps_one_copy_of_each_inline_script():
    from sphinx.builders.html._assets import _JavaScript

    _dedupe_scripts = BOOK_FIXES._dedupe_scripts

    body = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript("a.js"), _JavaScript(None, body=body), _JavaScript("", body=body),
               _JavaScript("", body="const other = 1"), _JavaScript("a.js", defer="defer")]
    context = {"script_files": scripts}
    _dedupe_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] is scripts  # changed in place, as Sphinx restores it per page
    assert [(s.filename, s.attributes) for s in scripts] == [
        ("a.js", {}), (None, {"body": body}), ("", {"body": "const other = 1"}), ("a.js", {"defer": "defer"})]


def test_figure_style_drops_the_height_and_keeps_the_text_readable():
    tag = '<img alt="a" src="../_images/x.png" style="width: 600px; height: 300px;" />'
    meta = {"geoattn:css-width": "600", "geoattn:min-text-px": "12.0"}
    assert BOOK_FIXES.figure_style(tag, meta) == (
        '<img alt="a" src="../_images/x.png" style="width: 600px; min-width: 450px;" />')
    # Without the PNG's numbers (a chapter not re-executed): only the height goes.
    assert BOOK_FIXES.figure_style(tag, {}) == '<img alt="a" src="../_images/x.png" style="width: 600px;" />'
    # Never wider than the figure's own width.
    assert BOOK_FIXES.min_width_px({"geoattn:css-width": "600", "geoattn:min-text-px": "6"}) == 600


def test_the_library_is_built_without_the_book_extensions():
    """The Sphinx extensions live in book/_ext (local_extensions), not in the package that
    Colab installs."""
    assert not list((ROOT / "src" / "geoattn").glob("_sphinx_*.py"))
    local = CONFIG["sphinx"]["local_extensions"]
    for name, folder in local.items():
        assert (ROOT / folder / f"{name}.py").is_file(), f"{name} not in {folder}"
    assert not any("geoattn._sphinx" in ext for ext in CONFIG["sphinx"].get("extra_extensions", []))
