r"""Inverse folding with geometric attention: predict each residue's amino acid from the
backbone alone (chapter 6).

The data are the chains of ``data/structures.npz`` (derived from public PDB entries by
``python -m geoattn.devtools.derive_structures``, split into train, valid and test by
homolog family). Each residue's input is the sin/cos of its φ, ψ, ω dihedrals
(:mod:`geoattn.dihedrals`) and its backbone frame (:func:`geoattn.frames_from_backbone`).
The model is a stack of :class:`geoattn.GeometricSelfAttention` layers, each followed by an
MLP, and a 20-way classifier. With ``no_geometry=True`` every frame is replaced by the
identity and a zero translation: the model keeps its per-residue dihedral features but the
attention no longer sees where the residues are or how they are turned.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dihedrals import N_DIHEDRAL_FEATURES, backbone_dihedrals, dihedral_features
from .frames import frames_from_backbone
from .geometric import GeometricSelfAttention
from .validation import require_bool_mask, require_int, require_number, require_tensor

__all__ = [
    "AMINO_ACIDS",
    "Chain",
    "ResidueBatch",
    "load_structures",
    "make_batch",
    "make_batches",
    "InverseFoldingModel",
    "masked_cross_entropy",
    "train_inverse_folding",
    "predict",
    "sequence_recovery",
    "burial",
]

#: The 20 standard amino acids, in the order of the classifier's outputs.
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}


@dataclass(frozen=True, eq=False)
class Chain:
    """One protein chain: ``coords`` (L, 3, 3) float32, atoms N, CA, C, in Å."""

    entry: str
    chain: str
    sequence: str
    coords: Tensor
    family: int
    split: str

    def __len__(self) -> int:
        return len(self.sequence)

    def __repr__(self) -> str:
        return f"Chain({self.entry} {self.chain}, {len(self)} residues, {self.split})"


def load_structures(split: str | None = None) -> list[Chain]:
    """The chains of ``data/structures.npz`` (shipped with geoattn), in file order.

    ``split``: ``"train"``, ``"valid"``, ``"test"``, or None for all of them.
    """
    if split not in (None, "train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid', 'test' or None; got {split!r}")
    with resources.as_file(resources.files("geoattn") / "data" / "structures.npz") as path:
        data = np.load(path)
        arrays = {k: data[k] for k in data.files}
    starts = np.concatenate([[0], np.cumsum(arrays["length"])])
    all_coords = _stored_coords(arrays)
    chains = []
    for i, (entry, chain, seq, fam, sp) in enumerate(zip(arrays["entry"], arrays["chain"], arrays["sequence"],
                                                         arrays["family"], arrays["split"])):
        coords = torch.from_numpy(all_coords[starts[i]:starts[i + 1]].copy())
        chains.append(Chain(str(entry), str(chain), str(seq), coords, int(fam), str(sp)))
    return [c for c in chains if split is None or c.split == split]


def _stored_coords(arrays: dict) -> np.ndarray:
    """The file's coordinates as (N_res, 3, 3) float32 Å: float32 as stored, or decoded from
    the compact 0.01 Å differences (``coords_q``) that ``derive_structures`` writes."""
    if "coords" in arrays:
        return arrays["coords"]
    delta = arrays["coords_q"].astype(np.int64).reshape(-1, 3, 3)
    out = np.empty(delta.shape, dtype=np.float32)
    start = 0
    for n in arrays["length"].tolist():
        atoms = delta[start:start + n].reshape(-1, 3).cumsum(0)  # each chain restarts absolute
        out[start:start + n] = (atoms / 100).reshape(-1, 3, 3)
        start += n
    return out


@dataclass(frozen=True, eq=False)
class ResidueBatch:
    """Padded model inputs for B chains of up to L residues.

    ``features`` (B, L, 9) dihedral features; ``rotations`` (B, L, 3, 3) and
    ``translations`` (B, L, 3) the backbone frames; ``mask`` (B, L) True for real residues;
    ``labels`` (B, L) the amino-acid index, −1 for padding and non-standard residues;
    ``ca`` (B, L, 3) the Cα positions.
    """

    features: Tensor
    rotations: Tensor
    translations: Tensor
    mask: Tensor
    labels: Tensor
    ca: Tensor

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The model's arguments: (features, rotations, translations, mask)."""
        return self.features, self.rotations, self.translations, self.mask


