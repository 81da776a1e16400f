"""A Sphinx extension for building the book (``local_extensions`` in ``_config.yml``); it lives in
``book/_ext``, not in the library, so installing geoattn (on Colab) does not install it.

It removes duplicated inline ``<script>`` tags from every page. Sphinx 7.4 registers an
inline script added after the builder started (as sphinx-thebe and sphinx-togglebutton
do) twice: once with the file name ``None`` and once with ``''``, which it then fails to
recognise as equal. A duplicated ``const THEBE_JS_URL = ...`` is a JavaScript
``SyntaxError`` on every page (``tests/test_browser.py`` checks the console), so each
page keeps only the first copy of each script.

It keeps every notebook figure in shape and readable. myst-nb writes each image's nominal
size as ``style="width: Wpx; height: Hpx"``; an inline height beats the stylesheet's
``height: auto``, so a figure shrunk to a narrow column was squeezed sideways. The height
goes, and where the PNG says how small its smallest text is (``geoattn:min-text-px``,
written by ``geoattn.plotting.book_png``) the image gets a ``min-width`` at which that
text is still ``MIN_TEXT_PX`` pixels: on a phone a wide figure then scrolls inside its
own box (``book/_static/geoattn.css``) instead of shrinking its text below reading size.

It removes the ARIA attributes of docutils' citation lists and of myst-nb's folds that
axe-core reports (see ``_A11Y``; the theme's two are fixed in ``book/_templates``).

It links each chapter's PDF (printed by ``geoattn.devtools.print_pdf``, attached to the
release by ``.github/workflows/release.yml``) under the chapter's title.

It also registers the bibliography style ``geoattn_author_year`` (named in ``_config.yml``):
the reference lists label each entry "Vaswani et al., 2017", as the in-text citations of
``bibtex_reference_style: author_year`` do, instead of pybtex's "[VSP+17]".
"""
from __future__ import annotations

import math
import re
from pathlib import Path

__all__: list[str] = []

# Kept equal to geoattn.plotting.MIN_TEXT_PX (tests/test_browser.py checks it); not
# imported, so that the book builds from the notebooks without the library.
MIN_TEXT_PX = 9.0

_IMG = re.compile(r'<img\b[^>]*?\bsrc="(?P<src>[^"]*?_images/(?P<name>[^"/]+\.png))"[^>]*>')
_STYLE = re.compile(r'\sstyle="(?P<style>[^"]*)"')


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG."""
    out, pos = {}, 8
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + n].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"IEND":
            break
        pos += 12 + n
    return out


def min_width_px(meta: dict[str, str]) -> int | None:
    """The width below which the figure's smallest text would render under MIN_TEXT_PX."""
    try:
        width, smallest = float(meta["geoattn:css-width"]), float(meta["geoattn:min-text-px"])
    except (KeyError, ValueError):
        return None
    if smallest <= 0 or not math.isfinite(smallest):
        return None
    return min(int(width), math.ceil(width * MIN_TEXT_PX / smallest))


def figure_style(tag: str, meta: dict[str, str]) -> str:
    """``tag`` (an ``<img>``) without its inline height, with a min-width from ``meta``."""
    found = _STYLE.search(tag)
    if not found:
        return tag
    decls = [d.strip() for d in found.group("style").split(";") if d.strip()]
    decls = [d for d in decls if not d.replace(" ", "").startswith("height:")]
    floor = min_width_px(meta)
    if floor is not None:
        decls.append(f"min-width: {floor}px")
    style = "; ".join(decls) + (";" if decls else "")
    return tag[:found.start()] + f' style="{style}"' + tag[found.end():]


