"""The OPLS-DES OpenMM files against independent computations from the published parameters."""
import itertools

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from cgkd import systems

KCAL = 4.184
# OPLS-DES per-type sigma (Angstrom), epsilon (kcal/mol) and charges as published (Doherty & Acevedo 2018),
# written here independently of forcefields/ to check the generated files.
CHOLINE = {  # atom name: (sigma A, epsilon kcal/mol, charge)
    "C1": (3.50, 0.066, -0.131), "H11": (2.60, 0.030, 0.068), "H12": (2.60, 0.030, 0.068),
    "N": (3.25, 0.170, 0.791), "C2": (3.50, 0.066, 0.132), "H21": (2.20, 0.030, 0.034),
    "H22": (2.20, 0.030, 0.034), "O": (3.07, 0.170, -0.468), "HO": (0.0, 0.0, 0.275),
    **{f"C{i}": (3.50, 0.066, -0.100) for i in (3, 4, 5)},
    **{f"H{i}{j}": (2.50, 0.030, 0.033) for i in (3, 4, 5) for j in (1, 2, 3)},
}
CHLORIDE = {"CL": (3.77, 0.148, -0.800)}
EG = {"C1": (3.50, 0.066, 0.116), "C2": (3.50, 0.066, 0.116), "H11": (2.50, 0.030, 0.048),
      "H12": (2.50, 0.030, 0.048), "H21": (2.50, 0.030, 0.048), "H22": (2.50, 0.030, 0.048),
      "O1": (3.00, 0.170, -0.560), "O2": (3.00, 0.170, -0.560), "HO1": (0.0, 0.0, 0.348),
      "HO2": (0.0, 0.0, 0.348)}
ONE_4PI_EPS0 = 138.935456  # kJ mol^-1 nm e^-2


def _molecules(spec, names, offsets):
    top = app.Topology()
    chain = top.addChain()
    pos = []
    templates, bonds = systems.residue_templates(spec.forcefield)
    for res_name, off in zip(names, offsets):
        comp = next(c for c in spec.components if c.residue == res_name)
        pdb = systems.load_molecule(spec, comp)
        systems._copy_residue(top, chain, next(pdb.topology.residues()), bonds[res_name])
        pos.append(pdb.getPositions(asNumpy=True).value_in_unit(u.nanometer) + off)
    return top, np.concatenate(pos)


def _energy(system, pos, groups):
    for i, f in enumerate(system.getForces()):
        f.setForceGroup(i)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    names = [f.getName() for f in system.getForces()]
    mask = sum(1 << names.index(g) for g in groups if g in names)
    return ctx.getState(getEnergy=True, groups=mask).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def _lj(a, b, r):
    sig = np.sqrt(a[0] * b[0]) / 10.0  # OPLS geometric rule, nm
    eps = np.sqrt(a[1] * b[1]) * KCAL
    return 4 * eps * ((sig / r) ** 12 - (sig / r) ** 6) if eps > 0 else 0.0


def test_intermolecular_lj_uses_geometric_rule():
    spec = systems.load_system("ethaline")
    top, pos = _molecules(spec, ["CHO", "CL"], [np.zeros(3), np.array([0.55, 0.1, 0.05])])
    system = app.ForceField(str(spec.forcefield)).createSystem(top, nonbondedMethod=app.NoCutoff)
    atoms = list(top.atoms())
    params = [CHOLINE[a.name] if a.residue.name == "CHO" else CHLORIDE[a.name] for a in atoms]
    ref_lj = ref_q = 0.0
    for i, j in itertools.product(range(21), [21]):
        r = np.linalg.norm(pos[i] - pos[j])
        ref_lj += _lj(params[i], params[j], r)
        ref_q += ONE_4PI_EPS0 * params[i][2] * params[j][2] / r
    cho_only = _molecules(spec, ["CHO"], [np.zeros(3)])
    sys_cho = app.ForceField(str(spec.forcefield)).createSystem(cho_only[0], nonbondedMethod=app.NoCutoff)
    inter = _energy(system, pos, ["LennardJones"]) - _energy(sys_cho, pos[:21], ["LennardJones"])
    assert inter == pytest.approx(ref_lj, rel=1e-6)
    # Lorentz-Berthelot would give a measurably different answer here, so the test can tell them apart.
    lb = sum(4 * np.sqrt(p[1] * 0.148) * KCAL * ((s := (p[0] + 3.77) / 20) / r) ** 12
             - 4 * np.sqrt(p[1] * 0.148) * KCAL * (s / r) ** 6
             for p, r in ((params[i], np.linalg.norm(pos[i] - pos[21])) for i in range(21)))
    assert abs(lb - ref_lj) > 1e-3 * abs(ref_lj)
    coul = _energy(system, pos, ["NonbondedForce"]) - _energy(sys_cho, pos[:21], ["NonbondedForce"])
    assert coul == pytest.approx(ref_q, rel=1e-6)


