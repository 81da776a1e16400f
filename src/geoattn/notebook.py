"""Small helpers for the book's notebooks."""
from __future__ import annotations

import inspect

__all__ = ["show_source"]


def show_source(obj, *, start: str | None = None, stop: str | None = None):
    """Display the library's own source of ``obj`` as a highlighted code block.

    The book shows code this way instead of copying it, so the page always shows what
    runs. ``start``/``stop`` cut the source to the lines from the first one containing
    ``start`` up to (not including) the first later one containing ``stop``.
    """
    from IPython.display import Markdown

    lines = inspect.getsource(obj).splitlines()
    if start is not None:
        hits = [i for i, line in enumerate(lines) if start in line]
        if not hits:
            raise ValueError(f"start={start!r} does not occur in the source of {obj!r}")
        lines = lines[hits[0]:]
    if stop is not None:
        hits = [i for i, line in enumerate(lines) if stop in line and i > 0]
        if not hits:
            raise ValueError(f"stop={stop!r} does not occur in the source of {obj!r}")
        lines = lines[:hits[0]]
    return Markdown("```python\n" + "\n".join(lines) + "\n```")
