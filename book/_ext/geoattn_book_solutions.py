"""A Sphinx extension for building the book (``local_extensions`` in ``_config.yml``; it
lives in ``book/_ext``, not in the library): exercise solutions stay out of print and out
of search, while readers online still open them with one click.

- **Print.** sphinx-togglebutton opens every dropdown before printing, so a printed page
  (or a PDF saved from the browser) would show every solution. ``book/_static/course-print.css``
  hides solutions in print media, and ``course-print.js`` marks the page while the print
  event runs, so they stay hidden whatever opened them.
- **Search.** Sphinx indexes the whole page, solutions included, and a search for a word
  of an answer would find and quote it. The indexer gets a copy of each page without its
  solutions (the page itself is unchanged); on the search page, the quoted summaries also
  leave solutions out.
- **Code that answers an exercise.** A cell tagged ``solution-source`` shows the library's
  own code for something an exercise asks the reader to write (the stable softmax, say).
  Its output is folded like a solution, behind a toggle whose label says what it holds,
  and it is left out of print (``course-print.css``). Done here by tag, so the notebooks,
  which Colab and the student copies read, stay as they are.
"""
from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

__all__: list[str] = []

CSS, JS = "course-print.css", "course-print.js"
SOURCE_TAG = "solution-source"
SHOW = "Show the library's code: it answers an exercise of this chapter"
HIDE = "Hide the code that answers an exercise"


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


def _tags(node) -> list:
    return (node.get("cell_metadata") or {}).get("tags") or []


class FoldSolutionSource(SphinxPostTransform):
    """Folds the output of every ``solution-source`` cell, as myst-nb's ``hide-output`` would.

    It runs just before myst-nb's own folding (``HideInputCells``, priority 199), which
    then builds the toggle from the mode and the labels set here.
    """

    default_priority = 198
    formats = ("html",)

    def run(self, **kwargs):
        for node in self.document.findall(nodes.container):
            if node.get("nb_element") != "cell_code" or SOURCE_TAG not in _tags(node):
                continue
            node["classes"].append("solution-source")
            mode = node.get("hide_mode")
            node["hide_mode"] = {None: "output", "input": "input+output"}.get(mode, mode)
            node["prompt_show"], node["prompt_hide"] = SHOW, HIDE


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
    app.add_post_transform(FoldSolutionSource)
    app.add_css_file(CSS)
    app.add_js_file(JS)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
