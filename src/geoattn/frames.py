r"""Rigid frames: a rotation and a translation that place a residue in space (chapter 3).

A frame is the pair ``(rotations, translations)`` with shapes ``(..., 3, 3)`` and
``(..., 3)``. The rotation maps *local* coordinates to *global* ones:

$$x_\text{global} = R\,x_\text{local} + t .$$

The columns of ``R`` are the frame's x, y and z axes written in global coordinates, and
``t`` is its origin. Leading dimensions broadcast like any PyTorch operation, so one
frame can act on many points and a batch of frames on a batch of points.

Frames of a protein backbone follow ESM3's Gram–Schmidt construction
(:func:`frames_from_backbone`). We read it from ``esm/utils/structure/affine3d.py`` in
evolutionaryscale/esm: ``build_affine3d_from_coordinates`` calls
``Affine3D.from_graham_schmidt(neg_x_axis=C, origin=CA, xy_plane=N)``, which sets
``x_axis = CA - C`` and ``xy_plane = N - CA`` and stacks ``[x, y, x × y]`` as the
*columns* of the rotation, with the translation at CA.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .validation import (
    require_dtype_arg,
    require_float_dtype,
    require_int,
    require_number,
    require_same_device,
    require_tensor,
    require_trailing,
)

__all__ = [
    "apply_frame",
    "apply_rotation",
    "invert_frame",
    "compose_frames",
    "frames_from_backbone",
    "degenerate_residues",
    "random_rotation",
    "random_rigid",
    "rotation_angle",
    "is_rotation",
]

_ROTATION_ARGS = ("rotations", "r1", "r2")  # every other argument checked here is a vector


def _check_args(**tensors: Tensor) -> None:
    """The inputs of a frame function, named as the function names them.

    Rotations (``rotations``, ``r1``, ``r2``) are (..., 3, 3), the rest (..., 3); all are
    floating-point tensors of one dtype on one device, and their leading dimensions
    broadcast together. TypeError for a non-tensor, ValueError otherwise, naming it.
    """
    first = next(iter(tensors))
    lead = ()
    for name, t in tensors.items():
        require_tensor(name, t)
        rotation = name in _ROTATION_ARGS
        require_trailing(name, t, (3, 3) if rotation else (3,), "(..., 3, 3)" if rotation else "(..., 3)")
        require_float_dtype(name, t)
        if t.dtype != tensors[first].dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {first} has {tensors[first].dtype}: "
                             "pass one dtype")
        t_lead = t.shape[:-2] if rotation else t.shape[:-1]
        try:
            lead = torch.broadcast_shapes(lead, t_lead)
        except RuntimeError:
            before = ", ".join(list(tensors)[:list(tensors).index(name)])
            raise ValueError(f"{name}'s leading dimensions {tuple(t_lead)} do not broadcast "
                             f"with {tuple(lead)}, those of {before}") from None
    require_same_device(tensors, first)


def apply_rotation(rotations: Tensor, vectors: Tensor) -> Tensor:
    r"""Rotate vectors: $v \mapsto R\,v$ (directions ignore the translation)."""
    _check_args(rotations=rotations, vectors=vectors)
    # matmul broadcasts the leading dims; the trailing 1 makes v a column vector.
    return (rotations @ vectors.unsqueeze(-1)).squeeze(-1)


def apply_frame(rotations: Tensor, translations: Tensor,
                points: Tensor) -> Tensor:
    r"""Local coordinates to global ones: $p \mapsto R\,p + t$."""
    _check_args(rotations=rotations, translations=translations, points=points)
    return apply_rotation(rotations, points) + translations


def invert_frame(rotations: Tensor, translations: Tensor) -> tuple[Tensor, Tensor]:
    r"""The inverse frame, mapping global coordinates back to local ones.

    From $x = R\,p + t$ we get $p = R^\top (x - t) = R^\top x - R^\top t$, because
    $R^{-1} = R^\top$ for a rotation. So the inverse is $(R^\top,\ -R^\top t)$.
    """
    _check_args(rotations=rotations, translations=translations)
    r_inv = rotations.transpose(-1, -2)
    return r_inv, -apply_rotation(r_inv, translations)


def compose_frames(r1: Tensor, t1: Tensor, r2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    r"""Compose two frames: apply frame 2 first, then frame 1.

    $T_1(T_2(p)) = R_1 (R_2 p + t_2) + t_1 = (R_1 R_2)\,p + (R_1 t_2 + t_1)$,
    so the composite is $(R_1 R_2,\ R_1 t_2 + t_1)$.
    """
    _check_args(r1=r1, t1=t1, r2=r2, t2=t2)
    return r1 @ r2, apply_rotation(r1, t2) + t1


def _normalize(v: Tensor) -> Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def _gram_schmidt(n: Tensor, ca: Tensor, c: Tensor) -> Tensor:
    """The rotation [e_x e_y e_z] of non-degenerate residues (see frames_from_backbone)."""
    e_x = _normalize(ca - c)
    v = n - ca
    u = v - (v * e_x).sum(-1, keepdim=True) * e_x
    u = u - (u * e_x).sum(-1, keepdim=True) * e_x  # second pass removes round-off
    e_y = _normalize(u)
    return torch.stack([e_x, e_y, torch.linalg.cross(e_x, e_y, dim=-1)], dim=-1)


def _degenerate(n: Tensor, ca: Tensor, c: Tensor) -> Tensor:
    """True where finite atoms coincide or are collinear, or where an atom is not finite."""
    x_vec, v = ca - c, n - ca
    sin = torch.linalg.vector_norm(torch.linalg.cross(x_vec, v, dim=-1), dim=-1) / (
        torch.linalg.vector_norm(x_vec, dim=-1) * torch.linalg.vector_norm(v, dim=-1))
    tol = math.sqrt(torch.finfo(x_vec.dtype).eps)
    # A comparison with NaN is False, so `~(sin > tol)` also catches 0/0 and non-finite atoms.
    return ~(sin > tol)


def _missing(n: Tensor, ca: Tensor, c: Tensor) -> Tensor:
    """True where a residue has a non-finite coordinate (ESM's test for "no coordinates")."""
    return ~torch.isfinite(torch.stack([n, ca, c], dim=-2)).all(dim=-1).all(dim=-1)


def degenerate_residues(n: Tensor, ca: Tensor, c: Tensor) -> Tensor:
    """Bool, one per residue: True where N, CA, C give no frame (non-finite, coincident or
    collinear atoms), i.e. where :func:`frames_from_backbone` raises."""
    _check_args(n=n, ca=ca, c=c)
    shape = torch.broadcast_shapes(n.shape, ca.shape, c.shape)
    return _degenerate(*(x.expand(shape) for x in (n, ca, c))) | _missing(*(x.expand(shape) for x in (n, ca, c)))


def _index_label(bad: Tensor) -> str:
    index = tuple(int(i) for i in bad.nonzero()[0].tolist())
    if not index:
        return "the residue"
    return f"index {index[0]}" if len(index) == 1 else f"index {index}"


def frames_from_backbone(n: Tensor, ca: Tensor, c: Tensor, *,
                         missing: str = "raise") -> tuple[Tensor, Tensor]:
    r"""Backbone frames by Gram–Schmidt, in ESM3's convention.

    For each residue, with atoms $N$, $C_\alpha$, $C$ of shape ``(..., 3)``:

    $$e_x = \frac{C_\alpha - C}{\lVert C_\alpha - C \rVert},\qquad
      u = (N - C_\alpha) - \big((N - C_\alpha)\cdot e_x\big)\, e_x,\qquad
      e_y = \frac{u}{\lVert u \rVert},\qquad e_z = e_x \times e_y,$$

    $$R = [\,e_x\ e_y\ e_z\,] \ \text{(as columns)},\qquad t = C_\alpha .$$

    So in its own frame a residue has $C_\alpha$ at the origin, $C$ on the negative x
    axis, and $N$ in the xy plane with positive y (and z = 0). This is ESM's
    ``Affine3D.from_graham_schmidt(C, CA, N)``. One difference, in round-off only: we
    subtract the x component from $u$ twice ("twice is enough" Gram–Schmidt), so the
    axes stay orthogonal to working precision even for nearly straight N–CA–C.

    **Degenerate residues raise.** If a residue's atoms coincide or are collinear (the
    sine of the angle between $C_\alpha - C$ and $N - C_\alpha$ below
    $\sqrt{\varepsilon}$ of the dtype, about 3e-4 in float32), no frame exists, and we
    raise a ``ValueError`` naming the residue's index rather than returning NaN or a
    silent arbitrary frame (:func:`degenerate_residues` says which in advance).

    **Residues without coordinates**, i.e. with a non-finite (NaN, ±inf) atom:

    - ``missing="raise"`` (the default): a ``ValueError``, as for a degenerate residue;
    - ``missing="average"``: ESM's "black hole" frame instead. Its rotation is the frame
      of the average N, CA and C over the residues of the same chain that have
      coordinates (the last dimension before the 3 is the residue axis), its translation
      the average CA; with no such residue, the identity at the origin. Mask these
      residues (``~degenerate_residues(...)`` is the mask) so that no one attends to them.

    How ESM differs (``build_affine3d_from_coordinates`` in
    ``esm/utils/structure/affine3d.py``): it builds frames in float32 only, adding
    eps = 1e-10 under each square root of its Gram–Schmidt; it counts a residue as
    missing only when a coordinate is non-finite (or ≥ 1e6); and collinear or
    coincident *finite* atoms get a degenerate frame there (a zero axis, not a
    rotation), where we raise. We compute in the dtype of the inputs.
    """
    _check_args(n=n, ca=ca, c=c)
    if missing not in ("raise", "average"):
        raise ValueError(f"missing must be 'raise' or 'average', got {missing!r}")
    shape = torch.broadcast_shapes(n.shape, ca.shape, c.shape)
    n, ca, c = (x.expand(shape) for x in (n, ca, c))
    absent = _missing(n, ca, c) if missing == "average" else torch.zeros(shape[:-1], dtype=torch.bool,
                                                                        device=n.device)
    bad = _degenerate(n, ca, c) & ~absent
    if bad.any():
        raise ValueError(f"n/ca/c at {_index_label(bad)}: no frame "
                         "(non-finite, coincident or collinear)")
    if not absent.any():
        return _gram_schmidt(n, ca, c), ca.clone()
    return _with_black_holes(n, ca, c, absent)


def _with_black_holes(n: Tensor, ca: Tensor, c: Tensor, absent: Tensor) -> tuple[Tensor, Tensor]:
    if n.dim() < 2:
        raise ValueError("n, ca, c must have a residue axis, (..., L, 3), with missing='average'")
    # Stand-in atoms whose frame is the identity at the origin: every where() below then
    # selects between finite numbers, so no NaN reaches a value or a gradient.
    one = torch.eye(3, dtype=n.dtype, device=n.device)
    stand_in = {"n": one[1], "ca": torch.zeros_like(one[0]), "c": -one[0]}
    keep = ~absent[..., None]
    atoms = {name: torch.where(keep, x, stand_in[name]) for name, x in zip(("n", "ca", "c"), (n, ca, c))}
    count = keep.sum(dim=-2, keepdim=True)
    mean = {name: torch.where(keep, x, 0).sum(dim=-2, keepdim=True) / count.clamp_min(1)
            for name, x in atoms.items()}  # (..., 1, 3)
    # No residue with coordinates, or a degenerate average: the identity at the origin.
    fallback = (count == 0) | _degenerate(mean["n"], mean["ca"], mean["c"])[..., None]
    mean = {name: torch.where(fallback, stand_in[name], x) for name, x in mean.items()}
    r = torch.where(keep[..., None], _gram_schmidt(atoms["n"], atoms["ca"], atoms["c"]),
                    _gram_schmidt(mean["n"], mean["ca"], mean["c"]))
    t = torch.where(keep, atoms["ca"], torch.where(count == 0, 0, mean["ca"]))
    return r, t


def _batch_shape(batch_shape: tuple) -> tuple[int, ...]:
    # Accept random_rotation(2, 3) as well as random_rotation((2, 3)).
    if len(batch_shape) == 1 and isinstance(batch_shape[0], (tuple, list, torch.Size)):
        batch_shape = tuple(batch_shape[0])
    return tuple(require_int("batch_shape", d, minimum=0) for d in batch_shape)


def random_rotation(
    *batch_shape: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Uniformly random rotations (Haar measure on SO(3)), shape ``(*batch_shape, 3, 3)``.

    A Gaussian 4-vector, normalized, is a uniform unit quaternion $q = (w, x, y, z)$, and
    $q$ and $-q$ give the same rotation, so the rotation is uniform on SO(3):

    $$R(q) = \begin{pmatrix}
    1-2(y^2+z^2) & 2(xy-wz) & 2(xz+wy)\\
    2(xy+wz) & 1-2(x^2+z^2) & 2(yz-wx)\\
    2(xz-wy) & 2(yz+wx) & 1-2(x^2+y^2)
    \end{pmatrix}.$$

    The draw happens in float64 on the CPU and is then cast, so one seed gives the same
    rotations in every dtype and on every device, each orthonormal with det +1 to the
    precision of ``dtype`` (float32, float64, float16 or bfloat16).
    """
    shape = _batch_shape(batch_shape)
    require_dtype_arg("dtype", dtype)
    q = torch.randn(*shape, 4, generator=generator, dtype=torch.float64)
    # The norm is 0 with probability 0; the clamp only guards against that event.
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-300)
    w, x, y, z = q.unbind(-1)
    r = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*shape, 3, 3)
    return r.to(dtype=dtype, device=device)


def random_rigid(
    *batch_shape: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    translation_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """A random rigid motion: a uniform rotation and a Gaussian translation of standard
    deviation ``translation_scale`` (same units as the coordinates, e.g. Å)."""
    require_number("translation_scale", translation_scale, minimum=0.0)
    shape = _batch_shape(batch_shape)
    r = random_rotation(*shape, generator=generator, dtype=dtype, device=device)
    t = torch.randn(*shape, 3, generator=generator, dtype=torch.float64) * translation_scale
    return r, t.to(dtype=dtype, device=device)


def rotation_angle(rotations: Tensor) -> Tensor:
    r"""The angle (radians, in $[0, \pi]$) of each rotation, from $\operatorname{tr} R = 1 + 2\cos\theta$
    and $R - R^\top = 2\sin\theta\,[u]_\times$ (u the unit axis): $\theta = \operatorname{atan2}(\sin\theta,
    \cos\theta)$."""
    _check_args(rotations=rotations)
    r = rotations
    # Not acos((tr R - 1)/2): cos θ ≈ 1 - θ²/2 rounds to 1 below θ ≈ 3e-4 in float32 (the
    # angle came out exactly 0), and near π acos is as steep as the cosine is flat. The
    # antisymmetric part carries sin θ to full relative precision at small angles, and
    # atan2 takes from each part the angle where that part is well conditioned.
    axis = torch.stack((r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                        r[..., 1, 0] - r[..., 0, 1]), dim=-1)  # 2 sin θ · u
    sin = torch.linalg.vector_norm(axis, dim=-1) / 2
    cos = (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.atan2(sin, cos)


def is_rotation(rotations: Tensor, atol: float = 1e-5) -> Tensor:
    r"""Per matrix, whether $R^\top R = I$ and $\det R = +1$ within ``atol`` (a bool tensor)."""
    _check_args(rotations=rotations)
    atol = require_number("atol", atol, minimum=0.0)
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    ortho = ((rotations.transpose(-1, -2) @ rotations) - eye).abs().amax(dim=(-2, -1)) <= atol
    det = (torch.linalg.det(rotations) - 1).abs() <= atol
    return ortho & det
