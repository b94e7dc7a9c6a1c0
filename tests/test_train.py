"""Training, exact resume, metadata, bad input, and the TorchScript/TorchForce export."""
import json

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from cgkd import CgkdError, config, mapping, readers
from cgkd.export import export, torch_force
from cgkd.h5md import H5MDTrajectory, H5MDWriter
from cgkd.systems import SYSTEMS_DIR
from cgkd.model import load_checkpoint, load_model
from cgkd.train import train

from .conftest import FAST


def test_ensemble_metadata_and_contiguous_split(trained):
    out, metas = trained
    assert [m["seed"] for m in metas] == [1, 2]
    meta = json.loads((out / "member_0" / "metadata.json").read_text())
    assert meta["split"] == {"train": [0, 6], "val": [6, 8], "test": [8, 10]}
    assert set(meta["metrics"]["test"]) == {"all", "CHO", "CL", "EGL"}
    assert meta["force_energy_consistency_max_rel"] < 1e-4
    assert meta["bead_types"] == ["CHO", "CL", "EGL"] and meta["hparams"]["cutoff"] == 0.7
    rows = (out / "member_0" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_force_rmse") and len(rows) == 3
    # Members differ in seed, so in their predictions.
    a, b = (load_model(out / f"member_{k}") for k in (0, 1))
    assert not torch.allclose(a.head[0].weight, b.head[0].weight)


def test_resume_continues_exactly(cg, tmp_path):
    full = config.TrainConfig(dataset=cg, out=str(tmp_path / "full"), **{**FAST, "epochs": 3})
    train(full, progress=False)
    part = config.TrainConfig(dataset=cg, out=str(tmp_path / "part"), **{**FAST, "epochs": 2})
    train(part, progress=False)
    assert load_checkpoint(tmp_path / "part" / "member_0" / "checkpoint.pt")["state"]["epoch"] == 2
    before = (tmp_path / "part" / "member_0" / "metrics.csv").read_text().splitlines()
    train(config.TrainConfig(**{**vars(part), "epochs": 3, "resume": True}), progress=False)
    rows = [(tmp_path / d / "member_0" / "metrics.csv").read_text().splitlines() for d in ("full", "part")]
    assert rows[1][:3] == before  # epochs 1-2 kept as written (timings included): continued, not redone
    losses = [[float(r.split(",")[1]) for r in rr[1:]] for rr in rows]
    assert len(losses[1]) == 3 and np.allclose(losses[0], losses[1], rtol=1e-6)
    # Resuming a finished member returns it as written: the file (whose hash keys label caches) is not rewritten.
    model_pt = tmp_path / "part" / "member_0" / "model.pt"
    written = model_pt.stat().st_mtime_ns
    train(config.TrainConfig(**{**vars(part), "epochs": 3, "resume": True}), progress=False)
    assert model_pt.stat().st_mtime_ns == written


def test_parallel_members_equal_serial_ones_and_the_ensemble_mean_is_evaluated(cg, trained, tmp_path):
    out, metas = trained
    result = train(config.TrainConfig(dataset=cg, out=str(tmp_path / "par"), ensemble=2, workers=2, **FAST),
                   progress=False)
    par = result.members
    for a, b in zip(metas, par):
        assert a["seed"] == b["seed"]
        assert a["metrics"]["test"]["all"]["rmse"] == pytest.approx(b["metrics"]["test"]["all"]["rmse"], rel=1e-4)
    assert result.ensemble == json.loads((tmp_path / "par" / "ensemble.json").read_text())  # returned = written
    ens = json.loads((out / "ensemble.json").read_text())
    members = [load_model(out / f"member_{k}") for k in (0, 1)]
    # The ensemble prediction is the mean force of the members: check it on one test frame by hand.
    with H5MDTrajectory(cg) as t:
        frame = metas[0]["split"]["test"][0]
        pos = torch.tensor(t.positions(frame), dtype=torch.float32)
        box = torch.tensor(t.boxes(frame), dtype=torch.float32)
        ref = torch.tensor(t.forces(frame), dtype=torch.float32)
        types = members[0].type_index([x.decode() for x in t.cgkd["bead_types"][:]])
    mean = sum(m.energy_forces(types, pos.clone(), box)[2].detach() for m in members) / 2
    from cgkd.dataset import CGDataset
    from cgkd.train import evaluate

    ds = CGDataset(cg)
    got = evaluate(members, ds, types, np.array([frame]), 4)["all"]["rmse"]
    assert got == pytest.approx(float(((mean - ref) ** 2).mean().sqrt()), rel=1e-5)
    assert ens["average_member_rmse"] == pytest.approx(np.mean([m["rmse"] for m in ens["members"]]))
    assert "ensemble_mean" in ens


def test_bad_inputs(cg, trained, tmp_path):
    out, _ = trained
    with pytest.raises(CgkdError, match="output exists"):
        train(config.TrainConfig(dataset=cg, out=str(out), **FAST), progress=False)
    with pytest.raises(CgkdError, match="larger than half the box"):
        train(config.TrainConfig(dataset=cg, out=str(tmp_path / "big"), **{**FAST, "cutoff": 2.0}), progress=False)
    noforce = tmp_path / "noforce.h5"
    with H5MDTrajectory(cg) as t:
        pos, box = t.positions(), t.boxes()
        types = t.cgkd["bead_types"][:]
    w = H5MDWriter.create(noforce, pos.shape[1], group="cg", fields=("position",))
    w.extend(np.arange(len(pos)), np.arange(len(pos), dtype=float), box, position=pos)
    w.cgkd.create_dataset("bead_types", data=types)
    w.close()
    with pytest.raises(CgkdError, match="no forces in this dataset"):
        train(config.TrainConfig(dataset=str(noforce), out=str(tmp_path / "nf"), **FAST), progress=False)
    assert not (tmp_path / "nf").exists()  # bad input leaves no (empty) output folder behind
    junk = tmp_path / "junk" / "model.pt"
    junk.parent.mkdir()
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CgkdError, match="not a readable cgkd checkpoint"):
        load_model(junk.parent)
    torch.save({"some": "thing"}, junk)
    with pytest.raises(CgkdError, match="not a cgkd model checkpoint"):
        load_model(junk.parent)
    model = load_model(out / "member_0")
    with pytest.raises(CgkdError, match="the data has \\['URE'\\]"):
        export(model, ["CHO", "URE"], tmp_path / "x.ts")


