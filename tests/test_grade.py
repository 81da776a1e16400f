"""``python -m geoattn.course.grade``: every submitted notebook runs in its own kernel and
temporary folder, under a time limit, and ends in one row per exercise, whatever it does."""
from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from geoattn.course import grade
from geoattn.course.student import BEGIN, END, make_student_notebook

SETUP = "import torch\nimport geoattn\nimport geoattn.course.checks"
SOFTMAX = (f"def my_softmax(x):\n    {BEGIN}\n    e = torch.exp(x - x.amax(dim=-1, keepdim=True))\n"
           f"    return e / e.sum(dim=-1, keepdim=True)\n    {END}\n\n"
           "geoattn.course.checks.check_softmax(my_softmax)")
CAUSAL = (f"def my_causal_mask(n):\n    {BEGIN}\n    i = torch.arange(n)\n    return i[None, :] <= i[:, None]\n"
          f"    {END}\n\ngeoattn.course.checks.check_causal_mask(my_causal_mask)")


def _exercise(label, code):
    return [new_markdown_cell(f":::{{exercise}} {label}\n:label: {label}\n\nWrite it.\n:::"),
            new_markdown_cell(f":::{{solution-start}} {label}\n:class: dropdown\n:::"),
            new_code_cell(code), new_markdown_cell(":::{solution-end}\n:::")]


def _chapter():
    """A small chapter with two real checks: the solved version a teacher keeps."""
    return new_notebook(cells=[new_markdown_cell("# Chapter 9"), new_code_cell(SETUP),
                               *_exercise("ex-09-softmax", SOFTMAX), *_exercise("ex-09-causal", CAUSAL)])


