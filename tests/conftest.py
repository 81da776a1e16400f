"""Test-session setup shared by every test module."""
import pytest
import torch

from geoattn.devtools.reexecute import apply_environment

# nbval's kernels inherit this process's environment: the same one that
# `python -m geoattn.devtools.reexecute` runs chapters in (Triton's interpreter, one thread
# per math library). TRITON_INTERPRET must be set before triton is first imported, which
# is why it is set here and not in a test module.
if not torch.cuda.is_available():
    apply_environment()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run with `pytest -m gpu` on a machine with one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
