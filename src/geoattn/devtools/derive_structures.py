"""Derive the compact training set of chapter 6 from public PDB entries.

    # the project's 27 entries, and the entries that ship inside Python packages
    # (downloaded and staged as geoattn.devtools.gather_packages documents):
    python -m geoattn.devtools.gather_packages /tmp/geoattn-packages /tmp/geoattn-staged \\
        --taken /work/shared/data/structures
    python -m geoattn.devtools.derive_structures /work/shared/data/structures \\
        /tmp/geoattn-staged src/geoattn/data/structures.npz \\
        --manifest src/geoattn/data/structures_manifest.json

Every amino-acid chain of every entry is read with the library's own loader
(:func:`geoattn.load_backbone`: first model, first alternate location, ligands and waters
skipped, residues without all of N, CA, C dropped); a file or chain that the loader
rejects is skipped and reported, and so is a chain shorter than ``MIN_LENGTH`` or longer
than ``MAX_LENGTH`` residues (the chapter trains on a CPU; attention is quadratic). The
chains are then made non-redundant and grouped into *families* so that no homolog crosses
the train/test split:

- two chains are linked when a local alignment of their sequences (Smith–Waterman,
  BLOSUM62, gap penalties −10/−1) scores at least ``LINK_SCORE`` or reaches
  ``LINK_IDENTITY`` sequence identity (identical positions over the shorter chain);
  families are the connected components of those links (single linkage, so a family can
  only grow);
- chains of one entry always share a family (a complex is split as a whole);
- the groups that the data's README names are joined by hand as well (``SAME_FAMILY``);
- a chain at least ``REDUNDANT_IDENTITY`` identical to an earlier one (a second copy in a
  homo-oligomer, the same protein in another file) is dropped: it adds no information and
  would make the test residues look more independent than they are;
- a family linked to ubiquitin is dropped: ubiquitin ships as ``data/1ubq.pdb`` and the
  chapter looks inside the model with it, so it must be new to the model.

Whole families then go to ``test`` (``TEST_ENTRIES`` and more), ``valid``
(``VALID_ENTRIES`` and more, for choosing settings) or ``train``. The families beyond the
named ones are put in a seeded random order and dealt to ``test`` and ``valid`` until each
holds ``TEST_SHARE`` and ``VALID_SHARE`` of the residues; a family holding more than
``LARGE_FAMILY`` of all residues (a ribosome, whose chains all share one family) always
goes to ``train``, so that no single complex dominates a held-out split.

The file holds, concatenated over chains in a fixed order, the backbone ``coords_q``
(N_res, 3, 3) int32: atoms N, CA, C in units of 0.01 Å (the PDB format's 0.001 Å is
finer than any structure's accuracy), as differences from the previous atom of the chain
so that they compress well (decode with :func:`decode_coords`), and ``res_id`` (N_res,);
and per chain ``entry``, ``chain``, ``sequence``, ``length``, ``family`` and ``split``.
The manifest lists each entry's source file, package, version, PDB id and licence.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["SAME_FAMILY", "TEST_ENTRIES", "VALID_ENTRIES", "LINK_SCORE", "LINK_IDENTITY",
           "REDUNDANT_IDENTITY", "MIN_LENGTH", "MAX_LENGTH", "TEST_SHARE", "VALID_SHARE",
           "LARGE_FAMILY", "COORD_SCALE", "read_chains", "families", "encode_coords", "decode_coords", "derive",
           "main"]

# The README's homolog groups: c-type lysozymes and α-lactalbumin; HIV-1 protease.
SAME_FAMILY = (("1aki", "2nwd", "1hml"), ("1k6p", "1hvr"))
# Held out for the final comparison (never used for choices), and for choosing settings.
TEST_ENTRIES = ("1aki", "2nwd", "1hml", "1k6p", "1hvr", "1mol")
VALID_ENTRIES = ("1gya", "2ofg", "3o5r", "4i39")
# A local-alignment score this high links two chains as homologs. Unrelated chains in the
# first 27 entries score below 40; the lowest score that links real homologs there is 230
# (hen lysozyme vs α-lactalbumin). 60 is deliberately low: a spurious link only merges two
# families, which is harmless for the split.
LINK_SCORE = 60
LINK_IDENTITY = 0.40
REDUNDANT_IDENTITY = 0.95
MIN_LENGTH, MAX_LENGTH = 30, 600
TEST_SHARE, VALID_SHARE = 0.18, 0.10
LARGE_FAMILY = 0.04  # of all residues: such a family always trains
SPLIT_SEED = 0
COORD_SCALE = 100  # stored units per Å

_SUFFIXES = (".pdb", ".cif", ".bcif")


def read_chains(source_dir: Path, *, log=print) -> list[dict]:
    """Every amino-acid chain the loader accepts, in sorted file order, as dicts."""
    import biotite.structure as struc

    from ..structure import _read_first_model, backbone_from_atoms

    chains = []
    for path in sorted(p for p in Path(source_dir).iterdir() if p.suffix.lower() in _SUFFIXES):
        entry = path.stem.lower()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # biotite's notes on guessed elements and fallbacks
                atoms = _read_first_model(path)
        except Exception as err:  # a file the reader cannot parse is reported, not fatal
            log(f"skip {path.name}: {err}")
            continue
        aa = atoms[struc.filter_amino_acids(atoms)]
        for chain_id in dict.fromkeys(aa.chain_id.tolist()):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    bb = backbone_from_atoms(atoms, chain_id, on_incomplete="drop")
            except ValueError as err:
                log(f"skip {path.name} chain {chain_id}: {err}")
                continue
            coords = bb.coords().numpy().astype(np.float32)
            if not np.isfinite(coords).all():
                log(f"skip {path.name} chain {chain_id}: non-finite coordinates")
                continue
            if not MIN_LENGTH <= len(coords) <= MAX_LENGTH:
                log(f"skip {path.name} chain {chain_id}: {len(coords)} residues, outside "
                    f"[{MIN_LENGTH}, {MAX_LENGTH}]")
                continue
            if bb.sequence.count("X") > 0.1 * len(coords):
                log(f"skip {path.name} chain {chain_id}: mostly non-standard residues")
                continue
            chains.append({"entry": entry, "chain": str(chain_id), "sequence": bb.sequence, "coords": coords,
                           "res_id": np.asarray(bb.res_ids, dtype=np.int32), "source": str(path)})
    return chains


def _similarity(a, b, matrix) -> tuple[int, float]:
    """(local-alignment score, identity over the shorter sequence)."""
    from biotite.sequence.align import align_optimal

    alignment = align_optimal(a, b, matrix, gap_penalty=(-10, -1), local=True, max_number=1)[0]
    if alignment.score <= 0:
        return alignment.score, 0.0
    shorter = min(len(a), len(b))
    trace = alignment.trace
    both = (trace[:, 0] >= 0) & (trace[:, 1] >= 0)
    same = sum(a[i] == b[j] for i, j in trace[both])
    return alignment.score, same / shorter


def families(chains: list[dict], *, link_score: int = LINK_SCORE, link_identity: float = LINK_IDENTITY,
             same_family=SAME_FAMILY, redundant: float | None = None) -> list[int]:
    """A family number per chain: connected components of homology links (see the module
    docstring). With ``redundant`` set, a chain that is at least that identical to an
    earlier chain gets the family −1 (to be dropped)."""
    from biotite.sequence import ProteinSequence
    from biotite.sequence.align import SubstitutionMatrix

    n = len(chains)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        parent[find(i)] = find(j)

    by_entry: dict[str, list[int]] = {}
    for i, c in enumerate(chains):
        by_entry.setdefault(c["entry"], []).append(i)
    for members in by_entry.values():
        for i in members[1:]:
            union(i, members[0])
    for group in same_family:
        present = [by_entry[e][0] for e in group if e in by_entry]
        for i in present[1:]:
            union(i, present[0])
    matrix = SubstitutionMatrix.std_protein_matrix()
    seqs = [ProteinSequence(c["sequence"].replace("X", "")) for c in chains]
    dropped = [False] * n
    for i in range(n):
        for j in range(i + 1, n):
            if dropped[j] or (redundant is None and find(i) == find(j)):
                continue
            if chains[i]["sequence"] == chains[j]["sequence"]:
                score, identity = 1_000_000, 1.0
            else:
                score, identity = _similarity(seqs[i], seqs[j], matrix)
            if score >= link_score or identity >= link_identity:
                union(i, j)
            if redundant is not None and identity >= redundant and not dropped[i]:
                dropped[j] = True
    roots = {}
    out = []
    for i in range(n):
        f = roots.setdefault(find(i), len(roots))
        out.append(-1 if dropped[i] else f)
    return out


def encode_coords(coords: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N_res, 3, 3) Å → int32 differences of atoms in 0.01 Å, restarting at each chain."""
    q = np.rint(np.asarray(coords, dtype=np.float64) * COORD_SCALE).astype(np.int64).reshape(-1, 3)
    delta = np.diff(q, axis=0, prepend=np.zeros((1, 3), dtype=np.int64))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) * 3
    delta[starts] = q[starts]
    return delta.astype(np.int32).reshape(-1, 3, 3)


