"""GPU checks (issue 12): the shipped student on OpenMM's CUDA platform gives the CPU platform's energy and
forces (both backends, single and mixed precision), and a short `cgkd simulate --platform CUDA` run is stable.
Skipped where OpenMM has no CUDA platform or torch sees no GPU (every machine of `make test` so far)."""
import json

import numpy as np
import openmm
import pytest

from cgkd.systems import ROOT

from .test_train import _omm_energy_forces

STUDENT = ROOT / "forcefields" / "cg" / "ethaline" / "student"
DATASET = ROOT / "systems" / "ethaline" / "reference" / "ethaline_cg.h5"


def _cuda():
    try:
        import torch

        openmm.Platform.getPlatformByName("CUDA")
        return torch.cuda.is_available()
    except Exception:  # OpenMM raises a plain Exception for an unknown platform
        return False


pytestmark = pytest.mark.skipif(not _cuda(), reason="needs OpenMM's CUDA platform and a CUDA GPU")


@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
@pytest.mark.parametrize("precision", ["single", "mixed"])
def test_cuda_gives_the_cpu_platforms_energy_and_forces(backend, precision):
    from cgkd.openmm import CGForceField, topology_from_dataset

    ff = CGForceField(STUDENT)
    top, pos = topology_from_dataset(DATASET, -1)
    e_cpu, f_cpu = _omm_energy_forces(ff.createSystem(top, backend=backend), pos, "CPU")
    e_gpu, f_gpu = _omm_energy_forces(ff.createSystem(top, backend=backend, precision=precision), pos, "CUDA",
                                  {"Precision": precision})
    assert e_gpu == pytest.approx(e_cpu, rel=1e-4, abs=1e-2)
    assert np.abs(f_gpu - f_cpu).max() <= 1e-3 * np.abs(f_cpu).max() + 1e-2


def test_a_short_cuda_run_of_the_shipped_student_is_stable(tmp_path):
    from cgkd import config
    from cgkd.simulate import simulate

    out = tmp_path / "cuda"
    simulate(config.SimConfig(model=str(STUDENT), start=str(DATASET), platform="CUDA", dt_fs=10.0, steps=2000,
                              report=100, out=str(out)), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["platform"] == "CUDA" and summary["fraction_stable"] == 1.0
