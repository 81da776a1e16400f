"""Student copies (``geoattn.course.student``): the solutions are gone and the copies run up to the
first exercise stub. The copies are build products, never committed to main: the workflow
regenerates them from ``book/`` on every push to main and publishes them on the
``student`` branch, which the Colab links in README and the intro open."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from geoattn.course import student
from geoattn.course.student import BEGIN, END, make_student_notebook, write_student_notebooks

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(p.name for p in BOOK.glob("*.ipynb"))
REGENERATE = "python -m geoattn.course.student book/ assignments/"
STUDENT_BRANCH = "student"
_REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
COLAB_ASSIGNMENTS = ("https://colab.research.google.com/github/" + _REPO.removeprefix("https://github.com/")
                     + f"/blob/{STUDENT_BRANCH}/assignments/")

SOLUTION_START = re.compile(r"^\s*(`{3,}|:{3,})\{solution-start\}", re.M)
SOLUTION_END = re.compile(r"^\s*(`{3,}|:{3,})\{solution-end\}", re.M)
SOLUTION = re.compile(r"^\s*(`{3,}|:{3,})\{solution\}", re.M)


# ---------------------------------------------------------------- a synthetic chapter

def _exercise(label: str, body: str, *, check: str = "print('checked')") -> list:
    """The four cells of one coding exercise, in the book's pattern."""
    return [
        new_markdown_cell(f"```{{exercise}} {label}\n:label: {label}\n\nWrite `f_{label[-1]}(x)`.\n```"),
        new_markdown_cell(f"```{{solution-start}} {label}\n:class: dropdown\n```"),
        new_code_cell(body + check),
        new_markdown_cell("```{solution-end}\n```"),
    ]


def _chapter() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell("# A chapter"),
        new_code_cell("import math\nprint('setup')", metadata={"tags": ["keep-me"]}),
        *_exercise("ex-t-a", f"def f_a(x):\n    {BEGIN}\n    secret_a = x * 2\n    return secret_a\n    {END}\n"),
        # Deeper indentation: a method body.
        *_exercise("ex-t-b", f"class F:\n    def f_b(self, x):\n        {BEGIN}\n"
                             f"        return math.sqrt(x) + 41\n        {END}\n"),
        # A conceptual exercise: its answer is markdown only.
        new_markdown_cell("```{exercise} Why?\n:label: ex-t-c\n\nExplain.\n```"),
        new_markdown_cell("```{solution-start} ex-t-c\n:class: dropdown\n```"),
        new_markdown_cell("Because the secret answer is 42."),
        new_markdown_cell("```{solution-end}\n```"),
        # The plain (not gated) solution directive is dropped too.
        new_markdown_cell("```{solution} ex-t-c\nThe other secret answer.\n```"),
        new_markdown_cell("## After the exercises"),
    ]
    kernelspec = {"name": "python3", "display_name": "Python 3"}
    nb = new_notebook(cells=cells, metadata={"accelerator": "GPU", "kernelspec": kernelspec})
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output\n")]
        cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    return nb


