"""Student copies of the chapter notebooks, made from the chapters themselves.

The chapters are the single source: each exercise is written once, with its solution,
in this pattern (one markdown cell per directive)::

    ```{exercise} Title              <- markdown, kept
    :label: ex-01-softmax
    ```
    ```{solution-start} ex-01-softmax  <- markdown, dropped
    :class: dropdown
    ```
    def my_softmax(x):                 <- code, kept with its body replaced
        ### BEGIN SOLUTION
        ...                            <- the solution: becomes `raise NotImplementedError(...)`
        ### END SOLUTION
    geoattn.course.checks.check_softmax(my_softmax)
    ```{solution-end}                  <- markdown, dropped
    ```

A student copy keeps every cell except the markdown cells from ``solution-start`` to
``solution-end`` (inclusive) and any ``{solution}`` directive cell; in code cells the
lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (inclusive) become one
``raise NotImplementedError`` at the same indentation. Outputs and execution counts are
cleared, so a student starts from a clean notebook. Anything ambiguous (unbalanced
markers, a solution block that never ends, solution code outside the markers) raises a
``ValueError`` naming the notebook and the cell, because a silent mistake here would
hand the answers to the students.

Run it as ``python -m geoattn.course.student book/ assignments/``.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

__all__ = ["BEGIN", "END", "make_student_notebook", "write_student_notebooks"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"

# A MyST directive opening line, with a backtick or colon fence (colon_fence is enabled).
_DIRECTIVE = r"^\s*(?:`{3,}|:{3,})\{%s\}"
_SOLUTION_START = re.compile(_DIRECTIVE % r"solution-start", re.M)
_SOLUTION_END = re.compile(_DIRECTIVE % r"solution-end", re.M)
_SOLUTION = re.compile(_DIRECTIVE % r"solution", re.M)
_LABEL = re.compile(r"\{solution-start\}\s*(\S+)")
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)")

# Keys written by a run (timings), not by an author; dropped so that re-executing a
# chapter does not change its student copy.
_VOLATILE_CELL_METADATA = ("execution",)

# Plain markdown (not a MyST directive): student copies are read in Jupyter or Colab.
NOTICE = (
    "> **Student copy.** The exercise solutions are removed from this notebook. In each\n"
    "> exercise, replace the `raise NotImplementedError(...)` line with your own code and\n"
    "> run the cell: its check prints ✓ when your function is right, or a hint when not."
)


def _where(name: str, index: int) -> str:
    return f"{name}, cell {index}"


def _stub_solution(source: str, where: str, label: str | None) -> tuple[str, int]:
    """Replace every BEGIN..END SOLUTION span in ``source``; return the new source and the count."""
    out: list[str] = []
    begin_line: int | None = None
    func: str | None = None
    n = 0
    for lineno, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        is_begin, is_end = stripped == BEGIN, stripped == END
        if not (is_begin or is_end) and ("BEGIN SOLUTION" in line or "END SOLUTION" in line):
            raise ValueError(f"{where}, line {lineno}: a solution marker must stand alone on its line "
                             f"as {BEGIN!r} or {END!r}, got {line!r}")
        if is_begin:
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
        elif is_end:
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


def make_student_notebook(nb, name: str = "notebook"):
    """Return the student copy of the chapter notebook ``nb`` (an nbformat v4 node); ``nb`` is not changed.

    ``name`` is used in error messages only.
    """
    student = copy.deepcopy(nb)
    cells = []
    open_label: str | None = None  # the exercise whose solution block we are inside
    open_at = -1
    for index, cell in enumerate(student.cells):
        where = _where(name, index)
        if cell.cell_type == "markdown":
            src = cell.source
            starts, ends = len(_SOLUTION_START.findall(src)), len(_SOLUTION_END.findall(src))
            if starts > 1 or ends > 1 or (starts and ends):
                raise ValueError(f"{where}: put each solution-start/solution-end directive in its own "
                                 "markdown cell")
            if starts:
                if open_label is not None:
                    raise ValueError(f"{where}: solution-start while the solution of {open_label} "
                                     f"(opened in cell {open_at}) has no solution-end yet")
                label = _LABEL.search(src)
                open_label, open_at = (label.group(1) if label else "?"), index
                continue
            if ends:
                if open_label is None:
                    raise ValueError(f"{where}: solution-end without a solution-start before it")
                open_label = None
                continue
            if open_label is not None or _SOLUTION.search(src):
                continue  # a written-out answer: never in the student copy
        elif cell.cell_type == "code":
            cell.source, n = _stub_solution(cell.source, where, open_label)
            if open_label is not None and n == 0:
                raise ValueError(f"{where}: code cell inside the solution of {open_label} has no "
                                 f"{BEGIN!r} ... {END!r} markers, so its code would reach the students")
            cell.outputs = []
            cell.execution_count = None
        for key in _VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        cells.append(cell)
    if open_label is not None:
        raise ValueError(f"{_where(name, open_at)}: solution-start for {open_label} has no solution-end")
    student.cells = cells
    return student


def _with_notice(nb):
    """Insert the student notice after the title cell (the first markdown cell), if any."""
    import nbformat

    notice = nbformat.v4.new_markdown_cell(NOTICE)
    # A fixed id, so the copy is byte-for-byte reproducible.
    notice["id"] = "student-copy-notice"
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(at, notice)
    return nb


def write_student_notebooks(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the student copy of every ``*.ipynb`` in ``src_dir`` to ``out_dir`` (same names); return the paths."""
    import nbformat

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise ValueError(f"src_dir {str(src_dir)!r} is not a directory")
    sources = sorted(src_dir.glob("*.ipynb"))
    if not sources:
        raise ValueError(f"src_dir {str(src_dir)!r} holds no .ipynb notebook")
    if out_dir.resolve() == src_dir.resolve():
        raise ValueError("out_dir must differ from src_dir: the student copies would overwrite the chapters")
    # Convert everything first, so an error in one chapter leaves out_dir untouched.
    copies = []
    for path in sources:
        nb = nbformat.read(path, as_version=4)
        copies.append((out_dir / path.name, _with_notice(make_student_notebook(nb, name=str(path)))))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, nb in copies:
        nbformat.write(nb, path)
    return [path for path, _ in copies]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoattn.course.student",
        description="Write student copies (solutions removed, outputs cleared) of the chapter notebooks.",
    )
    parser.add_argument("src_dir", help="folder with the chapter notebooks, e.g. book/")
    parser.add_argument("out_dir", help="folder for the student copies, e.g. assignments/")
    args = parser.parse_args(argv)
    try:
        written = write_student_notebooks(args.src_dir, args.out_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
