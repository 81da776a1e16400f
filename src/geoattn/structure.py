"""Protein backbones: read N, CA, C coordinates from a structure file (chapter 3).

A :class:`Backbone` holds the three backbone atoms of every amino-acid residue of one
chain, in Å, and builds the residues' rigid frames with
:func:`geoattn.frames.frames_from_backbone`. Files are read with biotite
(``.pdb``, ``.cif``/``.mmcif``, ``.bcif``): the first model, amino-acid residues only,
and for atoms with alternate locations the first one.

A residue that lacks N, CA or C raises a ``ValueError`` naming it (e.g. "residue LYS 48
of chain A lacks atom CA"): a residue without all three has no frame, and silently
dropping it would shift every later residue index.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .frames import frames_from_backbone

__all__ = [
    "Backbone",
    "load_backbone",
    "backbone_from_atoms",
    "ubiquitin",
    "fetch_backbone",
    "ca_distances",
    "ca_contact_map",
]

_BACKBONE_ATOMS = ("N", "CA", "C")


@dataclass(frozen=True, eq=False)
class Backbone:
    """The N, CA, C atoms of one protein chain, each an ``(L, 3)`` tensor in Å."""

    n: Tensor
    ca: Tensor
    c: Tensor
    res_names: tuple[str, ...]
    res_ids: tuple[int, ...]
    chain_id: str

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

    def __len__(self) -> int:
        return self.ca.shape[0]

    def __repr__(self) -> str:
        return f"Backbone(chain {self.chain_id!r}, {len(self)} residues, {self.ca.dtype})"

    def frames(self) -> tuple[Tensor, Tensor]:
        """Each residue's frame ``(rotations (L, 3, 3), translations (L, 3))``, ESM3's convention."""
        return frames_from_backbone(self.n, self.ca, self.c)

    def coords(self) -> Tensor:
        """The atoms as one ``(L, 3, 3)`` tensor, atoms ordered N, CA, C (ESM's layout)."""
        return torch.stack([self.n, self.ca, self.c], dim=-2)

    @property
    def sequence(self) -> str:
        """One-letter sequence; residues without a standard one-letter code read ``X``."""
        from biotite.sequence import ProteinSequence

        def one(name: str) -> str:
            try:
                return ProteinSequence.convert_letter_3to1(name)
            except KeyError:
                return "X"

        return "".join(one(r) for r in self.res_names)


def backbone_from_atoms(atoms, chain: str | None = None, *, dtype: torch.dtype = torch.float32) -> Backbone:
    """A :class:`Backbone` from a biotite ``AtomArray`` (one model).

    Keeps amino-acid residues only; ``chain=None`` takes the first chain that has any.
    """
    import biotite.structure as struc

    if not isinstance(atoms, struc.AtomArray):
        raise ValueError(f"atoms must be a biotite AtomArray (a single model), got {type(atoms).__name__}")
    atoms = atoms[struc.filter_amino_acids(atoms)]
    chains = list(dict.fromkeys(atoms.chain_id.tolist()))  # in file order, unique
    if not chains:
        raise ValueError("the structure contains no amino-acid residues")
    if chain is None:
        chain = chains[0]
    elif chain not in chains:
        raise ValueError(f"chain {chain!r} not found; chains with amino acids: {', '.join(chains)}")
    atoms = atoms[atoms.chain_id == chain]

    coords = {name: [] for name in _BACKBONE_ATOMS}
    res_names, res_ids = [], []
    for residue in struc.residue_iter(atoms):
        name, rid, ins = residue.res_name[0], int(residue.res_id[0]), residue.ins_code[0]
        for atom in _BACKBONE_ATOMS:
            hits = residue.coord[residue.atom_name == atom]
            if len(hits) == 0:
                raise ValueError(f"residue {name} {rid}{ins} of chain {chain} lacks atom {atom}")
            coords[atom].append(hits[0])
        res_names.append(str(name))
        res_ids.append(rid)
    n, ca, c = (torch.as_tensor(np.asarray(coords[a], dtype=np.float64), dtype=dtype) for a in _BACKBONE_ATOMS)
    return Backbone(n=n, ca=ca, c=c, res_names=tuple(res_names), res_ids=tuple(res_ids), chain_id=str(chain))


def _read_first_model(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".gz":
        raise ValueError(f"source {str(path)!r}: decompress .gz files first")
    if suffix in (".pdb", ".ent"):
        from biotite.structure.io import pdb

        return pdb.PDBFile.read(str(path)).get_structure(model=1, altloc="first")
    if suffix in (".cif", ".mmcif", ".bcif"):
        from biotite.structure.io import pdbx

        reader = pdbx.BinaryCIFFile if suffix == ".bcif" else pdbx.CIFFile
        return pdbx.get_structure(reader.read(str(path)), model=1, altloc="first")
    raise ValueError(f"source {str(path)!r}: unknown format {suffix!r}; use .pdb, .cif or .bcif")


def load_backbone(source: str | os.PathLike, chain: str | None = None, *,
                  dtype: torch.dtype = torch.float32) -> Backbone:
    """Read one chain's backbone from a ``.pdb``, ``.cif`` or ``.bcif`` file.

    First model only; amino-acid residues only (waters and ligands are skipped); the
    first alternate location of each atom; ``chain=None`` picks the first chain.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"source must be a file path, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"source {str(path)!r} is not a file")
    return backbone_from_atoms(_read_first_model(path), chain, dtype=dtype)


def ubiquitin(*, dtype: torch.dtype = torch.float32) -> Backbone:
    """Ubiquitin (PDB 1UBQ, 76 residues, 1.8 Å; Vijay-Kumar et al. 1987), shipped with geoattn."""
    with resources.as_file(resources.files("geoattn") / "data" / "1ubq.pdb") as path:
        return load_backbone(path, "A", dtype=dtype)


_PDB_ID = re.compile(r"^([0-9][A-Za-z0-9]{3}|pdb_[0-9]{4}[0-9][A-Za-z0-9]{3})$")


def fetch_backbone(pdb_id: str, chain: str | None = None, *, dtype: torch.dtype = torch.float32) -> Backbone:
    """Download an entry from the RCSB PDB (needs internet, e.g. on Colab) and load it.

    Fetches the binary mmCIF into a temporary directory, which is removed afterwards.
    """
    if not isinstance(pdb_id, str) or not _PDB_ID.match(pdb_id):
        raise ValueError(f"pdb_id must be a PDB ID such as '1UBQ', got {pdb_id!r}")
    from biotite.database import rcsb

    with tempfile.TemporaryDirectory() as tmp:
        path = rcsb.fetch(pdb_id, "bcif", target_path=tmp)
        return load_backbone(path, chain, dtype=dtype)


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
