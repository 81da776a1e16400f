"""The portability check of `geoattn.devtools.reexecute`: a chapter that prints round-off
digits fails it, a chapter that prints a bound passes, and the cell is named."""
import os
import subprocess
import sys

import nbformat
import pytest

from geoattn.devtools import reexecute as rx

# The sum of 300 float32 numbers: its round-off error is the classic CPU-dependent print.
PROBE = """\
import torch
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
a = torch.randn(64, 4099, generator=g)
err = (a.sum(1).double() - a.double().sum(1)).abs().max().item()
"""
BAD = PROBE + 'print(f"round-off of the sum: {err:.3e}")'
GOOD = PROBE + 'print(f"round-off of the sum < 1e-2: {err < 1e-2}")'


def _probe_output(extra_env) -> str:
    env = dict(os.environ, **rx.ENVIRONMENT, **extra_env)
    run = subprocess.run([sys.executable, "-c", BAD], env=env, capture_output=True, text=True, check=True)
    return run.stdout


def test_apply_environment_adds_the_portable_switches_on_request():
    env = {rx.VARIANT_VARIABLE: "portable"}
    rx.apply_environment(env)
    assert env["OMP_NUM_THREADS"] == "1"
    for key, value in rx.PORTABLE.items():
        assert env[key] == value
    plain = {}
    rx.apply_environment(plain)
    assert not set(rx.PORTABLE) & set(plain)


def test_apply_environment_refuses_an_unknown_variant():
    with pytest.raises(ValueError, match=rx.VARIANT_VARIABLE):
        rx.apply_environment({rx.VARIANT_VARIABLE: "avx512"})


def test_the_check_names_a_cell_that_prints_round_off_and_passes_a_bound(tmp_path):
    if _probe_output({}) == _probe_output(rx.PORTABLE):
        pytest.skip("on this CPU the two code paths round the probe alike; nothing to catch")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# probe"), nbformat.v4.new_code_cell(GOOD),
                nbformat.v4.new_code_cell(BAD)]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    env = dict(os.environ)
    try:
        rx.apply_environment()
        rx.reexecute(path, timeout=120)
    finally:
        os.environ.clear()
        os.environ.update(env)
    failures = rx.portability_failures([path], timeout=120)
    assert [cell for _, cell in failures] == ["Cell 1"]
    where = rx.describe_cell(failures[0][0], failures[0][1])
    assert "cell index 2" in where and "import torch" in where


def test_ci_runs_the_portability_check_over_every_chapter():
    check = (rx.BOOK.parent / ".ci" / "check").read_text()
    assert "python -m geoattn.devtools.reexecute --check" in check

