"""Speed against accuracy over student sizes (architecture x channels x layers x cutoff), for users choosing a
student. Each size is distilled from the same teacher ensemble with the same loss (`cgkd distill`), then
timed in OpenMM (reference box, 200 beads, 4 fs, CPU platform, --threads) beside one teacher. Records
benchmarks/results/student_sizes.json and student_sizes.png (steps/s against test force RMSE vs the teachers).
Finished students are reused, interrupted ones resumed, so the script can be re-run.

    python benchmarks/student_sizes.py --teachers forcefields/cg/ethaline/teachers --epochs 15 --threads 1
    python benchmarks/student_sizes.py --table          # the README's table from the recorded JSON
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cg_speed import cg_simulation, steps_per_s  # noqa: E402

from cgkd import config, systems  # noqa: E402
from cgkd.bench import record  # noqa: E402
from cgkd.distill import distill  # noqa: E402
from cgkd.model import ensemble_members  # noqa: E402
from cgkd.openmm import CGForceField, topology_from_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ["gn:16x1@0.6", "gn:32x1@0.7", "gn:32x2@0.8", "gn:64x2@0.8", "gn:64x3@1.0", "tensornet:16x1@0.8"]


def parse(size):
    arch, rest = size.split(":")
    shape, cutoff = rest.split("@")
    channels, layers = shape.split("x")
    return dict(arch=arch, channels=int(channels), layers=int(layers), cutoff=float(cutoff))


def table(res):
    """The README's Markdown table of a recorded run."""
    t = res["teacher"]
    lines = ["| student | parameters | epochs | OpenMM steps/s | vs one teacher | test force RMSE vs teachers | vs mapped |",
             "|---|---|---|---|---|---|---|"]
    for r in res["students"]:
        lines.append(f"| {r['size']} | {r['parameters']:,} | {r['epochs_run']} | {r['steps_per_s']:.0f} | "
                     f"{r['steps_per_s'] / t['steps_per_s']:.1f}× | {r['test_force_rmse_vs_teachers']:.1f} | "
                     f"{r['test_force_rmse_vs_mapped']:.1f} |")
    h = t["hparams"]
    lines.append(f"| teacher ({h['arch']}:{h['channels']}x{h['layers']}@{h['cutoff']:g}) | – | – | "
                 f"{t['steps_per_s']:.0f} | 1× | 0 (itself) | {t['test_force_rmse_vs_mapped']:.1f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", default="forcefields/cg/ethaline/teachers")
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--out", default="runs/student_sizes")
    p.add_argument("--sizes", nargs="+", default=SIZES, help="ARCH:CHANNELSxLAYERS@CUTOFF")
    p.add_argument("--w-forces", type=float, default=1.0)
    p.add_argument("--w-eps", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--steps", type=int, default=300, help="timed OpenMM steps per student")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the README table of the recorded run, run nothing")
    a = p.parse_args()
    if a.table:
        print(table(json.loads((RESULTS / "student_sizes.json").read_text())))
        return
    torch.set_num_threads(a.threads)
    platform = systems.default_platform(None)
    props = systems.platform_properties(platform, a.threads)
    top, pos = topology_from_dataset(a.dataset, -1)
    rows = []
    for size in a.sizes:
        out = Path(a.out) / size.replace(":", "_").replace("@", "_")
        if not (out / "metadata.json").exists():
            distill(config.DistillConfig(dataset=a.dataset, teachers=a.teachers, out=str(out), w_forces=a.w_forces,
                                         w_eps=a.w_eps, epochs=a.epochs, patience=a.patience,
                                         lr_patience=2, resume=out.exists(), **parse(size)))
        meta = json.loads((out / "metadata.json").read_text())
        ff = CGForceField(out)
        rate = steps_per_s(cg_simulation(ff, top, pos, 4.0, platform, props, "cell"), a.steps)
        test = meta["metrics"]["test"]
        rows.append({"size": size, **parse(size), "parameters": sum(x.numel() for x in ff.models[0].parameters()),
                     "epochs_run": meta["epochs_run"], "steps_per_s": rate,
                     "test_force_rmse_vs_teachers": test["forces_vs_teachers"]["all"]["rmse"],
                     "test_force_rmse_vs_mapped": test["forces_vs_mapped"]["all"]["rmse"],
                     "test_eps_rmse_vs_teachers": test["eps_vs_teachers_rmse"]["all"]})
        print(f"{size}: {rate:.1f} steps/s, test force RMSE {rows[-1]['test_force_rmse_vs_teachers']:.2f} vs teachers, "
              f"{rows[-1]['test_force_rmse_vs_mapped']:.2f} vs mapped (kJ/mol/nm)", flush=True)
    teacher = ensemble_members(a.teachers)[0]
    t_rate = steps_per_s(cg_simulation(CGForceField(teacher), top, pos, 4.0, platform, props, "cell"),
                         max(20, a.steps // 8))
    t_meta = json.loads((teacher / "metadata.json").read_text())
    res = {"teachers": a.teachers, "dataset": a.dataset, "threads": a.threads, "platform": platform.getName(),
           "dt_fs": 4.0, "weights": {"w_forces": a.w_forces, "w_eps": a.w_eps}, "students": rows,
           "teacher": {"model": str(teacher), "hparams": t_meta["hparams"], "steps_per_s": t_rate,
                       "test_force_rmse_vs_mapped": t_meta["metrics"]["test"]["all"]["rmse"]}}
    record(RESULTS / "student_sizes.json", res)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        ax.scatter(r["steps_per_s"], r["test_force_rmse_vs_teachers"], color="C0" if r["arch"] == "gn" else "C1")
        ax.annotate(r["size"], (r["steps_per_s"], r["test_force_rmse_vs_teachers"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.axvline(t_rate, color="grey", ls="--", label=f"one teacher ({t_rate:.0f} steps/s)")
    ax.set_xscale("log")
    ax.set_xlabel(f"OpenMM steps/s (200 beads, CPU, {a.threads} threads)")
    ax.set_ylabel("test force RMSE vs teacher mean (kJ/mol/nm)")
    ax.set_title("Students: speed against accuracy (blue: gn, orange: tensornet)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "student_sizes.png", dpi=120)
    print(f"one teacher: {t_rate:.1f} steps/s; wrote {RESULTS / 'student_sizes.json'} and student_sizes.png")


if __name__ == "__main__":
    main()
