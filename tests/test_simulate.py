"""`cgkd simulate`: output, exact resume, the stability monitor (on synthetic states and on models that
really fail), NVE energy conservation, new and replicated boxes, and bad input."""
import json
import shutil

import numpy as np
import pytest
import torch

from cgkd import CgkdError, cli, config
from cgkd.h5md import H5MDTrajectory, H5MDWriter
from cgkd.simulate import Monitor, Replica, simulate
from cgkd.model import load_checkpoint, save_checkpoint

from .conftest import FAST

RUN = dict(platform="CPU", threads=1, report=20, dt_fs=4.0)


def _sim(model, start, out, **kw):
    return simulate(config.SimConfig(model=str(model), start=str(start), out=str(out), **{**RUN, **kw}),
                    progress=False)


def test_run_writes_wrapped_and_unwrapped_positions_and_resumes_exactly(cg, trained, tmp_path):
    model, _ = trained
    full = _sim(model, cg, tmp_path / "full", steps=200)
    r = full["replicas"][0]
    assert r["stable"] and r["frames"] == 10 and full["fraction_stable"] == 1.0
    with H5MDTrajectory(r["out"]) as t:
        pos, box = t.positions(), t.boxes()
        unwrapped = t.particles["unwrapped_position/value"][:]
        assert t.cgkd["bead_types"].shape == (pos.shape[1],)
        T = t.observable("temperature")
    edge = np.diag(box[0])
    assert (pos >= -1e-5).all() and (pos <= edge + 1e-5).all()
    images = (unwrapped - pos) / edge
    assert np.abs(images - np.round(images)).max() < 1e-3
    # Unwrapped positions are continuous: no jump of half a box between frames.
    assert np.abs(np.diff(unwrapped, axis=0)).max() < 0.5 * edge.min()
    assert 150 < T.mean() < 450
    log = (tmp_path / "full" / "replica_0" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,time_ps,potential_kJ_mol") and len(log) == 11

    # Stop between two reports (110 steps), then resume to 200: the same frames as the uninterrupted run.
    _sim(model, cg, tmp_path / "part", steps=110)
    _sim(model, cg, tmp_path / "part", steps=200, resume=True)
    with H5MDTrajectory(tmp_path / "part" / "replica_0" / "traj.h5") as t:
        assert len(t) == 10
        np.testing.assert_allclose(t.particles["unwrapped_position/value"][:], unwrapped, atol=1e-4)
    assert len((tmp_path / "part" / "replica_0" / "log.csv").read_text().splitlines()) == 11


def test_monitor_checks_on_synthetic_states():
    names = ["A", "A", "B"]
    mon = Monitor(names, ["A", "B"], [[0.3, 0.4], [0.4, 0.5]], 0.8, max_neighbors=8, cutoff=1.0,
                  temperature=300.0, ndof=3000, tolerance=0.2)
    box = np.eye(3) * 3.0
    pos = np.array([[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    ke = 0.5 * 3000 * 0.008314462618 * 300.0
    assert mon(pos, box, 1.0, ke) is None and mon.closest == float("inf")  # no pair within twice its floor
    # The closest pair over its floor is exact below twice the floor, whatever the type pair: B-B at 0.44 nm
    # (1.1 x its floor 0.40) is nearer its floor than A-A at 0.36 nm (1.5 x 0.24), though farther apart.
    near = np.array([[0.5, 0.5, 0.5], [0.86, 0.5, 0.5], [2.0, 2.0, 2.0], [2.44, 2.0, 2.0]])
    pair = Monitor(["A", "A", "B", "B"], ["A", "B"], [[0.3, 0.4], [0.4, 0.5]], 0.8, max_neighbors=8, cutoff=1.0,
                   temperature=None, ndof=9, tolerance=0.2)
    assert pair(near, box, 1.0, ke) is None and pair.closest == pytest.approx(1.1)
    assert mon(pos, box, float("nan"), ke)[0] == "non-finite"
    close = pos.copy()
    close[2] = [0.1, 0.1, 2.95]  # 0.15 nm from bead 0 across the periodic boundary; A-B floor 0.32 nm
    check, detail = mon(close, box, 1.0, ke)
    assert check == "clumping" and "A-B floor 0.320 nm" in detail
    assert mon(pos, box, 1.0, 1.5 * ke)[0] == "temperature"
    assert mon(pos - 1e-17, box, 1.0, ke) is None  # tiny negative coordinates wrap into the box
    crowded = Monitor(names, ["A", "B"], [[0.3, 0.4], [0.4, 0.5]], 0.8, max_neighbors=1, cutoff=2.0,
                      temperature=None, ndof=3000, tolerance=0.2)
    assert crowded(pos, box, 1.0, 10 * ke)[0] == "neighbours"  # 3 + 2 x 3 directed pairs > 1 x 3; no T check


def _perturbed(model_dir, out, scale):
    """A copy of a trained ensemble member whose energy head's output weights are jittered and scaled by
    `scale` (the layers before it are normalised, so this is what makes the forces large)."""
    member = out / "member_0"
    member.mkdir(parents=True)
    state = load_checkpoint(model_dir / "member_0" / "model.pt")
    w = state["model"]["head.2.weight"]
    g = torch.Generator().manual_seed(0)
    state["model"]["head.2.weight"] = (w + torch.randn(w.shape, generator=g) * w.abs().mean()) * scale
    save_checkpoint(member / "model.pt", state)
    shutil.copy(model_dir / "member_0" / "metadata.json", member / "metadata.json")
    return out


def test_monitor_stops_unstable_models_and_keeps_good_output(cg, trained, tmp_path):
    model, _ = trained
    bad = _perturbed(model, tmp_path / "bad", 1.0e5)
    s = _sim(bad, cg, tmp_path / "run", steps=2000, replicas=2, checkpoint_every=1)
    assert s["fraction_stable"] == 0.0
    for r in s["replicas"]:
        assert not r["stable"] and r["failed_check"] in ("non-finite", "openmm-error", "clumping", "temperature")
        assert r["time_to_failure_ps"] < 8.0 and r["steps"] < 2000
        with H5MDTrajectory(r["out"]) as t:  # the frames before the failure, all finite
            assert len(t) == r["frames"] and np.isfinite(t.positions()).all()
        assert json.loads(open(r["out"].replace("traj.h5", "summary.json")).read())["stable"] is False
    # The CLI exits non-zero for a run that failed.
    with pytest.raises(SystemExit) as e:
        cli.main(["simulate", "--model", str(bad), "--start", str(cg), "--out", str(tmp_path / "cli"),
                  "--steps", "2000", "--report", "20", "--platform", "CPU", "--threads", "1"])
    assert e.value.code == 1


def test_model_without_priors_clumps(cg, tmp_path):
    from cgkd.train import train

    out = tmp_path / "noprior"
    train(config.TrainConfig(dataset=cg, out=str(out), **{**FAST, "prior_epsilon": 0.0}), progress=False)
    meta = json.loads((out / "member_0" / "metadata.json").read_text())
    assert meta["prior"]["kind"] == "none" and len(meta["pair_onsets_nm"]) == 3
    s = _sim(out, cg, tmp_path / "run", steps=3000)
    assert s["replicas"][0]["failed_check"] == "clumping"


def test_nve_conserves_energy(cg, trained, tmp_path):
    """Velocity Verlet at 1 fs in double precision (Reference platform): the total energy fluctuates and
    drifts far less than the kinetic energy moves (a ratio that shrinks as dt^2 for a smooth potential)."""
    model, _ = trained
    s = _sim(model, cg, tmp_path / "nve", steps=400, report=10, dt_fs=1.0, integrator="verlet",
             platform="Reference", precision="double", threads=None)
    log = np.genfromtxt(tmp_path / "nve" / "replica_0" / "log.csv", delimiter=",", names=True)
    assert s["replicas"][0]["stable"]
    total, kinetic = log["total_kJ_mol"], log["kinetic_kJ_mol"]
    assert np.std(total) < 0.01 * np.std(kinetic)
    drift = np.polyfit(log["time_ps"], total, 1)[0] * 0.4  # kJ/mol over the 0.4 ps run
    assert abs(drift) < 0.01 * np.std(kinetic)


def test_new_box_and_replicated_box(cg, trained, tmp_path):
    model, _ = trained
    s = _sim(model, cg, tmp_path / "new", steps=40, units=12, density=1.0, seed=3)
    with H5MDTrajectory(s["replicas"][0]["out"]) as t:
        types = [x.decode() for x in t.cgkd["bead_types"][:]]
        box = t.boxes(0)
        masses = t.masses()
        first = t.positions(0)
    assert types.count("CHO") == 12 and types.count("CL") == 12 and types.count("EGL") == 24
    density = masses.sum() / 6.02214076e23 / (np.linalg.det(box) * 1e-21)
    assert density == pytest.approx(1.0, rel=1e-6)
    meta = json.loads((model / "member_0" / "metadata.json").read_text())
    onsets, names = np.array(meta["pair_onsets_nm"]), meta["bead_types"]
    ti = np.array([names.index(x) for x in types])
    d = first[:, None] - first[None]
    d -= np.round(d / np.diag(box)) * np.diag(box)
    r = np.linalg.norm(d, axis=-1) + np.eye(len(types)) * 10
    # After minimisation and 40 steps no pair is far inside its closest approach in the data.
    assert (r / onsets[ti[:, None], ti[None]]).min() > 0.7
    s = _sim(model, cg, tmp_path / "rep", steps=20, replicate=2)
    assert s["beads"] == 8 * 40
    with H5MDTrajectory(cg) as t:
        edge = np.diag(t.boxes(len(t) - 1))
    with H5MDTrajectory(s["replicas"][0]["out"]) as t:
        np.testing.assert_allclose(np.diag(t.boxes(0)), 2 * edge, rtol=1e-6)


def test_bad_inputs_fail_before_any_step(cg, trained, tmp_path, monkeypatch):
    model, _ = trained
    with pytest.raises(CgkdError, match="not a cgkd model or ensemble"):
        _sim(tmp_path / "nothing", cg, tmp_path / "a", steps=20)
    other = tmp_path / "other.h5"
    shutil.copy(cg, other)
    with H5MDWriter(other, group="cg") as w:
        types = w.cgkd["bead_types"][:]
        types[types == b"CL"] = b"BR"
        del w.cgkd["bead_types"]
        w.cgkd.create_dataset("bead_types", data=types)
    with pytest.raises(CgkdError, match=r"bead types \['BR'\] are not among"):
        _sim(model, other, tmp_path / "b", steps=20)
    small = tmp_path / "small.h5"
    shutil.copy(cg, small)
    with H5MDWriter(small, group="cg") as w:
        w.particles["box/edges/value"][...] *= 0.5
    with pytest.raises(CgkdError, match="shorter than twice the model's reach"):
        _sim(model, small, tmp_path / "c", steps=20)
    with pytest.raises(CgkdError, match="no saved run settings"):
        _sim(model, cg, tmp_path / "e", steps=20, resume=True)
    _sim(model, cg, tmp_path / "d", steps=20)
    (tmp_path / "d" / "replica_0" / "traj.h5.chk").unlink()
    with pytest.raises(CgkdError, match="nothing to resume"):
        _sim(model, cg, tmp_path / "d", steps=40, resume=True)
    # A run that replaces a finished one and is cut short leaves no summary of the old run behind (a study
    # would take the old summary for the new run's and compare its partial trajectory).
    def cut_short(self, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(Replica, "run", cut_short)
    with pytest.raises(KeyboardInterrupt):
        _sim(model, cg, tmp_path / "d", steps=20, overwrite=True)
    assert not list((tmp_path / "d").rglob("summary.json"))
    with pytest.raises(CgkdError, match="--dt-fs must be positive"):
        _sim(model, cg, tmp_path / "f", steps=20, dt_fs=0.0)
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c", "e", "f"))


def test_replicated_boxes_keep_multi_bead_molecules_whole(small_run, tmp_path):
    """Beads wrapped one by one leave some two-bead cholines split across the box; tiles must not."""
    import openmm.unit as u

    from cgkd import mapping, readers
    from cgkd.openmm import topology_from_dataset
    from cgkd.simulate import replicate
    from cgkd.systems import SYSTEMS_DIR

    cfg, _ = small_run
    spec = mapping.MappingSpec.load(SYSTEMS_DIR / "ethaline" / "mapping_choline2.yaml")
    cg2 = mapping.map_trajectory(readers.open_trajectory(cfg.out), spec, tmp_path / "cg2.h5", progress=False)["out"]
    top, pos = topology_from_dataset(cg2, 0)
    edge = np.diag(np.array(top.getPeriodicBoxVectors().value_in_unit(u.nanometer)))
    pairs = [[a.index for a in r.atoms()] for r in top.residues() if len(list(r.atoms())) == 2]
    d = np.array([pos[j] - pos[i] for i, j in pairs])
    bonds = np.linalg.norm(d - np.round(d / edge) * edge, axis=1)  # minimum image in the original box
    assert (np.abs(d) > edge / 2).any()  # the stored frame has split molecules: the case that broke tiling
    big, bpos = replicate(top, pos, 2)
    n = top.getNumAtoms()
    for copy in range(8):
        got = np.linalg.norm(np.array([bpos[copy * n + j] - bpos[copy * n + i] for i, j in pairs]), axis=1)
        assert np.allclose(got, bonds, atol=1e-6)  # direct distances, no wrapping: every molecule whole
