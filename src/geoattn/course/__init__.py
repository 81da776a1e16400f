"""Course tooling, apart from the library proper: the exercises' auto-checks
(``geoattn.course.checks``), the student copies (``python -m geoattn.course.student``) and
grading (``python -m geoattn.course.grade``).

Submodules load on first use, so ``import geoattn.course.student`` (and ``.grade``) never
imports torch.
"""
from __future__ import annotations

import importlib

__all__ = ["checks", "grade", "student"]


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
