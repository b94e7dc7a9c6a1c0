"""CGPotential: bead types -> TorchMD-Net representation -> per-bead energies; total energy and forces.

Positions and boxes in nm, energies in kJ/mol, periodic boxes always. The total energy is the sum of the
per-bead energies plus the (fixed) prior energy; forces are -dE/dR by autograd.
"""
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import warp
from scipy.spatial import cKDTree

if not os.environ.get("CGKD_VERBOSE"):  # warp (TorchMD-Net's kernels) logs every kernel it compiles or loads
    warp.config.log_level = warp.LOG_ERROR
from torchmdnet.models.utils import OptimizedDistance  # noqa: E402

from .errors import CgkdError
from .fileio import atomic_path, check_zip
from .observables import in_box

ARCHITECTURES = ("tensornet", "et", "gn")  # TensorNet, equivariant transformer, graph network (SchNet-like)


def max_neighbors(positions, boxes, cutoff, margin=1.2, extra=8):
    """Neighbour budget from the densest frame: the largest number of beads within `cutoff` of any bead
    over all frames (orthorhombic boxes), times a safety margin."""
    worst = 0
    for pos, box in zip(positions, boxes):
        edge = np.diag(box)
        wrapped = in_box(pos, edge)
        tree = cKDTree(wrapped, boxsize=edge)
        counts = tree.query_ball_point(wrapped, cutoff, return_length=True) - 1
        worst = max(worst, int(counts.max()))
    return int(np.ceil(worst * margin)) + extra


