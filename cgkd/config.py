"""Stage configs: dataclasses with defaults in code, read from YAML; every CLI flag is also a YAML key."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from .errors import CgkdError
from .fileio import read_yaml


@dataclass
class BuildConfig:
    system: str = "ethaline"          # name under systems/, or a folder with system.yaml
    units: int = 50                   # formula units (ethaline: 1 choline + 1 chloride + 2 ethylene glycol)
    out: Optional[str] = None         # box PDB; default <system>_<units>.pdb
    forcefield: Optional[str] = None  # override the system's force-field file
    cutoff: float = 1.0               # nm; the box edge must be at least twice the cutoff you will run with
    seed: int = 1                     # packmol seed
    overwrite: bool = False           # replace an existing output


@dataclass
class AAConfig:
    system: str = "ethaline"          # name under systems/, or a folder with system.yaml
    pdb: Optional[str] = None         # box PDB from `cgkd build`
    out: str = "aa.h5"                # production H5MD; checkpoint <out>.chk, log <out>.log.csv beside it
    forcefield: Optional[str] = None  # override the system's force-field file (name in forcefields/ or a path)
    npt_ps: float = 200.0             # NPT equilibration (MonteCarloBarostat)
    nvt_ps: float = 1000.0            # NVT production at the mean NPT volume
    stride: int = 500                 # steps between frames written (positions, forces, box, energy)
    dt_fs: Optional[float] = None     # default 2 fs, or 4 fs with hmr
    hmr: bool = False                 # hydrogen mass repartitioning (H = 3.024 amu); masses recorded in the file
    temperature: Optional[float] = None  # K, default: the system's
    pressure: Optional[float] = None     # bar, default: the system's
    friction: float = 1.0             # 1/ps, LangevinMiddleIntegrator
    cutoff: float = 1.0               # nm, PME real space and LJ (with dispersion correction)
    constraints: str = "HBonds"       # none | HBonds | AllBonds | HAngles
    barostat_interval: int = 25       # steps between Monte Carlo volume moves
    volume_discard: float = 0.5       # leading fraction of NPT samples left out of the mean volume
    minimize_iterations: int = 1000   # 0: until converged
    platform: Optional[str] = None    # CUDA when present, else CPU
    threads: Optional[int] = None     # CPU platform threads
    seed: int = 1                     # velocities and Langevin noise
    checkpoint_ps: float = 10.0       # simulated time between checkpoints
    resume: bool = False              # continue <out> from <out>.chk (the saved config wins)
    overwrite: bool = False           # replace an existing <out>


@dataclass
class MapConfig:
    traj: Optional[str] = None        # AA trajectory with forces: cgkd H5MD, TRR, LAMMPS dump or extended XYZ
    topology: Optional[str] = None    # PDB (with elements) or TPR for non-H5MD input (count and order are checked)
    format: Optional[str] = None      # h5md | trr | lammpsdump | xyz (default: from the suffix)
    lammps_units: str = "real"        # LAMMPS dump units: real (kcal/mol/A) or metal (eV/A)
    constraints: str = "none"         # non-H5MD input: none | hbonds (H5MD records its own constrained pairs)
    dt_ps: Optional[float] = None     # LAMMPS dump: MD time step (time = step x dt); extended XYZ: frame spacing
    system: str = "ethaline"          # default mapping: systems/<system>/mapping.yaml
    mapping: Optional[str] = None     # mapping YAML (see `cgkd map --help`)
    out: str = "cg.h5"                # CG dataset (H5MD, float32, gzip); CG topology PDB beside it
    chunk: int = 256                  # frames per block (bounded memory)
    overwrite: bool = False           # replace an existing output


@dataclass
class FitConfig:
    """What `cgkd train` and `cgkd distill` share: data, architecture, optimisation, output."""
    dataset: Optional[str] = None     # CG dataset (H5MD from `cgkd map`) with mapped forces
    out: str = "model"                # model folder (an ensemble: one member_<k> folder per member)
    seed: int = 1                     # initialisation and batch order (an ensemble: seed + k for member k)
    arch: str = "tensornet"           # tensornet | et (equivariant transformer) | gn (graph network, SchNet-like)
    channels: int = 32                # hidden channels of the representation
    layers: int = 1                   # interaction layers
    rbf: int = 16                     # radial basis functions
    rbf_type: str = "gauss"           # gauss (evenly spaced; right for nm) | expnorm (TorchMD-Net's, for Angstrom)
    cutoff: float = 1.0               # nm, the network's neighbour cutoff
    epochs: int = 100                 # at most this many epochs
    batch_size: int = 8               # frames per mini-batch
    lr: float = 1e-3                  # Adam learning rate
    lr_factor: float = 0.5            # ReduceLROnPlateau factor on the validation score
    lr_patience: int = 3              # epochs without improvement before the learning rate drops
    patience: int = 10                # early stopping: epochs without a better validation score
    resume: bool = False              # continue from the last epoch checkpoint
    overwrite: bool = False           # replace an existing model folder


@dataclass
class TrainConfig(FitConfig):
    ensemble: int = 1                 # members, differing in seed (initialisation and batch order)
    workers: int = 1                  # members trained at once (processes; one thread each when > 1)
    prior_epsilon: float = 2.5        # kJ/mol, strength of the repulsive walls at the RDF onsets (0: no walls)
    temperature: Optional[float] = None  # K, Boltzmann inversion of bonded priors; default: the dataset's
    loss: str = "mse"                 # mse | mae | mixed (mean of both)
    val_fraction: float = 0.1         # contiguous time blocks: train | validation | test
    test_fraction: float = 0.1        # the last block: test frames, never trained on
    max_frames: Optional[int] = None  # use the first n frames of the dataset


@dataclass
class LabelConfig:
    teachers: Optional[str] = None    # teacher ensemble (or one model) folder from `cgkd train`
    dataset: Optional[str] = None     # CG dataset or trajectory to label (the dataset's bead types)
    out: Optional[str] = None         # label file (default: the cache, <teachers>/labels/<name>-<key>.h5)
    batch_size: int = 8               # frames per batch
    overwrite: bool = False           # relabel into an existing label file made from other inputs


@dataclass
class DistillConfig(FitConfig):
    out: str = "student"              # student folder (model.pt, metadata.json, metrics.csv, checkpoint.pt)
    arch: str = "tensornet"           # tensornet | et | gn (graph network) of the student (sizes: README)
    channels: int = 16                # hidden channels of the student's representation
    layers: int = 0                   # interaction layers of the student (tensornet: 0 = its embedding alone)
    cutoff: float = 0.8               # nm, the student's neighbour cutoff (independent of the teachers')
    teachers: Optional[str] = None    # teacher ensemble (or one model) folder from `cgkd train`
    members: Optional[str] = None     # comma-separated teacher member indices to distil from (default: all)
    labels: Optional[str] = None      # label file of the dataset (default: the cache in <teachers>/labels/)
    extra: Optional[str] = None       # comma-separated CG trajectories labelled by the teachers, added to training
    extra_weighting: str = "none"     # none | agreement: weight extra frames by the ensemble's force agreement
    perturb: float = 0.0              # nm: add teacher-labelled training frames with beads displaced by N(0, perturb)
    perturb_copies: int = 1           # copies of the training frames for --perturb (displacements seeded by --seed)
    w_mapped: float = 0.0             # weight of the force loss against the mapped (noisy) forces
    w_forces: float = 1.0             # weight of the force loss against the ensemble-mean teacher forces
    w_energy: float = 0.0             # weight of the loss on the network energy per bead E/N against the teachers'
    w_eps: float = 0.0                # weight of the per-bead energy loss against the teachers' per-bead energies
    label_batch: int = 8              # frames per labelling batch


@dataclass
class ExportConfig:
    model: Optional[str] = None       # model folder (model.pt) or ensemble folder (member_*)
    topology: Optional[str] = None    # CG dataset/trajectory whose bead types (in order) the export is for
    out: Optional[str] = None         # TorchScript file (default: <model>/model.ts)
    no_prior: bool = False            # leave the priors out (add them as native OpenMM forces)
    overwrite: bool = False           # replace an existing file


@dataclass
class CompareConfig:
    reference: Optional[str] = None   # CG dataset of the mapped AA reference (H5MD from cgkd map)
    model: list = None                # NAME=PATH[,PATH...]: a model's CG trajectories (replicas); repeatable
    out: str = "report"               # report folder (report.md, results.json, PNGs)
    r_max: Optional[float] = None     # RDF range in nm (default: half the shortest box edge)
    n_bins: int = 100                 # RDF bins
    triplets: list = None             # ADF/CDF triplets NEIGHBOUR-CENTRE-NEIGHBOUR (default: like neighbours)
    stride: int = 1                   # use every n-th frame for RDF/ADF/CDF
    blocks: int = 4                   # blocks for the uncertainties


@dataclass
class SimConfig:
    model: Optional[str] = None       # model or ensemble folder from `cgkd train` (students: the same layout)
    start: Optional[str] = None       # CG dataset or trajectory giving the starting frame, topology and temperature
    frame: int = -1                   # frame of --start (negative: from the end)
    units: Optional[int] = None       # build a new box of this many formula units of --start's composition instead
    density: Optional[float] = None   # g/cm^3 of the new box (default: the start frame's)
    replicate: int = 1                # tile the starting box k x k x k
    out: str = "cgsim"                # folder: replica_<k>/{traj.h5, log.csv, traj.h5.chk, summary.json}, summary.json
    temperature: Optional[float] = None  # K (default: the start dataset's)
    integrator: str = "langevin"      # langevin (LangevinMiddleIntegrator, NVT) | verlet (NVE)
    friction: float = 1.0             # 1/ps
    dt_fs: float = 4.0                # timestep
    steps: int = 10000                # steps per replica
    report: int = 250                 # steps between frames, log lines and stability checks
    checkpoint_every: int = 10        # frames between checkpoints
    replicas: int = 1                 # independent runs (seeds seed, seed + 1, ...); summary reports the fraction stable
    seed: int = 1                     # replica k uses seed + k (velocities, Langevin noise, new-box placement)
    minimize: bool = False            # minimise the energy before dynamics (always for a new box)
    floor_factor: float = 0.7         # clumping: a pair closer than this times its closest approach in the training data
    temperature_tolerance: float = 0.25  # relative deviation of the kinetic temperature that fails a run
    platform: Optional[str] = None    # CUDA when present, else CPU
    precision: str = "single"         # single | mixed | double (GPU Precision; double: a float64 model too)
    cuda_graphs: bool = False         # TorchForce useCUDAGraphs (CUDA platform; untested here: no GPU)
    backend: str = "torchforce"       # torchforce (openmm-torch) | pythonforce (OpenMM's PythonForce, this torch)
    neighbors: str = "cell"           # model's neighbour search: cell (cell lists, linear in beads) | brute (all pairs)
    threads: Optional[int] = None     # CPU platform and PyTorch threads
    resume: bool = False              # continue every replica from its checkpoint
    overwrite: bool = False           # replace existing output


def load(cls, path=None, **overrides):
    """Defaults <- YAML file <- overrides that are not None. Unknown YAML keys are errors."""
    values = {}
    if path:
        p = Path(path)
        data = read_yaml(p, "config file")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            k = key.replace("-", "_")
            if k not in names:
                raise CgkdError(f"{p}: unknown key '{key}' (known: {', '.join(sorted(names))})")
            values[k] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def to_yaml(cfg):
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