def _all_source(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


def test_solution_bodies_become_stubs_at_the_same_indentation():
    nb = _chapter()
    out = make_student_notebook(nb, "synthetic.ipynb")
    code = [c.source for c in out.cells if c.cell_type == "code"]
    assert code[1] == ('def f_a(x):\n    raise NotImplementedError("exercise: write the body of f_a() (ex-t-a)")\n'
                       "print('checked')")
    assert code[2].splitlines()[2] == (
        '        raise NotImplementedError("exercise: write the body of f_b() (ex-t-b)")')
    compile(code[2], "cell", "exec")  # still valid Python
    text = _all_source(out)
    for gone in ("secret_a", "math.sqrt(x) + 41", "BEGIN SOLUTION", "END SOLUTION", "secret answer"):
        assert gone not in text


def test_solution_cells_are_dropped_and_the_rest_kept_in_order():
    out = make_student_notebook(_chapter(), "synthetic.ipynb")
    assert not any(SOLUTION_START.search(c.source) or SOLUTION_END.search(c.source) or SOLUTION.search(c.source)
                   for c in out.cells)
    firsts = [c.source.splitlines()[0] for c in out.cells]
    assert firsts == ["# A chapter", "import math", "```{exercise} ex-t-a", "def f_a(x):",
                      "```{exercise} ex-t-b", "class F:", "```{exercise} Why?", "## After the exercises"]


def test_outputs_cleared_metadata_kept_input_unchanged():
    nb = _chapter()
    before = nbformat.writes(nb)
    out = make_student_notebook(nb, "synthetic.ipynb")
    assert nbformat.writes(nb) == before, "the chapter notebook must not be modified"
    assert out.metadata == nb.metadata
    for cell in out.cells:
        assert "execution" not in cell.metadata  # run timings only
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert out.cells[1].metadata["tags"] == ["keep-me"]
    nbformat.validate(out)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda nb: nb.cells[4].__setitem__("source", f"def f(x):\n    {BEGIN}\n    return x\n"),
         "has no '### END SOLUTION'"),
        (lambda nb: nb.cells[4].__setitem__("source", f"def f(x):\n    return x\n    {END}\n"),
         "without a '### BEGIN SOLUTION'"),
        (lambda nb: nb.cells[4].__setitem__("source", f"def f(x):\n    {BEGIN}\n    {BEGIN}\n    {END}\n"),
         "inside the solution opened on line 2"),
        (lambda nb: nb.cells[4].__setitem__("source", "def f(x):\n    return x  ### BEGIN SOLUTION\n"),
         "must stand alone on its line"),
        (lambda nb: nb.cells[4].__setitem__("source", "def f(x):\n    return x * 2\n"),
         "has no '### BEGIN SOLUTION' ... '### END SOLUTION' markers"),
        (lambda nb: nb.cells.pop(5), "solution-start while the solution of ex-t-a"),
        (lambda nb: nb.cells.pop(3), "solution-end without a solution-start"),
        (lambda nb: nb.cells.__setitem__(slice(12, None), []), "solution-start for ex-t-c has no solution-end"),
    ],
    ids=["begin-without-end", "end-without-begin", "nested-begin", "inline-marker", "unmarked-solution-code",
         "start-without-end", "end-without-start", "start-at-end-of-notebook"],
)
def test_malformed_exercises_fail_loudly_naming_notebook_and_cell(mutate, message):
    nb = _chapter()
    mutate(nb)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        make_student_notebook(nb, "book/99_bad.ipynb")
    assert "book/99_bad.ipynb, cell " in str(err.value)


@settings(max_examples=25, deadline=None)
@given(
    indent=st.sampled_from(["    ", "        ", "\t"]),
    before=st.lists(st.from_regex(r"[a-z_]{1,8} = [0-9]{1,3}", fullmatch=True), max_size=3),
    body=st.lists(st.from_regex(r"[a-z_]{1,8} = [0-9]{1,3} \+ SECRET", fullmatch=True), min_size=1, max_size=4),
    after=st.lists(st.from_regex(r"[a-z_]{1,8} = [0-9]{1,3}", fullmatch=True), max_size=3),
)
def test_stub_property_only_the_marked_lines_change(indent, before, body, after):
    lines = ["def g(x):", *(indent + b for b in before), indent + BEGIN, *(indent + b for b in body),
             indent + END, *(indent + a for a in after), "g(1)"]
    nb = new_notebook(cells=[new_code_cell("\n".join(lines))])
    got = make_student_notebook(nb, "p.ipynb").cells[0].source.splitlines()
    stub = f'{indent}raise NotImplementedError("exercise: write the body of g()")'
    assert got == ["def g(x):", *(indent + b for b in before), stub, *(indent + a for a in after), "g(1)"]
    assert "SECRET" not in "\n".join(got)


def test_cli_writes_copies_and_refuses_bad_input(tmp_path, capsys):
    src, out = tmp_path / "book", tmp_path / "assignments"
    src.mkdir()
    nbformat.write(_chapter(), src / "01_a.ipynb")
    assert student.main([str(src), str(out)]) == 0
    copy = nbformat.read(out / "01_a.ipynb", as_version=4)
    assert "Student copy" in copy.cells[1].source  # the notice follows the title
    assert copy.cells[0].source == "# A chapter"
    # Deterministic: a second run writes the same bytes.
    first = (out / "01_a.ipynb").read_bytes()
    write_student_notebooks(src, out)
    assert (out / "01_a.ipynb").read_bytes() == first

    bad = _chapter()
    bad.cells.pop(5)  # an unclosed solution block
    nbformat.write(bad, src / "02_b.ipynb")
    (out / "01_a.ipynb").unlink()
    assert student.main([str(src), str(out)]) == 1
    assert "02_b.ipynb, cell 6: solution-start while" in capsys.readouterr().err
    assert not (out / "01_a.ipynb").exists(), "nothing is written when any chapter is malformed"
    with pytest.raises(ValueError, match="out_dir must differ"):
        write_student_notebooks(src, src)
    with pytest.raises(ValueError, match="src_dir"):
        write_student_notebooks(tmp_path / "missing", out)


