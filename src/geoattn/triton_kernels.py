"""Deprecated alias of :mod:`geoattn.kernels.launch`, kept for one release.

The launchers and the autograd Function moved into the kernels package. This name is
the same module object, so attributes set on it (tests' monkeypatching) reach the code
that runs.
"""
import sys

from .kernels import launch

sys.modules[__name__] = launch
