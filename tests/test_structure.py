"""Backbone loading: ubiquitin ships and loads, files are read the documented way
(first model, first altloc, amino acids only, one chain), missing atoms are named, and
fetch_backbone works with the download replaced (this machine has no internet)."""
from importlib import resources
from pathlib import Path

import pytest
import torch

from geoattn.frames import is_rotation
from geoattn.structure import (
    Backbone,
    ca_contact_map,
    ca_distances,
    fetch_backbone,
    load_backbone,
    ubiquitin,
)

UBQ_PDB = Path(str(resources.files("geoattn") / "data" / "1ubq.pdb"))
UBQ_SEQUENCE = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"


def _ubq_atom_lines(residues):
    """The ATOM records of the given residue numbers, straight from the packaged 1UBQ."""
    lines = [ln for ln in UBQ_PDB.read_text().splitlines() if ln.startswith("ATOM")]
    return [ln for ln in lines if int(ln[22:26]) in residues]


def _with(line, *, altloc=None, chain=None, x=None):
    """Edit a PDB ATOM record's fixed columns."""
    if altloc is not None:
        line = line[:16] + altloc + line[17:]
    if chain is not None:
        line = line[:21] + chain + line[22:]
    if x is not None:
        line = line[:30] + f"{x:8.3f}" + line[38:]
    return line


def _write(tmp_path, lines, name="mini.pdb"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


# --- ubiquitin ----------------------------------------------------------------------------

def test_ubiquitin_loads_76_residues_of_chain_a():
    bb = ubiquitin()
    assert isinstance(bb, Backbone) and len(bb) == 76
    assert bb.chain_id == "A"
    assert bb.res_ids == tuple(range(1, 77))
    assert bb.res_names[:3] == ("MET", "GLN", "ILE") and bb.res_names[-1] == "GLY"
    assert bb.sequence == UBQ_SEQUENCE
    for x in (bb.n, bb.ca, bb.c):
        assert x.shape == (76, 3) and x.dtype == torch.float32
    # Read off the file: "ATOM 2 CA MET A 1 26.266 25.413 2.842".
    assert torch.allclose(bb.ca[0], torch.tensor([26.266, 25.413, 2.842]))
    assert bb.coords().shape == (76, 3, 3)
    assert torch.equal(bb.coords()[:, 1], bb.ca)


def test_ubiquitin_dtype_and_geometry():
    bb = ubiquitin(dtype=torch.float64)
    assert bb.ca.dtype == torch.float64
    # The atoms are the right ones: N–CA ≈ 1.46 Å and CA–C ≈ 1.52 Å (this 1987 model
    # deviates by up to 0.05 Å), while a mix-up would give N–C ≈ 2.45 Å.
    assert ((bb.n - bb.ca).norm(dim=-1) - 1.46).abs().max() < 0.1
    assert ((bb.c - bb.ca).norm(dim=-1) - 1.52).abs().max() < 0.1
    r, t = bb.frames()
    assert r.shape == (76, 3, 3) and torch.equal(t, bb.ca)
    assert is_rotation(r, atol=1e-12).all()


def test_backbone_rejects_inconsistent_fields():
    z = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="res_names"):
        Backbone(z, z, z, ("ALA",), (1, 2, 3), "A")
    with pytest.raises(ValueError, match="res_ids"):
        Backbone(z, z, z, ("ALA",) * 3, (1,), "A")
    with pytest.raises(ValueError, match="same shape"):
        Backbone(z, torch.zeros(2, 3), z, ("ALA",) * 2, (1, 2), "A")
    with pytest.raises(ValueError, match="ca must"):
        Backbone(z, torch.zeros(3), z, ("ALA",) * 3, (1, 2, 3), "A")


# --- reading files --------------------------------------------------------------------------

def test_missing_backbone_atom_names_the_residue(tmp_path):
    lines = [ln for ln in _ubq_atom_lines({1, 2, 3}) if not (ln[12:16] == " CA " and int(ln[22:26]) == 2)]
    with pytest.raises(ValueError, match="residue GLN 2 of chain A lacks atom CA"):
        load_backbone(_write(tmp_path, lines))


def test_waters_and_ligands_are_skipped(tmp_path):
    hoh = "HETATM  604  O   HOH A  77      45.747  30.081  19.708  1.00 12.43           O  "
    bb = load_backbone(_write(tmp_path, _ubq_atom_lines({1, 2, 3}) + [hoh]))
    assert len(bb) == 3 and bb.res_names == ("MET", "GLN", "ILE")
    with pytest.raises(ValueError, match="no amino-acid residues"):
        load_backbone(_write(tmp_path, [hoh], name="water.pdb"))


def test_first_altloc_is_taken(tmp_path):
    lines = []
    for ln in _ubq_atom_lines({1, 2}):
        if ln[12:16] == " CA " and int(ln[22:26]) == 2:
            lines += [_with(ln, altloc="A"), _with(ln, altloc="B", x=99.0)]
        else:
            lines.append(ln)
    bb = load_backbone(_write(tmp_path, lines))
    assert len(bb) == 2
    assert bb.ca[1, 0].item() == pytest.approx(26.850)


