"""Stability of a CG model in OpenMM. Records benchmarks/results/cg_stability.json.

(1) NVE energy conservation: velocity Verlet at --nve-dt-fs in double precision (Reference platform) from the
    dataset's last frame with Maxwell-Boltzmann velocities. Reports the drift of the total energy (slope of a
    line fit) in kT per degree of freedom per ns, the fluctuation ratio std(E_total) / std(E_kinetic), and
    checks them against bounds: drift below 0.01 kT/dof/ns (a heat leak that, left alone, would warm the
    system by roughly 0.01 x 298 K = 3 K per ns, far below what a thermostat with 1/ps friction removes) and a fluctuation ratio below 0.05 (the integrator's
    shadow-energy noise is small compared with the physical kinetic-energy exchange).
(2) Largest stable timestep: Langevin runs of --ps each, --replicas per timestep (2, 4, 8, 10 fs by
    default), with the stability monitor of `cgkd simulate`; the largest timestep at which every replica
    (and every smaller timestep) stays stable is reported.

    python benchmarks/cg_stability.py --model runs/teachers --dataset systems/ethaline/reference/ethaline_cg.h5
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

from cgkd import config
from cgkd.bench import record
from cgkd.simulate import simulate

RESULTS = Path(__file__).resolve().parent / "results" / "cg_stability.json"
KB = 0.008314462618


def run(model, dataset, out, **kw):
    return simulate(config.SimConfig(model=model, start=dataset, out=str(out), overwrite=True, **kw), progress=False)


def timestep_scan(model, dataset, timesteps, ps, replicas, threads, workdir):
    """Langevin runs of `ps` each at every timestep: ([{dt_fs, fraction_stable, failures, ...}], the largest
    timestep stable there and at every smaller one)."""
    scan, largest = [], None
    for dt in timesteps:
        steps = int(round(ps * 1000 / dt))
        s = run(model, dataset, Path(workdir) / f"dt{dt}", dt_fs=dt, steps=steps, report=max(1, steps // 100),
                replicas=replicas, threads=threads, checkpoint_every=1000)
        fails = [{"check": r["failed_check"], "at_ps": r["time_to_failure_ps"]} for r in s["replicas"]
                 if not r["stable"]]
        scan.append({"dt_fs": dt, "ps": ps, "replicas": replicas, "fraction_stable": s["fraction_stable"],
                     "steps_per_s": float(np.mean([r["steps_per_s"] for r in s["replicas"]])), "failures": fails})
        print(f"{model}: dt {dt} fs: {s['fraction_stable']:.2f} of {replicas} replicas stable over {ps} ps"
              + (f"; failures {fails}" if fails else ""), flush=True)
    for entry in sorted(scan, key=lambda e: e["dt_fs"]):
        if entry["fraction_stable"] < 1.0:
            break
        largest = entry["dt_fs"]
    return scan, largest


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/teachers")
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--nve-dt-fs", type=float, default=1.0)
    p.add_argument("--nve-ps", type=float, default=2.0)
    p.add_argument("--timesteps", type=float, nargs="+", default=[2.0, 4.0, 8.0, 10.0])
    p.add_argument("--ps", type=float, default=20.0, help="simulated time per stability run")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    res = {"model": a.model, "dataset": a.dataset}
    with tempfile.TemporaryDirectory() as d:
        steps = int(round(a.nve_ps * 1000 / a.nve_dt_fs))
        s = run(a.model, a.dataset, Path(d) / "nve", integrator="verlet", dt_fs=a.nve_dt_fs, steps=steps,
                report=max(1, steps // 200), platform="Reference", precision="double")
        log = np.genfromtxt(Path(d) / "nve" / "replica_0" / "log.csv", delimiter=",", names=True)
        beads, T = s["beads"], s["temperature_K"]
        ndof = s["replicas"][0]["ndof"]
        slope = np.polyfit(log["time_ps"], log["total_kJ_mol"], 1)[0] * 1000.0  # kJ/mol/ns
        drift = slope / (KB * T * ndof)
        ratio = float(np.std(log["total_kJ_mol"]) / np.std(log["kinetic_kJ_mol"]))
        res["nve"] = {"dt_fs": a.nve_dt_fs, "ps": a.nve_ps, "beads": beads, "stable": s["replicas"][0]["stable"],
                      "drift_kT_per_dof_per_ns": float(drift), "fluctuation_ratio": ratio,
                      "bounds": {"drift_kT_per_dof_per_ns": 0.01, "fluctuation_ratio": 0.05},
                      "pass": bool(abs(drift) < 0.01 and ratio < 0.05 and s["replicas"][0]["stable"])}
        print(f"NVE {a.nve_dt_fs} fs, {a.nve_ps} ps, {beads} beads: drift {drift:+.2e} kT/dof/ns (bound 0.01), "
              f"std(E_total)/std(E_kin) {ratio:.4f} (bound 0.05): {'pass' if res['nve']['pass'] else 'FAIL'}")

        # (2) Timestep scan.
        scan, largest = timestep_scan(a.model, a.dataset, a.timesteps, a.ps, a.replicas, a.threads, Path(d))
        res["timestep_scan"] = scan
        res["largest_stable_dt_fs"] = largest
        print(f"largest stable timestep: {largest} fs")
    record(RESULTS, res)


if __name__ == "__main__":
    main()
