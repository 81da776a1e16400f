"""Protein backbones: read N, CA, C coordinates from a structure file (chapter 3).

A :class:`Backbone` holds the three backbone atoms of every amino-acid residue of one
chain, in Å, and builds the residues' rigid frames with
:func:`geoattn.frames.frames_from_backbone`. Files are read with biotite
(``.pdb``, ``.cif``/``.mmcif``, ``.bcif``): the first model, the chain's polymer
amino-acid residues only (waters, ligands and free amino acids are skipped), and for
atoms with alternate locations the first one.

Residues are named as the file names them: chain, number, insertion code and residue
name ("residue TYR 184A of chain A"), never by a position in a tensor.

Files written by molecular-dynamics programs name residues by the force field: HIE or HSD
for a histidine by its protonation, CYX for a disulfide cysteine, NALA for an N-terminal
alanine (:data:`FORCE_FIELD_RESIDUES`). Such residues are amino acids like any other, and
their one-letter code is the parent's (``sequence``). A residue of the chain that has N, CA
and C but a name neither the Chemical Component Dictionary nor that table knows is kept as
well, with the code ``X``: a residue with a backbone is never dropped without a word. Caps
(ACE, NME, NHE) have no CA, so they are no residues. The names HSE and GLH mean CHARMM's and
AMBER's histidine and glutamate in ATOM records, and the CCD's homoserine and glutamine
derivative in HETATM records, where the PDB writes such compounds.

Programs of the CHARMM family leave the chain id blank and tell proteins apart by segment
(columns 73-76 of a PDB file). A chain is read one segment at a time: ``segment=None``
takes the chain's first, like ``chain=None`` takes the first chain, and errors list the
segments there are.

A residue that lacks N, CA or C has no frame. ``on_incomplete`` says what happens:
``"raise"`` (the default) raises a ``ValueError`` naming the residue; ``"drop"`` leaves
it out (``res_ids`` and ``ins_codes`` still say which residues remain); ``"mask"`` keeps
it with NaN for the missing atoms and ``mask`` False: ``backbone.mask[None]`` is the
``mask`` that :class:`~geoattn.GeometricSelfAttention` takes, and
``backbone.frames(missing="average")`` gives it ESM's placeholder frame.

A damaged or mislabelled file (empty, truncated, binary, gzip- or BinaryCIF content
under a text name, short or unparsable coordinate records) raises a ``ValueError`` that
names the file, and the line when it is known.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .frames import degenerate_residues, frames_from_backbone
from .validation import require_bool_mask, require_dtype_arg

__all__ = [
    "Backbone",
    "load_backbone",
    "backbone_from_atoms",
    "ubiquitin",
    "fetch_backbone",
    "ca_distances",
    "ca_contact_map",
    "FORCE_FIELD_RESIDUES",
]

_BACKBONE_ATOMS = ("N", "CA", "C")

_STANDARD = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS",
             "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
# The force fields' own names for protonation states, disulfides and termini, each with its
# parent amino acid. The CCD, and so biotite's amino-acid filter, lacks most of them, so
# without this table such residues were dropped from the middle of a chain. Sources:
# - AMBER (ff14SB/ff19SB residue libraries; AmberTools Reference Manual, "protein force
#   fields"): HID HIE HIP, CYX (disulfide), CYM (thiolate), ASH GLH LYN (neutral), AS4 GL4
#   (constant pH), and the terminal forms N + name, C + name (aminont12.lib, aminoct12.lib).
# - CHARMM36 (top_all36_prot.rtf and its patches, as CHARMM-GUI writes them): HSD HSE HSP,
#   LSN (neutral lysine), ASPP GLUP (protonated).
# - GROMOS 43a1/54a7 and OPLS-AA/L as GROMACS ships them (share/top/*.ff/aminoacids.rtp,
#   listed in share/top/residuetypes.dat): HISA HISB HISH HISD HISE HISP HIS1, CYS1 CYS2
#   CYSH, ASPH GLUH LYSH ARGN.
# - OpenMM's app/data/pdbNames.xml: HIH and HSH, further histidine names.
_VARIANTS = {
    "HIS": ("HID", "HIE", "HIP", "HSD", "HSE", "HSP", "HISA", "HISB", "HISH", "HISD", "HISE",
            "HISP", "HIS1", "HIH", "HSH"),
    "CYS": ("CYX", "CYM", "CYS1", "CYS2", "CYSH"),
    "ASP": ("ASH", "AS4", "ASPH", "ASPP"),
    "GLU": ("GLH", "GL4", "GLUH", "GLUP"),
    "LYS": ("LYN", "LSN", "LYSH"),
    "ARG": ("ARGN",),
}
_AMBER_TERMINAL = (*_STANDARD, "HID", "HIE", "HIP", "CYX")
#: Force-field residue name -> the parent amino acid's three-letter code.
FORCE_FIELD_RESIDUES: dict[str, str] = {v: parent for parent, names in _VARIANTS.items() for v in names}
FORCE_FIELD_RESIDUES.update({end + name: FORCE_FIELD_RESIDUES.get(name, name)
                             for name in _AMBER_TERMINAL for end in "NC"})
# Names the CCD gives to other compounds: read so only in HETATM records, as the PDB writes
# non-standard residues (HSE homoserine, GLH a glutamine derivative); MD programs write ATOM.
_CCD_MEANS_OTHER = {"HSE": "SER", "GLH": "GLN"}
_COORD_DTYPES = (torch.float32, torch.float64)
_ON_INCOMPLETE = ("raise", "drop", "mask")
_PEPTIDE_BOND = 2.0  # Å; a C–N peptide bond is 1.33 Å, free amino acids sit far further


def _chain_label(chain: str, segment: str = "") -> str:
    if segment.strip():
        return f"segment {segment} of chain {chain}" if chain.strip() else f"segment {segment}"
    return f"chain {chain}" if chain.strip() else "the chain without an id"


def _residue_label(name: str, res_id: int, ins_code: str, chain: str, segment: str = "") -> str:
    return f"residue {name} {res_id}{ins_code} of {_chain_label(chain, segment)}"


def _one_letter(name: str, hetero: bool = False) -> str:
    """The one-letter code of a residue name: a force field's variant reads as its parent."""
    from biotite.sequence import ProteinSequence

    parent = _CCD_MEANS_OTHER[name] if hetero and name in _CCD_MEANS_OTHER else FORCE_FIELD_RESIDUES.get(name, name)
    try:
        return ProteinSequence.convert_letter_3to1(parent)
    except KeyError:
        return "X"


