"""`cgkd aa`: forces in the file are -dE/dx, the H5MD file round-trips and MDAnalysis reads it, resume is exact."""

import MDAnalysis as mda
import numpy as np
import openmm
import openmm.unit as u
import pytest

from cgkd import CgkdError, config, systems
from cgkd.aa import run_aa
from cgkd.reporters import read_checkpoint
from cgkd.h5md import H5MDTrajectory

from .conftest import SMALL


def test_run_writes_frames_box_energy_and_provenance(small_run):
    cfg, summary = small_run
    with H5MDTrajectory(cfg.out) as t:
        n = int(round(cfg.nvt_ps * 1000 / 4.0)) // cfg.stride
        assert len(t) == summary["frames"] == n
        steps = t.steps()
        assert np.all(np.diff(steps) == cfg.stride)
        assert np.allclose(t.times(), steps * 0.004)
        assert t.positions().shape == t.forces().shape == (n, 420, 3)
        assert np.all(np.isfinite(t.forces())) and np.abs(t.forces()).max() > 100
        box = t.boxes()
        assert np.allclose(np.linalg.det(box), summary["nvt_volume_nm3"], rtol=1e-5)
        assert t.observable("potential_energy").shape == (n,)
        g = t.cgkd
        assert g.attrs["hmr"] and g.attrs["hydrogen_mass_amu"] == pytest.approx(3.024)
        m = t.masses()
        el = g["elements"][:].astype(str)
        assert np.allclose(m[el == "H"], 3.024) and m.sum() == pytest.approx(10 * 263.76, rel=1e-4)
        cons = g["constraints"][:]
        assert len(cons) == 10 * 14 + 20 * 6  # every X-H bond: 14 in choline, 6 in ethylene glycol
        assert set(el[cons].ravel()) >= {"H"} and all("H" in el[c] for c in cons)
        assert "npt_ps: 0.4" in g.attrs["config"] and g.attrs["seed"] == 1


def _fd_check(cfg, candidates, n, h=1e-5):
    """Largest per-atom and whole-selection relative error of file forces against central differences
    of the AA energy (Reference platform, double precision) at the last frame, for n of the candidate
    atoms. Atoms with a neighbour within 10 h of the cutoff are skipped: the energy jumps there (plain
    cutoff), so a difference quotient across it is not a derivative."""
    spec = systems.load_system("ethaline")
    with H5MDTrajectory(cfg.out) as t:
        pos, forces, box = t.positions(-1), t.forces(-1).astype(np.float64), t.boxes(-1)
    edge = np.diag(box)
    atoms = []
    for a in candidates:
        d = pos - pos[a]
        d -= edge * np.round(d / edge)
        if np.abs(np.linalg.norm(d, axis=1) - cfg.cutoff).min() > 10 * h:
            atoms.append(a)
    atoms = np.array(atoms[:n])
    assert len(atoms) == n
    top, _ = systems.load_box(spec, cfg.pdb)
    system = systems.create_system(spec, top, cutoff=cfg.cutoff, constraints="HBonds", hmr=True)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*box)

    def energy(x):
        ctx.setPositions(x)
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    fd = np.zeros((len(atoms), 3))
    for n, atom in enumerate(atoms):
        for k in range(3):
            plus, minus = pos.copy(), pos.copy()
            plus[atom, k] += h
            minus[atom, k] -= h
            fd[n, k] = -(energy(plus) - energy(minus)) / (2 * h)
    per_atom = np.linalg.norm(fd - forces[atoms], axis=1) / np.linalg.norm(forces[atoms], axis=1)
    return per_atom.max(), np.linalg.norm(fd - forces[atoms]) / np.linalg.norm(forces[atoms])


def test_forces_equal_minus_energy_gradient(small_box, tmp_path):
    """A run on the double-precision Reference platform: every checked atom within 1e-3 relative."""
    cfg = config.AAConfig(pdb=str(small_box), out=str(tmp_path / "ref.h5"),
                          **{**SMALL, "platform": "Reference", "npt_ps": 0.08, "nvt_ps": 0.16,
                             "minimize_iterations": 50})
    run_aa(cfg, progress=False)
    worst, _ = _fd_check(cfg, np.random.default_rng(0).permutation(420), 6)
    assert worst < 1e-3


def test_cpu_platform_forces_match_energy_gradient(small_run):
    """The CPU platform computes in single precision: the selection as a whole within 1e-3 relative."""
    cfg, _ = small_run
    _, overall = _fd_check(cfg, np.arange(0, 420, 7), 20)
    assert overall < 1e-3


