"""`cgkd compare`: scores, report, plots, the analysis notebook, and bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

from cgkd import CgkdError, mapping, readers, report
from cgkd.h5md import H5MDWriter
from cgkd.systems import SYSTEMS_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def datasets(small_run, tmp_path_factory):
    cfg, _ = small_run
    d = tmp_path_factory.mktemp("cmp")
    spec = mapping.MappingSpec.load(SYSTEMS_DIR / "ethaline" / "mapping.yaml")
    ref = mapping.map_trajectory(readers.open_trajectory(cfg.out), spec, d / "ref.h5", progress=False)["out"]
    # A "model": the reference with every bead jittered, so its scores are measurably worse than zero.
    rng = np.random.default_rng(0)
    from cgkd.h5md import H5MDTrajectory
    with H5MDTrajectory(ref) as t:
        pos, box, steps, times = t.positions(), t.boxes(), t.steps(), t.times()
        types = t.cgkd["bead_types"][:]
    w = H5MDWriter.create(d / "model.h5", pos.shape[1], group="cg", fields=("position",))
    w.extend(steps, times, box, position=pos + rng.normal(scale=0.03, size=pos.shape))
    w.cgkd.create_dataset("bead_types", data=types)
    w.close()
    return ref, str(d / "model.h5"), d


def test_compare_scores_report_and_plots(datasets):
    ref, model, d = datasets
    r = report.compare(ref, {"self": [ref], "jitter": [model, model]}, d / "report",
                       report.CompareSettings(r_max=0.75, n_bins=40), progress=False)
    s = r["scores"]
    assert all(v["mean"] == pytest.approx(0.0, abs=1e-12) for v in s["self"].values())
    assert s["jitter"]["rdf CHO-CL"]["mean"] > 0.05 and s["jitter"]["rdf CHO-CL"]["replicas"] == 2
    md = (d / "report" / "report.md").read_text()
    assert "| rdf CHO-CL |" in md and "![rdf.png](rdf.png)" in md
    for png in r["plots"]:
        assert (d / "report" / png).stat().st_size > 10_000
    res = json.loads((d / "report" / "results.json").read_text())
    assert set(res["scores"]) == {"self", "jitter"}


def test_notebook_runs_top_to_bottom(datasets, monkeypatch):
    ref, model, d = datasets
    monkeypatch.setenv("CGKD_REFERENCE", ref)
    monkeypatch.setenv("CGKD_MODELS", json.dumps({"jitter": [model]}))
    monkeypatch.setenv("CGKD_REPORT", str(d / "nb_report"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = json.loads((ROOT / "analysis" / "compare_models.ipynb").read_text())
    scope = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "compare_models.ipynb", "exec"), scope)
    assert (d / "nb_report" / "report.md").exists() and "results" in scope


def test_mismatched_trajectories_are_refused(datasets, tmp_path):
    ref, model, d = datasets
    w = H5MDWriter.create(tmp_path / "small.h5", 3, group="cg", fields=("position",))
    w.extend([0, 1], [0.0, 1.0], np.broadcast_to(np.eye(3) * 2.0, (2, 3, 3)), position=np.zeros((2, 3, 3)))
    w.cgkd.create_dataset("bead_types", data=np.array([b"CHO", b"CL", b"EGL"]))
    w.close()
    with pytest.raises(CgkdError, match="small.h5: bead types/counts .* differ from the reference"):
        report.compare(ref, {"bad": [str(tmp_path / "small.h5")]}, tmp_path / "r")
    with pytest.raises(CgkdError, match="beyond half the shortest box edge"):
        report.compare(ref, {"m": [model]}, tmp_path / "r", report.CompareSettings(r_max=3.0))
    with pytest.raises(CgkdError, match="at least one model"):
        report.compare(ref, {}, tmp_path / "r")


def test_scores_against_hand_computed_cases():
    from cgkd import observables as obs

    r = np.linspace(0.0, 2.0, 2001)
    g_ref = np.where(r > 0.5, 1.0, 0.0)
    g = np.where(r > 0.5, 1.2, 0.0)  # 20 % too high beyond 0.5 nm: error 0.2 * 1.5 / 1.5
    assert obs.rdf_error(g, g_ref, r) == pytest.approx(0.2, rel=1e-3)
    shifted = np.where(r > 0.6, 1.0, 0.0)  # onset 0.1 nm late: |difference| integrates to 0.1 over 1.5
    assert obs.rdf_error(shifted, g_ref, r) == pytest.approx(0.1 / 1.5, rel=1e-2)
    # Jensen-Shannon (bits): identical 0, disjoint 1, and p = (1, 0), q = (1/2, 1/2) by hand:
    # m = (3/4, 1/4); KL(p||m) = log2(4/3); KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2); JS = half their sum.
    assert obs.jensen_shannon([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    assert obs.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    hand = 0.5 * (np.log2(4 / 3) + 0.5 * np.log2(2 / 3) + 0.5)
    assert obs.jensen_shannon([1, 0], [1, 1]) == pytest.approx(hand)


def test_replica_spread_is_the_std_of_the_replicas_scores(datasets):
    ref, model, d = datasets
    r = report.compare(ref, {"two": [ref, model]}, d / "report2", report.CompareSettings(r_max=0.75, n_bins=40),
                       progress=False)
    one = report.compare(ref, {"jitter": [model]}, d / "report3", report.CompareSettings(r_max=0.75, n_bins=40),
                         progress=False)
    for key in ("rdf CHO-CL", "rdf CL-EGL"):
        single = one["scores"]["jitter"][key]["mean"]  # the reference itself scores 0
        assert r["scores"]["two"][key]["mean"] == pytest.approx(single / 2, rel=1e-9)
        assert r["scores"]["two"][key]["std_replicas"] == pytest.approx(single / 2, rel=1e-9)
    # structure.npz: the replicas' mean RDF (here of the reference and the jittered copy), computed apart.
    from cgkd import observables as obs
    from cgkd.report import Traj, load_structure

    saved = load_structure(d / "report2" / "structure.npz")
    assert set(saved) == {"reference", "two"}
    g = [obs.rdf(t.positions, t.boxes, t.types, r_max=0.75, n_bins=40)[1] for t in (Traj(ref), Traj(model))]
    for pair, mean in saved["two"]["rdf"].items():
        np.testing.assert_allclose(mean, (g[0][pair] + g[1][pair]) / 2, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(saved["reference"]["rdf"][pair], g[0][pair], rtol=1e-10, atol=1e-12)
    assert set(saved["two"]["adf"]) == set(saved["reference"]["adf"]) and saved["two"]["adf"]


def test_a_run_too_short_for_diffusion_still_gets_structure_scores(datasets, tmp_path):
    """A model that failed early (here: the jittered model's first 4 frames as one replica beside a full
    one) is scored on structure; D is scored from the replica long enough to fit it; the report says so."""
    ref, model, d = datasets
    from cgkd.h5md import H5MDTrajectory
    with H5MDTrajectory(model) as t:
        pos, box, steps, times = t.positions(), t.boxes(), t.steps(), t.times()
        types = t.cgkd["bead_types"][:]
    w = H5MDWriter.create(tmp_path / "short.h5", pos.shape[1], group="cg", fields=("position",))
    w.extend(steps[:4], times[:4], box[:4], position=pos[:4])
    w.cgkd.create_dataset("bead_types", data=types)
    w.close()
    short = str(tmp_path / "short.h5")
    r = report.compare(ref, {"short first": [short, model], "short only": [short]}, tmp_path / "r",
                       report.CompareSettings(r_max=0.75, n_bins=40), progress=False)
    s = r["scores"]
    assert s["short only"]["rdf CHO-CL"]["mean"] > 0.05 and not any(k.startswith("D ") for k in s["short only"])
    full = report.compare(ref, {"full": [model]}, tmp_path / "f", report.CompareSettings(r_max=0.75, n_bins=40),
                          progress=False)["scores"]["full"]
    assert s["short first"]["D CHO"]["replicas"] == 1
    assert s["short first"]["D CHO"]["mean"] == pytest.approx(full["D CHO"]["mean"])
    assert s["short first"]["rdf CHO-CL"]["replicas"] == 2
    md = (tmp_path / "r" / "report.md").read_text()
    assert "- short only: its first replica is too short for a fit" in md and "| D CHO |" in md
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["diffusion_nm2_per_ps"]["short only"] is None


def test_blocks_too_short_for_diffusion_leave_its_block_error_empty(datasets, tmp_path):
    """A run long enough for a diffusion fit whose blocks are not (10 frames: lags up to half the run, 5 of
    them, 3 inside the (0.2, 0.8) window; a 5-frame block has 2 lags) is scored with D, D gets no block error,
    and the structure scores keep theirs."""
    ref, model, d = datasets
    s = report.compare(ref, {"m": [model]}, tmp_path / "r", report.CompareSettings(r_max=0.75, n_bins=40, blocks=2),
                       progress=False)["scores"]["m"]
    assert s["D CHO"]["replicas"] == 1 and s["D CHO"]["sem_blocks"] is None
    assert s["rdf CHO-CL"]["sem_blocks"] is not None and s["rdf CHO-CL"]["sem_blocks"] > 0
