"""Cost of writing forces: AA ns/day with a frame (positions, forces, box, energy) every 100 steps vs none.

One process, one context: blocks of steps that write through `cgkd aa`'s own frame writer alternate with
blocks that only step, so machine noise hits both alike. Prints the ratio and records it in
benchmarks/results/aa_force_output.json.

    python benchmarks/aa_force_output.py --units 50 --blocks 6 --block-steps 1000
"""
import argparse
import tempfile
import time
from pathlib import Path

import openmm.unit as u

from cgkd import config, systems
from cgkd.aa import AARun
from cgkd.bench import record

RESULTS = Path(__file__).resolve().parent / "results" / "aa_force_output.json"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=50)
    p.add_argument("--blocks", type=int, default=6, help="blocks of each kind, alternating")
    p.add_argument("--block-steps", type=int, default=1000)
    p.add_argument("--stride", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = systems.load_system("ethaline")
        box = systems.build_box(spec, a.units, tmp / "box.pdb", seed=3)
        cfg = config.AAConfig(pdb=str(box), out=str(tmp / "aa.h5"), hmr=True, stride=a.stride, threads=a.threads)
        run = AARun(cfg)
        sim = run._simulation(barostat=False)
        sim.context.setPositions(run.positions)
        sim.minimizeEnergy(maxIterations=500)
        sim.context.setVelocitiesToTemperature(run.T * u.kelvin, 1)
        sim.step(500)
        writer = run._create_file()
        run.log.write_text("")
        times = {"write": 0.0, "plain": 0.0}
        for _ in range(a.blocks):
            t = time.perf_counter()
            sim.step(a.block_steps)
            times["plain"] += time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(a.block_steps // a.stride):
                sim.step(a.stride)
                run.write_frame(sim, writer)
            times["write"] += time.perf_counter() - t
        frames = len(writer)
        writer.close()
    steps = a.blocks * a.block_steps
    ns_day = {k: steps * run.dt * 1e-6 / (v / 86400) for k, v in times.items()}
    ratio = ns_day["write"] / ns_day["plain"]
    result = {"atoms": run.topology.getNumAtoms(), "timestep_fs": run.dt, "hmr": True, "stride": a.stride,
              "frames_written": frames, "steps_each": steps, "ns_per_day_writing": ns_day["write"],
              "ns_per_day_plain": ns_day["plain"], "ratio_writing_over_plain": ratio,
              "platform": run.platform.getName()}
    record(RESULTS, result)
    print(f"writing forces every {a.stride} steps: {ns_day['write']:.2f} ns/day; writing nothing: "
          f"{ns_day['plain']:.2f} ns/day; ratio {ratio:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
