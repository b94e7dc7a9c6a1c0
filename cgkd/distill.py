"""`cgkd distill`: a student CG potential trained on teacher labels (knowledge distillation).

    L = w_F MSE(F_S, F_mapped)/s_F + w_f MSE(F_S, mean F_T)/s_f + w_E MSE(E_S/N, mean E_T/N)/s_E
        + w_eps MSE(eps_S, mean eps_T)/s_eps

Each term is scaled by the variance s of its target over the training frames, so the weights are
dimensionless and comparable (a term is 1 for a model that predicts the target's mean; E/N varies little
from frame to frame, so its term is strict: w_E = 1 asks for energies as good as the teachers' relative to
that small spread). F are total forces (priors included), E the network energy (sum of per-bead energies
eps, priors excluded) and the means run over the chosen teacher members; teacher energies are centred as
`cgkd.labels` explains.
The FM baseline is the same student with w_F only; one teacher is an ensemble of one. The student inherits
the teachers' priors unchanged and uses their train | validation | test blocks, so it never sees test frames.
Extra frames (CG trajectories labelled by the teachers, or with --perturb displaced copies of the training
frames) join the training block without mapped forces, optionally weighted by the ensemble's agreement on
them. Training shares `cgkd train`'s loop: early stopping on the validation loss, a checkpoint every epoch,
exact `--resume`.
"""
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .dataset import CGDataset, batch
from .errors import CgkdError
from .fileio import atomic_path, locks_output
from .labels import Teachers, eps_offsets, label
from .train import build_model, evaluate, finished_model, fit, model_metadata, write_model

TERMS = (("mapped", "w_mapped"), ("forces", "w_forces"), ("energy", "w_energy"), ("eps", "w_eps"))


def _indices(text, n, what):
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise CgkdError(f"--{what}: expected comma-separated member indices, got {text!r}") from None
    bad = [v for v in values if not 0 <= v < n]
    if bad or not values:
        raise CgkdError(f"--{what}: indices must be in 0..{n - 1}, got {text!r}")
    return values


def check_config(cfg):
    if cfg.teachers is None or cfg.dataset is None:
        raise CgkdError("cgkd distill: --teachers (a teacher ensemble folder) and --dataset (its CG dataset) "
                        "are required")
    weights = {name: getattr(cfg, w) for name, w in TERMS}
    if any(w < 0 for w in weights.values()):
        raise CgkdError(f"cgkd distill: loss weights must be >= 0, got {weights}")
    if not any(weights.values()):
        raise CgkdError("cgkd distill: all loss weights (--w-mapped, --w-forces, --w-energy, --w-eps) are zero")
    if cfg.perturb < 0 or cfg.perturb_copies < 1:
        raise CgkdError(f"--perturb must be >= 0 and --perturb-copies >= 1, got {cfg.perturb}, {cfg.perturb_copies}")
    if cfg.extra_weighting not in ("none", "agreement"):
        raise CgkdError(f"--extra-weighting must be none or agreement, got {cfg.extra_weighting!r}")


class TrainingFrames(SimpleNamespace):
    """The dataset's frames plus any extra labelled frames, with per-frame targets: mapped forces (zero and
    masked off for extra frames), teacher means, and a weight per frame."""

    @classmethod
    def build(cls, ds, mean, extra):
        parts = [(ds, mean, np.ones(len(ds), bool), np.ones(len(ds)))] + list(extra)
        cat = lambda get: np.concatenate([get(p) for p in parts])  # noqa: E731
        return cls(type_names=ds.type_names, positions=cat(lambda p: p[0].positions),
                   boxes=cat(lambda p: p[0].boxes),
                   forces=cat(lambda p: p[0].forces if p[0].forces is not None and p[2].all()
                              else np.zeros_like(p[0].positions)),
                   has_mapped=cat(lambda p: p[2]), weight=cat(lambda p: p[3]),
                   teacher_forces=cat(lambda p: p[1]["forces"]), teacher_energy=cat(lambda p: p[1]["energy"]),
                   teacher_eps=cat(lambda p: p[1]["eps"]))


def perturbed_frames(cfg, teachers, ds, train):
    """The training frames, `cfg.perturb_copies` times, every bead displaced by N(0, cfg.perturb) nm (seeded by
    cfg.seed); written once into the teachers' label cache."""
    name = f"{ds.path.stem}-{ds.hash[:12]}-perturbed-{cfg.perturb:g}nm-x{cfg.perturb_copies}-seed{cfg.seed}.h5"
    path = teachers.path / "labels" / name
    if not path.exists():
        frames = np.tile(train, cfg.perturb_copies)
        noise = np.random.default_rng(cfg.seed).normal(scale=cfg.perturb, size=(len(frames), ds.n_beads, 3))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            ds.write(tmp, frames, noise.astype(np.float32))
    return str(path)


