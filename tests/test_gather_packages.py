"""python -m geoattn.devtools.gather_packages: which files of a package count as PDB entries."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

from geoattn.devtools import gather_packages as gp

ATOM = "ATOM      1  N   {res} A   1      11.104   6.134  -6.504  1.00  0.00           N\n"
HEADER = "HEADER    HYDROLASE                               01-JAN-00   {id}              \n"


def _sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"pkg-1.0/PKG-INFO": b"Name: pkg\nVersion: 1.0\nLicense: MIT\n\n", **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_gather_keeps_entries_and_refuses_md_systems_models_and_duplicates(tmp_path):
    entry = (HEADER.format(id="1ABC") + "EXPDTA    X-RAY DIFFRACTION\n" + ATOM.format(res="ALA")).encode()
    files = {
        "pkg-1.0/data/1abc.pdb": entry,
        "pkg-1.0/data/copy_of_1abc.pdb": entry[:-1],  # smaller: the full file wins the id
        "pkg-1.0/data/2xyzA.pdb.gz": gzip.compress(ATOM.format(res="GLY").encode()),  # DSSP-style name
        "pkg-1.0/data/3def.pdb": (HEADER.format(id="3DEF") + ATOM.format(res="HSD")).encode(),
        "pkg-1.0/data/4ghi_mode7.pdb": ATOM.format(res="ALA").encode(),
        "pkg-1.0/data/water.pdb": ATOM.format(res="HOH").encode(),
        "pkg-1.0/data/5jkl.pdb": (HEADER.format(id="5JKL") + ATOM.format(res="ALA")).encode(),
    }
    packages = tmp_path / "packages"
    packages.mkdir()
    _sdist(packages / "pkg-1.0.tar.gz", files)
    rows = gp.gather(packages, tmp_path / "out", taken=("5jkl",), log=lambda _: None)
    status = {r["file"].rsplit("/", 1)[1]: r["status"] for r in rows}
    assert status["1abc.pdb"] == "staged"
    assert status["copy_of_1abc.pdb"] == "skipped: PDB id already taken"
    assert status["2xyzA.pdb.gz"] == "staged"
    assert status["3def.pdb"].startswith("skipped: force-field residue names")
    assert status["4ghi_mode7.pdb"].startswith("skipped: name says the coordinates were moved")
    assert status["water.pdb"].startswith("skipped: no PDB id")
    assert status["5jkl.pdb"] == "skipped: PDB id already taken"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1abc.pdb", "2xyz.pdb"]
    staged = next(r for r in rows if r["status"] == "staged")
    assert staged["package"] == "pkg" and staged["version"] == "1.0" and staged["pdb_id"] == "1abc"
    assert staged["licence"].startswith("PDB entry: CC0") and "MIT" in staged["licence"]
    assert len(staged["archive_sha256"]) == 64


def test_main_writes_the_manifest(tmp_path):
    packages = tmp_path / "packages"
    packages.mkdir()
    _sdist(packages / "pkg-1.0.tar.gz", {"pkg-1.0/x/1abc.cif": b"data_1ABC\n_entry.id 1ABC\n_exptl.method 'X-RAY'\n"})
    assert gp.main([str(packages), str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [(r["pdb_id"], r["status"]) for r in rows] == [("1abc", "staged")]
