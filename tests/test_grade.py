"""``python -m geoattn.course.grade``: every submitted notebook runs in a worker of its own,
under a time limit; the checks run in the grading process, so nothing a notebook writes,
patches or prints makes a pass; every notebook ends in rows, whatever it does, and the
report, grades, summary and feedback are always written."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import zipfile
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
STUB = 'raise NotImplementedError("exercise: write the body of my_softmax() (ex-09-softmax)")'
NAME = "09_x.ipynb"
# What the harness would have printed for a pass: a forger prints it, and writes it to the
# log the old grader read.
FAKE_PASS = json.dumps({"check": "check_softmax", "name": "softmax", "status": "passed",
                        "message": "✓ softmax: passed all 6 cases"})


def _exercise(label, code):
    return [new_markdown_cell(f":::{{exercise}} {label}\n:label: {label}\n\nWrite it.\n:::"),
            new_markdown_cell(f":::{{solution-start}} {label}\n:class: dropdown\n:::"),
            new_code_cell(code), new_markdown_cell(":::{solution-end}\n:::")]


def _chapter():
    """A small chapter with two real checks and one conceptual exercise: the teacher's version."""
    return new_notebook(cells=[
        new_markdown_cell("# Chapter 9"), new_code_cell(SETUP),
        *_exercise("ex-09-softmax", SOFTMAX), *_exercise("ex-09-causal", CAUSAL),
        new_markdown_cell(":::{exercise} Why?\n:label: ex-09-why\n\nExplain.\n:::"),
        new_markdown_cell(":::{solution-start} ex-09-why\n:class: dropdown\n:::"),
        new_markdown_cell("Because of the secret reason."),
        new_markdown_cell(":::{solution-end}\n:::")])


def _write(nb, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _copy_with(replace_stub: str | None = None, extra: str | None = None, answer: str | None = None):
    """The student copy, with the softmax stub replaced, a cell appended or an answer written."""
    nb = make_student_notebook(_chapter(), NAME)
    for cell in nb.cells:
        if replace_stub is not None and STUB in cell.source:
            cell.source = cell.source.replace(STUB, replace_stub)
        if answer is not None and cell.source.startswith("**Your answer:**"):
            cell.source += answer
    if extra is not None:
        nb.cells.append(new_code_cell(extra))
    return nb


WRONG = "return torch.softmax(x, dim=0)"

# Every way to forge a pass the audit tried, each with a wrong softmax.
FORGE_LOG = (
    "import os, pathlib\n"
    f"line = {FAKE_PASS!r} + '\\n'\n"
    "for target in (os.environ.get('GEOATTN_CHECK_LOG'), '../checks.jsonl', 'checks.jsonl'):\n"
    "    if target:\n"
    "        with open(target, 'a') as f:\n"
    "            f.write(line)\n"
    "print('✓ softmax: passed all 6 cases')")
PATCH_HARNESS = (
    "import torch, geoattn.course.checks as C\n"
    "from geoattn.course.checks import _harness as H\n"
    "passed = lambda *a, **k: H.CheckResult('softmax', True, '✓ softmax: passed all 6 cases', 'passed')\n"
    "H.run_check = passed\n"
    "H._compare = lambda *a, **k: None\n"
    "C.check_softmax = passed\n"
    "torch.allclose = lambda *a, **k: True\n"
    "C.check_softmax(my_softmax)")
ESCAPE = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        with open({pid_file!r}, 'w') as f:\n"
    "            f.write(str(os.getpid()))\n"
    "        time.sleep(3600)\n"
    "        os._exit(0)\n"
    "    os._exit(0)\n"
    "time.sleep(1)")
NO_TIMER = (
    "import signal\n"
    "def my_softmax(x):\n"
    "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
    "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
    "    while True:\n"
    "        pass\n"
    "geoattn.course.checks.check_softmax(my_softmax)")
HARD_WIRED = (
    "from geoattn.course.checks import attention as A\n"
    "table = {c.args[0].numpy().tobytes(): c.expected for c in A._softmax_cases()}\n"
    "def my_softmax(x):\n"
    "    return table[x.numpy().tobytes()].clone()  # only the inputs it has seen\n"
    "geoattn.course.checks.check_softmax(my_softmax)")
