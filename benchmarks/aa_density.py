"""AA density of ethaline and reline under NPT (OPLS-DES, exact geometric LJ rule) against experiment.

Each case packs a box with `cgkd build`'s packer at the experimental density, minimises, equilibrates
under NPT (MonteCarloBarostat, Langevin), then averages the density over the production NPT window
with a block-averaged standard error. Results go to benchmarks/results/aa_density.json (one entry per
case, merged, so cases can run as separate processes).

    python benchmarks/aa_density.py --case ethaline_eg1.75_no14 --units 50 --equil-ps 60 --prod-ps 500
    python benchmarks/aa_density.py --case ethaline_eg1.00_no14 --units 50 --equil-ps 50 --prod-ps 150
    python benchmarks/aa_density.py --case reline_no14 --units 50 --equil-ps 50 --prod-ps 200
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from cgkd import __version__, systems
from cgkd.fileio import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "aa_density.json"
# case -> (system, force-field file): every EG epsilon set x 1-4 treatment for ethaline, both 1-4 treatments
# for reline (which has no ethylene glycol).
CASES = {f"ethaline_eg{eg}_{p}": ("ethaline", f"opls_des_eg{eg}_{p}.xml") for eg in ("1.00", "1.75")
         for p in ("no14", "14")}
CASES.update({f"reline_{p}": ("reline", f"opls_des_eg1.75_{p}.xml") for p in ("no14", "14")})


def block_sem(x, nblocks=5):
    blocks = np.array_split(np.asarray(x), nblocks)
    means = np.array([b.mean() for b in blocks])
    return float(means.std(ddof=1) / np.sqrt(nblocks))


def run(case, units, equil_ps, prod_ps, dt_fs, hmr, sample_steps, threads, workdir):
    name, ff = CASES[case]
    spec = systems.load_system(name, forcefield=ff)
    box = Path(workdir) / f"{case}_{units}.pdb"
    systems.build_box(spec, units, box, seed=2026, overwrite=True)
    top, pos = systems.load_box(spec, box)
    system = systems.create_system(spec, top, cutoff=1.0, constraints="HBonds", hmr=hmr)
    system.addForce(openmm.MonteCarloBarostat(spec.pressure * u.bar, spec.temperature * u.kelvin, 25))
    total_mass = systems.masses(system).sum()
    integ = openmm.LangevinMiddleIntegrator(spec.temperature * u.kelvin, 1.0 / u.picosecond, dt_fs * u.femtosecond)
    integ.setRandomNumberSeed(2026)
    plat = systems.default_platform()
    sim = app.Simulation(top, system, integ, plat, systems.platform_properties(plat, threads))
    sim.context.setPositions(pos)
    sim.minimizeEnergy(maxIterations=1000)
    sim.context.setVelocitiesToTemperature(spec.temperature * u.kelvin, 2026)
    steps_per_ps = int(round(1000 / dt_fs))
    sim.step(int(equil_ps * steps_per_ps))
    dens = []
    t0 = time.perf_counter()
    nsamples = int(prod_ps * steps_per_ps) // sample_steps
    for i in range(nsamples):
        sim.step(sample_steps)
        vol = sim.context.getState().getPeriodicBoxVolume().value_in_unit(u.nanometer ** 3)
        dens.append(systems.density_g_cm3(total_mass, vol))
        if (i + 1) % max(1, nsamples // 20) == 0:
            print(f"{case}: {(i + 1) * sample_steps / steps_per_ps:.0f}/{prod_ps} ps, "
                  f"running mean {np.mean(dens):.4f} g/cm3", flush=True)
    wall = time.perf_counter() - t0
    ns_day = prod_ps * 1e-3 / (wall / 86400)
    mean = float(np.mean(dens))
    return {
        "system": name, "forcefield": ff, "atoms": top.getNumAtoms(), "formula_units": units,
        "temperature_K": spec.temperature, "pressure_bar": spec.pressure,
        "equilibration_ps": equil_ps, "production_ps": prod_ps, "timestep_fs": dt_fs, "hmr": hmr,
        "cutoff_nm": 1.0, "constraints": "HBonds", "platform": plat.getName(),
        "threads": threads or os.cpu_count(), "density_g_cm3": mean, "density_sem_g_cm3": block_sem(dens),
        "experiment_g_cm3": spec.density, "relative_error": (mean - spec.density) / spec.density,
        "ns_per_day": ns_day, "cgkd_version": __version__, "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
    }


def merge(case, result):
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[case] = result
    write_json(RESULTS, data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=sorted(CASES), action="append")
    p.add_argument("--units", type=int, default=50)
    p.add_argument("--equil-ps", type=float, default=100)
    p.add_argument("--prod-ps", type=float, default=500)
    p.add_argument("--dt-fs", type=float, default=4.0)
    p.add_argument("--no-hmr", action="store_true")
    p.add_argument("--sample-steps", type=int, default=250)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="runs/bench")
    a = p.parse_args()
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    for case in a.case or ["ethaline_eg1.75_no14", "reline_no14"]:
        r = run(case, a.units, a.equil_ps, a.prod_ps, a.dt_fs, not a.no_hmr, a.sample_steps, a.threads, a.workdir)
        merge(case, r)
        print(f"{case}: density {r['density_g_cm3']:.4f} +- {r['density_sem_g_cm3']:.4f} g/cm3 vs experiment "
              f"{r['experiment_g_cm3']} ({100 * r['relative_error']:+.2f} %), {r['ns_per_day']:.1f} ns/day", flush=True)


if __name__ == "__main__":
    main()
