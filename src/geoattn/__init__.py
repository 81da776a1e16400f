"""geoattn: attention from the first dot product to ESM3's geometric attention.

Every chapter of the book imports this package. Names are loaded lazily from the
submodules listed in ``_MODULES`` (each declares ``__all__``), so ``import geoattn``
stays cheap and never imports Triton.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoattn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# One module per concept, in the order the book introduces them.
_MODULES = (
    "seed_example",
    "attention",
    "positional",
    "plotting",
    "frames",
    "structure",
    "geometric",
    "esm3_block",
    "ipa",
    "online_softmax",
    "chunked",
    "memory",
    "notebook",
    "dihedrals",
    "inverse_folding",
)


def _exports() -> dict[str, str]:
    table: dict[str, str] = {}
    for mod in _MODULES:
        module = importlib.import_module(f"{__name__}.{mod}")
        for name in getattr(module, "__all__", ()):
            table.setdefault(name, mod)
    return table


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    table = _exports()
    if name in table:
        value = getattr(importlib.import_module(f"{__name__}.{table[name]}"), name)
    else:  # a submodule or subpackage, e.g. ``geoattn.course.checks``
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'geoattn' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_exports()))
