"""TorchScript export of CG potentials and ensembles, loadable by openmmtorch.TorchForce.

The exported module has OpenMM-Torch's interface: forward(positions (N, 3) nm, boxvectors (3, 3) nm) ->
energy (kJ/mol); the bead types of the N particles are fixed at export. An ensemble exports as one
module returning the members' mean energy (TorchMD-Net's own Ensemble class cannot be scripted).
"""
import copy
import functools
from pathlib import Path

import torch

from .errors import CgkdError
from .fileio import atomic_path, check_zip


class ExportedPotential(torch.nn.Module):
    """Mean energy of one or more CGPotentials for fixed bead types (the priors, walls and bonded, optional)."""

    def __init__(self, models, types, include_prior=True):
        super().__init__()
        members = []
        for m in models:
            m = copy.deepcopy(m).eval()
            if not include_prior:
                m.prior = None
                m.bonded = None
            members.append(m)
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("types", torch.as_tensor(types, dtype=torch.long))
        # OpenMM-Torch hands over positions in the platform's precision; the model computes in its own.
        self.register_buffer("probe", torch.zeros(0, dtype=next(members[0].parameters()).dtype))
        self.scale = 1.0 / len(members)

    def forward(self, positions: torch.Tensor, boxvectors: torch.Tensor) -> torch.Tensor:
        pos = positions.to(self.probe.dtype)
        box = boxvectors.to(self.probe.dtype)
        total = torch.zeros((), dtype=pos.dtype, device=pos.device)
        for m in self.members:
            total = total + m(self.types, pos, box)[1].sum()
        return (total * self.scale).to(positions.dtype)


def export(models, bead_types, path, include_prior=True, molecules=None):
    """Script and save models (a CGPotential or a list: an ensemble) for the given per-bead type names
    (and, for models with bonded priors, the molecule index of each bead)."""
    models = models if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise CgkdError("export: no models given")
    names = models[0].type_names
    if any(m.type_names != names for m in models):
        raise CgkdError("export: ensemble members were trained on different bead types")
    types = models[0].type_index(list(bead_types))
    if molecules is not None:
        models = [m.for_topology(list(bead_types), molecules) for m in models]
    elif any(m.bonded is not None and len(types) != m.molecule.numel() for m in models):
        raise CgkdError("export: models with bonded priors need the molecule of each bead (molecules=...)")
    module = torch.jit.script(ExportedPotential(models, types, include_prior))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        module.save(str(tmp))
    return path


def export_model(model_dir, topology, out=None, include_prior=True):
    """Export a model or ensemble folder for the beads of a CG dataset or trajectory (`cgkd export`); returns
    (path written, number of members, number of beads). Default path: <model_dir>/model.ts."""
    from .dataset import CGDataset
    from .model import load_ensemble

    _, models = load_ensemble(model_dir)
    top = CGDataset(topology, frames=0, forces=False)
    path = export(models, list(top.type_names), Path(out or Path(model_dir) / "model.ts"),
                  include_prior=include_prior, molecules=top.residues)
    return path, len(models), top.n_beads


@functools.lru_cache(maxsize=None)
def load_torch_plugins():
    """Load OpenMM-Torch's platform kernels that failed to load because openmm was imported before torch
    (they need libraries that torch brings into the process)."""
    import re

    import openmm

    for failure in openmm.Platform.getPluginLoadFailures():
        m = re.match(r"Error loading library (\S*OpenMMTorch\S*\.so):", failure)
        if m:
            try:
                openmm.Platform.loadPluginLibrary(m.group(1))
            except Exception:  # e.g. the OpenCL kernels on a machine without OpenCL
                pass


def _import_openmmtorch():
    """openmmtorch, without the root-logger warning of the deprecated `simtk.openmm` it imports (shown with
    CGKD_VERBOSE=1); the process's own logging.disable level is restored."""
    import logging
    import os

    quiet = not os.environ.get("CGKD_VERBOSE")
    before = logging.root.manager.disable
    if quiet:
        logging.disable(max(before, logging.WARNING))
    try:
        import openmmtorch
    finally:
        logging.disable(before)
    return openmmtorch


def torch_force(model, cuda_graphs=False):
    """A periodic openmmtorch.TorchForce for an exported potential: a file path or a scripted module."""
    openmmtorch = _import_openmmtorch()

    load_torch_plugins()
    if not isinstance(model, torch.jit.ScriptModule):
        model = Path(model)
        if not model.is_file():
            raise CgkdError(f"{model}: exported model file does not exist")
        check_zip(model, "TorchScript file")
        try:
            torch.jit.load(str(model))
        except Exception as e:  # torch raises RuntimeError and others for foreign or damaged archives
            raise CgkdError(f"{model}: not a loadable TorchScript model ({str(e).splitlines()[0]})") from None
        model = str(model)
    force = openmmtorch.TorchForce(model)
    force.setUsesPeriodicBoundaryConditions(True)
    force.setOutputsForces(False)
    if cuda_graphs:
        force.setProperty("useCUDAGraphs", "true")
    return force
