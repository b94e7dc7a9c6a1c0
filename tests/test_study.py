"""`cgkd study` end to end at toy scale through submitit's local executor, and a re-run that skips finished jobs."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cgkd import config
from cgkd.cli import main
from cgkd.dataset import CGDataset
from cgkd.h5md import H5MDWriter
from cgkd.train import train

from .conftest import FAST
from .test_distill import STUDENT


def longer_dataset(cg, path, copies=3):
    """The small dataset's frames repeated with small displacements (30 frames: halves long enough for MSDs)."""
    ds = CGDataset(cg)
    rng = np.random.default_rng(0)
    pos = np.concatenate([ds.positions + rng.normal(scale=0.005, size=ds.positions.shape) for _ in range(copies)])
    n = len(pos)
    w = H5MDWriter.create(path, ds.n_beads, group="cg", masses=ds.masses,
                          dtype={"position": np.float32, "force": np.float32})
    w.extend(np.arange(n), np.arange(n) * float(ds.times[1] - ds.times[0]), np.concatenate([ds.boxes] * copies),
             position=pos, force=np.concatenate([ds.forces] * copies))
    for key, value in (("bead_types", ds.type_names), ("residue_ids", ds.residues),
                       ("residue_names", ds.residue_names)):
        w.cgkd.create_dataset(key, data=value)
    w.cgkd.attrs["temperature_K"] = ds.temperature
    w.close()
    return str(path)


def test_tiny_study_runs_end_to_end_and_a_rerun_skips_finished_jobs(cg, tmp_path, capsys):
    data = longer_dataset(cg, tmp_path / "data.h5")
    teachers = tmp_path / "teachers"
    train(config.TrainConfig(dataset=data, out=str(teachers), ensemble=2, **{**FAST, "epochs": 1}), progress=False)
    out = tmp_path / "study"
    spec = {"dataset": data, "teachers": str(teachers), "out": str(out), "workers": 2, "seeds": [1],
            "student": {**STUDENT, "epochs": 1},
            "variants": {"FM": {"w_mapped": 1.0, "w_forces": 0.0}, "KD-1 {f}": {"members": "per-seed"}},
            "references": {"teacher": {"model": "teacher", "replicas": 1}},
            "simulate": {"steps": 160, "report": 10, "dt_fs": 4.0, "replicas": 2, "checkpoint_every": 4},
            "stress": {"timesteps": [20.0], "steps": 40},
            "compare": {"n_bins": 40, "blocks": 2, "fit_window": [0.0, 1.0]}}
    f = tmp_path / "ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert main(["study", "--config", str(f)]) == 0
    printed = capsys.readouterr().out
    assert "seed 1 main: 0/4 chains done, 4 to run (11 tasks)" in printed
    assert "seed 1 main: 4/4 chains, 11/11 tasks done; 0 job(s) running" in printed
    assert "seed 1 stress: 0/3 chains done, 3 to run (3 tasks)" in printed
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["variants"]) == {"FM", "KD-1 {f}"} and set(result["references"]) == {"teacher"}
    for name, seeds in result["variants"].items():
        entry = seeds[0]
        assert entry["seed"] == 1 and len(entry["replicas"]) == 2 and entry["stable_fraction"] is not None
        assert entry["rdf_error_mean"] > 0 and "dt20" in entry["stress"] and "forces_vs_teachers" in entry["test"]
    from cgkd.study import slug

    meta = json.loads((out / "models" / slug("KD-1 {f}") / "seed_1" / "metadata.json").read_text())
    assert meta["distillation"]["used_members"] == [0]
    assert result["noise_floor"] and all(v >= 0 for v in result["noise_floor"].values())
    table = (out / "study.md").read_text()
    assert "| FM | 1/1 |" in table and "| teacher | 1/1 |" in table and "stress dt20" in table
    assert "AA noise floor" in table and (out / "study_rdf_error.png").stat().st_size > 1000
    assert "| KD-1 {f} | FM | RDF error | 1 |" in table and "one seed: no interval" in table
    assert (out / "study_stability.png").stat().st_size > 1000 and "](study_stability.png)" in table
    d = result["aa_diffusion_nm2_per_ps"]
    assert "| AA: D (nm²/ps) | " + " | ".join(f"{d[t]:.3g}" for t in sorted(d)) + " |" in table
    fm = result["variants"]["FM"][0]["time_rescaling_D_cg_over_aa"]
    assert "| FM | " + " | ".join(f"{fm[t]:.3g}" for t in sorted(d)) + " |" in table
    overlay = json.loads((out / "compare" / "overlay" / "results.json").read_text())
    assert set(overlay["models"]) == {"FM", "KD-1 {f} (best KD)"} and "](compare/overlay/rdf.png)" in table
    for p in [*out.glob("runs/**/traj.h5"), *out.rglob("*.chk"), *out.rglob("checkpoint.pt")]:
        p.unlink()  # what a committed study folder does not keep (a fresh clone of it)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    assert main(["study", "--config", str(f)]) == 0
    printed = capsys.readouterr().out
    # main: the noise floor; FM, KD-1 (distil, 2 runs, compare), teacher (1 run, compare); stress: one run each
    assert "seed 1 main: 4/4 chains done, 0 to run (11 tasks)" in printed and "seed 1 stress: 3/3 chains done" in printed
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} and not any(out.glob("runs/**/traj.h5"))
    assert (out / "compare" / "overlay" / "rdf.png").stat().st_size > 1000  # from the comparisons' curves
    (out / "study.md").unlink()
    assert main(["study", "--config", str(f), "--report"]) == 0  # gathers only: the table comes back
    assert "| KD-1 {f} | 1/1 |" in (out / "study.md").read_text()


