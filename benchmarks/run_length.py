"""RDF error against run length: how much of a row's error is its model's, how much its sampling's, and
does its structure drift?

The study's RDF error, integral |g - g_AA| dr / integral g_AA dr, is biased upward by the noise of a finite run
(|noise| adds to the integral), so rows of different run lengths (the teacher reference: 3 x 0.1 ns, the
students: 3 x 0.5 ns) are not comparable as they stand. For every stable replica of the study's rows that
still has its trajectory (they are not committed: run this where the study ran; --extra adds runs outside
the study), this cuts the run into windows of --window ps and scores each window's RDFs against the whole AA
reference, with `cgkd compare`'s bins and r_max: equal windows compare rows at equal length, and a rising
sequence of windows is a drift away from AA. The AA reference's own windows of that length, scored against
the rest of the reference, are the floor at that length. Records benchmarks/results/run_length_seed<S>.json
and .png; a re-run keeps the rows of the earlier record whose trajectories are gone from this machine.

    python benchmarks/run_length.py --seed 1 --window 100 --extra "teacher, 0.5 ns=runs/teacher_long"
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from cgkd import observables as obs  # noqa: E402
from cgkd.bench import record  # noqa: E402
from cgkd.report import Traj  # noqa: E402
from cgkd.study import slug  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def rdf_error_mean(positions, boxes, types, g_ref, r_max, n_bins):
    r, g, _ = obs.rdf(positions, boxes, types, r_max=r_max, n_bins=n_bins)
    return float(np.mean([obs.rdf_error(g[p], g_ref[p], r) for p in g_ref]))


def windows(times, width):
    """Frame indices of consecutive windows `width` ps long (a last partial one dropped)."""
    t = times - times[0]
    n = int((t[-1] + t[1]) / width + 1e-6)  # a frame stands for the interval after it
    return [np.flatnonzero((t >= k * width) & (t < (k + 1) * width)) for k in range(n)]


def stable_trajectories(folder):
    """The trajectories of the stable replicas of one `cgkd simulate` output folder that are still there."""
    summary = folder / "summary.json"
    if not summary.exists():
        return []
    reps = json.loads(summary.read_text())["replicas"]
    return [p for p in (ROOT / r["out"] for r in reps if r["stable"]) if p.exists()]


def previous_rows(path, window, n_bins, measured):
    """The rows of an earlier record at the same window and bins that this run did not measure (their
    trajectories, e.g. runs outside the study, are gone from this machine), so a re-run adds rows, never drops
    them."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("window_ps") != window or old.get("n_bins") != n_bins:
        return {}
    return {name: row for name, row in old["rows"].items() if name not in measured}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "ablation.yaml"), help="the study's YAML")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=float, default=100.0, help="ps")
    ap.add_argument("--n-bins", type=int, default=100, help="as `cgkd compare`")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=FOLDER",
                    help="more rows: `cgkd simulate` output folders outside the study")
    a = ap.parse_args()
    cfg = yaml.safe_load(Path(a.config).read_text())
    study = ROOT / cfg["out"]
    ref = Traj(ROOT / cfg["dataset"])
    r_max = obs.max_cutoff(ref.boxes)
    r, g_ref, _ = obs.rdf(ref.positions, ref.boxes, ref.types, r_max=r_max, n_bins=a.n_bins)

    floor = []
    for w in windows(ref.times, a.window):
        rest = np.setdiff1d(np.arange(len(ref.times)), w)
        _, g_rest, _ = obs.rdf(ref.positions[rest], ref.boxes[rest], ref.types, r_max=r_max, n_bins=a.n_bins)
        floor.append(rdf_error_mean(ref.positions[w], ref.boxes[w], ref.types, g_rest, r_max, a.n_bins))
    runs = {name: [t for rep in sorted((study / "runs" / slug(name) / f"seed_{a.seed}").glob("replica_*"))
                   for t in stable_trajectories(rep)]
            for name in [*cfg.get("variants", {}), *cfg.get("references", {})]}
    runs.update({name: stable_trajectories(Path(folder)) for name, folder in (x.split("=", 1) for x in a.extra)})
    rows = {}
    for name, trajs in runs.items():
        if not trajs:
            continue
        per_replica = []
        for path in trajs:
            tr = Traj(path)
            per_replica.append({"window_errors": [rdf_error_mean(tr.positions[w], tr.boxes[w], tr.types, g_ref, r_max,
                                                                 a.n_bins) for w in windows(tr.times, a.window)],
                                "whole_run": rdf_error_mean(tr.positions, tr.boxes, tr.types, g_ref, r_max, a.n_bins),
                                "ps": float(tr.times[-1] - tr.times[0] + tr.times[1] - tr.times[0])})
        n = min(len(p["window_errors"]) for p in per_replica)
        if not n:
            print(f"{name}: a replica shorter than one {a.window:g} ps window; left out", flush=True)
            continue
        rows[name] = {"replicas": per_replica,
                      "window_mean": [float(np.mean([p["window_errors"][k] for p in per_replica])) for k in range(n)],
                      "whole_run_mean": float(np.mean([p["whole_run"] for p in per_replica]))}
        print(f"{name}: {len(per_replica)} stable replicas; {a.window:g} ps windows "
              f"{', '.join(f'{e:.3f}' for e in rows[name]['window_mean'])}; whole runs "
              f"{rows[name]['whole_run_mean']:.3f}", flush=True)
    if not rows:
        raise SystemExit(f"no stable replica of seed {a.seed} has its trajectory under {study / 'runs'}: run this where "
                         "the study ran (trajectories are not committed); nothing written")
    out = RESULTS / f"run_length_seed{a.seed}"
    kept = previous_rows(out.with_suffix(".json"), a.window, a.n_bins, set(rows))
    if kept:
        print(f"kept from the previous record (trajectories not here): {', '.join(kept)}", flush=True)
    rows = {**rows, **kept}
    res = {"study": str(cfg["out"]), "seed": a.seed, "window_ps": a.window, "r_max_nm": r_max, "n_bins": a.n_bins,
           "aa_window_floor": {"windows": floor, "mean": float(np.mean(floor))}, "rows": rows}
    record(out.with_suffix(".json"), res)
    print(f"AA {a.window:g} ps windows against the rest of the reference: {np.mean(floor):.3f} "
          f"({min(floor):.3f}-{max(floor):.3f})")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.get_cmap("tab20").colors
    for ax in axes:
        for k, (name, row) in enumerate(rows.items()):
            x = a.window * (np.arange(len(row["window_mean"])) + 0.5)
            line, = ax.plot(x, row["window_mean"], "o-", color=colors[k % 20], ms=4, label=name)
            ax.plot([x[-1] + 0.6 * a.window], [row["whole_run_mean"]], "*", ms=10, color=line.get_color())
        ax.axhline(np.mean(floor), color="k", ls=":", label=f"AA, {a.window:g} ps windows vs the rest")
        ax.set_xlabel(f"centre of a {a.window:g} ps window of each replica (ps); stars: whole runs")
        ax.set_ylabel("RDF error (mean of pairs and replicas)")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title(f"RDF error in equal windows (study seed {a.seed})")
    low = [v for row in rows.values() for v in (*row["window_mean"], row["whole_run_mean"]) if v < 0.15]
    axes[1].set_ylim(min(low + [np.mean(floor)]) - 0.005, max(low) + 0.005)
    axes[1].set_title("the same, errors below 0.15")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out}.json and .png")


if __name__ == "__main__":
    main()