def _extra_frames(cfg, teachers, ds, members, reference_std, progress, train):
    """[(CGDataset, teacher means, has-mapped mask, weights)] for the extra trajectories and perturbed frames."""
    out = []
    paths = [p.strip() for p in (cfg.extra or "").split(",") if p.strip()]
    if cfg.perturb > 0:
        paths.append(perturbed_frames(cfg, teachers, ds, train))
    for path in paths:
        ex = CGDataset(path, forces=False)
        if ex.type_names != ds.type_names:
            raise CgkdError(f"{path}: its beads (types in order) differ from those of {ds.path}; extra frames must "
                            "share the dataset's topology")
        labels, _ = label(teachers, ex, batch_size=cfg.label_batch, progress=progress)
        mean = labels.mean(members)
        weight = np.ones(len(ex))
        if cfg.extra_weighting == "agreement":  # frames where the teachers disagree more count less
            std = np.sqrt((mean["force_std"] ** 2).mean(axis=(1, 2)))
            weight = np.minimum(1.0, (reference_std / np.maximum(std, 1e-12)) ** 2)
        out.append((ex, mean, np.zeros(len(ex), bool), weight))
    return out


def _data_key(cfg, ds, labels_key, extra):
    """What a checkpoint was trained on: data, labels, extra frames, members and loss settings."""
    what = [ds.hash, labels_key, [e[0].hash for e in extra], cfg.members, cfg.extra_weighting, cfg.perturb,
            [getattr(cfg, w) for _, w in TERMS]]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


