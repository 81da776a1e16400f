r"""Backbone dihedral angles φ, ψ, ω of every residue, and features made from them (chapter 6).

For residue i of a chain with atoms N, CA, C:

- φ_i = dihedral(C_{i−1}, N_i, CA_i, C_i), undefined for the first residue;
- ψ_i = dihedral(N_i, CA_i, C_i, N_{i+1}), undefined for the last residue;
- ω_i = dihedral(CA_i, C_i, N_{i+1}, CA_{i+1}), the peptide bond to the *next* residue
  (about ±180° for trans), undefined for the last residue.

An angle that needs a neighbour across a chain break is undefined too: residues i and
i+1 are bonded only when ‖C_i − N_{i+1}‖ ≤ ``max_peptide_bond`` (a peptide bond is
1.33 Å). So is an angle that needs a residue masked out by ``mask``.

The dihedral of four points p0..p3 with b0 = p1 − p0, b1 = p2 − p1, b2 = p3 − p2 is
atan2(‖b1‖ b0·(b1×b2), (b0×b1)·(b1×b2)): no division, and well defined up to 180°.
Undefined angles are returned as 0 with ``defined`` False, and computed from harmless
stand-in points, so their gradients are 0, never NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .validation import require_bool_mask, require_float_dtype, require_number, require_tensor, require_trailing

__all__ = ["dihedral", "backbone_dihedrals", "dihedral_features", "DIHEDRAL_NAMES", "N_DIHEDRAL_FEATURES"]

DIHEDRAL_NAMES = ("phi", "psi", "omega")
#: sin and cos of φ, ψ, ω, and one "defined" flag per angle.
N_DIHEDRAL_FEATURES = 9


def dihedral(p0: Tensor, p1: Tensor, p2: Tensor, p3: Tensor) -> Tensor:
    """The dihedral angle (radians, in (−π, π]) of the points p0-p1-p2-p3, each (..., 3)."""
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1 = torch.linalg.cross(b0, b1)
    n2 = torch.linalg.cross(b1, b2)
    y = torch.linalg.vector_norm(b1, dim=-1) * (b0 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x)


def _check(n, ca, c, mask):
    for name, t in (("n", n), ("ca", ca), ("c", c)):
        require_tensor(name, t)
        require_trailing(name, t, (3,), "(..., L, 3)")
        require_float_dtype(name, t)
    if n.dim() < 2:
        raise ValueError(f"n must have shape (..., L, 3); got {tuple(n.shape)}")
    if ca.shape != n.shape or c.shape != n.shape:
        raise ValueError(f"ca and c must have n's shape {tuple(n.shape)}; got {tuple(ca.shape)}, {tuple(c.shape)}")
    require_bool_mask("mask", mask, tuple(n.shape[:-1]), "(..., L)", meaning="True = residue present")


def backbone_dihedrals(n: Tensor, ca: Tensor, c: Tensor, mask: Tensor | None = None, *,
                       max_peptide_bond: float = 2.0) -> tuple[Tensor, Tensor]:
    """φ, ψ, ω of every residue: ``(angles, defined)``, each (..., L, 3), angles in radians.

    ``n``, ``ca``, ``c``: (..., L, 3) backbone atoms of one chain (or a batch of padded
    chains) in Å; ``mask``: (..., L) bool, True for residues that exist. ``defined`` is
    False where an angle needs an atom before the first residue, after the last, across a
    chain break (‖C_i − N_{i+1}‖ > ``max_peptide_bond``) or in a masked residue; the angle
    there is 0.
    """
    _check(n, ca, c, mask)
    require_number("max_peptide_bond", max_peptide_bond, minimum=0.0)
    present = torch.ones(n.shape[:-1], dtype=torch.bool, device=n.device) if mask is None else mask
    # bonded[..., i]: residue i is joined to residue i+1 by a peptide bond (i < L-1)
    gap = torch.linalg.vector_norm(c[..., :-1, :] - n[..., 1:, :], dim=-1)
    bonded = (gap <= max_peptide_bond) & present[..., :-1] & present[..., 1:]
    no = torch.zeros_like(bonded[..., :1])
    has_prev = torch.cat([no, bonded], dim=-1)  # (..., L): residue i-1 is bonded to i
    has_next = torch.cat([bonded, no], dim=-1)  # residue i+1 is bonded to i
    has_prev, has_next = has_prev & present, has_next & present

    def shift(x, step):  # x[..., i + step, :], wrapped; the wrapped entries are never defined
        return torch.roll(x, -step, dims=-2)

    phi = (shift(c, -1), n, ca, c)
    psi = (n, ca, c, shift(n, 1))
    omega = (ca, c, shift(n, 1), shift(ca, 1))
    defined = torch.stack([has_prev, has_next, has_next], dim=-1)
    # Stand-in points (a proper, non-degenerate dihedral) where undefined: NaN-free gradients.
    ideal = torch.eye(3, dtype=n.dtype, device=n.device)
    stand_in = (ideal[0], torch.zeros(3, dtype=n.dtype, device=n.device), ideal[1], ideal[1] + ideal[2])
    angles = []
    for k, points in enumerate((phi, psi, omega)):
        ok = defined[..., k, None]
        safe = [torch.where(ok, p, s) for p, s in zip(points, stand_in)]
        angles.append(torch.where(defined[..., k], dihedral(*safe), torch.zeros((), dtype=n.dtype)))
    return torch.stack(angles, dim=-1), defined


def dihedral_features(angles: Tensor, defined: Tensor) -> Tensor:
    """(..., L, 9): sin φ, sin ψ, sin ω, cos φ, cos ψ, cos ω (0 where undefined), then the
    three ``defined`` flags as 0/1. sin and cos make the features continuous across ±180°."""
    require_tensor("angles", angles)
    require_trailing("angles", angles, (3,), "(..., L, 3)")
    require_bool_mask("defined", defined, tuple(angles.shape), "(..., L, 3)", meaning="True = angle defined")
    on = defined.to(angles.dtype)
    return torch.cat([torch.sin(angles) * on, torch.cos(angles) * on, on], dim=-1)
