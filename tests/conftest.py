"""Shared small AA run: 10 ethaline formula units (420 atoms), 0.7 nm cutoff, a few hundred steps on CPU."""
import pytest

from cgkd import config, systems
from cgkd.aa import run_aa

SMALL = dict(system="ethaline", cutoff=0.7, npt_ps=0.4, nvt_ps=0.8, stride=20, hmr=True,
             minimize_iterations=200, checkpoint_ps=0.16, threads=1, platform="CPU")


@pytest.fixture(scope="session")
def small_box(tmp_path_factory):
    d = tmp_path_factory.mktemp("box")
    spec = systems.load_system("ethaline")
    return systems.build_box(spec, 10, d / "box.pdb", seed=7, cutoff=0.7)


@pytest.fixture(scope="session")
def small_run(small_box, tmp_path_factory):
    out = tmp_path_factory.mktemp("aa") / "aa.h5"
    cfg = config.AAConfig(pdb=str(small_box), out=str(out), **SMALL)
    summary = run_aa(cfg, progress=False)
    return cfg, summary
