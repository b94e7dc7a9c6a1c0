"""AA trajectories with forces from several formats, in cgkd units (nm, kJ/mol/nm), streamed in frame blocks.

- cgkd H5MD (from `cgkd aa`): topology, masses and constrained pairs come from the file itself;
- GROMACS TRR with forces, plus a PDB/TPR topology (MDAnalysis);
- LAMMPS dump with fx fy fz, plus a PDB topology (MDAnalysis; `units` real or metal; `dt_ps` the MD step);
- extended XYZ with forces and a periodic cell (ase), plus a PDB topology; `dt_ps` the time between frames.

Atom masses come from the topology's elements (never guessed from names: OPLS's `CS` is not caesium),
so centres of mass use physical masses even when the run used hydrogen mass repartitioning.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CgkdError
from .fileio import file_hash
from .h5md import H5MDTrajectory

KCAL = 4.184
EV = 96.48533212  # kJ/mol per eV


@dataclass
class AATopology:
    atom_names: list
    residue_names: list
    residue_ids: np.ndarray
    masses: np.ndarray
    elements: list
    constraints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    pdb_text: str = ""


class AATrajectoryReader:
    """Common interface: .topology, .n_frames, .blocks(size) -> (positions, forces, boxes, steps, times)."""

    path: Path
    topology: AATopology
    n_frames: int
    temperature = None  # K, when the source records it

    def hash(self):
        return file_hash(self.path)


class H5MDReader(AATrajectoryReader):
    def __init__(self, path):
        self.path = Path(path)
        self.traj = H5MDTrajectory(path)
        g = self.traj.cgkd
        if not self.traj.has("force"):
            raise CgkdError(f"{self.path}: no forces (/particles/{self.traj.group}/force) to map")
        if "atom_names" not in g:
            raise CgkdError(f"{self.path}: no /cgkd/atom_names: not written by `cgkd aa`; give a topology")
        dec = lambda ds: [x.decode() if isinstance(x, bytes) else str(x) for x in ds[:]]  # noqa: E731
        masses = g["atom_masses"][:] if "atom_masses" in g else self.traj.masses()
        self.topology = AATopology(dec(g["atom_names"]), dec(g["residue_names"]), g["residue_ids"][:],
                                   masses, dec(g["elements"]), g["constraints"][:],
                                   g["topology_pdb"][()].decode() if "topology_pdb" in g else "")
        self.n_frames = len(self.traj)
        self.temperature = float(g.attrs["temperature_K"]) if "temperature_K" in g.attrs else None
        if self.traj.n_particles != len(self.topology.atom_names):
            raise CgkdError(f"{self.path}: {self.traj.n_particles} atoms in frames, "
                            f"{len(self.topology.atom_names)} in /cgkd topology")

    def blocks(self, size):
        steps, times = self.traj.steps(), self.traj.times()
        for s in range(0, self.n_frames, size):
            sl = slice(s, min(s + size, self.n_frames))
            yield (self.traj.positions(sl).astype(np.float64), self.traj.forces(sl).astype(np.float64),
                   self.traj.boxes(sl).astype(np.float64), steps[sl], times[sl])


def _universe_topology(u, topology):
    """AATopology of an MDAnalysis universe, masses from its elements."""
    from MDAnalysis.exceptions import NoDataError
    from MDAnalysis.guesser.tables import masses as element_masses

    a = u.atoms
    try:
        names, resnames, elements = list(a.names), list(a.resnames), [str(e) for e in a.elements]
    except (NoDataError, AttributeError):
        raise CgkdError(f"{topology}: needs atom names, residue names and elements (a PDB with its element "
                        "column, or a TPR)") from None
    bad = [i for i, e in enumerate(elements) if e.upper() not in element_masses]
    if bad:
        raise CgkdError(f"{topology}: atom {bad[0]} ({names[bad[0]]}) has no valid element ({elements[bad[0]]!r})")
    masses = np.array([element_masses[e.upper()] for e in elements])
    return AATopology(names, resnames, a.resindices.copy(), masses, elements)


class MDAnalysisReader(AATrajectoryReader):
    """TRR or LAMMPS dump (MDAnalysis works in Angstrom and kJ/mol/Angstrom after its own conversion)."""

    def __init__(self, path, topology, fmt=None, force_unit=1.0, constraints="none", dt_ps=None):
        import MDAnalysis as mda

        self.path = Path(path)
        for p in (self.path, Path(topology)):
            if not p.is_file():
                raise CgkdError(f"{p}: file does not exist")
        try:
            kw = {"format": fmt} if fmt else {}
            if dt_ps is not None:
                kw["dt"] = dt_ps
            self.u = mda.Universe(str(topology), str(path), **kw)
        except Exception as e:  # MDAnalysis raises many types for malformed input
            raise CgkdError(f"{self.path}: cannot read with topology {topology} ({e})") from None
        if not self.u.trajectory.ts.has_forces:
            raise CgkdError(f"{self.path}: the trajectory has no forces")
        self.force_unit = force_unit
        self.dt_ps = dt_ps
        self.topology = _universe_topology(self.u, topology)
        self.topology.constraints = _constraints(self.u, self.topology, constraints, self.path)
        self.n_frames = len(self.u.trajectory)

    def blocks(self, size):
        from MDAnalysis.exceptions import NoDataError

        buf = []
        for ts in self.u.trajectory:
            box = _box_from_dimensions(ts.dimensions)
            step = int(ts.data.get("step", ts.frame))
            time = step * self.dt_ps if self.dt_ps is not None else ts.time
            try:
                buf.append((ts.positions / 10.0, ts.forces * 10.0 * self.force_unit, box, step, time))
            except NoDataError:
                raise CgkdError(f"{self.path}: frame {ts.frame} lacks positions or forces (write both at the "
                                "same interval)") from None
            if len(buf) == size:
                yield _stack(buf)
                buf = []
        if buf:
            yield _stack(buf)


class XYZReader(AATrajectoryReader):
    """Extended XYZ (ase): positions Angstrom, forces eV/Angstrom; residues from a PDB topology."""

    def __init__(self, path, topology, constraints="none", dt_ps=None):
        import ase.io
        import MDAnalysis as mda

        self.path = Path(path)
        for p in (self.path, Path(topology)):
            if not p.is_file():
                raise CgkdError(f"{p}: file does not exist")
        if dt_ps is None:
            raise CgkdError(f"{self.path}: extended XYZ carries no times: give --dt-ps (time between frames)")
        self.dt_ps = dt_ps
        self.frames = ase.io.read(str(path), index=":")
        top = mda.Universe(str(topology))
        a = top.atoms
        self.topology = _universe_topology(top, topology)
        self.topology.constraints = _constraints(top, self.topology, constraints, self.path)
        self.n_frames = len(self.frames)
        for i, f in enumerate(self.frames):
            if not f.pbc.all() or abs(np.linalg.det(np.asarray(f.get_cell()))) < 1e-9:
                raise CgkdError(f"{self.path}: frame {i} has no periodic cell (Lattice and pbc are needed)")
        syms = self.frames[0].get_chemical_symbols()
        if len(syms) != len(a):
            raise CgkdError(f"{self.path}: {len(syms)} atoms per frame, topology {topology} has {len(a)}")
        bad = [i for i, (s, e) in enumerate(zip(syms, self.topology.elements)) if s.upper() != e.upper()]
        if bad:
            raise CgkdError(f"{self.path}: atom order differs from {topology} (first at atom {bad[0]}: "
                            f"{syms[bad[0]]} vs {self.topology.elements[bad[0]]})")

    def blocks(self, size):
        for s in range(0, self.n_frames, size):
            chunk = self.frames[s:s + size]
            yield (np.array([f.get_positions() / 10.0 for f in chunk]),
                   np.array([f.get_forces() * EV * 10.0 for f in chunk]),
                   np.array([np.asarray(f.get_cell()) / 10.0 for f in chunk]),
                   np.arange(s, s + len(chunk)), np.arange(s, s + len(chunk)) * self.dt_ps)


def _stack(buf):
    return tuple(np.array([b[i] for b in buf], dtype=float if i < 3 else None) for i in range(5))


def _box_from_dimensions(dim):
    from MDAnalysis.lib.mdamath import triclinic_vectors

    return triclinic_vectors(dim) / 10.0


def _constraints(universe, topology, rule, path):
    """Constrained pairs by rule: none, or hbonds (bonds to hydrogen; needs bonds in the topology)."""
    if rule == "none":
        return np.zeros((0, 2), dtype=np.int64)
    if rule != "hbonds":
        raise CgkdError(f"{path}: constraints rule must be none or hbonds, got {rule!r}")
    if not hasattr(universe, "bonds") or len(universe.bonds) == 0:
        raise CgkdError(f"{path}: --constraints hbonds needs bonds in the topology (CONECT records or a TPR)")
    el = np.array([e.upper() for e in topology.elements])
    pairs = np.array([b.indices for b in universe.bonds])
    return pairs[(el[pairs] == "H").any(axis=1)]


def open_trajectory(path, topology=None, fmt=None, lammps_units="real", constraints="none", dt_ps=None):
    """Pick a reader by file suffix (or fmt: h5md, trr, lammpsdump, xyz)."""
    path = Path(path)
    kind = (fmt or path.suffix.lstrip(".")).lower()
    if kind in ("h5", "h5md", "hdf5"):
        return H5MDReader(path)
    if topology is None:
        raise CgkdError(f"{path}: a {kind} trajectory needs a topology (--topology PDB or TPR)")
    if kind == "trr":
        return MDAnalysisReader(path, topology, "TRR", constraints=constraints)
    if kind in ("lammpstrj", "lammpsdump", "dump"):
        units = {"real": KCAL, "metal": EV}
        if lammps_units not in units:
            raise CgkdError(f"{path}: LAMMPS units must be real or metal, got {lammps_units!r}")
        if dt_ps is None:
            raise CgkdError(f"{path}: LAMMPS dumps carry steps, not times: give --dt-ps (the MD time step in ps)")
        # MDAnalysis leaves dump forces in LAMMPS units (real: kcal/mol/A, metal: eV/A)
        return MDAnalysisReader(path, topology, "LAMMPSDUMP", force_unit=units[lammps_units], constraints=constraints,
                                dt_ps=dt_ps)
    if kind in ("xyz", "extxyz"):
        return XYZReader(path, topology, constraints=constraints, dt_ps=dt_ps)
    raise CgkdError(f"{path}: unknown trajectory format '{kind}' (h5md, trr, lammpsdump, xyz)")
