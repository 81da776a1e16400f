"""Grade submitted student notebooks: ``python -m geoattn.course.grade SUBMISSIONS/ --out report.csv``.

``SUBMISSIONS/`` holds one folder per student with their notebooks (``alice/01_self_attention.ipynb``),
or notebooks directly, one per student (``alice.ipynb``). Every notebook is matched to a
chapter of the reference (``--reference DIR``; by default the book's chapters when this
package runs from a checkout beside ``book/``): by its name, or else by the exercises it
holds, so ``carol.ipynb`` or Colab's ``Copy of 04_geometric_attention.ipynb`` still count.

Threat model
------------
A submission is code written by someone who wants a pass. Everything it can write or patch
is untrusted: its files, its printed output, the kernel's memory (the harness's functions,
``CheckResult``, ``torch`` itself), the environment, and any file the grader would read
back from its folder. So no verdict comes from the student's process:

- the notebook runs in a worker process (:mod:`geoattn.course._sandbox`), in a fresh
  temporary folder that is its working directory, home and temporary directory; there
  every ``check_*`` call only records *which function* the student handed in;
- this process then runs each check itself, with the library's reference answers, and
  calls the student's function remotely: the inputs go to the worker as data, the result
  comes back as data (tensors as raw bytes, never pickle), and the comparison, the hint
  and the record happen here. A forged log line, a patched harness or fake ✓ output
  changes nothing, because nothing of the worker's is read except the results of calls;
- each call has a time limit kept by this process (a deadline on the pipe), so
  ``signal.setitimer(ITIMER_REAL, 0)`` in the student's code does not lift it: past the
  limit the worker is killed and, for the next check, the cells that had finished are
  run again in a fresh worker;
- the worker runs under a reaper that is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``):
  double-forked and ``setsid()`` processes are re-parented to it and killed with the
  notebook. This process never waits on a pipe without a deadline, so even a process that
  escaped cannot stall grading;
- a submission that is a symbolic link, a hard link, or a file outside the submissions
  folder is refused, naming the file; every failure of one notebook (bad JSON, JSON
  nested deep enough for a RecursionError, a crash) is that notebook's ``notebook error``
  row, and the report is always written.

What it does not stop: the worker runs as the grader's user, so code that names absolute
paths can read or write what that user can, signal or ptrace the grader, and kill the
reaper (then its orphans live on). A function can still compute its answer with the
library's code under another name. Grade untrusted work in a container or as a dedicated
unprivileged user (``book/for_teachers.md`` gives a command); the rules above keep honest
mistakes and in-band cheating out of the grades, the container keeps the machine safe.

Outputs (beside ``--out report.csv``): the per-row CSV; ``report-grades.csv`` (student,
score) for a course platform's grade import; ``report-summary.md`` (per-student totals, per
exercise how many passed and the most common failure); ``report-feedback/<student>.md``
(every check's message and hint, and the conceptual answers). ``--gradescope FILE`` writes a
Gradescope ``results.json`` instead, for one submission.
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .student import atomic_write_text, read_notebook

__all__ = ["Row", "grade_notebook", "grade_submissions", "expected_exercises", "conceptual_exercises",
           "write_outputs", "load_points", "main"]

PASSED, FAILED, NOT_ATTEMPTED, TIMED_OUT, NOTEBOOK_ERROR, MISSING = (
    "passed", "failed", "not attempted", "timed out", "notebook error", "missing")
ANSWERED, EMPTY = "answered", "empty"
STATUSES = (PASSED, FAILED, NOT_ATTEMPTED, TIMED_OUT, NOTEBOOK_ERROR, MISSING)
COLUMNS = ["student", "notebook", "exercise", "check", "status", "points", "max_points", "detail", "file"]

_CHECK_CALL = re.compile(r"\bcheck_[A-Za-z0-9_]+(?=\s*\()")
_LABEL = re.compile(r"<a id=\"(ex-[\w-]+)\"></a>|^:label:\s*(ex-[\w-]+)", re.M)
_SOLUTION_START = re.compile(r"\{solution-start\}\s*(\S+)", re.I)
_SOLUTION_END = re.compile(r"\{solution-end\}", re.I)
ANSWER_PREFIX = "**Your answer:**"
# Environment variables a worker may inherit; everything else (tokens, the teacher's paths)
# stays out of a student's notebook.
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "TRITON_INTERPRET")
_CALL_GRACE = 5.0  # beyond the check's own limit, for the round trip and a loaded machine


@dataclass(frozen=True)
class Row:
    student: str
    notebook: str
    exercise: str
    check: str
    status: str
    detail: str = ""
    points: float | None = None  # None: not scored by the grader (a conceptual answer)
    max_points: float | None = None
    file: str = ""
    hidden: bool = False


# ------------------------------------------------------------------- what a chapter expects

def _labelled_cells(nb):
    """(label of the exercise the cell follows, cell) for every cell."""
    label = ""
    for cell in nb.cells:
        if cell.get("cell_type") == "markdown":
            hit = _LABEL.search(cell.get("source", ""))
            if hit:
                label = hit.group(1) or hit.group(2)
        yield label, cell


def expected_exercises(nb) -> list[tuple[str, str]]:
    """(exercise label, check function name) for every check that ``nb``'s code cells call, in order."""
    found: list[tuple[str, str]] = []
    for label, cell in _labelled_cells(nb):
        if cell.get("cell_type") == "code":
            for check in _CHECK_CALL.findall(cell.get("source", "")):
                if check not in (c for _, c in found):
                    found.append((label or check, check))
    return found