def test_h5md_read_back_by_mdanalysis(small_run):
    cfg, _ = small_run
    with H5MDTrajectory(cfg.out) as t:
        pos, frc, box = t.positions(), t.forces(), t.boxes()
        pdb = t.cgkd["topology_pdb"][()].decode()
    top = cfg.out + ".pdb"
    open(top, "w").write(pdb)
    uni = mda.Universe(top, cfg.out, format="H5MD")
    assert len(uni.trajectory) == len(pos)
    for i, ts in enumerate(uni.trajectory):
        assert np.allclose(ts.positions / 10.0, pos[i], atol=1e-6)  # MDAnalysis works in Angstrom
        assert np.allclose(ts.forces * 10.0, frc[i], rtol=1e-5, atol=1e-3)  # kJ/mol/A -> kJ/mol/nm
        assert np.allclose(ts.dimensions[:3] / 10.0, np.diag(box[i]), rtol=1e-6)


def _run_killed(cfg, monkeypatch, owner, method, at_call):
    """Run cfg with owner.method raising KeyboardInterrupt at its at_call-th call, like a killed run."""
    original = getattr(owner, method)
    calls = {"n": 0}

    def killed(*a, **k):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(owner, method, killed)
    with pytest.raises(KeyboardInterrupt):
        run_aa(cfg, progress=False)
    monkeypatch.setattr(owner, method, original)


def test_resume_neither_loses_nor_duplicates_frames(small_run, tmp_path, monkeypatch):
    from cgkd import h5md

    full_cfg, _ = small_run
    cut = config.AAConfig(**{**vars(full_cfg), "out": str(tmp_path / "cut.h5")})
    # Killed while appending frame 8: checkpoints every 2 frames, so frame 7 was written after the last one.
    _run_killed(cut, monkeypatch, h5md.H5MDWriter, "append", 8)
    meta, _ = read_checkpoint(cut.out + ".chk")
    assert meta["stage"] == "nvt" and meta["frames"] == 6
    with H5MDTrajectory(cut.out) as t:
        assert len(t) == 7  # the file is valid after the crash
        before = t.positions(slice(0, 7))
    run_aa(config.AAConfig(out=cut.out, resume=True), progress=False)
    with H5MDTrajectory(full_cfg.out) as a, H5MDTrajectory(cut.out) as b:
        assert np.array_equal(a.steps(), b.steps())  # every frame once, same steps as an uninterrupted run
        after = b.positions()
        assert np.array_equal(after[:6], before[:6])  # frames up to the checkpoint are kept as written
        # Frame 7 was re-simulated from the checkpoint. It cannot be compared bit for bit: OpenMM's CPU platform
        # is not bitwise reproducible for this PME system (two identical runs differ by 1e-7 nm after the
        # minimisation alone), so it is a new sample, one stride on from frame 6 like every other frame pair.
        step = np.abs(np.diff(after, axis=0)).max(axis=(1, 2))
        assert step[5] < 3 * np.median(step)
    log = open(cut.out + ".log.csv").read().splitlines()
    steps = [int(float(r.split(",")[1])) for r in log[1:]]
    assert steps == sorted(set(steps)) and len(steps) == len(open(full_cfg.out + ".log.csv").read().splitlines()) - 1


def test_resume_during_npt_keeps_the_volume_history(small_box, tmp_path, monkeypatch):
    from cgkd import aa

    cfg = config.AAConfig(pdb=str(small_box), out=str(tmp_path / "npt.h5"), **{**SMALL, "npt_ps": 0.8, "nvt_ps": 0.16})
    _run_killed(cfg, monkeypatch, aa.AARun, "_log", 4)  # NPT samples 1-3 logged, checkpoint after sample 2
    meta, _ = read_checkpoint(cfg.out + ".chk")
    assert meta["stage"] == "npt" and meta["npt_samples"] == 2
    summary = run_aa(config.AAConfig(out=cfg.out, resume=True), progress=False)
    with H5MDTrajectory(cfg.out) as t:
        vols = t.cgkd["npt_volume/value"][:]
        steps = t.cgkd["npt_volume/step"][:]
    assert len(vols) == 10 and np.all(np.diff(steps) == 20) and np.all(vols > 3.5)
    assert summary["nvt_volume_nm3"] == pytest.approx(vols[5:].mean())
    with pytest.raises(CgkdError, match="written on the CPU platform; resume it there"):
        run_aa(config.AAConfig(out=cfg.out, resume=True, platform="Reference"), progress=False)


def test_resume_without_checkpoint_and_overwrite(small_box, tmp_path):
    with pytest.raises(CgkdError, match="no checkpoint to resume"):
        run_aa(config.AAConfig(out=str(tmp_path / "none.h5"), resume=True))
