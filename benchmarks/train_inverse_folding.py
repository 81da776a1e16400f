"""Chapter 6's experiment: what does the geometry of geometric attention buy in inverse folding?

Trains, for several seeds each, four models that differ only in what the attention sees:

- ``geometric``: the model of chapter 6, with every residue's true backbone frame;
- ``no_geometry``: identity frames, zero translations (the attention sees no structure);
- ``distance_only``: true frames, but every head's rotation weight fixed at 0;
- ``scrambled``: the same inputs, but each protein's frames permuted among its residues
  (a fixed, seeded permutation per chain, in every split): the attention still sees a
  protein's set of frames, but no longer which residue sits where.

Splits are by family (``geoattn.devtools.derive_structures``: no sequence-similar chains
across splits). The training length is chosen on the validation split only: the
``geometric`` and ``no_geometry`` models (seed 0) are trained with each schedule length of
``--epochs-grid``, and the length with the lowest mean validation loss is used for every
run; the test split is read only after that. Every run records its training and
validation loss per epoch, and the learning-rate factor of the cosine schedule, so that
the curves can be shown with their schedule.

The test metrics are sequence recovery and cross-entropy per residue. Their confidence
intervals are bootstraps over test *families* (a family's residues are correlated, so
resampling residues would be too optimistic): each resample draws families with
replacement and recomputes the residue-pooled, seed-averaged metric; the paired
differences between ``geometric`` and each control use the same resampled families for
both. A learning curve trains ``geometric`` and ``no_geometry`` on nested fractions of the
training families (``--fractions``).

    python benchmarks/train_inverse_folding.py --out src/geoattn/data/inverse_folding_runs.json \\
        --save-models src/geoattn/data/inverse_folding_models.npz     # about 30 min on 1 core

``--jobs N`` runs N training processes side by side (one thread each); the JSON records
the wall time, the summed time of the runs (what one core would need, on a machine this
loaded), and the load average at the start and at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from importlib import resources

import numpy as np

VARIANTS = ("geometric", "no_geometry", "distance_only", "scrambled")
CONFIG = dict(d_model=32, n_heads=4, n_layers=2, d_hidden=64)
TRAINING = dict(lr=3e-3, weight_decay=0.01)
TINY_CONFIG = dict(d_model=8, n_heads=2, n_layers=1, d_hidden=16)
MAX_RESIDUES = 700
SCRAMBLE_SEED = 12345
CI_LEVEL = 0.95


def _git() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.+)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    return f"cpu: {model}, {os.cpu_count()} logical cores"


def _data_version() -> dict:
    path = resources.files("geoattn") / "data" / "structures.npz"
    with resources.as_file(path) as p:
        return {"file": "geoattn/data/structures.npz", "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "bytes": p.stat().st_size}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- the data ------------------------------------------------------------------------------

def _chains(tiny: bool):
    from geoattn.inverse_folding import load_structures

    chains = {s: load_structures(s) for s in ("train", "valid", "test")}
    if tiny:  # a few short chains of each split, for the test of this script
        chains = {s: sorted(c, key=len)[:n] for (s, c), n in zip(chains.items(), (6, 3, 4))}
    return chains


def _scramble(batch, seed: int):
    """The batch with each chain's frames permuted among its own residues (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    rotations, translations = batch.rotations.clone(), batch.translations.clone()
    for b in range(batch.mask.shape[0]):
        n = int(batch.mask[b].sum())
        perm = torch.randperm(n, generator=gen)
        rotations[b, :n] = batch.rotations[b, perm]
        translations[b, :n] = batch.translations[b, perm]
    return dataclasses.replace(batch, rotations=rotations, translations=translations)


def _batches(chains, variant: str, seed_offset: int = 0):
    import geoattn

    batches = geoattn.make_batches(chains, max_residues=MAX_RESIDUES)
    if variant == "scrambled":
        batches = [_scramble(b, SCRAMBLE_SEED + seed_offset + i) for i, b in enumerate(batches)]
    return batches


