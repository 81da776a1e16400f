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

__all__ = [
    "apply_frame",
    "apply_rotation",
    "invert_frame",
    "compose_frames",
    "frames_from_backbone",
    "random_rotation",
    "random_rigid",
    "rotation_angle",
    "is_rotation",
]


def _check_rotations(name: str, r) -> Tensor:
    if not isinstance(r, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(r).__name__}")
    if r.dim() < 2 or r.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(r.shape)}")
    return r


def _check_vectors(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {tuple(x.shape)}")
    return x


def _check_broadcast(names: tuple[str, str], a: tuple, b: tuple) -> None:
    try:
        torch.broadcast_shapes(a, b)
    except RuntimeError:
        raise ValueError(
            f"{names[1]}'s leading dimensions {b} do not broadcast with {names[0]}'s {a}"
        ) from None


def apply_rotation(rotations: Tensor, vectors: Tensor) -> Tensor:
    r"""Rotate vectors: $v \mapsto R\,v$ (directions ignore the translation)."""
    _check_rotations("rotations", rotations)
    _check_vectors("vectors", vectors)
    _check_broadcast(("rotations", "vectors"), tuple(rotations.shape[:-2]), tuple(vectors.shape[:-1]))
    # matmul broadcasts the leading dims; the trailing 1 makes v a column vector.
    return (rotations @ vectors.unsqueeze(-1)).squeeze(-1)


def apply_frame(rotations: Tensor, translations: Tensor, points: Tensor) -> Tensor:
    r"""Map points from a frame's local coordinates to global ones: $p \mapsto R\,p + t$."""
    _check_rotations("rotations", rotations)
    _check_vectors("translations", translations)
    _check_vectors("points", points)
    _check_broadcast(("rotations", "translations"), tuple(rotations.shape[:-2]), tuple(translations.shape[:-1]))
    _check_broadcast(("rotations", "points"), tuple(rotations.shape[:-2]), tuple(points.shape[:-1]))
    return apply_rotation(rotations, points) + translations


def invert_frame(rotations: Tensor, translations: Tensor) -> tuple[Tensor, Tensor]:
    r"""The inverse frame, mapping global coordinates back to local ones.

    From $x = R\,p + t$ we get $p = R^\top (x - t) = R^\top x - R^\top t$, because
    $R^{-1} = R^\top$ for a rotation. So the inverse is $(R^\top,\ -R^\top t)$.
    """
    _check_rotations("rotations", rotations)
    _check_vectors("translations", translations)
    _check_broadcast(("rotations", "translations"), tuple(rotations.shape[:-2]), tuple(translations.shape[:-1]))
    r_inv = rotations.transpose(-1, -2)
    return r_inv, -apply_rotation(r_inv, translations)


def compose_frames(r1: Tensor, t1: Tensor, r2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    r"""Compose two frames: apply frame 2 first, then frame 1.

    $T_1(T_2(p)) = R_1 (R_2 p + t_2) + t_1 = (R_1 R_2)\,p + (R_1 t_2 + t_1)$,
    so the composite is $(R_1 R_2,\ R_1 t_2 + t_1)$.
    """
    _check_rotations("r1", r1)
    _check_vectors("t1", t1)
    _check_rotations("r2", r2)
    _check_vectors("t2", t2)
    _check_broadcast(("r1", "t1"), tuple(r1.shape[:-2]), tuple(t1.shape[:-1]))
    _check_broadcast(("r2", "t2"), tuple(r2.shape[:-2]), tuple(t2.shape[:-1]))
    _check_broadcast(("r1", "r2"), tuple(r1.shape[:-2]), tuple(r2.shape[:-2]))
    return r1 @ r2, apply_rotation(r1, t2) + t1


def _normalize(v: Tensor) -> Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def _residue_label(index: tuple[int, ...]) -> str:
    if not index:
        return "the residue"
    return f"residue {index[0]}" if len(index) == 1 else f"residue at index {index}"


def frames_from_backbone(n: Tensor, ca: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
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

    **Degenerate residues raise.** If a residue's atoms are not finite, coincide, or
    are collinear (the sine of the angle between $C_\alpha - C$ and $N - C_\alpha$
    below $\sqrt{\varepsilon}$ of the dtype, about 3e-4 in float32), no frame exists,
    and we raise a ``ValueError`` naming that residue's index rather than returning
    NaN or a silent arbitrary frame. (ESM instead replaces such residues with a fallback
    frame and masks them out of attention; to do that here, drop or mask those
    residues before calling.)
    """
    for name, x in (("n", n), ("ca", ca), ("c", c)):
        _check_vectors(name, x)
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    try:
        shape = torch.broadcast_shapes(n.shape, ca.shape, c.shape)
    except RuntimeError:
        raise ValueError(
            f"n, ca and c must broadcast to one shape, got {tuple(n.shape)}, {tuple(ca.shape)}, {tuple(c.shape)}"
        ) from None
    n, ca, c = (x.expand(shape) for x in (n, ca, c))

    x_vec = ca - c
    v = n - ca
    x_len = torch.linalg.vector_norm(x_vec, dim=-1)
    v_len = torch.linalg.vector_norm(v, dim=-1)
    sin = torch.linalg.vector_norm(torch.linalg.cross(x_vec, v, dim=-1), dim=-1) / (x_len * v_len)
    # A comparison with NaN is False, so `~(sin > tol)` also catches 0/0 and non-finite atoms.
    finite = torch.isfinite(torch.stack([n, ca, c], dim=-2)).all(dim=-1).all(dim=-1)
    tol = math.sqrt(torch.finfo(x_vec.dtype).eps)
    bad = ~(finite & (sin > tol))
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(
            f"frames_from_backbone: {_residue_label(index)} has non-finite, coincident or "
            "collinear N, CA, C atoms, so it has no frame"
        )

    e_x = _normalize(x_vec)
    u = v - (v * e_x).sum(-1, keepdim=True) * e_x
    u = u - (u * e_x).sum(-1, keepdim=True) * e_x  # second pass removes round-off
    e_y = _normalize(u)
    e_z = torch.linalg.cross(e_x, e_y, dim=-1)
    return torch.stack([e_x, e_y, e_z], dim=-1), ca.clone()


def _batch_shape(batch_shape: tuple) -> tuple[int, ...]:
    # Accept random_rotation(2, 3) as well as random_rotation((2, 3)).
    if len(batch_shape) == 1 and isinstance(batch_shape[0], (tuple, list, torch.Size)):
        batch_shape = tuple(batch_shape[0])
    for d in batch_shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ValueError(f"batch_shape must be non-negative ints, got {batch_shape!r}")
    return tuple(batch_shape)


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
    precision of ``dtype``.
    """
    shape = _batch_shape(batch_shape)
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
    if not translation_scale >= 0:
        raise ValueError(f"translation_scale must be >= 0, got {translation_scale}")
    shape = _batch_shape(batch_shape)
    r = random_rotation(*shape, generator=generator, dtype=dtype, device=device)
    t = torch.randn(*shape, 3, generator=generator, dtype=torch.float64) * translation_scale
    return r, t.to(dtype=dtype, device=device)


def rotation_angle(rotations: Tensor) -> Tensor:
    r"""The angle (radians, in $[0, \pi]$) of each rotation, from $\operatorname{tr} R = 1 + 2\cos\theta$."""
    _check_rotations("rotations", rotations)
    trace = rotations.diagonal(dim1=-2, dim2=-1).sum(-1)
    # Round-off can push (tr - 1)/2 just outside [-1, 1], where acos is NaN.
    return torch.acos(((trace - 1) / 2).clamp(-1.0, 1.0))


def is_rotation(rotations: Tensor, atol: float = 1e-5) -> Tensor:
    r"""Per matrix, whether $R^\top R = I$ and $\det R = +1$ within ``atol`` (a bool tensor)."""
    _check_rotations("rotations", rotations)
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    ortho = ((rotations.transpose(-1, -2) @ rotations) - eye).abs().amax(dim=(-2, -1)) <= atol
    det = (torch.linalg.det(rotations) - 1).abs() <= atol
    return ortho & det