def decode_coords(coords_q: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_coords`: (N_res, 3, 3) float32 Å."""
    delta = np.asarray(coords_q, dtype=np.int64)
    out = np.empty(delta.shape, dtype=np.float32)
    start = 0
    for n in np.asarray(lengths).tolist():
        atoms = delta[start:start + n].reshape(-1, 3).cumsum(0)
        out[start:start + n] = (atoms / COORD_SCALE).reshape(-1, 3, 3)
        start += n
    return out


def _deal_splits(chains, fam, test_entries, valid_entries) -> list[str]:
    split_of_family: dict[int, str] = {}
    for c, f in zip(chains, fam):
        if c["entry"] in test_entries:
            split_of_family[f] = "test"
    for c, f in zip(chains, fam):
        if c["entry"] in valid_entries and f not in split_of_family:
            split_of_family[f] = "valid"
    size: dict[int, int] = {}
    name: dict[int, str] = {}
    for c, f in zip(chains, fam):
        size[f] = size.get(f, 0) + len(c["sequence"])
        name[f] = min(name.get(f, c["entry"]), c["entry"])
    total = sum(size.values())
    held = {s: sum(n for f, n in size.items() if split_of_family.get(f) == s) for s in ("test", "valid")}
    # a seeded order of the families by their first entry's name: reproducible, and not by size
    rest = sorted((f for f in size if f not in split_of_family), key=lambda f: name[f])
    random.Random(SPLIT_SEED).shuffle(rest)
    for f in rest:
        if size[f] > LARGE_FAMILY * total:  # one complex must not dominate a held-out split
            split_of_family[f] = "train"
        elif held["test"] < TEST_SHARE * total:
            split_of_family[f] = "test"
        elif held["valid"] < VALID_SHARE * total:
            split_of_family[f] = "valid"
        else:
            split_of_family[f] = "train"
        if split_of_family[f] != "train":
            held[split_of_family[f]] += size[f]
    return [split_of_family[f] for f in fam]


def derive(source_dirs, out_path, *, test_entries=TEST_ENTRIES, valid_entries=VALID_ENTRIES,
           manifest_path=None, log=print) -> dict[str, np.ndarray]:
    """Read, group and split the chains; write the ``.npz`` to ``out_path``; return its arrays."""
    from ..structure import ubiquitin

    if isinstance(source_dirs, (str, Path)):
        source_dirs = [source_dirs]
    chains, earlier = [], set()
    for d in source_dirs:
        here = read_chains(Path(d), log=log)
        for c in here:
            if c["entry"] in earlier:
                log(f"skip {c['source']}: entry {c['entry']} was read from an earlier folder")
            else:
                chains.append(c)
        earlier |= {c["entry"] for c in here}
    if not chains:
        raise ValueError(f"source_dirs {[str(d) for d in source_dirs]!r} hold no readable chain")
    ubq = ubiquitin()
    probe = {"entry": "__ubiquitin__", "chain": "A", "sequence": ubq.sequence}
    fam = families([probe, *chains], redundant=REDUNDANT_IDENTITY)
    ubq_family, fam = fam[0], fam[1:]
    keep = [i for i, f in enumerate(fam) if f >= 0 and f != ubq_family]
    from biotite.sequence import ProteinSequence
    from biotite.sequence.align import SubstitutionMatrix

    matrix, ubq_seq = SubstitutionMatrix.std_protein_matrix(), ProteinSequence(ubq.sequence)
    for i, f in enumerate(fam):
        if f < 0 and _similarity(ProteinSequence(chains[i]["sequence"].replace("X", "")), ubq_seq,
                                 matrix)[1] >= REDUNDANT_IDENTITY:
            fam[i] = ubq_family  # a copy of ubiquitin is reported as what it is
    for i, f in enumerate(fam):
        if f < 0:
            log(f"drop {chains[i]['entry']} chain {chains[i]['chain']}: redundant (>= "
                f"{REDUNDANT_IDENTITY:.0%} identical to an earlier chain)")
        elif f == ubq_family:
            log(f"drop {chains[i]['entry']} chain {chains[i]['chain']}: homologous to ubiquitin")
    chains = [chains[i] for i in keep]
    renumber: dict[int, int] = {}
    fam = [renumber.setdefault(fam[i], len(renumber)) for i in keep]
    split = _deal_splits(chains, fam, test_entries, valid_entries)
    lengths = np.array([len(c["sequence"]) for c in chains], dtype=np.int32)
    coords = np.concatenate([c["coords"] for c in chains])
    arrays = {
        "coords_q": encode_coords(coords, lengths),
        "res_id": np.concatenate([c["res_id"] for c in chains]),
        "entry": np.array([c["entry"] for c in chains]),
        "chain": np.array([c["chain"] for c in chains]),
        "sequence": np.array([c["sequence"] for c in chains]),
        "length": lengths,
        "family": np.array(fam, dtype=np.int32),
        "split": np.array(split),
    }
    np.savez_compressed(out_path, **arrays)
    for name in ("train", "valid", "test"):
        sel = arrays["split"] == name
        log(f"{name}: {int(sel.sum())} chains, {len(set(arrays['family'][sel].tolist()))} families, "
            f"{int(arrays['length'][sel].sum())} residues, "
            f"entries {' '.join(sorted(set(arrays['entry'][sel].tolist())))}")
    if manifest_path is not None:
        _write_manifest(manifest_path, source_dirs, chains, split, out_path)
    return arrays


def _write_manifest(manifest_path, source_dirs, chains, split, out_path) -> None:
    """Each entry in the file: its chains, split, and where it came from."""
    staged = {}
    for d in source_dirs:
        m = Path(d) / "manifest.json"
        if m.is_file():
            for row in json.loads(m.read_text()):
                if row["status"] == "staged":
                    staged[row["pdb_id"]] = row
    entries: dict[str, dict] = {}
    for c, s in zip(chains, split):
        e = entries.get(c["entry"])
        if e is None:
            row = staged.get(c["entry"])
            if row is None:
                source = {"source": "the project's data folder (shared/data/structures)",
                          "file": Path(c["source"]).name, "package": None, "version": None,
                          "licence": "PDB entry: CC0 1.0 public domain (wwPDB)"}
            else:
                source = {k: row[k] for k in ("file", "package", "version", "archive", "archive_sha256",
                                              "licence")}
            pdb_id = c["entry"] if row is not None or c["entry"][0].isdigit() else {"adk_open": "4ake"}.get(
                c["entry"])
            e = entries[c["entry"]] = {"entry": c["entry"], "pdb_id": pdb_id, "split": s, "chains": [],
                                       "residues": 0, **source}
        e["chains"].append(c["chain"])
        e["residues"] += len(c["sequence"])
    out = Path(out_path)
    manifest = {"file": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                "command": "see geoattn.devtools.derive_structures (module docstring)",
                "entries": list(entries.values())}
    Path(manifest_path).write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, nargs="+", help="folders of .pdb/.cif/.bcif files")
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--manifest", type=Path, default=None, help="the manifest (JSON) to write")
    args = parser.parse_args(argv)
    derive(args.source_dir, args.out, manifest_path=args.manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
