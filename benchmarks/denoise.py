"""Denoising and distillation on a fluid with a known potential: teachers trained on very noisy forces predict
held-out forces closer to the clean ones than their labels are, and a student distilled from the ensemble is
closer still than the force-matching (FM) baseline of the same architecture trained on the noisy labels.

A Lennard-Jones fluid (argon-like, 64 particles, 120 K) is simulated with OpenMM; its exact forces get
Gaussian noise of 3x their RMS (like mapped CG forces); `cgkd train` fits an ensemble of teachers on the noisy
labels (contiguous train | val | test blocks); `cgkd distill` trains small students (graph network) from the
ensemble's labels ({f}; {f, eps}) and the FM baseline (w_F only). On the test frames every model's forces
are compared with the clean forces. Records benchmarks/results/denoise.json.

    python benchmarks/denoise.py --frames 600 --epochs 40 --teachers 4 --teacher gn:32x2
    python benchmarks/denoise.py --frames 600 --epochs 40 --teachers 4 --teacher tensornet:32x2

Results are kept per teacher architecture (`by_teacher`).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as u
import torch

from cgkd import config
from cgkd.bench import record
from cgkd.h5md import H5MDWriter
from cgkd.dataset import CGDataset
from cgkd.model import load_model
from cgkd.distill import distill
from cgkd.labels import Teachers, label
from cgkd.train import train

RESULTS = Path(__file__).resolve().parent / "results" / "denoise.json"


def simulate(n_side=4, sigma=0.34, epsilon=0.996, density=0.75, frames=600, every=200, seed=7):
    n = n_side ** 3
    edge = (n / density) ** (1 / 3) * sigma
    system = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(min(2.5 * sigma, 0.49 * edge))
    nb.setUseDispersionCorrection(False)
    for _ in range(n):
        system.addParticle(39.95)
        nb.addParticle(0.0, sigma, epsilon)
    system.addForce(nb)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.eye(3) * edge])
    integ = openmm.LangevinMiddleIntegrator(120 * u.kelvin, 1 / u.picosecond, 0.004 * u.picosecond)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"))
    grid = (np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * edge / n_side
    ctx.setPositions(grid)
    ctx.setVelocitiesToTemperature(120 * u.kelvin, seed)
    integ.step(5000)
    pos, frc = [], []
    for _ in range(frames):
        integ.step(every)
        s = ctx.getState(getPositions=True, getForces=True)
        pos.append(s.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        frc.append(s.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
    return np.array(pos), np.array(frc), np.broadcast_to(np.eye(3) * edge, (frames, 3, 3)).copy()


def clean_error(model_dir, pos, boxes, clean, frames):
    """RMSE (kJ/mol/nm) of a model's forces against the clean forces on the given frames."""
    model = load_model(model_dir)
    types = model.type_index(["LJ"] * pos.shape[1])
    pred = np.array([model.energy_forces(types, torch.tensor(pos[i], dtype=torch.float32),
                                         torch.tensor(boxes[i], dtype=torch.float32))[2].detach().numpy()
                     for i in frames])
    return float(np.sqrt(((pred - clean[frames]) ** 2).mean()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--noise", type=float, default=3.0, help="noise RMS in units of the force RMS")
    p.add_argument("--teachers", type=int, default=4, help="ensemble members")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--teacher", default="gn:32x2", help="teacher ARCH:CHANNELSxLAYERS (cutoff 0.6 nm)")
    a = p.parse_args()
    t_arch, t_shape = a.teacher.split(":")
    t_channels, t_layers = (int(x) for x in t_shape.split("x"))
    pos, clean, boxes = simulate(frames=a.frames)
    rms = np.sqrt((clean ** 2).mean())
    noisy = clean + np.random.default_rng(0).normal(scale=a.noise * rms, size=clean.shape)
    t0 = time.perf_counter()
    fit = dict(epochs=a.epochs, batch_size=8, lr=2e-3, patience=8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        w = H5MDWriter.create(tmp / "lj.h5", pos.shape[1], group="cg")
        w.extend(np.arange(a.frames), np.arange(a.frames, dtype=float), boxes, position=pos, force=noisy)
        w.cgkd.create_dataset("bead_types", data=np.array([b"LJ"] * pos.shape[1]))
        w.close()
        cfg = config.TrainConfig(dataset=str(tmp / "lj.h5"), out=str(tmp / "teachers"), cutoff=0.6, arch=t_arch,
                                 channels=t_channels, layers=t_layers, rbf=16, ensemble=a.teachers, workers=a.workers,
                                 **fit)
        metas = train(cfg, progress=True).members
        lo, hi = metas[0]["split"]["test"]
        test = np.arange(lo, hi)
        members = [clean_error(tmp / "teachers" / f"member_{k}", pos, boxes, clean, test) for k in range(a.teachers)]
        ds = CGDataset(tmp / "lj.h5")
        ensemble = Teachers(tmp / "teachers")
        labels, _ = label(ensemble, ds, progress=False)
        mean = labels.mean()["forces"][test]
        ensemble_err = float(np.sqrt(((mean - clean[test]) ** 2).mean()))
        student = dict(dataset=str(tmp / "lj.h5"), teachers=str(tmp / "teachers"), arch="gn", channels=16, layers=1,
                       rbf=16, cutoff=0.6, **fit)
        variants = {"FM": dict(w_mapped=1.0, w_forces=0.0), "KD {f}": dict(w_forces=1.0),
                    "KD {f, eps}": dict(w_forces=1.0, w_eps=1.0)}
        students = {}
        for name, weights in variants.items():
            out = tmp / name.replace(" ", "").replace("{", "_").replace("}", "").replace(",", "")
            meta = distill(config.DistillConfig(out=str(out), **student, **weights), progress=True)
            students[name] = {"weights": weights, "epochs_run": meta["epochs_run"],
                              "vs_clean_rmse": clean_error(out, pos, boxes, clean, test)}
    label_err = float(np.sqrt(((noisy[test] - clean[test]) ** 2).mean()))
    res = {"particles": pos.shape[1], "frames": a.frames, "force_rms": float(rms), "noise_rms": float(a.noise * rms),
           "test_frames": len(test), "labels_vs_clean_rmse": label_err, "zero_prediction_ratio": float(rms / label_err),
           "teacher_model": metas[0]["hparams"], "teacher_epochs_run": [m["epochs_run"] for m in metas],
           "teachers_vs_clean_rmse": members, "teacher_ratio": float(np.mean(members)) / label_err,
           "ensemble_mean_vs_clean_rmse": ensemble_err, "ensemble_ratio": ensemble_err / label_err,
           "student_model": {k: v for k, v in student.items() if k in ("arch", "channels", "layers", "rbf", "cutoff")},
           "students": {k: {**v, "ratio": v["vs_clean_rmse"] / label_err} for k, v in students.items()},
           "kd_beats_fm": bool(students["KD {f}"]["vs_clean_rmse"] < students["FM"]["vs_clean_rmse"]),
           "seconds": time.perf_counter() - t0}
    previous = json.loads(RESULTS.read_text()).get("by_teacher", {}) if RESULTS.exists() else {}
    record(RESULTS, {"by_teacher": {**previous, a.teacher: res}})
    print(f"RMSE against the clean forces (noisy labels {label_err:.2f} kJ/mol/nm; predicting zero {rms:.2f}):")
    print(f"  teachers {np.mean(members):.2f} (ratio {res['teacher_ratio']:.3f}), ensemble mean {ensemble_err:.2f} "
          f"(ratio {res['ensemble_ratio']:.3f})")
    for k, v in res["students"].items():
        print(f"  student {k}: {v['vs_clean_rmse']:.2f} (ratio {v['ratio']:.3f})")


if __name__ == "__main__":
    main()
