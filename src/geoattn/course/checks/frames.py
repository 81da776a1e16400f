"""Exercise checks for chapter 3: inverting a rigid frame, and building backbone frames.

Each check compares the reader's function with :mod:`geoattn.frames` on fixed-seed random
frames and backbones and on hand-made cases. When a case fails, the check tries a few
known wrong answers on it; if the reader's function behaves like one of them, the hint
names the likely slip (without giving the formula away).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ...frames import frames_from_backbone, invert_frame, random_rigid
from ...structure import ubiquitin
from ._harness import Case, CheckResult, run_check

__all__ = ["check_invert_frame", "check_frames_from_backbone"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------- invert_frame

def _rot_z(theta: float, dtype=torch.float32) -> Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64).to(dtype)


def _invert_cases() -> list[Case]:
    inputs = [
        ((torch.eye(3), torch.tensor([1.0, -2.0, 0.5])), "a pure translation (R = I)",
         "with no rotation, the inverse frame just has to undo the shift."),
        ((_rot_z(0.7), torch.zeros(3)), "a pure rotation about z (t = 0)",
         "for a rotation matrix, the inverse is cheap: R^{-1} R = I, and R has orthonormal columns."),
        ((_rot_z(1.2), torch.tensor([3.0, 1.0, -2.0])), "a rotation about z with a translation",
         "check on paper: the inverse applied to R p + t must give back p, for every p."),
        (random_rigid(5, generator=_gen(31), translation_scale=10.0), "a batch of 5 random frames",
         "leading (batch) dimensions must be kept: transpose only the last two dimensions."),
        (random_rigid(2, 3, generator=_gen(32), dtype=torch.float64, translation_scale=10.0),
         "a (2, 3) batch of float64 frames", "keep the batch shape (2, 3) and the dtype."),
    ]
    return [Case(label, args, invert_frame(*args), hint, atol=1e-5) for args, label, hint in inputs]


def check_invert_frame(fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> CheckResult:
    """Check ``fn(rotations, translations) -> (inv_rotations, inv_translations)``:
    the frame that maps global coordinates back to the local ones."""
    cases = _invert_cases()
    rt = lambda r: r.transpose(-1, -2)  # noqa: E731
    rot = lambda r, t: (r @ t.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    wrong = [
        (lambda r, t: (rt(r), -t),
         "the new translation is not just -t: the inverse undoes the shift *and then* the rotation, "
         "so -t must be rotated too."),
        (lambda r, t: (rt(r), rot(rt(r), t)), "the sign of the translation is flipped."),
        (lambda r, t: (rt(r), -rot(r, t)),
         "the translation is rotated by R; it must be rotated by the inverse rotation."),
        (lambda r, t: (r, -rot(rt(r), t)), "the rotation was not inverted."),
        (lambda r, t: (r.mT if r.dim() == 2 else r.transpose(0, 1), -rot(rt(r), t)),
         "for batched input, transpose only the last two dimensions."),
    ]
    return run_check("invert_frame", fn, cases, wrong)


# ----------------------------------------------------------------- frames_from_backbone

def _random_backbone(seed: int, *shape: int, dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Random residues with real bond lengths and a bond angle near 111°, in random poses."""
    g = _gen(seed)
    r, t = random_rigid(*shape, generator=g, dtype=torch.float64, translation_scale=15.0)
    local = torch.tensor([[-0.53, 1.36, 0.0], [0.0, 0.0, 0.0], [-1.52, 0.0, 0.0]], dtype=torch.float64)
    local = local + 0.05 * torch.randn(*shape, 3, 3, generator=g, dtype=torch.float64)
    atoms = (r.unsqueeze(-3) @ local.unsqueeze(-1)).squeeze(-1) + t.unsqueeze(-2)
    return tuple(a.to(dtype) for a in atoms.unbind(-2))


def _backbone_cases() -> list[Case]:
    ca = torch.tensor([1.0, 1.0, 1.0])
    hand = (ca + torch.tensor([-0.5, 1.4, 0.0]), ca, ca + torch.tensor([1.5, 0.0, 0.0]))
    ubq = ubiquitin()
    inputs = [
        (hand, "one hand-made residue (C along +x from CA, N along +y)",
         "in ESM3's convention the frame's origin is CA and C lies on the negative x axis."),
        (tuple(x[:6] for x in (ubq.n, ubq.ca, ubq.c)), "the first 6 residues of ubiquitin",
         "return (rotations of shape (L, 3, 3), translations of shape (L, 3)); each R must be a rotation "
         "(orthonormal columns, det +1)."),
        (_random_backbone(41, 7), "7 random residues in random poses",
         "N must lie in the frame's xy plane, with positive y."),
        (_random_backbone(42, 2, 5, dtype=torch.float64), "a (2, 5) batch of float64 residues",
         "keep the leading dimensions and the dtype; normalise along the last dimension."),
    ]
    return [Case(label, args, frames_from_backbone(*args), hint, atol=1e-5) for args, label, hint in inputs]


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _variant(x_sign: float = 1.0, orthogonalize: bool = True, as_rows: bool = False,
             right_handed: bool = True, origin: str = "ca") -> Callable:
    """A frames_from_backbone with one deliberate slip, for diagnosing wrong answers."""
    def frames(n, ca, c):
        e_x = _unit(x_sign * (ca - c))
        v = n - ca
        e_y = _unit(v - (v * e_x).sum(-1, keepdim=True) * e_x) if orthogonalize else _unit(v)
        e_z = torch.linalg.cross(e_x, e_y, dim=-1) if right_handed else torch.linalg.cross(e_y, e_x, dim=-1)
        r = torch.stack([e_x, e_y, e_z], dim=-2 if as_rows else -1)
        return r, {"ca": ca, "n": n, "c": c}[origin]
    return frames


def check_frames_from_backbone(fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]) -> CheckResult:
    """Check ``fn(n, ca, c) -> (rotations, translations)``: ESM3's Gram–Schmidt frames."""
    cases = _backbone_cases()
    wrong = [
        (_variant(x_sign=-1.0), "the x axis points the wrong way: which atom should end up on the negative x axis?"),
        (_variant(as_rows=True), "the axes are stored as rows; R maps local to global, so its columns are the axes."),
        (_variant(orthogonalize=False), "the y axis is not orthogonal to the x axis."),
        (_variant(right_handed=False), "the frame is left-handed (det R = -1): mind the order in the cross product."),
        (_variant(origin="n"), "the origin is at the wrong atom."),
        (_variant(origin="c"), "the origin is at the wrong atom."),
    ]
    return run_check("frames_from_backbone", fn, cases, wrong)
