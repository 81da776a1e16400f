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
        new_markdown_cell(f":::{{exercise}} {label}\n:label: {label}\n\nWrite `f_{label[-1]}(x)`.\n:::"),
        new_markdown_cell(f":::{{solution-start}} {label}\n:class: dropdown\n:::"),
        new_code_cell(body + check),
        new_markdown_cell(":::{solution-end}\n:::"),
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
    assert firsts == ["# A chapter", "import math", '**Exercise 1: ex-t-a** <a id="ex-t-a"></a>', "def f_a(x):",
                      '**Exercise 2: ex-t-b** <a id="ex-t-b"></a>', "class F:",
                      '**Exercise 3: Why?** <a id="ex-t-c"></a>', "**Your answer:**", "## After the exercises"]


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
    write_student_notebooks(src, out, force=True)
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


# ------------------------------------------------ every form of a solution is caught (#10)

SECRET = "SECRET-ANSWER-42"


def _with_block(*inner, start=":::{solution-start} ex-f\n:class: dropdown\n:::", end=":::{solution-end}\n:::"):
    return new_notebook(cells=[new_markdown_cell(":::{exercise} F\n:label: ex-f\n\nDo it.\n:::"),
                               new_markdown_cell(start), *inner, new_markdown_cell(end),
                               new_markdown_cell("## After")])


def _raw(source):
    return nbformat.v4.new_raw_cell(source)


def _nb_metadata(nb):
    nb.metadata["solutions"] = {"ex-f": SECRET}
    return nb


def _cell_metadata(nb):
    nb.cells[0].metadata["nbgrader"] = {"solution": True, "source": SECRET}
    return nb


SOLUTION_FORMS = {
    "directive-any-case": lambda: new_notebook(cells=[new_markdown_cell(f":::{{Solution}} ex-f\n{SECRET}\n:::")]),
    "directive-upper-backticks": lambda: new_notebook(cells=[
        new_markdown_cell(f"```{{SOLUTION}} ex-f\n{SECRET}\n```")]),
    "start-end-any-case": lambda: _with_block(new_markdown_cell(SECRET), start="```{Solution-Start} ex-f\n```",
                                              end="```{SOLUTION-END}\n```"),
    "raw-cell-in-block": lambda: _with_block(_raw(SECRET)),
    "markdown-in-block": lambda: _with_block(new_markdown_cell(SECRET)),
    "marker-lower-case": lambda: new_notebook(cells=[new_code_cell(
        f"def f():\n    ### begin solution\n    return '{SECRET}'\n    ### end solution\n")]),
    "marker-double-space": lambda: new_notebook(cells=[new_code_cell(
        f"def f():\n    ###  BEGIN SOLUTION\n    return '{SECRET}'\n    ###  END SOLUTION\n")]),
    "marker-no-space": lambda: new_notebook(cells=[new_code_cell(
        f"def f():\n    #BEGIN SOLUTION\n    return '{SECRET}'\n    #END SOLUTION\n")]),
    "marker-in-markdown": lambda: new_notebook(cells=[new_markdown_cell(f"{BEGIN}\n{SECRET}\n{END}")]),
    "marker-in-raw": lambda: new_notebook(cells=[_raw(f"{BEGIN}\n{SECRET}\n{END}")]),
    "notebook-metadata": lambda: _nb_metadata(_with_block(new_code_cell(f"{BEGIN}\nx = 1\n{END}"))),
    "cell-metadata": lambda: _cell_metadata(_with_block(new_code_cell(f"{BEGIN}\nx = 1\n{END}"))),
    "tagged-show-source": lambda: new_notebook(cells=[new_code_cell(
        f"show_source(f)  # {SECRET}", metadata={"tags": [student.SOLUTION_SOURCE_TAG]})]),
}

