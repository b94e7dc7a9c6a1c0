"""Mapping speed: cgkd's compiled block mapper vs a straightforward per-frame, per-bead Python loop.

A 2100-atom ethaline trajectory (50 formula units, one bead per molecule) is made by packing a box and
jittering it (positions in a 2.7 nm cell, molecules left broken across the faces as TRR files have them);
both mappers run on the same in-memory frames, and cgkd's end-to-end `cgkd map` (H5MD in, gzip H5MD out)
is timed too. Prints frames/s and the ratio; records benchmarks/results/map_speed.json.

    python benchmarks/map_speed.py --frames 4000 --loop-frames 100
"""
import argparse
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from cgkd import mapping, readers, systems
from cgkd.bench import record
from cgkd.h5md import H5MDWriter

RESULTS = Path(__file__).resolve().parent / "results" / "map_speed.json"


def python_loop(op, pos, frc, boxes):
    """The reference: for each frame, for each bead, unwrap its atoms, average, wrap, sum forces."""
    members = [op.M[b].indices for b in range(op.M.shape[0])]
    weights = [op.M[b].data for b in range(op.M.shape[0])]
    R = np.zeros((len(pos), len(members), 3))
    F = np.zeros_like(R)
    for t in range(len(pos)):
        L = np.diag(boxes[t])
        for b, (idx, w) in enumerate(zip(members, weights)):
            x = pos[t, idx]
            d = x - x[0]
            d -= L * np.round(d / L)
            r = (w[:, None] * (x[0] + d)).sum(axis=0)
            R[t, b] = r - L * np.floor(r / L)
            F[t, b] = frc[t, idx].sum(axis=0)
    return R, F


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4000)
    p.add_argument("--loop-frames", type=int, default=100)
    p.add_argument("--block", type=int, default=256)
    a = p.parse_args()
    spec = systems.load_system("ethaline")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        box_pdb = systems.build_box(spec, 50, tmp / "box.pdb", seed=5)
        top, x0 = systems.load_box(spec, box_pdb)
        edge = top.getPeriodicBoxVectors()[0][0]._value
        rng = np.random.default_rng(0)
        n = len(x0)
        pos = x0[None] + rng.normal(scale=0.05, size=(a.frames, n, 3))
        pos -= edge * np.floor(pos / edge)  # atoms wrapped one by one: molecules straddle the faces
        frc = rng.normal(scale=500.0, size=(a.frames, n, 3)).astype(np.float32)
        boxes = np.broadcast_to(np.eye(3) * edge, (a.frames, 3, 3)).copy()
        atoms = list(top.atoms())
        masses = systems.atom_masses(spec, top)
        op = mapping.build_operators(mapping.MappingSpec.load(spec.path / "mapping.yaml"),
                                     [x.name for x in atoms], [x.residue.name for x in atoms],
                                     [x.residue.index for x in atoms], masses)
        mapping.map_block(op, pos[:2], frc[:2], boxes[:2])  # compile once (cached on disk afterwards)
        t = time.perf_counter()
        for s in range(0, a.frames, a.block):
            R, F = mapping.map_block(op, pos[s:s + a.block], frc[s:s + a.block], boxes[s:s + a.block])
        fast = a.frames / (time.perf_counter() - t)
        k = a.loop_frames
        t = time.perf_counter()
        R_loop, F_loop = python_loop(op, pos[:k], frc[:k], boxes[:k])
        slow = k / (time.perf_counter() - t)
        R_fast, F_fast = mapping.map_block(op, pos[:k], frc[:k], boxes[:k])
        d = R_fast - R_loop
        d -= edge * np.round(d / edge)
        assert np.abs(d).max() < 1e-9 and np.allclose(F_fast, F_loop, rtol=1e-5, atol=1e-3)
        # End to end: an H5MD file in, a compressed CG dataset out.
        h5 = tmp / "aa.h5"
        w = H5MDWriter.create(h5, n)
        w.extend(np.arange(a.frames), np.arange(a.frames, dtype=float), boxes, position=pos, force=frc)
        g = w.cgkd
        for key, vals in (("atom_names", [x.name for x in atoms]), ("residue_names", [x.residue.name for x in atoms]),
                          ("elements", [x.element.symbol for x in atoms])):
            g.create_dataset(key, data=vals)
        g.create_dataset("residue_ids", data=[x.residue.index for x in atoms])
        g.create_dataset("atom_masses", data=masses)
        g.create_dataset("constraints", data=np.zeros((0, 2), dtype=np.int64))
        w.close()
        t = time.perf_counter()
        mapping.map_trajectory(readers.open_trajectory(h5), mapping.MappingSpec.load(spec.path / "mapping.yaml"),
                               tmp / "cg.h5", chunk=a.block, progress=False)
        e2e = a.frames / (time.perf_counter() - t)
    result = {"atoms": n, "beads": len(op.bead_names), "frames": a.frames, "block": a.block,
              "frames_per_s": fast, "python_loop_frames_per_s": slow, "speedup": fast / slow,
              "end_to_end_frames_per_s": e2e, "numba_threads": numba.get_num_threads()}
    record(RESULTS, result)
    print(f"cgkd map kernel: {fast:,.0f} frames/s; Python loop: {slow:,.1f} frames/s; speedup {fast / slow:,.0f}x "
          f"(targets >= 20,000 frames/s, >= 50x); end to end with H5MD I/O: {e2e:,.0f} frames/s")


if __name__ == "__main__":
    main()
