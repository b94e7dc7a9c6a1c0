"""`cgkd pipeline`: the whole chain from scratch on a tiny box, its report, and a re-run that skips every stage."""
import json

import yaml

from cgkd import cli

from .conftest import FAST, SMALL


def test_pipeline_from_scratch_writes_a_report_and_a_rerun_skips_every_stage(tmp_path, capsys):
    out = tmp_path / "pipe"
    aa = {k: v for k, v in SMALL.items() if k != "system"}
    student = {"arch": "gn", "channels": 8, "layers": 1, "rbf": 4, "cutoff": 0.7, "epochs": 1, "batch_size": 4,
               "w_forces": 1.0, "w_eps": 1.0}
    cfg = {"out": str(out), "build": {"system": "ethaline", "units": 10, "cutoff": 0.7, "seed": 7}, "aa": aa,
           "map": {"system": "ethaline"}, "train": {**FAST, "ensemble": 2},
           "distill": student, "simulate": {"steps": 200, "report": 10, "threads": 1, "platform": "CPU"},
           "compare": {"blocks": 2}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["pipeline", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "pipeline.json").read_text())
    assert list(state["stages"]) == ["build", "aa", "map", "train", "label", "distill", "export", "simulate",
                                     "compare", "report"]
    for f in ("box.pdb", "aa.h5", "cg.h5", "teachers/member_1/model.pt", "student/model.pt", "student/model.ts",
              "sim/student/replica_0/traj.h5", "compare/results.json"):
        assert (out / f).exists(), f
    report = (out / "report.md").read_text()
    assert "| distill |" in report and "| rdf CHO-CL |" in report and "](compare/rdf" in report
    assert f"report: {out / 'report.md'}" in printed and "rdf CHO-CL" in printed  # the score table
    written = (out / "student" / "model.pt").stat().st_mtime_ns
    assert cli.main(["pipeline", "--config", str(path)]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 10
    assert (out / "student" / "model.pt").stat().st_mtime_ns == written


def test_pipeline_bad_sections_are_named(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "o"), "dataset": "x.h5", "teachers": "t",
                                    "distill": {"epochs": 1, "out": "elsewhere"}}))
    assert cli.main(["pipeline", "--config", str(path)]) == 2
    assert "out in its distill section are set by the pipeline" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "o"), "teachers": "t"}))
    assert cli.main(["pipeline", "--config", str(path)]) == 2
    assert "give `dataset:`" in capsys.readouterr().err