def test_torchforce_matches_eager_ensemble(cg, trained, tmp_path):
    out, _ = trained
    models = [load_model(out / f"member_{k}") for k in (0, 1)]
    with H5MDTrajectory(cg) as t:
        pos, box = t.positions(0).astype(np.float64), t.boxes(0)
        names = [x.decode() for x in t.cgkd["bead_types"][:]]
    path = export(models, names, tmp_path / "ens.ts")
    system = openmm.System()
    for _ in names:
        system.addParticle(100.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(torch_force(path))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(pos)
    state = ctx.getState(getEnergy=True, getForces=True)
    types = models[0].type_index(names)
    energies, forces = [], []
    for m in models:
        _, e, f = m.energy_forces(types, torch.tensor(pos, dtype=torch.float32), torch.tensor(box, dtype=torch.float32))
        energies.append(e.item())
        forces.append(f.detach().numpy())
    e_ref, f_ref = np.mean(energies), np.mean(forces, axis=0)
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(e_ref, rel=1e-4, abs=1e-4)
    f_omm = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    assert np.abs(f_omm - f_ref).max() <= 1e-4 * np.abs(f_ref).max() + 1e-5


def test_two_bead_choline_gets_bonded_priors_and_exports(small_run, tmp_path):
    cfg, _ = small_run
    spec = mapping.MappingSpec.load(SYSTEMS_DIR / "ethaline" / "mapping_choline2.yaml")
    cg2 = mapping.map_trajectory(readers.open_trajectory(cfg.out), spec, tmp_path / "cg2.h5", progress=False)["out"]
    metas = train(config.TrainConfig(dataset=cg2, out=str(tmp_path / "m2"), **{**FAST, "epochs": 1}),
                  progress=False).members
    assert metas[0]["prior"]["bonded"]["bonds"] == 10  # one HEAD-TAIL bond per choline
    assert metas[0]["force_energy_consistency_max_rel"] < 1e-4
    model = load_model(tmp_path / "m2" / "member_0")
    assert model.bonded is not None and model.molecule.numel() == 50
    with H5MDTrajectory(cg2) as t:
        names = [x.decode() for x in t.cgkd["bead_types"][:]]
        pos, box = t.positions(0), t.boxes(0)
    scripted = torch.jit.load(str(export(model, names, tmp_path / "m2.ts")))
    eager = model(model.type_index(names), torch.tensor(pos), torch.tensor(box))[1].item()
    assert scripted(torch.tensor(pos, dtype=torch.float64), torch.tensor(box, dtype=torch.float64)).item() == \
        pytest.approx(eager, rel=1e-5)
    # Through OpenMM, the priors as native forces (walls between molecules, harmonic HEAD-TAIL bonds).
    from cgkd.openmm import CGForceField, topology_from_dataset

    top, pos0 = topology_from_dataset(cg2)
    system = CGForceField(tmp_path / "m2").createSystem(top)
    assert {f.getName() for f in system.getForces()} >= {"cgkd repulsive prior", "cgkd bond prior"}
    e_omm, f_omm = _omm_energy_forces(system, pos0)
    _, e, f = model.energy_forces(model.type_index(names), torch.tensor(pos0, dtype=torch.float32),
                                  torch.tensor(box, dtype=torch.float32))
    assert e_omm == pytest.approx(e.item(), rel=1e-4, abs=1e-3)
    assert np.abs(f_omm - f.detach().numpy()).max() <= 1e-4 * np.abs(f.detach().numpy()).max() + 1e-4


def _omm_energy_forces(system, pos, platform="CPU", properties=None):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform),
                         properties or {})
    ctx.setPositions(pos)
    s = ctx.getState(getEnergy=True, getForces=True)
    return (s.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
            s.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))


