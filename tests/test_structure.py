"""Backbone loading: ubiquitin ships and loads, files are read the documented way
(first model, first altloc, amino acids only, one chain), missing atoms are named, and
fetch_backbone works with the download replaced (this machine has no internet)."""
import gzip
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
    with pytest.raises(TypeError, match="source"):
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


@pytest.mark.parametrize("bad", ["1ub", "UBQ1", "1UBQ.pdb", "", "1UBQ\n", " 1UBQ", "1UBQ1"])
def test_fetch_backbone_rejects_bad_ids(bad):
    with pytest.raises(ValueError, match="pdb_id"):
        fetch_backbone(bad)
    with pytest.raises(TypeError, match="pdb_id"):
        fetch_backbone(1234)


def test_fetch_backbone_offline_says_so(monkeypatch):
    import requests
    from biotite.database import rcsb

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'models.rcsb.org'")

    monkeypatch.setattr(rcsb, "fetch", offline)
    with pytest.raises(ConnectionError, match="offline.*load_backbone"):
        fetch_backbone("1UBQ")


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


# --- real entries (tests/data, see its README) ------------------------------------------------

DATA = Path(__file__).parent / "data"


@pytest.fixture
def real(tmp_path):
    """The path of an uncompressed copy of a real PDB entry from tests/data."""
    def unpack(name):
        path = tmp_path / name
        path.write_bytes(gzip.decompress((DATA / f"{name}.gz").read_bytes()))
        return path
    return unpack


def _cif_residues(path, chain):
    """(res_id, ins_code, name, CA xyz) of the chain's polymer residues, straight from the
    atom_site table: model 1, first alternate location, entity type 'polymer'."""
    from biotite.structure.io import pdbx

    f = (pdbx.BinaryCIFFile if path.suffix == ".bcif" else pdbx.CIFFile).read(str(path))
    site, entity = f.block["atom_site"], f.block["entity"]
    col = {k: site[k].as_array(str) for k in ("auth_asym_id", "label_atom_id", "label_alt_id", "auth_seq_id",
                                              "pdbx_PDB_ins_code", "label_comp_id", "label_entity_id",
                                              "pdbx_PDB_model_num", "Cartn_x", "Cartn_y", "Cartn_z")}
    polymer = set(entity["id"].as_array(str)[entity["type"].as_array(str) == "polymer"])
    rows, first_alt = {}, {}
    for i in range(len(col["auth_asym_id"])):
        if (col["pdbx_PDB_model_num"][i] != "1" or col["auth_asym_id"][i] != chain
                or col["label_entity_id"][i] not in polymer or col["label_atom_id"][i] != "CA"):
            continue
        ins = "" if col["pdbx_PDB_ins_code"][i] in ("?", ".") else col["pdbx_PDB_ins_code"][i]
        key = (int(col["auth_seq_id"][i]), ins)
        alt = col["label_alt_id"][i]
        if key in rows and alt != first_alt[key]:
            continue  # a later alternate location of the same atom
        first_alt[key] = alt
        rows[key] = (col["label_comp_id"][i], [float(col[f"Cartn_{a}"][i]) for a in "xyz"])
    return [(*k, name, xyz) for k, (name, xyz) in rows.items()]


@pytest.mark.parametrize("name, chain", [
    ("1a8o.cif", "A"),   # mmCIF text, with waters
    ("2ofg.cif", "X"),   # NMR: three models, the first is read
    ("1dix.bcif", "A"),  # BinaryCIF; insertion codes 1X-4X before residues 2, 3, 4
    ("4i39.bcif", "A"),  # 750 backbone atoms with alternate locations
])
def test_real_cif_entries_match_their_atom_site_table(real, name, chain):
    path = real(name)
    expected = _cif_residues(path, chain)
    for mode in ("raise", "drop", "mask"):
        bb = load_backbone(path, chain, on_incomplete=mode)
        assert [(r, i, n) for r, i, n, _ in expected] == list(zip(bb.res_ids, bb.ins_codes, bb.res_names))
        assert torch.equal(bb.ca, torch.tensor([xyz for *_, xyz in expected], dtype=torch.float32))
        assert bb.mask.all()
        r, _ = bb.frames()
        assert is_rotation(r, atol=1e-5).all()