# ----------------------------------------------------------- executing student copies

def _execute(nb, cwd: Path):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True, record_timing=False,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return "\n".join(parts)


def _stub_cells(nb) -> list[int]:
    stub = 'raise NotImplementedError("exercise:'
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and stub in c.source]


def _assert_runs_up_to_the_first_stub(nb, name: str):
    """Every cell before the first stub ran cleanly; the first error, if any, comes from a stub;
    every check that ran before that error reports 'not implemented', never a pass."""
    stubs = _stub_cells(nb)
    assert stubs, f"{name}: no exercise stub in the student copy"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    errors = [i for i in code if any(o.output_type == "error" for o in nb.cells[i].outputs)]
    first_error = errors[0] if errors else len(nb.cells)
    for i in code:
        if i < stubs[0]:
            assert nb.cells[i].execution_count is not None, f"{name}: cell {i} (before the first stub) did not run"
            assert i not in errors, f"{name}: cell {i}, before the first stub, raised:\n{_text(nb.cells[i])}"
    if errors:
        err = next(o for o in nb.cells[first_error].outputs if o.output_type == "error")
        assert first_error >= stubs[0], f"{name}: cell {first_error} failed before any stub"
        assert err.ename == "NotImplementedError" and err.evalue.startswith("exercise:"), (
            f"{name}: cell {first_error} raised {err.ename}: {err.evalue}; only an exercise stub may fail")
    for i in stubs:
        if i < first_error:
            text = _text(nb.cells[i])
            assert "not implemented" in text and "✓" not in text, (
                f"{name}: cell {i} holds a stub, so its check must report 'not implemented yet', got:\n{text}")


SYNTHETIC_CHECK = (
    "import torch, geoattn\n"
    "geoattn.course.checks.run_check('check_double', {fn}, "
    "[geoattn.course.checks.Case('ones', (torch.ones(2),), torch.full((2,), 2.0))])"
)


def test_synthetic_student_copy_executes_to_not_implemented(tmp_path):
    body = f"def double(x):\n    {BEGIN}\n    return 2 * x\n    {END}\n"
    cells = [new_markdown_cell("# Synthetic"), new_code_cell("print('setup ran')"),
             *_exercise("ex-s-a", body, check=SYNTHETIC_CHECK.format(fn="double")),
             new_code_cell("print('after')")]
    chapter = new_notebook(cells=cells)
    # The solved cell's check passes (run in-process: a kernel costs seconds) ...
    namespace: dict = {}
    *defs, check = chapter.cells[4].source.rstrip().splitlines()
    exec("\n".join(defs), namespace)
    assert "✓ check_double: passed" in repr(eval(check, namespace))
    copy = _execute(make_student_notebook(chapter, "synthetic"), tmp_path)
    _assert_runs_up_to_the_first_stub(copy, "synthetic")
    assert "not implemented yet" in _text(copy.cells[3])  # ... and reports the stub


def _ran(source: str, *outputs) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    cell.execution_count, cell.outputs = 1, list(outputs)
    return cell


def _error(ename: str, evalue: str):
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])


STUB = 'def f(x):\n    raise NotImplementedError("exercise: write the body of f()")\n'


def test_first_stub_rule_accepts_stub_errors_and_rejects_others():
    ok = new_notebook(cells=[_ran("print(1)"), _ran(STUB + "check(f)", nbformat.v4.new_output(
        "execute_result", data={"text/plain": "✗ check_f: not implemented yet"}, execution_count=1)),
        _ran("f(1)", _error("NotImplementedError", "exercise: write the body of f()"))])
    _assert_runs_up_to_the_first_stub(ok, "ok")
    early = new_notebook(cells=[_ran("1 / 0", _error("ZeroDivisionError", "division by zero")), ok.cells[1]])
    with pytest.raises(AssertionError, match="before the first stub"):
        _assert_runs_up_to_the_first_stub(early, "early")
    later = new_notebook(cells=[ok.cells[1], _ran("x", _error("NameError", "name 'x' is not defined"))])
    with pytest.raises(AssertionError, match="only an exercise stub may fail"):
        _assert_runs_up_to_the_first_stub(later, "later")
    passing = new_notebook(cells=[_ran(STUB + "check(f)", nbformat.v4.new_output(
        "stream", name="stdout", text="✓ check_f: passed all 3 cases"))])
    with pytest.raises(AssertionError, match="must report 'not implemented yet'"):
        _assert_runs_up_to_the_first_stub(passing, "passing")
    skipped = new_notebook(cells=[new_code_cell("print(1)"), ok.cells[1]])
    with pytest.raises(AssertionError, match="did not run"):
        _assert_runs_up_to_the_first_stub(skipped, "skipped")


