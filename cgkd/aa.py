"""AA runs: minimise, NPT equilibration, NVT production at the mean NPT volume, forces written to H5MD.

Frames and checkpoints are written by `cgkd.reporters.H5MDReporter` (the protocol `cgkd simulate` uses too):
every `checkpoint_ps` the H5MD file is flushed and then a checkpoint (a JSON header line and an OpenMM
context checkpoint) is written atomically beside it. `--resume` loads the checkpoint, drops any frames
written after it, and continues, so frames are neither lost nor duplicated. The NPT stage is rounded up to
a whole number of strides, so production frames sit on the stride grid.
"""
import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
from tqdm import tqdm

from . import config, systems
from .errors import CgkdError
from .fileio import check_writable, locks_output, trim_csv
from .h5md import H5MDTrajectory, create_series
from .reporters import H5MDReporter, next_report, read_checkpoint

KB = 0.008314462618  # kJ/mol/K
LOG_COLUMNS = ["stage", "step", "time_ps", "potential_kJ_mol", "kinetic_kJ_mol", "temperature_K",
               "volume_nm3", "density_g_cm3", "speed_ns_day"]


def paths(out):
    out = Path(out)
    return out, out.with_name(out.name + ".chk"), out.with_name(out.name + ".log.csv")


def scale_to_volume(positions, box, topology, volume):
    """Scale molecule centres (not bonds) and the box isotropically to `volume` nm^3."""
    s = (volume / np.linalg.det(box)) ** (1.0 / 3.0)
    new = positions.copy()
    for res in topology.residues():
        idx = [a.index for a in res.atoms()]
        new[idx] += (s - 1.0) * positions[idx].mean(axis=0)
    return new, box * s


