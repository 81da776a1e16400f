"""Measuring memory deterministically: the bytes of the tensors an operation keeps alive.

The operating system's view of memory (resident set size) depends on the allocator,
the thread pool and whatever ran before; it is right for a benchmark but changes from
run to run. For the book we want a number that is the same on every machine, so we
count what the algorithm itself allocates: every tensor produced by a PyTorch operator,
from its creation until it is freed (a tensor saved for the backward pass stays counted
until autograd lets it go). Views share their base's storage and are counted once. Scratch
space inside a single kernel is not visible at this level, and storages that existed before
the measurement started (the inputs, and any view of them such as ``x.t()``) are never
counted: only storages born inside the measurement are.
"""
from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveTensorBytes", "MemoryMeasurement", "peak_tensor_memory"]


class LiveTensorBytes(TorchDispatchMode):
    """A context manager that tracks the bytes of live tensor storages created inside it.

    ``current`` is what is alive now; ``peak`` the largest value ``current`` reached.
    Every operator output is seen here (this mode sits below autograd, so the backward
    pass is seen too); a storage is released when the last tensor using it is freed.

    Subclasses may override :meth:`on_new` and :meth:`on_free` to watch single storages
    (chapter 5 lists the (L, L)-sized ones this way); ``op`` names the operator running.
    """

    op: str = ""  # the operator whose outputs are being counted

    def on_new(self, key: int, tensor: torch.Tensor, nbytes: int) -> None:
        """Called once per new storage (``key``), with its first tensor and its bytes,
        after ``current`` and ``peak`` include it."""

    def on_free(self, key: int, nbytes: int) -> None:
        """Called when the last tensor on storage ``key`` is freed, before ``current``
        drops by its ``nbytes``."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._users: dict[int, int] = {}  # storage address -> number of live tensors on it
        self._sizes: dict[int, int] = {}  # storage address -> bytes

    def _release(self, key: int) -> None:
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key]
            nbytes = self._sizes.pop(key)
            self.on_free(key, nbytes)
            self.current -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, nbytes = _storage_key(t), storage.nbytes()
        if nbytes == 0:
            return
        if key not in self._users:
            self._users[key] = 0
            self._sizes[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            self.on_new(key, t, nbytes)
        self._users[key] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.op = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        # An output that shares a storage with one of the operator's arguments is a view
        # or an in-place result: no new memory. It adds a user to a storage born in the
        # mode, and nothing at all to a storage that existed before (an input, x.t()).
        arg_storages = {_storage_key(a) for a in tree_leaves((args, kwargs or {}))
                        if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key not in arg_storages or key in self._users:
                self._track(t)
        return out


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class MemoryMeasurement(NamedTuple):
    result: Any  # what the function returned
    peak_bytes: int  # the most bytes of tensors alive at once while it ran
    retained_bytes: int  # bytes still alive when it returned (its outputs, gradients, ...)


def peak_tensor_memory(fn: Callable, *args, **kwargs) -> MemoryMeasurement:
    """Run ``fn(*args, **kwargs)`` and return its result with the peak bytes of live tensors.

    Deterministic: the same code on the same shapes gives the same number on every machine.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    # Tensors caught in reference cycles are freed whenever the cycle collector happens to
    # run; pausing it makes the count independent of that timing.
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with LiveTensorBytes() as mode:
            result = fn(*args, **kwargs)
            retained = mode.current
    finally:
        if gc_was_enabled:
            gc.enable()
    return MemoryMeasurement(result, mode.peak, retained)