@dataclass(frozen=True, eq=False)
class Backbone:
    """The N, CA, C atoms of one protein chain, each an ``(L, 3)`` tensor in Å.

    ``res_ids`` and ``ins_codes`` ("" where the file has none) identify each residue as
    the file does; together they are unique. ``mask`` (L,) bool is True where the residue
    has all three atoms (False only when loaded with ``on_incomplete="mask"``; the
    missing atoms are NaN there). ``segment_id`` is the segment the chain was read from
    ("" where the file has none). ``codes`` holds each residue's one-letter code when the
    loader decided it (see ``sequence``); None derives them from ``res_names``.
    """

    n: Tensor
    ca: Tensor
    c: Tensor
    res_names: tuple[str, ...]
    res_ids: tuple[int, ...]
    chain_id: str
    ins_codes: tuple[str, ...] | None = None
    mask: Tensor | None = None
    segment_id: str = ""
    codes: str | None = None

    def __post_init__(self):
        for name in ("n", "ca", "c"):
            x = getattr(self, name)
            if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != 3:
                raise ValueError(f"{name} must be an (L, 3) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        L = self.ca.shape[0]
        if self.n.shape != self.ca.shape or self.c.shape != self.ca.shape:
            raise ValueError(f"n, ca and c must have the same shape, got {tuple(self.n.shape)}, "
                             f"{tuple(self.ca.shape)}, {tuple(self.c.shape)}")
        if len(self.res_names) != L:
            raise ValueError(f"res_names must have one name per residue ({L}), got {len(self.res_names)}")
        if len(self.res_ids) != L:
            raise ValueError(f"res_ids must have one id per residue ({L}), got {len(self.res_ids)}")
        if self.ins_codes is None:
            object.__setattr__(self, "ins_codes", ("",) * L)
        if len(self.ins_codes) != L:
            raise ValueError(f"ins_codes must have one code per residue ({L}), got {len(self.ins_codes)}")
        seen = {}
        for i, key in enumerate(zip(self.res_ids, self.ins_codes)):
            if key in seen:
                raise ValueError(f"res_ids and ins_codes must identify each residue once: "
                                 f"{key[0]}{key[1]} appears at positions {seen[key]} and {i}")
            seen[key] = i
        if self.mask is None:
            object.__setattr__(self, "mask", torch.ones(L, dtype=torch.bool, device=self.ca.device))
        require_bool_mask("mask", self.mask, (L,), "(L,)", meaning="True = has N, CA and C")
        if self.codes is not None and len(self.codes) != L:
            raise ValueError(f"codes must have one letter per residue ({L}), got {len(self.codes)}")

    def __len__(self) -> int:
        return self.ca.shape[0]

    def __repr__(self) -> str:
        masked = int((~self.mask).sum())
        extra = f" ({masked} masked)" if masked else ""
        segment = f", segment {self.segment_id!r}" if self.segment_id else ""
        return f"Backbone(chain {self.chain_id!r}{segment}, {len(self)} residues{extra}, {self.ca.dtype})"

    def label(self, i: int) -> str:
        """Residue ``i`` named as the file names it, e.g. "residue TYR 184A of chain A"."""
        return _residue_label(self.res_names[i], self.res_ids[i], self.ins_codes[i], self.chain_id,
                              self.segment_id)

    def frames(self, *, missing: str = "raise") -> tuple[Tensor, Tensor]:
        """Each residue's frame ``(rotations (L, 3, 3), translations (L, 3))``, ESM3's convention.

        Masked residues (no N, CA or C) raise with ``missing="raise"``; with
        ``missing="average"`` they get ESM's placeholder frame
        (:func:`~geoattn.frames.frames_from_backbone`). Either way a residue whose atoms
        coincide or are collinear raises, named as the file names it.
        """
        if missing == "raise" and not self.mask.all():
            i = int((~self.mask).nonzero()[0])
            raise ValueError(f"{self.label(i)} has no frame: it lacks a backbone atom (masked); "
                             "use frames(missing='average') and pass the mask to the layer")
        bad = degenerate_residues(self.n, self.ca, self.c) & self.mask
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"{self.label(i)} has no frame: its N, CA, C coincide or are collinear")
        return frames_from_backbone(self.n, self.ca, self.c, missing=missing)

    def coords(self) -> Tensor:
        """The atoms as one ``(L, 3, 3)`` tensor, atoms ordered N, CA, C (ESM's layout)."""
        return torch.stack([self.n, self.ca, self.c], dim=-2)

    @property
    def sequence(self) -> str:
        """One-letter sequence; residues without a standard one-letter code read ``X``.

        A force field's name for a protonation state, disulfide or terminus reads as its
        parent amino acid (HIE, HSD: H; CYX: C; NALA: A; :data:`FORCE_FIELD_RESIDUES`).
        """
        if self.codes is not None:
            return self.codes
        return "".join(_one_letter(r) for r in self.res_names)


