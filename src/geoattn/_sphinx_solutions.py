"""A Sphinx extension for building the book (listed in ``_config.yml``): exercise solutions
stay out of print and out of search, while readers online still open them with one click.

- **Print.** sphinx-togglebutton opens every dropdown before printing, so a printed page
  (or a PDF saved from the browser) would show every solution. ``book/_static/course-print.css``
  hides solutions in print media, and ``course-print.js`` marks the page while the print
  event runs, so they stay hidden whatever opened them.
- **Search.** Sphinx indexes the whole page, solutions included, and a search for a word
  of an answer would find and quote it. The indexer gets a copy of each page without its
  solutions (the page itself is unchanged); on the search page, the quoted summaries also
  leave solutions out.
"""
from __future__ import annotations

from pathlib import Path

from docutils import nodes

__all__: list[str] = []

CSS, JS = "course-print.css", "course-print.js"


def _is_solution(node) -> bool:
    if not isinstance(node, nodes.Element):
        return False
    try:
        from sphinx_exercise.nodes import solution_end_node, solution_node, solution_start_node
    except ImportError:  # pragma: no cover - the book always has sphinx-exercise
        kinds = ()
    else:
        kinds = (solution_node, solution_start_node, solution_end_node)
    return isinstance(node, kinds) or "solution" in node.get("classes", [])


def without_solutions(doctree):
    """A copy of ``doctree`` with every solution removed."""
    copy = doctree.deepcopy()
    for node in list(copy.findall(_is_solution)):
        if node.parent is not None:
            node.parent.remove(node)
    return copy


def _wrap_indexer(app) -> None:
    builder = app.builder
    if not hasattr(builder, "index_page"):
        return  # not an HTML builder
    index_page = builder.index_page

    def index_without_solutions(pagename, doctree, title):
        return index_page(pagename, without_solutions(doctree), title)

    builder.index_page = index_without_solutions


def _static_path(app, config) -> None:
    static = str(Path(app.srcdir) / "book" / "_static")
    if Path(static).is_dir() and static not in config.html_static_path:
        config.html_static_path.append(static)


def setup(app):
    app.connect("config-inited", _static_path)
    app.connect("builder-inited", _wrap_indexer)
    app.add_css_file(CSS)
    app.add_js_file(JS)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
