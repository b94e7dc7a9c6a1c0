"""Fixed priors of a CG potential: a repulsive wall per bead-type pair, as torch modules and as OpenMM forces.

The wall of a type pair is a WCA (purely repulsive Lennard-Jones) term whose cutoff r0 = 2^(1/6) sigma sits
where the mapped RDF of that pair starts: zero (with zero slope) wherever the data has beads, steep below:

    U(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6] + eps   for r < r0,   0 otherwise.

Beads of one molecule (multi-bead mappings) are excluded from the wall; their bonds and angles get
harmonic priors fitted by Boltzmann inversion (BondedPrior).
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


def _min_image(d, box):
    """Minimum-image vectors d (frames, m, 3) for boxes (frames, 3, 3) with box vectors as rows."""
    frac = torch.einsum("fmk,fkj->fmj", d, torch.linalg.inv(box))
    return torch.einsum("fmk,fkj->fmj", frac - torch.round(frac), box)


def _angle(a, b, c, box):
    u = _min_image(a - b, box)
    v = _min_image(c - b, box)
    cos = (u * v).sum(-1) / torch.sqrt((u * u).sum(-1) * (v * v).sum(-1))
    return torch.acos(torch.clamp(cos, -1.0, 1.0))


def bonded_terms(bead_residues):
    """Bonds between consecutive beads and angles between consecutive triples of each multi-bead molecule."""
    bead_residues = np.asarray(bead_residues)
    bonds, angles = [], []
    for res in np.unique(bead_residues):
        idx = np.flatnonzero(bead_residues == res)
        bonds += [(idx[k], idx[k + 1]) for k in range(len(idx) - 1)]
        angles += [(idx[k], idx[k + 1], idx[k + 2]) for k in range(len(idx) - 2)]
    return bonds, angles


def _key(bead_types, term):
    names = [bead_types[i] for i in term]
    return "-".join(min(names, names[::-1]))


class BondedPrior(torch.nn.Module):
    """Harmonic bonds and angles between the beads of multi-bead molecules, fitted by Boltzmann inversion:
    for a Gaussian distribution of a bond length (angle) x, U = k/2 (x - x0)^2 with x0 = <x>, k = kT/var(x).
    Parameters are per bead-type tuple (`tables`); the index lists refer to the beads of one frame of a
    given topology (batched frames are offset automatically): `for_topology` rebuilds them for another."""

    __jit_ignored_attributes__ = ["tables"]

    @classmethod
    def for_topology(cls, tables, bead_types, bead_residues):
        bonds, angles = bonded_terms(bead_residues)
        params = []
        for kind, terms in (("bonds", bonds), ("angles", angles)):
            missing = sorted({_key(bead_types, t) for t in terms} - set(tables[kind]))
            if missing:
                raise CgkdError(f"bonded prior: no parameters for {kind} {missing} (fitted: {sorted(tables[kind])})")
            params.append(np.array([tables[kind][_key(bead_types, t)] for t in terms]).reshape(-1, 2))
        prior = cls(bonds, params[0][:, 0], params[0][:, 1], angles, params[1][:, 0], params[1][:, 1])
        prior.tables = tables
        return prior

    def __init__(self, bonds, b0, kb, angles, a0, ka):
        super().__init__()
        self.tables = {"bonds": {}, "angles": {}}
        self.register_buffer("bonds", torch.as_tensor(np.asarray(bonds).reshape(-1, 2), dtype=torch.long))
        self.register_buffer("b0", torch.as_tensor(b0, dtype=torch.float64).reshape(-1))
        self.register_buffer("kb", torch.as_tensor(kb, dtype=torch.float64).reshape(-1))
        self.register_buffer("angles", torch.as_tensor(np.asarray(angles).reshape(-1, 3), dtype=torch.long))
        self.register_buffer("a0", torch.as_tensor(a0, dtype=torch.float64).reshape(-1))
        self.register_buffer("ka", torch.as_tensor(ka, dtype=torch.float64).reshape(-1))

    def forward(self, pos, box, n_frames: int):
        """Energy per frame (n_frames,) for positions (n_frames * n, 3) and boxes (3, 3) or (n_frames, 3, 3)."""
        n = pos.shape[0] // n_frames
        boxes = box.reshape(-1, 3, 3).expand(n_frames, 3, 3).to(pos.dtype).contiguous()
        p = pos.reshape(n_frames, n, 3)
        energy = torch.zeros(n_frames, dtype=pos.dtype, device=pos.device)
        if self.bonds.shape[0] > 0:
            d = _min_image(p[:, self.bonds[:, 1]] - p[:, self.bonds[:, 0]], boxes)
            r = torch.sqrt((d * d).sum(-1))
            energy = energy + (0.5 * self.kb.to(pos.dtype) * (r - self.b0.to(pos.dtype)) ** 2).sum(-1)
        if self.angles.shape[0] > 0:
            th = _angle(p[:, self.angles[:, 0]], p[:, self.angles[:, 1]], p[:, self.angles[:, 2]], boxes)
            energy = energy + (0.5 * self.ka.to(pos.dtype) * (th - self.a0.to(pos.dtype)) ** 2).sum(-1)
        return energy

    def to_openmm(self):
        """[HarmonicBondForce, HarmonicAngleForce] with periodic boundaries (beads indexed as in one frame)."""
        import openmm

        bonds = openmm.HarmonicBondForce()
        for (i, j), x0, k in zip(self.bonds.tolist(), self.b0.tolist(), self.kb.tolist()):
            bonds.addBond(i, j, x0, k)
        angles = openmm.HarmonicAngleForce()
        for (i, j, k_), x0, k in zip(self.angles.tolist(), self.a0.tolist(), self.ka.tolist()):
            angles.addAngle(i, j, k_, x0, k)
        for f, name in ((bonds, "cgkd bond prior"), (angles, "cgkd angle prior")):
            f.setUsesPeriodicBoundaryConditions(True)
            f.setName(name)
        return [bonds, angles]


def fit_bonded(positions, boxes, bead_types, bead_residues, kT, where="dataset"):
    """BondedPrior of the multi-bead molecules of a topology, with x0 and k per bead-type tuple by Boltzmann
    inversion over all copies and frames. None if every molecule is one bead."""
    bonds, angles = bonded_terms(bead_residues)
    if not bonds:
        return None
    if kT is None:
        raise CgkdError(f"{where}: multi-bead molecules need a temperature for their bonded priors (--temperature)")
    pos = torch.as_tensor(positions, dtype=torch.float64)
    box = torch.as_tensor(np.array(boxes), dtype=torch.float64)

    def fit(terms, values):
        keys = [_key(bead_types, t) for t in terms]
        table = {}
        for key in set(keys):
            v = values[:, [i for i, kk in enumerate(keys) if kk == key]].ravel()
            table[key] = (float(v.mean()), float(kT / max(v.var(), 1e-12)))
        return table

    b = torch.as_tensor(np.array(bonds))
    tables = {"bonds": fit(bonds, _min_image(pos[:, b[:, 1]] - pos[:, b[:, 0]], box).norm(dim=-1).numpy()),
              "angles": {}}
    if angles:
        a = torch.as_tensor(np.array(angles))
        tables["angles"] = fit(angles, _angle(pos[:, a[:, 0]], pos[:, a[:, 1]], pos[:, a[:, 2]], box).numpy())
    return BondedPrior.for_topology(tables, bead_types, bead_residues)
