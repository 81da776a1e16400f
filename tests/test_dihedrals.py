"""Backbone dihedrals (geoattn.dihedrals): known values, chain ends and breaks, masks, gradients."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.dihedrals import backbone_dihedrals, dihedral, dihedral_features


@pytest.fixture(scope="module")
def ubq():
    return geoattn.ubiquitin(dtype=torch.float64)


def test_dihedral_of_simple_points():
    o, x, y, z = torch.zeros(3), torch.eye(3)[0], torch.eye(3)[1], torch.eye(3)[2]
    # p0 on +x, axis along +y: p3 on +x is cis (0), on -x trans (π), on +z / -z ∓ 90°
    assert dihedral(x, o, y, y + x).item() == pytest.approx(0.0)
    assert abs(dihedral(x, o, y, y - x).item()) == pytest.approx(math.pi)
    plus, minus = dihedral(x, o, y, y + z).item(), dihedral(x, o, y, y - z).item()
    assert abs(plus) == pytest.approx(math.pi / 2) and minus == pytest.approx(-plus)


def test_ubiquitin_matches_biotite(ubq):
    # An independent implementation: biotite's dihedral_backbone on the same file.
    import biotite.structure as struc

    from geoattn.structure import _read_first_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms = _read_first_model(__import__("pathlib").Path(geoattn.__file__).parent / "data" / "1ubq.pdb")
    atoms = atoms[struc.filter_amino_acids(atoms)]
    ref = torch.tensor(np.stack(struc.dihedral_backbone(atoms), axis=-1), dtype=torch.float64)
    angles, defined = backbone_dihedrals(ubq.n, ubq.ca, ubq.c)
    assert angles.shape == defined.shape == (76, 3)
    assert torch.equal(~defined, torch.isnan(ref))
    diff = torch.remainder(angles[defined] - ref[defined] + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-5  # biotite computes in float32
    assert torch.all(angles[~defined] == 0)


def test_ubiquitin_known_values(ubq):
    angles, defined = backbone_dihedrals(ubq.n, ubq.ca, ubq.c)
    deg = torch.rad2deg(angles)
    # every peptide bond of 1UBQ is trans: |ω| near 180°
    assert (deg[:-1, 2].abs() > 160).all()
    # the α-helix (residues 23-34): φ near -60°, ψ near -45°
    helix = deg[23:33]
    assert helix[:, 0].mean().item() == pytest.approx(-63, abs=8)
    assert helix[:, 1].mean().item() == pytest.approx(-42, abs=8)
    # ends: no φ for the first residue, no ψ or ω for the last
    assert defined[0].tolist() == [False, True, True] and defined[-1].tolist() == [True, False, False]
    assert defined[1:-1].all()


def test_chain_break_and_mask(ubq):
    c = ubq.c.clone()
    n, ca = ubq.n.clone(), ubq.ca.clone()
    shift = torch.tensor([30.0, 0.0, 0.0], dtype=torch.float64)
    n[40:], ca[40:], c[40:] = n[40:] + shift, ca[40:] + shift, c[40:] + shift  # a gap between 40 and 41
    angles, defined = backbone_dihedrals(n, ca, c)
    assert defined[39].tolist() == [True, False, False]  # ψ, ω of the residue before the gap
    assert defined[40].tolist() == [False, True, True]  # φ of the residue after it
    ref, _ = backbone_dihedrals(ubq.n, ubq.ca, ubq.c)
    both = defined.clone()
    assert torch.allclose(angles[both], ref[both], atol=1e-9)  # a rigid shift of one half changes nothing else
    mask = torch.ones(76, dtype=torch.bool)
    mask[10] = False
    _, d2 = backbone_dihedrals(ubq.n, ubq.ca, ubq.c, mask)
    assert not d2[10].any()
    assert d2[9].tolist() == [True, False, False] and d2[11].tolist() == [False, True, True]


def test_batch_of_padded_chains(ubq):
    L = 76
    n = torch.stack([ubq.n, torch.cat([ubq.n[:50], torch.full((26, 3), float("nan"), dtype=torch.float64)])])
    ca = torch.stack([ubq.ca, torch.cat([ubq.ca[:50], torch.zeros(26, 3, dtype=torch.float64)])])
    c = torch.stack([ubq.c, torch.cat([ubq.c[:50], torch.zeros(26, 3, dtype=torch.float64)])])
    mask = torch.arange(L)[None] < torch.tensor([[L], [50]])
    angles, defined = backbone_dihedrals(n, ca, c, mask)
    one, d_one = backbone_dihedrals(ubq.n[:50], ubq.ca[:50], ubq.c[:50])
    assert torch.equal(defined[1, :50], d_one) and not defined[1, 50:].any()
    assert torch.allclose(angles[1, :50], one) and torch.isfinite(angles).all()


def test_gradients_finite_even_where_undefined(ubq):
    n, ca, c = (t.clone().requires_grad_() for t in (ubq.n, ubq.ca, ubq.c))
    with torch.no_grad():
        n[5] = ca[5]  # a degenerate residue (coincident atoms) ...
    mask = torch.ones(76, dtype=torch.bool)
    mask[5] = False  # ... that is masked out
    angles, defined = backbone_dihedrals(n, ca, c, mask)
    dihedral_features(angles, defined).sum().backward()
    for t in (n, ca, c):
        assert torch.isfinite(t.grad).all()
    assert n.grad[5].abs().sum() == 0 and ca.grad[5].abs().sum() == 0


def test_gradcheck_fp64(ubq):
    atoms = [t[:6].clone().requires_grad_() for t in (ubq.n, ubq.ca, ubq.c)]
    assert torch.autograd.gradcheck(lambda *a: dihedral_features(*backbone_dihedrals(*a))[:, :6], atoms)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), reflect=st.booleans())
def test_rigid_motion_keeps_angles_and_reflection_flips_them(ubq, seed, reflect):
    g = torch.Generator().manual_seed(seed)
    R, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))  # orthogonal in fp64
    if torch.linalg.det(R) < 0:
        R = -R
    if reflect:
        R = R @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    s = torch.randn(3, generator=g, dtype=torch.float64) * 50
    moved = [t @ R.T + s for t in (ubq.n, ubq.ca, ubq.c)]
    a0, d0 = backbone_dihedrals(ubq.n, ubq.ca, ubq.c)
    a1, d1 = backbone_dihedrals(*moved)
    assert torch.equal(d0, d1)
    expected = -a0 if reflect else a0
    diff = torch.remainder(a1 - expected + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-9


def test_features_layout(ubq):
    angles, defined = backbone_dihedrals(ubq.n, ubq.ca, ubq.c)
    f = dihedral_features(angles, defined)
    assert f.shape == (76, geoattn.N_DIHEDRAL_FEATURES)
    assert torch.allclose(f[:, :3] ** 2 + f[:, 3:6] ** 2, defined.to(f.dtype))
    assert torch.equal(f[:, 6:], defined.to(f.dtype))


def test_errors(ubq):
    with pytest.raises(TypeError, match="^n "):
        backbone_dihedrals(ubq.n.tolist(), ubq.ca, ubq.c)
    with pytest.raises(ValueError, match="^ca "):
        backbone_dihedrals(ubq.n, ubq.ca[:5], ubq.c)
    with pytest.raises(ValueError, match="^mask "):
        backbone_dihedrals(ubq.n, ubq.ca, ubq.c, torch.ones(76))
    with pytest.raises(ValueError, match="^max_peptide_bond "):
        backbone_dihedrals(ubq.n, ubq.ca, ubq.c, max_peptide_bond=-1.0)
    with pytest.raises(ValueError, match="^defined "):
        dihedral_features(torch.zeros(4, 3), torch.ones(4, 3))