class AARun:
    """One AA run (NPT then NVT), set up from an AAConfig; `run()` executes or resumes it."""

    def __init__(self, cfg):
        self.out, self.chk, self.log = paths(cfg.out)
        self.meta = None
        if cfg.resume:
            if not self.chk.is_file() or not self.out.is_file():
                raise CgkdError(f"{self.chk}: no checkpoint to resume {self.out} from")
            self.meta, _ = read_checkpoint(self.chk)
            saved = config.load(config.AAConfig, **self.meta["config"])
            # The run is defined by the saved config; OpenMM checkpoints load only on the platform that wrote
            # them, so only the thread count may change.
            if cfg.platform and cfg.platform != self.meta["platform"]:
                raise CgkdError(f"{self.chk}: written on the {self.meta['platform']} platform; resume it there "
                                f"(not {cfg.platform})")
            saved.platform, saved.threads, saved.resume = self.meta["platform"], cfg.threads, True
            cfg = saved
        else:
            check_writable(self.out, cfg.overwrite)
            if cfg.pdb is None:
                raise CgkdError("cgkd aa: --pdb (a box from `cgkd build`) is required")
        self.cfg = cfg
        self.spec = systems.load_system(cfg.system, cfg.forcefield)
        self.T = cfg.temperature or self.spec.temperature
        self.P = cfg.pressure or self.spec.pressure
        self.dt = cfg.dt_fs or (4.0 if cfg.hmr else 2.0)
        self.steps_per_ps = 1000.0 / self.dt
        if cfg.stride < 1 or int(round(cfg.nvt_ps * self.steps_per_ps)) < cfg.stride:
            raise CgkdError(f"stride {cfg.stride} must be >= 1 and leave >= 1 frame in {cfg.nvt_ps} ps of NVT")
        if cfg.hmr and str(cfg.constraints).lower() == "none":
            raise CgkdError("--hmr needs constraints on bonds to hydrogen (--constraints HBonds)")
        self.n_npt = -(-int(round(cfg.npt_ps * self.steps_per_ps)) // cfg.stride) * cfg.stride
        self.n_frames = int(round(cfg.nvt_ps * self.steps_per_ps)) // cfg.stride
        self.chk_frames = max(1, int(round(cfg.checkpoint_ps * self.steps_per_ps)) // cfg.stride)
        self.topology, self.positions = systems.load_box(self.spec, cfg.pdb)
        self.system = systems.create_system(self.spec, self.topology, cfg.cutoff, cfg.constraints, cfg.hmr)
        self.masses = systems.masses(self.system)
        ndof = 3 * self.system.getNumParticles() - self.system.getNumConstraints() - 3
        self.ke_to_T = 2.0 / (ndof * KB)
        self.platform = systems.default_platform(cfg.platform)
        self._t0, self._steps0 = time.perf_counter(), 0

    def _simulation(self, barostat):
        system = copy.deepcopy(self.system)  # the barostat stays out of self.system
        if barostat:
            baro = openmm.MonteCarloBarostat(self.P * u.bar, self.T * u.kelvin, self.cfg.barostat_interval)
            baro.setRandomNumberSeed(self.cfg.seed)
            system.addForce(baro)
        integ = openmm.LangevinMiddleIntegrator(self.T * u.kelvin, self.cfg.friction / u.picosecond,
                                                self.dt * u.femtosecond)
        integ.setRandomNumberSeed(self.cfg.seed)
        props = systems.platform_properties(self.platform, self.cfg.threads)
        return app.Simulation(self.topology, system, integ, self.platform, props)

    def _reporter(self):
        """The H5MD reporter of the production frames (positions as the context holds them, forces)."""
        buf = io.StringIO()
        app.PDBFile.writeFile(self.topology, self.positions * u.nanometer, buf)
        atoms = list(self.topology.atoms())
        attrs = {"config": config.to_yaml(self.cfg), "seed": self.cfg.seed, "system": self.spec.name,
                 "forcefield": self.spec.forcefield.name, "temperature_K": self.T, "pressure_bar": self.P,
                 "timestep_fs": self.dt, "hmr": bool(self.cfg.hmr),
                 "hydrogen_mass_amu": systems.HMR_HYDROGEN_MASS if self.cfg.hmr else 1.008,
                 "constraints_rule": self.cfg.constraints, "platform": self.platform.getName()}
        datasets = {"topology_pdb": buf.getvalue(), "constraints": systems.constrained_pairs(self.system),
                    "atom_names": [a.name for a in atoms], "residue_names": [a.residue.name for a in atoms],
                    "residue_ids": [a.residue.index for a in atoms], "elements": [a.element.symbol for a in atoms],
                    # Physical masses (the mapping's centres of mass); /particles/all/mass holds the integrator's (HMR).
                    "atom_masses": systems.atom_masses(self.spec, self.topology)}
        meta = {"stage": "npt", "npt_samples": 0, "nvt_volume": None,
                "config": json.loads(json.dumps(vars(self.cfg)))}
        return H5MDReporter(self.out, self.cfg.stride, self.chk_frames, forces=True, wrap=False,
                            position_dtype=np.float64, attrs=attrs, datasets=datasets, checkpoint_meta=meta,
                            resume=self.meta is not None, overwrite=True)

    def _log(self, stage, sim, state):
        pe = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        ke = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        vol = state.getPeriodicBoxVolume().value_in_unit(u.nanometer ** 3)
        elapsed = time.perf_counter() - self._t0
        speed = (sim.context.getStepCount() - self._steps0) * self.dt * 1e-6 / (elapsed / 86400) if elapsed > 0 else 0.0
        row = [stage, sim.context.getStepCount(), state.getTime().value_in_unit(u.picosecond), pe, ke,
               ke * self.ke_to_T, vol, systems.density_g_cm3(self.masses.sum(), vol), speed]
        with open(self.log, "a") as f:
            f.write(",".join(str(v) if isinstance(v, str) else f"{v:.6g}" for v in row) + "\n")
        return pe, vol

    def run(self, progress=True):
        cfg = self.cfg
        total = self.n_npt + self.n_frames * cfg.stride
        h5 = self._reporter()
        if self.meta is None:
            self.log.write_text(",".join(LOG_COLUMNS) + "\n")
            sim = self._simulation(barostat=True)
            h5.open(sim)
            create_series(h5.writer.cgkd, "npt_volume", (), np.float64, "nm3")  # NPT samples: not per frame
            sim.context.setPositions(self.positions)
            sim.minimizeEnergy(maxIterations=cfg.minimize_iterations)
            sim.context.setVelocitiesToTemperature(self.T * u.kelvin, cfg.seed)
            h5.checkpoint(sim)
        else:
            sim = self._simulation(barostat=self.meta["stage"] == "npt")
            meta = h5.resume(sim)
            h5.writer.truncate_series(h5.writer.cgkd["npt_volume"], meta["npt_samples"])
            trim_csv(self.log, 1, meta["step"])
        bar = tqdm(total=total, initial=sim.context.getStepCount(), unit="step", disable=not progress,
                   desc=f"cgkd aa {self.spec.name}")
        self._t0, self._steps0 = time.perf_counter(), sim.context.getStepCount()
        try:
            if h5.checkpoint_meta["stage"] == "npt":
                volume = self._npt(sim, h5, bar)
                sim = self._to_nvt(sim, volume)
                h5.checkpoint(sim, stage="nvt", nvt_volume=volume)
            sim.reporters = [_NVTLog(self), h5]
            while sim.context.getStepCount() < total:
                n = min(cfg.stride * self.chk_frames, total - sim.context.getStepCount())
                sim.step(n)
                bar.update(n)
            h5.checkpoint(sim)
        finally:
            bar.close()
            h5.close()
        self.meta = h5.checkpoint_meta
        return self.summary()

    def _npt(self, sim, h5, bar):
        obs = h5.writer.cgkd["npt_volume"]
        while sim.context.getStepCount() < self.n_npt:
            n = min(self.cfg.stride, self.n_npt - sim.context.getStepCount())
            sim.step(n)
            bar.update(n)
            state = sim.context.getState(getEnergy=True)
            _, vol = self._log("npt", sim, state)
            h5.writer.append_series(obs, sim.context.getStepCount(), state.getTime().value_in_unit(u.picosecond), vol)
            if obs["step"].shape[0] % self.chk_frames == 0:
                h5.checkpoint(sim, npt_samples=obs["step"].shape[0])
        h5.checkpoint_meta["npt_samples"] = obs["step"].shape[0]
        vols = obs["value"][:]
        if len(vols) == 0:
            return sim.context.getState().getPeriodicBoxVolume().value_in_unit(u.nanometer ** 3)
        return float(vols[int(len(vols) * self.cfg.volume_discard):].mean())

    def _to_nvt(self, sim, volume):
        state = sim.context.getState(getPositions=True, getVelocities=True)
        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        pos, box = scale_to_volume(pos, box, self.topology, volume)
        nvt = self._simulation(barostat=False)
        nvt.context.setPeriodicBoxVectors(*box)
        nvt.context.setPositions(pos)
        nvt.context.applyConstraints(1e-8)
        nvt.context.setVelocities(state.getVelocities())
        nvt.context.setTime(state.getTime())
        nvt.context.setStepCount(sim.context.getStepCount())
        return nvt

    def summary(self):
        with H5MDTrajectory(self.out) as traj:
            n = len(traj)
            vols = traj.cgkd["npt_volume/value"][:]
        disc = vols[int(len(vols) * self.cfg.volume_discard):]
        return {"out": str(self.out), "frames": n, "atoms": self.topology.getNumAtoms(),
                "nvt_volume_nm3": self.meta["nvt_volume"],
                "npt_density_g_cm3": float(systems.density_g_cm3(self.masses.sum(), disc).mean()) if len(disc) else None,
                "experiment_density_g_cm3": self.spec.density, "timestep_fs": self.dt, "hmr": bool(self.cfg.hmr)}


class _NVTLog:
    """A log line (stage nvt) at every production frame."""

    def __init__(self, run):
        self.run = run

    def describeNextReport(self, simulation):
        return next_report(simulation, self.run.cfg.stride, ["energy"])

    def report(self, simulation, state):
        self.run._log("nvt", simulation, state)


@locks_output
def run_aa(cfg, progress=True):
    return AARun(cfg).run(progress=progress)
