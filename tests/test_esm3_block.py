"""ESM3's first block and its structure encoder (geoattn.esm3_block): shapes, ESM's
sizes and order, SE(3) invariance, sensitivity, the neighbour choice, chain masks."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import geoattn
from geoattn import (
    ESM3Block,
    StructureEncoder,
    esm3_residual_scale,
    nearest_neighbours,
    random_rotation,
    swiglu_hidden_size,
)


def _block(seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"residual_scale": esm3_residual_scale(48), **kwargs}
    block = ESM3Block(16, 4, 3, **kwargs).to(dtype)
    with torch.no_grad():  # per-head weights away from ESM's start, and apart
        block.geometric.set_head_weights(torch.tensor([0.3, 0.9, 1.5]), torch.tensor([1.2, 0.4, 0.8]))
        for name, param in block.named_parameters():
            if "norm" in name:  # LayerNorms' scales and shifts away from 1 and 0
                param.add_(0.3 * torch.randn_like(param))
    return block


def _encoder(seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    enc = StructureEncoder(16, 3, d_out=5, **kwargs).to(dtype)
    with torch.no_grad():  # ESM's N(0, 0.02) embeddings are tiny; make them count
        enc.offset_embedding.weight.normal_()
    return enc


def _inputs(b, length, d_model=16, *, seed=0, dtype=torch.float64, spread=8.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, d_model, generator=gen, dtype=torch.float64).to(dtype)
    rot = random_rotation(b, length, generator=gen, dtype=torch.float64).to(dtype)
    trans = (spread * torch.randn(b, length, 3, generator=gen, dtype=torch.float64)).to(dtype)
    return x, rot, trans


def _moved(rot, trans, seed):
    gen = torch.Generator().manual_seed(seed)
    G = random_rotation(generator=gen, dtype=torch.float64).to(rot.dtype)
    s = (30 * torch.randn(3, generator=gen, dtype=torch.float64)).to(rot.dtype)
    return G @ rot, trans @ G.T + s


# ------------------------------------------------------------ ESM's sizes and order

def test_swiglu_width_rounds_up_to_256():
    assert swiglu_hidden_size(1536, 8 / 3) == 4096  # ESM3-open's blocks
    assert swiglu_hidden_size(1024, 4) == 4096  # the structure encoder's
    assert swiglu_hidden_size(100, 8 / 3) == 512  # 266.7 rounds *up*
    assert swiglu_hidden_size(96, 8 / 3) == 256
    assert esm3_residual_scale(48) == pytest.approx(1 / 1.1547005, rel=1e-6)


def test_block_shapes_and_sizes():
    block = ESM3Block(64, 4, 8, residual_scale=esm3_residual_scale(48))
    assert block.ffn.up.weight.shape == (2 * 256, 64) and block.ffn.down.weight.shape == (64, 256)
    assert block.attention.qkv.bias is None and block.geometric.proj.bias is None
    assert not isinstance(block.geometric.norm, torch.nn.Identity)  # ESM's pre-LayerNorm
    x, rot, trans = _inputs(2, 7, 64, dtype=torch.float32)
    assert block(x, rot, trans).shape == (2, 7, 64)
    enc = StructureEncoder(32, 4, d_out=6)
    assert len(enc.blocks) == 2 and all(b.attention is None for b in enc.blocks)
    assert enc.blocks[0].ffn.up.out_features == 2 * 256 and enc.blocks[0].geometric.proj.bias is not None
    assert enc(trans, rot, trans).shape == (2, 7, 6)


def test_block_runs_its_parts_in_esm_order():
    block = _block()
    x, rot, trans = _inputs(2, 6, seed=1)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1], [0] * 6])
    s = 1 / math.sqrt(48 / 36)
    with torch.no_grad():
        h = x + s * block.attention(x, seq)
        h = block.geometric(h, rot, trans, sequence_id=seq)  # adds its own s · update
        want = h + s * block.ffn(h)
        got = block(x, rot, trans, sequence_id=seq)
    torch.testing.assert_close(got, want, atol=1e-13, rtol=0)
    assert block.geometric.residual_scale == pytest.approx(s)


def test_plain_attention_is_rope_attention_within_a_sequence():
    block = _block(seed=2)
    att = block.attention
    x, _, _ = _inputs(1, 5, seed=2)
    seq = torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        q, k, v = att.qkv(att.norm(x)).chunk(3, -1)
        q, k = att.q_norm(q), att.k_norm(k)
        q, k, v = (t.view(1, 5, 4, 4).transpose(1, 2) for t in (q, k, v))
        pos = torch.arange(5)
        q, k = geoattn.rope(q, pos), geoattn.rope(k, pos)
        scores = q @ k.transpose(-1, -2) / 2.0  # √d_head = 2
        scores = scores.masked_fill(seq[:, None, :, None] != seq[:, None, None, :], float("-inf"))
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, 16)
        torch.testing.assert_close(att(x, seq), att.out_proj(o), atol=1e-13, rtol=0)


# ------------------------------------------------------------ SE(3) invariance

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_block_is_se3_invariant(dtype, tol):
    block = _block(dtype=dtype)
    x, rot, trans = _inputs(2, 9, seed=3, dtype=dtype)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4] = False
    with torch.no_grad():
        out = block(x, rot, trans, mask)
        moved = block(x, *_moved(rot, trans, 4), mask)
    torch.testing.assert_close(moved, out, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_encoder_is_se3_invariant(dtype, tol):
    enc = _encoder(dtype=dtype, k=5)
    _, rot, trans = _inputs(2, 11, seed=5, dtype=dtype)
    with torch.no_grad():
        out = enc(trans, rot, trans)
        rot2, trans2 = _moved(rot, trans, 6)
        moved = enc(trans2, rot2, trans2)
    torch.testing.assert_close(moved, out, atol=tol, rtol=tol)


def test_encoder_is_se3_invariant_on_ubiquitin():
    backbone = geoattn.ubiquitin()
    rot, trans = (f[None] for f in backbone.frames())
    G = random_rotation(generator=torch.Generator().manual_seed(8))
    s = torch.tensor([10.0, -20.0, 30.0])
    moved = replace(backbone, **{name: getattr(backbone, name) @ G.T + s for name in ("n", "ca", "c")})
    rot2, trans2 = (f[None] for f in moved.frames())
    enc = _encoder(dtype=torch.float32)
    with torch.no_grad():
        out = enc(backbone.ca[None], rot, trans)
        out2 = enc(moved.ca[None], rot2, trans2)
    assert out.shape == (1, 76, 5)
    torch.testing.assert_close(out2, out, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------------ sensitivity

def test_moving_one_residue_changes_the_outputs():
    block, enc = _block(), _encoder(k=4)
    x, rot, trans = _inputs(1, 8, seed=7)
    trans2 = trans.clone()
    trans2[0, 3] += torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        change = (block(x, rot, trans2) - block(x, rot, trans)).abs().amax(-1)[0]
        enc_change = (enc(trans2, rot, trans2) - enc(trans, rot, trans)).abs().amax(-1)[0]
    assert change[3] > 1e-3 and (change > 1e-6).sum() > 1
    assert enc_change[3] > 1e-3 and (enc_change > 1e-6).sum() > 1


# ------------------------------------------------------------ the neighbourhoods

def _brute_force_neighbours(ca, k):
    out = []
    for b in range(ca.shape[0]):
        rows = []
        for i in range(ca.shape[1]):
            d = [(float((ca[b, i] - ca[b, j]).norm()), j) for j in range(ca.shape[1])]
            rows.append([j for _, j in sorted(d)[:k]])
        out.append(rows)
    return torch.tensor(out)


@pytest.mark.parametrize("length", [5, 16, 40])
def test_neighbours_are_the_brute_force_top_16(length):
    gen = torch.Generator().manual_seed(length)
    ca = 10 * torch.randn(2, length, 3, generator=gen, dtype=torch.float64)
    got = nearest_neighbours(ca)
    want = _brute_force_neighbours(ca, 16)
    assert got.shape == (2, length, min(16, length))
    assert torch.equal(got, want)  # same residues, nearest first
    assert torch.equal(got[..., 0], torch.arange(length).expand(2, -1))  # itself first


def test_itself_first_even_on_top_of_another_residue():
    ca = torch.zeros(1, 4, 3)
    ca[0, 3] = 5.0
    nbr = nearest_neighbours(ca, k=3)
    assert torch.equal(nbr[0, :, 0], torch.arange(4))


def test_residues_without_coordinates_rank_last_by_sequence_distance():
    gen = torch.Generator().manual_seed(0)
    ca = torch.randn(1, 8, 3, generator=gen)
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, [2, 6]] = False
    nbr = nearest_neighbours(ca, k=8, mask=mask)
    assert set(nbr[0, 0, -2:].tolist()) == {2, 6}
    assert nbr[0, 0, -2:].tolist() == [2, 6]  # nearer in sequence first
    assert nbr[0, 2, 0] == 2 and nbr[0, 2, 1:3].tolist() in ([1, 3], [3, 1])


def test_encoder_output_is_the_centre_of_its_own_neighbourhood():
    enc = _encoder(k=4)
    _, rot, trans = _inputs(1, 9, seed=9)
    nbr = nearest_neighbours(trans, 4)
    with torch.no_grad():
        out = enc(trans, rot, trans)
        i = 5
        idx = nbr[0, i]
        z = enc.offset_embedding((idx - i).clamp(-32, 32)[None] + 33)
        for block in enc.blocks:
            z = block(z, rot[:, idx], trans[:, idx])
        alone = enc.pre_vq_proj(z[:, 0])
    torch.testing.assert_close(out[0, i], alone[0], atol=1e-13, rtol=0)


def test_encoder_zeroes_frameless_centres_before_the_projection():
    enc = _encoder(k=4)
    _, rot, trans = _inputs(1, 7, seed=10)
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[0, 2] = False
    with torch.no_grad():
        out = enc(trans, rot, trans, mask)
    torch.testing.assert_close(out[0, 2], enc.pre_vq_proj.bias)


# ------------------------------------------------------------ chains

def test_chain_mask_keeps_a_chain_apart_from_the_other():
    block = _block()
    x, rot, trans = _inputs(1, 10, seed=11)
    chain = torch.tensor([[0] * 6 + [1] * 4])
    a = chain[0] == 0
    x2, rot2, trans2 = x.clone(), rot.clone(), trans.clone()
    x2[:, ~a] = torch.randn(1, 4, 16, dtype=torch.float64)  # chain B: new embeddings,
    trans2[:, ~a] += 3.0  # moved next to chain A
    with torch.no_grad():
        # ESM: plain attention masks by sequence id, geometric attention by chain id
        out = block(x, rot, trans, sequence_id=chain, chain_id=chain)
        out2 = block(x2, rot2, trans2, sequence_id=chain, chain_id=chain)
        # chain id alone masks only geometric attention; plain attention still
        # reads chain B, as in ESM3 (one sequence, several chains)
        mixed = block(x, rot, trans, chain_id=chain)
        mixed2 = block(x2, rot2, trans2, chain_id=chain)
        geo = block.geometric(x, rot, trans, chain_id=chain)
        geo2 = block.geometric(x2, rot2, trans2, chain_id=chain)
    torch.testing.assert_close(out2[:, a], out[:, a], atol=1e-13, rtol=0)
    assert (out2[:, ~a] - out[:, ~a]).abs().max() > 1e-3
    torch.testing.assert_close(geo2[:, a], geo[:, a], atol=1e-13, rtol=0)
    assert (mixed2[:, a] - mixed[:, a]).abs().max() > 1e-3


# ------------------------------------------------------------ the error policy

def test_errors_name_the_argument():
    block = _block()
    x, rot, trans = _inputs(1, 4)
    with pytest.raises(ValueError, match="^rotations"):
        block(x, rot[..., :2], trans)
    with pytest.raises(ValueError, match="^chain_id"):
        block(x, rot, trans, chain_id=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="^d_model"):
        ESM3Block(18, 4, 2)
    with pytest.raises(TypeError, match="^plain_attention"):
        ESM3Block(16, 4, 2, plain_attention=1)
    with pytest.raises(ValueError, match="^ca"):
        nearest_neighbours(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="^k"):
        nearest_neighbours(torch.zeros(1, 4, 3), k=0)
    enc = _encoder()
    with pytest.raises(ValueError, match="^translations"):
        enc(trans, rot, trans[:, :3])
    with pytest.raises(ValueError, match="^residue_index"):
        enc(trans, rot, trans, residue_index=torch.zeros(1, 4))
