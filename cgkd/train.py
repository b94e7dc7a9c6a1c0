"""Force matching: train CGPotentials (and ensembles of them) on mapped CG forces, and the parts `cgkd distill`
shares: model building (`build_model`), the epoch loop with checkpoints and exact resume (`fit`), force errors
(`evaluate`) and model metadata (`model_metadata`, `write_model`).

Splits are contiguous time blocks (train | validation | test), since neighbouring frames are correlated.
Adam, ReduceLROnPlateau and early stopping on the validation force RMSE; a checkpoint every epoch
(model, optimiser, scheduler, best weights, metrics) makes `resume` continue exactly: batch order comes
from a generator seeded by (seed, epoch), so the next loss equals that of an uninterrupted run.
"""
import copy
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, observables
from .dataset import CGDataset, batch
from .errors import CgkdError
from .fileio import atomic_path, locks_output, write_json
from .labels import eps_offsets
from .model import CGPotential, load_checkpoint, load_model, max_neighbors, pair_onsets, save_checkpoint
from .priors import BondedPrior, RepulsivePrior, fit_bonded

KB = 0.008314462618  # kJ/mol/K


def force_loss(pred, target, kind):
    diff = pred - target
    if kind == "mse":
        return (diff ** 2).mean()
    if kind == "mae":
        return diff.abs().mean()
    return 0.5 * ((diff ** 2).mean() + diff.abs().mean())


def evaluate(model, ds, types, frames, batch_size, reference=None):
    """Force errors on the given frames against the mapped forces (or `reference`, an array over all frames):
    RMSE and MAE overall and per bead type (kJ/mol/nm). `model` may be a list of models: an ensemble, whose
    prediction is the members' mean force."""
    models = model if isinstance(model, (list, tuple)) else [model]
    sq, ab, count = {}, {}, {}
    names = np.array(ds.type_names)
    for s in range(0, len(frames), batch_size):
        fr = frames[s:s + batch_size]
        t, p, b, bi, f = batch(ds, fr, types, reference)
        pred = sum(m.energy_forces(t, p.clone(), b, bi)[2].detach() for m in models) / len(models)
        err = (pred - f).numpy().reshape(len(fr), -1, 3)
        for name in ["all", *sorted(set(names))]:
            sel = np.ones(len(names), bool) if name == "all" else names == name
            e = err[:, sel]
            sq[name] = sq.get(name, 0.0) + float((e ** 2).sum())
            ab[name] = ab.get(name, 0.0) + float(np.abs(e).sum())
            count[name] = count.get(name, 0) + e.size
    return {k: {"rmse": float(np.sqrt(sq[k] / count[k])), "mae": ab[k] / count[k]} for k in sq}


def consistency(model, ds, types, frame, h=1e-5, atoms=5):
    """Largest relative difference between model forces and central differences of its energy (float64). The
    error of the differences goes as h^2 (stiff priors); h = 1e-5 nm keeps it ~100x below h = 1e-4 nm, roundoff
    still under 1e-7."""
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


def build_model(cfg, ds, split, teacher=None, frames=None):
    """(RDF onsets per type pair, CGPotential) for the dataset, architecture from cfg (arch, channels, layers,
    rbf, cutoff). Priors: a `teacher`'s, unchanged (students), or new ones: walls at the training frames' RDF
    onsets (none when cfg.prior_epsilon is 0) and bonded terms by Boltzmann inversion. The neighbour budget
    comes from the densest frame of the dataset (or of `frames`: (positions, boxes) of every frame trained on)."""
    positions, boxes = frames if frames is not None else (ds.positions, ds.boxes)
    half = observables.max_cutoff(boxes)
    if cfg.cutoff > half:
        raise CgkdError(f"{ds.path}: cutoff {cfg.cutoff} nm is larger than half the box ({half:.3f} nm)")
    lo, hi = split["train"]
    names = sorted(set(ds.type_names))
    if teacher is not None:
        onsets, prior, bonded = teacher.onsets, copy.deepcopy(teacher.model.prior), teacher.model.bonded
        if bonded is not None:
            bonded = BondedPrior.for_topology(bonded.tables, ds.type_names, ds.residues)
    else:
        r, g, _ = observables.rdf(ds.positions[lo:hi], ds.boxes[lo:hi], np.array(ds.type_names), r_max=half,
                                  n_bins=int(half / 0.005))
        onsets = pair_onsets(names, r, g)
        prior = RepulsivePrior(onsets, cfg.prior_epsilon) if cfg.prior_epsilon > 0 else None
        temperature = cfg.temperature or ds.temperature
        bonded = fit_bonded(ds.positions[lo:hi], ds.boxes[lo:hi], ds.type_names, ds.residues,
                            KB * temperature if temperature else None, where=str(ds.path))
    budget = max_neighbors(positions, boxes, max(cfg.cutoff, prior.cutoff if prior is not None else 0.0))
    model = CGPotential(names, cutoff=cfg.cutoff, channels=cfg.channels, layers=cfg.layers, rbf=cfg.rbf,
                        rbf_type=cfg.rbf_type, arch=cfg.arch, max_num_neighbors=budget, prior=prior, bonded=bonded,
                        molecules=ds.residues if bonded is not None else None,
                        bead_types=ds.type_names if bonded is not None else None)
    return np.asarray(onsets), model


