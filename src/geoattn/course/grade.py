"""Grade submitted student notebooks: ``python -m geoattn.course.grade SUBMISSIONS/ --out report.csv``.

``SUBMISSIONS/`` holds one folder per student with their notebooks (``alice/01_self_attention.ipynb``),
or notebooks directly, one per student (``alice.ipynb``). Each notebook runs:

- in its own Jupyter kernel, never in this process, in a fresh temporary directory that is
  also the kernel's home and temporary directory, and that is deleted afterwards;
- under a time limit for the whole notebook (``--timeout``, default 600 s), after which
  its worker and its kernel are killed;
- with ``GEOATTN_CHECK_LOG`` set, so that every exercise check the notebook runs records
  its verdict (see :mod:`geoattn.course.checks._harness`).

The report has one row per student, notebook and exercise, with the status ``passed``,
``failed`` (with the check's reason and hint), ``not attempted``, ``timed out`` or
``notebook error`` (not a notebook, a kernel that died, a check that never ran). The
exercises expected of a notebook are the checks its cells call, or, with
``--reference DIR``, those of the notebook of the same name there (so that a deleted
exercise cell still shows). A summary table per student is printed at the end.

Containment has limits: the kernel runs as the grader's user, so a notebook that writes to
absolute paths can reach whatever that user can. Relative paths, ``~`` and the temporary
directory all lead into the notebook's own temporary folder. Grade untrusted work as an
unprivileged user or in a container.
"""
from __future__ import annotations

import argparse
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
from dataclasses import dataclass
from pathlib import Path

from .student import atomic_write_text, read_notebook

__all__ = ["Row", "grade_notebook", "grade_submissions", "expected_exercises", "main"]

PASSED, FAILED, NOT_ATTEMPTED, TIMED_OUT, NOTEBOOK_ERROR = (
    "passed", "failed", "not attempted", "timed out", "notebook error")
STATUSES = (PASSED, FAILED, NOT_ATTEMPTED, TIMED_OUT, NOTEBOOK_ERROR)
LOG_ENV = "GEOATTN_CHECK_LOG"  # the same name as in checks/_harness.py (which imports torch)

_CHECK_CALL = re.compile(r"\bchecks\.(check_[A-Za-z0-9_]+)\s*\(")
_LABEL = re.compile(r"<a id=\"(ex-[\w-]+)\"></a>|^:label:\s*(ex-[\w-]+)", re.M)
# Environment variables a kernel may inherit; everything else (tokens, the teacher's paths)
# stays out of a student's notebook.
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "JUPYTER_PATH",
             "TRITON_INTERPRET")


@dataclass(frozen=True)
class Row:
    student: str
    notebook: str
    exercise: str
    check: str
    status: str
    detail: str = ""


def expected_exercises(nb) -> list[tuple[str, str]]:
    """(exercise label, check function name) for every check that ``nb``'s code cells call, in order."""
    found: list[tuple[str, str]] = []
    label = ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            hit = _LABEL.search(cell.source)
            if hit:
                label = hit.group(1) or hit.group(2)
        elif cell.cell_type == "code":
            for check in _CHECK_CALL.findall(cell.source):
                if check not in (c for _, c in found):
                    found.append((label or check, check))
    return found


# ------------------------------------------------------------------ one notebook, isolated

def _kill_group(pid: int) -> None:
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _read_log(path: Path) -> dict[str, dict]:
    """The last verdict of each check in the log; lines that are not ours are ignored."""
    verdicts: dict[str, dict] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return verdicts
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("check"), str) and record.get("status") in (
                PASSED, FAILED, NOT_ATTEMPTED, TIMED_OUT):
            verdicts[record["check"]] = record
    return verdicts


def _status_of(record: dict) -> tuple[str, str]:
    message = str(record.get("message", ""))
    return record["status"], ("" if record["status"] == PASSED else message)