def _polymer_residues(atoms, starts: np.ndarray) -> np.ndarray:
    """Which residues (given by their first atoms) belong to the chain's polymer.

    Residues written as ATOM records do; so do HETATM residues between two of them
    (modified residues such as MSE). A HETATM residue before the first or after the
    last ATOM residue (a free amino acid listed after the chain, say) belongs only if a
    peptide bond links it to its polymer neighbour.
    """
    hetero = atoms.hetero[starts]
    keep = ~hetero
    if not keep.any():
        return keep
    first, last = np.flatnonzero(keep)[[0, -1]]
    keep[first:last + 1] = True
    ends = np.append(starts[1:], len(atoms))

    def atom(i: int, name: str):
        hits = atoms.coord[starts[i]:ends[i]][atoms.atom_name[starts[i]:ends[i]] == name]
        return hits[0] if len(hits) else None

    def bonded(i: int, j: int) -> bool:  # C of residue i to N of residue j
        c, n = atom(i, "C"), atom(j, "N")
        return c is not None and n is not None and float(np.linalg.norm(c - n)) < _PEPTIDE_BOND

    for i in range(last + 1, len(starts)):
        if not bonded(i - 1, i):
            break
        keep[i] = True
    for i in range(first - 1, -1, -1):
        if not bonded(i, i + 1):
            break
        keep[i] = True
    return keep


