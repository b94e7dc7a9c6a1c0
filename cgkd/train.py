"""Force matching: train CGPotentials (and ensembles of them) on mapped CG forces.

Splits are contiguous time blocks (train | validation | test), since neighbouring frames are correlated.
Adam, ReduceLROnPlateau and early stopping on the validation force RMSE; a checkpoint every epoch
(model, optimiser, scheduler, best weights, metrics) makes `resume` continue exactly: batch order comes
from a generator seeded by (seed, epoch), so the next loss equals that of an uninterrupted run.
"""
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, observables
from .errors import CgkdError
from .fileio import atomic_path, file_hash, write_json
from .h5md import H5MDTrajectory
from .model import CGPotential, max_neighbors, pair_onsets
from .priors import RepulsivePrior, fit_bonded

KB = 0.008314462618  # kJ/mol/K
METRIC_COLUMNS = ["epoch", "train_loss", "val_force_rmse", "val_force_mae", "lr", "seconds"]


class CGDataset:
    """Frames of a CG dataset: positions, forces, boxes (float32 tensors) and bead types."""

    def __init__(self, path, max_frames=None):
        self.path = Path(path)
        with H5MDTrajectory(path) as t:
            if not t.has("force"):
                raise CgkdError(f"{self.path}: no forces in this dataset; force matching needs mapped forces")
            g = t.cgkd
            if "bead_types" not in g:
                raise CgkdError(f"{self.path}: no /cgkd/bead_types: not a CG dataset from `cgkd map`")
            n = min(len(t), max_frames or len(t))
            self.positions = t.positions(slice(0, n)).astype(np.float32)
            self.forces = t.forces(slice(0, n)).astype(np.float32)
            self.boxes = t.boxes(slice(0, n)).astype(np.float32)
            self.type_names = [x.decode() if isinstance(x, bytes) else str(x) for x in g["bead_types"][:]]
            self.residues = g["residue_ids"][:] if "residue_ids" in g else np.arange(len(self.type_names))
            self.temperature = float(g.attrs["temperature_K"]) if "temperature_K" in g.attrs else None
            self.masses = t.masses()
        if n < 3:
            raise CgkdError(f"{self.path}: {n} frames; need at least 3 (train, validation, test)")
        self.hash = file_hash(self.path)

    def __len__(self):
        return len(self.positions)

    def split(self, val_fraction, test_fraction):
        """Contiguous blocks: the first frames train, then validation, then test."""
        n = len(self)
        n_test = max(1, int(round(n * test_fraction)))
        n_val = max(1, int(round(n * val_fraction)))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise CgkdError(f"{self.path}: {n} frames cannot hold the validation and test fractions")
        return {"train": [0, n_train], "val": [n_train, n_train + n_val], "test": [n_train + n_val, n]}


def batch(ds, frames, types):
    """Concatenate frames into one graph batch: (types, positions, boxes per frame, batch index, forces)."""
    k, n = len(frames), len(types)
    return (types.repeat(k), torch.from_numpy(ds.positions[frames].reshape(-1, 3)),
            torch.from_numpy(ds.boxes[frames]), torch.arange(k).repeat_interleave(n),
            torch.from_numpy(ds.forces[frames].reshape(-1, 3)))


def force_loss(pred, target, kind):
    diff = pred - target
    if kind == "mse":
        return (diff ** 2).mean()
    if kind == "mae":
        return diff.abs().mean()
    return 0.5 * ((diff ** 2).mean() + diff.abs().mean())


def evaluate(model, ds, types, frames, batch_size):
    """Force errors on the given frames: RMSE and MAE overall and per bead type (kJ/mol/nm). `model` may be
    a list of models: an ensemble, whose prediction is the members' mean force."""
    models = model if isinstance(model, (list, tuple)) else [model]
    sq, ab, count = {}, {}, {}
    names = np.array(ds.type_names)
    for s in range(0, len(frames), batch_size):
        fr = frames[s:s + batch_size]
        t, p, b, bi, f = batch(ds, fr, types)
        pred = sum(m.energy_forces(t, p.clone(), b, bi)[2].detach() for m in models) / len(models)
        err = (pred - f).numpy().reshape(len(fr), -1, 3)
        for name in ["all", *sorted(set(names))]:
            sel = np.ones(len(names), bool) if name == "all" else names == name
            e = err[:, sel]
            sq[name] = sq.get(name, 0.0) + float((e ** 2).sum())
            ab[name] = ab.get(name, 0.0) + float(np.abs(e).sum())
            count[name] = count.get(name, 0) + e.size
    return {k: {"rmse": float(np.sqrt(sq[k] / count[k])), "mae": ab[k] / count[k]} for k in sq}