# Every way MyST itself reads a solution directive (checked below with MyST's parser, so a
# form that MyST would not render cannot pass for a test).
_MD = lambda text: lambda: new_notebook(cells=[new_markdown_cell(text)])  # noqa: E731
MYST_SOLUTION_FORMS = {
    "tilde-fence": _MD(f"~~~{{solution}} ex-f\n{SECRET}\n~~~"),
    "long-tilde-fence": _MD(f"~~~~~{{solution}} ex-f\n{SECRET}\n~~~~~"),
    "four-colons": _MD(f"::::{{solution}} ex-f\n{SECRET}\n::::"),
    "indented-three-spaces": _MD(f"   ```{{solution}} ex-f\n   {SECRET}\n   ```"),
    "with-options": _MD(f":::{{solution}} ex-f\n:class: dropdown\n:label: sol-f\n\n{SECRET}\n:::"),
    "yaml-options": _MD(f"```{{solution}} ex-f\n---\nclass: dropdown\n---\n{SECRET}\n```"),
    "in-a-blockquote": _MD(f"Some text.\n\n> :::{{solution}} ex-f\n> {SECRET}\n> :::"),
    "in-a-list": _MD(f"- item\n\n  ```{{solution}} ex-f\n  {SECRET}\n  ```"),
    "nested-in-a-note": _MD(f"::::{{note}}\nSee.\n:::{{solution}} ex-f\n{SECRET}\n:::\n::::"),
    "nested-backticks": _MD(f"````{{admonition}} Hint\n```{{solution}} ex-f\n{SECRET}\n```\n````"),
    "in-the-exercise": _MD(f"::::{{exercise}} T\n:label: ex-f\nDo.\n:::{{solution}} ex-f\n{SECRET}\n:::\n::::"),
    "eval-rst": _MD(f"```{{eval-rst}}\n.. solution:: ex-f\n\n   {SECRET}\n```"),
    "eval-rst-start": _MD(f"```{{eval-rst}}\n.. Solution-Start:: ex-f\n```\n\n{SECRET}"),
    "tilde-start-end": lambda: _with_block(new_markdown_cell(SECRET), start="~~~{solution-start} ex-f\n~~~",
                                           end="~~~{solution-end}\n~~~"),
    "start-in-a-quote": lambda: _with_block(new_markdown_cell(SECRET), start="> :::{solution-start} ex-f\n> :::"),
}
SOLUTION_FORMS.update(MYST_SOLUTION_FORMS)


@pytest.mark.parametrize("form", sorted(MYST_SOLUTION_FORMS))
def test_the_forms_are_solutions_as_myst_reads_them(form):
    from geoattn.course._myst import directives

    names = [name for cell in MYST_SOLUTION_FORMS[form]().cells for name, _ in directives(cell.source)]
    assert {"solution", "solution-start"} & set(names), f"{form}: MyST would not read a solution here"


def test_what_myst_does_not_read_as_a_directive_is_kept():
    from geoattn.course._myst import directives

    # Indented four spaces: a code block. In a {code-block}: text. Neither renders a solution.
    assert directives(f"    :::{{solution}}\n    {SECRET}\n    :::") == []
    assert directives(f"```{{code-block}} md\n:::{{solution}}\n{SECRET}\n:::\n```") == [("code-block", 0)]
    assert directives("> ~~~{Note}\n> x\n> ~~~") == [("note", 1)]


@pytest.mark.parametrize("form", sorted(SOLUTION_FORMS))
def test_every_form_of_a_solution_is_removed_or_refused(form):
    nb = SOLUTION_FORMS[form]()
    try:
        out = make_student_notebook(nb, "book/07_form.ipynb")
    except ValueError as err:
        assert "book/07_form.ipynb" in str(err)
        return
    assert SECRET not in nbformat.writes(out), f"{form}: the solution reached the student copy"


@pytest.mark.parametrize("form", ["marker-lower-case", "marker-double-space", "marker-no-space",
                                  "marker-in-markdown", "marker-in-raw"])
def test_marker_typos_are_refused_not_guessed(form):
    with pytest.raises(ValueError, match="solution marker"):
        make_student_notebook(SOLUTION_FORMS[form](), "book/07_form.ipynb")