def conceptual_exercises(nb) -> list[str]:
    """Labels of the exercises answered in words: a solution block without code in a chapter,
    or a "Your answer:" cell in a student copy."""
    found: list[str] = []
    open_label, has_code = None, False
    for label, cell in _labelled_cells(nb):
        source = cell.get("source", "")
        if cell.get("cell_type") == "code":
            has_code = True
            continue
        start = _SOLUTION_START.search(source)
        if start:
            open_label, has_code = start.group(1), False
        elif _SOLUTION_END.search(source) and open_label is not None:
            if not has_code and open_label not in found:
                found.append(open_label)
            open_label = None
        elif source.lstrip().startswith(ANSWER_PREFIX) and label and label not in found:
            found.append(label)
    return found


def _answers(nb) -> dict[str, str]:
    """The text of each "Your answer:" cell, by the label of the exercise before it."""
    answers: dict[str, str] = {}
    for label, cell in _labelled_cells(nb):
        source = cell.get("source", "")
        if cell.get("cell_type") == "markdown" and source.lstrip().startswith(ANSWER_PREFIX) and label:
            answers[label] = source.lstrip()[len(ANSWER_PREFIX):].strip()
    return answers


def _keys(nb) -> set[str]:
    return ({c for _, c in expected_exercises(nb)} | set(conceptual_exercises(nb))
            | {m.group(1) or m.group(2) for cell in nb.cells for m in _LABEL.finditer(cell.get("source", ""))})


def match_chapter(name: str, nb, references: dict) -> str | None:
    """The reference chapter a submission answers: same file name, else the most shared exercises."""
    if name in references:
        return name
    mine = _keys(nb)
    scored = sorted(((len(mine & _keys(ref)), chapter) for chapter, ref in references.items()), reverse=True)
    if scored and scored[0][0] > 0 and (len(scored) == 1 or scored[1][0] < scored[0][0]):
        return scored[0][1]
    return None


# ------------------------------------------------------------------------------ points

def load_points(path: str | Path | None) -> dict[str, float]:
    """Points per check name or exercise label, from a TOML file with a ``[points]`` table::

        [points]
        check_softmax = 2
        "ex-04-distance" = 3
    """
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # Python 3.10: the same small subset, read by hand
        tomllib = None
    try:
        data = tomllib.loads(text) if tomllib is not None else _points_subset(text)
    except Exception as err:
        raise ValueError(f"{path}: not a points file ({err})") from None
    points = data.get("points", {})
    if not isinstance(points, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in points.values()):
        raise ValueError(f"{path}: [points] must map check names or exercise labels to numbers >= 0")
    return {str(k): float(v) for k, v in points.items()}


def _points_subset(text: str) -> dict:
    data: dict = {}
    table = None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            table = data.setdefault(line.strip("[] "), {})
            continue
        key, eq, value = line.partition("=")
        if not eq or table is None:
            raise ValueError(f"line {lineno}: expected key = number in a [points] table")
        table[key.strip().strip('"')] = float(value)
    return data


def _points_for(points: dict[str, float], label: str, check: str, default: float | None) -> float | None:
    for key in (check, label):
        if key and key in points:
            return points[key]
    return default


# ------------------------------------------------------------------- one worker, at arm's length

class _WorkerGone(BaseException):
    """The worker stopped answering (it died, broke the protocol, or is being replaced); a
    BaseException so that the harness's ``except Exception`` passes it up to us."""


