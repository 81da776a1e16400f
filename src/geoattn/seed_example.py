"""The worked example of chapter 1: Ala, Lys and Asp, and the Lys–Asp salt bridge.

Rows of ``X`` are residues; columns are (size, hydrophobicity, positive charge,
negative charge). ``W_Q``, ``W_K`` and ``W_V`` project d_model = 4 to d_k = d_v = 2.
``PUBLISHED`` holds the numbers the source text prints, so the book can set them
beside what the stated weights really give.
"""
from __future__ import annotations

import torch

__all__ = ["RESIDUES", "FEATURES", "X", "W_Q", "W_K", "W_V", "PUBLISHED", "seed_tensors"]

RESIDUES = ("Ala", "Lys", "Asp")
FEATURES = ("size", "hydrophobicity", "positive charge", "negative charge")

X = ((0.2, 0.1, 0.0, 0.0),
     (0.8, 0.4, 1.0, 0.0),
     (0.5, 0.3, 0.0, 1.0))
W_Q = ((0, 1), (0, 1), (1, 0), (0, 0))
W_K = ((1, 0), (0, 1), (0, 0), (1, 0))
W_V = ((0, 1), (1, 0), (1, 1), (0, 1))

# As printed in the source text (Sengar 2025, appendix A), including its slips.
PUBLISHED = {
    "Q": ((0.2, 0.3), (0.8, 1.2), (0.5, 0.8)),
    "K": ((0.2, 0.1), (0.8, 0.4), (1.5, 0.3)),
    "V": ((0.1, 0.4), (1.2, 1.8), (0.3, 1.8)),
    "scores_Lys": (0.28, 1.12, 1.56),
    "scaled_Lys": (0.198, 0.792, 1.103),
    "exp_Lys": (1.22, 2.21, 3.01),
    "alpha_Lys": (0.19, 0.34, 0.47),
    "z_Lys": (0.568, 1.534),
}


def seed_tensors(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(X, W_Q, W_K, W_V)`` as tensors; fp64 by default so printed digits are exact."""
    return tuple(torch.tensor(m, dtype=dtype) for m in (X, W_Q, W_K, W_V))
