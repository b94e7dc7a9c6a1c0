"""CGPotential and priors: forces are -dE/dR, the prior's OpenMM force equals its torch module, bad input."""
import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from cgkd import CgkdError, observables
from cgkd.model import CGPotential, max_neighbors, pair_onsets
from cgkd.priors import RepulsivePrior, rdf_onset


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    n, edge = 60, 2.2
    pos = rng.uniform(0, edge, size=(n, 3))
    types = np.array(["A", "B", "C"] * (n // 3))
    return pos, np.eye(3) * edge, types


def test_forces_are_minus_energy_gradient(frame):
    pos, box, names = frame
    prior = RepulsivePrior(np.full((3, 3), 0.3))
    torch.manual_seed(0)
    m = CGPotential(["A", "B", "C"], cutoff=0.7, channels=16, layers=1, rbf=8, max_num_neighbors=48, prior=prior,
                    dtype=torch.float64)
    types = m.type_index(list(names))
    p = torch.tensor(pos)
    b = torch.tensor(box)
    eps, energy, forces = m.energy_forces(types, p.clone(), b)
    assert eps.shape == (60,) and energy.shape == (1,)
    with torch.no_grad():
        assert energy.item() == pytest.approx(eps.sum().item() + prior(types, *m.pairs(p, torch.zeros_like(types), b)[:2]).item())
    assert_forces_are_finite_differences(m, types, p, b, forces, [(a, k) for a in (0, 7, 31) for k in range(3)])


def assert_forces_are_finite_differences(m, types, p, box, forces, probes, h=1e-5):
    """forces[a, k] = -dE/dp[a, k] by central differences, for each (bead a, axis k) in probes."""
    for a, k in probes:
        plus, minus = p.clone(), p.clone()
        plus[a, k] += h
        minus[a, k] -= h
        with torch.no_grad():
            fd = -(m(types, plus, box)[1] - m(types, minus, box)[1]).item() / (2 * h)
        assert fd == pytest.approx(forces[a, k].item(), rel=1e-5, abs=1e-7)


def test_tensornet_embedding_alone_is_a_three_body_model():
    """0 interaction layers (the shipped student): B and C at 0.6 nm from A and > cutoff from each other.
    A pair-additive model gives the same energy at every angle B-A-C; TensorNet's embedding does not, and its
    forces are still -dE/dR. gn and et need a layer to see any neighbour."""
    torch.manual_seed(0)
    m = CGPotential(["A", "B", "C"], cutoff=0.7, channels=8, layers=0, rbf=8, max_num_neighbors=8,
                    dtype=torch.float64, rbf_type="gauss")
    types = m.type_index(["A", "B", "C"])
    box = torch.eye(3, dtype=torch.float64) * 5.0

    def beads(angle):
        t = np.radians(angle)
        return torch.tensor([[2.5, 2.5, 2.5], [3.1, 2.5, 2.5], [2.5 + 0.6 * np.cos(t), 2.5 + 0.6 * np.sin(t), 2.5]],
                            dtype=torch.float64)

    for angle in (120.0, 150.0):
        assert torch.linalg.norm(beads(angle)[1] - beads(angle)[2]) > 1.0  # B-C beyond the cutoff
    with torch.no_grad():
        e120, e150 = (m(types, beads(a), box)[1].item() for a in (120.0, 150.0))
    assert abs(e120 - e150) > 1e-9  # float64 rounding is ~1e-15
    gn = CGPotential(["A", "B", "C"], cutoff=0.7, channels=8, layers=1, rbf=8, max_num_neighbors=8, arch="gn",
                     dtype=torch.float64, rbf_type="gauss")
    with torch.no_grad():  # distances only: blind to the angle while B and C are out of each other's range
        assert gn(types, beads(120.0), box)[1].item() == pytest.approx(gn(types, beads(150.0), box)[1].item(),
                                                                        rel=1e-12, abs=1e-12)
    p = beads(135.0)
    _, _, forces = m.energy_forces(types, p.clone(), box)
    assert_forces_are_finite_differences(m, types, p, box, forces, [(1, 0), (2, 1), (0, 2)])
    for arch in ("gn", "et"):
        with pytest.raises(CgkdError, match="at least 1 interaction layer"):
            CGPotential(["A", "B", "C"], layers=0, arch=arch)


def test_repulsive_prior_matches_its_openmm_force(frame):
    pos, box, names = frame
    r0 = np.array([[0.45, 0.35, 0.38], [0.35, 0.44, 0.32], [0.38, 0.32, 0.34]])
    prior = RepulsivePrior(r0)
    m = CGPotential(["A", "B", "C"], cutoff=0.7, channels=8, rbf=4, max_num_neighbors=48, prior=prior)
    types = m.type_index(list(names))
    system = openmm.System()
    for _ in names:
        system.addParticle(50.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(prior.to_openmm(types.tolist()))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    state = ctx.getState(getEnergy=True, getForces=True)
    p = torch.tensor(pos, requires_grad=True)
    ei, ew, _ = m.pairs(p, torch.zeros_like(types), torch.tensor(box))
    e = prior(types, ei, ew)
    f = -torch.autograd.grad(e, p)[0].numpy()
    assert e.item() > 1.0  # random positions overlap: the walls are active
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(e.item(), rel=1e-9)
    assert np.allclose(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer), f,
                       rtol=1e-8, atol=1e-8)
    # Zero, with zero slope, at and beyond the wall.
    r = torch.tensor([0.45, 0.5], dtype=torch.float64, requires_grad=True)
    u_ = prior.pair_energy(r, torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert torch.all(u_ == 0) and torch.all(torch.autograd.grad(u_.sum(), r)[0] == 0)


def test_prior_walls_sit_at_rdf_onsets():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 3.0, size=(5, 300, 3))
    types = np.array(["A"] * 150 + ["B"] * 150)
    r, g, _ = observables.rdf(pos, np.broadcast_to(np.eye(3) * 3.0, (5, 3, 3)), types, n_bins=150)
    prior = RepulsivePrior(pair_onsets(["A", "B"], r, g))
    assert prior.r0[0, 1] == pytest.approx(rdf_onset(r, g[("A", "B")]))
    assert prior.r0[0, 1] < 0.1  # an ideal gas has pairs almost down to zero


def test_neighbour_budget_is_enforced(frame):
    pos, box, names = frame
    need = max_neighbors(pos[None], box[None], 0.7, margin=1.0, extra=0)
    m = CGPotential(["A", "B", "C"], cutoff=0.7, channels=8, rbf=4, max_num_neighbors=need - 1)
    with pytest.raises(CgkdError, match="more than the model's max_num_neighbors"):
        m.check_neighbors(torch.tensor(pos), torch.tensor(box))
    with pytest.raises(CgkdError, match="the data has \\['X'\\]"):
        m.type_index(["A", "X"])
    with pytest.raises(CgkdError, match="symmetric matrix"):
        RepulsivePrior(np.array([[0.3, 0.2], [0.1, 0.3]]))


def test_bonded_prior_boltzmann_inversion_and_openmm_equivalent():
    """Dimers with Gaussian bond lengths (and a third bead for an angle) across a periodic box."""
    from cgkd.priors import fit_bonded

    rng = np.random.default_rng(4)
    kT, k_true, r_true = 2.479, 800.0, 0.35
    frames, mols, edge = 200, 20, 3.0
    a = rng.uniform(0, edge, size=(frames, mols, 3))
    u_ = rng.normal(size=(frames, mols, 3))
    u_ /= np.linalg.norm(u_, axis=-1, keepdims=True)
    r = r_true + rng.normal(scale=np.sqrt(kT / k_true), size=(frames, mols, 1))
    b = a + r * u_
    c = b + 0.3 * np.array([1.0, 0, 0])
    pos = np.mod(np.stack([a, b, c], axis=2).reshape(frames, -1, 3), edge)  # molecules broken across faces
    boxes = np.broadcast_to(np.eye(3) * edge, (frames, 3, 3))
    types = ["X", "Y", "Z"] * mols
    residues = np.repeat(np.arange(mols), 3)
    prior = fit_bonded(pos, boxes, types, residues, kT)
    assert prior.bonds.shape == (2 * mols, 2) and prior.angles.shape == (mols, 3)
    assert prior.b0[0].item() == pytest.approx(r_true, abs=0.002)
    assert prior.kb[0].item() == pytest.approx(k_true, rel=0.1)
    system = openmm.System()
    for _ in types:
        system.addParticle(20.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in boxes[0]])
    for f in prior.to_openmm():
        system.addForce(f)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos[0])
    state = ctx.getState(getEnergy=True, getForces=True)
    p = torch.tensor(pos[0], requires_grad=True)
    e = prior(p, torch.tensor(boxes[0]), 1)
    f = -torch.autograd.grad(e.sum(), p)[0].numpy()
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(e.item(), rel=1e-8)
    f_omm = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    assert np.abs(f_omm - f).max() < 1e-4 * np.abs(f).max()  # OpenMM evaluates angles by its own formula
    # Batched frames give each frame's own energy.
    e2 = prior(torch.tensor(pos[:2].reshape(-1, 3)), torch.tensor(boxes[:2]), 2)
    assert e2[0].item() == pytest.approx(e.item()) and e2[1].item() != pytest.approx(e.item())