class _Session:
    """One worker under its reaper, running a notebook's first ``upto`` code cells."""

    def __init__(self, notebook: Path, work: Path, log: Path, env: dict, upto: int = -1):
        from . import _sandbox

        self.sandbox = _sandbox
        g2w_r, self.g2w = os.pipe()
        self.w2g, w2g_w = os.pipe()
        os.set_blocking(self.g2w, False)
        module = [sys.executable, "-m", "geoattn.course._sandbox"]
        cmd = [*module, "reap", str(log), str(g2w_r), str(w2g_w), "--",
               *module, "work", str(notebook), str(g2w_r), str(w2g_w), str(upto)]
        with open(log, "ab") as err:
            self.reaper = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=err, pass_fds=(g2w_r, w2g_w), start_new_session=True)
        os.close(g2w_r)
        os.close(w2g_w)
        self.exit_code: int | None = None
        self.alive = True
        self._status = b""

    def _poll_reaper(self) -> None:
        fd = self.reaper.stdout.fileno()
        while __import__("select").select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self._status += chunk
        for line in self._status.decode(errors="replace").splitlines():
            if line.startswith("exited "):
                try:
                    self.exit_code = int(line.split()[1])
                except (IndexError, ValueError):
                    self.exit_code = -1

    def receive(self, deadline: float) -> dict | tuple:
        """The next message, or raise TimeoutError / _WorkerGone."""
        import select

        while True:
            self._poll_reaper()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.w2g], [], [], min(left, 0.5))
            if ready:
                try:
                    return self.sandbox.receive(self.w2g, deadline)
                except self.sandbox.ProtocolError as err:
                    self.close()
                    raise _WorkerGone(str(err)) from None
            if self.exit_code is not None:
                self.close()
                raise _WorkerGone(f"exit code {self.exit_code}")

    def send(self, message: dict, buffers: list[bytes], deadline: float) -> None:
        try:
            self.sandbox.send(self.g2w, message, buffers, deadline=deadline)
        except OSError as err:  # a closed pipe: the worker is gone
            self.close()
            raise _WorkerGone(str(err)) from None

    def close(self) -> None:
        """End the worker and everything it started (the reaper kills its whole tree)."""
        if not self.alive:
            return
        self.alive = False
        try:
            self.reaper.stdin.write(b"end\n")
            self.reaper.stdin.close()
        except OSError:
            pass
        try:
            self.reaper.wait(timeout=20)
        except subprocess.TimeoutExpired:  # the reaper itself is stuck or stopped: do its job
            try:
                os.kill(self.reaper.pid, signal.SIGSTOP)
                self.sandbox.kill_descendants(self.reaper.pid, rounds=20, reap=False)
                os.killpg(self.reaper.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for fd in (self.g2w, self.w2g):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.reaper.stdout.close()
        except OSError:
            pass


class _Run:
    """What a worker reported while it ran the cells."""

    def __init__(self):
        self.recorded: dict[str, dict] = {}
        self.cells_done = 0
        self.first_error: str | None = None
        self.ready = False
        self.timed_out = False
        self.gone: str | None = None


def _run_cells(session: _Session, timeout: float) -> _Run:
    run = _Run()
    deadline = time.monotonic() + timeout
    while True:
        try:
            message, _ = session.receive(deadline)
        except TimeoutError:
            run.timed_out = True
            break
        except _WorkerGone as err:
            run.gone = str(err)
            break
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "record" and isinstance(message.get("check"), str):
            run.recorded[message["check"]] = message
        elif kind == "cell" and isinstance(message.get("index"), int):
            run.cells_done = max(run.cells_done, message["index"] + 1)
            if message.get("error") and run.first_error is None:
                run.first_error = str(message["error"])[:300]
        elif kind == "ready":
            run.ready = True
            break
    if not run.ready:
        session.close()
    return run


class _Remote:
    """Stands for the student's function in this process: each call is a round trip."""

    def __init__(self, grader: _Grader, check: str, info: dict):
        self._grader, self._check = grader, check
        if info.get("module"):  # the library's own function: the harness refuses it by name
            self.__module__, self.__qualname__ = str(info["module"]), str(info.get("qualname", "function"))

    def __call__(self, *args):
        return self._grader.call(self._check, args)


def _flat_tensors(x, out):
    import torch

    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (tuple, list)):
        for e in x:
            _flat_tensors(e, out)
    return out