def _amino_acid_residues(atoms) -> np.ndarray:
    """Per atom: whether its residue may be an amino acid of a chain.

    The CCD's amino acids (biotite's filter), the force fields' names for them, and any
    other residue with atoms N, CA and C: an unfamiliar name must not lose a residue that
    has a backbone. Which of them belong to the chain's polymer is decided afterwards.
    """
    import biotite.structure as struc

    keep = struc.filter_amino_acids(atoms) | np.isin(atoms.res_name, list(FORCE_FIELD_RESIDUES))
    bounds = struc.get_residue_starts(atoms, add_exclusive_stop=True)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if not keep[a] and set(_BACKBONE_ATOMS) <= set(atoms.atom_name[a:b].tolist()):
            keep[a:b] = True
    return keep


def _segments(atoms) -> np.ndarray:
    if "segment_id" in atoms.get_annotation_categories():
        return np.asarray(atoms.segment_id, dtype=str)
    return np.full(len(atoms), "", dtype=str)


def backbone_from_atoms(atoms, chain: str | None = None, *, segment: str | None = None,
                        dtype: torch.dtype = torch.float32, on_incomplete: str = "raise") -> Backbone:
    """A :class:`Backbone` from a biotite ``AtomArray`` (one model).

    Keeps the polymer amino-acid residues of one chain (see :func:`load_backbone`);
    ``chain=None`` takes the first chain that has any. Where the array has a
    ``segment_id`` annotation, ``segment`` chooses one of the chain's segments, and
    ``segment=None`` takes its first.
    """
    import biotite.structure as struc

    if not isinstance(atoms, struc.AtomArray):
        raise TypeError(f"atoms must be a biotite AtomArray (a single model), got {type(atoms).__name__}")
    for name, value in (("chain", chain), ("segment", segment)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    require_dtype_arg("dtype", dtype, _COORD_DTYPES)
    if on_incomplete not in _ON_INCOMPLETE:
        raise ValueError(f"on_incomplete must be one of {', '.join(map(repr, _ON_INCOMPLETE))}, "
                         f"got {on_incomplete!r}")
    atoms = atoms[_amino_acid_residues(atoms)]
    segments = _segments(atoms)
    units = list(dict.fromkeys(zip(atoms.chain_id.tolist(), segments.tolist())))  # in file order
    chains = list(dict.fromkeys(c for c, _ in units))
    if not chains:
        raise ValueError("the structure contains no amino-acid residues")
    if chain is not None:
        if chain not in chains:
            raise ValueError(f"chain {chain!r} not found; chains with amino acids: {', '.join(chains)}")
        units = [u for u in units if u[0] == chain]
    if segment is not None:
        picked = [u for u in units if u[1] == segment]
        if not picked:
            where = f" in {_chain_label(chain)}" if chain is not None else ""
            have = ", ".join(dict.fromkeys(repr(sg) for _, sg in units))
            raise ValueError(f"segment {segment!r} not found{where}; segments with amino acids: {have}")
        units = picked
    chain, segment = units[0]
    atoms = atoms[(atoms.chain_id == chain) & (_segments(atoms) == segment)]
    starts = struc.get_residue_starts(atoms)
    polymer = _polymer_residues(atoms, starts)
    ends = np.append(starts[1:], len(atoms))

    coords, res_names, res_ids, ins_codes, complete, codes = [], [], [], [], [], []
    seen: dict[tuple[int, str], tuple[int, str]] = {}
    incomplete = []
    for k in np.flatnonzero(polymer):
        res = atoms[starts[k]:ends[k]]
        name, rid, ins = str(res.res_name[0]), int(res.res_id[0]), str(res.ins_code[0])
        label = _residue_label(name, rid, ins, chain, segment)
        if (rid, ins) in seen:
            prev_k, prev_name = seen[(rid, ins)]
            if prev_name == name:
                between = atoms[starts[prev_k + 1]]
                raise ValueError(f"{label} is split: its atoms are not contiguous in the file "
                                 f"(residue {between.res_name} {between.res_id}{between.ins_code} "
                                 "lies between its parts)")
            raise ValueError(f"{label} and residue {prev_name} {rid}{ins} share one number and "
                             "insertion code")
        seen[(rid, ins)] = (k, name)
        xyz, lacks = [], []
        for a in _BACKBONE_ATOMS:
            hits = res.coord[res.atom_name == a]
            xyz.append(hits[0] if len(hits) else np.full(3, np.nan))
            if not len(hits):
                lacks.append(a)
        if lacks:
            incomplete.append(f"{label} lacks atom{'s' if len(lacks) > 1 else ''} {', '.join(lacks)}")
            if on_incomplete == "drop":
                continue
        coords.append(xyz)
        res_names.append(name), res_ids.append(rid), ins_codes.append(ins), complete.append(not lacks)
        codes.append(_one_letter(name, hetero=bool(res.hetero[0])))
    if incomplete and on_incomplete == "raise":
        more = f" (and {len(incomplete) - 1} more incomplete residues)" if len(incomplete) > 1 else ""
        raise ValueError(f"{incomplete[0]}{more}; load with on_incomplete='drop' or 'mask' to "
                         "leave such residues out or mask them")
    if not coords:
        raise ValueError(f"no residue of {_chain_label(chain, segment)} has all of N, CA and C")
    xyz = torch.as_tensor(np.asarray(coords, dtype=np.float64), dtype=dtype)  # (L, 3 atoms, 3)
    return Backbone(n=xyz[:, 0].clone(), ca=xyz[:, 1].clone(), c=xyz[:, 2].clone(),
                    res_names=tuple(res_names), res_ids=tuple(res_ids), chain_id=str(chain),
                    ins_codes=tuple(ins_codes), mask=torch.tensor(complete, dtype=torch.bool),
                    segment_id=str(segment), codes="".join(codes))


# --- reading files, and refusing damaged ones ---------------------------------------------------

_TEXT_FORMATS = {".pdb": "PDB", ".ent": "PDB", ".cif": "mmCIF", ".mmcif": "mmCIF"}
_PDB_COORDS_END = 66  # biotite reads ATOM records through the B-factor (columns 61-66)


def _sniff(data: bytes) -> str:
    """What the bytes are, whatever the file's name says: gzip, BinaryCIF, text or binary."""
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:1] and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)) and b"dataBlocks" in data[:4096]:
        return "BinaryCIF"
    if b"\x00" in data:
        return "binary"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def _check_pdb_records(path: Path, text: str) -> None:
    """Every ATOM/HETATM record is long enough and has three finite coordinates."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        if len(line.rstrip("\r")) < _PDB_COORDS_END:
            raise ValueError(f"{path}, line {number}: the {line[:6].strip()} record has "
                             f"{len(line.rstrip())} columns; a PDB atom record needs "
                             f"{_PDB_COORDS_END} (coordinates, occupancy, B-factor). "
                             "Truncated, or not a PDB file?")
        field = line[30:54]
        try:
            xyz = [float(field[i:i + 8]) for i in (0, 8, 16)]
        except ValueError:
            raise ValueError(f"{path}, line {number}: coordinates {field.strip()!r} are not numbers "
                             "(a coordinate too large for the PDB format is written ********)") from None
        if not all(np.isfinite(xyz)):
            raise ValueError(f"{path}, line {number}: coordinates {field.strip()!r} are not finite")


def _read_first_model(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".gz":
        raise ValueError(f"{path}: decompress .gz files first")
    if suffix not in (*_TEXT_FORMATS, ".bcif"):
        raise ValueError(f"source {str(path)!r}: unknown format {suffix!r}; use .pdb, .cif or .bcif")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{path}: the file is empty")
    kind = _sniff(data)
    expected = "BinaryCIF" if suffix == ".bcif" else "text"
    if kind == "gzip":
        raise ValueError(f"{path}: the content is gzip-compressed; decompress it first (gunzip)")
    if kind != expected:
        what = _TEXT_FORMATS.get(suffix, "BinaryCIF")
        hint = "; BinaryCIF files end in .bcif" if kind == "BinaryCIF" else ""
        raise ValueError(f"{path}: the content is {kind}, not {what} as the name {suffix!r} says{hint}")
    try:
        if suffix == ".bcif":
            return _read_cif(path, binary=True)
        text = data.decode("utf-8")
        if _TEXT_FORMATS[suffix] == "PDB":
            if text.lstrip().startswith("data_"):
                raise ValueError(f"{path}: the content is mmCIF, not PDB; name it .cif")
            _check_pdb_records(path, text)
            return _read_pdb(path)
        if not re.search(r"^data_", text, re.MULTILINE):
            raise ValueError(f"{path}: no 'data_' block, so not mmCIF (a PDB file? name it .pdb)")
        return _read_cif(path, binary=False)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: cannot read it: {err}") from err
    except Exception as err:  # biotite's InvalidFileError, msgpack and decoding errors, ...
        raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {err})") from err


def _model_one_records(lines: list[str]) -> list[str]:
    """The ATOM/HETATM records of the first model, in file order."""
    records, in_model = [], False
    for line in lines:
        if line.startswith("MODEL"):
            if in_model or records:
                break
            in_model = True
        elif line.startswith("ENDMDL") and (in_model or records):
            break
        elif line.startswith(("ATOM  ", "HETATM")):
            records.append(line)
    return records


def _read_pdb(path: Path):
    """The first model's atoms, with the segment ids and four-letter residue names of MD files.

    biotite reads neither: it takes the residue name from columns 18-20, so NALA (CHARMM
    and GROMACS write four letters, through column 21) became NAL, and it has no segment
    id (columns 73-76), by which CHARMM files with blank chain ids tell proteins apart.
    """
    import biotite.structure as struc
    from biotite.structure.io import pdb

    f = pdb.PDBFile.read(str(path))
    with warnings.catch_warnings():  # MD files leave out the element column; not our concern
        warnings.filterwarnings("ignore", ".*elements were guessed", UserWarning)
        atoms = f.get_structure(model=1, altloc="all")
    records = _model_one_records(f.lines)
    if len(records) == len(atoms):  # one record per atom, in order (altloc="all" keeps all)
        long_names = np.array([ln[17:21].strip() for ln in records])
        if any(len(n) == 4 for n in long_names):
            atoms.res_name = np.where(np.char.str_len(long_names) == 4, long_names, atoms.res_name)
        atoms.set_annotation("segment_id", np.array([ln[72:76].strip() for ln in records]))
    atoms = atoms[struc.filter_first_altloc(atoms, atoms.altloc_id)]
    atoms.del_annotation("altloc_id")
    return atoms


def _read_cif(path: Path, *, binary: bool):
    """The first model's atoms, without non-polymer entities when the file lists them."""
    from biotite.structure.io import pdbx

    f = (pdbx.BinaryCIFFile if binary else pdbx.CIFFile).read(str(path))
    atoms = pdbx.get_structure(f, model=1, altloc="first", extra_fields=["label_entity_id"])
    block = f.block
    if "entity" in block:
        entity = block["entity"]
        polymers = {str(i) for i, t in zip(entity["id"].as_array(str), entity["type"].as_array(str))
                    if t == "polymer"}
        atoms = atoms[np.isin(atoms.label_entity_id, list(polymers))]
    return atoms