HIDDEN = (
    "import torch\n"
    "from geoattn import softmax\n"
    "from geoattn.course.checks import Case\n"
    "x = torch.randn(7, 3, generator=torch.Generator().manual_seed(99))\n"
    "HIDDEN_CASES = {'check_softmax': [[Case('a (7, 3) batch', (x,), softmax(x, dim=-1))]]}\n")


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    subs, ref = root / "submissions", root / "reference"
    chapter = _chapter()
    _write(chapter, ref / NAME)
    _write(chapter, subs / "alice" / NAME)  # the solutions: a correct submission
    _write(make_student_notebook(chapter, NAME), subs / "bob" / NAME)  # as handed out
    # A wrong answer, under Colab's name for a saved copy: matched to the chapter by content.
    _write(_copy_with(WRONG, answer="Because it is stable."), subs / "carol" / f"Copy of {NAME}")
    own = _copy_with("return geoattn.softmax(x)")
    for cell in own.cells:
        cell.source = cell.source.replace("check_softmax(my_softmax)", "check_softmax(geoattn.softmax)")
    _write(own, subs / "gina" / NAME)
    (subs / "dave").mkdir()
    (subs / "dave" / NAME).write_text("this is not JSON {")
    forever = _chapter()
    forever.cells.insert(6, new_code_cell("while True:\n    pass"))  # after the first exercise
    _write(forever, subs / "erin" / NAME)
    hostile = _chapter()
    hostile.cells.append(new_code_cell(
        "import os, pathlib, shutil\n"
        "for place in (pathlib.Path('.'), pathlib.Path('..'), pathlib.Path.home()):\n"
        "    for p in place.resolve().glob('*'):\n"
        "        shutil.rmtree(p) if p.is_dir() else p.unlink()\n"
        "print('deleted what I could reach')"))
    _write(hostile, subs / "frank.ipynb")  # one notebook per student, named after the student
    # The attacks.
    _write(_copy_with(WRONG, extra=FORGE_LOG), subs / "mallory" / NAME)
    _write(_copy_with(WRONG, extra=PATCH_HARNESS), subs / "oscar" / NAME)
    (subs / "linus").mkdir()
    (subs / "linus" / NAME).symlink_to(ref / NAME)  # a link to the teacher's chapter
    (subs / "lara.ipynb").symlink_to(ref / NAME)
    (subs / "harry").mkdir()
    os.link(ref / NAME, subs / "harry" / NAME)
    pid_file = root / "escaped.pid"
    escape = _chapter()
    escape.cells.insert(2, new_code_cell(ESCAPE.format(pid_file=str(pid_file))))
    _write(escape, subs / "ellen" / NAME)
    timer = _chapter()
    for cell in timer.cells:
        if "def my_softmax" in cell.source:
            cell.source = NO_TIMER
    _write(timer, subs / "tim" / NAME)
    (subs / "nina.ipynb").write_text('{"cells": ' + "[" * 200_000 + "]" * 200_000 + "}")
    deleted = _copy_with("e = torch.exp(x - x.amax(dim=-1, keepdim=True))\n"
                         "    return e / e.sum(dim=-1, keepdim=True)")
    deleted.cells = [c for c in deleted.cells if "check_causal_mask" not in c.source]
    _write(deleted, subs / "dora" / NAME)
    hard = _copy_with()
    for cell in hard.cells:
        if "def my_softmax" in cell.source:
            cell.source = HARD_WIRED
    _write(hard, subs / "hank" / NAME)
    dies = _chapter()
    for cell in dies.cells:
        if "def my_softmax" in cell.source:
            cell.source = ("import os\ndef my_softmax(x):\n    os._exit(3)\n"
                           "geoattn.course.checks.check_softmax(my_softmax)")
    _write(dies, subs / "kurt" / NAME)
    (subs / "pete").mkdir()  # handed in nothing
    sentinel = subs / "alice" / "notes.txt"
    sentinel.write_text("the teacher's file")
    (root / "points.toml").write_text('[points]\ncheck_softmax = 2\n"ex-09-why" = 1\n')
    (root / "hidden.py").write_text(HIDDEN)
    tmp = root / "tmp"
    tmp.mkdir()
    out = root / "out" / "report.csv"
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # the grader's temporary folders go here, to check they are removed
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = grade.main([str(subs), "--out", str(out), "--timeout", "30", "--reference", str(ref),
                               "--points", str(root / "points.toml"), "--hidden", str(root / "hidden.py")])
    finally:
        tempfile.tempdir = saved
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    return {"code": code, "rows": rows, "sentinel": sentinel, "tmp": tmp, "subs": subs, "ref": ref, "out": out,
            "printed": printed.getvalue(), "pid_file": pid_file, "root": root}


def _rows(graded, student, *, hidden=False):
    return {r["check"] or r["exercise"]: r for r in graded["rows"]
            if r["student"] == student and r["status"].endswith("(hidden cases)") == hidden}