def test_insertion_codes_keep_residue_ids_unique(real):
    bb = load_backbone(real("1dix.bcif"))
    assert len(set(bb.res_ids)) < len(bb)  # numbers alone repeat...
    assert len(set(zip(bb.res_ids, bb.ins_codes))) == len(bb)  # ...with insertion codes they do not
    i = bb.ins_codes.index("X")
    assert bb.label(i) == f"residue {bb.res_names[i]} {bb.res_ids[i]}X of chain A"
    with pytest.raises(ValueError, match="identify each residue once"):
        Backbone(bb.n[:2], bb.ca[:2], bb.c[:2], ("ALA", "GLY"), (5, 5), "A", ("", ""))


def _pdb_ca_records(path, chain):
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith(("ATOM  ", "HETATM"))]
    return [(int(ln[22:26]), ln[17:20]) for ln in lines if ln[21] == chain and ln[12:16] == " CA "]


def test_real_pdb_entry_with_a_modified_residue_two_chains_and_a_ligand(real):
    path = real("1hvr.pdb")  # HIV-1 protease dimer; CSO 67 is a HETATM record inside each chain
    for chain in "AB":
        bb = load_backbone(path, chain)
        ca = [(r, n) for r, n in _pdb_ca_records(path, chain)]
        assert list(zip(bb.res_ids, bb.res_names)) == ca
        assert bb.res_names[bb.res_ids.index(67)] == "CSO"


def _free_glycine(lines, chain, number, shift):
    """A GLY residue copied from the file, renumbered, moved by `shift` Å and written as
    HETATM records: a free amino acid (or, placed next to the chain's end, a bonded one)."""
    gly = [ln for ln in lines if ln.startswith("ATOM") and ln[17:20] == "GLY" and ln[21] == chain]
    first = gly[0][22:26]
    out = []
    for ln in gly:
        if ln[22:26] != first:
            break
        xyz = [float(ln[30 + 8 * k:38 + 8 * k]) + shift[k] for k in range(3)]
        out.append("HETATM" + ln[6:22] + f"{number:4d}" + ln[26:30] + "".join(f"{x:8.3f}" for x in xyz) + ln[54:])
    return out


def test_free_amino_acid_ligands_are_dropped_and_bonded_ones_kept(real, tmp_path):
    lines = real("1hvr.pdb").read_text().splitlines()
    ter = next(i for i, ln in enumerate(lines) if ln.startswith("TER") and ln[21] == "A")
    # Three free glycines after chain A's TER record, 10-30 Å away from it.
    free = [ln for k in range(3) for ln in _free_glycine(lines, "A", 301 + k, (10.0 * (k + 1), 0.0, 0.0))]
    path = tmp_path / "free.pdb"
    path.write_text("\n".join(lines[:ter + 1] + free + lines[ter + 1:]) + "\n")
    bb = load_backbone(path, "A")
    assert len(bb) == 99 and max(bb.res_ids) == 99
    # A glycine whose N sits 1.33 Å from PHE 99's C is peptide-bonded: part of the chain.
    c99 = next(ln for ln in lines if ln.startswith("ATOM") and ln[21] == "A" and ln[22:26] == "  99"
               and ln[12:16] == " C  ")
    gly = _free_glycine(lines, "A", 100, (0.0, 0.0, 0.0))
    n_gly = next(ln for ln in gly if ln[12:16] == " N  ")
    shift = [float(c99[30 + 8 * k:38 + 8 * k]) - float(n_gly[30 + 8 * k:38 + 8 * k]) + (1.33 if k == 0 else 0.0)
             for k in range(3)]
    path.write_text("\n".join(lines[:ter] + _free_glycine(lines, "A", 100, shift) + lines[ter:]) + "\n")
    bb = load_backbone(path, "A")
    assert len(bb) == 100 and bb.res_ids[-1] == 100 and bb.res_names[-1] == "GLY"


# --- incomplete and split residues --------------------------------------------------------------