class _Grader:
    """Runs the checks of one notebook here, against functions that live in a worker."""

    def __init__(self, notebook: Path, work: Path, log: Path, env: dict, timeout: float):
        self.notebook, self.work, self.log, self.env, self.timeout = notebook, work, log, env, timeout
        self.session: _Session | None = None
        self.upto = -1
        self.starts = 0

    def first_run(self) -> _Run:
        self.session = _Session(self.notebook, self.work, self.log, self.env)
        self.starts = 1
        run = _run_cells(self.session, self.timeout)
        if not run.ready:
            self.upto = run.cells_done  # a fresh worker reruns only the cells that finished
        return run

    def _ensure(self) -> None:
        if self.session is not None and self.session.alive:
            return
        if self.starts > 12:
            raise _WorkerGone("the notebook was restarted too often")
        self.starts += 1
        self.session = _Session(self.notebook, self.work, self.log, self.env, self.upto)
        run = _run_cells(self.session, self.timeout)
        if not run.ready:
            raise _WorkerGone("its cells did not run again" + (" in time" if run.timed_out else ""))

    def call(self, check: str, args: tuple):
        from .checks import _harness

        if self.session is None or not self.session.alive:
            raise _WorkerGone("the notebook's process ended on an earlier case")
        tree, buffers = self.session.sandbox.encode(args)
        deadline = time.monotonic() + _harness.TIME_LIMIT + _CALL_GRACE
        try:
            self.session.send({"type": "call", "check": check, "args": tree}, buffers, deadline)
            message, data = self.session.receive(deadline)
        except TimeoutError:
            self.session.close()
            raise _harness._TookTooLong from None
        except BaseException:  # the harness's alarm, or the worker gone: this worker is done
            self.session.close()
            raise
        if not isinstance(message, dict) or message.get("type") != "result":
            self.session.close()
            raise _WorkerGone("an answer that is not a result")
        if message.get("kind") == "raised":
            name = str(message.get("name", "Exception"))[:80]
            text = str(message.get("message", ""))
            if message.get("not_implemented"):
                raise NotImplementedError(text)
            raise type(name if name.isidentifier() else "Exception", (Exception,), {})(text)
        try:
            value, returned = self.session.sandbox.decode(message.get("value"), data)
        except Exception as err:
            self.session.close()
            raise _WorkerGone(f"an undecodable result ({err})") from None
        self._apply_in_place(args, returned)
        return value

    @staticmethod
    def _apply_in_place(args, returned) -> None:
        """Make the caller's tensors show what the student's function did to its copies, so
        the harness still reports an input changed in place."""
        import torch

        mine, theirs = _flat_tensors(args, []), _flat_tensors(returned, [])
        if len(mine) != len(theirs):
            return
        with torch.no_grad():
            for a, b in zip(mine, theirs):
                if a.shape == b.shape and a.dtype == b.dtype:
                    a.copy_(b)
                else:
                    a.data = b

    def grade(self, check: str, info: dict, cases=None):
        """(status, message) of ``check`` on the recorded function; ``cases``: hidden ones instead."""
        from . import checks
        from ._sandbox import _opaque
        from .checks import _harness

        fn = (_Remote(self, check, info) if info.get("callable")
              else _opaque(str(info.get("typename", "object")), None))
        try:
            self._ensure()  # before the check: rerunning the cells must not count against a call's limit
            if cases is None:
                result = getattr(checks, check)(fn)
            else:
                result = _harness.run_check(check.removeprefix("check_"), fn, cases)
        except _harness._TookTooLong:
            return TIMED_OUT, (f"✗ {check}: the function ran past the time limit "
                               f"({_harness.TIME_LIMIT:g} s per call)")
        except _WorkerGone as err:
            return NOTEBOOK_ERROR, f"the notebook's process stopped while the check ran ({err})"
        except Exception as err:
            return NOTEBOOK_ERROR, f"the check could not run ({type(err).__name__}: {str(err)[:200]})"
        return result.status, result.message

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


# ------------------------------------------------------------------------ one notebook

def _refusal(path: Path, folder: Path | None) -> str | None:
    """Why ``path`` is not graded as a submission (a link, or outside the folder), or None."""
    if path.is_symlink():
        return f"{path.name} is a symbolic link; hand in the notebook itself"
    try:
        info = path.lstat()
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror})"
    if not path.is_file():
        return f"{path.name} is not a regular file"
    if info.st_nlink > 1:
        return f"{path.name} is a hard link to another file; hand in the notebook itself"
    if folder is not None:
        root = folder.resolve()
        if root not in path.resolve().parents:
            return f"{path.name} lies outside the submissions folder"
    return None


def _environment(home: Path, tmp: Path) -> dict:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp), "MPLBACKEND": "Agg",
                "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                "PYTHONDONTWRITEBYTECODE": "1", "IPYTHONDIR": str(home / ".ipython")})
    return env