@locks_output
def distill(cfg, progress=True):
    """Train a student into cfg.out; returns its metadata (also in <out>/metadata.json)."""
    check_config(cfg)
    out = Path(cfg.out)
    if out.exists() and not cfg.resume and not cfg.overwrite:
        raise CgkdError(f"{out}: output exists; pass --overwrite to replace it or --resume to continue")
    teachers = Teachers(cfg.teachers)
    ds = CGDataset(cfg.dataset, forces=True)
    trained_on = teachers.metas[0]["dataset_sha256"]
    if ds.hash != trained_on:
        raise CgkdError(f"{ds.path}: not the dataset the teachers in {teachers.path} were trained on "
                        f"({teachers.metas[0]['dataset']}); a student uses its teachers' data and splits")
    members = None if cfg.members is None else _indices(cfg.members, len(teachers.models), "members")
    several = len(members or teachers.models) > 1
    if (cfg.extra or cfg.perturb > 0) and cfg.extra_weighting == "agreement" and not several:
        raise CgkdError("--extra-weighting agreement needs at least two teacher members (their disagreement)")
    split = teachers.metas[0]["split"]
    train = np.arange(*split["train"])
    labels, status = label(teachers, ds, cfg.labels, batch_size=cfg.label_batch, progress=progress)
    if progress:
        print(f"cgkd distill: labels {labels.path} ({status}); ensemble force std per bead type "
              f"{json.dumps({k: round(v, 1) for k, v in labels.uncertainty(ds.type_names).items()})} kJ/mol/nm")
    mean = labels.mean(members)
    ref_std = float(np.sqrt((mean["force_std"][train] ** 2).mean()))
    extra = _extra_frames(cfg, teachers, ds, members, ref_std, progress, train)
    data = TrainingFrames.build(ds, mean, extra)
    train_frames = np.concatenate([train, len(ds) + np.arange(sum(len(e[0]) for e in extra))])
    torch.manual_seed(cfg.seed)
    onsets, model = build_model(cfg, ds, split, teacher=teachers,
                                frames=(data.positions[train_frames], data.boxes[train_frames]))
    types = model.type_index(ds.type_names)
    for i in train_frames:
        model.check_neighbors(torch.from_numpy(data.positions[i]), torch.from_numpy(data.boxes[i]))
    weights = {name: getattr(cfg, w) for name, w in TERMS}
    n = ds.n_beads
    scales = {"mapped": float(ds.forces[train].var()), "forces": float(mean["forces"][train].var()),
              "energy": float((mean["energy"][train] / n).var()), "eps": float(mean["eps"][train].var())}
    for term, scale in scales.items():
        if weights[term] and not scale > 0:
            raise CgkdError(f"{labels.path}: the {term} targets do not vary over the training frames; "
                            f"cannot scale their loss (set --w-{term} 0)")

    def losses(frames, create_graph):
        t, p, b, bi, f_mapped = batch(data, frames, types)
        eps, _, f = model.energy_forces(t, p, b, bi, create_graph=create_graph)
        k = len(frames)
        w = torch.as_tensor(data.weight[frames], dtype=f.dtype)
        mapped = torch.as_tensor(data.has_mapped[frames])
        sq = lambda a, b_, per: ((a - b_) ** 2).reshape(k, per).mean(axis=1)  # noqa: E731
        energy = eps.reshape(k, n).sum(axis=1) / n
        terms = {}
        if weights["mapped"]:
            m = mapped.to(f.dtype)
            terms["mapped"] = (sq(f, f_mapped, 3 * n) * m).sum() / m.sum().clamp(min=1.0)
        if weights["forces"]:
            target = torch.from_numpy(data.teacher_forces[frames].reshape(-1, 3))
            terms["forces"] = (sq(f, target, 3 * n) * w).sum() / w.sum()
        if weights["energy"]:
            target = torch.from_numpy(data.teacher_energy[frames] / n).to(f.dtype)
            terms["energy"] = (((energy - target) ** 2) * w).sum() / w.sum()
        if weights["eps"]:
            target = torch.from_numpy(data.teacher_eps[frames].reshape(-1))
            terms["eps"] = (sq(eps, target, n) * w).sum() / w.sum()
        terms = {k_: v / scales[k_] for k_, v in terms.items()}
        total = sum(weights[k_] * v for k_, v in terms.items())
        return total, terms, f

    def step(frames):
        total, terms, _ = losses(frames, create_graph=True)
        return total, {f"loss_{k}": v.item() for k, v in terms.items()}

    val = np.arange(*split["val"])

    def validate():  # one pass: the loss and the force errors against the mapped and the teachers' forces
        total, sq_mapped, sq_teachers = 0.0, 0.0, 0.0
        for s in range(0, len(val), cfg.batch_size):
            fr = val[s:s + cfg.batch_size]
            loss, _, f = losses(fr, create_graph=False)
            total += loss.item() * len(fr)
            f = f.detach().numpy().reshape(len(fr), n, 3)
            sq_mapped += float(((f - ds.forces[fr]) ** 2).sum())
            sq_teachers += float(((f - mean["forces"][fr]) ** 2).sum())
        size = len(val) * n * 3
        return {"val_loss": total / len(val), "val_force_rmse": float(np.sqrt(sq_mapped / size)),
                "val_teacher_force_rmse": float(np.sqrt(sq_teachers / size))}

    data_key = _data_key(cfg, ds, labels.attrs["key"], extra)
    if (meta := finished_model(cfg, out, data_key)) is not None:
        return meta
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        state = fit(model, cfg, out, cfg.seed, data_key, train_frames, step, validate, "val_loss", progress)
    except BaseException:
        if created and not (out / "checkpoint.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no empty folder behind
        raise
    offsets = eps_offsets(model, ds, train, cfg.batch_size)
    meta = model_metadata(model, cfg, ds, split, cfg.seed, state, onsets)
    meta.update(metrics={"test": test_metrics(model, ds, types, np.arange(*split["test"]), mean, offsets,
                                              cfg.batch_size)},
                eps_offsets_kJ_mol=offsets,
                distillation={"teachers": str(teachers.path), "members": [str(m) for m in teachers.members],
                              "used_members": members if members is not None else list(range(len(teachers.models))),
                              "member_sha256": teachers.hashes, "labels": str(labels.path),
                              "labels_key": labels.attrs["key"], "weights": weights, "loss_scales": scales,
                              "extra": [{"path": str(e[0].path), "frames": len(e[0]), "sha256": e[0].hash,
                                         "mean_weight": float(np.mean(e[3]))} for e in extra]})
    meta["prior"] = teachers.metas[0]["prior"]
    write_model(out, model, meta)
    return meta


def test_metrics(model, ds, types, frames, mean, offsets, batch_size):
    """Errors of a student on the given frames: forces against the mapped forces and against the teachers'
    mean (per bead type), network energy per bead and per-bead energies against the teachers' (per type),
    the student's energies centred per bead type on its training frames (`offsets`) as the teachers' are."""
    names = np.array(ds.type_names)
    n = len(names)
    off = np.array([offsets[t] for t in ds.type_names])
    e_err, eps_err = [], []
    for s in range(0, len(frames), batch_size):
        fr = frames[s:s + batch_size]
        t, p, b, bi, _ = batch(ds, fr, types)
        with torch.no_grad():
            eps, _ = model(t, p, b, bi)
        eps = eps.numpy().reshape(len(fr), n) - off
        e_err.append(eps.sum(axis=1) / n - mean["energy"][fr] / n)
        eps_err.append(eps - mean["eps"][fr])
    e_err, eps_err = np.concatenate(e_err), np.concatenate(eps_err)
    return {"forces_vs_mapped": evaluate(model, ds, types, frames, batch_size),
            "forces_vs_teachers": evaluate(model, ds, types, frames, batch_size, mean["forces"]),
            "energy_per_bead_vs_teachers_rmse": float(np.sqrt((e_err ** 2).mean())),
            "eps_vs_teachers_rmse": {"all": float(np.sqrt((eps_err ** 2).mean())),
                                     **{t: float(np.sqrt((eps_err[:, names == t] ** 2).mean()))
                                        for t in sorted(set(names))}}}
