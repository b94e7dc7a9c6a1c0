"""H5MD trajectories (h5md.nongnu.org, v1.1): positions, forces, box, time and energies, plus a /cgkd group.

Layout written by `H5MDWriter` (all time series share step/time; datasets are chunked, resizable and
Fletcher-32 checksummed, so a flipped bit fails the read instead of returning wrong numbers; the file is
flushed after every whole frame, so a killed writer leaves a valid file that MDAnalysis reads — SWMR mode
was tried and rejected: after a SIGKILL its files open only after `h5clear`):

    /h5md                             version [1, 1]; author, creator (cgkd + version)
    /particles/<group>/position       {step, time, value (frames, n, 3) nm}
    /particles/<group>/force          {step, time, value (frames, n, 3) kJ mol-1 nm-1}
    /particles/<group>/box            dimension 3, boundary periodic; edges {step, time, value (frames, 3, 3) nm}
    /particles/<group>/mass           (n,) amu (masses used by the integrator)
    /observables/<name>               {step, time, value (frames,)}, e.g. potential_energy in kJ mol-1
    /cgkd                             attrs: version, config (YAML), ...; datasets: topology, constraints, ...
"""
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import CgkdError

UNITS = {"position": "nm", "unwrapped_position": "nm", "force": "kJ mol-1 nm-1", "velocity": "nm ps-1",
         "edges": "nm"}


