"""Teacher labels (`cgkd label`) and students (`cgkd distill`): labels against direct evaluation, centring,
the cache (reuse, stale refusal), the loss terms, exact resume, extra frames, bad input."""
import json
import shutil

import numpy as np
import pytest
import torch

from cgkd import CgkdError, config
from cgkd.cli import main
from cgkd.dataset import CGDataset
from cgkd.distill import distill
from cgkd.h5md import H5MDWriter
from cgkd.labels import Labels, label
from cgkd.model import load_checkpoint, load_model, save_checkpoint
from cgkd.train import build_model

STUDENT = dict(arch="gn", channels=8, layers=1, rbf=4, cutoff=0.6, epochs=2, batch_size=2)


def student_cfg(cg, teachers, out, **kw):
    return config.DistillConfig(dataset=cg, teachers=str(teachers), out=str(out), **{**STUDENT, **kw})


@pytest.fixture(scope="module")
def teachers(trained, tmp_path_factory):
    """A private copy of the two-member ensemble (tests below change members and write label caches)."""
    out, _ = trained
    dst = tmp_path_factory.mktemp("teachers") / "ens"
    shutil.copytree(out, dst)
    return dst


def test_labels_equal_each_member_and_are_centred(cg, teachers):
    labels, status = label(teachers, cg, progress=False)
    assert status == "new" and labels.path.parent == teachers / "labels"
    ds = CGDataset(cg)
    names = np.array(ds.type_names)
    assert labels.forces.shape == (len(ds), 2, ds.n_beads, 3)
    for k in (0, 1):
        model = load_model(teachers / f"member_{k}")
        meta = json.loads((teachers / f"member_{k}" / "metadata.json").read_text())
        types = model.type_index(ds.type_names)
        for frame in (0, 7):
            eps, _, f = model.energy_forces(types, torch.from_numpy(ds.positions[frame]),
                                            torch.from_numpy(ds.boxes[frame]))
            assert np.allclose(labels.forces[frame, k], f.detach().numpy(), rtol=1e-5, atol=1e-4)
            offset = np.array([meta["eps_offsets_kJ_mol"][t] for t in ds.type_names])
            assert np.allclose(labels.eps[frame, k], eps.detach().numpy() - offset, atol=1e-4)
        # Centred on the member's training frames: zero mean per bead type there; E is the sum of the eps.
        lo, hi = meta["split"]["train"]
        for t in set(ds.type_names):
            assert abs(labels.eps[lo:hi, k][:, names == t].mean()) < 1e-4
        assert np.allclose(labels.energy[:, k], labels.eps[:, k].astype(np.float64).sum(axis=1), rtol=1e-6)
    mean = labels.mean()
    assert np.allclose(mean["forces"], labels.forces.mean(axis=1))
    assert np.allclose(labels.mean([1])["forces"], labels.forces[:, 1])
    unc = labels.uncertainty(ds.type_names)
    assert set(unc) == {"CHO", "CL", "EGL"} and all(v > 0 for v in unc.values())
    cho = np.array(ds.type_names) == "CHO"
    assert unc["CHO"] == pytest.approx(np.sqrt(((labels.forces[:, 0] - labels.forces[:, 1])[:, cho] ** 2).mean()) / 2)


def test_labels_reused_when_unchanged_and_refused_when_stale(cg, teachers, tmp_path):
    first, _ = label(teachers, cg, progress=False)
    mtime = first.path.stat().st_mtime_ns
    assert main(["label", "--teachers", str(teachers), "--dataset", cg]) == 0  # the CLI reuses them too
    assert first.path.with_suffix(".uncertainty.png").stat().st_size > 0
    again, status = label(teachers, cg, progress=False)
    assert status == "reused" and again.path == first.path and first.path.stat().st_mtime_ns == mtime
    # A changed member: the cache gets a new file; the old file named explicitly is refused, saying why.
    changed = tmp_path / "changed"
    shutil.copytree(teachers, changed, ignore=shutil.ignore_patterns("labels"))
    state = load_checkpoint(changed / "member_1" / "model.pt")
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(changed / "member_1" / "model.pt", state)
    with pytest.raises(CgkdError, match="stale labels, these members changed since: .*member_1"):
        label(changed, cg, out=first.path, progress=False)
    new, status = label(changed, cg, progress=False)
    assert status == "new" and new.path != first.path
    assert not np.allclose(new.forces[:, 1], first.forces[:, 1]) and np.allclose(new.forces[:, 0], first.forces[:, 0])
    # A label file made for another dataset is refused too, and left as it was.
    other = tmp_path / "other.h5"
    shutil.copy(cg, other)
    with H5MDWriter(other) as w:
        w.cgkd.attrs["note"] = "another file"
    before = first.path.read_bytes()
    with pytest.raises(CgkdError, match=f"stale labels, it was made for {cg}"):
        label(teachers, other, out=first.path, progress=False)
    assert first.path.read_bytes() == before
    # A damaged label file: refused, and replaced only with overwrite.
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(CgkdError, match="not a readable label file"):
        label(teachers, cg, out=junk, progress=False)
    assert junk.read_bytes() == b"not hdf5"
    assert label(teachers, cg, out=junk, overwrite=True, progress=False)[1] == "new"


