"""Mapping: operators against mdtraj, analytic cases, PBC, optimal force maps, validation, other formats."""
import mdtraj as md
import MDAnalysis as mda
import numpy as np
import pytest

from cgkd import CgkdError, mapping, readers
from cgkd.h5md import H5MDTrajectory
from cgkd.systems import SYSTEMS_DIR

ONE_BEAD = mapping.MappingSpec.load(SYSTEMS_DIR / "ethaline" / "mapping.yaml")


@pytest.fixture(scope="module")
def aa(small_run):
    cfg, _ = small_run
    return readers.open_trajectory(cfg.out)


def _map_all(op, reader):
    blocks = [mapping.map_block(op, p, f, b) for p, f, b, _, _ in reader.blocks(4)]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _ops(spec, top):
    return mapping.build_operators(spec, top.atom_names, top.residue_names, top.residue_ids, top.masses,
                                   top.constraints)


def test_bead_positions_match_mdtraj_centres_of_mass(aa, tmp_path):
    op = _ops(ONE_BEAD, aa.topology)
    R, F = _map_all(op, aa)
    pdb = tmp_path / "aa.pdb"
    pdb.write_text(aa.topology.pdb_text)
    pos = np.concatenate([b[0] for b in aa.blocks(100)])
    boxes = np.concatenate([b[2] for b in aa.blocks(100)])
    edge = boxes[:, [0, 1, 2], [0, 1, 2]]
    t = md.Trajectory(pos, md.load_topology(str(pdb)), unitcell_lengths=edge,
                      unitcell_angles=np.full((len(pos), 3), 90.0))
    t.make_molecules_whole(inplace=True)
    assert not np.allclose(aa.topology.masses, aa.traj.masses())  # the run used HMR masses
    for i, res in enumerate(t.topology.residues):
        # mdtraj's element masses differ from OPLS's in the 4th digit: 2e-5 nm at most here.
        com = md.compute_center_of_mass(t, select=f"resid {res.index}")
        d = com - R[:, i]
        d -= edge * np.round(d / edge)
        assert np.abs(d).max() < 5e-5
        assert np.all((R[:, i] >= 0) & (R[:, i] < edge))
    # Sum map: the bead forces add up to the total atomic force, frame by frame.
    f_atoms = np.concatenate([b[1] for b in aa.blocks(100)])
    assert np.allclose(F.sum(axis=1), f_atoms.sum(axis=1), atol=1e-2)
    assert np.allclose(F[:, 0], f_atoms[:, :21].sum(axis=1), rtol=1e-5, atol=1e-3)


def _toy(n_mol, masses, names=("A", "B"), res="MOL"):
    n = len(masses)
    return dict(atom_names=list(names) * n_mol, residue_names=[res] * (n * n_mol),
                residue_ids=np.repeat(np.arange(n_mol), n), masses=np.tile(masses, n_mol))


def test_analytic_two_molecules_and_straddling_the_box():
    """Two diatomics in a 2 nm box, one across the x face: centres of mass and force sums by hand."""
    spec = mapping.MappingSpec.from_dict({"residues": {"MOL": {"beads": [{"name": "M", "type": "M",
                                                                          "atoms": "all"}]}}})
    top = _toy(2, np.array([12.0, 4.0]))
    op = mapping.build_operators(spec, **top)
    box = np.eye(3)[None] * 2.0
    pos = np.array([[[0.5, 0.5, 0.5], [0.9, 0.5, 0.5],      # COM x = (12*0.5 + 4*0.9)/16 = 0.6
                     [1.95, 1.0, 1.0], [0.15, 1.0, 1.0]]])  # B is A + 0.2 across the face: COM x = 2.0
    frc = np.array([[[1.0, 2.0, 3.0], [-4.0, 0.5, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, -1.0]]])
    R, F = mapping.map_block(op, pos, frc, box)
    assert np.allclose(R[0], [[0.6, 0.5, 0.5], [0.0, 1.0, 1.0]])
    assert np.allclose(F[0], [[-3.0, 2.5, 3.0], [10.0, 0.0, -1.0]])
    # The same molecule translated whole into the box maps to the same bead.
    whole = pos.copy()
    whole[0, 2:, 0] = [1.55, 1.75]
    R2, _ = mapping.map_block(op, whole, frc, box)
    assert np.allclose(R2[0, 1], [1.6, 1.0, 1.0]) and np.allclose(R[0, 0], R2[0, 0])
    shifted = pos.copy()
    shifted[0, 2:, 0] = [1.95 - 0.4, 0.15 - 0.4 + 2.0]  # straddling vs whole, 0.4 nm apart
    R3, _ = mapping.map_block(op, shifted, frc, box)
    assert np.allclose(R3[0, 1, 0], 1.6)


