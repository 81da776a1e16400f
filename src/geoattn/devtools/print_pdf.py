"""Print every chapter of the built book to PDF with Chromium, as a reader's browser prints it.

    python -m geoattn.devtools.print_pdf _build/html _build/pdf

Each chapter page is opened in headless Chromium (Playwright, with the system's Chromium:
the one ``tests/test_browser.py`` uses), in print media, after MathJax has typeset it,
and saved as ``<chapter>.pdf``. The book's print stylesheet (``book/_static/
course-print.css``) leaves out exercise solutions, the code cells that answer an exercise,
folded code and every button, and wraps long lines instead of cutting them. The release
workflow attaches the PDFs to the release, and each chapter links its own.

Offline machines: MathJax's CDN request is answered from the ``django-static-mathjax``
package when it is installed, as in the browser test; other off-machine requests fail.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["MATHJAX_CDN", "chromium_path", "chapter_pages", "print_pdfs", "main"]

MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"

# In print media, what is wider than its box, so that paper would cut it: code, outputs,
# display equations, tables. (Paper cannot scroll.)
CUT_JS = r"""() => {
  const wide = el => el.scrollWidth > el.clientWidth + 1 && el.getClientRects().length > 0;
  const text = el => el.textContent.trim().replace(/\s+/g, ' ').slice(0, 70);
  const boxes = [...document.querySelectorAll('pre, mjx-container[display="true"], table, '
                                              + '.pst-scrollable-table-container, a.image-reference')];
  return boxes.filter(wide).map(el => el.tagName.toLowerCase() + ': ' + text(el));
}"""


def chromium_path() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chapter_pages(root: Path) -> list[str]:
    """The chapters of ``_toc.yml`` that are notebooks (``book/01_self_attention``, ...)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"] if (root / f"{c['file']}.ipynb").exists()]


def _local_mathjax() -> Path | None:
    try:
        from importlib.resources import files

        path = Path(str(files("mathjax"))) / "static" / "mathjax"
    except (ImportError, ModuleNotFoundError, TypeError):
        return None
    return path if path.is_dir() else None


def print_pdfs(html: Path, out: Path, pages: list[str], *, chromium: str | None = None) -> dict[str, dict]:
    """Print each of ``pages`` (paths under ``html`` without ``.html``) to ``out/<name>.pdf``.

    Returns, per page, ``{"pdf": path, "cut": [...]}``: ``cut`` lists what the printed page
    shows wider than its box (it should be empty)."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or chromium_path()
    if chromium is None:
        raise RuntimeError("no Chromium found: install Debian's `chromium` or set CHROMIUM")
    out.mkdir(parents=True, exist_ok=True)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    mathjax = _local_mathjax()

    def route(r):
        url = r.request.url
        if url.startswith(base):
            return r.continue_()
        if mathjax is not None and url.startswith(MATHJAX_CDN):
            local = mathjax / url[len(MATHJAX_CDN):].split("?")[0]
            if local.is_file():
                return r.fulfill(path=str(local))
        return r.continue_() if os.environ.get("GEOATTN_PDF_ONLINE") == "1" else r.abort("blockedbyclient")

    written: dict[str, dict] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                context.route("**/*", route)
                for name in pages:
                    page = context.new_page()
                    page.goto(base + f"{name}.html", wait_until="load", timeout=60_000)
                    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                           timeout=30_000)
                    page.evaluate("() => MathJax.startup.promise.then(() => true)")
                    # As a browser's print does: the print event first (course-print.js).
                    page.evaluate("() => window.dispatchEvent(new Event('beforeprint'))")
                    page.emulate_media(media="print")
                    target = out / f"{Path(name).name}.pdf"
                    # The page's width while printing: A4 less the margins, in CSS px.
                    page.set_viewport_size({"width": round((210 - 28) / 25.4 * 96), "height": 1100})
                    cut = page.evaluate(CUT_JS)
                    page.pdf(path=str(target), format="A4", print_background=True,
                             margin={"top": "16mm", "bottom": "16mm", "left": "14mm", "right": "14mm"})
                    written[name] = {"pdf": target, "cut": cut}
                    page.close()
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, nargs="?", default=Path("_build/html"))
    parser.add_argument("out", type=Path, nargs="?", default=Path("_build/pdf"))
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[3],
                        help="the repository (its _toc.yml names the chapters)")
    args = parser.parse_args(argv)
    failed = False
    for result in print_pdfs(args.html, args.out, chapter_pages(args.root)).values():
        print(result["pdf"])
        for item in result["cut"]:
            failed = True
            print(f"  cut off on paper: {item}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