def test_cg_forcefield_system_equals_eager_model_with_priors(cg, trained, tmp_path):
    from cgkd.openmm import CGForceField, topology_from_dataset

    out, _ = trained
    ff = CGForceField(out)
    for frame, pushed in ((0, False), (5, False), (5, True)):
        top, pos = topology_from_dataset(cg, frame)
        if pushed:  # a pair inside its wall, so the priors' forces are part of the comparison
            pos = pos.copy()
            pos[1] = pos[0] + np.array([0.2, 0.0, 0.0])
        system = ff.createSystem(top)
        names = [a.name for a in top.atoms()]
        assert [system.getParticleMass(i).value_in_unit(u.dalton) for i in (0, 10, 20)] == pytest.approx(
            [104.17, 35.45, 62.07], abs=0.02)
        e_omm, f_omm = _omm_energy_forces(system, pos)
        types = ff.models[0].type_index(names)
        energies, forces = [], []
        for m in ff.models:
            _, e, f = m.energy_forces(types, torch.tensor(pos, dtype=torch.float32),
                                      torch.tensor(top.getPeriodicBoxVectors().value_in_unit(u.nanometer),
                                                   dtype=torch.float32))
            energies.append(e.item())
            forces.append(f.detach().numpy())
        assert e_omm == pytest.approx(np.mean(energies), rel=1e-4, abs=1e-3)
        f_ref = np.mean(forces, axis=0)
        assert np.abs(f_omm - f_ref).max() <= 1e-4 * np.abs(f_ref).max() + 1e-4
        if pushed:
            assert np.linalg.norm(f_ref[1]) > 10  # the wall is active


def test_pythonforce_backend_equals_torchforce(cg, trained):
    """OpenMM's PythonForce calling PyTorch gives the TorchForce system's energy and forces (priors active)."""
    from cgkd.openmm import CGForceField, topology_from_dataset

    out, _ = trained
    ff = CGForceField(out)
    top, pos = topology_from_dataset(cg, 4)
    pos = pos.copy()
    pos[1] = pos[0] + np.array([0.2, 0.0, 0.0])  # a pair inside its wall: the priors take part
    e_t, f_t = _omm_energy_forces(ff.createSystem(top, backend="torchforce"), pos)
    e_p, f_p = _omm_energy_forces(ff.createSystem(top, backend="pythonforce"), pos)
    assert e_p == pytest.approx(e_t, rel=1e-5, abs=1e-4)
    assert np.abs(f_p - f_t).max() <= 1e-4 * np.abs(f_t).max() + 1e-4
    assert np.abs(f_t[1]).max() > 10  # the wall pushes


def test_stability_reporter_in_an_openmm_script(cg, trained):
    """The README's script pattern: a plain app.Simulation with cgkd's stability reporter runs quietly while
    stable and stops with a CgkdError naming the check, the time and the beads once a pair clumps."""
    import openmm.app as app

    from cgkd.openmm import CGForceField, StabilityReporter, topology_from_dataset

    out, _ = trained
    ff = CGForceField(out)
    top, pos = topology_from_dataset(cg, 0)

    def simulation(positions, interval):
        integ = openmm.LangevinMiddleIntegrator(298.15 * u.kelvin, 1 / u.picosecond, 2 * u.femtosecond)
        sim = app.Simulation(top, ff.createSystem(top), integ, openmm.Platform.getPlatformByName("CPU"))
        sim.context.setPositions(positions)
        sim.context.setVelocitiesToTemperature(298.15 * u.kelvin, 1)
        sim.reporters.append(StabilityReporter(ff, top, interval, temperature=298.15, tolerance=1.0))
        return sim

    simulation(pos, 5).step(10)  # stable: no error
    # A CHO-CL pair at 80% of its clumping floor (0.7 x the onset): the first check fires. (Far deeper, the wall
    # gives NaN coordinates within one 2 fs step, before any reporter can run.)
    names = [a.name for a in top.atoms()]
    i, j = names.index("CHO"), names.index("CL")
    onset = ff.onsets[ff.bead_types.index("CHO")][ff.bead_types.index("CL")]
    bad = pos.copy()
    bad[j] = bad[i] + np.array([0.8 * 0.7 * onset, 0.0, 0.0])
    with pytest.raises(CgkdError, match=rf"unstable at 0.002 ps \(step 1\): clumping: beads ({i}|{j}) \(C\w+\) and "):
        simulation(bad, 1).step(10)


def test_cg_forcefield_bad_inputs(cg, trained, tmp_path):
    from cgkd.openmm import CGForceField, topology_from_dataset

    out, _ = trained
    with pytest.raises(CgkdError, match="not a cgkd model or ensemble"):
        CGForceField(tmp_path)
    ff = CGForceField(out)
    top, _ = topology_from_dataset(cg)
    for atom in list(top.atoms())[:1]:
        atom.name = "URE"
    with pytest.raises(CgkdError, match=r"bead types \['URE'\] are not among"):
        ff.createSystem(top)
    top, _ = topology_from_dataset(cg)
    top.setPeriodicBoxVectors(np.eye(3) * 1.0 * u.nanometer)
    with pytest.raises(CgkdError, match="shorter than twice the model's reach"):
        ff.createSystem(top)