def _subset(chains, fraction: float):
    """The training chains of the first ``fraction`` of the families, in a seeded order
    (nested: a smaller fraction is part of every larger one)."""
    families = sorted({c.family for c in chains})
    order = np.random.default_rng(2024).permutation(len(families))
    keep = {families[i] for i in order[: max(1, round(fraction * len(families)))]}
    return [c for c in chains if c.family in keep]


# --- one run -------------------------------------------------------------------------------

def _model(variant: str, config: dict, seed: int):
    import torch

    from geoattn.inverse_folding import InverseFoldingModel

    torch.manual_seed(seed)
    model = InverseFoldingModel(**config, no_geometry=variant == "no_geometry", impl="chunked")
    if variant == "distance_only":
        for layer in model.attention:
            layer.set_head_weights(rot_weight=0.0)
            layer.rot_scale.requires_grad_(False)  # softplus(-inf) = 0 must stay 0
    return model


def _per_family(model, batches, chains) -> dict:
    """Per test family: residues, correctly predicted residues, summed cross-entropy."""
    import torch
    import torch.nn.functional as F

    family_of = {}
    ordered = sorted(chains, key=len)  # make_batches' order
    k = 0
    stats: dict[int, list[float]] = {}
    model.eval()
    with torch.no_grad():
        for b in batches:
            logits = model(*b.inputs())
            for row in range(b.mask.shape[0]):
                fam = ordered[k].family
                k += 1
                real = b.labels[row] >= 0
                lab = b.labels[row][real]
                lg = logits[row][real]
                s = stats.setdefault(fam, [0, 0, 0.0])
                s[0] += int(real.sum())
                s[1] += int((lg.argmax(-1) == lab).sum())
                s[2] += float(F.cross_entropy(lg, lab, reduction="sum"))
    family_of.update(stats)
    fams = sorted(family_of)
    return {"family": fams, "residues": [family_of[f][0] for f in fams],
            "correct": [family_of[f][1] for f in fams], "loss_sum": [round(family_of[f][2], 4) for f in fams]}


def run_one(task: dict) -> dict:
    """Train one model; return its curves and, when asked, its per-family test results."""
    import torch

    import geoattn

    torch.set_num_threads(1)
    start = time.perf_counter()
    chains = _chains(task["tiny"])
    train_chains = chains["train"] if task["fraction"] == 1 else _subset(chains["train"], task["fraction"])
    variant, seed = task["variant"], task["seed"]
    train = _batches(train_chains, variant)
    valid = _batches(chains["valid"], variant, 1000)
    model = _model(variant, task["config"], seed)
    history = geoattn.train_inverse_folding(model, train, valid, epochs=task["epochs"], seed=seed,
                                            progress=False, **TRAINING)
    out = {k: task[k] for k in ("stage", "variant", "seed", "epochs", "fraction")}
    out["train_residues"] = sum(len(c) for c in train_chains)
    out["train_loss"] = [round(v, 4) for v in history["train"]]
    out["valid_loss"] = [round(v, 4) for v in history["evaluate"]]
    if task["test"]:
        test = _batches(chains["test"], variant, 2000)
        out["test"] = _per_family(model, test, chains["test"])
    if task.get("save"):
        out["state"] = {k: v.detach().numpy().tolist() for k, v in model.state_dict().items()}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


# --- statistics ----------------------------------------------------------------------------

def _pooled(runs, metric: str, idx=None) -> np.ndarray:
    """The seed-averaged, residue-pooled metric; with ``idx`` (R, F) resampled families."""
    n = np.array(runs[0]["test"]["residues"], dtype=float)
    if metric == "recovery":
        per = np.array([r["test"]["correct"] for r in runs], dtype=float)
    else:
        per = np.array([r["test"]["loss_sum"] for r in runs], dtype=float)
    per = per.mean(0)
    if idx is None:
        return per.sum() / n.sum()
    return per[idx].sum(1) / n[idx].sum(1)


