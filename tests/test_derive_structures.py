"""python -m geoattn.devtools.derive_structures: grouping by homology, the split, the file."""
from __future__ import annotations

import gzip
import hashlib
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from geoattn.devtools import derive_structures as ds

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def source(tmp_path):
    folder = tmp_path / "structures"
    folder.mkdir()
    hvr = gzip.decompress((DATA / "1hvr.pdb.gz").read_bytes())
    for name in ("aaaa", "bbbb"):  # two copies: homologs by any measure, and redundant
        (folder / f"{name}.pdb").write_bytes(hvr)
    (folder / "cccc.cif").write_bytes(gzip.decompress((DATA / "1a8o.cif.gz").read_bytes()))
    with resources.as_file(resources.files("geoattn") / "data" / "1ubq.pdb") as path:
        shutil.copy(path, folder / "uuuu.pdb")  # ubiquitin must stay out of the file
    (folder / "dddd.pdb").write_text("not a structure\n")
    (folder / "README.md").write_text("ignored")
    return folder


def test_derive_drops_redundant_chains_and_ubiquitin_and_skips_bad_files(source, tmp_path):
    log = []
    out = tmp_path / "out.npz"
    arrays = ds.derive(source, out, test_entries=("aaaa",), valid_entries=(), log=log.append)
    assert any(line.startswith("skip dddd.pdb") for line in log)
    assert any(line.startswith("drop uuuu chain A: homologous to ubiquitin") for line in log)
    # 1HVR's chain B repeats chain A; bbbb repeats aaaa: one chain is left of four
    assert sum(line.startswith(("drop aaaa chain B", "drop bbbb")) for line in log) == 3
    assert arrays["entry"].tolist() == ["aaaa", "cccc"]
    assert arrays["split"].tolist() == ["test", "train"]
    assert arrays["family"][0] != arrays["family"][1]
    loaded = np.load(out)
    assert set(loaded.files) == {"coords_q", "res_id", "entry", "chain", "sequence", "length", "family", "split"}
    assert loaded["coords_q"].dtype == np.int32
    lengths = loaded["length"]
    assert lengths.tolist() == [99, len(loaded["sequence"][1])]
    from geoattn.structure import load_backbone

    expected = load_backbone(source / "aaaa.pdb", "A").coords().numpy()
    got = ds.decode_coords(loaded["coords_q"], lengths)[:99]
    assert np.abs(got - expected).max() <= 0.5 / ds.COORD_SCALE + 1e-4


def test_coordinates_round_trip_at_0_01_angstrom():
    rng = np.random.default_rng(0)
    coords = rng.uniform(-999, 999, size=(10, 3, 3)).astype(np.float32)
    lengths = np.array([3, 7])
    back = ds.decode_coords(ds.encode_coords(coords, lengths), lengths)
    assert np.abs(back - coords).max() <= 0.005 + 1e-4


def test_main_writes_the_file(source, tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert ds.main([str(source), str(out)]) == 0
    assert out.is_file() and "train: 2 chains, 2 families" in capsys.readouterr().out


def test_families_join_entries_named_together():
    chains = [{"entry": e, "sequence": s} for e, s in (("p", "ACDEFGHIK"), ("q", "WWWWYYYY"), ("r", "MMMNNNPPP"))]
    assert len(set(ds.families(chains, same_family=()))) == 3
    fam = ds.families(chains, same_family=(("p", "r"),))
    assert fam[0] == fam[2] != fam[1]


def test_shipped_file_has_no_homolog_across_splits():
    from biotite.sequence import ProteinSequence
    from biotite.sequence.align import SubstitutionMatrix

    import geoattn
    from geoattn.inverse_folding import load_structures

    chains = load_structures()
    matrix = SubstitutionMatrix.std_protein_matrix()
    seq = {c.sequence: ProteinSequence(c.sequence.replace("X", "")) for c in chains}

    def similar(a, b):
        score, identity = ds._similarity(seq.get(a) or ProteinSequence(a), seq[b], matrix)
        return score >= ds.LINK_SCORE or identity >= ds.LINK_IDENTITY

    train = [c for c in chains if c.split == "train"]
    valid = [c for c in chains if c.split == "valid"]
    test = [c for c in chains if c.split == "test"]
    for group, others in ((train, valid + test), (valid, test)):
        for a in {c.sequence for c in group}:
            assert not any(similar(a, b.sequence) for b in others)
    ubq = geoattn.ubiquitin().sequence
    assert not any(similar(ubq, c.sequence) for c in chains)


def test_manifest_lists_every_entry_with_its_source_and_licence():
    import json

    from geoattn.inverse_folding import load_structures

    manifest = json.loads((resources.files("geoattn") / "data" / "structures_manifest.json").read_text())
    entries = {e["entry"]: e for e in manifest["entries"]}
    assert entries.keys() == {c.entry for c in load_structures()}
    for e in entries.values():
        assert e["licence"].startswith("PDB entry: CC0") and e["file"]
        assert e["package"] is None or e["version"]
    with resources.as_file(resources.files("geoattn") / "data" / "structures.npz") as path:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