def _figure_styles(app, pagename, templatename, context, doctree):
    body = context.get("body")
    if not isinstance(body, str) or "_images/" not in body:
        return
    # Sphinx copies the images after writing the pages: read each from its source.
    sources = {dest: src for src, dest in getattr(app.builder, "images", {}).items()}

    def fix(match):
        src = sources.get(match.group("name"))
        meta = {}
        if src is not None:
            path = Path(app.srcdir) / src
            if path.is_file():
                meta = png_text(path.read_bytes())
        return figure_style(match.group(0), meta)

    context["body"] = _IMG.sub(fix, body)


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        if isinstance(script, str):  # older Sphinx: plain file names
            key = (script, ())
        else:  # None and "" both mean "inline"
            key = (script.filename or "", tuple(sorted((k, str(v)) for k, v in script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # In place: Sphinx restores this same list after the page, ready for the next one.
    scripts[:] = unique


def _author_year(entry) -> str:
    """ "Milakov and Gimelshein, 2018", "Vaswani et al., 2017", as sphinxcontrib-bibtex's
    author_year citations write them (LaTeX in names decoded: "Ł", not "{\\L}")."""
    from pybtex.richtext import Text

    people = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [Text.from_latex(" ".join(p.last_names)).render_as("text") for p in people]
    if not last:
        names = entry.fields.get("title", entry.key)
    elif len(last) == 1:
        names = last[0]
    elif len(last) == 2:
        names = f"{last[0]} and {last[1]}"
    else:
        names = f"{last[0]} et al."
    return f"{names}, {entry.fields.get('year', 'n.d.')}"


def _register_bibliography_style() -> None:
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            # Two works of the same authors and year get "2021a", "2021b", as author-year
            # styles do; equal labels would be a duplicate-label warning.
            entries = list(sorted_entries)
            labels = [_author_year(entry) for entry in entries]
            counts = {label: labels.count(label) for label in labels}
            seen: dict[str, int] = {}
            for label in labels:
                if counts[label] > 1:
                    seen[label] = seen.get(label, 0) + 1
                    label = f"{label}{chr(ord('a') + seen[label] - 1)}"
                yield label

    class AuthorYearStyle(Style):
        default_label_style = AuthorYearLabels
        default_sorting_style = "author_year_title"

    register_plugin("pybtex.style.formatting", "geoattn_author_year", AuthorYearStyle, force=True)


# What docutils and myst-nb write that axe-core reports as serious or critical:
# - a citation list with role="list" whose entries have the deprecated role
#   doc-biblioentry, not listitem (aria-required-children, critical): the plain
#   structure reads as well;
# - a fold's <summary aria-label="Toggle hidden content">: the label hides the summary's
#   own visible text ("Show code cell source", ...) from a screen reader
#   (label-content-name-mismatch, serious).
_A11Y = [
    (re.compile(r'<div role="list" class="citation-list">'), '<div class="citation-list">'),
    (re.compile(r'(<div class="citation" id="[^"]*") role="doc-biblioentry"'), r"\1"),
    (re.compile(r'<summary aria-label="Toggle hidden content">'), "<summary>"),
]


def accessible(body: str) -> str:
    for pattern, replacement in _A11Y:
        body = pattern.sub(replacement, body)
    return body


def _accessible_body(app, pagename, templatename, context, doctree):
    if isinstance(context.get("body"), str):
        context["body"] = accessible(context["body"])


def _version(srcdir) -> str | None:
    found = re.search(r'(?m)^version = "([^"]+)"', (Path(srcdir) / "pyproject.toml").read_text()) \
        if (Path(srcdir) / "pyproject.toml").is_file() else None
    return found.group(1) if found else None


def pdf_url(repository: str, version: str, pagename: str) -> str:
    """Where the release keeps this chapter's PDF (.github/workflows/release.yml)."""
    return f"{repository.rstrip('/')}/releases/download/v{version}/{Path(pagename).name}.pdf"


def _pdf_link(app, pagename, templatename, context, doctree):
    """Under each chapter's title, a link to its PDF in the release the chapter pins."""
    body = context.get("body")
    if not isinstance(body, str) or doctree is None:
        return
    if not str(app.env.doc2path(pagename)).endswith(".ipynb"):
        return
    repository = (app.config.html_theme_options or {}).get("repository_url")
    version = _version(app.srcdir)
    end = body.find("</h1>")
    if not repository or not version or end < 0:
        return
    link = (f'<p class="geoattn-pdf-link"><a href="{pdf_url(repository, version, pagename)}">'
            f"This chapter as a PDF</a> (release v{version}; without the solutions)</p>")
    context["body"] = body[:end + 5] + "\n" + link + body[end + 5:]


def kaggle_url(repository: str, branch: str, path: str) -> str:
    """Kaggle's "open a notebook from GitHub" address for ``path`` in ``repository``."""
    return f"https://kaggle.com/kernels/welcome?src={repository.rstrip('/')}/blob/{branch}/{path}"


def _kaggle_button(app, pagename, templatename, context, doctree):
    """A second free GPU beside Colab: an "open in Kaggle" entry in the launch menu.

    sphinx-book-theme knows Colab, Binder, JupyterHub, Deepnote and JupyterLite only; its
    launch menu is the header-button group labelled "launch-buttons" (priority 501), so
    this handler runs after it and appends to that group.
    """
    if not str(app.env.doc2path(pagename)).endswith(".ipynb"):
        return
    options = app.config.html_theme_options or {}
    repository, branch = options.get("repository_url"), options.get("repository_branch", "main")
    group = next((b for b in context.get("header_buttons", []) if b.get("label") == "launch-buttons"), None)
    if not repository or group is None:
        return
    path = f"{options.get('path_to_docs', '').strip('/')}/{pagename}.ipynb".lstrip("/")
    group["buttons"].append({"type": "link", "text": "Kaggle", "tooltip": "Launch on Kaggle",
                             "icon": "fab fa-kaggle", "url": kaggle_url(repository, branch, path)})


def setup(app):
    app.connect("html-page-context", _dedupe_scripts)
    app.connect("html-page-context", _figure_styles)
    app.connect("html-page-context", _pdf_link)
    app.connect("html-page-context", _kaggle_button, priority=502)
    app.connect("html-page-context", _accessible_body)
    _register_bibliography_style()
    # Once more when the build starts: pybtex keeps runtime plugins per process, and a
    # build once failed with "plugin ... not found" though setup() had registered it.
    app.connect("builder-inited", lambda app: _register_bibliography_style())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