def grade_notebook(path: Path, student: str, *, timeout: float = 600.0, reference=None, chapter: str | None = None,
                   points: dict | None = None, hidden: dict | None = None, folder: Path | None = None) -> list[Row]:
    """Run the notebook at ``path`` in a worker and grade each exercise here; one row per exercise.

    ``reference`` (a notebook) says which exercises are expected; ``chapter`` is its name.
    ``hidden`` maps check names to extra cases (see :func:`load_hidden`), graded as rows of
    their own. Every failure ends as rows of this notebook, never as an exception.
    """
    name = chapter or path.name
    try:
        return _grade_notebook(path, student, name, timeout, reference, points or {}, hidden or {}, folder)
    except Exception as err:
        return [Row(student, name, "*", "", NOTEBOOK_ERROR, f"the grader failed on this notebook "
                                                             f"({type(err).__name__}: {str(err)[:200]})",
                    file=path.name)]


def _notebook_error(student, name, file, detail):
    return [Row(student, name, "*", "", NOTEBOOK_ERROR, detail, file=file)]


def _grade_notebook(path, student, name, timeout, reference, points, hidden, folder) -> list[Row]:
    file = path.name
    refused = _refusal(path, folder)
    if refused:
        return _notebook_error(student, name, file, f"refused: {refused}")
    try:
        nb = read_notebook(path)
    except RecursionError:
        return _notebook_error(student, name, file, f"{file}: not a notebook (JSON nested too deeply)")
    except ValueError as err:
        return _notebook_error(student, name, file, str(err).replace(str(path), file))
    source = reference if reference is not None else nb
    expected = expected_exercises(source)
    conceptual = conceptual_exercises(source)
    if not expected and not conceptual:
        return _notebook_error(student, name, file, "no exercise found in the notebook")
    called = {c for _, c in expected_exercises(nb)}
    rows: list[Row] = []
    root = Path(tempfile.mkdtemp(prefix="geoattn-grade-"))
    grader = None
    try:
        work, home, tmp = root / "work", root / "home", root / "tmp"
        for d in (work, home, tmp):
            d.mkdir()
        import nbformat

        nbformat.write(nb, work / file)  # the parsed copy: what was read here is what runs
        grader = _Grader(work / file, work, root / "worker.log", _environment(home, tmp), timeout)
        run = grader.first_run() if expected else _Run()
        for label, check in expected:
            max_points = _points_for(points, label, check, 1.0)
            if check in run.recorded:
                status, detail = grader.grade(check, run.recorded[check])
            elif check not in called:
                status, detail = MISSING, (f"the notebook has no cell that calls {check}: the exercise's cell "
                                           "was deleted or renamed")
            elif run.timed_out:
                status, detail = TIMED_OUT, f"the notebook ran past its time limit ({timeout:g} s) before this check"
            elif run.gone:
                status, detail = NOTEBOOK_ERROR, "the notebook's process ended before this check ran"
            else:
                first = run.first_error
                status, detail = NOTEBOOK_ERROR, "the check never ran" + (f" (first error: {first})" if first else "")
            rows.append(Row(student, name, label, check, status, detail,
                            max_points if status == PASSED else 0.0, max_points, file))
            for cases in hidden.get(check, []) if check in run.recorded else []:
                h_status, h_detail = grader.grade(check, run.recorded[check], cases)
                h_max = _points_for(points, "", f"{check}:hidden", 1.0)
                rows.append(Row(student, name, label, check, h_status, h_detail, h_max if h_status == PASSED else 0.0,
                                h_max, file, hidden=True))
        answers = _answers(nb)
        for label in conceptual:
            text = answers.get(label)
            if text is None:
                status, detail = MISSING, "no \"Your answer:\" cell for this exercise"
            else:
                status, detail = (ANSWERED, text) if text else (EMPTY, "")
            max_points = _points_for(points, label, "", None)
            rows.append(Row(student, name, label, "", status, detail, None, max_points, file))
    finally:
        if grader is not None:
            grader.close()
        shutil.rmtree(root, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------ all submissions

def _submissions(folder: Path) -> tuple[list[str], list[tuple[str, Path]]]:
    """The students (a folder each, empty ones too, or a notebook each) and (student, path) of
    every notebook, links included: grade_notebook refuses those by name."""
    students, found = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            students.append(entry.name)
            found += [(entry.name, p) for p in sorted(entry.iterdir())
                      if p.suffix == ".ipynb" and not p.name.startswith(".")]
        elif entry.suffix == ".ipynb" or entry.is_symlink():
            students.append(entry.stem)
            found.append((entry.stem, entry))
    return students, found


def default_reference() -> Path | None:
    """The book's chapters, when this package runs from a checkout (``src/`` beside ``book/``)."""
    book = Path(__file__).resolve().parents[3] / "book"
    return book if any(book.glob("*.ipynb")) else None


def load_hidden(path: str | Path | None) -> dict[str, list]:
    """Hidden grading cases from a teacher's Python file that defines ``HIDDEN_CASES``: a dict
    from check name to a list of :class:`~geoattn.course.checks.Case` lists, each list graded as
    one extra row. The file is the teacher's code and runs in the grading process."""
    if path is None:
        return {}
    namespace: dict = {"__name__": "geoattn_hidden_cases", "__file__": str(path)}
    exec(compile(Path(path).read_text(encoding="utf-8"), str(path), "exec"), namespace)
    cases = namespace.get("HIDDEN_CASES")
    if not isinstance(cases, dict):
        raise ValueError(f"{path}: define HIDDEN_CASES = {{'check_name': [[Case, ...], ...]}}")
    return {str(k): [list(group) for group in v] for k, v in cases.items()}


def grade_submissions(folder: str | Path, *, timeout: float = 600.0, reference: str | Path | None = None,
                      points: dict | None = None, hidden: dict | None = None, progress=None) -> list[Row]:
    """Grade every notebook under ``folder`` (see the module docstring); return the rows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SUBMISSIONS {str(folder)!r} is not a directory")
    references: dict = {}
    if reference is not None:
        for path in sorted(Path(reference).glob("*.ipynb")):
            nb = read_notebook(path)
            if expected_exercises(nb) or conceptual_exercises(nb):
                references[path.name] = nb
    rows: list[Row] = []
    handed_in: dict[str, set[str]] = collections.defaultdict(set)
    students, found = _submissions(folder)
    for student, path in found:
        if progress:
            progress(f"grading {student}/{path.name} ...")
        chapter = path.name if path.name in references else None
        try:
            if references and chapter is None and not path.is_symlink():
                chapter = match_chapter(path.name, read_notebook(path), references)
        except Exception:  # unreadable: grade_notebook reports it as this notebook's row
            pass
        if chapter is not None and chapter in handed_in[student]:
            rows.append(Row(student, chapter, "*", "", NOTEBOOK_ERROR, f"{path.name} is a second notebook "
                            f"for {chapter}; only the first is graded", file=path.name))
            continue
        if chapter is not None:
            handed_in[student].add(chapter)
        rows += grade_notebook(path, student, timeout=timeout, reference=references.get(chapter),
                               chapter=chapter, points=points, hidden=hidden, folder=folder)
    # A chapter that somebody handed in is expected of everyone.
    wanted = [c for c in references if any(c in chapters for chapters in handed_in.values())]
    for student in students:
        for chapter in wanted:
            if chapter in handed_in[student]:
                continue
            ref = references[chapter]
            for label, check in expected_exercises(ref):
                rows.append(Row(student, chapter, label, check, MISSING, "no notebook handed in for this chapter",
                                0.0, _points_for(points or {}, label, check, 1.0)))
            for label in conceptual_exercises(ref):
                rows.append(Row(student, chapter, label, "", MISSING, "no notebook handed in for this chapter",
                                None, _points_for(points or {}, label, "", None)))
    return rows


# ------------------------------------------------------------------------------ outputs

def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _status_text(r: Row) -> str:
    return f"{r.status} (hidden cases)" if r.hidden else r.status


def write_report(rows: list[Row], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.student, r.notebook, r.exercise, r.check, _status_text(r), _fmt(r.points),
                         _fmt(r.max_points), r.detail, r.file])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())


def totals(rows: list[Row]) -> dict[str, tuple[float, float]]:
    """(score, out of) per student, over the rows the grader scores."""
    out: dict[str, list[float]] = {}
    for r in rows:
        entry = out.setdefault(r.student, [0.0, 0.0])
        if r.points is not None and r.max_points is not None:
            entry[0] += r.points
            entry[1] += r.max_points
    return {s: (a, b) for s, (a, b) in out.items()}


def _failure_key(text: str) -> str:
    """What a failure has in common with others: the slip the check named, else its first line."""
    lines = [line.strip() for line in text.strip().splitlines()]
    cause = next((line for line in lines if line.startswith("likely cause:")), None)
    return cause or (lines[0] if lines else "")


def summary_markdown(rows: list[Row]) -> str:
    lines = ["# Grading summary", "", "## Students", "", "| student | score | out of | " +
             " | ".join(STATUSES) + " |", "|---|---|---|" + "---|" * len(STATUSES)]
    for student, (score, out_of) in sorted(totals(rows).items()):
        counts = [str(sum(r.student == student and r.status == s for r in rows)) for s in STATUSES]
        lines.append(f"| {student} | {score:g} | {out_of:g} | " + " | ".join(counts) + " |")
    lines += ["", "## Exercises", "", "| notebook | exercise | check | passed | of | most common failure |",
              "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.exercise != "*":
            groups.setdefault((r.notebook, r.exercise, r.check + (" (hidden)" if r.hidden else "")), []).append(r)
    for (notebook, exercise, check), group in groups.items():
        if not check:  # a conceptual exercise
            answered = sum(r.status == ANSWERED for r in group)
            lines.append(f"| {notebook} | {exercise} | (answered in words) | {answered} answered | {len(group)} | |")
            continue
        passed = sum(r.status == PASSED for r in group)
        failures = collections.Counter(_failure_key(r.detail) or r.status for r in group if r.status != PASSED)
        common = ""
        if failures:
            text, n = failures.most_common(1)[0]
            common = f"{text.replace('|', '/')} ({n})"
        lines.append(f"| {notebook} | {exercise} | {check} | {passed} | {len(group)} | {common} |")
    return "\n".join(lines) + "\n"


def feedback_markdown(student: str, rows: list[Row]) -> str:
    score, out_of = totals(rows).get(student, (0.0, 0.0))
    lines = [f"# Feedback for {student}", "", f"Score: {score:g} of {out_of:g}", ""]
    notebook = None
    for r in rows:
        if r.student != student:
            continue
        if r.notebook != notebook:
            notebook = r.notebook
            lines += [f"## {notebook}", ""]
        what = r.check or "answer in words"
        lines.append(f"### {r.exercise} ({what}{', hidden cases' if r.hidden else ''}): {r.status}")
        if r.points is not None:
            lines.append(f"\nPoints: {_fmt(r.points)} of {_fmt(r.max_points)}")
        if r.detail:
            lines += ["", "```text" if r.check else "", r.detail, "```" if r.check else ""]
        lines.append("")
    return "\n".join(lines)


def _safe_name(student: str) -> str:
    return re.sub(r"[^\w.-]", "_", student) or "_"


def output_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {"report": out, "grades": Path(f"{stem}-grades.csv"), "summary": Path(f"{stem}-summary.md"),
            "feedback": Path(f"{stem}-feedback")}


def write_outputs(rows: list[Row], out: Path) -> dict[str, Path]:
    """The CSV, the grade-import CSV, the summary and one feedback file per student."""
    paths = output_paths(out)
    write_report(rows, paths["report"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "score", "out_of"])
    for student, (score, out_of) in sorted(totals(rows).items()):
        writer.writerow([student, f"{score:g}", f"{out_of:g}"])
    atomic_write_text(paths["grades"], buffer.getvalue())
    atomic_write_text(paths["summary"], summary_markdown(rows))
    paths["feedback"].mkdir(parents=True, exist_ok=True)
    for student in sorted({r.student for r in rows}):
        atomic_write_text(paths["feedback"] / f"{_safe_name(student)}.md", feedback_markdown(student, rows))
    return paths


def gradescope_results(rows: list[Row]) -> dict:
    """Gradescope's ``results.json`` for the rows of one submission."""
    tests = []
    for r in rows:
        if r.max_points is None and r.points is None:
            continue
        tests.append({"name": f"{r.notebook} {r.exercise}" + (f" ({r.check})" if r.check else "")
                      + (" [hidden]" if r.hidden else ""),
                      "score": r.points or 0.0, "max_score": r.max_points or 0.0,
                      "status": "passed" if r.status == PASSED else "failed",
                      "output": r.detail, **({"visibility": "after_published"} if r.hidden else {})})
    score, _ = totals(rows).get(rows[0].student, (0.0, 0.0)) if rows else (0.0, 0.0)
    return {"score": score, "tests": tests}


def summary_table(rows: list[Row]) -> str:
    students = sorted({r.student for r in rows})
    scores = totals(rows)
    head = ["student", *STATUSES, "rows", "score"]
    lines = [[s, *(str(sum(r.student == s and r.status == st for r in rows)) for st in STATUSES),
              str(sum(r.student == s for r in rows)), f"{scores[s][0]:g}/{scores[s][1]:g}"] for s in students]
    lines.append(["all", *(str(sum(r.status == st for r in rows)) for st in STATUSES), str(len(rows)), ""])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)])


