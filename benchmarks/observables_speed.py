"""Observable speed: RDF of all bead-type pairs, cgkd (one compiled pass over all bead pairs per frame, or a
periodic k-d tree for large systems) vs mdtraj.compute_rdf looped over the pairs, on the same frames, plus
ADF/CDF throughput in frames/s. Records benchmarks/results/observables_speed.json.

    python benchmarks/observables_speed.py --dataset systems/ethaline/reference/ethaline_cg.h5
"""
import argparse
import time
from pathlib import Path

import mdtraj as md
import numpy as np

from cgkd import observables
from cgkd.bench import record
from cgkd.report import Traj

RESULTS = Path(__file__).resolve().parent / "results" / "observables_speed.json"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--frames", type=int, default=None, help="use the first n frames")
    p.add_argument("--n-bins", type=int, default=100)
    a = p.parse_args()
    tr = Traj(a.dataset)
    pos, boxes = tr.positions[:a.frames], tr.boxes[:a.frames]
    r_max = observables.max_cutoff(boxes)
    observables.rdf(pos[:2], boxes[:2], tr.types, r_max=r_max, n_bins=a.n_bins)  # load the compiled kernel
    t = time.perf_counter()
    r, g, _ = observables.rdf(pos, boxes, tr.types, r_max=r_max, n_bins=a.n_bins)
    ours = time.perf_counter() - t
    top = md.Topology()
    chain = top.add_chain()
    for ty in tr.types:
        top.add_atom(ty, md.element.virtual, top.add_residue(ty, chain))
    traj = md.Trajectory(pos, top, unitcell_lengths=boxes[:, [0, 1, 2], [0, 1, 2]],
                         unitcell_angles=np.full((len(pos), 3), 90.0))
    t = time.perf_counter()
    worst = 0.0
    for a_, b_ in g:
        ia, ib = np.flatnonzero(tr.types == a_), np.flatnonzero(tr.types == b_)
        pairs = traj.topology.select_pairs(ia, ib) if a_ != b_ else np.array(
            [(i, j) for k, i in enumerate(ia) for j in ia[k + 1:]])
        _, g_md = md.compute_rdf(traj, pairs, r_range=(0.0, r_max), n_bins=a.n_bins)
        worst = max(worst, float(np.abs(g_md - g[(a_, b_)]).max()))
    theirs = time.perf_counter() - t
    r_ref, g_ref, _ = observables.rdf(pos, boxes, tr.types, r_max=r_max, n_bins=a.n_bins)
    cut = {k: observables.first_minimum(r_ref, v) for k, v in g_ref.items()}
    c0 = sorted(set(tr.types))[0]
    nb = (c0, c0)
    c = (cut[(c0, c0)], cut[(c0, c0)])
    t = time.perf_counter()
    observables.adf(pos, boxes, tr.types, c0, nb, c, empty_ok=True)
    adf_fps = len(pos) / (time.perf_counter() - t)
    t = time.perf_counter()
    observables.cdf(pos, boxes, tr.types, c0, nb, c, empty_ok=True)
    cdf_fps = len(pos) / (time.perf_counter() - t)
    res = {"dataset": str(a.dataset), "frames": len(pos), "beads": len(tr.types), "pairs": len(g),
           "rdf_all_pairs_s": ours, "mdtraj_loop_s": theirs, "ratio_mdtraj_over_cgkd": theirs / ours,
           "max_abs_difference_g": worst, "adf_frames_per_s": adf_fps, "cdf_frames_per_s": cdf_fps}
    record(RESULTS, res)
    print(f"RDF, {len(g)} pairs, {len(pos)} frames: cgkd {ours:.2f} s, mdtraj loop {theirs:.2f} s, "
          f"mdtraj/cgkd = {theirs / ours:.2f} (target >= 1); max |g - g_mdtraj| = {worst:.1e}; "
          f"ADF {adf_fps:.0f} frames/s, CDF {cdf_fps:.0f} frames/s")


if __name__ == "__main__":
    main()