def test_the_report_has_one_row_per_student_and_exercise(graded):
    assert graded["code"] == 0
    keys = [(r["student"], r["exercise"], r["status"].endswith("(hidden cases)")) for r in graded["rows"]]
    assert len(keys) == len(set(keys))
    assert {r["student"] for r in graded["rows"]} == {
        "alice", "bob", "carol", "dave", "erin", "frank", "gina", "mallory", "oscar", "linus", "lara", "harry",
        "ellen", "tim", "nina", "dora", "hank", "kurt", "pete"}
    assert list(graded["rows"][0]) == grade.COLUMNS


def test_a_correct_copy_passes_and_scores_its_points(graded):
    rows = _rows(graded, "alice")
    assert rows["check_softmax"]["status"] == "passed" and rows["check_softmax"]["points"] == "2"
    assert rows["check_causal_mask"]["status"] == "passed" and rows["check_causal_mask"]["points"] == "1"
    assert rows["check_softmax"]["exercise"] == "ex-09-softmax"


def test_a_stub_copy_is_not_attempted_and_its_empty_answer_is_empty(graded):
    rows = _rows(graded, "bob")
    assert rows["check_softmax"]["status"] == rows["check_causal_mask"]["status"] == "not attempted"
    assert rows["ex-09-why"]["status"] == "empty"


def test_a_wrong_copy_fails_with_the_checks_hint_and_its_answer_is_collected(graded):
    rows = _rows(graded, "carol")
    assert rows["check_softmax"]["status"] == "failed"
    assert "wrong dimension" in rows["check_softmax"]["detail"]
    assert rows["check_softmax"]["notebook"] == NAME and rows["check_softmax"]["file"] == f"Copy of {NAME}"
    assert rows["check_causal_mask"]["status"] == "not attempted"
    assert rows["ex-09-why"]["status"] == "answered"
    assert rows["ex-09-why"]["detail"] == "Because it is stable."


def test_the_librarys_own_function_fails_and_says_so(graded):
    rows = _rows(graded, "gina")
    assert rows["check_softmax"]["status"] == "failed"
    assert "the library's own geoattn." in rows["check_softmax"]["detail"]


def test_a_notebook_that_is_not_json_is_a_notebook_error(graded):
    (row,) = _rows(graded, "dave").values()
    assert row["status"] == "notebook error" and "not JSON" in row["detail"]


def test_a_notebook_that_never_returns_times_out_after_what_it_finished(graded):
    rows = _rows(graded, "erin")
    assert rows["check_softmax"]["status"] == "passed"
    assert rows["check_causal_mask"]["status"] == "timed out"


def test_a_file_deleting_notebook_stays_in_its_temporary_folder(graded):
    rows = _rows(graded, "frank")
    assert set(rows) == {"check_softmax", "check_causal_mask", "ex-09-why"}
    assert rows["check_softmax"]["notebook"] == NAME  # matched by content, not by its name
    assert graded["sentinel"].read_text() == "the teacher's file"
    assert (graded["subs"] / "frank.ipynb").is_file()
    assert not list(graded["tmp"].iterdir()), "every temporary folder is removed"


def test_forged_log_lines_and_printed_passes_do_not_pass(graded):
    rows = _rows(graded, "mallory")
    assert rows["check_softmax"]["status"] == "failed"
    assert "wrong dimension" in rows["check_softmax"]["detail"]


def test_patching_the_harness_in_the_notebook_does_not_pass(graded):
    rows = _rows(graded, "oscar")
    assert rows["check_softmax"]["status"] == "failed"
    assert "wrong dimension" in rows["check_softmax"]["detail"]


@pytest.mark.parametrize("student, what", [("linus", "symbolic link"), ("lara", "symbolic link"),
                                           ("harry", "hard link")])
def test_links_are_refused_naming_the_file(graded, student, what):
    rows = _rows(graded, student)
    row = rows.pop("*")
    assert {r["status"] for r in rows.values()} <= {"missing"}  # lara's chapter is unknown: not handed in
    assert row["status"] == "notebook error"
    assert row["detail"].startswith("refused: ") and what in row["detail"]
    assert (NAME if student != "lara" else "lara.ipynb") in row["detail"]


def test_an_escaped_process_is_killed_with_its_notebook(graded):
    pid = int(graded["pid_file"].read_text())
    assert not _pid_alive(pid), "the setsid() grandchild outlived its notebook"
    assert _rows(graded, "ellen")["check_softmax"]["status"] == "passed"