class CGPotential(torch.nn.Module):
    """A TorchMD-Net CG potential with a per-bead energy head and a fixed prior.

    rbf_type: TorchMD-Net's "expnorm" radial basis places its centres for distances in Angstrom (for a cutoff
    of c its centres sit below ~c/7); with nm and cutoffs near 1 they all fall below 0.1 nm, so every bead
    pair sees an (almost) zero radial feature. "gauss" spaces the centres evenly up to the cutoff and is the
    default for new models; "expnorm" is kept so that models trained with it load unchanged."""

    def __init__(self, type_names, cutoff=1.0, channels=32, layers=1, rbf=16, arch="tensornet",
                 max_num_neighbors=64, prior=None, bonded=None, molecules=None, bead_types=None,
                 dtype=torch.float32, rbf_type="expnorm"):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise CgkdError(f"model: arch must be one of {ARCHITECTURES}, got {arch!r}")
        if layers < (0 if arch == "tensornet" else 1):
            raise CgkdError(f"model: {arch} needs at least 1 interaction layer, got {layers} (only TensorNet's "
                            "embedding sees the neighbours by itself: tensornet takes 0)")
        if rbf_type not in ("gauss", "expnorm"):
            raise CgkdError(f"model: rbf_type must be gauss or expnorm, got {rbf_type!r}")
        self.type_names = list(type_names)
        self.hparams = dict(type_names=self.type_names, cutoff=cutoff, channels=channels, layers=layers, rbf=rbf,
                            arch=arch, max_num_neighbors=max_num_neighbors, rbf_type=rbf_type)
        common = dict(hidden_channels=channels, num_layers=layers, num_rbf=rbf, rbf_type=rbf_type,
                      cutoff_lower=0.0, cutoff_upper=float(cutoff),
                      max_num_neighbors=max_num_neighbors, max_z=len(self.type_names), dtype=dtype)
        if arch == "tensornet":
            from torchmdnet.models.tensornet import TensorNet

            self.representation = TensorNet(static_shapes=False, **common)
        elif arch == "et":
            from torchmdnet.models.torchmd_et import TorchMD_ET

            self.representation = TorchMD_ET(**common)
        else:
            from torchmdnet.models.torchmd_gn import TorchMD_GN

            self.representation = TorchMD_GN(num_filters=channels, **common)
        self.head = torch.nn.Sequential(torch.nn.Linear(channels, channels // 2, dtype=dtype), torch.nn.SiLU(),
                                        torch.nn.Linear(channels // 2, 1, dtype=dtype))
        self.prior = prior
        self.bonded = bonded
        self.bead_types = list(bead_types) if bead_types is not None else None  # of the topology bonded is for
        # Molecule of each bead of a frame: walls act between molecules only (empty: every bead its own).
        self.register_buffer("molecule", torch.as_tensor(molecules if molecules is not None else [], dtype=torch.long))
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors
        reach = max(cutoff, prior.cutoff if prior is not None else 0.0)
        self.pairs = OptimizedDistance(0.0, reach, max_num_pairs=-max_num_neighbors, return_vecs=False, loop=False,
                                       resize_to_fit=True, long_edge_index=True)
        self.to(dtype)  # TensorNet leaves some layers in the default dtype

    def type_index(self, names):
        missing = sorted(set(names) - set(self.type_names))
        if missing:
            raise CgkdError(f"model knows bead types {self.type_names}, the data has {missing}")
        return torch.tensor([self.type_names.index(n) for n in names], dtype=torch.long)

    def check_neighbors(self, pos, box):
        """Refuse a frame with more neighbours than the model's budget (TorchMD-Net would drop pairs)."""
        p = pos.detach().cpu().numpy()
        b = box.detach().cpu().numpy()
        need = max_neighbors(p[None], b[None], self.cutoff, margin=1.0, extra=0)
        if need > self.max_num_neighbors:
            raise CgkdError(f"a bead has {need} neighbours within {self.cutoff} nm, more than the model's "
                            f"max_num_neighbors={self.max_num_neighbors}; rebuild the model with a larger budget")

    def forward(self, types: torch.Tensor, pos: torch.Tensor, box: torch.Tensor,
                batch: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-bead energies (N,) and total energies per frame (B,) in kJ/mol."""
        if batch is None:
            batch = torch.zeros_like(types)
        x = self.representation(types, pos, batch, box=box)[0]
        eps = self.head(x).squeeze(-1)
        n_frames = int(batch.max()) + 1
        energy = torch.zeros(n_frames, dtype=eps.dtype, device=eps.device).index_add(0, batch, eps)
        if self.prior is not None:
            edge_index, edge_weight, _ = self.pairs(pos, batch, box)
            i, j = edge_index[0], edge_index[1]
            keep = i < j
            if self.molecule.numel() > 0:
                n = self.molecule.shape[0]
                keep = keep & (self.molecule[i % n] != self.molecule[j % n])
            e_prior = self.prior.pair_energy(edge_weight[keep], types[i[keep]], types[j[keep]])
            energy = energy.index_add(0, batch[i[keep]], e_prior.to(energy.dtype))
        if self.bonded is not None:
            energy = energy + self.bonded(pos, box, n_frames).to(energy.dtype)
        return eps, energy

    def priors_state(self):
        """Constructor arguments of the priors (for checkpoints)."""
        return {"r0": self.prior.r0 if self.prior is not None else None,
                "epsilon": self.prior.epsilon if self.prior is not None else None,
                "bonded_tables": None if self.bonded is None else self.bonded.tables,
                "bead_types": self.bead_types, "molecules": self.molecule}

    @classmethod
    def from_state(cls, hparams, priors, weights=None, dtype=torch.float32):
        """Rebuild a CGPotential from its hyperparameters, priors_state() and (optionally) its weights."""
        from .priors import BondedPrior, RepulsivePrior

        prior = RepulsivePrior(priors["r0"], priors["epsilon"]) if priors["r0"] is not None else None
        tables, molecules = priors["bonded_tables"], priors["molecules"]
        bonded = BondedPrior.for_topology(tables, priors["bead_types"], molecules) if tables is not None else None
        model = cls(**hparams, prior=prior, bonded=bonded, molecules=molecules if len(molecules) else None,
                    bead_types=priors["bead_types"], dtype=dtype)
        if weights is not None:
            model.load_state_dict(weights)
        return model

    def for_topology(self, bead_types, molecules):
        """A copy for another topology (bead type names and molecule index per bead): bonded priors and the
        molecule table are rebuilt from the fitted per-type parameters."""
        import copy

        from .priors import BondedPrior

        self.type_index(bead_types)
        model = copy.deepcopy(self)
        if self.bonded is not None:
            model.bonded = BondedPrior.for_topology(self.bonded.tables, list(bead_types), molecules)
            model.molecule = torch.as_tensor(np.asarray(molecules), dtype=torch.long)
            model.bead_types = list(bead_types)
        return model

    def use_neighbor_strategy(self, strategy, box):
        """Switch the neighbour searches (representation and prior) to TorchMD-Net's `strategy` ("cell":
        cell lists, O(N); "brute": all pairs, O(N^2)) for a fixed periodic box (3, 3) nm."""
        box = torch.as_tensor(np.asarray(box), dtype=torch.float32)

        def rebuilt(d):
            return OptimizedDistance(d.cutoff_lower, d.cutoff_upper, max_num_pairs=d.max_num_pairs,
                                     return_vecs=d.return_vecs, loop=d.loop, strategy=strategy,
                                     include_transpose=d.include_transpose, resize_to_fit=d.resize_to_fit,
                                     box=box, long_edge_index=d.long_edge_index)

        self.representation.distance = rebuilt(self.representation.distance)
        self.pairs = rebuilt(self.pairs)
        return self

    def energy_forces(self, types, pos, box, batch=None, create_graph=False):
        """(per-bead energies, total energies, forces = -dE/dR)."""
        pos = pos.requires_grad_(True) if not pos.requires_grad else pos
        eps, energy = self(types, pos, box, batch)
        forces = -torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)[0]
        return eps, energy, forces


def save_checkpoint(path, state):
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path):
    """A cgkd checkpoint or model.pt; a damaged file (torch's zip archive with a failing CRC-32, which torch
    itself does not check) is refused."""
    check_zip(path, "cgkd checkpoint")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise CgkdError(f"{path}: not a readable cgkd checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != "cgkd-model-1":
        raise CgkdError(f"{path}: not a cgkd model checkpoint")
    return state


def load_model(path):
    """A trained CGPotential from a model folder (or its model.pt / checkpoint.pt)."""
    path = Path(path)
    f = path / "model.pt" if path.is_dir() else path
    if not f.exists():
        raise CgkdError(f"{f}: no trained model here")
    state = load_checkpoint(f)
    return CGPotential.from_state(state["hparams"], state["priors"], state["model"]).eval()


def ensemble_members(path):
    """Member folders of a model folder (model.pt: a single model) or an ensemble folder (member_*)."""
    path = Path(path)
    members = [path] if (path / "model.pt").exists() else sorted(
        (p for p in path.glob("member_*") if p.name[7:].isdigit()), key=lambda p: int(p.name[7:]))
    if not members:
        raise CgkdError(f"{path}: no model.pt and no member_* folders: not a cgkd model or ensemble")
    return members


def load_ensemble(path):
    """(member folders, models) of a model folder (model.pt) or an ensemble folder (member_*)."""
    members = ensemble_members(path)
    return members, [load_model(m) for m in members]


def pair_onsets(type_names, r, rdfs):
    """(n_types, n_types) RDF onsets: where the data starts to have pairs of each type pair ({(A, B): g})."""
    from .priors import rdf_onset

    n = len(type_names)
    r0 = np.zeros((n, n))
    for (a, b), g in rdfs.items():
        i, j = type_names.index(a), type_names.index(b)
        r0[i, j] = r0[j, i] = rdf_onset(r, g)
    if (r0 == 0).any():
        raise CgkdError(f"RDFs missing for some of the type pairs of {type_names}")
    return r0