def test_translation_invariance(aa):
    op = _ops(ONE_BEAD, aa.topology)
    pos, frc, box, _, _ = next(aa.blocks(3))
    shift = np.array([0.77, -1.3, 2.9])
    R, F = mapping.map_block(op, pos, frc, box)
    R2, F2 = mapping.map_block(op, pos + shift, frc, box)
    edge = box[:, [0, 1, 2], [0, 1, 2]][:, None]
    d = R2 - (R + shift)
    d -= edge * np.round(d / edge)
    assert np.abs(d).max() < 1e-9 and np.array_equal(F, F2)
    # Wrapping atoms individually (molecules broken across faces) changes nothing either.
    R3, _ = mapping.map_block(op, pos - edge * np.floor(pos / edge), frc, box)
    d = R3 - R
    d -= edge * np.round(d / edge)
    assert np.abs(d).max() < 1e-9


def test_optimal_force_map_gives_the_known_mean_force_with_less_noise():
    """A diatomic (masses 12, 1) bonded by kb, its heavy atom tethered by k1: the mean force on the centre
    of mass is -k1 kb / (kb + k1 a^2) R with a = m2/M, exactly (Gaussian integral)."""
    rng = np.random.default_rng(1)
    m = np.array([12.0, 1.0])
    k1, kb, kT = 50.0, 2000.0, 2.5
    a = m[1] / m.sum()
    n_mol, n_frames = 200, 100
    # Sample (r1, r2) per Cartesian component from the Boltzmann Gaussian with precision H / kT.
    H = np.array([[k1 + kb, -kb], [-kb, kb]])
    L = np.linalg.cholesky(np.linalg.inv(H / kT))
    r = np.einsum("ij,fmjk->fmik", L, rng.standard_normal((n_frames, n_mol, 2, 3)))
    f = -np.einsum("ij,fmjk->fmik", H, r)
    centres = rng.uniform(5, 45, size=(n_mol, 1, 3))
    pos = (r + centres).reshape(n_frames, -1, 3)
    frc = f.reshape(n_frames, -1, 3)
    box = np.broadcast_to(np.eye(3) * 50.0, (n_frames, 3, 3))
    spec_opt = mapping.MappingSpec.from_dict({"residues": {"MOL": {
        "force_map": "optimal", "beads": [{"name": "M", "type": "M", "atoms": "all"}]}}})
    top = _toy(n_mol, m)
    results = {}
    for kind in ("sum", "optimal"):
        op = mapping.build_operators(spec_opt, **top)
        # Without the fit, W is the plain sum of atomic forces.
        stats = mapping.fit_optimal(op, spec_opt, top["residue_names"], top["residue_ids"], top["atom_names"],
                                    np.zeros((0, 2)), [frc]) if kind == "optimal" else {}
        R, F = mapping.map_block(op, pos, frc, box)
        x = (R - centres[:, 0]).ravel()
        y = F.ravel()
        slope = (x @ y) / (x @ x)
        results[kind] = (slope, np.var(y - slope * x), stats)
    k_eff = k1 * kb / (kb + k1 * a ** 2)
    for kind, (slope, noise, _) in results.items():
        assert slope == pytest.approx(-k_eff, rel=0.03), kind
    assert results["optimal"][1] < 0.5 * results["sum"][1]
    st = results["optimal"][2]["MOL"]
    assert st["mean_square_force_optimal"] < st["mean_square_force_sum"]


