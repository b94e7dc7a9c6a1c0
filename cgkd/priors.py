"""Fixed priors of a CG potential: a repulsive wall per bead-type pair, as torch modules and as OpenMM forces.

The wall of a type pair is a WCA (purely repulsive Lennard-Jones) term whose cutoff r0 = 2^(1/6) sigma sits
where the mapped RDF of that pair starts: zero (with zero slope) wherever the data has beads, steep below:

    U(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6] + eps   for r < r0,   0 otherwise.

Beads of one molecule (multi-bead mappings) are excluded from the wall; their bonds and angles get
harmonic priors (not built here yet).
"""
import numpy as np
import torch

from .errors import CgkdError

TWO_SIXTH = 2.0 ** (1.0 / 6.0)


def rdf_onset(r, g, threshold=1e-3):
    """The smallest r at which g(r) exceeds `threshold`: where the data starts to have pairs."""
    above = np.flatnonzero(np.asarray(g) > threshold)
    if not len(above):
        raise CgkdError("RDF has no pairs: cannot place a repulsive prior")
    return float(r[above[0]])


class RepulsivePrior(torch.nn.Module):
    """WCA walls per type pair. r0: (n_types, n_types) symmetric tensor of wall positions (nm)."""

    __jit_unused_properties__ = ["cutoff"]

    def __init__(self, r0, epsilon=2.5):
        super().__init__()
        r0 = torch.as_tensor(r0, dtype=torch.float64)
        if r0.shape[0] != r0.shape[1] or not torch.allclose(r0, r0.T) or (r0 <= 0).any():
            raise CgkdError(f"repulsive prior: r0 must be a symmetric matrix of positive distances, got {r0}")
        self.register_buffer("r0", r0)
        self.epsilon = float(epsilon)

    @property
    def cutoff(self):
        return float(self.r0.max())

    def pair_energy(self, r, ti, tj):
        r0 = self.r0.to(r.dtype)[ti, tj]
        sig6 = r0 ** 6 / 2.0  # sigma = r0 / 2^(1/6)
        x6 = sig6 / r ** 6
        u = 4 * self.epsilon * (x6 * x6 - x6) + self.epsilon
        return torch.where(r < r0, u, torch.zeros_like(u))

    def forward(self, types, edge_index, edge_weight):
        """Energy (scalar) of the unique pairs i < j given by edge_index (2, E) with distances (E,)."""
        i, j = edge_index[0], edge_index[1]
        keep = i < j
        return self.pair_energy(edge_weight[keep], types[i[keep]], types[j[keep]]).sum()

    def to_openmm(self, type_index):
        """The same walls as an openmm.CustomNonbondedForce (CutoffPeriodic); type_index: (n_beads,) ints."""
        import openmm

        n = self.r0.shape[0]
        f = openmm.CustomNonbondedForce(
            "step(r0 - r) * (4*eps*(x6*x6 - x6) + eps); x6 = (r0/(r*%r))^6; r0 = wall(t1, t2); eps = %r"
            % (TWO_SIXTH, self.epsilon))
        f.addTabulatedFunction("wall", openmm.Discrete2DFunction(n, n, self.r0.T.reshape(-1).tolist()))
        f.addPerParticleParameter("t")
        for t in type_index:
            f.addParticle([float(t)])
        f.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        f.setCutoffDistance(self.cutoff)
        f.setUseLongRangeCorrection(False)
        f.setName("cgkd repulsive prior")
        return f