def grade_notebook(path: Path, student: str, *, timeout: float = 600.0, cell_timeout: float | None = None,
                   reference=None) -> list[Row]:
    """Run the notebook at ``path`` in its own kernel and temporary directory; one row per exercise."""
    name = path.name
    try:
        nb = read_notebook(path)
    except ValueError as err:
        return [Row(student, name, "*", "", NOTEBOOK_ERROR, str(err).replace(str(path), name))]
    expected = expected_exercises(reference if reference is not None else nb)
    if not expected:
        return [Row(student, name, "*", "", NOTEBOOK_ERROR, "no exercise check found in the notebook")]
    root = Path(tempfile.mkdtemp(prefix="geoattn-grade-"))
    try:
        work, home, tmp = root / "work", root / "home", root / "tmp"
        for d in (work, home, tmp):
            d.mkdir()
        shutil.copyfile(path, work / name)
        log, status_file, pid_file = root / "checks.jsonl", root / "status.json", root / "kernel.pid"
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update({"HOME": str(home), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp),
                    LOG_ENV: str(log), "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0",
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONDONTWRITEBYTECODE": "1"})
        cmd = [sys.executable, "-m", "geoattn.course.grade", "--run-one", str(work / name),
               "--status-file", str(status_file), "--pid-file", str(pid_file),
               "--cell-timeout", str(cell_timeout or timeout)]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        timed_out = False
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            _, stderr = proc.communicate()
        finally:
            try:  # the kernel runs in a session of its own: kill it (and its children) too
                _kill_group(int(pid_file.read_text()))
            except (OSError, ValueError):
                pass
        verdicts = _read_log(log)
        try:
            run = json.loads(status_file.read_text())
        except (OSError, json.JSONDecodeError):
            run = {}
        if not timed_out and not run:
            tail = (stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            run = {"error": f"the notebook could not be run ({tail[0][:300]})"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for label, check in expected:
        if check in verdicts:
            status, detail = _status_of(verdicts[check])
        elif timed_out:
            status, detail = TIMED_OUT, f"the notebook ran past its time limit ({timeout:g} s) before this check"
        elif run.get("error"):
            status, detail = NOTEBOOK_ERROR, run["error"]
        else:
            first = run.get("first_error")
            status, detail = NOTEBOOK_ERROR, "the check never ran" + (f" (first error: {first})" if first else "")
        rows.append(Row(student, name, label, check, status, detail))
    return rows


def _run_one(path: Path, status_file: Path, pid_file: Path, cell_timeout: float) -> int:
    """The worker: execute one notebook in a fresh kernel (this process only drives it)."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3")
    result: dict = {}
    # A SIGTERM from the grader ends this worker through the finally below, which kills the kernel.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    try:
        km.start_kernel(cwd=str(path.parent))
        pid_file.write_text(str(km.provisioner.pid))
        client = NotebookClient(nb, km=km, timeout=cell_timeout, allow_errors=True, record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        except DeadKernelError as err:
            result["error"] = f"the kernel died ({str(err)[:200]})"
        except Exception as err:  # nbclient's cell timeout, a broken cell
            result["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        for cell in nb.cells:
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                result["first_error"] = f"{errors[0].get('ename')}: {str(errors[0].get('evalue'))[:200]}"
                break
    finally:
        try:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        except Exception:
            pass
        status_file.write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------ all submissions

def _submissions(folder: Path) -> list[tuple[str, Path]]:
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found += [(entry.name, p) for p in sorted(entry.glob("*.ipynb")) if not p.name.startswith(".")]
        elif entry.suffix == ".ipynb":
            found.append((entry.stem, entry))
    return found


def grade_submissions(folder: str | Path, *, timeout: float = 600.0, reference: str | Path | None = None,
                      progress=None) -> list[Row]:
    """Grade every notebook under ``folder`` (see the module docstring); return the rows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SUBMISSIONS {str(folder)!r} is not a directory")
    references = {}
    if reference is not None:
        for path in sorted(Path(reference).glob("*.ipynb")):
            references[path.name] = read_notebook(path)
    rows: list[Row] = []
    for student, path in _submissions(folder):
        if progress:
            progress(f"grading {student}/{path.name} ...")
        rows += grade_notebook(path, student, timeout=timeout, reference=references.get(path.name))
    return rows


def write_report(rows: list[Row], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["student", "notebook", "exercise", "check", "status", "detail"])
    for r in rows:
        writer.writerow([r.student, r.notebook, r.exercise, r.check, r.status, r.detail])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())


def summary_table(rows: list[Row]) -> str:
    students = sorted({r.student for r in rows})
    head = ["student", *STATUSES, "total"]
    lines = [[s, *(str(sum(r.student == s and r.status == st for r in rows)) for st in STATUSES),
              str(sum(r.student == s for r in rows))] for s in students]
    lines.append(["all", *(str(sum(r.status == st for r in rows)) for st in STATUSES), str(len(rows))])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoattn.course.grade",
                                     description="Run submitted student notebooks and report every exercise check.")
    parser.add_argument("submissions", nargs="?", help="folder of submissions: one folder per student, or "
                                                       "one notebook per student")
    parser.add_argument("--out", help="the CSV report to write, e.g. report.csv")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per notebook (default 600)")
    parser.add_argument("--reference", help="folder of the student copies (or chapters) that say which "
                                            "exercises each notebook must have")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--status-file", help=argparse.SUPPRESS)
    parser.add_argument("--pid-file", help=argparse.SUPPRESS)
    parser.add_argument("--cell-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        return _run_one(Path(args.run_one), Path(args.status_file), Path(args.pid_file), args.cell_timeout)
    if not args.submissions or not args.out:
        parser.error("SUBMISSIONS and --out are required")
    try:
        rows = grade_submissions(args.submissions, timeout=args.timeout, reference=args.reference,
                                 progress=lambda m: print(m, file=sys.stderr))
        write_report(rows, Path(args.out))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary_table(rows))
    print(f"report: {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