def consistency(model, ds, types, frame, h=1e-4, atoms=5):
    """Largest relative difference between model forces and central differences of its energy (float64)."""
    m64 = CGPotential.from_state(model.hparams, model.priors_state(), model.state_dict(), dtype=torch.float64)
    pos = torch.tensor(ds.positions[frame], dtype=torch.float64)
    box = torch.tensor(ds.boxes[frame], dtype=torch.float64)
    _, _, forces = m64.energy_forces(types, pos.clone(), box)
    worst = 0.0
    for a in np.linspace(0, len(types) - 1, atoms).astype(int):
        fd = np.zeros(3)
        for k in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[a, k] += h
            minus[a, k] -= h
            with torch.no_grad():
                fd[k] = -(m64(types, plus, box)[1] - m64(types, minus, box)[1]).item() / (2 * h)
        ref = forces[a].detach().numpy()
        worst = max(worst, float(np.linalg.norm(fd - ref) / max(np.linalg.norm(ref), 1e-8)))
    return worst


def build_model(cfg, ds, split):
    """(RDF onsets per type pair, CGPotential) for the dataset: prior walls at the training frames' RDF
    onsets (none when cfg.prior_epsilon is 0), neighbour budget from the densest frame."""
    half = observables.max_cutoff(ds.boxes)
    if cfg.cutoff > half:
        raise CgkdError(f"{ds.path}: cutoff {cfg.cutoff} nm is larger than half the box ({half:.3f} nm)")
    lo, hi = split["train"]
    r, g, _ = observables.rdf(ds.positions[lo:hi], ds.boxes[lo:hi], np.array(ds.type_names), r_max=half,
                              n_bins=int(half / 0.005))
    names = sorted(set(ds.type_names))
    onsets = pair_onsets(names, r, g)
    prior = RepulsivePrior(onsets, cfg.prior_epsilon) if cfg.prior_epsilon > 0 else None
    temperature = cfg.temperature or ds.temperature
    bonded = fit_bonded(ds.positions[lo:hi], ds.boxes[lo:hi], ds.type_names, ds.residues,
                        KB * temperature if temperature else None, where=str(ds.path))
    budget = max_neighbors(ds.positions, ds.boxes, max(cfg.cutoff, prior.cutoff if prior is not None else 0.0))
    model = CGPotential(names, cutoff=cfg.cutoff, channels=cfg.channels, layers=cfg.layers, rbf=cfg.rbf,
                        arch=cfg.arch, max_num_neighbors=budget, prior=prior, bonded=bonded,
                        molecules=ds.residues if bonded is not None else None,
                        bead_types=ds.type_names if bonded is not None else None)
    return onsets, model