def test_conceptual_exercise_gets_an_empty_answer_cell_and_coding_one_does_not():
    out = make_student_notebook(_chapter(), "book/03_x.ipynb")
    sources = [c.source for c in out.cells]
    assert sources.count(student.ANSWER_CELL) == 1  # ex-t-c only
    i = sources.index(student.ANSWER_CELL)
    assert sources[i - 1].startswith("**Exercise 3.3: Why?**")


def test_student_notebook_converts_myst_to_plain_markdown():
    bib = {"vaswani2017attention": {"author": "Vaswani, Ashish and Shazeer, Noam and Parmar, Niki",
                                    "year": "2017"},
           "milakov2018online": {"author": "Milakov, Maxim and Gimelshein, Natalia", "year": "2018"},
           "sengar2025appendix": {"author": "Sengar, Aditya", "year": "2025"}}
    text = ("See {cite:p}`vaswani2017attention` and {cite:p}`milakov2018online,sengar2025appendix`; "
            "{cite:t}`sengar2025appendix` shows it, as {doc}`chapter 4 <04_geometric_attention>` and "
            "{ref}`below <typo>` do.\n\n(typo)=\n```{note}\nA *note* with $x^2$.\n```")
    nb = new_notebook(cells=[new_markdown_cell(text),
                             new_markdown_cell(":::{exercise} Two\n:label: ex-04-two\n\nText $a$.\n:::")])
    out = make_student_notebook(nb, "book/04_x.ipynb", bib=bib)
    md = out.cells[0].source
    assert "(Vaswani et al., 2017)" in md
    assert "(Milakov and Gimelshein, 2018; Sengar, 2025)" in md
    assert "Sengar (2025) shows it" in md
    assert "[chapter 4](04_geometric_attention.ipynb)" in md
    assert "[below](#typo) do." in md.replace("\n", " ") and '<a id="typo"></a>' in md
    assert "> **Note.**" in md and "> A *note* with $x^2$." in md
    assert out.cells[1].source == '**Exercise 4.1: Two** <a id="ex-04-two"></a>\n\nText $a$.'
    for cell in out.cells:
        assert not student.MYST_SYNTAX.search(cell.source)
    with pytest.raises(ValueError, match="citation 'nobody' is not in the bibliography"):
        make_student_notebook(new_notebook(cells=[new_markdown_cell("{cite:p}`nobody`")]), "x", bib=bib)
    with pytest.raises(ValueError, match=r"\{glossary\} has no plain-Markdown form"):
        make_student_notebook(new_notebook(cells=[new_markdown_cell(":::{glossary}\nx\n:::")]), "x")


def test_bibtex_parser_reads_the_books_bibliography():
    from geoattn.course._myst import parse_bibtex

    bib = parse_bibtex((BOOK / "references.bib").read_text())
    assert bib["vaswani2017attention"]["year"] == "2017"
    assert "Kaiser, {\\L}ukasz" in bib["vaswani2017attention"]["author"]
    assert bib["dao2022flashattention"]["title"].startswith("{FlashAttention}")


BIB = {
    "vaswani2017attention": {"author": "Vaswani, Ashish and Shazeer, Noam and Parmar, Niki",
                             "title": "Attention Is All You Need", "booktitle": "Advances in {NeurIPS}",
                             "volume": "30", "year": "2017", "@type": "inproceedings"},
    "milakov2018online": {"author": "Maxim Milakov and Natalia Gimelshein", "title": "Online normalizer",
                          "journal": "arXiv preprint arXiv:1805.02867", "year": "2018", "@type": "article"},
    "kaiser2020x": {"author": r"Kaiser, {\L}ukasz", "title": r'A {\AA}ngstr{\"o}m--scale study?',
                    "journal": "J", "volume": "5", "number": "2", "pages": "1--9", "year": "2020",
                    "doi": "10.1000/xyz(1)", "@type": "article"},
    "sengar2025appendix": {"author": "Sengar, Aditya", "title": "Appendix", "year": "2025",
                           "url": "https://example.org/a", "note": "See ``A Deeper Look''", "@type": "misc"},
}