def test_optimal_map_keeps_constrained_atoms_equal():
    M = np.array([[0.5, 0.3, 0.2]])
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    S = A @ A.T + np.eye(3)
    G = mapping.constraint_groups(3, np.array([[0, 1]]))
    W = mapping.optimal_force_weights(M, S, G)
    assert W[0, 0] == pytest.approx(W[0, 1]) and (W @ M.T)[0, 0] == pytest.approx(1.0)
    free = mapping.optimal_force_weights(M, S, np.eye(3))
    assert free @ S @ free.T <= W @ S @ W.T + 1e-12  # constraints can only cost variance


@pytest.mark.parametrize("residues, message", [
    ({"CHO": {"beads": [{"name": "X", "type": "X", "atoms": "all"}]},
      "CL": {"beads": [{"name": "CL", "type": "CL", "atoms": "all"}]}}, "no mapping for residue EGL"),
    ({**ONE_BEAD.raw["residues"], "CHO": {"beads": [{"name": "H", "type": "H", "atoms": ["N", "C3", "NX"]}]}},
     "no atom 'NX' in residue CHO"),
    ({**ONE_BEAD.raw["residues"], "CHO": {"beads": [{"name": "H", "type": "H", "atoms": ["N", "C3"]}]}},
     "are in no bead"),
    ({**ONE_BEAD.raw["residues"], "CHO": {"beads": [{"name": "H", "type": "H", "atoms": "all"},
                                                     {"name": "T", "type": "T", "atoms": ["N"]}]}},
     "in more than one bead"),
])
def test_invalid_mappings_are_named(aa, residues, message):
    spec = mapping.MappingSpec.from_dict({"residues": residues}, "bad.yaml")
    with pytest.raises(CgkdError, match=message):
        _ops(spec, aa.topology)


def test_bad_weights_and_constraint_across_beads(aa):
    with pytest.raises(CgkdError, match=r"atoms \['CL'\] listed twice"):
        mapping.MappingSpec.from_dict({"residues": {"CL": {"beads": [{"name": "A", "type": "A",
                                                                       "atoms": ["CL", "CL"]}]}}}, "d.yaml")
    with pytest.raises(CgkdError, match="numbers need the atoms listed by name"):
        mapping.MappingSpec.from_dict({"residues": {"CL": {"beads": [{"name": "A", "type": "A", "atoms": "all",
                                                                       "weights": [1.0]}]}}}, "w.yaml")
    with pytest.raises(CgkdError, match="weights: need 2 non-negative numbers"):
        mapping.MappingSpec.from_dict({"residues": {"CL": {"beads": [
            {"name": "A", "type": "A", "atoms": ["CL", "X"], "weights": [0, 0]}]}}}, "w.yaml")
    two = mapping.MappingSpec.load(SYSTEMS_DIR / "ethaline" / "mapping_choline2.yaml")
    op = _ops(two, aa.topology)
    assert len(op.bead_names) == 50 and set(op.bead_types) == {"NME", "OHE", "CL", "EGL"}
    raw = two.raw
    beads = raw["residues"]["CHO"]["beads"]
    bad = {"residues": {**raw["residues"], "CHO": {"beads": [
        {**beads[0], "atoms": beads[0]["atoms"] + ["C1"]},
        {**beads[1], "atoms": [a for a in beads[1]["atoms"] if a != "C1"]}]}}}
    with pytest.raises(CgkdError, match=r"constrained atoms (C1|H1\d) \(\d+\) and (C1|H1\d) .* different beads"):
        _ops(mapping.MappingSpec.from_dict(bad, "split.yaml"), aa.topology)


