"""A Sphinx extension for building the book (listed in ``_config.yml``), not part of the library's API.

It removes duplicated inline ``<script>`` tags from every page. Sphinx 7.4 registers an
inline script added after the builder started (as sphinx-thebe and sphinx-togglebutton
do) twice: once with the file name ``None`` and once with ``''``, which it then fails to
recognise as equal. A duplicated ``const THEBE_JS_URL = ...`` is a JavaScript
``SyntaxError`` on every page (``tests/test_browser.py`` checks the console), so each
page keeps only the first copy of each script.
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


def setup(app):
    app.connect("html-page-context", _dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
