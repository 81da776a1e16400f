"""benchmarks/train_inverse_folding.py at a tiny size: the JSON chapter 6 reads, its schema."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_inverse_folding.py"
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "geoattn" / "data" / "inverse_folding_runs.json"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_inverse_folding", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_schema(result, script, *, seeds, epochs_grid):
    assert {"script", "argv", "git", "data", "machine", "versions", "config", "choose_epochs",
            "lr_factor_per_epoch", "summary", "baseline", "learning_curve", "runs", "curve_runs",
            "timing"} <= set(result)
    assert len(result["git"]["commit"]) == 40 and isinstance(result["git"]["dirty"], bool)
    assert len(result["data"]["sha256"]) == 64
    assert result["config"]["seeds"] == list(range(seeds))
    assert {"wall_s", "sum_of_runs_s", "load_average_1min_start", "load_average_1min_end"} <= set(result["timing"])
    chosen = result["choose_epochs"]
    assert chosen["epochs"] in epochs_grid and set(chosen["mean_valid_loss"]) == {str(e) for e in epochs_grid}
    assert all(r["stage"] == "choose_epochs" and len(r["valid_loss"]) == r["epochs"] for r in chosen["runs"])
    assert len(result["lr_factor_per_epoch"]) == chosen["epochs"] and result["lr_factor_per_epoch"][0] == 1
    runs = result["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == sorted(
        (v, s) for v in script.VARIANTS for s in range(seeds))
    for r in runs:
        assert len(r["train_loss"]) == len(r["valid_loss"]) == chosen["epochs"]
        t = r["test"]
        assert len(t["family"]) == len(t["residues"]) == len(t["correct"]) == len(t["loss_sum"])
        assert all(0 <= c <= n for c, n in zip(t["correct"], t["residues"]))
    s = result["summary"]
    assert set(s["models"]) == {*script.VARIANTS, "most_frequent"}
    for v in script.VARIANTS:
        for metric in ("recovery", "loss"):
            m = s["models"][v][metric]
            assert m["ci"][0] <= m["mean"] <= m["ci"][1] and len(m["per_seed"]) == seeds
    assert set(s["differences"]) == {f"geometric - {v}" for v in script.VARIANTS[1:]}
    for d in s["differences"].values():
        for metric in ("recovery", "loss"):
            assert d[metric]["ci"][0] <= d[metric]["ci"][1] and 0 <= d[metric]["p_bootstrap"] <= 1
    assert s["bootstrap"]["unit"] == "test family"
    assert {c["variant"] for c in result["learning_curve"]} == {"geometric", "no_geometry"}


def test_tiny_run_writes_the_documented_json(script, tmp_path):
    out, models = tmp_path / "runs.json", tmp_path / "models.npz"
    result = script.main(["--tiny", "--seeds", "2", "--epochs-grid", "1", "2", "--fractions", "0.5",
                          "--curve-seeds", "1", "--bootstrap", "50", "--out", str(out),
                          "--save-models", str(models)])
    assert json.loads(out.read_text()) == result
    check_schema(result, script, seeds=2, epochs_grid=[1, 2])
    saved = np.load(models)
    assert {k.split("/")[0] for k in saved.files} == {"geometric", "no_geometry"}


def test_distance_only_has_no_rotation_term_and_scrambling_keeps_the_frames(script):
    import torch

    import geoattn

    model = script._model("distance_only", script.TINY_CONFIG, 0)
    assert all((layer.head_weights()[0] == 0).all() for layer in model.attention)
    chains = geoattn.load_structures("test")[:2]
    batch = geoattn.make_batch(chains)
    mixed = script._scramble(batch, 0)
    n = int(batch.mask[0].sum())
    # the same set of frames, in another order
    assert not torch.equal(mixed.translations[0, :n], batch.translations[0, :n])
    assert torch.allclose(mixed.translations[0, :n].sort(0).values, batch.translations[0, :n].sort(0).values)
    assert torch.equal(mixed.features, batch.features)


def test_the_shipped_json_is_complete(script):
    result = json.loads(SHIPPED.read_text())
    check_schema(result, script, seeds=5, epochs_grid=result["config"]["epochs_grid"])
    assert not result["config"]["model"] == script.TINY_CONFIG