def _write_metrics(path, rows):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)


def fit(model, cfg, out_dir, seed, data_hash, train_frames, step, validate, score, progress=True):
    """The epoch loop that `cgkd train` and `cgkd distill` share. Adam, ReduceLROnPlateau and early stopping
    on validate()[score] (lower is better); `step(frames)` returns (loss tensor, {term: value}) for a
    mini-batch of the frames in `train_frames`. Every epoch appends a row to out_dir/metrics.csv (train loss,
    each term, each validation value, lr, seconds) and replaces out_dir/checkpoint.pt; with cfg.resume the
    loop continues exactly from it (batch order is seeded by (seed, epoch)). Leaves the best weights in
    `model` and returns the loop state."""
    for key in ("epochs", "batch_size", "patience"):
        if getattr(cfg, key) < 1:
            raise CgkdError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint.pt"
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor, patience=cfg.lr_patience)
    state = {"epoch": 0, "best": float("inf"), "best_state": None, "since_best": 0, "metrics": []}
    if cfg.resume and ckpt.exists():
        saved = load_checkpoint(ckpt)
        if saved["dataset_hash"] != data_hash:
            raise CgkdError(f"{ckpt}: was trained on other data than now ({cfg.dataset} or its labels changed)")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
    train_frames = np.asarray(train_frames)
    with tqdm(total=cfg.epochs, initial=state["epoch"], disable=not progress, desc=out_dir.name) as bar:
        while state["epoch"] < cfg.epochs and state["since_best"] < cfg.patience:
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(seed * 100003 + state["epoch"])
            order = train_frames[torch.randperm(len(train_frames), generator=gen).numpy()]
            losses, terms = [], {}
            for s in range(0, len(order), cfg.batch_size):
                loss, parts = step(order[s:s + cfg.batch_size])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                for k, v in parts.items():
                    terms.setdefault(k, []).append(v)
            v = validate()
            sched.step(v[score])
            state["epoch"] += 1
            if v[score] < state["best"]:
                state.update(best=v[score], since_best=0,
                             best_state={k: x.clone() for k, x in model.state_dict().items()})
            else:
                state["since_best"] += 1
            state.setdefault("columns", ["epoch", "train_loss", *terms, *v, "lr", "seconds"])
            state["metrics"].append([state["epoch"], float(np.mean(losses)), *[float(np.mean(x)) for x in terms.values()],
                                     *v.values(), opt.param_groups[0]["lr"], time.perf_counter() - t0])
            _write_metrics(out_dir / "metrics.csv", [state["columns"]] + state["metrics"])
            save_checkpoint(ckpt, {"format": "cgkd-model-1", "hparams": model.hparams, "model": model.state_dict(),
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state,
                                   "dataset_hash": data_hash, "seed": seed, "priors": model.priors_state()})
            bar.update(1)
            bar.set_postfix({score: f"{v[score]:.4g}"})
    model.load_state_dict(state["best_state"])
    return state


def finished_model(cfg, out_dir, data_hash):
    """With cfg.resume: the metadata of the model in out_dir when its checkpoint is on the same data and a
    resume would train no further (so a finished model is returned as it is, not rewritten); else None."""
    out_dir = Path(out_dir)
    paths = [out_dir / name for name in ("metadata.json", "model.pt", "checkpoint.pt")]
    if not (cfg.resume and all(p.exists() for p in paths)):
        return None
    saved = load_checkpoint(paths[2])
    state = saved["state"]
    meta = json.loads(paths[0].read_text())
    done = state["epoch"] >= cfg.epochs or state["since_best"] >= cfg.patience
    same = saved["dataset_hash"] == data_hash and meta.get("epochs_run") == state["epoch"]
    return meta if done and same else None


def model_metadata(model, cfg, ds, split, seed, state, onsets):
    """metadata.json of a trained model (teacher or student): what `cgkd simulate`, `export` and
    `cgkd.openmm.CGForceField` read, plus provenance."""
    temperature = cfg.temperature if getattr(cfg, "temperature", None) else ds.temperature
    return {"cgkd_version": __version__, "bead_types": model.type_names, "hparams": model.hparams,
            "bead_masses_amu": ds.bead_masses(model.type_names),
            "units": {"length": "nm", "energy": "kJ/mol", "force": "kJ/mol/nm"},
            "temperature_K": temperature,
            "pair_onsets_nm": np.asarray(onsets).tolist(),
            "prior": {"kind": "WCA walls at the RDF onsets" if model.prior is not None else "none",
                      "epsilon_kJ_mol": model.prior.epsilon if model.prior is not None else 0.0,
                      "bonded": None if model.bonded is None else {
                          "bonds": model.bonded.bonds.shape[0], "angles": model.bonded.angles.shape[0],
                          "fit": f"Boltzmann inversion at {temperature} K"}},
            "dataset": str(ds.path), "dataset_sha256": ds.hash, "split": split, "seed": seed,
            "config": dataclasses.asdict(cfg), "epochs_run": state["epoch"]}


