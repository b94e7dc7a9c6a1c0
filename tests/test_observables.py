"""Observables against known answers and second implementations (mdtraj, MDAnalysis)."""
import mdtraj as md
import numpy as np
import pytest
from MDAnalysis.analysis.rdf import InterRDF

from cgkd import CgkdError, mapping, observables, readers
from cgkd.h5md import H5MDTrajectory
from cgkd.systems import SYSTEMS_DIR


def _cubic(n, edge, frames=1):
    return np.broadcast_to(np.eye(3) * edge, (frames, 3, 3)).copy()


def test_ideal_gas_rdf_is_one():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 3.0, size=(40, 400, 3))
    types = np.array(["A"] * 200 + ["B"] * 200)
    r, g, cn = observables.rdf(pos, _cubic(400, 3.0, 40), types, n_bins=30)
    for p, v in g.items():
        assert np.abs(v[5:] - 1).max() < 0.15, p  # Poisson noise of the small inner shells aside
        assert abs(v[10:].mean() - 1) < 0.02
    # Coordination number of an ideal gas: rho * 4/3 pi r^3.
    assert cn[("A", "B")][-1] == pytest.approx(200 / 27.0 * 4 / 3 * np.pi * 1.5 ** 3, rel=0.03)


def test_simple_cubic_lattice_peaks_and_coordination():
    a, m = 0.5, 6
    grid = np.stack(np.meshgrid(*[np.arange(m) * a] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.01
    r, g, cn = observables.rdf(grid[None], _cubic(len(grid), m * a), ["X"] * len(grid), r_max=0.999, n_bins=333)
    peaks = r[np.flatnonzero(g[("X", "X")])]  # bin edges (multiples of 3 pm) fall on none of the shells
    expected = np.array([a, a * np.sqrt(2), a * np.sqrt(3)])
    width = r[1] - r[0]
    assert len(peaks) == 3 and np.abs(peaks - expected).max() <= width / 2
    c = cn[("X", "X")]
    for radius, expected in ((0.6, 6), (0.75, 18), (0.9, 26)):
        assert c[np.searchsorted(r, radius)] == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def cg(small_run, tmp_path_factory):
    cfg, _ = small_run
    out = tmp_path_factory.mktemp("cg") / "cg.h5"
    spec = mapping.MappingSpec.load(SYSTEMS_DIR / "ethaline" / "mapping.yaml")
    s = mapping.map_trajectory(readers.open_trajectory(cfg.out), spec, out, progress=False)
    t = H5MDTrajectory(out)
    types = [x.decode() for x in t.cgkd["bead_types"][:]]
    return t.positions().astype(np.float64), t.boxes(), np.array(types), s["topology"]


def _rdf_against_mdtraj_and_mdanalysis(pos, boxes, types, pdb, r_max, n_bins, pairs):
    import MDAnalysis as mda

    r, g, _ = observables.rdf(pos, boxes, types, r_max=r_max, n_bins=n_bins)
    top = md.load_topology(pdb)
    lengths = boxes[:, [0, 1, 2], [0, 1, 2]]
    traj = md.Trajectory(pos, top, unitcell_lengths=lengths, unitcell_angles=np.full((len(pos), 3), 90.0))
    u = mda.Universe(pdb)
    u.load_new(pos * 10.0, order="fac", dimensions=np.c_[lengths * 10, np.full((len(pos), 3), 90.0)])
    for a, b in pairs:
        ia, ib = np.flatnonzero(types == a), np.flatnonzero(types == b)
        sel = traj.topology.select_pairs(ia, ib) if a != b else np.array([(i, j) for i in ia for j in ia if i < j])
        r_md, g_md = md.compute_rdf(traj, sel, r_range=(0.0, r_max), n_bins=n_bins)
        assert np.allclose(r, r_md, atol=1e-6)
        assert np.allclose(g[(a, b)], g_md, rtol=1e-4, atol=1e-6), (a, b)
        ird = InterRDF(u.atoms[ia], u.atoms[ib], nbins=n_bins, range=(0.0, 10 * r_max),
                       exclusion_block=(1, 1) if a == b else None).run()
        assert np.allclose(g[(a, b)], ird.results.rdf, rtol=1e-3, atol=1e-3), (a, b)


def test_rdf_agrees_with_mdtraj_and_mdanalysis(cg):
    pos, boxes, types, pdb = cg
    _rdf_against_mdtraj_and_mdanalysis(pos, boxes, types, pdb, 0.75, 30, [("CHO", "CL"), ("EGL", "EGL"), ("CHO", "EGL")])


def test_rdf_on_the_reference_dataset_agrees_with_mdtraj_and_mdanalysis():
    """Every bead-type pair of the committed ethaline reference dataset, 25 frames spread over its length."""
    ref = SYSTEMS_DIR / "ethaline" / "reference" / "ethaline_cg.h5"
    with H5MDTrajectory(ref) as t:
        frames = np.linspace(0, len(t) - 1, 25).astype(int)
        pos, boxes = t.positions(frames).astype(np.float64), t.boxes(frames).astype(np.float64)
        types = np.array([x.decode() for x in t.cgkd["bead_types"][:]])
    pairs = observables.type_pairs(types)
    assert len(pairs) == 6
    _rdf_against_mdtraj_and_mdanalysis(pos, boxes, types, ref.with_suffix(".pdb"), observables.max_cutoff(boxes),
                                       100, pairs)


def test_equilateral_triangle_adf_peaks_at_60_degrees():
    side = 0.3
    tri = np.array([[0, 0, 0], [side, 0, 0], [side / 2, side * np.sqrt(3) / 2, 0]]) + 1.0
    pos = np.concatenate([tri, tri + [2.5, 0, 0]])[None]  # two triangles far apart
    theta, p = observables.adf(pos, _cubic(6, 5.0), ["A"] * 6, "A", ("A", "A"), (0.35, 0.35), n_bins=180)
    assert theta[np.argmax(p)] == pytest.approx(60.0, abs=1.0)
    assert p.sum() * 1.0 == pytest.approx(1.0)
    r, th, dens = observables.cdf(pos, _cubic(6, 5.0), ["A"] * 6, "A", ("A", "A"), (0.35, 0.35), n_r=35, n_theta=180)
    i, j = np.unravel_index(np.argmax(dens), dens.shape)
    assert r[i] == pytest.approx(side, abs=0.01) and th[j] == pytest.approx(60.0, abs=1.0)


def test_brownian_walk_gives_back_its_diffusion_coefficient():
    rng = np.random.default_rng(3)
    D, dt, steps, n = 0.05, 0.1, 2000, 200  # nm^2/ps, ps
    x = np.cumsum(rng.normal(scale=np.sqrt(2 * D * dt), size=(steps, n, 3)), axis=0)
    edge = 4.0
    boxes = _cubic(n, edge, steps)
    wrapped = np.mod(x, edge)
    unwrapped = observables.unwrap_in_time(wrapped, boxes)
    assert np.allclose(unwrapped - unwrapped[0], x - x[0], atol=1e-9)
    lags, m = observables.msd(unwrapped, dt, ["A"] * n, max_lag=200)
    # Direct evaluation at one lag as a second implementation of the MSD.
    k = 50
    assert m["A"][k] == pytest.approx(((x[k:] - x[:-k]) ** 2).sum(axis=2).mean(), rel=1e-9)
    d_fit, window = observables.diffusion(lags, m["A"])
    sem = D * np.sqrt(2.0 / (n * 3 * steps / 200))  # ~ independent blocks of the longest lag
    assert abs(d_fit - D) < 4 * sem + 0.02 * D
    assert window == pytest.approx((0.2 * lags[-1], 0.8 * lags[-1]))


def test_bad_input_errors(cg):
    pos, boxes, types, _ = cg
    with pytest.raises(CgkdError, match="beyond half the shortest box edge"):
        observables.rdf(pos, boxes, types, r_max=5.0)
    with pytest.raises(CgkdError, match=r"no beads of type \['URE'\]"):
        observables.rdf(pos, boxes, types, pairs=[("CHO", "URE")])
    with pytest.raises(CgkdError, match="no CL-CL-CL triplets"):
        observables.adf(pos[:1], boxes[:1], types, "CL", ("CL", "CL"), (0.05, 0.05))


def test_rdf_normalises_each_frame_by_its_own_volume_and_both_pair_searches_agree(monkeypatch):
    """NPT-like input: boxes of different sizes (an ideal gas in each) must still give g = 1; and the k-d tree
    branch (used above DENSE_PAIRS pairs) must give the same histogram as the compiled all-pairs loop."""
    rng = np.random.default_rng(1)
    edges = [2.6, 3.0, 3.4]
    pos = np.concatenate([rng.uniform(0, e, size=(20, 400, 3)) for e in edges])
    boxes = np.concatenate([_cubic(400, e, 20) for e in edges])
    types = np.array(["A"] * 200 + ["B"] * 200)
    r, g, _ = observables.rdf(pos, boxes, types, r_max=1.2, n_bins=24)
    for p, v in g.items():
        assert abs(v[8:].mean() - 1) < 0.02, p  # densities differ by 2x between the frames
    monkeypatch.setattr(observables, "DENSE_PAIRS", 10)  # force the k-d tree branch
    r2, g2, _ = observables.rdf(pos, boxes, types, r_max=1.2, n_bins=24)
    for p in g:
        assert np.allclose(g2[p], g[p], rtol=1e-10, atol=1e-12)