# ------------------------------------------------------------------------------ Gradescope

_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: grade the notebooks in submission/ against the
# chapters shipped in this zip, and write results/results.json.
cd /autograder/source
python3 -m geoattn.course.grade /autograder/submission --gradescope /autograder/results/results.json \\
    --reference /autograder/source/reference {extra}
"""
_SETUP = """#!/usr/bin/env bash
# Gradescope's image setup: Python's packages, then this library at the release in the zip.
set -e
apt-get update && apt-get install -y python3 python3-pip
python3 -m pip install {requirement} nbformat ipython
"""


def _release_requirement() -> str:
    """This version's tagged source archive: pip installs it without git (Gradescope's image has none)."""
    try:
        from importlib.metadata import version

        tag = f"v{version('geoattn')}"
    except Exception:  # not installed: the teacher passes --requirement
        return "geoattn"
    return f"https://github.com/geoattn-book/geoattn/archive/refs/tags/{tag}.tar.gz"


def build_gradescope_zip(out: str | Path, reference: str | Path, *, requirement: str, points: str | Path | None = None,
                         hidden: str | Path | None = None) -> Path:
    """Write Gradescope's autograder zip: ``setup.sh``, ``run_autograder`` and the reference chapters."""
    import zipfile

    out = Path(out)
    extra = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(Path(reference).glob("*.ipynb")):
            z.write(path, f"reference/{path.name}")
        if points is not None:
            z.write(points, "points.toml")
            extra.append("--points /autograder/source/points.toml")
        if hidden is not None:
            z.write(hidden, "hidden_cases.py")
            extra.append("--hidden /autograder/source/hidden_cases.py")
        for name, text in (("run_autograder", _RUN_AUTOGRADER.format(extra=" ".join(extra))),
                           ("setup.sh", _SETUP.format(requirement=requirement))):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16
            z.writestr(info, text)
    return out


