"""CG simulations with OpenMM: a trained model (teacher, ensemble or student) as a TorchForce plus native
priors, Langevin (NVT) or velocity Verlet (NVE) dynamics, H5MD output, checkpoints and a stability monitor.

Each replica writes <out>/replica_<k>/traj.h5 (wrapped and unwrapped positions, box, energies), log.csv and
traj.h5.chk; <out>/summary.json gathers them. At every report the monitor checks that energies and
positions are finite, that no bead pair of types (A, B) is closer than `floor_factor` times the closest
approach of that pair in the model's training data (the RDF onset: "clumping"), that the neighbour pairs
within the model's cutoff fit its pair budget (TorchMD-Net would drop pairs otherwise), and, under the
Langevin thermostat, that the kinetic temperature is near the target. A failed check stops the replica
cleanly: the last good frames and checkpoint stay, the summary records when and why.

`--resume` continues every replica with the run's saved settings (<out>/config.yaml); only the number of
steps and the thread count may change.
"""
import math
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
from scipy.spatial import cKDTree
from tqdm import tqdm

from . import __version__, config, systems
from .dataset import CGDataset
from .errors import CgkdError
from .fileio import check_writable, locks_output, trim_csv, write_json
from .observables import in_box
from .reporters import H5MDReporter, StabilityReporter, UnstableError, next_report, read_checkpoint

KB = 0.008314462618  # kJ/mol/K
LOG_COLUMNS = ["step", "time_ps", "potential_kJ_mol", "kinetic_kJ_mol", "total_kJ_mol", "temperature_K",
               "closest_pair_over_floor", "speed_ns_day"]


def whole_molecules(topology, positions):
    """Positions (nm) with every molecule (residue) made whole: each bead at the minimum image of its
    molecule's first bead (orthorhombic box), so copies of the box can be tiled without breaking bonds."""
    edge = np.diag(np.array(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer)))
    out = np.array(positions, dtype=np.float64)
    for res in topology.residues():
        idx = [a.index for a in res.atoms()]
        d = out[idx] - out[idx[0]]
        out[idx] = out[idx[0]] + d - np.round(d / edge) * edge
    return out


def replicate(topology, positions, k):
    """The periodic box tiled k x k x k times, molecules whole: (topology, positions (N k^3, 3) nm)."""
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    positions = whole_molecules(topology, positions)
    shifts = [np.array([a, b, c]) @ box for a in range(k) for b in range(k) for c in range(k)]
    top = app.Topology()
    chain = top.addChain()
    for _ in shifts:
        for res in topology.residues():
            r = top.addResidue(res.name, chain)
            for atom in res.atoms():
                top.addAtom(atom.name, None, r)
    top.setPeriodicBoxVectors(box * k * u.nanometer)
    return top, np.concatenate([positions + s for s in shifts])


