"""OpenMM reporters (`describeNextReport`/`report`) that any `app.Simulation` can use, and that `cgkd simulate`
and `cgkd aa` use themselves, so every stage shares one output and resume protocol:

- `H5MDReporter` appends whole frames to an H5MD file (flushed after each frame) and every
  `checkpointInterval` frames writes `<file>.chk` atomically: a JSON header (step, frame count, platform, the
  caller's own fields) and the OpenMM context checkpoint. `resume(simulation)` loads it and drops any frame
  written after it, so a killed run continues with no frame lost or duplicated.
- `StabilityReporter` runs the CG stability monitor (`cgkd.simulate.Monitor`) and raises `UnstableError`.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as u

from . import __version__
from .errors import CgkdError
from .fileio import atomic_path
from .h5md import H5MDTrajectory, H5MDWriter

KB = 0.008314462618  # kJ/mol/K


def write_checkpoint(path, meta, blob):
    """Header line (JSON, with the sha256 of the blob) and the OpenMM checkpoint blob, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(json.dumps({**meta, "sha256": hashlib.sha256(blob).hexdigest()}).encode() + b"\n" + blob)


def read_checkpoint(path):
    """(header dict, OpenMM checkpoint bytes) of a cgkd checkpoint file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CgkdError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    head, _, blob = data.partition(b"\n")
    try:
        meta = json.loads(head)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not {"step", "frames", "platform", "sha256"} <= set(meta):
        raise CgkdError(f"{path}: not a cgkd checkpoint (damaged or another kind of file)")
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CgkdError(f"{path}: damaged (its checksum does not match: truncated or altered)")
    return meta, blob


def next_report(simulation, interval, include):
    """OpenMM's describeNextReport answer for a reporter every `interval` steps on the absolute step grid,
    positions unwrapped (cgkd wraps them itself where it needs to)."""
    return {"steps": interval - simulation.currentStep % interval, "periodic": False, "include": include}


def degrees_of_freedom(system):
    """3N minus constraints, minus 3 when the centre-of-mass motion is removed."""
    cm = any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
    return 3 * system.getNumParticles() - system.getNumConstraints() - (3 if cm else 0)


class H5MDReporter:
    """Write a Simulation's frames to an H5MD file every `reportInterval` steps, with a checkpoint beside it.

    Each frame: positions wrapped particle by particle into the box (`position`; as the context holds them
    with wrap=False), optionally the unwrapped positions
    (`unwrapped_position`, for diffusion), forces and velocities; the box; potential and kinetic energy and
    the kinetic temperature as observables. `attrs` and `datasets` go into the file's /cgkd group when it is
    created; `checkpoint_meta` (a dict the caller may update) goes into every checkpoint header.

    New run: `H5MDReporter(path, 100)` (refuses an existing file unless overwrite=True). Resume:
    `H5MDReporter(path, 100, resume=True)`, then `meta = reporter.resume(simulation)` before stepping."""

    def __init__(self, file, reportInterval, checkpointInterval=10, unwrapped=False, forces=False, velocities=False,
                 wrap=True, position_dtype=np.float32, attrs=None, datasets=None, checkpoint_meta=None, resume=False,
                 overwrite=False):
        self.path = Path(file)
        self.chk = self.path.with_name(self.path.name + ".chk")
        self.interval, self.chk_interval = int(reportInterval), int(checkpointInterval)
        if self.interval < 1 or self.chk_interval < 1:
            raise CgkdError(f"{self.path}: report and checkpoint intervals must be >= 1")
        self.fields = ["position"] + ["unwrapped_position"] * unwrapped + ["force"] * forces + ["velocity"] * velocities
        self.wrap, self.position_dtype = wrap, position_dtype
        self.attrs, self.datasets = attrs or {}, datasets or {}
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.writer, self.ndof, self._resume = None, None, resume
        if not resume and self.path.exists() and not overwrite:
            raise CgkdError(f"{self.path}: output exists; pass overwrite=True (--overwrite) to replace it or resume")

    def __len__(self):
        return len(self.writer) if self.writer is not None else 0

    def open(self, simulation):
        """Create the file (or open it to resume): done by the first report or checkpoint, or call it first to
        add the caller's own groups."""
        system = simulation.system
        self.ndof = degrees_of_freedom(system)
        if self._resume:
            try:
                self.writer = H5MDWriter(self.path)
            except OSError as e:
                raise CgkdError(f"{self.path}: cannot open the trajectory to resume ({e})") from None
            return
        masses = [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
        dtype = {"position": self.position_dtype, "unwrapped_position": self.position_dtype}
        self.writer = H5MDWriter.create(self.path, system.getNumParticles(), fields=self.fields, masses=masses,
                                        dtype=dtype, observables=[("potential_energy", "kJ mol-1"),
                                                                  ("kinetic_energy", "kJ mol-1"),
                                                                  ("temperature", "K")])
        g = self.writer.cgkd
        for key, value in self.attrs.items():
            g.attrs[key] = value
        for key, value in self.datasets.items():
            g.create_dataset(key, data=value)
        self.writer.file.flush()

    def resume(self, simulation):
        """Load the checkpoint into the simulation and drop frames written after it; returns its header."""
        if not self.chk.is_file() or not self.path.is_file():
            raise CgkdError(f"{self.path.parent}: nothing to resume (needs {self.path.name} and {self.chk.name})")
        meta, blob = read_checkpoint(self.chk)
        platform = simulation.context.getPlatform().getName()
        if meta["platform"] != platform:
            raise CgkdError(f"{self.chk}: written on the {meta['platform']} platform; resume it there (not {platform})")
        with H5MDTrajectory(self.path) as t:
            if len(t) < meta["frames"]:
                raise CgkdError(f"{self.path}: {len(t)} frames, fewer than the checkpoint's {meta['frames']}")
        try:
            simulation.context.loadCheckpoint(blob)
        except Exception as e:  # OpenMM raises its own exception type for foreign checkpoints
            raise CgkdError(f"{self.chk}: cannot load the checkpoint ({e})") from None
        self.open(simulation)
        self.writer.truncate(meta["frames"])
        self.checkpoint_meta.update({k: v for k, v in meta.items() if k not in ("step", "frames")})
        return meta

    def checkpoint(self, simulation, **meta):
        """Flush the file, then write the checkpoint (header: step, frames, platform, checkpoint_meta, meta)."""
        if self.writer is None:
            self.open(simulation)
        self.checkpoint_meta.update(meta)
        self.writer.file.flush()
        head = {**self.checkpoint_meta, "step": simulation.context.getStepCount(), "frames": len(self.writer),
                "platform": simulation.context.getPlatform().getName(), "cgkd_version": __version__}
        write_checkpoint(self.chk, head, simulation.context.createCheckpoint())

    def describeNextReport(self, simulation):
        include = ["positions", "energy"] + ["forces"] * ("force" in self.fields) + ["velocities"] * ("velocity" in self.fields)
        return next_report(simulation, self.interval, include)

    def report(self, simulation, state):
        if self.writer is None:
            self.open(simulation)
        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        pe = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        ke = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        fields = {"position": pos - np.floor(pos @ np.linalg.inv(box)) @ box if self.wrap else pos}
        if "unwrapped_position" in self.fields:
            fields["unwrapped_position"] = pos
        if "force" in self.fields:
            fields["force"] = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        if "velocity" in self.fields:
            fields["velocity"] = state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
        self.writer.append(simulation.currentStep, state.getTime().value_in_unit(u.picosecond), box,
                           observables={"potential_energy": pe, "kinetic_energy": ke,
                                        "temperature": 2.0 * ke / (self.ndof * KB)}, **fields)
        if len(self.writer) % self.chk_interval == 0:
            self.checkpoint(simulation)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __del__(self):
        self.close()


class UnstableError(CgkdError):
    """A stability check failed: `check` names it, `detail` says where, `time_ps` when."""

    def __init__(self, check, detail, time_ps, step):
        super().__init__(f"unstable at {time_ps:.3f} ps (step {step}): {check}: {detail}")
        self.check, self.detail, self.time_ps, self.step = check, detail, time_ps, step


class StabilityReporter:
    """The stability monitor of `cgkd simulate` as an OpenMM reporter: every reportInterval steps it checks
    finite energies and positions, bead pairs below their floor (clumping), the neighbour budget and (given a
    temperature) the kinetic temperature, and raises `UnstableError` naming the check, the time and the beads.
    `closest` holds the last closest-pair-over-floor ratio."""

    def __init__(self, forcefield, topology, reportInterval, temperature=None, floor_factor=0.7, tolerance=0.25):
        from .simulate import Monitor

        if forcefield.onsets is None:
            raise CgkdError("the model's metadata has no pair_onsets_nm: nothing to check clumping against")
        self.interval = int(reportInterval)
        self.monitor = Monitor.for_forcefield(forcefield, [a.name for a in topology.atoms()], temperature,
                                              floor_factor, tolerance)

    @property
    def closest(self):
        return self.monitor.closest

    def describeNextReport(self, simulation):
        return next_report(simulation, self.interval, ["positions", "energy"])

    def report(self, simulation, state):
        failure = self.monitor(state.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                               state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer),
                               state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                               state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole))
        if failure:
            raise UnstableError(*failure, state.getTime().value_in_unit(u.picosecond), simulation.currentStep)
