"""CG simulation speed, all measured in one run on one machine. Records benchmarks/results/cg_speed.json.

(a) TorchForce overhead: OpenMM steps/s of a model (LangevinMiddleIntegrator, native priors) against the
    same scripted module's bare PyTorch energy + force call on the same frames; ratio = time per OpenMM
    step / time per PyTorch call (target <= 1.2).
(b) Scaling: steps/s for the reference box replicated 1, 8 and 27 times; exponent of time per step vs bead
    count from a log-log fit (target <= 1.1), with TorchMD-Net's cell-list neighbour search (default) or
    all pairs (--neighbors brute).
(c) CG vs AA: ns/day of the CG model at --cg-dt-fs against AA MD (OPLS-DES, PME, HMR 4 fs) of the same
    ethaline box (50 formula units) on the same platform and threads.

    python benchmarks/cg_speed.py --model runs/teachers --dataset systems/ethaline/reference/ethaline_cg.h5
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

from cgkd import systems
from cgkd.bench import record
from cgkd.export import ExportedPotential
from cgkd.h5md import H5MDTrajectory
from cgkd.openmm import CGForceField, topology_from_dataset
from cgkd.simulate import replicate

RESULTS = Path(__file__).resolve().parent / "results" / "cg_speed.json"


def steps_per_s(sim, steps, warmup=5):
    sim.step(warmup)
    sim.context.getState(getEnergy=True)
    t = time.perf_counter()
    sim.step(steps)
    sim.context.getState(getEnergy=True)  # waits for an asynchronous platform
    return steps / (time.perf_counter() - t)


def interleaved_steps_per_s(sims, steps, rounds=3):
    """Steps/s of several simulations timed in turn, `rounds` times (order reversed every other round), so that
    a load on the machine that changes during the run affects them alike. sims, steps: {name: Simulation},
    {name: steps per round}. Returns {name: [steps/s per round]}; ratios should be taken round by round."""
    names = list(sims)
    for n in names:  # TorchScript's profiling executor optimises a model over its first calls
        sims[n].step(20)
    rates = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            rates[n].append(steps_per_s(sims[n], steps[n], warmup=0))
    return rates


def cg_simulation(ff, top, pos, dt_fs, platform, props, neighbors):
    system = ff.createSystem(top, neighbors=neighbors)
    integ = openmm.LangevinMiddleIntegrator(298.15 * u.kelvin, 1.0 / u.picosecond, dt_fs * u.femtosecond)
    sim = app.Simulation(top, system, integ, platform, props)
    sim.context.setPositions(pos)
    sim.context.setVelocitiesToTemperature(298.15 * u.kelvin, 1)
    return sim


def torch_calls_per_s(ff, top, frames, neighbors, calls):
    """Energy + forces of the scripted module (what the TorchForce runs), model only, on dataset frames."""
    names = [a.name for a in top.atoms()]
    molecules = [a.residue.index for a in top.atoms()]
    box = np.array(top.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    models = [m.for_topology(names, molecules).use_neighbor_strategy(neighbors, box) for m in ff.models]
    module = torch.jit.script(ExportedPotential(models, models[0].type_index(names), include_prior=False))
    b = torch.tensor(box, dtype=torch.float32)

    def call(p):
        x = torch.tensor(p, dtype=torch.float32, requires_grad=True)
        module(x, b).backward()
        return x.grad

    for p in frames[:3]:
        call(p)
    t = time.perf_counter()
    for k in range(calls):
        call(frames[k % len(frames)])
    return calls / (time.perf_counter() - t)


def aa_ns_per_day(steps, platform, props):
    spec = systems.load_system("ethaline")
    with tempfile.TemporaryDirectory() as d:
        pdb = systems.build_box(spec, 50, Path(d) / "box.pdb", seed=1)
        top, pos = systems.load_box(spec, pdb)
    system = systems.create_system(spec, top, 1.0, "HBonds", hmr=True)
    integ = openmm.LangevinMiddleIntegrator(298.15 * u.kelvin, 1.0 / u.picosecond, 4.0 * u.femtosecond)
    sim = app.Simulation(top, system, integ, platform, props)
    sim.context.setPositions(pos)
    sim.minimizeEnergy(maxIterations=200)
    sim.context.setVelocitiesToTemperature(298.15 * u.kelvin, 1)
    return steps_per_s(sim, steps) * 4.0 * 86400 * 1e-6, top.getNumAtoms()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/teachers", help="model or ensemble folder")
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--steps", type=int, default=100, help="timed OpenMM steps (smallest box; fewer for larger)")
    p.add_argument("--replicate", type=int, nargs="+", default=[1, 2, 3], help="k: boxes of k^3 copies")
    p.add_argument("--neighbors", default="cell", choices=["cell", "brute"])
    p.add_argument("--cg-dt-fs", type=float, default=4.0)
    p.add_argument("--aa-steps", type=int, default=200)
    p.add_argument("--platform", default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    platform = systems.default_platform(a.platform)
    props = systems.platform_properties(platform, a.threads)
    ff = CGForceField(a.model)
    top0, pos0 = topology_from_dataset(a.dataset, 0)

    # (a) TorchForce overhead on the reference box.
    sim = cg_simulation(ff, top0, pos0, a.cg_dt_fs, platform, props, a.neighbors)
    omm = steps_per_s(sim, a.steps)
    with H5MDTrajectory(a.dataset) as t:
        frames = list(t.positions(slice(0, 50, 5)).astype(np.float64))
    bare = torch_calls_per_s(ff, top0, frames, a.neighbors, a.steps)
    overhead = bare / omm
    print(f"(a) {top0.getNumAtoms()} beads: OpenMM {omm:.1f} steps/s, bare PyTorch energy+forces {bare:.1f} calls/s: "
          f"overhead ratio {overhead:.3f} (target <= 1.2)")

    # (b) Scaling with the bead count.
    sizes, rates = [], []
    for k in a.replicate:
        top, pos = replicate(top0, pos0, k)
        sim = cg_simulation(ff, top, pos, a.cg_dt_fs, platform, props, a.neighbors)
        rate = steps_per_s(sim, max(5, a.steps // k ** 3))
        sizes.append(top.getNumAtoms())
        rates.append(rate)
        print(f"(b) {top.getNumAtoms()} beads: {rate:.2f} steps/s")
    exponent = float(np.polyfit(np.log(sizes), np.log(1.0 / np.array(rates)), 1)[0]) if len(sizes) > 1 else None
    if exponent is not None:
        print(f"(b) time per step ~ N^{exponent:.3f} (target <= 1.1)")

    # (c) CG vs AA on the same box.
    cg_ns = omm * a.cg_dt_fs * 86400 * 1e-6
    aa_ns, atoms = aa_ns_per_day(a.aa_steps, platform, props)
    print(f"(c) CG {cg_ns:.1f} ns/day ({a.cg_dt_fs} fs) vs AA {aa_ns:.2f} ns/day ({atoms} atoms, HMR 4 fs): "
          f"{cg_ns / aa_ns:.1f}x")
    record(RESULTS, {
        "model": a.model, "dataset": a.dataset, "platform": platform.getName(), "threads": a.threads,
        "neighbors": a.neighbors, "members": len(ff.models), "hparams": ff.models[0].hparams,
        "overhead": {"beads": top0.getNumAtoms(), "openmm_steps_per_s": omm, "torch_calls_per_s": bare,
                     "ratio": overhead},
        "scaling": {"beads": sizes, "steps_per_s": rates, "exponent": exponent},
        "cg_vs_aa": {"cg_dt_fs": a.cg_dt_fs, "cg_ns_per_day": cg_ns, "aa_ns_per_day": aa_ns, "aa_atoms": atoms,
                     "speedup": cg_ns / aa_ns}})


if __name__ == "__main__":
    main()