def new_box(topology, positions, units, density, masses, floors, seed):
    """A fresh box of `units` copies of the start's formula unit (its residue counts divided by their
    greatest common divisor) at `density` g/cm^3: whole molecules (geometry from the start) at random
    positions and orientations, none closer than the floor of its type pair."""
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    residues = list(topology.residues())
    counts = {}
    for r in residues:
        counts[r.name] = counts.get(r.name, 0) + 1
    g = math.gcd(*counts.values())
    templates = {}
    for r in residues:
        if r.name not in templates:
            idx = [a.index for a in r.atoms()]
            d = positions[idx] - positions[idx[0]]
            d -= np.round(d / np.diag(box)) * np.diag(box)
            templates[r.name] = ([a.name for a in r.atoms()], d - d.mean(axis=0))
    order = [name for name in counts for _ in range(counts[name] // g)] * units
    mass = sum(masses[n] for name in order for n in templates[name][0])
    edge = (mass / 6.02214076e23 / density * 1e21) ** (1.0 / 3.0)  # nm
    rng = np.random.default_rng(seed)
    top = app.Topology()
    chain = top.addChain()
    placed, placed_types, out = np.zeros((0, 3)), [], []
    type_names = list(floors["types"])
    floor = np.asarray(floors["r0"])
    for name in order:
        names, geom = templates[name]
        for attempt in range(10000):
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            q[:, 0] *= np.sign(np.linalg.det(q))  # a rotation, not a reflection
            xyz = np.mod(geom @ q.T + rng.uniform(0, edge, 3), edge)
            if not len(placed):
                break
            d = xyz[:, None, :] - placed[None]
            d -= np.round(d / edge) * edge
            r = np.linalg.norm(d, axis=-1)
            ti = [type_names.index(n) for n in names]
            if (r >= floor[np.ix_(ti, placed_types)]).all():
                break
        else:
            raise CgkdError(f"new box: could not place {name} without overlaps at {density} g/cm^3")
        res = top.addResidue(name, chain)
        for n in names:
            top.addAtom(n, None, res)
        placed = np.concatenate([placed, xyz])
        placed_types += [type_names.index(n) for n in names]
        out.append(xyz)
    top.setPeriodicBoxVectors(np.eye(3) * edge * u.nanometer)
    return top, np.concatenate(out)


CLOSEST_RANGE = 2.0  # log.csv's closest pair / floor is exact below this ratio, inf above it


class Monitor:
    """Stability checks on one state; returns (check name, detail) for the first that fails, else None.

    temperature None skips the kinetic-temperature check (NVE runs have no target). `closest`: the last state's
    smallest pair distance over its type pair's floor (inf when no pair is within CLOSEST_RANGE floors)."""

    def __init__(self, names, type_names, onsets, floor_factor, max_neighbors, cutoff, temperature, ndof,
                 tolerance):
        self.types = np.array([type_names.index(n) for n in names])
        self.type_names = type_names
        self.floor = floor_factor * np.asarray(onsets)
        # TorchMD-Net's budget: max_num_neighbors x N directed pairs, self-loops included.
        self.max_pairs, self.cutoff = max_neighbors * len(names), cutoff
        self.T, self.ndof = temperature, ndof
        # Relative kinetic-temperature bound: the given tolerance, or 6 standard deviations of the
        # instantaneous temperature of ndof degrees of freedom, whichever is wider.
        self.tolerance = max(tolerance, 6.0 * math.sqrt(2.0 / ndof))
        self.closest = float("inf")

    @classmethod
    def for_forcefield(cls, ff, names, temperature, floor_factor, tolerance):
        """The monitor of a CGForceField's model for beads `names` (centre-of-mass motion removed)."""
        return cls(names, ff.bead_types, ff.onsets, floor_factor, ff.max_num_neighbors, ff.cutoff, temperature,
                   3 * len(names) - 3, tolerance)

    def __call__(self, pos, box, pe, ke):
        if not (np.isfinite(pe) and np.isfinite(ke) and np.isfinite(pos).all()):
            return "non-finite", f"energy {pe} kJ/mol, kinetic {ke} kJ/mol or positions not finite"
        edge = np.diag(box)
        wrapped = in_box(pos, edge)
        tree = cKDTree(wrapped, boxsize=edge)
        # Every pair closer than CLOSEST_RANGE times its own floor lies within that times the largest floor.
        pairs = tree.query_pairs(CLOSEST_RANGE * self.floor.max(), output_type="ndarray")
        self.closest = float("inf")
        if len(pairs):
            d = wrapped[pairs[:, 0]] - wrapped[pairs[:, 1]]
            r = np.linalg.norm(d - np.round(d / edge) * edge, axis=1)
            ratio = r / self.floor[self.types[pairs[:, 0]], self.types[pairs[:, 1]]]
            k = int(np.argmin(ratio))
            if ratio[k] < CLOSEST_RANGE:
                self.closest = float(ratio[k])
            if ratio[k] < 1.0:
                i, j = pairs[k]
                a, b = self.type_names[self.types[i]], self.type_names[self.types[j]]
                return "clumping", (f"beads {i} ({a}) and {j} ({b}) at {r[k]:.3f} nm, below the {a}-{b} floor "
                                    f"{self.floor[self.types[i], self.types[j]]:.3f} nm")
        need = int(tree.count_neighbors(tree, self.cutoff))  # ordered pairs, i == j included
        if need > self.max_pairs:
            return "neighbours", (f"{need} directed neighbour pairs within {self.cutoff} nm exceed the model's "
                                  f"budget of {self.max_pairs}: TorchMD-Net would drop pairs")
        if self.T is not None:
            T = 2.0 * ke / (self.ndof * KB)
            if abs(T / self.T - 1.0) > self.tolerance:
                return "temperature", (f"kinetic temperature {T:.1f} K, target {self.T} K (tolerance "
                                       f"{100 * self.tolerance:.0f} %)")
        return None


class LogReporter:
    """log.csv of a CG run (LOG_COLUMNS) every reportInterval steps; reads the stability reporter's closest
    pair, so it must follow it in `simulation.reporters`."""

    def __init__(self, path, interval, stability, dt_fs, ndof, start_step):
        self.path, self.interval, self.stability, self.dt_fs, self.ndof = path, interval, stability, dt_fs, ndof
        self.t0, self.s0 = time.perf_counter(), start_step

    def describeNextReport(self, simulation):
        return next_report(simulation, self.interval, ["energy"])

    def report(self, simulation, state):
        step = simulation.currentStep
        pe = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        ke = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        elapsed = time.perf_counter() - self.t0
        speed = (step - self.s0) * self.dt_fs * 1e-6 / (elapsed / 86400) if elapsed > 0 else 0.0
        row = (step, state.getTime().value_in_unit(u.picosecond), pe, ke, pe + ke, 2.0 * ke / (self.ndof * KB),
               self.stability.closest, speed)
        with open(self.path, "a") as f:
            f.write(",".join(f"{v:.8g}" for v in row) + "\n")


class Replica:
    """One CG run of a SimConfig in folder `out` with a prepared System; `run()` executes or resumes it with
    the reporters of cgkd.reporters (stability, log, H5MD + checkpoint)."""

    def __init__(self, cfg, ff, system, topology, positions, out, seed, temperature):
        self.cfg, self.system, self.topology = cfg, system, topology
        self.out = Path(out)
        self.traj, self.chk, self.log = self.out / "traj.h5", self.out / "traj.h5.chk", self.out / "log.csv"
        self.positions, self.seed, self.T = positions, seed, temperature
        self.names = [a.name for a in topology.atoms()]
        self.stability = StabilityReporter(ff, topology, cfg.report, temperature if cfg.integrator == "langevin"
                                           else None, cfg.floor_factor, cfg.temperature_tolerance)
        self.ndof = self.stability.monitor.ndof
        self.platform = systems.default_platform(cfg.platform)
        self.steps_per_ps = 1000.0 / cfg.dt_fs
        self.resuming = False

    def check_resumable(self):
        """Before any replica runs: the checkpoint and trajectory exist and the checkpoint is for this platform."""
        if not self.chk.is_file() or not self.traj.is_file():
            raise CgkdError(f"{self.out}: nothing to resume (needs traj.h5 and traj.h5.chk)")
        meta, _ = read_checkpoint(self.chk)
        if meta["platform"] != self.platform.getName():
            raise CgkdError(f"{self.chk}: written on the {meta['platform']} platform; resume it there")
        self.resuming = True

    def _simulation(self):
        dt = self.cfg.dt_fs * u.femtosecond
        if self.cfg.integrator == "verlet":
            integ = openmm.VerletIntegrator(dt)
        else:
            integ = openmm.LangevinMiddleIntegrator(self.T * u.kelvin, self.cfg.friction / u.picosecond, dt)
            integ.setRandomNumberSeed(self.seed)
        props = systems.platform_properties(self.platform, self.cfg.threads)
        if self.platform.getName() in ("CUDA", "OpenCL"):
            props = {**props, "Precision": self.cfg.precision}
        return app.Simulation(self.topology, self.system, integ, self.platform, props)

    def _h5md(self):
        attrs = {"config": config.to_yaml(self.cfg), "model": str(self.cfg.model), "seed": self.seed,
                 "temperature_K": self.T, "timestep_fs": self.cfg.dt_fs, "integrator": self.cfg.integrator,
                 "platform": self.platform.getName()}
        datasets = {"bead_types": self.names, "residue_names": [a.residue.name for a in self.topology.atoms()],
                    "residue_ids": [a.residue.index for a in self.topology.atoms()]}
        return H5MDReporter(self.traj, self.cfg.report, self.cfg.checkpoint_every, unwrapped=True, attrs=attrs,
                            datasets=datasets, checkpoint_meta={"seed": self.seed}, resume=self.resuming,
                            overwrite=True)

    def run(self, progress=True):
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        sim = self._simulation()
        h5 = self._h5md()
        if self.resuming:
            trim_csv(self.log, 0, h5.resume(sim)["step"])
        else:
            self.log.write_text(",".join(LOG_COLUMNS) + "\n")
            sim.context.setPositions(self.positions)
            if cfg.minimize or cfg.units:
                sim.minimizeEnergy(maxIterations=200)
            sim.context.setVelocitiesToTemperature(self.T * u.kelvin, self.seed)
            h5.checkpoint(sim)
        failure = None
        t0, s0 = time.perf_counter(), sim.context.getStepCount()
        sim.reporters = [self.stability, LogReporter(self.log, cfg.report, self.stability, cfg.dt_fs, self.ndof, s0),
                         h5]  # in this order: an unstable state is neither logged nor written
        bar = tqdm(total=cfg.steps, initial=s0, unit="step", disable=not progress, desc=f"cgkd simulate {self.out.name}")
        try:
            while sim.context.getStepCount() < cfg.steps:
                n = min(cfg.report * cfg.checkpoint_every, cfg.steps - sim.context.getStepCount())
                try:
                    sim.step(n)
                except UnstableError as e:
                    failure = (e.check, e.detail)
                    break
                except openmm.OpenMMException as e:  # NaN coordinates, the model's own assertions, ...
                    failure = ("openmm-error", f"OpenMM stopped: {e}")
                    break
                bar.update(n)
            if failure is None:
                h5.checkpoint(sim)  # the end state (the run may end between two reports)
        finally:
            bar.close()
            frames = len(h5)
            h5.close()
        elapsed = time.perf_counter() - t0
        step = sim.context.getStepCount()
        summary = {"out": str(self.traj), "seed": self.seed, "stable": failure is None, "frames": frames,
                   "steps": int(step), "time_ps": step / self.steps_per_ps, "ndof": self.ndof,
                   "ns_per_day": (step - s0) * cfg.dt_fs * 1e-6 / (elapsed / 86400) if elapsed > 0 else None,
                   "steps_per_s": (step - s0) / elapsed if elapsed > 0 else None}
        if failure:
            summary.update(failed_check=failure[0], detail=failure[1], time_to_failure_ps=step / self.steps_per_ps,
                           last_good_checkpoint_step=read_checkpoint(self.chk)[0]["step"])
        write_json(self.out / "summary.json", summary)
        return summary


def starting_structure(cfg, ff):
    """(CG topology, positions nm, temperature K) from the start dataset and the box options."""
    from .openmm import topology_from_dataset

    if cfg.start is None:
        raise CgkdError("cgkd simulate: --start (a CG dataset or trajectory with /cgkd/bead_types) is required")
    start = CGDataset(cfg.start, frames=cfg.frame, forces=False, dtype=np.float64)
    top, pos = topology_from_dataset(start)
    T = start.temperature
    box = np.array(top.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    if np.abs(box - np.diag(np.diag(box))).max() > 1e-9:
        raise CgkdError(f"{cfg.start}: triclinic box; cgkd simulate supports orthorhombic boxes")
    if cfg.units is not None:
        mass = sum(ff.masses[a.name] for a in top.atoms())
        density = cfg.density or mass / 6.02214076e23 / (np.linalg.det(box) * 1e-21)
        top, pos = new_box(top, pos, cfg.units, density, ff.masses,
                           {"types": ff.bead_types, "r0": ff.onsets}, cfg.seed)
    if cfg.replicate > 1:
        top, pos = replicate(top, pos, cfg.replicate)
    return top, pos, cfg.temperature or T or ff.metadata.get("temperature_K")


def _check(cfg):
    for key in ("steps", "report", "replicas", "checkpoint_every", "replicate"):
        if getattr(cfg, key) < 1:
            raise CgkdError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    for key in ("dt_fs", "floor_factor", "friction", "temperature_tolerance", "units", "density", "temperature"):
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise CgkdError(f"--{key.replace('_', '-')} must be positive, got {value}")
    for key, allowed in (("integrator", ("langevin", "verlet")), ("precision", ("single", "mixed", "double")),
                         ("backend", ("torchforce", "pythonforce")),
                         ("neighbors", ("cell", "brute"))):
        if getattr(cfg, key) not in allowed:
            raise CgkdError(f"--{key} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    if cfg.model is None:
        raise CgkdError("cgkd simulate: --model (a model or ensemble folder from `cgkd train`) is required")


def resume_config(out, steps=None, threads=None):
    """The saved settings of the run in `out`: they define a resumed run; only its length (steps) and the
    thread count may change."""
    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        raise CgkdError(f"{saved}: no saved run settings to resume from")
    return config.load(config.SimConfig, saved, steps=steps, threads=threads, resume=True)


@locks_output
def simulate(cfg, progress=True):
    """Run cfg.replicas independent replicas; returns the summary (also written to <out>/summary.json)."""
    from .openmm import CGForceField

    out = Path(cfg.out)
    if cfg.resume:
        cfg = resume_config(out, cfg.steps, cfg.threads)
    _check(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)  # the model's arithmetic runs in PyTorch's own threads
    ff = CGForceField(cfg.model)
    if ff.onsets is None:
        raise CgkdError(f"{cfg.model}: the model's metadata has no pair_onsets_nm (closest approaches in its "
                        "training data), which the stability monitor needs")
    top, pos, T = starting_structure(cfg, ff)
    if T is None:
        raise CgkdError("cgkd simulate: no temperature in the start dataset or the model; pass --temperature")
    system = ff.createSystem(top, cuda_graphs=cfg.cuda_graphs, precision=cfg.precision, neighbors=cfg.neighbors,
                             backend=cfg.backend)
    runs = [Replica(cfg, ff, system, top, pos, out / f"replica_{k}", cfg.seed + k, T) for k in range(cfg.replicas)]
    if cfg.resume:
        for r in runs:
            r.check_resumable()
    else:  # checked after the set-up, so bad input leaves nothing behind
        check_writable(out / "summary.json", cfg.overwrite)
        for r in runs:
            check_writable(r.traj, cfg.overwrite)
        for f in (out, *(r.out for r in runs)):  # a replaced run's summaries would describe the new one if cut short
            (f / "summary.json").unlink(missing_ok=True)
        (out / "config.yaml").write_text(config.to_yaml(cfg))
    results = [r.run(progress) for r in runs]
    summary = {"model": str(cfg.model), "start": str(cfg.start), "beads": top.getNumAtoms(),
               "temperature_K": T, "timestep_fs": cfg.dt_fs, "integrator": cfg.integrator,
               "platform": runs[0].platform.getName(), "replicas": results,
               "fraction_stable": float(np.mean([r["stable"] for r in results])), "cgkd_version": __version__}
    write_json(out / "summary.json", summary)
    return summary