def test_trr_maps_to_the_same_dataset_as_h5md(small_run, tmp_path):
    cfg, _ = small_run
    top = tmp_path / "aa.pdb"
    with H5MDTrajectory(cfg.out) as t:
        top.write_text(t.cgkd["topology_pdb"][()].decode())
    u = mda.Universe(str(top), cfg.out, format="H5MD")
    trr = tmp_path / "aa.trr"
    with mda.Writer(str(trr), n_atoms=u.atoms.n_atoms) as w:
        for _ in u.trajectory:
            w.write(u.atoms)
    outs = {}
    for name, reader in (("h5", readers.open_trajectory(cfg.out)),
                         ("trr", readers.open_trajectory(trr, top, constraints="hbonds"))):
        # The TRR carries HMR masses only via the topology (element masses): map positions by geometry.
        spec = mapping.MappingSpec.from_dict({"residues": {r: {"beads": [{"name": r, "type": r, "atoms": "all",
                                                                         "weights": "geometry"}]}
                                                          for r in ("CHO", "CL", "EGL")}})
        s = mapping.map_trajectory(reader, spec, tmp_path / f"{name}.h5", progress=False)
        with H5MDTrajectory(s["out"]) as t:
            outs[name] = (t.positions(), t.forces(), t.boxes())
    assert np.allclose(outs["h5"][0], outs["trr"][0], atol=2e-4)
    assert np.allclose(outs["h5"][1], outs["trr"][1], rtol=1e-4, atol=1e-2)
    assert np.allclose(outs["h5"][2], outs["trr"][2], atol=1e-5)
    assert len(readers.open_trajectory(trr, top, constraints="hbonds").topology.constraints) == 260


def test_extended_xyz_maps_like_h5md_and_masses_come_from_elements(small_run, tmp_path):
    import ase
    import ase.calculators.singlepoint
    import ase.io

    cfg, _ = small_run
    h5 = readers.open_trajectory(cfg.out)
    top = tmp_path / "aa.pdb"
    top.write_text(h5.topology.pdb_text)
    pos, frc, box, _, _ = next(h5.blocks(3))
    frames = []
    for p, f, b in zip(pos, frc, box):
        at = ase.Atoms(symbols=h5.topology.elements, positions=p * 10.0, cell=b * 10.0, pbc=True)
        at.calc = ase.calculators.singlepoint.SinglePointCalculator(at, forces=f / readers.EV / 10.0, energy=0.0)
        frames.append(at)
    xyz = tmp_path / "aa.extxyz"
    ase.io.write(str(xyz), frames, format="extxyz")
    with pytest.raises(CgkdError, match="give --dt-ps"):
        readers.open_trajectory(xyz, top)
    rx = readers.open_trajectory(xyz, top, dt_ps=2.0)
    assert np.allclose(rx.topology.masses, h5.topology.masses, atol=2e-3)  # element masses, not HMR ones
    op = _ops(ONE_BEAD, h5.topology)
    R1, F1 = mapping.map_block(op, pos, frc, box)
    p2, f2, b2, steps, times = next(rx.blocks(3))
    R2, F2 = mapping.map_block(op, p2, f2, b2)
    assert np.allclose(R1, R2, atol=1e-5) and np.allclose(F1, F2, rtol=1e-5, atol=1e-3)
    assert np.allclose(times, [0.0, 2.0, 4.0])


def _pdb(names, resnames, resids, elements, pos):
    lines = [f"ATOM  {i + 1:5d} {n:<4s} {r:3s} A{ri + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {e:>2s}"
             for i, (n, r, ri, e, (x, y, z)) in enumerate(zip(names, resnames, resids, elements, pos))]
    return "\n".join(lines + ["END", ""])


