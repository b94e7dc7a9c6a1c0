"""The shipped ethaline models work without any training: the README's OpenMM script (shortened) runs the
shipped student with cgkd's reporters, and the shipped teachers load as an ensemble for the same topology."""
import importlib.util
import os
import re

import numpy as np

from cgkd.h5md import H5MDTrajectory
from cgkd.systems import ROOT

SHIPPED = ROOT / "forcefields" / "cg" / "ethaline"


def test_the_readme_openmm_script_runs_the_shipped_student(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## In an OpenMM script"):]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for path in ("systems/ethaline/reference/ethaline_cg.pdb", "forcefields/cg/ethaline/student"):
        assert f'"{path}"' in script
        script = script.replace(f'"{path}"', repr(str(ROOT / path)))
    script = script.replace("1000", "20").replace("sim.step(100_000)", "sim.step(100)")
    script = script.replace("checkpointInterval=10", "checkpointInterval=2")
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "README.md", "exec"), {})
    with H5MDTrajectory(tmp_path / "cg.h5") as t:
        assert len(t) == 5 and list(t.steps()) == [20, 40, 60, 80, 100]
        assert np.isfinite(t.positions()).all() and 100 < t.observable("temperature").mean() < 600
    assert os.path.getsize(tmp_path / "cg.h5.chk") > 0
    assert len((tmp_path / "cg.log").read_text().splitlines()) == 6


def test_shipped_models_have_metadata_and_a_model_card():
    from cgkd.openmm import CGForceField

    student, teachers = CGForceField(SHIPPED / "student"), CGForceField(SHIPPED / "teachers")
    assert student.bead_types == teachers.bead_types and len(teachers.models) == 8
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    for heading in ("## Data", "## Architecture", "## Training", "## Test metrics", "## Structure and stability",
                    "## Speed", "## Limits"):
        assert heading in card


def test_the_model_card_is_what_its_script_writes_from_the_committed_files(tmp_path):
    """MODEL_CARD.md's numbers are the files' numbers: regenerated from the shipped models' metadata and the
    committed results (the ablation included), it is the committed card; and it finds the student in the ablation
    by its weights' hash."""
    spec = importlib.util.spec_from_file_location("model_card", ROOT / "benchmarks" / "model_card.py")
    model_card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_card)
    model_card.main(["--out", str(tmp_path / "card.md")])
    written = (tmp_path / "card.md").read_text()
    assert written == (SHIPPED / "MODEL_CARD.md").read_text(), "run python benchmarks/model_card.py and commit"
    assert 'this student is row "KD-8 {f,eps} + perturbed frames [tensornet 16x0]", seed 1' in written