def _references(nb, **kwargs) -> list[str]:
    out = make_student_notebook(nb, "book/03_refs.ipynb", bib=BIB, **kwargs)
    text = _all_source(out)
    assert not student.MYST_SYNTAX.search(text) and ":filter:" not in text
    return [line for line in text.splitlines() if line.startswith("- ")]


@pytest.mark.parametrize("fence", ["```", ":::", "::::"])
@pytest.mark.parametrize("options", ["", ":filter: docname in docnames\n", ":filter: docname in docnames\n:style: x\n"])
def test_a_bibliography_becomes_the_list_of_the_works_cited(fence, options):
    nb = new_notebook(cells=[
        new_markdown_cell("As {cite:t}`vaswani2017attention` show {cite:p}`kaiser2020x`."),
        *_exercise("ex-r-a", f"def f_a(x):\n    {BEGIN}\n    return x\n    {END}\n"),
        new_markdown_cell(f"## References\n\n{fence}{{bibliography}}\n{options}{fence}\n\nThe end."),
        # Cited after the list, and so still in it, as in the book.
        new_markdown_cell("A last word {cite:p}`milakov2018online`."),
    ])
    assert _references(nb) == [
        "- Kaiser, Ł. (2020). A Ångström–scale study? *J*, 5(2), 1–9. <https://doi.org/10.1000/xyz(1)>",
        "- Milakov, M. and Gimelshein, N. (2018). Online normalizer. *arXiv preprint arXiv:1805.02867*.",
        "- Vaswani, A. et al. (2017). Attention Is All You Need. In *Advances in NeurIPS*, 30.",
    ]


def test_a_bibliography_leaves_out_what_only_a_solution_cites_and_reads_its_options():
    solution = [new_markdown_cell(":::{solution-start} ex-r-a\n:class: dropdown\n:::"),
                new_markdown_cell("As {cite:p}`sengar2025appendix` says."),
                new_markdown_cell(":::{solution-end}\n:::")]
    cells = [new_markdown_cell(":::{exercise} A\n:label: ex-r-a\n\nWhy? {cite:p}`milakov2018online`\n:::"),
             *solution]
    bibliography = ":::{bibliography}\n%s\n:::"
    listed = lambda opts: _references(new_notebook(cells=[*cells, new_markdown_cell(bibliography % opts)]))  # noqa: E731
    assert [r[:9] for r in listed(":filter: docname in docnames")] == ["- Milakov"]
    assert [r[:9] for r in listed(":cited:")] == ["- Milakov"]
    assert [r[:9] for r in listed(":all:")] == ["- Kaiser,", "- Milakov", "- Sengar,", "- Vaswani"]
    assert [r[:9] for r in listed(':filter: type == "article" and not cited')] == ["- Kaiser,"]
    assert [r[:9] for r in listed(':filter: author % "Sengar" or key in {"kaiser2020x"}')] == [
        "- Kaiser,", "- Sengar,"]
    assert listed(":all:")[2] == ('- Sengar, A. (2025). Appendix. See “A Deeper Look”. '
                                  "<https://example.org/a>")
    with pytest.raises(ValueError, match=r"cell 4: the bibliography filter .* uses Call"):
        listed(":filter: __import__('os').system('true')")


def test_a_ref_to_a_later_exercise_reads_its_number():
    nb = new_notebook(cells=[new_markdown_cell("Try {ref}`ex-09-b` first."),
                             new_markdown_cell(":::{exercise} A\n:label: ex-09-a\n\nA.\n:::"),
                             new_markdown_cell(":::{exercise} B\n:label: ex-09-b\n\nB.\n:::")])
    out = make_student_notebook(nb, "book/09_x.ipynb")
    assert out.cells[0].source == "Try [Exercise 9.2](#ex-09-b) first."