def test_switching_off_the_alarm_does_not_lift_the_time_limit(graded):
    rows = _rows(graded, "tim")
    assert rows["check_softmax"]["status"] == "timed out"
    assert rows["check_causal_mask"]["status"] == "passed"  # a fresh worker, for the next check


def test_a_function_that_ends_its_process_is_an_error_and_the_next_check_still_runs(graded):
    rows = _rows(graded, "kurt")
    assert rows["check_softmax"]["status"] == "notebook error"
    assert "stopped while the check ran" in rows["check_softmax"]["detail"]
    assert rows["check_causal_mask"]["status"] == "passed"


def test_deeply_nested_json_is_that_notebooks_error_only(graded):
    rows = _rows(graded, "nina")
    assert rows["*"]["status"] == "notebook error" and "nested too deeply" in rows["*"]["detail"]
    # Nothing in it says which chapter it answers: the chapter counts as not handed in.
    assert {r["status"] for k, r in rows.items() if k != "*"} == {"missing"}


def test_a_deleted_exercise_cell_is_missing_not_a_notebook_error(graded):
    rows = _rows(graded, "dora")
    assert rows["check_softmax"]["status"] == "passed"
    assert rows["check_causal_mask"]["status"] == "missing"
    assert "deleted" in rows["check_causal_mask"]["detail"]


def test_a_student_who_handed_in_nothing_has_missing_rows(graded):
    rows = _rows(graded, "pete")
    assert set(rows) == {"check_softmax", "check_causal_mask", "ex-09-why"}
    assert {r["status"] for r in rows.values()} == {"missing"}
    assert rows["check_softmax"]["max_points"] == "2"


def test_a_solution_hard_wired_to_the_public_cases_fails_the_hidden_ones(graded):
    assert _rows(graded, "hank")["check_softmax"]["status"] == "passed"
    hidden = _rows(graded, "hank", hidden=True)["check_softmax"]
    assert hidden["status"] == "failed (hidden cases)" and "KeyError" in hidden["detail"]
    assert _rows(graded, "alice", hidden=True)["check_softmax"]["status"] == "passed (hidden cases)"


