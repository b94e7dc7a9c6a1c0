"""Mapped-force noise, `sum` vs the statistically optimal force map (Kramer et al., JCTC 2023), on AA data.

For each mapping, the optimal map is fitted on the first half of the trajectory and both maps are applied
to the second half (held out); printed and recorded per bead type is the mean-square mapped force
<|F_bead|^2> (kJ/mol/nm)^2 for each map and the relative change. Records
benchmarks/results/force_map_noise.json.

    python benchmarks/force_map_noise.py --traj runs/ref/aa.h5 \
        --mapping systems/ethaline/mapping.yaml systems/ethaline/mapping_choline2.yaml
"""
import argparse
import copy
from pathlib import Path

import numpy as np

from cgkd import mapping, readers
from cgkd.bench import record

RESULTS = Path(__file__).resolve().parent / "results" / "force_map_noise.json"


def mean_square_by_type(op, reader, start, chunk=200):
    """<|F|^2> per bead type over frames [start, end) mapped with op."""
    sums, counts = {}, {}
    types = np.array(op.bead_types)
    seen = 0
    for pos, frc, box, _, _ in reader.blocks(chunk):
        lo = max(0, start - seen)
        seen += len(pos)
        if lo >= len(pos):
            continue
        _, F = mapping.map_block(op, pos[lo:], frc[lo:], box[lo:])
        for t in sorted(set(types)):
            sq = (F[:, types == t] ** 2).sum(axis=-1)
            sums[t] = sums.get(t, 0.0) + float(sq.sum())
            counts[t] = counts.get(t, 0) + sq.size
    return {t: sums[t] / counts[t] for t in sums}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traj", default="runs/ref/aa.h5", help="AA H5MD with forces (from cgkd aa)")
    p.add_argument("--mapping", nargs="+", default=["systems/ethaline/mapping.yaml",
                                                    "systems/ethaline/mapping_choline2.yaml"])
    a = p.parse_args()
    reader = readers.open_trajectory(a.traj)
    top = reader.topology
    half = reader.n_frames // 2
    out = {"traj": a.traj, "frames": reader.n_frames, "fit_frames": [0, half],
           "eval_frames": [half, reader.n_frames], "mappings": {}}
    for path in a.mapping:
        spec = mapping.MappingSpec.load(path)
        opt_spec = copy.deepcopy(spec)
        for res in opt_spec.residues.values():
            res.force_map = "optimal"
        op_sum = mapping.build_operators(spec, top.atom_names, top.residue_names, top.residue_ids, top.masses,
                                         top.constraints)
        op_opt = mapping.build_operators(opt_spec, top.atom_names, top.residue_names, top.residue_ids, top.masses,
                                         top.constraints)
        mapping.fit_optimal(op_opt, opt_spec, top.residue_names, top.residue_ids, top.atom_names, top.constraints,
                            _first_frames(reader, half))
        ms_sum = mean_square_by_type(op_sum, reader, half)
        ms_opt = mean_square_by_type(op_opt, reader, half)
        rows = {t: {"sum": ms_sum[t], "optimal": ms_opt[t], "relative_change": ms_opt[t] / ms_sum[t] - 1.0}
                for t in ms_sum}
        out["mappings"][path] = rows
        for t, r in rows.items():
            print(f"{Path(path).name} {t}: <|F|^2> sum {r['sum']:.4g}, optimal {r['optimal']:.4g} "
                  f"({100 * r['relative_change']:+.2f} %) (kJ/mol/nm)^2, held-out frames")
    record(RESULTS, out)


def _first_frames(reader, n, chunk=200):
    """Force blocks of the first n frames."""
    seen = 0
    for _, frc, *_ in reader.blocks(chunk):
        if seen >= n:
            return
        yield frc[:n - seen]
        seen += len(frc)


if __name__ == "__main__":
    main()
