"""A Sphinx extension for building the book (``local_extensions`` in ``_config.yml``); it lives in
``book/_ext``, not in the library, so installing geoattn (on Colab) does not install it.

It removes duplicated inline ``<script>`` tags from every page. Sphinx 7.4 registers an
inline script added after the builder started (as sphinx-thebe and sphinx-togglebutton
do) twice: once with the file name ``None`` and once with ``''``, which it then fails to
recognise as equal. A duplicated ``const THEBE_JS_URL = ...`` is a JavaScript
``SyntaxError`` on every page (``tests/test_browser.py`` checks the console), so each
page keeps only the first copy of each script.

It also registers the bibliography style ``geoattn_author_year`` (named in ``_config.yml``):
the reference lists label each entry "Vaswani et al., 2017", as the in-text citations of
``bibtex_reference_style: author_year`` do, instead of pybtex's "[VSP+17]".
"""
from __future__ import annotations

__all__: list[str] = []


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


def setup(app):
    app.connect("html-page-context", _dedupe_scripts)
    _register_bibliography_style()
    # Once more when the build starts: pybtex keeps runtime plugins per process, and a
    # build once failed with "plugin ... not found" though setup() had registered it.
    app.connect("builder-inited", lambda app: _register_bibliography_style())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
