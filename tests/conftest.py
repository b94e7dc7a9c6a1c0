"""Shared fixtures: a small AA run (10 ethaline formula units, 420 atoms, 0.7 nm cutoff, a few hundred steps
on CPU), its CG dataset and a small trained two-member ensemble."""
import pytest

from cgkd import config, mapping, readers, systems
from cgkd.aa import run_aa
from cgkd.train import train

FAST = dict(epochs=2, batch_size=4, cutoff=0.7, channels=8, rbf=4, val_fraction=0.2, test_fraction=0.2)
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


@pytest.fixture(scope="session")
def cg(small_run, tmp_path_factory):
    cfg, _ = small_run
    out = tmp_path_factory.mktemp("cgtrain") / "cg.h5"
    spec = mapping.MappingSpec.load(systems.SYSTEMS_DIR / "ethaline" / "mapping.yaml")
    return mapping.map_trajectory(readers.open_trajectory(cfg.out), spec, out, progress=False)["out"]


@pytest.fixture(scope="session")
def trained(cg, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "ens"
    metas = train(config.TrainConfig(dataset=cg, out=str(out), ensemble=2, **FAST), progress=False).members
    return out, metas