def create_series(parent, name, shape, dtype, unit=None, compression=None):
    g = parent.create_group(name)
    g.create_dataset("step", (0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
    g.create_dataset("time", (0,), maxshape=(None,), dtype=np.float64, chunks=(1024,)).attrs["unit"] = "ps"
    chunk = (1,) + tuple(shape) if shape else (1024,)
    v = g.create_dataset("value", (0,) + tuple(shape), maxshape=(None,) + tuple(shape), dtype=dtype,
                         chunks=chunk, compression=compression, fletcher32=True)  # bit flips fail loudly
    if unit:
        v.attrs["unit"] = unit
    return g


class _H5File:
    """An open h5py file (`self.file`), closed by close() or a with-block."""

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class H5MDWriter(_H5File):
    """Append frames to an H5MD file; `truncate(n)` drops frames beyond n (used on resume)."""

    def __init__(self, path, group="all"):
        self.path = Path(path)
        self.file = h5py.File(self.path, "a")
        self.group = group

    @classmethod
    def create(cls, path, n_particles, group="all", fields=("position", "force"), observables=(),
               masses=None, dtype=None, compression=None, author="cgkd"):
        """Create a new file (the caller handles overwrite checks) with empty time series.

        dtype maps field -> numpy dtype; default float64 positions (exact finite-difference checks and
        mapping) and float32 forces (mapped labels are far noisier than float32 rounding)."""
        dtype = {"position": np.float64, "unwrapped_position": np.float64, "force": np.float32, "velocity": np.float32,
                 **(dtype or {})}
        with h5py.File(path, "w") as f:
            h = f.create_group("h5md")
            h.attrs["version"] = np.array([1, 1])
            h.create_group("author").attrs["name"] = author
            c = h.create_group("creator")
            c.attrs["name"] = "cgkd"
            c.attrs["version"] = __version__
            p = f.create_group("particles").create_group(group)
            for field in fields:
                create_series(p, field, (n_particles, 3), dtype[field], UNITS[field], compression)
            box = p.create_group("box")
            box.attrs["dimension"] = 3
            box.attrs["boundary"] = np.array([b"periodic"] * 3)
            create_series(box, "edges", (3, 3), np.float64, UNITS["edges"])
            if masses is not None:
                p.create_dataset("mass", data=np.asarray(masses, dtype=np.float64)).attrs["unit"] = "amu"
            obs = f.create_group("observables")
            for name, unit in observables:
                create_series(obs, name, (), np.float64, unit)
            f.create_group("cgkd").attrs["version"] = __version__
        return cls(path, group)

    @property
    def particles(self):
        return self.file["particles"][self.group]

    @property
    def cgkd(self):
        return self.file["cgkd"]

    def __len__(self):
        return self.particles["box/edges/step"].shape[0]

    def extend_series(self, g, steps, times, values):
        """Append a block of entries (steps (k,), times (k,), values (k, ...)) to the time-series group g."""
        n, k = g["step"].shape[0], len(steps)
        for key, v in (("step", steps), ("time", times), ("value", values)):
            g[key].resize(n + k, axis=0)
            g[key][n:n + k] = v

    def append_series(self, g, step, time, value):
        """Append one (step, time, value) entry to the time-series group g."""
        self.extend_series(g, [step], [time], np.asarray(value)[None])

    def extend(self, steps, times, boxes, observables=None, **fields):
        """Add a block of frames: boxes (k, 3, 3) nm, each field (k, n, 3) given by name, observables (k,)."""
        for name, value in fields.items():
            self.extend_series(self.particles[name], steps, times, value)
        self.extend_series(self.particles["box/edges"], steps, times, boxes)
        for name, value in (observables or {}).items():
            self.extend_series(self.file["observables"][name], steps, times, value)
        self.file.flush()

    def append(self, step, time, box, observables=None, **fields):
        """Add one frame: box (3, 3) nm and each field given (position=..., force=...) plus observables."""
        self.extend([step], [time], np.asarray(box)[None],
                    {k: [v] for k, v in (observables or {}).items()},
                    **{k: np.asarray(v)[None] for k, v in fields.items()})

    @staticmethod
    def truncate_series(g, n):
        """Keep the first n entries of the time-series group g."""
        for key in ("step", "time", "value"):
            if g[key].shape[0] > n:
                g[key].resize(n, axis=0)

    def truncate(self, n_frames):
        """Keep the first n_frames frames of the per-frame series (/particles/<group> and /observables)."""

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "step" in obj and "value" in obj:
                self.truncate_series(obj, n_frames)

        self.particles.visititems(visit)
        self.file["observables"].visititems(visit)
        self.file.flush()


class H5MDTrajectory(_H5File):
    """Read access to an H5MD file; arrays are loaded lazily by frame slices."""

    def __init__(self, path, group=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CgkdError(f"{self.path}: trajectory file does not exist")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise CgkdError(f"{self.path}: not a readable HDF5/H5MD file ({e})") from None
        if "particles" not in self.file or not len(self.file["particles"]):
            raise CgkdError(f"{self.path}: no /particles group, not an H5MD trajectory")
        self.group = group or next(iter(self.file["particles"]))
        if self.group not in self.file["particles"]:
            raise CgkdError(f"{self.path}: no particle group '{self.group}'")
        self.particles = self.file["particles"][self.group]

    def has(self, field):
        return field in self.particles

    def _value(self, name, frames=slice(None)):
        if name not in self.particles:
            raise CgkdError(f"{self.path}: no /particles/{self.group}/{name} in this file")
        return self.particles[name]["value"][frames]

    def __len__(self):
        """Frames present in every per-frame series (a frame torn by a crash is not counted)."""
        lengths = []
        self.particles.visititems(lambda name, obj: lengths.append(obj.shape[0])
                                  if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] in ("step", "value")
                                  and obj.maxshape[0] is None else None)
        return min(lengths)

    @property
    def n_particles(self):
        return self.particles["position/value"].shape[1]

    def positions(self, frames=slice(None)):
        return self._value("position", frames)

    def forces(self, frames=slice(None)):
        return self._value("force", frames)

    def boxes(self, frames=slice(None)):
        return self.particles["box/edges/value"][frames]

    def times(self):
        return self.particles["box/edges/time"][:]

    def steps(self):
        return self.particles["box/edges/step"][:]

    def masses(self):
        return self.particles["mass"][:] if "mass" in self.particles else None

    def observable(self, name):
        if "observables" not in self.file or name not in self.file["observables"]:
            raise CgkdError(f"{self.path}: no /observables/{name} in this file")
        return self.file["observables"][name]["value"][:]

    @property
    def cgkd(self):
        return self.file["cgkd"] if "cgkd" in self.file else {}
