"""Why do distilled students fail where the force-matched one runs? Teacher disagreement and the student's
error against the teachers along a CG run of each student, against their values on the training frames.

For each model (default: the ablation's FM, KD-8 {f} and KD-8 {f,eps} + perturbed frames students of seed 1)
a short run is made with the ablation's settings (10 fs, Langevin 1/ps, the dataset's last frame, the seed of
its first default replica) but a frame every --report steps, stopped by the stability monitor as in the
study. The 8 teachers label every frame (`cgkd label`); per frame this records the ensemble's force standard
deviation (RMS over beads and components: the teachers' own uncertainty), the student's force error against
the ensemble mean (RMS) and the closest bead pair relative to its pair's onset in
the data. On the training frames the teachers' std and the student's test error are known: frames far from
the data show as teacher disagreement rising above its training value.

    python benchmarks/kd_instability.py                       # ~10 min on 2 cores
    python benchmarks/kd_instability.py --scans-only          # the pair scans, with the recorded runs
    python benchmarks/kd_instability.py --models FM=benchmarks/results/ablation/models/FM/seed_1 --steps 2000

Then, for the closest pair of each bead-type pair in that start frame, the total energy of every model (walls
included) and of the teachers' mean as one bead is moved along the pair's axis from 1.3 to 0.55 x the pair's
RDF onset: a model with an energy hole inside the onsets shows it here directly.

Writes benchmarks/results/kd_instability.json, kd_instability.png and kd_instability_pairs.png.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cgkd import config
from cgkd.bench import record
from cgkd.dataset import CGDataset
from cgkd.labels import label
from cgkd.model import load_model
from cgkd.simulate import simulate
from cgkd.study import slug

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "results" / "ablation" / "models"
RESULTS = ROOT / "benchmarks" / "results" / "kd_instability.json"
DEFAULT = {"FM": STUDY / "FM" / "seed_1", "KD-8 {f}": STUDY / "KD-8__f" / "seed_1",
           "KD-8 {f,eps} + perturbed frames": STUDY / "KD-8__f_eps____perturbed_frames" / "seed_1"}


def closest_over_onset(pos, box, types, onsets, names):
    """Smallest (pair distance / the onset of its type pair) in a frame (minimum image, orthorhombic box)."""
    edge = np.diag(box)
    d = pos[:, None] - pos[None]
    d -= edge * np.round(d / edge)
    r = np.linalg.norm(d, axis=-1)
    idx = np.array([names.index(t) for t in types])
    ratio = r / onsets[idx[:, None], idx[None]]
    np.fill_diagonal(ratio, np.inf)
    return float(ratio.min())


def along_run(name, model_dir, teachers, dataset, work, a):
    meta = json.loads((Path(model_dir) / "metadata.json").read_text())
    out = work / slug(name)
    s = simulate(config.SimConfig(model=str(model_dir), start=dataset, out=str(out), steps=a.steps, dt_fs=10.0,
                                  report=a.report, checkpoint_every=1000, seed=1000, threads=a.threads,
                                  platform="CPU", overwrite=True), progress=False)
    rep = s["replicas"][0]
    traj = CGDataset(rep["out"], forces=False)
    labels, _ = label(teachers, traj, progress=False)
    mean = labels.mean()
    model = load_model(model_dir)
    types = model.type_index(traj.type_names)
    names = model.type_names
    onsets = np.asarray(meta["pair_onsets_nm"])
    rows = []
    for k in range(len(traj)):
        pos = torch.from_numpy(traj.positions[k]).requires_grad_(True)
        _, _, f = model.energy_forces(types, pos, torch.from_numpy(traj.boxes[k]))
        err = f.detach().numpy() - mean["forces"][k]
        rows.append({"time_ps": float(traj.times[k]), "teacher_force_std": float(np.sqrt((mean["force_std"][k] ** 2).mean())),
                     "student_vs_teachers_rmse": float(np.sqrt((err ** 2).mean())),
                     "closest_pair_over_onset": closest_over_onset(traj.positions[k], traj.boxes[k], traj.type_names,
                                                                   onsets, names)})
    return {"model": str(Path(model_dir).relative_to(ROOT)), "stable": rep["stable"], "time_ps": rep["time_ps"],
            "failed_check": rep.get("failed_check"),
            "test_force_rmse_vs_teachers": meta["metrics"]["test"]["forces_vs_teachers"]["all"]["rmse"],
            "frames": rows}


def pair_scans(models, teachers, dataset, fractions):
    """Total energy (walls included) as one bead of the closest pair of each bead-type pair in the dataset's last
    frame is moved along the pair's axis to `fractions` x the pair's RDF onset, everything else fixed; relative
    to its value at the largest fraction. {pair: {"fractions", model name: [dE]}}; teachers: the members' mean."""
    from cgkd.model import load_ensemble

    ds = CGDataset(dataset, frames=slice(-1, None), forces=False, dtype=np.float64)
    pos0, box = ds.positions[0], ds.boxes[0]
    edge = np.diag(box)
    loaded = {name: [load_model(m).double()] for name, m in models.items()}
    loaded["teachers (mean of 8)"] = [m.double() for m in load_ensemble(teachers)[1]]
    meta = json.loads((Path(next(iter(models.values()))) / "metadata.json").read_text())
    names, onsets = meta["bead_types"], np.asarray(meta["pair_onsets_nm"])
    types = np.array(ds.type_names)
    out = {}
    for a in range(len(names)):
        for b in range(a, len(names)):
            ia, ib = np.where(types == names[a])[0], np.where(types == names[b])[0]
            d = pos0[ib][None] - pos0[ia][:, None]
            d -= edge * np.round(d / edge)
            r = np.linalg.norm(d, axis=-1)
            r[ia[:, None] == ib[None]] = np.inf
            i, j = np.unravel_index(np.argmin(r), r.shape)
            i, j, axis = ia[i], ib[j], d[i, j] / r[i, j]
            onset = onsets[a, b]
            scan = {"fractions": list(fractions), "bead_pair": [int(i), int(j)]}
            for name, members in loaded.items():
                tidx = members[0].type_index(list(ds.type_names))
                energies = []
                for f in fractions:
                    pos = pos0.copy()
                    pos[j] = pos0[i] + axis * f * onset
                    with torch.no_grad():
                        e = [m(tidx, torch.from_numpy(pos), torch.from_numpy(box))[1].item() for m in members]
                    energies.append(float(np.mean(e)))
                scan[name] = [e - energies[0] for e in energies]
            out[f"{names[a]}-{names[b]}"] = scan
    return out


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ref = res["training_frames"]["teacher_force_std"]
    for name, r in res["models"].items():
        t = [x["time_ps"] for x in r["frames"]]
        end = "" if r["stable"] else f" (failed at {r['time_ps']:.0f} ps: {r['failed_check']})"
        axes[0].plot(t, [x["teacher_force_std"] / ref for x in r["frames"]], label=name + end)
        axes[1].plot(t, [x["student_vs_teachers_rmse"] for x in r["frames"]], label=name)
        axes[2].plot(t, [x["closest_pair_over_onset"] for x in r["frames"]], label=name)
    axes[0].axhline(1.0, color="grey", ls=":", label="training frames")
    axes[0].set(xlabel="time (ps)", ylabel="teachers' force std / its training value",
                title="Teacher disagreement along the run")
    axes[1].set(xlabel="time (ps)", ylabel="student − teachers' mean force, RMS (kJ/mol/nm)",
                title="Student error against the teachers")
    axes[2].set(xlabel="time (ps)", ylabel="closest pair / its RDF onset", title="Closest approach")
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    scans = res.get("pair_scans")
    if scans:
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        for ax, (pair, scan) in zip(axes.ravel(), scans.items()):
            for name, de in scan.items():
                if name not in ("fractions", "bead_pair"):
                    ax.plot(scan["fractions"], de, label=name, ls=":" if name.startswith("teachers") else "-")
            ax.axvline(1.0, color="grey", lw=0.8)
            ax.set(title=f"{pair}: its closest pair moved", xlabel="pair distance / RDF onset",
                   ylabel="total energy change (kJ/mol)", ylim=(-40, 80))
        axes[0, 0].legend(frameon=False, fontsize=7)
        fig.tight_layout()
        fig.savefig(path.with_name(path.stem + "_pairs.png"), dpi=110)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", help="NAME=FOLDER (default: FM, KD-8 {f}, KD-8 {f,eps} + perturbed)")
    ap.add_argument("--teachers", default=str(ROOT / "forcefields" / "cg" / "ethaline" / "teachers"))
    ap.add_argument("--dataset", default=str(ROOT / "systems" / "ethaline" / "reference" / "ethaline_cg.h5"))
    ap.add_argument("--steps", type=int, default=5000, help="steps at 10 fs (default 50 ps)")
    ap.add_argument("--report", type=int, default=50, help="steps between frames (default 0.5 ps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "kd_instability"))
    ap.add_argument("--scans-only", action="store_true", help="keep the recorded runs, redo the pair scans")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    models = dict(m.split("=", 1) for m in a.models) if a.models else DEFAULT
    if a.scans_only:
        res = json.loads(RESULTS.read_text())
    else:
        ds = CGDataset(a.dataset)
        lo, hi = json.loads((Path(next(iter(models.values()))) / "metadata.json").read_text())["split"]["train"]
        std = label(a.teachers, ds, progress=True)[0].mean()["force_std"][lo:hi]
        res = {"steps": a.steps, "report": a.report, "dt_fs": 10.0, "teachers": a.teachers,
               "training_frames": {"teacher_force_std": float(np.sqrt((std ** 2).mean())), "frames": [lo, hi]},
               "models": {}}
    for name, folder in ({} if a.scans_only else models).items():
        res["models"][name] = r = along_run(name, Path(folder).resolve(), a.teachers, a.dataset, Path(a.work), a)
        last = r["frames"][-1]
        print(f"{name}: {'stable' if r['stable'] else 'failed at %.1f ps (%s)' % (r['time_ps'], r['failed_check'])}; "
              f"last frame: teacher std {last['teacher_force_std'] / res['training_frames']['teacher_force_std']:.2f}x "
              f"training, student-teacher RMSE {last['student_vs_teachers_rmse']:.1f} (test "
              f"{r['test_force_rmse_vs_teachers']:.1f}), closest pair {last['closest_pair_over_onset']:.2f} x onset",
              flush=True)
        record(RESULTS, res)
    fractions = np.round(np.linspace(1.3, 0.55, 16), 3)
    res["pair_scans"] = pair_scans(models, a.teachers, a.dataset, fractions)
    for pair, scan in res["pair_scans"].items():
        k = list(fractions).index(0.75)
        print(f"{pair}: energy at 0.75 x onset relative to 1.3 x: " + ", ".join(
            f"{n} {v[k]:+.1f}" for n, v in scan.items() if n not in ("fractions", "bead_pair")) + " kJ/mol", flush=True)
    record(RESULTS, res)
    plot(res, RESULTS.with_suffix(".png"))


if __name__ == "__main__":
    main()
