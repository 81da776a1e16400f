"""Auto-checks for the book's exercises: ``check_<name>(student_fn)`` tests a reader's
function against the library on random and edge-case inputs and returns a
:class:`CheckResult` that reads as a clear pass, or as a failure with a hint.

One submodule per chapter topic (found automatically; names starting with ``_`` are
private); each declares ``__all__`` and is re-exported here.
"""
from __future__ import annotations

import importlib
import pkgutil

from ._harness import Case, CheckResult, run_check

__all__ = ["Case", "CheckResult", "run_check"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _topic = _info.name
    _mod = importlib.import_module(f"{__name__}.{_topic}")
    globals().update({n: getattr(_mod, n) for n in _mod.__all__})
    __all__ += list(_mod.__all__)