def test_a_doc_link_to_a_page_without_a_student_copy_becomes_plain_text():
    nb = new_notebook(cells=[new_markdown_cell("See {doc}`the intro <intro>` and {doc}`chapter 2 <02_b>`.")])
    md = make_student_notebook(nb, "book/01_a.ipynb", notebooks=["01_a", "02_b"]).cells[0].source
    assert md == "See the intro and [chapter 2](02_b.ipynb)."


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_copy_lists_the_works_its_chapter_cites(generated, chapter):
    from geoattn.course._myst import cited_keys, format_reference, parse_bibtex

    original = nbformat.read(BOOK / chapter, as_version=4)
    if not re.search(r"^(`{3,}|:{3,})\{bibliography\}", _all_source(original), re.M):
        pytest.skip(f"{chapter} has no reference list")
    bib = parse_bibtex((BOOK / "references.bib").read_text())
    copy = _all_source(nbformat.read(generated / chapter, as_version=4))
    listed = [line[2:] for line in copy.splitlines() if line.startswith("- ") and line[2:] in
              {format_reference(k, e) for k, e in bib.items()}]
    kept, block = [], False  # the markdown the copy keeps: solutions cite nothing for it
    for cell in original.cells:
        if SOLUTION_START.search(cell.source) or SOLUTION_END.search(cell.source):
            block = bool(SOLUTION_START.search(cell.source))
        elif cell.cell_type == "markdown" and not block and not SOLUTION.search(cell.source):
            kept.append(cell.source)
    assert sorted(listed) == sorted(format_reference(k, bib[k]) for k in cited_keys(kept)), (
        f"{chapter}: the reference list of the student copy is not the works the chapter cites")


# -------------------------------------------------------- writing never loses data (#10)

def _book(tmp_path) -> tuple[Path, Path]:
    src, out = tmp_path / "book", tmp_path / "assignments"
    src.mkdir()
    nbformat.write(_chapter(), src / "01_a.ipynb")
    return src, out


def test_a_link_to_the_chapter_is_refused_and_the_chapter_kept(tmp_path, capsys):
    import os

    src, out = _book(tmp_path)
    chapter = (src / "01_a.ipynb").read_bytes()
    out.mkdir()
    (out / "01_a.ipynb").symlink_to(src / "01_a.ipynb")
    assert student.main([str(src), str(out), "--force"]) == 1
    assert "is a link to the chapter" in capsys.readouterr().err
    assert (src / "01_a.ipynb").read_bytes() == chapter
    (out / "01_a.ipynb").unlink()
    os.link(src / "01_a.ipynb", out / "01_a.ipynb")  # a hard link: same file, other name
    assert student.main([str(src), str(out), "--force"]) == 1
    assert "is a link to the chapter" in capsys.readouterr().err
    assert (src / "01_a.ipynb").read_bytes() == chapter


