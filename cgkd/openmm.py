"""OpenMM-style use of trained cgkd models:

    ff = cgkd.openmm.CGForceField("teachers")          # a model folder, or an ensemble of member_* folders
    system = ff.createSystem(topology)                  # CG topology: one atom per bead, named by bead type

The System has the bead masses, the model (ensemble mean) as a periodic openmmtorch.TorchForce, a
CMMotionRemover, and the priors as native OpenMM forces: the repulsive walls as a CustomNonbondedForce
(between molecules), bonds and angles of multi-bead molecules as HarmonicBondForce / HarmonicAngleForce.

    sim.reporters.append(cgkd.openmm.StabilityReporter(ff, topology, 250, temperature=298.15))
    sim.reporters.append(cgkd.openmm.H5MDReporter("traj.h5", 250, unwrapped=True))  # + traj.h5.chk
"""
import json

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

from .errors import CgkdError
from .export import ExportedPotential, torch_force
from .reporters import H5MDReporter, StabilityReporter, UnstableError  # noqa: F401  (cgkd.openmm is the scripts' API)


class CGForceField:
    """A trained CG potential (or ensemble) that creates OpenMM Systems for CG topologies."""

    def __init__(self, path):
        from .model import load_ensemble

        members, self.models = load_ensemble(path)
        meta_file = members[0] / "metadata.json"
        self.metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        self.masses = self.metadata.get("bead_masses_amu", {})
        self.cutoff = self.models[0].cutoff
        self.max_num_neighbors = min(m.max_num_neighbors for m in self.models)
        # Closest approach of each bead-type pair in the training data (the stability monitor's reference).
        onsets = self.metadata.get("pair_onsets_nm")
        if onsets is None and self.models[0].prior is not None:
            onsets = self.models[0].prior.r0.tolist()
        self.onsets = np.asarray(onsets) if onsets is not None else None

    @property
    def bead_types(self):
        return self.models[0].type_names

    def createSystem(self, topology, cuda_graphs=False, precision="single", neighbors="cell",
                     backend="torchforce"):
        """An openmm.System for a periodic CG topology (atom names are bead types, residues are molecules).

        neighbors: TorchMD-Net neighbour search in the exported model, "cell" (cell lists, linear in the bead
        count; the box is fixed, as in NVT) or "brute" (all pairs). backend: "torchforce" (openmmtorch's
        TorchForce running the TorchScript module) or "pythonforce" (OpenMM's PythonForce calling PyTorch in
        this process: needs no openmm-torch build that matches the installed torch; on the GPU when PyTorch
        sees one)."""
        if backend not in ("torchforce", "pythonforce"):
            raise CgkdError(f"backend must be torchforce or pythonforce, got {backend!r}")
        names = [a.name for a in topology.atoms()]
        unknown = sorted(set(names) - set(self.bead_types))
        if unknown:
            raise CgkdError(f"topology bead types {unknown} are not among the model's {self.bead_types}")
        vectors = topology.getPeriodicBoxVectors()
        if vectors is None:
            raise CgkdError("the CG topology has no periodic box")
        box = np.array(vectors.value_in_unit(u.nanometer))
        reach = max(self.cutoff, self.models[0].prior.cutoff if self.models[0].prior is not None else 0.0)
        if min(np.diag(box)) < 2 * reach:
            raise CgkdError(f"box edge {min(np.diag(box)):.3f} nm is shorter than twice the model's reach "
                            f"({reach} nm): replicate the box")
        missing = sorted(set(names) - set(self.masses))
        if missing:
            raise CgkdError(f"no masses for bead types {missing} in the model metadata")
        molecules = np.array([a.residue.index for a in topology.atoms()])
        system = openmm.System()
        for n in names:
            system.addParticle(self.masses[n])
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        if neighbors not in ("cell", "brute"):
            raise CgkdError(f"neighbors must be cell or brute, got {neighbors!r}")
        if neighbors == "cell" and np.abs(box - np.diag(np.diag(box))).max() > 1e-9:
            raise CgkdError("TorchMD-Net's cell lists need an orthorhombic box; use neighbors='brute'")
        models = [m.for_topology(names, molecules).use_neighbor_strategy(neighbors, box) for m in self.models]
        types = models[0].type_index(names)
        module = ExportedPotential(models, types, include_prior=False)
        if precision == "double":
            module = module.double()
        if backend == "pythonforce":
            force = openmm.PythonForce(TorchCallback(module))
            force.setUsesPeriodicBoundaryConditions(True)
            force.setName("cgkd model (PythonForce)")
            system.addForce(force)
        else:
            system.addForce(torch_force(torch.jit.script(module), cuda_graphs))
        prior, bonded = models[0].prior, models[0].bonded
        if prior is not None:
            walls = prior.to_openmm(types.tolist())
            for res in topology.residues():
                idx = [a.index for a in res.atoms()]
                for i in range(len(idx)):
                    for j in range(i + 1, len(idx)):
                        walls.addExclusion(idx[i], idx[j])
            system.addForce(walls)
        if bonded is not None:
            for f in bonded.to_openmm():
                system.addForce(f)
        system.addForce(openmm.CMMotionRemover())  # as openmm.app.ForceField does: no drift of the whole box
        return system


class TorchCallback:
    """The computation of an openmm.PythonForce: energy (kJ/mol) and forces (kJ/mol/nm) of an
    ExportedPotential for the State's positions and box, on the GPU when PyTorch has one."""

    def __init__(self, module):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.module = module.to(self.device).eval()
        self.dtype = self.module.probe.dtype

    def __call__(self, state):
        pos = torch.tensor(state.getPositions(asNumpy=True).value_in_unit(u.nanometer), dtype=self.dtype,
                           device=self.device, requires_grad=True)
        box = torch.tensor(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer), dtype=self.dtype,
                           device=self.device)
        energy = self.module(pos, box)
        (grad,) = torch.autograd.grad(energy, pos)
        return float(energy.detach()), -grad.detach().cpu().numpy().astype(np.float64)


def topology_from_dataset(path, frame=0):
    """(CG openmm Topology with atoms named by bead type, positions in nm) from a frame of a cgkd CG dataset
    (a path, or a CGDataset whose first frame is used)."""
    from .dataset import CGDataset

    ds = path if isinstance(path, CGDataset) else CGDataset(path, frames=frame, forces=False, dtype=np.float64)
    types, resnames, resids, pos, box = ds.type_names, ds.residue_names, ds.residues, ds.positions[0], ds.boxes[0]
    top = app.Topology()
    chain = top.addChain()
    current, res = None, None
    for ty, rn, ri in zip(types, resnames, resids):
        if ri != current:
            res, current = top.addResidue(rn, chain), ri
        top.addAtom(ty, None, res)
    top.setPeriodicBoxVectors(box * u.nanometer)
    return top, pos
