"""CG datasets and trajectories: the one place where a cgkd CG H5MD file (from `cgkd map` or `cgkd simulate`)
is decoded into bead types, residues, masses, temperature, frames and (for mapped data) forces."""
from pathlib import Path

import numpy as np
import torch

from .errors import CgkdError
from .fileio import file_hash
from .h5md import H5MDTrajectory, H5MDWriter


def _strings(values):
    return [x.decode() if isinstance(x, bytes) else str(x) for x in values]


class CGDataset:
    """Frames of a CG dataset or trajectory: positions, boxes, times and (if present) forces as float32 arrays
    (`dtype` to change), bead types, residue ids and names, bead masses and temperature.

    frames: a slice (default all) or one frame index (negative from the end). forces: True requires mapped
    forces, False skips them, None reads them when present."""

    def __init__(self, path, frames=None, forces=None, dtype=np.float32):
        self.path = Path(path)
        try:
            with H5MDTrajectory(path) as t:
                g = t.cgkd
                if "bead_types" not in g:
                    raise CgkdError(f"{self.path}: no /cgkd/bead_types: not a CG dataset or trajectory from cgkd")
                if forces and not t.has("force"):
                    raise CgkdError(f"{self.path}: no forces in this dataset; force matching needs mapped forces")
                n = len(t)
                if isinstance(frames, (int, np.integer)):
                    if not -n <= frames < n:
                        raise CgkdError(f"{self.path}: frame {frames} out of range ({n} frames)")
                    frames = slice(frames % n, frames % n + 1)
                frames = frames or slice(None)
                self.type_names = _strings(g["bead_types"][:])
                self.residues = g["residue_ids"][:] if "residue_ids" in g else np.arange(len(self.type_names))
                self.residue_names = (_strings(g["residue_names"][:]) if "residue_names" in g
                                      else list(self.type_names))
                self.temperature = float(g.attrs["temperature_K"]) if "temperature_K" in g.attrs else None
                self.masses = t.masses()
                self.positions = t.positions(frames).astype(dtype)
                self.boxes = t.boxes(frames).astype(dtype)
                self.times = t.times()[frames]
                self.forces = t.forces(frames).astype(dtype) if forces is not False and t.has("force") else None
                self.unwrapped = (t.particles["unwrapped_position"]["value"][frames].astype(dtype)
                                  if "unwrapped_position" in t.particles else None)
        except (OSError, KeyError) as e:  # h5py: truncated or bit-flipped (checksummed) data
            raise CgkdError(f"{self.path}: damaged or unreadable H5MD ({str(e).splitlines()[0]})") from None
        if self.positions.shape[1] != len(self.type_names):
            raise CgkdError(f"{self.path}: {self.positions.shape[1]} beads per frame but {len(self.type_names)} "
                            "bead types")
        self._hash = None

    @property
    def hash(self):
        """sha256 of the file's bytes (computed once)."""
        if self._hash is None:
            self._hash = file_hash(self.path)
        return self._hash

    def __len__(self):
        return len(self.positions)

    @property
    def n_beads(self):
        return len(self.type_names)

    def split(self, val_fraction, test_fraction):
        """Contiguous blocks: the first frames train, then validation, then test."""
        n = len(self)
        if n < 3:
            raise CgkdError(f"{self.path}: {n} frames; need at least 3 (train, validation, test)")
        n_test = max(1, int(round(n * test_fraction)))
        n_val = max(1, int(round(n * val_fraction)))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise CgkdError(f"{self.path}: {n} frames cannot hold the validation and test fractions")
        return {"train": [0, n_train], "val": [n_train, n_train + n_val], "test": [n_train + n_val, n]}

    def write(self, path, frames, displacement=None):
        """A CG trajectory file (H5MD, float32 positions, no forces) of the given frames, positions optionally
        displaced by `displacement` (len(frames), beads, 3) nm; it keeps the beads, masses and temperature."""
        pos = self.positions[frames] + (displacement if displacement is not None else 0.0)
        w = H5MDWriter.create(path, self.n_beads, group="cg", fields=("position",), masses=self.masses,
                              dtype={"position": np.float32})
        w.extend(np.arange(len(frames)), self.times[frames], self.boxes[frames], position=pos)
        g = w.cgkd
        g.create_dataset("bead_types", data=self.type_names)
        g.create_dataset("residue_ids", data=self.residues)
        g.create_dataset("residue_names", data=self.residue_names)
        if self.temperature is not None:
            g.attrs["temperature_K"] = self.temperature
        g.attrs["source"] = str(self.path)
        w.close()
        return Path(path)

    def write_halves(self, folder):
        """The first and the second half of the frames as two CG trajectories in `folder` (aa_first_half.h5,
        aa_second_half.h5, the second written last): compared with each other they give the noise floor."""
        n = len(self)
        first = self.write(Path(folder) / "aa_first_half.h5", np.arange(n // 2))
        return first, self.write(Path(folder) / "aa_second_half.h5", np.arange(n // 2, n))

    def bead_masses(self, type_names):
        """{bead type: mass in amu} for the given types ({} when the file has no masses)."""
        if self.masses is None:
            return {}
        return {t: float(self.masses[self.type_names.index(t)]) for t in type_names}


def batch(ds, frames, types, forces=None):
    """Concatenate frames into one graph batch: (types, positions, boxes per frame, batch index, forces), the
    forces from `forces` (an array over all frames; default the dataset's mapped forces; False or a dataset
    without forces: None)."""
    k, n = len(frames), len(types)
    forces = ds.forces if forces is None else (None if forces is False else forces)
    return (types.repeat(k), torch.from_numpy(ds.positions[frames].reshape(-1, 3)),
            torch.from_numpy(ds.boxes[frames]), torch.arange(k).repeat_interleave(n),
            None if forces is None else torch.from_numpy(np.asarray(forces[frames], np.float32).reshape(-1, 3)))
