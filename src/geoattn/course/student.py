"""Student copies of the chapter notebooks, made from the chapters themselves.

The chapters are the single source: each exercise is written once, with its solution,
in this pattern (one markdown cell per directive)::

    :::{exercise} Title                <- markdown, kept as plain Markdown ("Exercise 1.1: Title")
    :label: ex-01-softmax
    ...
    :::
    :::{solution-start} ex-01-softmax  <- markdown, dropped
    :class: dropdown
    :::
    def my_softmax(x):                 <- code, kept with its body replaced
        ### BEGIN SOLUTION
        ...                            <- the solution: becomes `raise NotImplementedError(...)`
        ### END SOLUTION
    geoattn.course.checks.check_softmax(my_softmax)
    :::{solution-end}                  <- markdown, dropped
    :::

A student copy keeps every cell except the cells from ``solution-start`` to ``solution-end``
(inclusive, markdown and raw alike) and any ``{solution}`` directive cell; in code cells the
lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (inclusive) become one ``raise
NotImplementedError`` at the same indentation. A solution block with no code cell is a
conceptual exercise: its place gets an empty "Your answer:" cell. A code cell tagged
``solution-source`` (a ``show_source`` of the library code that solves an exercise) becomes
a note. Markdown cells lose every MyST-only construct (see :mod:`geoattn.course._myst`):
exercises, citations, cross-references and notes become plain Markdown, and a
``{bibliography}`` the list of the works the copy cites. Outputs, execution
counts and any metadata that is not plainly harmless are dropped.

Anything ambiguous raises a ``ValueError`` naming the notebook and the cell, because a silent
mistake here would hand the answers to the students: unbalanced markers, a marker typo
(``### begin solution``), a marker in a markdown cell, solution code outside the markers.

Writing never loses data: each copy goes to a temporary file that then replaces the
destination atomically (so a link at the destination is replaced, never written through);
a destination that is a source chapter (by a symbolic or hard link) is refused, and an
existing copy (maybe a student's work) is only replaced with ``--force``.

Run it as ``python -m geoattn.course.student book/ assignments/``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from ._myst import MYST_SYNTAX, MystConverter, cited_keys, directives, parse_bibtex, targets_of

__all__ = ["BEGIN", "END", "SOLUTION_SOURCE_TAG", "make_student_notebook", "write_student_notebooks"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
SOLUTION_SOURCE_TAG = "solution-source"

# A MyST directive opening line, with a backtick, tilde or colon fence (colon_fence is
# enabled); docutils matches directive names case-insensitively ({Solution} renders), so we
# do too. Markdown cells are read with MyST's own parser (_myst.directives); these patterns
# are for raw cells and metadata, where any such line is suspect.
_DIRECTIVE = r"^\s*(?:`{3,}|~{3,}|:{3,})\{%s\}"
_SOLUTION_START = re.compile(_DIRECTIVE % r"solution-start", re.M | re.I)
_SOLUTION_END = re.compile(_DIRECTIVE % r"solution-end", re.M | re.I)
_SOLUTION = re.compile(_DIRECTIVE % r"solution", re.M | re.I)
_EXERCISE = re.compile(_DIRECTIVE % r"exercise", re.M | re.I)
_LABEL = re.compile(r"\{solution-start\}\s*(\S+)", re.I)
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)")
# Anything that looks like a solution marker, in any case or spacing ("#begin  solution").
_MARKER_LIKE = re.compile(r"(begin|end)[\s_-]*solution", re.I)
_CHAPTER_NUMBER = re.compile(r"(?:^|[/\\])(\d+)_[^/\\]*$")

# Metadata that is safe to hand out; anything else (a stored answer, nbgrader's fields,
# a tool's cache) is dropped, because nobody reviews it before it reaches the students.
_NOTEBOOK_METADATA = ("kernelspec", "language_info", "accelerator", "colab")
_CELL_METADATA = ("tags", "jupyter", "collapsed", "scrolled", "editable", "deletable")

# Plain markdown (not a MyST directive): student copies are read in Jupyter or Colab.
NOTICE = (
    "> **Student copy.** The exercise solutions are removed from this notebook. In each\n"
    "> coding exercise, replace the `raise NotImplementedError(...)` line with your own code\n"
    "> and run the cell: its check prints ✓ when your function is right, or a hint when not.\n"
    "> Write the answers to the other exercises in the \"Your answer\" cells."
)
ANSWER_CELL = "**Your answer:**\n\n"
# The chapter's pointer to its student copy, which inside the copy points to itself.
_THIS_IS_THE_COPY = re.compile(r"Work on these exercises in your own copy of this chapter: \[open the student copy "
                               r"in Colab\]\([^)\s]*\)(?: \([^()]*\))?\.?")
THIS_IS_THE_COPY = ("This notebook is your copy of this chapter, with the solutions removed: work on the "
                    "exercises here (on Colab, save a copy to your Drive first: *File → Save a copy in Drive*).")
HIDDEN_SOURCE_NOTE = (
    "> *The book shows the library's code for this step here. The student copy leaves it out,\n"
    "> because writing it is one of this chapter's exercises.*"
)


def _where(name: str, index: int) -> str:
    return f"{name}, cell {index}"


def _check_marker_lines(source: str, where: str) -> None:
    for lineno, line in enumerate(source.splitlines(), start=1):
        if _MARKER_LIKE.search(line) and line.strip() not in (BEGIN, END):
            raise ValueError(f"{where}, line {lineno}: a solution marker must stand alone on its line "
                             f"as {BEGIN!r} or {END!r}, got {line!r}")


def _stub_solution(source: str, where: str, label: str | None) -> tuple[str, int]:
    """Replace every BEGIN..END SOLUTION span in ``source``; return the new source and the count."""
    _check_marker_lines(source, where)
    out: list[str] = []
    begin_line: int | None = None
    func: str | None = None
    n = 0
    for lineno, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if begin_line is not None:
                raise ValueError(f"{where}, line {lineno}: {BEGIN!r} inside the solution opened on line "
                                 f"{begin_line}, which has no {END!r} yet")
            begin_line = lineno
            indent = line[: len(line) - len(line.lstrip())]
            what = f"write the body of {func}()" if func else "write the solution"
            if label:
                what += f" ({label})"
            # json.dumps gives a double-quoted literal that Python reads back unchanged.
            message = json.dumps("exercise: " + what, ensure_ascii=False)
            out.append(f"{indent}raise NotImplementedError({message})")
            n += 1
        elif stripped == END:
            if begin_line is None:
                raise ValueError(f"{where}, line {lineno}: {END!r} without a {BEGIN!r} before it")
            begin_line = None
        elif begin_line is None:
            match = _DEF.match(line)
            if match:
                func = match.group(1)
            out.append(line)
    if begin_line is not None:
        raise ValueError(f"{where}, line {begin_line}: {BEGIN!r} has no {END!r} after it")
    text = "\n".join(out)
    return (text + "\n" if source.endswith("\n") else text), n


_SOLUTION_NAMES = ("solution", "solution-start", "solution-end")


def _solution_directives(src: str, cell_type: str, where: str) -> tuple[int, int, int]:
    """How many solution-start, solution-end and solution directives the cell opens at its top level.

    A markdown cell is read as MyST reads it, so every fence MyST accepts counts; a solution
    directive nested in a quote, a list, another directive or ``{eval-rst}`` is refused,
    because dropping the cell around it could drop the exercise, and keeping it would hand
    out the answer.
    """
    if cell_type == "raw":
        return (len(_SOLUTION_START.findall(src)), len(_SOLUTION_END.findall(src)),
                len(_SOLUTION.findall(src)))
    found = directives(src)
    nested = [name for name, depth in found if depth > 0 and name in _SOLUTION_NAMES]
    if nested:
        raise ValueError(f"{where}: a {{{nested[0]}}} directive inside a quote, a list or another directive; "
                         "put each solution directive at the top level of a markdown cell of its own")
    top = [name for name, _ in found]
    return top.count("solution-start"), top.count("solution-end"), top.count("solution")


def _clean_metadata(metadata, keep: tuple[str, ...], where: str):
    kept = {key: copy.deepcopy(metadata[key]) for key in keep if key in metadata}
    if _MARKER_LIKE.search(json.dumps(kept)) or _SOLUTION.search(json.dumps(kept).replace("\\n", "\n")):
        raise ValueError(f"{where}: the metadata holds a solution marker")
    return kept


def _chapter_number(name: str) -> int | None:
    match = _CHAPTER_NUMBER.search(name)
    return int(match.group(1)) if match else None


def _new_markdown(source: str, cell_id: str):
    from nbformat.v4 import new_markdown_cell

    cell = new_markdown_cell(source)
    cell["id"] = cell_id  # fixed, so the copy is byte-for-byte reproducible
    return cell


def make_student_notebook(nb, name: str = "notebook", *, bib: dict | None = None, chapter: int | None = None,
                          notebooks=None, targets: dict | None = None):
    """Return the student copy of the chapter notebook ``nb`` (an nbformat v4 node); ``nb`` is not changed.

    ``name`` is used in error messages, and its leading number (``04_x.ipynb``) numbers the
    exercises unless ``chapter`` is given. ``bib`` holds the bibliography that citations
    and reference lists are resolved from (see :func:`geoattn.course._myst.parse_bibtex`).
    ``notebooks``, if given, names (without ``.ipynb``) the chapters that get a copy beside
    this one: a ``{doc}`` link to any other page becomes plain text. ``targets`` holds the
    ``(label)=`` targets of the other chapters (see :func:`geoattn.course._myst.targets_of`), so
    a ``{ref}`` to one links to that chapter's copy.
    """
    from nbformat import NotebookNode

    student = copy.deepcopy(nb)
    cells = []
    markdown = []  # (cell, source, where): converted once every kept cell is known
    open_label: str | None = None  # the exercise whose solution block we are inside
    open_at, open_has_code = -1, False
    for index, cell in enumerate(student.cells):
        where = _where(name, index)
        cell_type = cell.get("cell_type")
        if cell_type not in ("markdown", "code", "raw") or not isinstance(cell.get("source"), str):
            raise ValueError(f"{where}: not a notebook cell (cell_type {cell_type!r}, a 'source' string)")
        src = cell.source
        if cell_type in ("markdown", "raw"):
            starts, ends, solutions = _solution_directives(src, cell_type, where)
            if starts > 1 or ends > 1 or (starts and ends):
                raise ValueError(f"{where}: put each solution-start/solution-end directive in its own "
                                 "markdown cell")
            if starts:
                if open_label is not None:
                    raise ValueError(f"{where}: solution-start while the solution of {open_label} "
                                     f"(opened in cell {open_at}) has no solution-end yet")
                label = _LABEL.search(src)
                open_label, open_at, open_has_code = (label.group(1) if label else "?"), index, False
                continue
            if ends:
                if open_label is None:
                    raise ValueError(f"{where}: solution-end without a solution-start before it")
                if not open_has_code:  # a conceptual exercise: the student writes the answer here
                    cells.append(_new_markdown(ANSWER_CELL, f"answer-{open_label}"[:64]))
                open_label = None
                continue
            if open_label is not None:
                continue  # a written-out answer: never in the student copy
            if solutions:
                if _EXERCISE.search(src) or (cell_type == "markdown" and "exercise" in dict(directives(src))):
                    raise ValueError(f"{where}: put the {{solution}} directive in a cell of its own, "
                                     "apart from the exercise")
                continue
            if _MARKER_LIKE.search(src):
                raise ValueError(f"{where}: a solution marker in a {cell_type} cell; markers belong in "
                                 "code cells, around the solution's code")
            if cell_type == "markdown":
                markdown.append((cell, src, where))
                cell.pop("outputs", None)
        else:
            tags = cell.get("metadata", {}).get("tags", [])
            if SOLUTION_SOURCE_TAG in tags and open_label is None:
                if _MARKER_LIKE.search(src):
                    raise ValueError(f"{where}: a {SOLUTION_SOURCE_TAG!r} cell holds solution markers")
                cells.append(_new_markdown(HIDDEN_SOURCE_NOTE, cell.get("id", f"hidden-{index}")))
                continue
            cell.source, n = _stub_solution(src, where, open_label)
            if open_label is not None:
                open_has_code = True
                if n == 0:
                    raise ValueError(f"{where}: code cell inside the solution of {open_label} has no "
                                     f"{BEGIN!r} ... {END!r} markers, so its code would reach the students")
            cell.outputs = []
            cell.execution_count = None
        cell.metadata = NotebookNode(_clean_metadata(cell.get("metadata", {}), _CELL_METADATA, where))
        cells.append(cell)
    if open_label is not None:
        raise ValueError(f"{_where(name, open_at)}: solution-start for {open_label} has no solution-end")
    # A reference list holds the works that the copy's own text cites (solutions are gone),
    # wherever in the notebook they are cited; exercises are numbered in order.
    docname = Path(name).stem
    known = {**(targets or {}), **targets_of((src for _, src, _ in markdown), docname)}

    def new_converter():
        return MystConverter(bib, chapter if chapter is not None else _chapter_number(name),
                             cited=cited_keys(src for _, src, _ in markdown), docname=docname,
                             notebooks=notebooks, targets=known)

    numbering = new_converter()  # a first pass numbers the exercises, so that a {ref} to a
    for _, src, where in markdown:  # later one still reads "Exercise 4.2"
        numbering.convert(src, where)
    converter = new_converter()
    converter.exercises.update(numbering.exercises)
    for cell, src, where in markdown:
        cell.source = _THIS_IS_THE_COPY.sub(THIS_IS_THE_COPY, converter.convert(src, where))
    student.metadata = NotebookNode(_clean_metadata(student.metadata, _NOTEBOOK_METADATA, f"{name}, metadata"))
    student.cells = cells
    return student


def _with_notice(nb):
    """Insert the student notice after the title cell (the first markdown cell), if any."""
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(at, _new_markdown(NOTICE, "student-copy-notice"))
    return nb


def read_notebook(path: Path):
    """Read ``path`` as an nbformat v4 notebook, or raise a ValueError naming the file and what is wrong."""
    import nbformat

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a notebook (not UTF-8 text: {err.reason})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a notebook (not JSON: {err.msg}, line {err.lineno})") from None
    except RecursionError:  # a hostile file: JSON nested deeper than the parser's stack
        raise ValueError(f"{path}: not a notebook (JSON nested too deeply)") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError(f"{path}: not a notebook (no list of 'cells')")
    for index, cell in enumerate(data["cells"]):
        if not isinstance(cell, dict) or "source" not in cell:
            raise ValueError(f"{_where(str(path), index)}: the cell has no 'source'")
        if not isinstance(cell["source"], (str, list)):
            raise ValueError(f"{_where(str(path), index)}: the cell's 'source' is not text")
    try:
        return nbformat.reads(text, as_version=4)
    except RecursionError:
        raise ValueError(f"{path}: not a notebook (nested too deeply)") from None
    except Exception as err:  # nbformat raises several kinds for a broken notebook
        raise ValueError(f"{path}: not a valid notebook ({type(err).__name__}: {err})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    The rename replaces the directory entry: a symbolic or hard link at ``path`` is
    replaced, and whatever it pointed to is never written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_student_notebooks(src_dir: str | Path, out_dir: str | Path, *, force: bool = False,
                            bibliography: str | Path | None = None) -> list[Path]:
    """Write the student copy of every ``*.ipynb`` in ``src_dir`` to ``out_dir`` (same names); return the paths.

    An existing copy is replaced only with ``force=True``; a destination that is one of
    the sources (through any link) is always refused. Citations come from
    ``bibliography`` (default: ``src_dir/references.bib`` when it exists).
    """
    import nbformat

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise ValueError(f"src_dir {str(src_dir)!r} is not a directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is a file, not a directory")
    sources = sorted(src_dir.glob("*.ipynb"))
    if not sources:
        raise ValueError(f"src_dir {str(src_dir)!r} holds no .ipynb notebook")
    if out_dir.resolve() == src_dir.resolve():
        raise ValueError("out_dir must differ from src_dir: the student copies would overwrite the chapters")
    bib_path = Path(bibliography) if bibliography is not None else src_dir / "references.bib"
    bib = parse_bibtex(bib_path.read_text(encoding="utf-8"), str(bib_path)) if bib_path.is_file() else {}
    # Convert and check everything first, so an error in one chapter leaves out_dir untouched.
    copies = []
    chapters = [(path, read_notebook(path)) for path in sources]
    targets: dict = {}
    for path, nb in chapters:  # so that a {ref} to another chapter links to its copy
        targets.update(targets_of((c.source for c in nb.cells if c.get("cell_type") == "markdown"
                                   and isinstance(c.get("source"), str)), path.stem))
    for path, nb in chapters:
        student = make_student_notebook(nb, name=str(path), bib=bib, notebooks=[s.stem for s in sources],
                                        targets=targets)
        copies.append((out_dir / path.name, _with_notice(student)))
    for dest, _ in copies:
        if not (dest.exists() or dest.is_symlink()):
            continue
        hit = next((s for s in sources if _same_file(dest, s) or dest.resolve() == s.resolve()), None)
        if hit is not None:
            raise ValueError(f"{dest} is a link to the chapter {hit}: writing the copy there would destroy "
                             "the chapter's solutions. Remove the link first.")
        if dest.is_dir():
            raise ValueError(f"{dest} is a directory, not a notebook")
        if not force:
            raise ValueError(f"{dest} exists (it may hold a student's work); pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for dest, nb in copies:
        text = nbformat.writes(nb)
        atomic_write_text(dest, text if text.endswith("\n") else text + "\n")
    return [dest for dest, _ in copies]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoattn.course.student",
        description="Write student copies (solutions removed, outputs cleared, plain Markdown) of the "
                    "chapter notebooks.",
    )
    parser.add_argument("src_dir", help="folder with the chapter notebooks, e.g. book/")
    parser.add_argument("out_dir", help="folder for the student copies, e.g. assignments/")
    parser.add_argument("--force", action="store_true",
                        help="replace existing copies (by default an existing copy, maybe a student's work, "
                             "is never overwritten)")
    parser.add_argument("--bibliography", help="BibTeX file for citations (default: SRC_DIR/references.bib)")
    args = parser.parse_args(argv)
    try:
        written = write_student_notebooks(args.src_dir, args.out_dir, force=args.force,
                                          bibliography=args.bibliography)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


__all__ += ["MYST_SYNTAX", "read_notebook", "atomic_write_text", "targets_of", "THIS_IS_THE_COPY"]

if __name__ == "__main__":
    sys.exit(main())