def load_backbone(source: str | os.PathLike, chain: str | None = None, *, segment: str | None = None,
                  dtype: torch.dtype = torch.float32, on_incomplete: str = "raise") -> Backbone:
    """Read one chain's backbone from a ``.pdb``, ``.cif`` or ``.bcif`` file.

    First model only; the chain's polymer amino-acid residues only: waters, ligands and
    free amino acids are skipped (in mmCIF by entity type; in PDB files a HETATM residue
    counts only between ATOM residues or peptide-bonded to them). The first alternate
    location of each atom; ``chain=None`` picks the first chain. In PDB files with
    segment ids (columns 73-76, as CHARMM writes them), ``segment`` picks one of the
    chain's segments and ``segment=None`` its first. ``dtype`` is float32 or float64.
    ``on_incomplete`` is ``"raise"``, ``"drop"`` or ``"mask"``: see the module's
    docstring. Errors name the file, and residues as the file names them.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a file path, got {type(source).__name__}")
    require_dtype_arg("dtype", dtype, _COORD_DTYPES)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"source {str(path)!r} is not a file")
    atoms = _read_first_model(path)
    try:
        return backbone_from_atoms(atoms, chain, segment=segment, dtype=dtype, on_incomplete=on_incomplete)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def ubiquitin(*, dtype: torch.dtype = torch.float32) -> Backbone:
    """Ubiquitin (PDB 1UBQ, 76 residues, 1.8 Å; Vijay-Kumar et al. 1987), shipped with geoattn."""
    with resources.as_file(resources.files("geoattn") / "data" / "1ubq.pdb") as path:
        return load_backbone(path, "A", dtype=dtype)


_PDB_ID = re.compile(r"[0-9][A-Za-z0-9]{3}|pdb_[0-9]{4}[0-9][A-Za-z0-9]{3}")


def fetch_backbone(pdb_id: str, chain: str | None = None, *, dtype: torch.dtype = torch.float32,
                   on_incomplete: str = "raise") -> Backbone:
    """Download an entry from the RCSB PDB (needs internet, e.g. on Colab) and load it.

    Fetches the binary mmCIF into a temporary directory, which is removed afterwards.
    Without a connection it raises ``ConnectionError``: download the file another way
    and use :func:`load_backbone`.
    """
    if not isinstance(pdb_id, str):
        raise TypeError(f"pdb_id must be a str such as '1UBQ', got {type(pdb_id).__name__}")
    if not _PDB_ID.fullmatch(pdb_id):
        raise ValueError(f"pdb_id must be a PDB ID such as '1UBQ', got {pdb_id!r}")
    require_dtype_arg("dtype", dtype, _COORD_DTYPES)
    from biotite.database import RequestError, rcsb

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = rcsb.fetch(pdb_id, "bcif", target_path=tmp)
        except RequestError as err:
            raise ValueError(f"pdb_id {pdb_id!r}: the RCSB PDB has no such entry ({err})") from err
        except OSError as err:  # requests' ConnectionError and timeouts are OSErrors
            raise ConnectionError(
                f"fetch_backbone({pdb_id!r}) could not reach the RCSB PDB; are you offline? "
                "Download the file another way and call load_backbone(path). "
                f"({type(err).__name__})") from err
        return load_backbone(path, chain, dtype=dtype, on_incomplete=on_incomplete)


def _ca(backbone) -> Tensor:
    ca = backbone.ca if isinstance(backbone, Backbone) else backbone
    if not isinstance(ca, Tensor) or ca.dim() < 2 or ca.shape[-1] != 3:
        raise ValueError(f"backbone must be a Backbone or a (..., L, 3) CA tensor, got {type(backbone).__name__}")
    return ca


def ca_distances(backbone: Backbone | Tensor) -> Tensor:
    r"""All CA–CA distances $D_{ij} = \lVert C_{\alpha,i} - C_{\alpha,j} \rVert$, shape ``(L, L)``."""
    ca = _ca(backbone)
    # Explicit differences (not cdist's matmul trick) keep D_ii exactly 0 and D symmetric.
    return torch.linalg.vector_norm(ca[..., :, None, :] - ca[..., None, :, :], dim=-1)


def ca_contact_map(backbone: Backbone | Tensor, cutoff: float = 8.0) -> Tensor:
    """Bool ``(L, L)``: True where two CA atoms lie within ``cutoff`` Å (the diagonal is True)."""
    if not cutoff > 0:
        raise ValueError(f"cutoff must be a positive distance in Å, got {cutoff}")
    return ca_distances(backbone) <= cutoff