@pytest.mark.parametrize("ff, scale14, eg", [("opls_des_eg1.75_no14.xml", 0.0, 1.75), ("opls_des_eg1.00_14.xml", 0.5, 1.0)])
def test_ethylene_glycol_intramolecular_1_4_and_exclusions(ff, scale14, eg):
    """Within one EG: 1-2/1-3 excluded, 1-4 scaled (LJ and Coulomb), hydroxyl H to the far O excluded."""
    spec = systems.load_system("ethaline", forcefield=ff)
    top, pos = _molecules(spec, ["EGL"], [np.zeros(3)])
    system = app.ForceField(str(spec.forcefield)).createSystem(top, nonbondedMethod=app.NoCutoff)
    atoms = list(top.atoms())
    graph = {a.index: set() for a in atoms}
    for b in top.bonds():
        graph[b[0].index].add(b[1].index)
        graph[b[1].index].add(b[0].index)

    def separation(i, j):
        seen, frontier, d = {i}, {i}, 0
        while j not in frontier:
            frontier = {n for f in frontier for n in graph[f]} - seen
            seen |= frontier
            d += 1
        return d

    names = [a.name for a in atoms]
    excluded_15 = {frozenset(("HO2", "O1")), frozenset(("O2", "HO1"))}
    ref = 0.0
    for i, j in itertools.combinations(range(len(atoms)), 2):
        d = separation(i, j)
        if d < 3 or frozenset((names[i], names[j])) in excluded_15:
            continue
        scale = scale14 if d == 3 else 1.0
        r = np.linalg.norm(pos[i] - pos[j])
        a, b = EG[names[i]], EG[names[j]]
        ref += scale * (eg * _lj(a, b, r) + ONE_4PI_EPS0 * a[2] * b[2] / r)
    got = _energy(system, pos, ["NonbondedForce", "LennardJones", "LennardJones14"])
    assert got == pytest.approx(ref, rel=1e-6)


def test_eg_scaled_variant_differs_only_in_eg_epsilons():
    plain = systems.load_system("ethaline", forcefield="opls_des_eg1.00_no14.xml")
    scaled = systems.load_system("ethaline", forcefield="opls_des_eg1.75_no14.xml")
    top, pos = _molecules(plain, ["EGL", "CL"], [np.zeros(3), np.array([0.5, 0.0, 0.0])])
    e = [_energy(app.ForceField(str(s.forcefield)).createSystem(top, nonbondedMethod=app.NoCutoff), pos,
                 ["LennardJones"]) for s in (plain, scaled)]
    top_cl, pos_cl = _molecules(plain, ["CL", "CL"], [np.zeros(3), np.array([0.4, 0.0, 0.0])])
    e_cl = [_energy(app.ForceField(str(s.forcefield)).createSystem(top_cl, nonbondedMethod=app.NoCutoff), pos_cl,
                    ["LennardJones"]) for s in (plain, scaled)]
    assert e_cl[0] == pytest.approx(e_cl[1], rel=1e-12)
    assert e[1] != pytest.approx(e[0], rel=1e-3)
    # Every EG-EG pair epsilon is 1.75x (geometric rule: sqrt(1.75 * 1.75)), EG-Cl pairs sqrt(1.75)x.
    top2, pos2 = _molecules(plain, ["EGL", "EGL"], [np.zeros(3), np.array([0.45, 0.1, 0.0])])
    inter = [_energy(app.ForceField(str(s.forcefield)).createSystem(top2, nonbondedMethod=app.NoCutoff), pos2,
                     ["LennardJones"]) - 2 * _energy(app.ForceField(str(s.forcefield)).createSystem(
                         _molecules(plain, ["EGL"], [np.zeros(3)])[0], nonbondedMethod=app.NoCutoff),
                         pos2[:10], ["LennardJones"]) for s in (plain, scaled)]
    assert inter[1] == pytest.approx(1.75 * inter[0], rel=1e-6)


def test_molecule_pdbs_have_right_elements_and_masses():
    expected = {"CHO": 104.17, "CL": 35.45, "EGL": 62.07, "URE": 60.06}
    for name in ("ethaline", "reline"):
        spec = systems.load_system(name)
        for comp in spec.components:
            pdb = systems.load_molecule(spec, comp)
            mass = sum(a.element.mass.value_in_unit(u.dalton) for a in pdb.topology.atoms())
            assert mass == pytest.approx(expected[comp.residue], abs=0.02)
            if comp.residue == "CHO":
                assert [a.element.symbol for a in pdb.topology.atoms() if a.name == "N"] == ["N"]
