"""The inverse-folding data and model (geoattn.inverse_folding)."""
from __future__ import annotations

import pytest
import torch

import geoattn
from geoattn.dihedrals import backbone_dihedrals, dihedral_features
from geoattn.inverse_folding import (
    AMINO_ACIDS,
    InverseFoldingModel,
    burial,
    load_structures,
    make_batch,
    make_batches,
    masked_cross_entropy,
    predict,
    sequence_recovery,
    train_inverse_folding,
)


@pytest.fixture(scope="module")
def chains():
    return load_structures()


def test_shipped_data_and_split(chains):
    assert len(chains) > 20
    splits = {c.split for c in chains}
    assert splits == {"train", "valid", "test"}
    by_split = {s: {c.family for c in chains if c.split == s} for s in splits}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["valid"])
    assert not (by_split["valid"] & by_split["test"])
    test_entries = {c.entry for c in chains if c.split == "test"}
    assert {"1aki", "2nwd", "1hml", "1k6p", "1hvr"} <= test_entries
    for c in chains:
        assert c.coords.shape == (len(c), 3, 3) and c.coords.dtype == torch.float32
        assert torch.isfinite(c.coords).all()
    # ubiquitin is not in the file at all
    assert geoattn.ubiquitin().sequence not in {c.sequence for c in chains}
    assert [c.split for c in load_structures("valid")] == ["valid"] * len(load_structures("valid"))
    with pytest.raises(ValueError, match="^split "):
        load_structures("training")


def test_make_batch_pads_and_matches_single_chains(chains):
    short, long_ = chains[0], max(chains, key=len)
    batch = make_batch([short, long_])
    L = len(long_)
    assert batch.features.shape == (2, L, 9) and batch.rotations.shape == (2, L, 3, 3)
    assert batch.mask.sum(-1).tolist() == [len(short), L]
    assert (batch.labels[0, len(short):] == -1).all()
    assert batch.labels[0, 0].item() == AMINO_ACIDS.index(short.sequence[0])
    x = short.coords.to(torch.float64)
    alone = dihedral_features(*backbone_dihedrals(x[:, 0], x[:, 1], x[:, 2])).float()
    assert torch.allclose(batch.features[0, :len(short)], alone, atol=1e-6)
    assert torch.allclose(batch.translations[0, :len(short)], short.coords[:, 1])


@pytest.fixture(scope="module")
def small_batch():
    ubq = geoattn.ubiquitin()
    chain = geoattn.inverse_folding.Chain("1ubq", "A", ubq.sequence, ubq.coords(), -1, "test")
    half = geoattn.inverse_folding.Chain("1ubq", "A", ubq.sequence[:40], ubq.coords()[:40], -1, "test")
    return make_batch([chain, half]), make_batch([half])


@pytest.mark.parametrize("no_geometry", [False, True])
def test_padding_and_batching_do_not_change_real_outputs(small_batch, no_geometry):
    pair, single = small_batch
    torch.manual_seed(0)
    model = InverseFoldingModel(16, 2, 2, 32, no_geometry=no_geometry, impl="chunked").eval()
    with torch.no_grad():
        both, alone = model(*pair.inputs()), model(*single.inputs())
    assert both.shape == (2, 76, 20)
    assert torch.allclose(both[1, :40], alone[0], atol=1e-5)