def test_interrupted_labelling_resumes(cg, teachers, tmp_path, monkeypatch):
    import cgkd.labels as lab

    out = tmp_path / "lab.h5"
    calls = {"n": 0}

    def flaky_flush(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(lab.h5py.File, "flush", flaky_flush, raising=False)
    with pytest.raises(KeyboardInterrupt):
        label(teachers, cg, out=out, batch_size=4, progress=False)
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and partial.exists()
    import h5py

    with h5py.File(partial, "r") as f:
        assert f["done"][:].sum() == 8  # two batches of 4 done when interrupted; the resume labels the last 2
    labels, status = label(teachers, cg, out=out, batch_size=4, progress=False)
    assert status == "resumed"
    ref, _ = label(teachers, cg, out=tmp_path / "ref.h5", batch_size=4, progress=False)
    assert np.array_equal(labels.forces, ref.forces) and np.array_equal(labels.eps, ref.eps)


def test_student_energy_is_sum_of_eps_and_the_eps_term_trains_the_network(cg, teachers, tmp_path):
    from cgkd.labels import Teachers

    t = Teachers(teachers)
    ds = CGDataset(cg)
    cfg = student_cfg(cg, teachers, tmp_path / "s", w_forces=0.0, w_eps=1.0, epochs=1)
    torch.manual_seed(cfg.seed)
    _, initial = build_model(cfg, ds, t.metas[0]["split"], teacher=t)
    types = initial.type_index(ds.type_names)
    pos, box = torch.from_numpy(ds.positions[0]), torch.from_numpy(ds.boxes[0])
    eps, energy = initial(types, pos, box)
    no_net = initial.prior(types, *initial.pairs(pos, torch.zeros_like(types), box)[:2])
    assert energy.item() == pytest.approx(eps.sum().item() + no_net.item(), rel=1e-5, abs=1e-5)
    meta = distill(cfg, progress=False)
    student = load_model(tmp_path / "s")
    assert student.hparams["arch"] == "gn" and student.prior is not None
    assert torch.equal(student.prior.r0, t.model.prior.r0)  # inherited, unchanged
    changed = {k for k, v in initial.state_dict().items()
               if v.is_floating_point() and not torch.allclose(v, student.state_dict()[k])}
    assert any(k.startswith("representation.") for k in changed) and any(k.startswith("head.") for k in changed)
    rows = (tmp_path / "s" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "train_loss", "loss_eps"] and "val_teacher_force_rmse" in rows[0]
    m = meta["metrics"]["test"]
    assert set(m["forces_vs_mapped"]) == {"all", "CHO", "CL", "EGL"} and "all" in m["eps_vs_teachers_rmse"]
    assert meta["distillation"]["weights"] == {"mapped": 0.0, "forces": 0.0, "energy": 0.0, "eps": 1.0}
    assert meta["split"] == t.metas[0]["split"]


def test_distill_resume_continues_exactly_and_the_student_runs_in_openmm(cg, teachers, tmp_path):
    kw = dict(w_mapped=0.5, w_energy=1.0, w_eps=1.0)
    distill(student_cfg(cg, teachers, tmp_path / "full", epochs=3, **kw), progress=False)
    part = student_cfg(cg, teachers, tmp_path / "part", epochs=2, **kw)
    distill(part, progress=False)
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["state"]["epoch"] == 2
    before = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    distill(config.DistillConfig(**{**vars(part), "epochs": 3, "resume": True}), progress=False)
    rows = [(tmp_path / d / "metrics.csv").read_text().splitlines() for d in ("full", "part")]
    assert rows[1][:3] == before  # the first two epochs (timings included) were kept, not redone
    assert rows[0][0] == rows[1][0] and len(rows[1]) == 4
    values = [np.array([[float(x) for x in r.split(",")[:-1]] for r in rr[1:]]) for rr in rows]  # not seconds
    assert np.allclose(values[0], values[1], rtol=1e-5)
    # A student folder is a model folder: CGForceField builds an OpenMM System equal to the eager student.
    import openmm
    import openmm.unit as u

    from cgkd.openmm import CGForceField, topology_from_dataset

    top, pos = topology_from_dataset(cg, 3)
    system = CGForceField(tmp_path / "full").createSystem(top)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(pos)
    e_omm = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    student = load_model(tmp_path / "full")
    ds = CGDataset(cg)
    e = student(student.type_index(ds.type_names), torch.from_numpy(ds.positions[3]),
                torch.from_numpy(ds.boxes[3]))[1].item()
    assert e_omm == pytest.approx(e, rel=1e-4, abs=1e-3)


def test_extra_frames_join_training_with_agreement_weights(cg, teachers, tmp_path):
    ds = CGDataset(cg)
    extra = tmp_path / "extra.h5"
    rng = np.random.default_rng(3)
    w = H5MDWriter.create(extra, ds.n_beads, group="cg", fields=("position",))
    # Three frames barely moved and three far from anything the teachers saw (where members disagree more
    # than on their training frames, so that some weights fall below 1).
    scale = np.array([0.005] * 3 + [0.08] * 3)[:, None, None]
    pos = ds.positions[:6] + scale * rng.normal(size=ds.positions[:6].shape)
    w.extend(np.arange(6), np.arange(6.0), ds.boxes[:6], position=pos)
    w.cgkd.create_dataset("bead_types", data=ds.type_names)
    w.cgkd.create_dataset("residue_ids", data=ds.residues)
    w.close()
    meta = distill(student_cfg(cg, teachers, tmp_path / "x", epochs=1, extra=str(extra),
                               extra_weighting="agreement"), progress=False)
    info = meta["distillation"]["extra"][0]
    assert info["frames"] == 6
    # Weights by the formula: min(1, (s_ref / s)^2), s the RMS force std across members of a frame.
    ref = label(teachers, cg, progress=False)[0].mean()["force_std"][slice(*meta["split"]["train"])]
    std = Labels(next((teachers / "labels").glob("extra-*.h5"))).mean()["force_std"]
    s = np.sqrt((std ** 2).mean(axis=(1, 2)))
    expected = np.minimum(1.0, np.sqrt((ref ** 2).mean()) ** 2 / s ** 2)
    assert info["mean_weight"] == pytest.approx(expected.mean(), rel=1e-5)
    assert expected.min() < 1, f"no frame less certain than the training frames: {s / np.sqrt((ref ** 2).mean())}"
    assert Labels(next((teachers / "labels").glob("extra-*.h5"))).forces.shape[:2] == (6, 2)
    # --perturb makes such frames itself: displaced copies of the training frames only, labelled and cached.
    meta = distill(student_cfg(cg, teachers, tmp_path / "p", epochs=1, perturb=0.01, perturb_copies=2),
                   progress=False)
    info = meta["distillation"]["extra"][0]
    lo, hi = meta["split"]["train"]
    assert info["frames"] == 2 * (hi - lo) and "perturbed-0.01nm-x2-seed1" in info["path"]
    moved = CGDataset(info["path"])
    d = moved.positions - np.tile(ds.positions[lo:hi], (2, 1, 1))
    assert 0.005 < d.std() < 0.015 and np.array_equal(moved.boxes, np.tile(ds.boxes[lo:hi], (2, 1, 1)))


def test_bad_input_gives_one_line_errors_and_leaves_nothing(cg, teachers, tmp_path, capsys):
    out = tmp_path / "student"
    base = ["distill", "--teachers", str(teachers), "--dataset", cg, "--out", str(out), "--epochs", "1",
            "--arch", "gn", "--channels", "8", "--cutoff", "0.6"]
    assert main(base + ["--w-forces", "0"]) == 2
    assert "all loss weights" in capsys.readouterr().err and not out.exists()
    other = tmp_path / "other.h5"
    shutil.copy(cg, other)
    with H5MDWriter(other) as w:
        w.cgkd.attrs["note"] = "changed"
    assert main(base[:4] + [str(other)] + base[5:]) == 2
    assert "not the dataset the teachers" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--members", "5"]) == 2
    assert "indices must be in 0..1" in capsys.readouterr().err and not out.exists()
    # Trajectories the teachers cannot label: other bead types, boxes smaller than their reach.
    ds = CGDataset(cg)
    for name, types, scale in (("types.h5", ["URE"] * ds.n_beads, 1.0), ("small.h5", ds.type_names, 0.5)):
        w = H5MDWriter.create(tmp_path / name, ds.n_beads, group="cg", fields=("position",))
        w.extend(np.arange(2), np.arange(2.0), ds.boxes[:2] * scale, position=ds.positions[:2] * scale)
        w.cgkd.create_dataset("bead_types", data=types)
        w.close()
        assert main(["label", "--teachers", str(teachers), "--dataset", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("unknown to the teachers" in err or "too small for the teachers' reach" in err)
    assert not list((teachers / "labels").glob("types-*")) and not list((teachers / "labels").glob("small-*"))