def test_an_existing_copy_is_kept_without_force_and_links_are_replaced_not_followed(tmp_path, capsys):
    src, out = _book(tmp_path)
    out.mkdir()
    work = "a student's work"
    (out / "01_a.ipynb").write_text(work)
    assert student.main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert (out / "01_a.ipynb").read_text() == work
    assert student.main([str(src), str(out), "--force"]) == 0
    assert "Student copy" in (out / "01_a.ipynb").read_text()
    # A link to some other file is replaced by the copy; the file it pointed to is untouched.
    elsewhere = tmp_path / "elsewhere.ipynb"
    elsewhere.write_text(work)
    (out / "01_a.ipynb").unlink()
    (out / "01_a.ipynb").symlink_to(elsewhere)
    assert student.main([str(src), str(out), "--force"]) == 0
    assert not (out / "01_a.ipynb").is_symlink() and elsewhere.read_text() == work
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("bad, message", [
    ("not json {", "not a notebook (not JSON"),
    ('{"cells": [{"cell_type": "code", "metadata": {}}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
     "cell 0: the cell has no 'source'"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
])
def test_malformed_input_is_a_clear_error_naming_the_file(tmp_path, capsys, bad, message):
    src, out = _book(tmp_path)
    path = src / "02_bad.ipynb"
    path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    assert student.main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "02_bad.ipynb" in err
    assert not out.exists(), "nothing is written when any chapter is malformed"


def test_destination_that_is_a_file_is_refused(tmp_path, capsys):
    src, out = _book(tmp_path)
    out.write_text("a file")
    assert student.main([str(src), str(out)]) == 1
    assert "is a file, not a directory" in capsys.readouterr().err
    assert out.read_text() == "a file"


def test_importing_the_student_tool_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, geoattn.course.student; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


# ------------------------------------------------- the real chapters' copies read cleanly

@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_copy_has_no_myst_only_syntax(generated, chapter):
    copy = nbformat.read(generated / chapter, as_version=4)
    for i, cell in enumerate(copy.cells):
        if cell.cell_type == "markdown":
            hit = student.MYST_SYNTAX.search(cell.source)
            assert not hit, f"{chapter}, cell {i}: MyST syntax {hit.group(0)!r} in the student copy"
            assert ":label:" not in cell.source and ":class:" not in cell.source


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_copy_numbers_exercises_per_chapter_and_answers_conceptual_ones(generated, chapter):
    original = nbformat.read(BOOK / chapter, as_version=4)
    copy = nbformat.read(generated / chapter, as_version=4)
    labels = re.findall(r"^:::\{exercise\}.*\n:label: (\S+)", _all_source(original), re.M)
    headings = re.findall(r"^\*\*Exercise (\d+)\.(\d+)[:*].*<a id=\"(\S+)\"></a>", _all_source(copy), re.M)
    n = int(chapter[:2])
    assert [(int(c), int(k), label) for c, k, label in headings] == [
        (n, k, label) for k, label in enumerate(labels, start=1)]
    # Conceptual exercises (solution blocks without code) get a "Your answer" cell each.
    conceptual = 0
    block, has_code = False, False
    for cell in original.cells:
        if SOLUTION_START.search(cell.source):
            block, has_code = True, False
        elif SOLUTION_END.search(cell.source):
            conceptual += not has_code
            block = False
        elif block and cell.cell_type == "code":
            has_code = True
    answers = [c for c in copy.cells if c.cell_type == "markdown" and c.source == student.ANSWER_CELL]
    assert len(answers) == conceptual > 0


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_writes_exercises_with_colon_fences(chapter):
    text = _all_source(nbformat.read(BOOK / chapter, as_version=4))
    assert not re.search(r"^`{3,}\{(exercise|solution|solution-start|solution-end)\}", text, re.M)
    assert re.search(r"^:::\{exercise\}", text, re.M)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_source_cells_become_notes(generated, chapter):
    original = nbformat.read(BOOK / chapter, as_version=4)
    copy = nbformat.read(generated / chapter, as_version=4)
    tagged = [c.source for c in original.cells
              if student.SOLUTION_SOURCE_TAG in c.metadata.get("tags", [])]
    code = {c.source for c in copy.cells if c.cell_type == "code"}
    assert not set(tagged) & code
    notes = [c for c in copy.cells if c.source == student.HIDDEN_SOURCE_NOTE]
    assert len(notes) == len(tagged)


def _solving_objects():
    """Exercise -> the library code that answers it. Its lines must not reach a student."""
    import geoattn
    from geoattn import attention, online_softmax

    return {
        "ex-01-softmax": [attention.softmax],
        "ex-01-attention": [attention.scaled_dot_product_attention, geoattn.attention_steps],
        "ex-02-split-heads": [geoattn.MultiHeadAttention.split_heads],
        "ex-02-merge-heads": [geoattn.MultiHeadAttention.merge_heads],
        "ex-02-rope": [geoattn.positional.rope],
        "ex-03-invert-frame": [geoattn.invert_frame],
        "ex-03-frames": [geoattn.frames_from_backbone],
        "ex-04-distance-term": [geoattn.geometric._geometric_logits],
        "ex-04-layer-update": [geoattn.GeometricSelfAttention.forward],
        "ex-05-step": [online_softmax.online_softmax_update],
        "ex-07-augmented-qk": [geoattn.ipa_augmented_qk],
    }


def _answer_lines(obj) -> set[str]:
    """The lines of ``obj``'s source that compute something (not docstrings, checks or comments)."""
    import inspect

    lines = set()
    for line in inspect.getsource(obj).splitlines():
        s = line.split("  #")[0].strip()
        if (len(s) >= 20 and not s.startswith(("#", '"', "'", "def ", "raise ", "if ", "require_", "_check"))
                and any(op in s for op in ("exp(", "amax", "sqrt", "@", "norm", "reshape", "transpose",
                                           "maximum", "cdist", "/"))):
            lines.add(s)
    return lines


def _all_outputs(nb) -> str:
    return "\n".join(_text(c) + "\n" + "\n".join(
        o.get("data", {}).get("text/markdown", "") for o in c.get("outputs", []))
        for c in nb.cells if c.cell_type == "code")


def test_executed_student_copies_print_no_library_answer(executed):
    """Running a student copy prints no line of the library code that solves one of its exercises."""
    for label, objs in _solving_objects().items():
        chapter = next(name for name in CHAPTERS if name.startswith(label[3:5]))
        printed = _all_outputs(executed[chapter])
        leaked = {line for obj in objs for line in _answer_lines(obj) if line in printed}
        assert not leaked, f"{chapter} prints the answer to {label}: {sorted(leaked)}"
    # Nor any line of the chapter's own solutions (those that occur only there).
    for chapter in CHAPTERS:
        original = nbformat.read(BOOK / chapter, as_version=4)
        secret = {line for line in _solution_lines(original) - _non_solution_lines(original) if len(line) >= 12}
        printed = {line.strip() for line in _all_outputs(executed[chapter]).splitlines()}
        assert not secret & printed, f"{chapter} prints solution lines: {sorted(secret & printed)}"
    # ... while the chapters themselves do show that code (so the test can see a leak).
    ch1 = nbformat.read(BOOK / CHAPTERS[0], as_version=4)
    assert _answer_lines(_solving_objects()["ex-01-softmax"][0]) & set(
        line.strip() for line in _all_outputs(ch1).splitlines())


# ------------------------------------------------ links inside and between the copies

_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<href>[^)\s]*)\)")


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_link_in_a_copy_reaches_an_anchor_or_a_copy(generated, chapter):
    text = _markdown(nbformat.read(generated / chapter, as_version=4))
    for link in _LINK.finditer(text):
        href, label = link.group("href"), link.group("text")
        assert not re.fullmatch(r"(sec|ex|ch\d)-[\w-]+", label), f"{chapter}: a raw label as link text: {label}"
        if href.startswith(("http://", "https://")):
            continue
        doc, _, anchor = href.partition("#")
        target = generated / doc if doc else generated / chapter
        assert target.is_file(), f"{chapter}: [{label}]({href}) leads to no student copy"
        if anchor:
            assert f'<a id="{anchor}"></a>' in _markdown(nbformat.read(target, as_version=4)), (
                f"{chapter}: [{label}]({href}): {target.name} has no anchor {anchor!r}")