def write_model(out_dir, model, meta):
    """model.pt (weights, hyperparameters, priors) and metadata.json of a finished model."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(out_dir) / "model.pt", {"format": "cgkd-model-1", "hparams": model.hparams,
                                                 "model": model.state_dict(), "priors": model.priors_state()})
    write_json(Path(out_dir) / "metadata.json", meta)


def train_member(cfg, member_dir, seed, progress=True):
    """Train one model into member_dir by force matching; returns its metadata."""
    member_dir = Path(member_dir)
    ds = CGDataset(cfg.dataset, frames=slice(0, cfg.max_frames), forces=True)
    if (meta := finished_model(cfg, member_dir, ds.hash)) is not None:
        return meta
    split = ds.split(cfg.val_fraction, cfg.test_fraction)
    torch.manual_seed(seed)
    onsets, model = build_model(cfg, ds, split)
    types = model.type_index(ds.type_names)
    for i in range(*split["train"]):
        model.check_neighbors(torch.from_numpy(ds.positions[i]), torch.from_numpy(ds.boxes[i]))
    member_dir.mkdir(parents=True, exist_ok=True)
    val = np.arange(*split["val"])

    def step(frames):
        t, p, b, bi, f = batch(ds, frames, types)
        _, _, pred = model.energy_forces(t, p, b, bi, create_graph=True)
        return force_loss(pred, f, cfg.loss), {}

    def validate():
        v = evaluate(model, ds, types, val, cfg.batch_size)["all"]
        return {"val_force_rmse": v["rmse"], "val_force_mae": v["mae"]}

    state = fit(model, cfg, member_dir, seed, ds.hash, np.arange(*split["train"]), step, validate,
                "val_force_rmse", progress)
    test = np.arange(*split["test"])
    meta = model_metadata(model, cfg, ds, split, seed, state, onsets)
    meta.update(metrics={"val": evaluate(model, ds, types, val, cfg.batch_size),
                         "test": evaluate(model, ds, types, test, cfg.batch_size)},
                force_energy_consistency_max_rel=consistency(model, ds, types, int(test[0])),
                eps_offsets_kJ_mol=eps_offsets(model, ds, np.arange(*split["train"]), cfg.batch_size))
    write_model(member_dir, model, meta)
    return meta


def _member(args):
    cfg, member_dir, seed, threads = args
    if threads:
        torch.set_num_threads(threads)
    return train_member(cfg, member_dir, seed, progress=threads is None)


@dataclasses.dataclass
class TrainResult:
    """What `cgkd train` made: every member's metadata and the ensemble's test errors (also in ensemble.json)."""
    members: list
    ensemble: dict


@locks_output
def train(cfg, progress=True):
    """Train cfg.ensemble members into cfg.out (member_<k>, seeds seed + k); returns a TrainResult."""
    if cfg.dataset is None:
        raise CgkdError("cgkd train: --dataset (a CG dataset from `cgkd map`) is required")
    out = Path(cfg.out)
    if out.exists() and not cfg.resume and not cfg.overwrite:
        raise CgkdError(f"{out}: output exists; pass --overwrite to replace it or --resume to continue")
    ds = CGDataset(cfg.dataset, frames=slice(0, cfg.max_frames), forces=True)  # bad input fails before any output
    build_model(cfg, ds, ds.split(cfg.val_fraction, cfg.test_fraction))
    jobs = [(cfg, out / f"member_{k}", cfg.seed + k, 1 if cfg.workers > 1 else None) for k in range(cfg.ensemble)]
    if cfg.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(cfg.workers, cfg.ensemble)) as pool:
            metas = pool.map(_member, jobs)
    else:
        metas = [_member(j) for j in jobs]
    summary = {"members": [m["metrics"]["test"]["all"] for m in metas], "seeds": [m["seed"] for m in metas]}
    if len(metas) > 1:
        models = [load_model(out / f"member_{k}") for k in range(cfg.ensemble)]
        test = np.arange(*metas[0]["split"]["test"])
        summary["ensemble_mean"] = evaluate(models, ds, models[0].type_index(ds.type_names), test, cfg.batch_size)
        summary["average_member_rmse"] = float(np.mean([m["rmse"] for m in summary["members"]]))
    write_json(out / "ensemble.json", summary)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return TrainResult(metas, summary)