def make_batch(chains: Sequence[Chain], *, dtype: torch.dtype = torch.float32) -> ResidueBatch:
    """Pad ``chains`` to one length and compute their features and frames."""
    if not chains:
        raise ValueError("chains must hold at least one Chain")
    length = max(len(c) for c in chains)
    coords, mask, labels = [], [], []
    for c in chains:
        pad = length - len(c)
        x = c.coords.to(torch.float64)
        # Padding repeats the first residue: a valid frame that the mask then hides.
        coords.append(torch.cat([x, x[:1].expand(pad, 3, 3)]))
        mask.append(torch.arange(length) < len(c))
        labels.append(torch.tensor([_INDEX.get(a, -1) for a in c.sequence] + [-1] * pad))
    coords, mask, labels = torch.stack(coords), torch.stack(mask), torch.stack(labels)
    n, ca, c = coords.unbind(-2)
    angles, defined = backbone_dihedrals(n, ca, c, mask)
    rotations, translations = frames_from_backbone(n, ca, c)
    return ResidueBatch(dihedral_features(angles, defined).to(dtype), rotations.to(dtype), translations.to(dtype),
                        mask, labels, ca.to(dtype))


def make_batches(chains: Sequence[Chain], max_residues: int = 700, *,
                 dtype: torch.dtype = torch.float32) -> list[ResidueBatch]:
    """Chains sorted by length and grouped greedily into padded batches of at most
    ``max_residues`` positions (B·L) each, so that little compute goes to padding; a
    chain longer than ``max_residues`` gets a batch of its own."""
    require_int("max_residues", max_residues, minimum=1)
    if not chains:
        raise ValueError("chains must hold at least one Chain")
    ordered = sorted(chains, key=len)  # stable: ties keep file order
    groups, current = [], []
    for c in ordered:
        if current and len(c) * (len(current) + 1) > max_residues:
            groups.append(current)
            current = []
        current.append(c)
    groups.append(current)
    return [make_batch(g, dtype=dtype) for g in groups]