def test_on_incomplete_raise_drop_and_mask(tmp_path):
    lines = [ln for ln in _ubq_atom_lines({1, 2, 3}) if not (ln[12:16] == " CA " and int(ln[22:26]) == 2)]
    path = _write(tmp_path, lines)
    with pytest.raises(ValueError, match=r"mini.pdb: residue GLN 2 of chain A lacks atom CA.*on_incomplete"):
        load_backbone(path)
    dropped = load_backbone(path, on_incomplete="drop")
    assert dropped.res_ids == (1, 3) and dropped.res_names == ("MET", "ILE") and dropped.mask.all()
    masked = load_backbone(path, on_incomplete="mask")
    assert masked.res_ids == (1, 2, 3) and masked.mask.tolist() == [True, False, True]
    assert masked.ca[1].isnan().all() and torch.isfinite(masked.n[1]).all()
    assert "1 masked" in repr(masked)
    with pytest.raises(ValueError, match="residue GLN 2 of chain A has no frame"):
        masked.frames()
    r, t = masked.frames(missing="average")
    assert torch.equal(r[[0, 2]], dropped.frames()[0]) and torch.isfinite(t).all()
    with pytest.raises(ValueError, match="on_incomplete"):
        load_backbone(path, on_incomplete="skip")


def test_degenerate_residue_is_named_as_the_file_names_it(tmp_path):
    lines = _ubq_atom_lines({1, 2, 3})
    ca2 = next(ln for ln in lines if ln[12:16] == " CA " and int(ln[22:26]) == 2)
    lines = [_with(ln, x=float(ca2[30:38])) if ln[12:16] == " C  " and int(ln[22:26]) == 2 else ln
             for ln in lines]
    lines = [ln[:30] + ca2[30:54] + ln[54:] if ln[12:16] == " C  " and int(ln[22:26]) == 2 else ln for ln in lines]
    bb = load_backbone(_write(tmp_path, [ln[:26] + ("A" if int(ln[22:26]) == 2 else " ") + ln[27:] for ln in lines]))
    with pytest.raises(ValueError, match="residue GLN 2A of chain A has no frame: its N, CA, C coincide"):
        bb.frames()


def test_split_residue_is_reported_as_split(tmp_path):
    lines = _ubq_atom_lines({1, 2, 3})
    res2 = [ln for ln in lines if int(ln[22:26]) == 2]
    moved = res2[4:]  # side chain atoms of GLN 2, written after ILE 3
    path = _write(tmp_path, [ln for ln in lines if ln not in moved] + moved)
    with pytest.raises(ValueError, match="residue GLN 2 of chain A is split.*ILE 3"):
        load_backbone(path, on_incomplete="drop")


# --- damaged and mislabelled files ----------------------------------------------------------------

def _damaged(tmp_path, real, kind):
    ubq = UBQ_PDB.read_text()
    atom_lines = [i for i, ln in enumerate(ubq.splitlines(), 1) if ln.startswith("ATOM")]
    cases = {
        "gzip named .pdb": ("x.pdb", gzip.compress(ubq.encode()), "gzip"),
        "BinaryCIF named .pdb": ("x.pdb", real("1dix.bcif").read_bytes(), "BinaryCIF.*bcif"),
        "BinaryCIF named .cif": ("x.cif", real("4i39.bcif").read_bytes(), "BinaryCIF"),
        "empty": ("x.pdb", b"", "empty"),
        "blank": ("x.cif", b"\n  \n", "empty"),
        "binary": ("x.cif", bytes(range(256)) * 4, "binary"),
        "truncated BinaryCIF": ("x.bcif", real("1dix.bcif").read_bytes()[:5000], "cannot read"),
        "truncated mmCIF": ("x.cif", real("1a8o.cif").read_bytes()[:60000], "cannot read"),
        "truncated PDB": ("x.pdb", ubq.encode()[:ubq.index("\nATOM") + 500],
                          f"line {atom_lines[6]}: the ATOM record has"),
        "short-line CA-only PDB": ("x.pdb", "\n".join(ln[:54] for ln in ubq.splitlines()
                                                     if ln[12:16] == " CA ").encode(), "line 1: the ATOM record"),
        "******** coordinates": ("x.pdb", "\n".join(ln[:30] + "********" + ln[38:] if i == atom_lines[3] else ln
                                                   for i, ln in enumerate(ubq.splitlines(), 1)).encode(),
                                 rf"line {atom_lines[3]}: coordinates '\*{{8}}"),
        "mmCIF named .pdb": ("x.pdb", real("1a8o.cif").read_bytes(), "mmCIF, not PDB"),
        "PDB named .cif": ("x.cif", ubq.encode(), "not mmCIF"),
        "text named .bcif": ("x.bcif", ubq.encode(), "text, not BinaryCIF"),
    }
    name, data, match = cases[kind]
    path = tmp_path / name
    path.write_bytes(data)
    return path, match