# ------------------------------------------------------------------- the real chapters

def _solution_lines(nb) -> set[str]:
    """The stripped, non-blank lines inside any BEGIN..END span of the chapter."""
    lines, inside = set(), False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if line.strip() == BEGIN:
                inside = True
            elif line.strip() == END:
                inside = False
            elif inside and line.strip():
                lines.add(line.strip())
    return lines


def _non_solution_lines(nb) -> set[str]:
    """Every stripped line of the chapter outside the solution spans and solution blocks."""
    lines, inside_span, inside_block = set(), False, False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if SOLUTION_START.search(cell.source):
                inside_block = True
            elif SOLUTION_END.search(cell.source):
                inside_block = False
            elif not inside_block:
                lines.update(line.strip() for line in cell.source.splitlines())
            continue
        for line in cell.source.splitlines():
            if line.strip() in (BEGIN, END):
                inside_span = line.strip() == BEGIN
            elif not inside_span:
                lines.add(line.strip())
    return lines


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    if not CHAPTERS:
        pytest.skip("book/ has no chapter notebook yet")
    out = tmp_path_factory.mktemp("assignments")
    write_student_notebooks(BOOK, out)
    return out


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_keeps_its_solutions_and_markers(chapter):
    nb = nbformat.read(BOOK / chapter, as_version=4)
    text = _all_source(nb)
    assert SOLUTION_START.search(text) and SOLUTION_END.search(text), f"{chapter}: no solution block"
    assert BEGIN in text and END in text, f"{chapter}: no '{BEGIN}' ... '{END}' solution code"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_copy_contains_no_solution(generated, chapter):
    original = nbformat.read(BOOK / chapter, as_version=4)
    copy = nbformat.read(generated / chapter, as_version=4)
    text = _all_source(copy)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert not SOLUTION_START.search(text) and not SOLUTION_END.search(text) and not SOLUTION.search(text)
    # Lines that also occur outside the solutions (e.g. `return out`) cannot give anything away.
    leaked = _solution_lines(original) - _non_solution_lines(original)
    present = {line.strip() for line in text.splitlines()}
    assert not leaked & present, f"{chapter}: solution lines survive: {sorted(leaked & present)}"
    assert len(_stub_cells(copy)) == text.count('raise NotImplementedError("exercise:') > 0
    for cell in copy.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert copy.metadata == original.metadata


def test_workflow_publishes_the_student_copies_on_their_branch():
    """The Colab links below resolve only if the workflow pushes fresh copies to that branch."""
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    job = wf["jobs"]["student-copies"]
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "refs/heads/main" in job["if"] and "push" in job["if"] and job["needs"] == "build"
    assert job["permissions"] == {"contents": "write"}
    assert "python -m geoattn.course.student book/ " in runs
    assert f"HEAD:refs/heads/{STUDENT_BRANCH}" in runs


@pytest.fixture(scope="module")
def executed(generated, tmp_path_factory):
    """Every student copy, executed once (in a folder of its own, as on Colab)."""
    cwd = tmp_path_factory.mktemp("run")
    return {name: _execute(nbformat.read(generated / name, as_version=4), cwd) for name in CHAPTERS}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_copy_runs_up_to_its_first_stub(executed, chapter):
    _assert_runs_up_to_the_first_stub(executed[chapter], chapter)


@pytest.mark.parametrize("doc", ["README.md", "book/intro.md"])
def test_colab_links_to_every_student_copy(generated, doc):
    """README and the intro link each student copy on Colab, at the repository of _config.yml."""
    text = (ROOT / doc).read_text()
    linked = set(re.findall(re.escape(COLAB_ASSIGNMENTS) + r"([\w.-]+\.ipynb)", text))
    assert linked == set(CHAPTERS), f"{doc} links {sorted(linked)} on Colab; the chapters are {CHAPTERS}"
    for name in linked:
        assert (generated / name).is_file(), f"{doc} links assignments/{name}, which the generator does not make"