class _MLP(nn.Module):
    """x + W₂ GELU(W₁ LayerNorm(x)): the position-wise block after each attention layer."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, d_hidden)
        self.down = nn.Linear(d_hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class InverseFoldingModel(nn.Module):
    """Dihedral features → Linear → n_layers × (GeometricSelfAttention, MLP) → 20 logits.

    ``forward(features, rotations, translations, mask)`` takes a :class:`ResidueBatch`'s
    inputs and returns logits (B, L, 20). The attention layers use ESM's pre-LayerNorm.
    ``no_geometry=True``: every frame becomes the identity with zero translation, so the
    attention scores depend on the residues' features only, not on the structure.
    ``impl``: the geometric-attention implementation ("chunked" on a CPU, "triton" on a GPU).
    """

    def __init__(self, d_model: int = 64, n_heads: int = 8, n_layers: int = 3, d_hidden: int = 128, *,
                 no_geometry: bool = False, impl: str = "auto"):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_layers", n_layers),
                            ("d_hidden", d_hidden)):
            require_int(name, value, minimum=1)
        self.no_geometry = bool(no_geometry)
        self.embed = nn.Linear(N_DIHEDRAL_FEATURES, d_model)
        self.attention = nn.ModuleList(GeometricSelfAttention(d_model, n_heads, pre_layernorm=True, impl=impl)
                                       for _ in range(n_layers))
        self.mlp = nn.ModuleList(_MLP(d_model, d_hidden) for _ in range(n_layers))
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, len(AMINO_ACIDS)))

    @property
    def impl(self) -> str:
        return self.attention[0].impl

    @impl.setter
    def impl(self, value: str) -> None:
        for layer in self.attention:
            layer.impl = value

    def frames(self, rotations: Tensor, translations: Tensor) -> tuple[Tensor, Tensor]:
        """The frames the attention sees: the given ones, or identities with ``no_geometry``."""
        if not self.no_geometry:
            return rotations, translations
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        return eye.expand_as(rotations), torch.zeros_like(translations)

    def forward(self, features: Tensor, rotations: Tensor, translations: Tensor,
                mask: Tensor | None = None) -> Tensor:
        require_tensor("features", features)
        if features.dim() != 3 or features.shape[-1] != N_DIHEDRAL_FEATURES:
            raise ValueError(f"features must have shape (B, L, {N_DIHEDRAL_FEATURES}); got {tuple(features.shape)}")
        require_bool_mask("mask", mask, tuple(features.shape[:2]), "(B, L)", meaning="True = residue present")
        rotations, translations = self.frames(rotations, translations)
        x = self.embed(features)
        for attention, mlp in zip(self.attention, self.mlp):
            x = mlp(attention(x, rotations, translations, mask))
        return self.head(x)

    @torch.no_grad()
    def attention_maps(self, features: Tensor, rotations: Tensor, translations: Tensor,
                       mask: Tensor | None = None) -> list[Tensor]:
        """Every layer's attention map softmax_j(A), one (B, H, L, L) tensor per layer."""
        rotations, translations = self.frames(rotations, translations)
        x = self.embed(features)
        maps = []
        for attention, mlp in zip(self.attention, self.mlp):
            maps.append(attention.attention_weights(x, rotations, translations, mask))
            x = mlp(attention(x, rotations, translations, mask))
        return maps


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over residues whose label is not −1."""
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=-1)


@torch.no_grad()
def _evaluate_loss(model: nn.Module, batches: Iterable[ResidueBatch]) -> float:
    total, count = 0.0, 0
    for b in batches:
        logits = model(*b.inputs())
        n = int((b.labels >= 0).sum())
        total += masked_cross_entropy(logits, b.labels).item() * n
        count += n
    return total / max(count, 1)


def train_inverse_folding(model: nn.Module, train: Sequence[ResidueBatch], evaluate: Sequence[ResidueBatch] = (),
                          *, epochs: int = 30, lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0,
                          progress: bool | None = None, desc: str = "training") -> dict[str, list[float]]:
    """Train with AdamW on ``train`` (one step per batch, batches in a seeded random order
    each epoch; the learning rate decays to 0 along a cosine); return the loss curves
    ``{"train": [...], "evaluate": [...]}``, one value per epoch (mean cross-entropy).

    The curve of ``evaluate`` is only recorded, never used for a decision. ``progress``
    shows a bar with one tick per epoch (``tqdm.auto``: one updating widget on Colab and
    in Jupyter with ipywidgets, a text bar in a terminal), cleared when training ends.
    By default (``None``) it shows except where ``GEOATTN_PROGRESS=0``, which the
    re-execution and nbval environment sets (``geoattn.devtools.reexecute``): there a
    text bar would store each of its updates as a line of the chapter's output.
    """
    require_int("epochs", epochs, minimum=1)
    require_number("lr", lr, minimum=0.0)
    require_number("weight_decay", weight_decay, minimum=0.0)
    if not train:
        raise ValueError("train must hold at least one ResidueBatch")
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns when ipywidgets is missing, then uses text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    if progress is None:
        progress = os.environ.get("GEOATTN_PROGRESS", "1") != "0"
    order = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    history = {"train": [], "evaluate": []}
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        model.train()
        seen, total_loss = 0, 0.0
        for i in torch.randperm(len(train), generator=order).tolist():
            b = train[i]
            loss = masked_cross_entropy(model(*b.inputs()), b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            n = int((b.labels >= 0).sum())
            total_loss, seen = total_loss + loss.item() * n, seen + n
        history["train"].append(total_loss / seen)
        model.eval()
        if evaluate:
            history["evaluate"].append(_evaluate_loss(model, evaluate))
    return history


@torch.no_grad()
def predict(model: nn.Module, batch: ResidueBatch) -> Tensor:
    """The most likely amino-acid index of every residue, (B, L)."""
    model.eval()
    return model(*batch.inputs()).argmax(-1)


def sequence_recovery(predicted: Tensor, labels: Tensor) -> float:
    """The fraction of residues (label ≠ −1) whose predicted amino acid is right."""
    require_tensor("predicted", predicted)
    require_tensor("labels", labels)
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted must have labels' shape {tuple(labels.shape)}; got {tuple(predicted.shape)}")
    real = labels >= 0
    return float((predicted[real] == labels[real]).float().mean()) if real.any() else float("nan")


def burial(ca: Tensor, mask: Tensor | None = None, radius: float = 10.0) -> Tensor:
    """The number of other Cα atoms within ``radius`` Å of each residue's Cα: (..., L) int.

    ``ca``: (..., L, 3); ``mask``: (..., L) bool, masked residues neither count nor are counted (0).
    """
    require_tensor("ca", ca)
    if ca.dim() < 2 or ca.shape[-1] != 3:
        raise ValueError(f"ca must have shape (..., L, 3); got {tuple(ca.shape)}")
    require_bool_mask("mask", mask, tuple(ca.shape[:-1]), "(..., L)", meaning="True = residue present")
    require_number("radius", radius, minimum=0.0)
    d = torch.linalg.vector_norm(ca[..., :, None, :] - ca[..., None, :, :], dim=-1)
    near = d <= radius
    near &= ~torch.eye(ca.shape[-2], dtype=torch.bool, device=ca.device)
    if mask is not None:
        near &= mask[..., :, None] & mask[..., None, :]
    return near.sum(-1)