@pytest.mark.parametrize("kind", [
    "gzip named .pdb", "BinaryCIF named .pdb", "BinaryCIF named .cif", "empty", "blank", "binary",
    "truncated BinaryCIF", "truncated mmCIF", "truncated PDB", "short-line CA-only PDB",
    "******** coordinates", "mmCIF named .pdb", "PDB named .cif", "text named .bcif",
])
def test_damaged_or_mislabelled_files_raise_a_value_error_naming_the_file(tmp_path, real, kind):
    path, match = _damaged(tmp_path, real, kind)
    with pytest.raises(ValueError, match=match) as info:
        load_backbone(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("dtype, error", [
    (torch.int64, ValueError), (torch.bool, ValueError), (torch.float16, ValueError), ("float32", TypeError),
])
def test_load_backbone_refuses_a_non_float_dtype(dtype, error):
    with pytest.raises(error, match="dtype"):
        load_backbone(UBQ_PDB, dtype=dtype)


# --- force-field residue names (tests/data: villin_hie, charmm_1tw7, alanine_dipeptide) ---------

def _pdb_ca_table(path, segment=None):
    """(res_id, residue name through column 21, segment) of each CA record, read off the lines."""
    rows = []
    for ln in path.read_text().splitlines():
        if ln.startswith(("ATOM  ", "HETATM")) and ln[12:16] == " CA " and ln[16] in " A":
            if segment is None or ln[72:76].strip() == segment:
                rows.append((int(ln[22:26]), ln[17:21].strip(), ln[72:76].strip()))
    return rows


def test_openmm_villin_keeps_hie_27(real):
    """openmm's test.pdb (villin headpiece N68H, AMBER names, blank chain id): HIE 27 used to
    vanish from the middle of the chain, even with on_incomplete='raise'."""
    path = real("villin_hie.pdb")
    table = _pdb_ca_table(path)
    bb = load_backbone(path)
    assert list(zip(bb.res_ids, bb.res_names)) == [(r, n) for r, n, _ in table]
    assert len(bb) == 35 and bb.res_names[26] == "HIE"
    assert bb.sequence == "LSDEDFKAVFGMTRSAFANLPLWKQQHLKKEKGLF"  # HP35 with N27 (N68) as H


def test_charmm_segments_with_blank_chain_ids(real):
    """A CHARMM-GUI system of 1TW7 (two protease monomers, segments PROA and PROB, chain ids
    blank, residues numbered 1-99 in each): it used to be refused as 'residue PRO 1 ... is
    split'. Each segment is read on its own; segment=None takes the first."""
    path = real("charmm_1tw7.pdb")
    first = load_backbone(path)
    assert first.segment_id == "PROA" and first.chain_id == ""
    for seg in ("PROA", "PROB"):
        bb = load_backbone(path, segment=seg)
        table = _pdb_ca_table(path, seg)
        assert bb.segment_id == seg and len(bb) == 99
        assert list(zip(bb.res_ids, bb.res_names)) == [(r, n) for r, n, _ in table]
        assert bb.res_names[68] == "HSD" and bb.sequence[68] == "H"
        assert f"segment {seg!r}" in repr(bb) and bb.label(0) == f"residue PRO 1 of segment {seg}"
        ca = [ln for ln in path.read_text().splitlines() if ln[12:16] == " CA " and ln[72:76].strip() == seg]
        assert torch.allclose(bb.ca[5], torch.tensor([float(ca[5][i:i + 8]) for i in (30, 38, 46)]))
    assert torch.equal(first.ca, load_backbone(path, segment="PROA").ca)
    assert not torch.equal(first.ca, load_backbone(path, segment="PROB").ca)
    assert torch.equal(load_backbone(path, "", segment="PROB").ca, load_backbone(path, segment="PROB").ca)


def test_segment_errors_list_the_segments(real, tmp_path):
    path = real("charmm_1tw7.pdb")
    with pytest.raises(ValueError, match=r"charmm_1tw7.pdb: segment 'PROC' not found; segments with amino "
                                         r"acids: 'PROA', 'PROB'"):
        load_backbone(path, segment="PROC")
    with pytest.raises(ValueError, match=r"segment 'PROA' not found in chain A; segments with amino acids: ''"):
        load_backbone(UBQ_PDB, "A", segment="PROA")
    with pytest.raises(TypeError, match="^segment"):
        load_backbone(path, segment=1)
    # a residue of segment PROB without its CA is named with its segment
    lines = [ln for ln in path.read_text().splitlines()
             if not (ln[72:76] == "PROB" and ln[12:16] == " CA " and int(ln[22:26]) == 10)]
    cut = _write(tmp_path, lines, "cut.pdb")
    with pytest.raises(ValueError, match=r"residue \w+ 10 of segment PROB lacks atom CA"):
        load_backbone(cut, segment="PROB")
    assert len(load_backbone(cut)) == 99


def test_caps_are_not_residues(real):
    """pdbfixer's alanine dipeptide, ACE-ALA-NME: the caps have no CA, so one residue."""
    bb = load_backbone(real("alanine_dipeptide.pdb"))
    assert bb.res_names == ("ALA",) and bb.res_ids == (2,) and bb.sequence == "A"


def _renamed_ubq(tmp_path, renames, *, hetero=False):
    """1UBQ with residues renamed (number -> name), a four-letter name written through
    column 21 as CHARMM and GROMACS write it."""
    out = []
    for ln in UBQ_PDB.read_text().splitlines():
        if ln.startswith("ATOM  ") and int(ln[22:26]) in renames:
            name = renames[int(ln[22:26])]
            ln = ("HETATM" if hetero else ln[:6]) + ln[6:17] + (f"{name:<4}" if len(name) == 4 else f"{name:>3} ") \
                + ln[21:]
        out.append(ln)
    return _write(tmp_path, out, "renamed.pdb")


# The force fields' documented names and the one-letter code each must read as (AMBER,
# CHARMM36, GROMOS and OPLS-AA as GROMACS ships them, OpenMM's pdbNames.xml), written out
# here apart from the library's table.
_FF_CODES = {
    **dict.fromkeys(["HID", "HIE", "HIP", "HSD", "HSE", "HSP", "HISA", "HISB", "HISH", "HISD", "HISE",
                     "HISP", "HIS1", "HIH", "HSH"], "H"),
    **dict.fromkeys(["CYX", "CYM", "CYS1", "CYS2", "CYSH"], "C"),
    **dict.fromkeys(["ASH", "AS4", "ASPH", "ASPP"], "D"),
    **dict.fromkeys(["GLH", "GL4", "GLUH", "GLUP"], "E"),
    **dict.fromkeys(["LYN", "LSN", "LYSH"], "K"),
    "ARGN": "R",
}
_TERMINAL = {**{n: c for n, c in zip(["ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
                                      "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL"],
                                     "ARNDCQEGHILKMFPSTWYV")},
             "HID": "H", "HIE": "H", "HIP": "H", "CYX": "C"}
_FF_CODES.update({end + name: code for name, code in _TERMINAL.items() for end in "NC"})


def _where_to_rename(name):
    """Which 1UBQ residue to give a force-field name: a terminus for the terminal forms, else
    a residue of the parent amino acid where ubiquitin has one (HIS 68, ASP 21, GLU 16, ...)."""
    if len(name) == 4 and name[1:] in _TERMINAL:
        return 1 if name[0] == "N" else 76
    return UBQ_SEQUENCE.find(_FF_CODES[name]) + 1 if _FF_CODES[name] in UBQ_SEQUENCE else 30


@pytest.mark.parametrize("name", sorted(_FF_CODES))
def test_every_force_field_name_is_kept_with_its_parents_code(tmp_path, name):
    number = _where_to_rename(name)
    bb = load_backbone(_renamed_ubq(tmp_path, {number: name}))
    assert bb.res_ids == tuple(range(1, 77)), f"{name} {number} was dropped"
    assert bb.res_names[number - 1] == name
    assert bb.sequence == UBQ_SEQUENCE[:number - 1] + _FF_CODES[name] + UBQ_SEQUENCE[number:]


def test_the_library_table_is_the_documented_one():
    from biotite.sequence import ProteinSequence

    from geoattn.structure import FORCE_FIELD_RESIDUES

    assert {n: ProteinSequence.convert_letter_3to1(p) for n, p in FORCE_FIELD_RESIDUES.items()} == _FF_CODES


def test_the_table_names_parents_and_documents_every_clash_with_the_ccd():
    """Each name maps to one of the 20 amino acids; where the CCD knows the name as an
    amino acid with another one-letter code, the loader's HETATM rule covers it."""
    import biotite.structure.info as info

    from geoattn.structure import _CCD_MEANS_OTHER, _STANDARD, FORCE_FIELD_RESIDUES

    assert set(FORCE_FIELD_RESIDUES.values()) <= set(_STANDARD)
    assert not set(FORCE_FIELD_RESIDUES) & set(_STANDARD)
    clashes = {}
    for name, parent in FORCE_FIELD_RESIDUES.items():
        ccd = info.one_letter_code(name) if name in info.amino_acid_names() else None
        if ccd is not None and ccd != info.one_letter_code(parent):
            clashes[name] = ccd
    assert {n: info.one_letter_code(p) for n, p in _CCD_MEANS_OTHER.items()} == clashes


@pytest.mark.parametrize("name, atom_code, hetatm_code", [("HSE", "H", "S"), ("GLH", "E", "Q")])
def test_names_the_ccd_means_otherwise_read_by_record_type(tmp_path, name, atom_code, hetatm_code):
    number = 68 if name == "HSE" else 16
    for hetero, code in ((False, atom_code), (True, hetatm_code)):
        bb = load_backbone(_renamed_ubq(tmp_path, {number: name}, hetero=hetero))
        assert len(bb) == 76 and bb.res_names[number - 1] == name
        assert bb.sequence[number - 1] == code


def test_a_truncated_force_field_residue_is_named_not_dropped(tmp_path):
    path = _renamed_ubq(tmp_path, {68: "HIE"})
    lines = [ln for ln in path.read_text().splitlines()
             if not (ln.startswith("ATOM  ") and int(ln[22:26]) == 68 and ln[12:16] == " CA ")]
    with pytest.raises(ValueError, match="residue HIE 68 of chain A lacks atom CA"):
        load_backbone(_write(tmp_path, lines, "cut.pdb"))


@pytest.mark.parametrize("hetero", [False, True])
def test_an_unknown_name_with_a_backbone_is_kept_as_x(tmp_path, hetero):
    import biotite.structure.info as info

    from geoattn.structure import FORCE_FIELD_RESIDUES

    assert "LIG" not in info.amino_acid_names() and "LIG" not in FORCE_FIELD_RESIDUES
    bb = load_backbone(_renamed_ubq(tmp_path, {30: "LIG"}, hetero=hetero))
    assert bb.res_ids == tuple(range(1, 77)) and bb.res_names[29] == "LIG"
    assert bb.sequence == UBQ_SEQUENCE[:29] + "X" + UBQ_SEQUENCE[30:]


def test_segments_of_one_chain_id_in_a_renamed_ubiquitin(tmp_path):
    """Two copies of 1UBQ with blank chain ids, told apart only by segment: each loads."""
    lines = [ln for ln in UBQ_PDB.read_text().splitlines() if ln.startswith("ATOM  ")]
    blank = [ln[:21] + " " + ln[22:72].ljust(50) for ln in lines]
    two = [ln + "UBA " for ln in blank] + [ln[:30] + f"{float(ln[30:38]) + 50:8.3f}" + ln[38:] + "UBB "
                                           for ln in blank]
    path = _write(tmp_path, two, "two.pdb")
    a, b = load_backbone(path), load_backbone(path, segment="UBB")
    assert (a.segment_id, b.segment_id) == ("UBA", "UBB") and len(a) == len(b) == 76
    assert torch.allclose(b.ca - a.ca, torch.tensor([50.0, 0.0, 0.0]))
    assert a.sequence == b.sequence == UBQ_SEQUENCE


def test_segments_survive_models_and_alternate_locations(real, tmp_path):
    """Segment ids and four-letter names are matched to biotite's atoms record by record:
    a second model and alternate locations must not shift them."""
    path = real("charmm_1tw7.pdb")
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("ATOM  ")]
    alt = []
    for ln in lines[:200]:  # every atom of the first residues twice, A then B (moved by 1 Å)
        alt += [ln[:16] + "A" + ln[17:], ln[:16] + "B" + ln[17:30] + f"{float(ln[30:38]) + 1:8.3f}" + ln[38:]]
    text = ["MODEL        1", *alt, *lines[200:], "ENDMDL", "MODEL        2", *lines, "ENDMDL"]
    both = _write(tmp_path, text, "models.pdb")
    for seg in ("PROA", "PROB"):
        assert torch.equal(load_backbone(both, segment=seg).ca, load_backbone(path, segment=seg).ca)