@pytest.mark.parametrize("units, to_kj", [("real", 4.184), ("metal", 96.48533212)])
def test_lammps_dump_triclinic_units_and_unwrapping(tmp_path, units, to_kj):
    """A hand-written LAMMPS dump in a triclinic cell (lo at -2 A): water-like molecules whose atoms are wrapped
    across the tilted faces map to the centres of mass of the whole molecules, forces convert from
    kcal/mol/A (real) or eV/A (metal) to kJ/mol/nm, and times are steps x dt."""
    a, b, c = np.array([30.0, 0, 0]), np.array([6.0, 28.0, 0]), np.array([-4.0, 5.0, 26.0])  # Angstrom
    cell, lo = np.array([a, b, c]), np.full(3, -2.0)
    rng = np.random.default_rng(3)
    # Whole molecules (O, H, H) placed so that H atoms cross the a-, b- and tilted c-faces.
    centres = [lo + 0.99 * a + 0.5 * b + 0.5 * c, lo + 0.5 * a + 0.99 * b + 0.5 * c, lo + 0.3 * a + 0.6 * b + 0.01 * c]
    whole = np.concatenate([[o, o + [0.96, 0.0, 0.0], o + [-0.24, 0.93, -0.6]] for o in centres])
    frac = np.linalg.solve(cell.T, (whole - lo).T).T
    wrapped = lo + (frac - np.floor(frac)) @ cell
    assert (np.floor(frac) != 0).any(axis=0).all()  # atoms were moved across all three faces
    forces = rng.normal(size=whole.shape)  # in the dump's units
    names, resnames = ["O", "H1", "H2"] * 3, ["WAT"] * 9
    resids, elements = np.repeat(np.arange(3), 3), ["O", "H", "H"] * 3
    top = tmp_path / "wat.pdb"
    top.write_text(_pdb(names, resnames, resids, elements, whole))
    xy, xz, yz = b[0], c[0], c[1]
    xlo_b, xhi_b = lo[0] + min(0, xy, xz, xy + xz), lo[0] + a[0] + max(0, xy, xz, xy + xz)
    frames = []
    for step in (0, 500):
        frames += ["ITEM: TIMESTEP", str(step), "ITEM: NUMBER OF ATOMS", "9",
                   "ITEM: BOX BOUNDS xy xz yz pp pp pp", f"{xlo_b} {xhi_b} {xy}",
                   f"{lo[1] + min(0, yz)} {lo[1] + b[1] + max(0, yz)} {xz}", f"{lo[2]} {lo[2] + c[2]} {yz}",
                   "ITEM: ATOMS id type x y z fx fy fz"]
        frames += [f"{i + 1} {1 if elements[i] == 'O' else 2} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} "
                   f"{f[0]:.6f} {f[1]:.6f} {f[2]:.6f}" for i, (p, f) in enumerate(zip(wrapped, forces))]
    dump = tmp_path / "wat.lammpstrj"
    dump.write_text("\n".join(frames) + "\n")
    with pytest.raises(CgkdError, match="give --dt-ps"):
        readers.open_trajectory(dump, top, lammps_units=units)
    reader = readers.open_trajectory(dump, top, lammps_units=units, dt_ps=0.002)
    pos, frc, box, steps, times = next(reader.blocks(10))
    assert np.allclose(box[0], cell / 10.0, atol=1e-5)
    assert np.allclose(times, [0.0, 1.0]) and list(steps) == [0, 500]
    spec = mapping.MappingSpec.from_dict({"residues": {"WAT": {"beads": [{"name": "W", "type": "W", "atoms": "all"}]}}})
    op = _ops(spec, reader.topology)
    R, F = mapping.map_block(op, pos, frc, box)
    m = np.array([15.999, 1.008, 1.008])
    # MDAnalysis moves the cell's origin (lo) to 0: a rigid translation of the whole frame.
    com = np.array([(m[:, None] * (whole[3 * k:3 * k + 3] - lo)).sum(0) / m.sum() for k in range(3)]) / 10.0
    df = np.linalg.solve(cell.T / 10.0, (R[0] - com).T).T  # bead - true COM in cell coordinates: whole lattice steps
    assert np.allclose(df, np.rint(df), atol=1e-4)
    inside = np.linalg.solve(cell.T / 10.0, R[0].T).T
    assert (inside >= -1e-9).all() and (inside < 1 + 1e-9).all()
    expect = np.array([forces[3 * k:3 * k + 3].sum(0) for k in range(3)]) * to_kj * 10.0
    assert np.allclose(F[0], expect, rtol=1e-5, atol=1e-4)
    with pytest.raises(CgkdError, match="real or metal"):
        readers.open_trajectory(dump, top, lammps_units="lj", dt_ps=0.002)