def _write(nb, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    subs = root / "submissions"
    chapter = _chapter()
    copy = make_student_notebook(chapter, "09_x.ipynb")
    name = "09_x.ipynb"
    _write(chapter, subs / "alice" / name)  # the solutions: a correct submission
    _write(copy, subs / "bob" / name)  # the copy as handed out: nothing attempted
    wrong = make_student_notebook(chapter, name)
    for cell in wrong.cells:
        if "def my_softmax" in cell.source:
            cell.source = cell.source.replace(
                'raise NotImplementedError("exercise: write the body of my_softmax() (ex-09-softmax)")',
                "return torch.softmax(x, dim=0)")
    _write(wrong, subs / "carol" / name)
    own = make_student_notebook(chapter, name)  # hands in the library's own softmax
    for cell in own.cells:
        cell.source = cell.source.replace("geoattn.course.checks.check_softmax(my_softmax)",
                                          "my_softmax = geoattn.softmax\n"
                                          "geoattn.course.checks.check_softmax(my_softmax)")
    _write(own, subs / "gina" / name)
    (subs / "dave").mkdir()
    (subs / "dave" / name).write_text("this is not JSON {")
    forever = _chapter()
    forever.cells.insert(6, new_code_cell("while True:\n    pass"))  # after the first exercise
    _write(forever, subs / "erin" / name)
    (subs / "frank.ipynb").parent.mkdir(exist_ok=True)
    hostile = _chapter()
    hostile.cells.append(new_code_cell(
        "import os, pathlib, shutil\n"
        "for place in (pathlib.Path('.'), pathlib.Path('..'), pathlib.Path.home()):\n"
        "    for p in place.resolve().glob('*'):\n"
        "        shutil.rmtree(p) if p.is_dir() else p.unlink()\n"
        "print('deleted what I could reach')"))
    _write(hostile, subs / "frank.ipynb")
    sentinel = subs / "alice" / "notes.txt"
    sentinel.write_text("the teacher's file")
    tmp = root / "tmp"
    tmp.mkdir()
    out = root / "report.csv"
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # the grader's temporary folders go here, to check they are removed
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = grade.main([str(subs), "--out", str(out), "--timeout", "60"])
    finally:
        tempfile.tempdir = saved
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    return {"code": code, "rows": rows, "sentinel": sentinel, "tmp": tmp, "subs": subs,
            "printed": printed.getvalue()}


def _rows(graded, student):
    return {r["check"] or r["exercise"]: r for r in graded["rows"] if r["student"] == student}


def test_the_report_has_one_row_per_student_and_exercise(graded):
    assert graded["code"] == 0
    keys = [(r["student"], r["exercise"]) for r in graded["rows"]]
    assert len(keys) == len(set(keys))
    assert {r["student"] for r in graded["rows"]} == {"alice", "bob", "carol", "dave", "erin", "frank", "gina"}
    assert list(graded["rows"][0]) == ["student", "notebook", "exercise", "check", "status", "detail"]


def test_a_correct_copy_passes(graded):
    rows = _rows(graded, "alice")
    assert {k: r["status"] for k, r in rows.items()} == {"check_softmax": "passed", "check_causal_mask": "passed"}
    assert rows["check_softmax"]["exercise"] == "ex-09-softmax"


def test_a_stub_copy_is_not_attempted(graded):
    assert {r["status"] for r in _rows(graded, "bob").values()} == {"not attempted"}


def test_a_wrong_copy_fails_with_the_checks_hint(graded):
    rows = _rows(graded, "carol")
    assert rows["check_softmax"]["status"] == "failed"
    assert "wrong dimension" in rows["check_softmax"]["detail"]
    assert rows["check_causal_mask"]["status"] == "not attempted"


def test_the_librarys_own_function_fails_and_says_so(graded):
    rows = _rows(graded, "gina")
    assert rows["check_softmax"]["status"] == "failed"
    assert "the library's own geoattn." in rows["check_softmax"]["detail"]
    assert rows["check_causal_mask"]["status"] == "not attempted"


def test_a_notebook_that_is_not_json_is_a_notebook_error(graded):
    (row,) = _rows(graded, "dave").values()
    assert row["status"] == "notebook error" and "not JSON" in row["detail"]


def test_a_notebook_that_never_returns_times_out_after_what_it_finished(graded):
    rows = _rows(graded, "erin")
    assert rows["check_softmax"]["status"] == "passed"
    assert rows["check_causal_mask"]["status"] == "timed out"


def test_a_file_deleting_notebook_stays_in_its_temporary_folder(graded):
    rows = _rows(graded, "frank")
    assert set(rows) == {"check_softmax", "check_causal_mask"}  # a row each, whatever it says
    assert graded["sentinel"].read_text() == "the teacher's file"
    assert (graded["subs"] / "frank.ipynb").is_file()
    assert not list(graded["tmp"].iterdir()), "every temporary folder is removed"


def test_the_command_prints_the_summary_of_the_report(graded):
    lines = graded["printed"].splitlines()
    assert lines[0].split()[:2] == ["student", "passed"]
    table = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}
    for name in {r["student"] for r in graded["rows"]}:
        assert int(table[name][-1]) == sum(r["student"] == name for r in graded["rows"])
    assert table["all"][-1] == str(len(graded["rows"]))
    assert lines[-1].startswith("report: ") and f"({len(graded['rows'])} rows)" in lines[-1]


def test_the_summary_counts_every_status():
    rows = [grade.Row("a", "n", "e1", "c1", "passed"), grade.Row("a", "n", "e2", "c2", "failed", "why"),
            grade.Row("b", "n", "e1", "c1", "timed out")]
    table = grade.summary_table(rows).splitlines()
    assert table[0].split()[:2] == ["student", "passed"]
    assert table[2].split() == ["a", "1", "1", "0", "0", "0", "2"]
    assert table[-1].split() == ["all", "1", "1", "0", "1", "0", "3"]


def test_expected_exercises_come_from_the_reference_when_given(tmp_path):
    chapter = _chapter()
    stripped = make_student_notebook(chapter, "09_x.ipynb")
    stripped.cells = [c for c in stripped.cells if "check_causal_mask" not in c.source]
    assert [c for _, c in grade.expected_exercises(stripped)] == ["check_softmax"]
    assert grade.expected_exercises(chapter) == [("ex-09-softmax", "check_softmax"),
                                                 ("ex-09-causal", "check_causal_mask")]


def test_importing_the_grader_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, geoattn.course.grade; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