def test_paired_comparison_against_fm_by_hand():
    """Row - FM per seed, mean and the 95 % t-interval (t(0.975, 2) = 4.3027) computed by hand."""
    from cgkd.study_report import markdown, paired

    def rows(values):
        return [{"seed": s, "rdf_error_mean": v} for s, v in zip((1, 2, 3), values)]

    result = {"variants": {"FM": rows([0.10, 0.12, 0.11]), "wide": rows([0.08, 0.09, 0.10]),
                           "tight": rows([0.080, 0.099, 0.091]), "FM [tn]": rows([0.09, 0.10, 0.10]),
                           "KD [tn]": rows([0.08, 0.09, 0.09]), "KD [gn]": rows([0.10, 0.12, 0.11])},
              "references": {"teacher": rows([0.20, 0.22, None])}, "noise_floor": {}}
    d = paired(result)
    against, n, mean, half = d["wide"]  # differences -0.02, -0.03, -0.01: sd 0.01
    assert against == "FM" and n == 3 and mean == pytest.approx(-0.02)
    assert half == pytest.approx(4.302653 * 0.01 / np.sqrt(3), rel=1e-5)
    assert d["tight"][2] == pytest.approx(-0.02) and d["tight"][2] + d["tight"][3] < 0  # -0.020, -0.021, -0.019
    assert d["teacher"][:2] == ("FM", 2) and "FM" not in d
    # A tagged row against the FM of its tag (-0.01 each seed); that FM and a tag without FM against FM.
    assert d["KD [tn]"][0] == "FM [tn]" and d["KD [tn]"][2] == pytest.approx(-0.01)
    assert d["FM [tn]"][0] == "FM" and d["FM [tn]"][2] == pytest.approx(-0.0133333, rel=1e-4)
    assert d["KD [gn]"][0] == "FM" and d["KD [gn]"][2] == pytest.approx(0.0)
    text = markdown(result)
    assert "| wide | FM | RDF error | 3 | -0.02 | [-0.0448, 0.00484] | no difference resolved |" in text
    assert "| tight | FM | RDF error | 3 | -0.02 |" in text and "better than FM" in text
    assert "| KD [tn] | FM [tn] | RDF error | 3 | -0.01 |" in text