def test_a_ref_to_another_chapter_links_to_its_copy_and_reads_its_heading():
    other = new_notebook(cells=[new_markdown_cell("(sec-far)=\n### Far away\n\nText.")])
    targets = student.targets_of([other.cells[0].source], "05_far")
    assert targets == {"sec-far": ("05_far", "Far away")}
    here = new_notebook(cells=[new_markdown_cell("See {ref}`sec-far`, {ref}`there <sec-far>` and {ref}`sec-gone`.")])
    out = make_student_notebook(here, "04_here.ipynb", notebooks=["04_here", "05_far"], targets=targets)
    assert out.cells[0].source == "See [Far away](05_far.ipynb#sec-far), [there](05_far.ipynb#sec-far) and " \
                                  "[sec-gone](#sec-gone)."
    no_copy = make_student_notebook(here, "04_here.ipynb", notebooks=["04_here"], targets=targets)
    assert no_copy.cells[0].source.startswith("See Far away, there and")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_copy_says_it_is_the_copy_and_drops_the_notation_link(generated, chapter):
    original = _markdown(nbformat.read(BOOK / chapter, as_version=4))
    text = _markdown(nbformat.read(generated / chapter, as_version=4))
    assert "open the student copy" not in text
    assert text.count(student.THIS_IS_THE_COPY) == original.count("open the student copy in Colab") > 0
    assert "notation" not in " ".join(m.group("href") for m in _LINK.finditer(text))
