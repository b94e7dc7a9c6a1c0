"""Can a short run tell which students drift? FM students of the shipped size drift away from the AA structure
in some seeds (STUDY.md) and the stability monitor does not see it: does a 100 ps screen predict it?

For every seed of the study's rows (default: the [tensornet 16x0] pair) whose student exists, this makes one
fresh 100 ps run (10 fs, the study's settings, a seed of its own: 1000 x seed + 99, independent of the study's
replicas) and measures two screens on it: (a) its RDF error against the AA reference (what a user with the AA
data can check) and (b) the 8 teachers' force disagreement on its frames (RMS of the ensemble's per-bead std),
relative to their disagreement on the AA test frames (what needs no AA data beyond the teachers'). Each is set
beside the outcome the study recorded for that model: the RDF error of its three 0.5 ns replicas
(ablation.json). Runs are kept under --work, so a re-run only adds new seeds.

    python benchmarks/drift_screen.py          # ~2 min per model on one core

Writes benchmarks/results/drift_screen.json and .png.
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

from cgkd import config  # noqa: E402
from cgkd import observables as obs  # noqa: E402
from cgkd.bench import record  # noqa: E402
from cgkd.dataset import CGDataset  # noqa: E402
from cgkd.labels import label  # noqa: E402
from cgkd.report import Traj  # noqa: E402
from cgkd.simulate import simulate  # noqa: E402
from cgkd.study import slug  # noqa: E402
from run_length import rdf_error_mean  # noqa: E402
from study_table import PAIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def teacher_std(teachers, ds, out):
    """RMS over frames, beads and components of the teachers' force standard deviation (labels kept in `out`)."""
    labels, _ = label(teachers, ds, out=out, progress=False)
    return float(np.sqrt(np.mean(labels.mean()["force_std"] ** 2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "ablation.yaml"), help="the study's YAML")
    ap.add_argument("--rows", nargs="*", default=list(PAIR))
    ap.add_argument("--steps", type=int, default=10000, help="of the screening run, at the study's timestep")
    ap.add_argument("--work", default=str(ROOT / "runs" / "drift_screen"))
    a = ap.parse_args()
    cfg = yaml.safe_load(Path(a.config).read_text())
    study = ROOT / cfg["out"]
    outcome = json.loads((study / "ablation.json").read_text())["variants"]
    sim = cfg.get("simulate", {})
    ref = Traj(ROOT / cfg["dataset"])
    r_max = obs.max_cutoff(ref.boxes)
    n_bins = cfg.get("compare", {}).get("n_bins", 100)
    _, g_ref, _ = obs.rdf(ref.positions, ref.boxes, ref.types, r_max=r_max, n_bins=n_bins)
    teachers = ROOT / cfg["teachers"]
    work = Path(a.work)
    aa_std = teacher_std(teachers, CGDataset(ROOT / cfg["dataset"], frames=slice(900, None), forces=False),
                         work / "aa_test_labels.h5")
    print(f"teachers' force std on the AA test frames: {aa_std:.1f} kJ/mol/nm", flush=True)

    models = []
    for name in a.rows:
        for entry in outcome.get(name, []):
            model = ROOT / entry["model"]
            if entry.get("rdf_error_mean") is None or not (model / "metadata.json").exists():
                continue
            out = work / slug(name) / f"seed_{entry['seed']}"
            summary = out / "summary.json"
            if summary.exists():
                rep = json.loads(summary.read_text())["replicas"][0]
            else:
                rep = simulate(config.SimConfig(
                    model=str(model), start=str(ROOT / cfg["dataset"]), out=str(out), steps=a.steps,
                    dt_fs=sim.get("dt_fs", 10.0), report=sim.get("report", 500), seed=1000 * entry["seed"] + 99,
                    threads=1, platform="CPU", overwrite=True), progress=False)["replicas"][0]
            row = {"row": name, "seed": entry["seed"], "stable": rep["stable"],
                   "outcome_rdf_error_0.5ns": entry["rdf_error_mean"]}
            if rep["stable"]:
                traj = ROOT / rep["out"]
                tr = Traj(traj)
                row["screen_rdf_error"] = rdf_error_mean(tr.positions, tr.boxes, tr.types, g_ref, r_max, n_bins)
                row["screen_teacher_std_over_aa"] = teacher_std(teachers, CGDataset(traj, forces=False),
                                                                out / "teacher_labels.h5") / aa_std
            models.append(row)
            print(f"{name} seed {entry['seed']}: 0.5 ns RDF error {entry['rdf_error_mean']:.3f}; 100 ps screen "
                  f"RDF error {row.get('screen_rdf_error', float('nan')):.3f}, teachers' std "
                  f"{row.get('screen_teacher_std_over_aa', float('nan')):.3f} x AA's", flush=True)
    scored = [m for m in models if "screen_rdf_error" in m]
    if len(scored) < 3:
        raise SystemExit("fewer than 3 models with a stable screening run and a study outcome; nothing written")
    y = [m["outcome_rdf_error_0.5ns"] for m in scored]
    spearman = {k: float(stats.spearmanr([m[k] for m in scored], y)[0])
                for k in ("screen_rdf_error", "screen_teacher_std_over_aa")}
    res = {"study": str(cfg["out"]), "screen_ps": a.steps * sim.get("dt_fs", 10.0) / 1000.0,
           "aa_test_teacher_force_std": aa_std, "models": models, "spearman_vs_outcome": spearman}
    record(RESULTS / "drift_screen.json", res)
    print("Spearman rank correlation with the 0.5 ns RDF error: "
          + ", ".join(f"{k} {v:+.2f}" for k, v in spearman.items()))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, xlabel in zip(axes, spearman, ("RDF error of one 100 ps run (mean of pairs)",
                                                "teachers' force std on its frames / on the AA test frames")):
        for k, name in enumerate(a.rows):
            pts = [(m[key], m["outcome_rdf_error_0.5ns"], m["seed"]) for m in scored if m["row"] == name]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=f"C{k}", label=name)
            for x, yy, s in pts:
                ax.annotate(f"{s}", (x, yy), textcoords="offset points", xytext=(4, 3), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("RDF error of the study's 3 x 0.5 ns runs")
        ax.set_title(f"Spearman {spearman[key]:+.2f} (labels: seeds)", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle("Does a 100 ps screen predict a student's drift?", fontsize=11)
    fig.tight_layout()
    fig.savefig(RESULTS / "drift_screen.png", dpi=120)
    print(f"wrote {RESULTS / 'drift_screen.json'} and .png")


if __name__ == "__main__":
    main()
