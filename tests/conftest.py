"""Test-session setup shared by every test module."""
import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter. The variable must be set before
# triton is first imported, which is why it lives here and not in a test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run with `pytest -m gpu` on a machine with one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