def save_checkpoint(path, state):
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path):
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise CgkdError(f"{path}: not a readable cgkd checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != "cgkd-model-1":
        raise CgkdError(f"{path}: not a cgkd model checkpoint")
    return state


def train_member(cfg, member_dir, seed, progress=True):
    """Train one model into member_dir; returns its metadata."""
    member_dir = Path(member_dir)
    member_dir.mkdir(parents=True, exist_ok=True)
    ckpt = member_dir / "checkpoint.pt"
    ds = CGDataset(cfg.dataset, cfg.max_frames)
    split = ds.split(cfg.val_fraction, cfg.test_fraction)
    torch.manual_seed(seed)
    onsets, model = build_model(cfg, ds, split)
    types = model.type_index(ds.type_names)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor, patience=cfg.lr_patience)
    state = {"epoch": 0, "best": float("inf"), "best_state": None, "since_best": 0, "metrics": []}
    if cfg.resume and ckpt.exists():
        saved = load_checkpoint(ckpt)
        if saved["dataset_hash"] != ds.hash:
            raise CgkdError(f"{ckpt}: was trained on another dataset than {ds.path}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
    for i in range(*split["train"]):
        model.check_neighbors(torch.from_numpy(ds.positions[i]), torch.from_numpy(ds.boxes[i]))
    train = np.arange(*split["train"])
    val = np.arange(*split["val"])
    log = member_dir / "metrics.csv"
    with tqdm(total=cfg.epochs, initial=state["epoch"], disable=not progress, desc=member_dir.name) as bar:
        while state["epoch"] < cfg.epochs and state["since_best"] < cfg.patience:
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(seed * 100003 + state["epoch"])
            order = train[torch.randperm(len(train), generator=gen).numpy()]
            losses = []
            for s in range(0, len(order), cfg.batch_size):
                t, p, b, bi, f = batch(ds, order[s:s + cfg.batch_size], types)
                _, _, pred = model.energy_forces(t, p, b, bi, create_graph=True)
                loss = force_loss(pred, f, cfg.loss)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            v = evaluate(model, ds, types, val, cfg.batch_size)["all"]
            sched.step(v["rmse"])
            state["epoch"] += 1
            if v["rmse"] < state["best"]:
                state.update(best=v["rmse"], since_best=0,
                             best_state={k: x.clone() for k, x in model.state_dict().items()})
            else:
                state["since_best"] += 1
            row = [state["epoch"], float(np.mean(losses)), v["rmse"], v["mae"], opt.param_groups[0]["lr"],
                   time.perf_counter() - t0]
            state["metrics"].append(row)
            with atomic_path(log) as tmp:
                with open(tmp, "w", newline="") as fh:
                    csv.writer(fh).writerows([METRIC_COLUMNS] + state["metrics"])
            save_checkpoint(ckpt, {"format": "cgkd-model-1", "hparams": model.hparams, "model": model.state_dict(),
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state,
                                   "dataset_hash": ds.hash, "seed": seed, "priors": model.priors_state()})
            bar.update(1)
            bar.set_postfix(val_rmse=f"{v['rmse']:.1f}")
    model.load_state_dict(state["best_state"])
    test = np.arange(*split["test"])
    masses = {} if ds.masses is None else {t: float(ds.masses[ds.type_names.index(t)]) for t in model.type_names}
    meta = {"cgkd_version": __version__, "bead_types": model.type_names, "hparams": model.hparams,
            "bead_masses_amu": masses,
            "units": {"length": "nm", "energy": "kJ/mol", "force": "kJ/mol/nm"},
            "temperature_K": cfg.temperature or ds.temperature,
            "pair_onsets_nm": onsets.tolist(),
            "prior": {"kind": "WCA walls at the RDF onsets" if model.prior is not None else "none",
                      "epsilon_kJ_mol": model.prior.epsilon if model.prior is not None else 0.0,
                      "bonded": None if model.bonded is None else {
                          "bonds": model.bonded.bonds.shape[0], "angles": model.bonded.angles.shape[0],
                          "fit": f"Boltzmann inversion at {cfg.temperature or ds.temperature} K"}},
            "dataset": str(ds.path), "dataset_sha256": ds.hash, "split": split, "seed": seed,
            "config": dataclasses.asdict(cfg), "epochs_run": state["epoch"],
            "metrics": {"val": evaluate(model, ds, types, val, cfg.batch_size),
                        "test": evaluate(model, ds, types, test, cfg.batch_size)},
            "force_energy_consistency_max_rel": consistency(model, ds, types, int(test[0]))}
    save_checkpoint(member_dir / "model.pt", {"format": "cgkd-model-1", "hparams": model.hparams,
                                               "model": model.state_dict(), "priors": model.priors_state()})
    write_json(member_dir / "metadata.json", meta)
    return meta


def load_model(path):
    """A trained CGPotential from a model folder (or its model.pt / checkpoint.pt)."""
    path = Path(path)
    f = path / "model.pt" if path.is_dir() else path
    if not f.exists():
        raise CgkdError(f"{f}: no trained model here")
    state = load_checkpoint(f)
    return CGPotential.from_state(state["hparams"], state["priors"], state["model"]).eval()


def load_ensemble(path):
    """(member folders, models) of a model folder (model.pt) or an ensemble folder (member_*)."""
    path = Path(path)
    members = [path] if (path / "model.pt").exists() else sorted(path.glob("member_*"))
    if not members:
        raise CgkdError(f"{path}: no model.pt and no member_* folders: not a cgkd model or ensemble")
    return members, [load_model(m) for m in members]


def _member(args):
    cfg, member_dir, seed, threads = args
    if threads:
        torch.set_num_threads(threads)
    return train_member(cfg, member_dir, seed, progress=threads is None)


def train(cfg, progress=True):
    """Train cfg.ensemble members into cfg.out (member_<k>, seeds seed + k); returns their metadata."""
    if cfg.dataset is None:
        raise CgkdError("cgkd train: --dataset (a CG dataset from `cgkd map`) is required")
    out = Path(cfg.out)
    if out.exists() and not cfg.resume and not cfg.overwrite:
        raise CgkdError(f"{out}: output exists; pass --overwrite to replace it or --resume to continue")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, out / f"member_{k}", cfg.seed + k, 1 if cfg.workers > 1 else None) for k in range(cfg.ensemble)]
    if cfg.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(cfg.workers, cfg.ensemble)) as pool:
            metas = pool.map(_member, jobs)
    else:
        metas = [_member(j) for j in jobs]
    summary = {"members": [m["metrics"]["test"]["all"] for m in metas], "seeds": [m["seed"] for m in metas]}
    if len(metas) > 1:
        ds = CGDataset(cfg.dataset, cfg.max_frames)
        models = [load_model(out / f"member_{k}") for k in range(cfg.ensemble)]
        test = np.arange(*metas[0]["split"]["test"])
        summary["ensemble_mean"] = evaluate(models, ds, models[0].type_index(ds.type_names), test, cfg.batch_size)
        summary["average_member_rmse"] = float(np.mean([m["rmse"] for m in summary["members"]]))
    write_json(out / "ensemble.json", summary)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return metas
