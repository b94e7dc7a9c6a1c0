"""Is the student worth it? OpenMM speed of a distilled student, one teacher and the teacher ensemble, and of
the AA run of the same box, all measured in one run on the same platform and threads.
Records benchmarks/results/student_speed.json.

(1) Largest stable timestep of the student and of one teacher: Langevin runs (`cgkd simulate` with its
    stability monitor) of --ps at each of --timesteps; the ensemble runs at its members' timestep (its mean
    force is smoother than any member's, and its scan would cost 8x a member's).
(2) Steps/s and ns/day of each model at its timestep (reference box, 200 beads), timed in --rounds rounds that
    run the three models in turn (medians; student_vs_ensemble and student_vs_teacher are medians of the
    rounds' ratios, so a load that changes during the run cancels), and of AA (OPLS-DES, PME, HMR 4 fs, 2100
    atoms; timed after the rounds: student_cg_vs_aa is the student's median over AA). Ratios of ns/day.
(3) Where a student's step goes: neighbour search, representation + head (forward), autograd (backward),
    and the OpenMM-PyTorch hand-over (an OpenMM step minus a bare PyTorch energy + force call).

    python benchmarks/student_speed.py --student runs/students/kd8 --teachers runs/teachers_v2
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cg_speed import aa_ns_per_day, cg_simulation, interleaved_steps_per_s, torch_calls_per_s  # noqa: E402
from cg_stability import timestep_scan  # noqa: E402

from cgkd import systems  # noqa: E402
from cgkd.bench import record  # noqa: E402
from cgkd.dataset import CGDataset  # noqa: E402
from cgkd.model import ensemble_members  # noqa: E402
from cgkd.openmm import CGForceField, topology_from_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "student_speed.json"


def breakdown(model, ds, calls=50):
    """Milliseconds per call of the student's parts on reference frames (eager PyTorch, current threads)."""
    types = model.type_index(ds.type_names)
    frames = [(torch.from_numpy(ds.positions[k]), torch.from_numpy(ds.boxes[k])) for k in range(0, 50, 5)]
    batch = torch.zeros(len(types), dtype=torch.long)

    def timed(fn):
        for p, b in frames[:3]:
            fn(p, b)
        t = time.perf_counter()
        for k in range(calls):
            fn(*frames[k % len(frames)])
        return (time.perf_counter() - t) / calls * 1e3

    def forward(p, b):
        with torch.no_grad():
            return model(types, p, b)

    def forward_backward(p, b):
        return model.energy_forces(types, p.clone(), b)

    neighbours = timed(lambda p, b: model.representation.distance(p, batch, b))
    fwd = timed(forward)
    total = timed(forward_backward)
    return {"neighbour_search_ms": neighbours, "forward_ms": fwd, "forward_backward_ms": total,
            "representation_and_head_ms": fwd - neighbours, "autograd_ms": total - fwd}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="student folder from `cgkd distill`")
    p.add_argument("--teachers", required=True, help="teacher ensemble folder (member_*)")
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--timesteps", type=float, nargs="+", default=[4.0, 8.0, 12.0, 16.0, 20.0, 25.0, 30.0])
    p.add_argument("--ps", type=float, default=10.0, help="simulated time per stability run")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--steps", type=int, default=400, help="timed steps of the student (teachers: fewer)")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds, the three models in turn in each")
    p.add_argument("--aa-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS), help="JSON to write")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    platform = systems.default_platform(None)
    props = systems.platform_properties(platform, a.threads)
    members = ensemble_members(a.teachers)
    models = {"student": a.student, "teacher": str(members[0]), "ensemble": a.teachers}
    res = {"platform": platform.getName(), "threads": a.threads, "dataset": a.dataset, "models": models}

    with tempfile.TemporaryDirectory() as d:
        for name in ("student", "teacher"):
            scan, largest = timestep_scan(models[name], a.dataset, a.timesteps, a.ps, a.replicas, a.threads,
                                          Path(d) / name)
            res[f"{name}_timestep_scan"] = scan
            res[f"{name}_dt_fs"] = largest
    res["ensemble_dt_fs"] = res["teacher_dt_fs"]
    top, pos = topology_from_dataset(a.dataset, -1)
    steps = {"student": a.steps, "teacher": max(20, a.steps // 8), "ensemble": max(10, a.steps // 40)}
    sims, ffs = {}, {}
    for name in steps:
        dt = res[f"{name}_dt_fs"]
        if dt is None:
            raise SystemExit(f"{name} is not stable at {min(a.timesteps)} fs: no speed to report")
        ffs[name] = CGForceField(models[name])
        sims[name] = cg_simulation(ffs[name], top, pos, dt, platform, props, "cell")
    rounds = interleaved_steps_per_s(sims, steps, a.rounds)
    for name, rates in rounds.items():
        dt = res[f"{name}_dt_fs"]
        rate = float(np.median(rates))
        res[name] = {"beads": top.getNumAtoms(), "dt_fs": dt, "steps_per_s": rate, "ns_per_day": rate * dt * 86400e-6,
                     "steps_per_s_rounds": rates, "members": len(ffs[name].models), "hparams": ffs[name].models[0].hparams}
        print(f"{name}: {rate:.1f} steps/s at {dt} fs = {res[name]['ns_per_day']:.1f} ns/day "
              f"(rounds: {', '.join(f'{x:.1f}' for x in rates)})", flush=True)
    del sims
    aa, atoms = aa_ns_per_day(a.aa_steps, platform, props)
    res["aa"] = {"atoms": atoms, "dt_fs": 4.0, "ns_per_day": aa}
    print(f"AA: {aa:.1f} ns/day ({atoms} atoms, HMR 4 fs)")

    ff = ffs["student"]
    ds = CGDataset(a.dataset, frames=slice(0, 50))
    bare = torch_calls_per_s(ff, top, list(ds.positions[::5].astype(np.float64)), "cell", a.steps)
    parts = breakdown(ff.models[0], ds)
    step_ms = 1e3 / res["student"]["steps_per_s"]
    parts.update(openmm_step_ms=step_ms, torchscript_call_ms=1e3 / bare, handover_ms=step_ms - 1e3 / bare)
    res["student_time_breakdown"] = parts
    print("student step: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))

    def ratio(other):  # ns/day, round by round (the models of a round ran under the same load)
        return float(np.median([x * res["student"]["dt_fs"] / (y * res[other]["dt_fs"])
                                for x, y in zip(rounds["student"], rounds[other])]))

    s, t, e = ratio("ensemble"), ratio("teacher"), res["student"]["ns_per_day"] / aa
    res.update(student_vs_ensemble=s, student_vs_teacher=t, student_cg_vs_aa=e,
               targets={"student_vs_ensemble": 10.0, "student_vs_teacher": 3.0, "student_cg_vs_aa": 10.0})
    record(Path(a.out), res)
    print(f"student vs ensemble {s:.1f}x (target 10), vs one teacher {t:.1f}x (target 3), "
          f"CG student vs AA {e:.1f}x (target 10)")


if __name__ == "__main__":
    main()
