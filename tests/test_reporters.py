"""cgkd.reporters.H5MDReporter in a plain OpenMM script: frames, MDAnalysis, kill and exact resume."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from cgkd.errors import CgkdError
from cgkd.h5md import H5MDTrajectory, H5MDWriter
from cgkd.reporters import H5MDReporter, read_checkpoint


def _simulation(seed=3):
    """64 LJ particles in a 2 nm box, Langevin on the Reference platform (bitwise reproducible)."""
    rng = np.random.default_rng(0)
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*(np.eye(3) * 2.0))
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.9)
    top = app.Topology()
    res = top.addResidue("LJ", top.addChain())
    for _ in range(64):
        system.addParticle(40.0)
        nb.addParticle(0.0, 0.3, 0.5)
        top.addAtom("A", None, res)
    system.addForce(nb)
    top.setPeriodicBoxVectors(np.eye(3) * 2.0 * u.nanometer)
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3), -1).reshape(-1, 3) * 0.5  # on the box faces: some leave it
    integ = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.004 * u.picosecond)
    integ.setRandomNumberSeed(seed)
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(grid + rng.normal(0, 0.01, grid.shape))
    sim.context.setVelocitiesToTemperature(300 * u.kelvin, seed)
    return sim


def _run(path, monkeypatch=None, kill_at=None):
    sim = _simulation()
    rep = H5MDReporter(path, 5, checkpointInterval=2, unwrapped=True, forces=True, position_dtype=np.float64)
    sim.reporters.append(rep)
    if kill_at is None:
        sim.step(50)
        rep.close()
        return
    original, calls = H5MDWriter.append, {"n": 0}

    def killed(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(H5MDWriter, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        sim.step(50)
    monkeypatch.setattr(H5MDWriter, "append", original)
    rep.close()


def test_frames_mdanalysis_and_an_exact_resume_after_a_kill(tmp_path, monkeypatch):
    import MDAnalysis as mda

    full, cut = tmp_path / "full.h5", tmp_path / "cut.h5"
    _run(full)
    with H5MDTrajectory(full) as t:
        assert len(t) == 10 and list(t.steps()) == list(range(5, 55, 5))
        pos, unwrapped, frc, box = t.positions(), t._value("unwrapped_position"), t.forces(), t.boxes()
        temps = t.observable("temperature")
    assert np.all((pos >= 0) & (pos < 2.0)) and not np.all((unwrapped >= 0) & (unwrapped < 2.0))
    assert np.allclose((unwrapped - pos) / 2.0, np.round((unwrapped - pos) / 2.0), atol=1e-9)  # same, wrapped
    assert 150 < temps.mean() < 450  # 3N - 0 degrees of freedom (no CMMotionRemover, no constraints)
    u_ = mda.Universe(_simulation().topology, str(full), format="H5MD")
    assert len(u_.trajectory) == 10
    for i, ts in enumerate(u_.trajectory):
        assert np.allclose(ts.positions / 10.0, pos[i], atol=1e-5) and np.allclose(ts.forces * 10.0, frc[i], atol=1e-3)
        assert np.allclose(ts.dimensions[:3] / 10.0, np.diag(box[i]))

    _run(cut, monkeypatch, kill_at=8)  # killed while writing frame 8: the checkpoint sits at frame 6
    meta, _ = read_checkpoint(str(cut) + ".chk")
    assert meta["frames"] == 6 and meta["step"] == 30
    with H5MDTrajectory(cut) as t:
        assert len(t) == 7  # readable after the kill; frame 7 was written after the checkpoint
        written = t.positions()
    sim = _simulation(seed=99)  # a fresh process would not know the seed: the checkpoint carries the RNG state
    rep = H5MDReporter(cut, 5, checkpointInterval=2, unwrapped=True, forces=True, position_dtype=np.float64,
                       resume=True)
    assert rep.resume(sim)["step"] == 30 and sim.currentStep == 30
    sim.reporters.append(rep)
    sim.step(50 - sim.currentStep)
    rep.close()
    with H5MDTrajectory(full) as a, H5MDTrajectory(cut) as b:
        assert np.array_equal(a.steps(), b.steps())
        assert np.array_equal(b.positions()[:7], written)  # kept, and frame 7 rewritten identically
        assert np.array_equal(a.positions(), b.positions()) and np.array_equal(a.forces(), b.forces())

    with pytest.raises(CgkdError, match="output exists"):
        H5MDReporter(full, 5)
    (tmp_path / "bad.h5.chk").write_bytes(b"garbage")
    (tmp_path / "bad.h5").write_bytes(b"")
    with pytest.raises(CgkdError, match="bad.h5.chk: not a cgkd checkpoint"):
        H5MDReporter(tmp_path / "bad.h5", 5, resume=True).resume(_simulation())