def _ci(samples: np.ndarray) -> list[float]:
    lo, hi = np.quantile(samples, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarise(runs: list[dict], baseline: dict, n_boot: int, seed: int = 0) -> dict:
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    n_fam = len(by_variant["geometric"][0]["test"]["family"])
    idx = np.random.default_rng(seed).integers(0, n_fam, size=(n_boot, n_fam))
    n = np.array(by_variant["geometric"][0]["test"]["residues"], dtype=float)
    base_correct = np.array(baseline["correct"], dtype=float)
    models = {}
    boots = {}
    for v, rs in by_variant.items():
        entry = {"seeds": [r["seed"] for r in rs]}
        for metric in ("recovery", "loss"):
            boots[v, metric] = _pooled(rs, metric, idx)
            per_seed = [_pooled([r], metric) for r in rs]
            entry[metric] = {"mean": round(float(_pooled(rs, metric)), 4), "ci": _ci(boots[v, metric]),
                             "per_seed": [round(float(x), 4) for x in per_seed],
                             "seed_sd": round(float(np.std(per_seed, ddof=1)) if len(rs) > 1 else 0.0, 4)}
        models[v] = entry
    models["most_frequent"] = {"recovery": {
        "mean": round(float(base_correct.sum() / n.sum()), 4),
        "ci": _ci(base_correct[idx].sum(1) / n[idx].sum(1))}, "residue": baseline["residue"]}
    differences = {}
    for v in VARIANTS[1:]:
        d = {}
        for metric in ("recovery", "loss"):
            diff = boots["geometric", metric] - boots[v, metric]
            point = float(models["geometric"][metric]["mean"] - models[v][metric]["mean"])
            # two-sided bootstrap p: how often the resampled difference crosses 0
            p = 2 * min(float((diff <= 0).mean()), float((diff >= 0).mean()))
            d[metric] = {"mean": round(point, 4), "ci": _ci(diff), "p_bootstrap": round(min(1.0, p), 4)}
        differences[f"geometric - {v}"] = d
    return {"models": models, "differences": differences, "test_families": n_fam,
            "test_residues": int(n.sum()), "bootstrap": {"resamples": n_boot, "unit": "test family",
                                                          "level": CI_LEVEL}}


def _baseline(tiny: bool) -> dict:
    from geoattn.inverse_folding import AMINO_ACIDS

    chains = _chains(tiny)
    counts = np.zeros(len(AMINO_ACIDS), dtype=int)
    for c in chains["train"]:
        for a in c.sequence:
            if a in AMINO_ACIDS:
                counts[AMINO_ACIDS.index(a)] += 1
    best = AMINO_ACIDS[int(counts.argmax())]
    per: dict[int, list[int]] = {}
    for c in chains["test"]:
        s = per.setdefault(c.family, [0, 0])
        s[0] += sum(a in AMINO_ACIDS for a in c.sequence)
        s[1] += c.sequence.count(best)
    fams = sorted(per)
    return {"residue": best, "family": fams, "residues": [per[f][0] for f in fams],
            "correct": [per[f][1] for f in fams]}


def _lr_factors(epochs: int, steps: int) -> list[float]:
    """The cosine schedule's factor at the start of each epoch (1 → 0 over the run)."""
    total = epochs * steps
    return [round(0.5 * (1 + math.cos(math.pi * e * steps / total)), 4) for e in range(epochs)]


def _map(tasks, jobs: int):
    if jobs <= 1:
        return [run_one(t) for t in tasks]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(jobs) as pool:
        return pool.map(run_one, tasks, chunksize=1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs-grid", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--curve-seeds", type=int, default=3, help="seeds per learning-curve point")
    parser.add_argument("--bootstrap", type=int, default=4000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on a few chains (for tests)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--save-models", default=None,
                        help="an .npz for the seed-0 geometric and no-geometry models' weights")
    args = parser.parse_args(argv)

    import torch

    import geoattn

    t0, load_start = time.perf_counter(), _load_average()
    config = TINY_CONFIG if args.tiny else CONFIG
    base = {"tiny": args.tiny, "config": config, "fraction": 1, "test": False}
    grid = [{**base, "stage": "choose_epochs", "variant": v, "seed": 0, "epochs": e}
            for e in args.epochs_grid for v in ("geometric", "no_geometry")]
    grid_runs = _map(grid, args.jobs)
    mean_valid = {e: float(np.mean([r["valid_loss"][-1] for r in grid_runs if r["epochs"] == e]))
                  for e in args.epochs_grid}
    epochs = min(mean_valid, key=mean_valid.get)
    main_tasks = [{**base, "stage": "main", "variant": v, "seed": s, "epochs": epochs, "test": True,
                   "save": args.save_models is not None and s == 0 and v in ("geometric", "no_geometry")}
                  for s in range(args.seeds) for v in VARIANTS]
    curve_tasks = [{**base, "stage": "learning_curve", "variant": v, "seed": s, "epochs": epochs,
                    "fraction": f, "test": True}
                   for f in args.fractions for s in range(args.curve_seeds) for v in ("geometric", "no_geometry")]
    later = _map(main_tasks + curve_tasks, args.jobs)
    main_runs = [r for r in later if r["stage"] == "main"]
    curve_runs = [r for r in later if r["stage"] == "learning_curve"]
    if args.save_models:
        arrays = {f"{r['variant']}/{k}": np.asarray(v, dtype=np.float32)
                  for r in main_runs if "state" in r for k, v in r.pop("state").items()}
        np.savez_compressed(args.save_models, **arrays)
    for r in main_runs:
        r.pop("state", None)
    baseline = _baseline(args.tiny)
    summary = summarise(main_runs, baseline, args.bootstrap)
    curve = []
    for f in [*args.fractions, 1]:
        for v in ("geometric", "no_geometry"):
            rs = [r for r in (curve_runs if f != 1 else main_runs) if r["fraction"] == f and r["variant"] == v]
            rs = rs if f != 1 else rs[: args.curve_seeds]
            if rs:
                rec = [_pooled([r], "recovery") for r in rs]
                loss = [_pooled([r], "loss") for r in rs]
                curve.append({"fraction": f, "variant": v, "train_residues": rs[0]["train_residues"],
                              "seeds": [r["seed"] for r in rs],
                              "recovery": round(float(np.mean(rec)), 4), "loss": round(float(np.mean(loss)), 4),
                              "recovery_per_seed": [round(float(x), 4) for x in rec]})
    chains = _chains(args.tiny)
    steps = len(geoattn.make_batches(chains["train"], max_residues=MAX_RESIDUES))
    result = {
        "script": "benchmarks/train_inverse_folding.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "git": _git(),
        "data": {**_data_version(), **{f"{s}_residues": sum(len(c) for c in cs) for s, cs in chains.items()},
                 **{f"{s}_chains": len(cs) for s, cs in chains.items()},
                 **{f"{s}_families": len({c.family for c in cs}) for s, cs in chains.items()}},
        "machine": _machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "geoattn": geoattn.__version__, "numpy": np.__version__},
        "config": {"model": config, "training": TRAINING, "max_residues": MAX_RESIDUES,
                   "variants": list(VARIANTS), "seeds": list(range(args.seeds)),
                   "epochs_grid": args.epochs_grid, "fractions": args.fractions,
                   "curve_seeds": list(range(args.curve_seeds)), "scramble_seed": SCRAMBLE_SEED,
                   "jobs": args.jobs, "threads_per_job": 1},
        "choose_epochs": {"rule": "lowest mean final validation loss of geometric and no_geometry, seed 0",
                          "mean_valid_loss": {str(e): round(v, 4) for e, v in mean_valid.items()},
                          "epochs": epochs, "runs": grid_runs},
        "lr_factor_per_epoch": _lr_factors(epochs, steps),
        "summary": summary,
        "baseline": baseline,
        "learning_curve": curve,
        "runs": main_runs,
        "curve_runs": curve_runs,
        "timing": {"wall_s": round(time.perf_counter() - t0, 1),
                   "sum_of_runs_s": round(sum(r["seconds"] for r in grid_runs + later), 1),
                   "load_average_1min_start": load_start, "load_average_1min_end": _load_average()},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    return result


if __name__ == "__main__":
    main()