def test_the_grades_summary_and_feedback_are_written(graded):
    paths = grade.output_paths(graded["out"])
    with paths["grades"].open() as handle:
        grades = {r["student"]: r for r in csv.DictReader(handle)}
    # alice: softmax 2 + causal 1 + hidden 1; the conceptual answer is graded by hand.
    assert grades["alice"]["score"] == "4" and grades["alice"]["out_of"] == "4"
    assert grades["carol"]["score"] == "0" and grades["pete"]["score"] == "0"
    summary = paths["summary"].read_text()
    line = next(x for x in summary.splitlines() if "| ex-09-softmax | check_softmax |" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    passed, total = int(cells[3]), int(cells[4])
    assert passed == sum(r["check"] == "check_softmax" and r["status"] == "passed" for r in graded["rows"])
    assert total == sum(r["check"] == "check_softmax" and not r["status"].endswith("(hidden cases)")
                        for r in graded["rows"])
    assert "wrong dimension" in cells[5]  # carol, mallory and oscar share the most common slip
    feedback = (paths["feedback"] / "carol.md").read_text()
    assert "wrong dimension" in feedback and "Because it is stable." in feedback and "Score: 0 of 4" in feedback


def test_the_command_prints_the_summary_of_the_report(graded):
    lines = graded["printed"].splitlines()
    assert lines[0].split()[:2] == ["student", "passed"]
    assert lines[-1].startswith("report: ") and f"({len(graded['rows'])} rows)" in lines[-1]


def test_gradescope_results_and_autograder_zip(graded, tmp_path):
    one = tmp_path / "submission"
    _write(_chapter(), one / NAME)
    results = tmp_path / "results" / "results.json"
    code = grade.main([str(one), "--gradescope", str(results), "--reference", str(graded["ref"]),
                       "--timeout", "60"])
    assert code == 0
    data = json.loads(results.read_text())
    assert data["score"] == 2 and {t["status"] for t in data["tests"]} == {"passed"}
    assert len(data["tests"]) == 2  # the two checks; the conceptual answer has no points here
    zipped = tmp_path / "autograder.zip"
    assert grade.main(["--gradescope-zip", str(zipped), "--reference", str(graded["ref"])]) == 0
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        assert {"setup.sh", "run_autograder", f"reference/{NAME}"} <= names
        assert "--gradescope /autograder/results/results.json" in z.read("run_autograder").decode()
        assert "nbformat ipython" in z.read("setup.sh").decode()  # what the worker needs besides geoattn
        assert z.getinfo("run_autograder").external_attr >> 16 & 0o111  # Gradescope executes it


def test_points_files_are_read_and_bad_ones_refused(tmp_path):
    good = tmp_path / "p.toml"
    good.write_text('[points]\ncheck_softmax = 2.5\n"ex-01-why" = 1\n')
    assert grade.load_points(good) == {"check_softmax": 2.5, "ex-01-why": 1.0}
    assert grade._points_subset(good.read_text()) == {"points": {"check_softmax": 2.5, "ex-01-why": 1.0}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[points]\ncheck_softmax = 'two'\n")
    with pytest.raises(ValueError, match="bad.toml"):
        grade.load_points(bad)


def test_the_summary_table_counts_every_status():
    rows = [grade.Row("a", "n", "e1", "c1", "passed", points=1, max_points=1),
            grade.Row("a", "n", "e2", "c2", "failed", "why", 0, 1),
            grade.Row("b", "n", "e1", "c1", "timed out", points=0, max_points=1)]
    table = grade.summary_table(rows).splitlines()
    assert table[0].split()[:2] == ["student", "passed"]
    assert table[2].split() == ["a", "1", "1", "0", "0", "0", "0", "2", "1/2"]
    assert table[-1].split() == ["all", "1", "1", "0", "1", "0", "0", "3"]


def test_expected_and_conceptual_exercises_come_from_the_reference():
    chapter = _chapter()
    stripped = make_student_notebook(chapter, NAME)
    stripped.cells = [c for c in stripped.cells if "check_causal_mask" not in c.source]
    assert [c for _, c in grade.expected_exercises(stripped)] == ["check_softmax"]
    assert grade.expected_exercises(chapter) == [("ex-09-softmax", "check_softmax"),
                                                 ("ex-09-causal", "check_causal_mask")]
    assert grade.conceptual_exercises(chapter) == ["ex-09-why"]
    assert grade.conceptual_exercises(stripped) == ["ex-09-why"]


def test_the_book_is_the_default_reference_in_a_checkout():
    book = grade.default_reference()
    assert book is not None and (book / "01_self_attention.ipynb").is_file()


def test_importing_the_grader_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, geoattn.course.grade; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


# ------------------------------------------------------------ the wire between grader and worker

def test_results_cross_as_data_and_anything_malformed_is_refused():
    import torch

    from geoattn.course import _sandbox

    value = (torch.randn(2, 3, dtype=torch.bfloat16), torch.tensor([1 + 2j]), torch.ones(0, 4, dtype=torch.bool),
             torch.empty(3, device="meta"), [torch.float16, 3, 2.5, float("nan"), None, "s"],
             torch.nn.Linear(3, 2, dtype=torch.float64))
    tree, buffers = _sandbox.encode(value)
    json.dumps(tree)  # plain JSON beside raw bytes: nothing for pickle to run
    back = _sandbox.decode(tree, buffers)
    assert torch.equal(back[0], value[0]) and torch.equal(back[1], value[1]) and back[2].shape == (0, 4)
    assert back[3].device.type == "meta" and back[4][:3] == [torch.float16, 3, 2.5] and back[4][3] != back[4][3]
    assert torch.equal(back[5].weight, value[5].weight) and torch.equal(back[5].bias, value[5].bias)

    class Numpyish:
        def __float__(self):
            return 0.25

    odd = _sandbox.decode(*_sandbox.encode(Numpyish()))
    assert type(odd).__name__ == "Numpyish" and float(odd) == 0.25
    good, data = _sandbox.encode(torch.zeros(4))
    for bad, bufs in [({"tensor": "float32", "shape": [5], "buf": 0}, data),  # bytes do not match
                      ({"tensor": "Tensor", "shape": [4], "buf": 0}, data),  # not a dtype
                      ({"tensor": "float32", "shape": [-4], "buf": 0}, data),
                      ({"tensor": "float32", "shape": [4], "buf": 3}, data),
                      ({"pickle": "cos\nsystem\n"}, []), ([1, 2], [])]:
        with pytest.raises(_sandbox.ProtocolError):
            _sandbox.decode(bad, bufs)


def test_a_silent_pipe_is_a_timeout_never_a_wait():
    import time

    from geoattn.course import _sandbox

    read, write = os.pipe()
    try:
        os.write(write, b"\x00\x00")  # half a header, then nothing, and the writer stays open
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            _sandbox.receive(read, time.monotonic() + 0.3)
        assert time.monotonic() - start < 2
    finally:
        os.close(read)
        os.close(write)