# ------------------------------------------------------------------------------ the command

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoattn.course.grade",
                                     description="Run submitted student notebooks and grade every exercise.")
    parser.add_argument("submissions", nargs="?", help="folder of submissions: one folder per student, or "
                                                       "one notebook per student")
    parser.add_argument("--out", help="the CSV report to write, e.g. report.csv (the grades, summary and "
                                      "feedback are written beside it)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per notebook run (default 600)")
    parser.add_argument("--reference", help="folder of the chapters (or student copies) that say which "
                                            "exercises each notebook must have (default: the book's chapters, "
                                            "when they are at hand)")
    parser.add_argument("--points", help="TOML file with a [points] table (default: 1 point per check)")
    parser.add_argument("--hidden", help="Python file defining HIDDEN_CASES, run only by the grader")
    parser.add_argument("--gradescope", metavar="RESULTS_JSON",
                        help="grade SUBMISSIONS as one student's submission and write Gradescope's results.json")
    parser.add_argument("--gradescope-zip", metavar="ZIP", help="write Gradescope's autograder zip and stop")
    parser.add_argument("--requirement", default=_release_requirement(),
                        help="what setup.sh installs in the autograder zip (default: this release's "
                             "source archive on GitHub)")
    args = parser.parse_args(argv)
    try:
        reference = args.reference or default_reference()
        if args.gradescope_zip:
            if reference is None:
                parser.error("--gradescope-zip needs --reference")
            build_gradescope_zip(args.gradescope_zip, reference, requirement=args.requirement, points=args.points,
                                 hidden=args.hidden)
            print(f"autograder zip: {args.gradescope_zip}")
            return 0
        if not args.submissions or not (args.out or args.gradescope):
            parser.error("SUBMISSIONS and --out (or --gradescope) are required")
        print(f"reference: {reference if reference else 'none (each notebook says what it expects)'}",
              file=sys.stderr)
        points, hidden = load_points(args.points), load_hidden(args.hidden)
        if args.gradescope:
            return _gradescope(Path(args.submissions), Path(args.gradescope), args.timeout, reference, points, hidden)
        rows = grade_submissions(args.submissions, timeout=args.timeout, reference=reference, points=points,
                                 hidden=hidden, progress=lambda m: print(m, file=sys.stderr))
        paths = write_outputs(rows, Path(args.out))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary_table(rows))
    print(f"report: {paths['report']} ({len(rows)} rows); grades: {paths['grades']}; summary: {paths['summary']}; "
          f"feedback: {paths['feedback']}/")
    return 0


def _gradescope(submission: Path, results: Path, timeout, reference, points, hidden) -> int:
    """One submission (a folder of notebooks, Gradescope's layout) to ``results.json``."""
    staging = Path(tempfile.mkdtemp(prefix="geoattn-gradescope-"))
    try:
        folder = staging / "student"
        folder.mkdir()
        for path in sorted(submission.rglob("*.ipynb")):
            if not path.is_symlink() and path.is_file():
                shutil.copyfile(path, folder / path.name)
        rows = grade_submissions(staging, timeout=timeout, reference=reference, points=points, hidden=hidden)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results, json.dumps(gradescope_results(rows), indent=2, ensure_ascii=False) + "\n")
    print(f"results: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
