"""The library's one error policy, as one-line helpers.

- A wrong *type* raises ``TypeError``; a wrong shape, dtype, device or value raises
  ``ValueError``.
- Every message starts with the argument's name, as the caller wrote it.

The functions the book shows call these helpers in one line each, so the page shows the
math and not the argument checks.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FLOAT_DTYPES",
    "require_tensor",
    "require_int",
    "require_bool",
    "require_number",
    "require_float_dtype",
    "require_dtype_arg",
    "require_bool_mask",
    "require_integer_ids",
    "require_shape",
    "require_trailing",
    "require_same_device",
    "require_state_value",
    "require_param_dtype",
    "require_head_weight",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def require_tensor(name: str, x, *, optional: bool = False) -> Tensor | None:
    """``x`` itself if it is a tensor (or None when ``optional``); else TypeError."""
    if x is None and optional:
        return None
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_int(name: str, value, *, minimum: int | None = None) -> int:
    """A Python/NumPy integer (not bool, not float) that is ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def require_bool(name: str, value) -> bool:
    """A Python bool (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def require_number(name: str, value, *, minimum: float | None = None, finite: bool = True) -> float:
    """A real number (not bool), finite unless ``finite=False``, ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def require_float_dtype(name: str, t: Tensor, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES) -> Tensor:
    """``t`` if its dtype is one of the floating ``dtypes``; else ValueError."""
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must be floating point ({allowed}); got {t.dtype}")
    return t


def require_dtype_arg(name: str, dtype, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES) -> torch.dtype:
    """A ``dtype=`` argument: a torch.dtype (TypeError otherwise) among ``dtypes``."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    dtypes = tuple(dtypes)
    if dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must be one of {allowed}; got {dtype}")
    return dtype


def require_shape(name: str, t: Tensor, shape: tuple, what: str = "") -> Tensor:
    """``t`` if ``t.shape == shape``; ``what`` names the dimensions, e.g. ``"(B, L)"``."""
    if tuple(t.shape) != tuple(shape):
        label = f"{what} = {tuple(shape)}" if what else f"{tuple(shape)}"
        raise ValueError(f"{name} must have shape {label}; got {tuple(t.shape)}")
    return t


def require_trailing(name: str, t: Tensor, trailing: tuple, what: str) -> Tensor:
    """``t`` if its last dimensions are ``trailing`` (e.g. (3, 3) for rotations)."""
    n = len(trailing)
    if t.dim() < n or tuple(t.shape[t.dim() - n:]) != tuple(trailing):
        raise ValueError(f"{name} must have shape {what}; got {tuple(t.shape)}")
    return t


def require_bool_mask(name: str, mask: Tensor | None, shape: tuple | None = None, what: str = "",
                      meaning: str = "True = may attend") -> Tensor | None:
    """None, or a bool tensor (of ``shape``, when given)."""
    if mask is None:
        return None
    require_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor ({meaning}); got {mask.dtype}")
    if shape is not None:
        require_shape(name, mask, shape, what)
    return mask


def require_integer_ids(name: str, ids: Tensor | None, shape: tuple, what: str = "(B, L)") -> Tensor | None:
    """None, or an integer (not bool, not float) tensor of ``shape``: chain or sequence ids."""
    if ids is None:
        return None
    require_tensor(name, ids)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name} must be an integer tensor; got {ids.dtype}")
    return require_shape(name, ids, shape, what)


def require_same_device(tensors: Mapping[str, Tensor | None], reference: str) -> None:
    """Every tensor in ``tensors`` sits on the device of ``tensors[reference]``."""
    device = tensors[reference].device
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but {reference} is on {device}: "
                             "all inputs must share one device")


def require_state_value(key: str, value) -> Tensor:
    """A checkpoint's value for ``key`` as a real floating-point tensor with data.

    A weight loader calls it once per key before copying anything, so that a bad value
    is refused with its key named instead of being cast: ``Tensor.copy_`` would drop the
    imaginary part of a complex value and round an integer one without a word, and a
    meta tensor (no data) or a ``None`` would fail deep inside PyTorch. Tensors and NumPy
    arrays (JAX and TensorFlow checkpoints load as those) are accepted; anything else is
    a TypeError, a tensor of the wrong kind a ValueError, both starting with ``key``.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":  # complex, integer, bool, object, strings
            raise ValueError(f"{key}: a weight must be real floating point; got a NumPy array of "
                             f"dtype {value.dtype}")
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{key}: a weight must be a torch.Tensor (or a NumPy array); got "
                        f"{type(value).__name__}")
    if value.is_complex() or not value.is_floating_point():
        raise ValueError(f"{key}: a weight must be real floating point; got {value.dtype}")
    if value.is_meta:
        raise ValueError(f"{key}: a meta tensor holds no values (a model built on the meta "
                         "device, or a checkpoint loaded without its data)")
    return value


def require_param_dtype(module: torch.nn.Module, **tensors: Tensor | None) -> None:
    """Every tensor given (None and non-tensors skipped: their own checks name them) has
    the dtype of ``module``'s parameters.

    A mismatch would fail deep inside ``nn.Linear`` ("mat1 and mat2 must have the same
    dtype"), naming neither the argument nor the two dtypes.
    """
    dtype = next(module.parameters()).dtype
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.dtype != dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but the layer's parameters are {dtype}: "
                             f"convert one to the other ({name}.to({dtype}) or layer.to({t.dtype}))")


def require_head_weight(name: str, w: Tensor) -> Tensor:
    """``w`` if every entry is finite and >= 0 (a weight after softplus); else ValueError."""
    if w.device.type == "meta":  # no values to check
        return w
    bad = ~torch.isfinite(w) | (w < 0)
    if bad.any():
        raise ValueError(f"{name} must be finite and non-negative (a weight after softplus); "
                         f"got {w.detach()[bad][0].item()!r} at head {int(bad.nonzero()[0, 0])}")
    return w