def test_first_model_is_taken(tmp_path):
    model1 = _ubq_atom_lines({1, 2})
    model2 = [_with(ln, x=float(ln[30:38]) + 10.0) for ln in model1]
    lines = ["MODEL        1", *model1, "ENDMDL", "MODEL        2", *model2, "ENDMDL"]
    bb = load_backbone(_write(tmp_path, lines))
    assert bb.ca[0, 0].item() == pytest.approx(26.266)


def test_chain_selection(tmp_path):
    lines = _ubq_atom_lines({1, 2, 3}) + [_with(ln, chain="B") for ln in _ubq_atom_lines({5, 6})]
    path = _write(tmp_path, lines)
    assert len(load_backbone(path)) == 3  # the first chain by default
    b = load_backbone(path, "B")
    assert (b.chain_id, b.res_ids, b.res_names) == ("B", (5, 6), ("VAL", "LYS"))
    with pytest.raises(ValueError, match="chain 'C' not found"):
        load_backbone(path, "C")


@pytest.mark.parametrize("suffix", [".cif", ".bcif"])
def test_mmcif_and_binary_cif_give_the_same_backbone(tmp_path, suffix):
    from biotite.structure.io import pdb, pdbx

    atoms = pdb.PDBFile.read(str(UBQ_PDB)).get_structure(model=1)
    f = pdbx.BinaryCIFFile() if suffix == ".bcif" else pdbx.CIFFile()
    pdbx.set_structure(f, atoms)
    path = tmp_path / f"1ubq{suffix}"
    f.write(str(path))
    got, ref = load_backbone(path), ubiquitin()
    assert len(got) == 76 and got.res_names == ref.res_names
    for a, b in zip(got.coords(), ref.coords()):
        assert torch.allclose(a, b, atol=1e-3)


def test_bad_sources_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="source"):
        load_backbone(tmp_path / "nope.pdb")
    (tmp_path / "x.xyz").write_text("3\n")
    with pytest.raises(ValueError, match="unknown format"):
        load_backbone(tmp_path / "x.xyz")
    with pytest.raises(ValueError, match="source"):
        load_backbone(42)


# --- fetching (download replaced) -------------------------------------------------------------

def test_fetch_backbone_with_a_fake_download(monkeypatch):
    from biotite.database import rcsb
    from biotite.structure.io import pdb, pdbx

    calls = []

    def fake_fetch(pdb_ids, format, target_path=None, **kwargs):
        calls.append((pdb_ids, format, target_path))
        f = pdbx.BinaryCIFFile()
        pdbx.set_structure(f, pdb.PDBFile.read(str(UBQ_PDB)).get_structure(model=1))
        path = Path(target_path) / f"{pdb_ids.lower()}.bcif"
        f.write(str(path))
        return str(path)

    monkeypatch.setattr(rcsb, "fetch", fake_fetch)
    bb = fetch_backbone("1UBQ")
    assert len(bb) == 76 and bb.sequence == UBQ_SEQUENCE
    (pdb_id, fmt, target), = calls
    assert (pdb_id, fmt) == ("1UBQ", "bcif")
    assert target is not None and not Path(target).exists()  # the temporary directory is gone


@pytest.mark.parametrize("bad", ["1ub", "UBQ1", "1UBQ.pdb", "", 1234])
def test_fetch_backbone_rejects_bad_ids(bad):
    with pytest.raises(ValueError, match="pdb_id"):
        fetch_backbone(bad)


# --- distances and contacts ---------------------------------------------------------------

def test_ca_distances():
    bb = ubiquitin(dtype=torch.float64)
    d = ca_distances(bb)
    assert d.shape == (76, 76)
    assert torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(76, dtype=torch.float64))
    assert torch.allclose(d, torch.cdist(bb.ca, bb.ca), atol=1e-9)
    assert torch.allclose(d[5, 40], (bb.ca[5] - bb.ca[40]).norm())
    # Consecutive CAs of trans peptides sit 3.8 Å apart; ubiquitin has no cis peptide.
    assert (d.diagonal(1) - 3.8).abs().max() < 0.1
    assert torch.equal(ca_distances(bb.ca), d)


def test_ca_contact_map():
    bb = ubiquitin()
    d = ca_distances(bb)
    for cutoff in (4.0, 8.0, 12.0):
        cm = ca_contact_map(bb, cutoff)
        assert cm.dtype == torch.bool and cm.shape == (76, 76)
        assert torch.equal(cm, d <= cutoff) and torch.equal(cm, cm.T) and cm.diagonal().all()
    assert ca_contact_map(bb, 4.0).sum() < ca_contact_map(bb).sum() < ca_contact_map(bb, 12.0).sum()
    with pytest.raises(ValueError, match="cutoff"):
        ca_contact_map(bb, 0.0)
    with pytest.raises(ValueError, match="backbone"):
        ca_distances(torch.zeros(3))


def test_plot_backbone_frames_draws_the_trace_and_three_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoattn.plotting import plot_backbone_frames

    bb = ubiquitin()
    ax = plot_backbone_frames(bb, residues=[0, 10, 20], axis_length=2.0)
    try:
        assert len(ax.lines) == 1 and len(ax.lines[0].get_data_3d()[0]) == 76  # the whole trace
        arrows = ax.collections
        assert len(arrows) == 3  # x, y and z quivers
        assert [c.get_label() for c in arrows] == ["x axis", "y axis", "z axis"]
        with pytest.raises(ValueError, match="together"):
            plot_backbone_frames(bb, rotations=bb.frames()[0])
    finally:
        plt.close("all")
