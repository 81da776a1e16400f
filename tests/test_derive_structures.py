"""python -m geoattn.devtools.derive_structures: grouping by homology, the split, the file."""
from __future__ import annotations

import shutil
from importlib import resources

import numpy as np
import pytest

from geoattn.devtools import derive_structures as ds


@pytest.fixture()
def source(tmp_path):
    ubq = resources.files("geoattn") / "data" / "1ubq.pdb"
    folder = tmp_path / "structures"
    folder.mkdir()
    for name in ("aaaa", "bbbb"):  # two copies: homologs by any measure
        with resources.as_file(ubq) as path:
            shutil.copy(path, folder / f"{name}.pdb")
    (folder / "cccc.pdb").write_text("not a structure\n")
    (folder / "README.md").write_text("ignored")
    return folder


def test_derive_groups_homologs_and_skips_bad_files(source, tmp_path):
    log = []
    out = tmp_path / "out.npz"
    arrays = ds.derive(source, out, test_entries=("aaaa",), valid_entries=(), log=log.append)
    assert any(line.startswith("skip cccc.pdb") for line in log)
    assert arrays["entry"].tolist() == ["aaaa", "bbbb"]
    # bbbb is a copy of the test entry aaaa, so it must follow it into test
    assert arrays["split"].tolist() == ["test", "test"]
    assert arrays["family"][0] == arrays["family"][1]
    loaded = np.load(out)
    assert set(loaded.files) == {"coords", "res_id", "entry", "chain", "sequence", "length", "family", "split"}
    assert loaded["coords"].shape == (152, 3, 3) and loaded["coords"].dtype == np.float32
    assert loaded["length"].tolist() == [76, 76]
    assert loaded["sequence"][0].startswith("MQIFVKTL")


def test_main_writes_the_file(source, tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert ds.main([str(source), str(out)]) == 0
    assert out.is_file() and "train: 2 chains, 152 residues" in capsys.readouterr().out


def test_families_join_entries_named_together():
    chains = [{"entry": e, "sequence": s} for e, s in (("p", "ACDEFGHIK"), ("q", "WWWWYYYY"), ("r", "MMMNNNPPP"))]
    assert len(set(ds.families(chains, same_family=()))) == 3
    fam = ds.families(chains, same_family=(("p", "r"),))
    assert fam[0] == fam[2] != fam[1]


def test_shipped_file_has_no_homolog_across_splits():
    from biotite.sequence import ProteinSequence
    from biotite.sequence.align import SubstitutionMatrix, align_optimal

    import geoattn
    from geoattn.inverse_folding import load_structures

    chains = load_structures()
    matrix = SubstitutionMatrix.std_protein_matrix()

    def score(a, b):
        a, b = ProteinSequence(a.replace("X", "")), ProteinSequence(b.replace("X", ""))
        return align_optimal(a, b, matrix, gap_penalty=(-10, -1), local=True, max_number=1)[0].score

    train = [c for c in chains if c.split == "train"]
    held_out = [c for c in chains if c.split != "train"]
    worst = max(score(t.sequence, h.sequence) for t in train for h in held_out)
    assert worst < ds.LINK_SCORE
    ubq = geoattn.ubiquitin().sequence
    assert max(score(ubq, t.sequence) for t in train) < ds.LINK_SCORE