def test_stages_run_a_seeds_stress_beside_the_next_seeds_main_once_its_models_exist(trained, cg, tmp_path):
    """Seed by seed: a stage never holds a stress run of a model that is not distilled yet (it would be recorded
    as a failed start), and every seed's stress runs come before the last seed's main chains end."""
    from cgkd.errors import CgkdError
    from cgkd.study import Study, StudyConfig, slug

    cfg = StudyConfig(dataset=cg, teachers=str(trained[0]), out=str(tmp_path / "study"), seeds=[1, 2],
                      variants={"FM": {"w_mapped": 1.0, "w_forces": 0.0}},
                      references={"teacher": {"model": "teacher"}}, stress={"timesteps": [20.0]})
    study = Study(cfg)

    def firsts(chains):  # each chain's first task, where it writes
        return sorted(str(Path(ch[0].out).relative_to(tmp_path / "study")) for ch in chains)

    stages = list(study.stages())
    assert [label for label, _ in stages] == ["seed 1 main", "seed 1 stress + seed 2 main", "seed 2 stress"]
    assert firsts(stages[0][1]) == ["compare/noise_floor", "models/FM/seed_1", "runs/teacher/seed_1/replica_0"]
    # FM seed 1 is not distilled: only the teacher (a reference, always there) has seed-1 stress runs.
    assert firsts(stages[1][1]) == ["models/FM/seed_2", "runs/teacher/seed_1/dt20", "runs/teacher/seed_2/replica_0"]
    fm = tmp_path / "study" / "models" / slug("FM") / "seed_1"
    fm.mkdir(parents=True)
    (fm / "metadata.json").write_text("{}")
    assert [x for x in firsts(dict(study.stages())["seed 1 stress + seed 2 main"]) if x.endswith("dt20")] == [
        "runs/FM/seed_1/dt20", "runs/teacher/seed_1/dt20"]
    # rows: only the chosen rows run (the report still covers every row); a name the study lacks is refused.
    only = Study(dataclasses.replace(cfg, rows=["FM"]))
    assert [firsts(chains) for _, chains in only.stages()] == [
        ["compare/noise_floor", "models/FM/seed_1"], ["models/FM/seed_2", "runs/FM/seed_1/dt20"], []]
    assert {name for name, _ in only.models} == {"FM", "teacher"}  # what the report (aggregate) goes through
    with pytest.raises(CgkdError, match="rows: no variant or reference named 'KD'; the study has 'FM', 'teacher'"):
        Study(dataclasses.replace(cfg, rows=["KD"]))
    # A row's own seeds: FM runs a third seed, in a stage of its own after the study's seeds; the teacher does not.
    more = Study(dataclasses.replace(cfg, variants={"FM": {"w_mapped": 1.0, "w_forces": 0.0, "seeds": [1, 2, 3]}}))
    assert more.seeds == [1, 2, 3] and "seeds" not in more._distill_settings("FM", 3)
    assert [(label, firsts(chains)) for label, chains in more.stages()][2:] == [
        ("seed 2 stress + seed 3 main", ["models/FM/seed_3", "runs/teacher/seed_2/dt20"]), ("seed 3 stress", [])]
    with pytest.raises(CgkdError, match="'FM': seeds must be a list of integers >= 1, got 3"):
        Study(dataclasses.replace(cfg, variants={"FM": {"seeds": 3}}))


def test_a_failed_task_ends_its_chain_not_the_job(tmp_path):
    """run_chains (one submitit job's work): a distillation that raises stops its own chain, leaves its
    traceback in failed.txt and is returned; the job goes on with its next chain."""
    from cgkd.study import Task, run_chains

    bad = Task("distill", str(tmp_path / "bad"), {"dataset": "x.h5", "teachers": "t", "w_mapped": -1.0})
    after_bad = Task("compare", str(tmp_path / "after_bad"), {"reference": "x.h5", "models": {}})
    other = Task("compare", str(tmp_path / "other"), {"reference": "x.h5", "models": {}})
    failures = run_chains([[bad, after_bad], [other]])
    assert [f[0] for f in failures] == [bad.out] and "loss weights must be >= 0" in failures[0][1]
    assert "CgkdError" in (tmp_path / "bad" / "failed.txt").read_text()
    assert not after_bad.done() and not (tmp_path / "after_bad").exists() and other.done()


def test_a_chain_another_job_holds_is_skipped_and_run_once_free(tmp_path):
    """The local executor's jobs share one list of chains: a job skips a chain whose claim another holds
    (here this process, through a second lock file handle) and runs it once the claim is free."""
    from cgkd.fileio import output_lock
    from cgkd.study import Task, chain_claim, run_chains

    held = [Task("compare", str(tmp_path / "held"), {"reference": "x.h5", "models": {}})]
    free = [Task("compare", str(tmp_path / "free"), {"reference": "x.h5", "models": {}})]
    with output_lock(chain_claim(held)):
        assert run_chains([held, free]) == []
        assert not held[0].done() and free[0].done()
    assert run_chains([held, free]) == [] and held[0].done()


def test_a_run_whose_checkpoint_was_not_kept_starts_again(cg, trained, tmp_path):
    """A committed study folder keeps run configs and summaries, not checkpoints or trajectories: in a fresh
    clone an unfinished run has config.yaml and no traj.h5.chk. It must run again, not count as a failed run."""
    from cgkd.study import Task

    out = tmp_path / "replica_0"
    task = Task("simulate", str(out), {"model": str(trained[0] / "member_0"), "start": cg, "steps": 40,
                                       "report": 10, "dt_fs": 4.0, "checkpoint_every": 2, "threads": 1, "seed": 5})
    task.run()
    assert task.done()
    for p in [*out.rglob("*.chk"), out / "summary.json"]:
        p.unlink()
    assert (out / "config.yaml").exists() and not task.done()
    task.run()
    replica = json.loads((out / "summary.json").read_text())["replicas"][0]
    assert task.done() and replica["stable"] and replica["steps"] == 40 and replica.get("failed_check") is None