def test_invariant_to_rigid_motion_and_sensitive_to_structure(small_batch):
    pair, _ = small_batch
    torch.manual_seed(0)
    model = InverseFoldingModel(16, 2, 2, 32, impl="chunked").eval()
    f, R, t, m = pair.inputs()
    G = geoattn.random_rotation(generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(f, R, t, m)
        moved = model(f, G @ R, t @ G.T + torch.tensor([5.0, -7.0, 11.0]), m)
        t2 = t.clone()
        t2[0, 30] += torch.tensor([4.0, 0.0, 0.0])
        one = model(f, R, t2, m)
    assert (moved - base).abs().max() < 1e-4
    assert (one - base).abs().max() > 1e-3


def test_no_geometry_ignores_the_frames(small_batch):
    pair, _ = small_batch
    torch.manual_seed(0)
    model = InverseFoldingModel(16, 2, 2, 32, no_geometry=True, impl="chunked").eval()
    f, R, t, m = pair.inputs()
    G = geoattn.random_rotation(generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        scrambled = model(f, G @ R.flip(1), t.flip(1) * 3, m)
        base = model(f, R, t, m)
    assert torch.equal(scrambled, base)


def test_chunked_equals_naive_forward_and_backward(small_batch):
    pair, _ = small_batch
    grads, outs = [], []
    for impl in ("chunked", "naive"):
        torch.manual_seed(0)
        model = InverseFoldingModel(16, 2, 2, 32, impl=impl)
        loss = masked_cross_entropy(model(*pair.inputs()), pair.labels)
        loss.backward()
        outs.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_training_lowers_the_loss_and_is_deterministic(small_batch):
    pair, single = small_batch
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        model = InverseFoldingModel(16, 2, 1, 32, impl="chunked")
        histories.append(train_inverse_folding(model, [pair, single], [single], epochs=6, lr=1e-2,
                                               progress=False))
    h = histories[0]
    assert len(h["train"]) == len(h["evaluate"]) == 6
    assert h["train"][-1] < h["train"][0] - 0.2
    assert histories[0] == histories[1]
    pred = predict(model, pair)
    assert pred.shape == pair.labels.shape
    with pytest.raises(ValueError, match="^train "):
        train_inverse_folding(model, [], epochs=1)
    with pytest.raises(TypeError, match="^epochs "):
        train_inverse_folding(model, [pair], epochs=1.5)


def test_sequence_recovery_and_burial():
    labels = torch.tensor([[0, 1, 2, -1]])
    assert sequence_recovery(torch.tensor([[0, 1, 3, 3]]), labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="^predicted "):
        sequence_recovery(torch.zeros(3), labels)
    ca = torch.tensor([[0.0, 0, 0], [5.0, 0, 0], [9.0, 0, 0], [30.0, 0, 0]])
    assert burial(ca).tolist() == [2, 2, 2, 0]
    assert burial(ca, radius=4.5).tolist() == [0, 1, 1, 0]
    mask = torch.tensor([True, False, True, True])
    assert burial(ca, mask).tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="^ca "):
        burial(torch.zeros(4, 2))


def test_model_errors():
    with pytest.raises(TypeError, match="^d_model "):
        InverseFoldingModel(16.0)
    model = InverseFoldingModel(16, 2, 1, 32)
    with pytest.raises(ValueError, match="^features "):
        model(torch.zeros(1, 5, 8), torch.eye(3).expand(1, 5, 3, 3), torch.zeros(1, 5, 3))
    model.impl = "naive"
    assert all(layer.impl == "naive" for layer in model.attention)


def test_make_batches_groups_by_length(chains):
    batches = make_batches(chains, max_residues=700)
    assert sum(int(b.mask.sum()) for b in batches) == sum(len(c) for c in chains)
    for b in batches:
        assert b.mask.numel() <= 700 or b.mask.shape[0] == 1
    lengths = [int(n) for b in batches for n in b.mask.sum(-1)]
    assert lengths == sorted(lengths)
    with pytest.raises(ValueError, match="^chains "):
        make_batches([])


def test_attention_maps(small_batch):
    pair, _ = small_batch
    torch.manual_seed(0)
    model = InverseFoldingModel(16, 2, 2, 32, impl="chunked").eval()
    maps = model.attention_maps(*pair.inputs())
    assert len(maps) == 2 and maps[0].shape == (2, 2, 76, 76)
    rows = maps[1].sum(-1)
    assert torch.allclose(rows[0], torch.ones(2, 76), atol=1e-5)
    assert (maps[1][1, :, :, 40:] == 0).all()  # padding is never attended


def test_progress_bar_follows_geoattn_progress(small_batch, monkeypatch, capsys):
    """Shown by default (one updating tqdm.auto bar on Colab); off where GEOATTN_PROGRESS=0,
    which re-execution and nbval set, so that no chapter stores a bar's updates."""
    from geoattn.devtools.reexecute import ENVIRONMENT

    assert ENVIRONMENT["GEOATTN_PROGRESS"] == "0"
    pair, single = small_batch
    for value, shown in (("0", False), ("1", True)):
        monkeypatch.setenv("GEOATTN_PROGRESS", value)
        train_inverse_folding(InverseFoldingModel(16, 2, 1, 32, impl="chunked"), [pair], epochs=2,
                              desc="bar-check")
        assert ("bar-check" in capsys.readouterr().err) is shown, f"GEOATTN_PROGRESS={value}"
