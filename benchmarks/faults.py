"""Kill sweep: every long stage is killed with SIGKILL at random moments, resumed, and its final output checked.

For each stage (aa, train, label, distill, simulate) an uninterrupted reference run is made first and timed.
Then, for each of --points kill points (times drawn from --seed, uniformly between the measured time Python
needs to import cgkd and the reference's wall time, so the kills land in the stage's own work: set-up, HDF5
writes, checkpoint writes, the final model write), the stage is started as a `cgkd` process, killed with
SIGKILL at that moment and run again with `--resume` (a run killed before its first checkpoint has nothing
to resume: it is started again, as a user would). The final output must be
complete and readable by cgkd's reader (and MDAnalysis for trajectories), with every frame/epoch once, and
where the stage is deterministic (train, label, distill, simulate on CPU) equal to the reference run.

    python benchmarks/faults.py --points 20            # the full sweep (~1 h on 2 cores)
    python benchmarks/faults.py --points 3 --stages simulate train

Records benchmarks/results/faults.json: per stage, each kill point (time, whether the process was still
running, whether it had to be started again, resumes) and whether every check held.
"""
import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "systems" / "ethaline" / "reference" / "ethaline_cg.h5"
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
CGKD = [sys.executable, "-m", "cgkd.cli"]
TINY = ["--epochs", "4", "--batch-size", "4", "--cutoff", "0.7", "--channels", "8", "--rbf", "4",
        "--patience", "10"]


def small_dataset(path, frames=40):
    """The first `frames` frames of the reference CG dataset (with forces): a copy truncated in place."""
    from cgkd.h5md import H5MDWriter

    shutil.copy(REFERENCE, path)
    with H5MDWriter(path, group="cg") as w:
        w.truncate(frames)
    return path


def stages(work):
    """{stage: (command to start it, command to resume it, output path, check(output, reference))}."""
    data = small_dataset(work / "cg.h5")
    teachers = work / "teachers"
    subprocess.run(CGKD + ["train", "--dataset", data, "--out", teachers, "--ensemble", "2", *TINY], check=True,
                   capture_output=True)
    subprocess.run(CGKD + ["build", "--system", "ethaline", "--units", "10", "--cutoff", "0.7", "--out", work / "box.pdb"], check=True,
                   capture_output=True)
    aa = ["aa", "--pdb", work / "box.pdb", "--npt-ps", "0.4", "--nvt-ps", "6.4", "--stride", "20", "--hmr",
          "--cutoff", "0.7", "--minimize-iterations", "200", "--checkpoint-ps", "0.16", "--threads", "1"]
    sim = ["simulate", "--model", teachers / "member_0", "--start", data, "--steps", "600", "--report", "20",
           "--checkpoint-every", "2", "--threads", "1", "--platform", "CPU"]
    distill = ["distill", "--teachers", teachers, "--dataset", data, *TINY]
    return {
        "aa": (aa, ["aa", "--resume"], "aa.h5", check_aa),
        "train": (["train", "--dataset", data, *TINY], ["train", "--dataset", data, *TINY, "--resume"], "train",
                  check_train),
        "label": (["label", "--teachers", teachers, "--dataset", data], ["label", "--teachers", teachers,
                                                                          "--dataset", data], "labels.h5",
                  check_label),
        "distill": (distill, distill + ["--resume"], "student", check_train),
        "simulate": (sim, ["simulate", "--resume"], "sim", check_simulate),
    }


def run(argv, out, kill_after=None):
    """Run `cgkd argv --out out`; with kill_after, SIGKILL it after that many seconds. Returns (exit code,
    wall seconds, killed?)."""
    cmd = CGKD + [str(a) for a in argv] + ["--out", str(out)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=kill_after)
        return p.returncode, time.perf_counter() - t0, False, err
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return p.returncode, time.perf_counter() - t0, True, ""


def check_h5md(path):
    """The file opens with cgkd's reader and MDAnalysis' H5MD reader, all frames; returns its steps."""
    from MDAnalysis.coordinates.H5MD import H5MDReader

    from cgkd.h5md import H5MDTrajectory

    with H5MDTrajectory(path) as t:
        steps, n = t.steps(), len(t)
    reader = H5MDReader(str(path))
    assert reader.n_frames == n, f"MDAnalysis sees {reader.n_frames} frames, cgkd {n}"
    for _ in reader:
        pass
    reader.close()
    return steps


def check_aa(out, ref):
    a, b = check_h5md(out), check_h5md(ref)
    assert np.array_equal(a, b), "production frames differ in steps from the uninterrupted run"
    rows = [int(float(r.split(",")[1])) for r in Path(str(out) + ".log.csv").read_text().splitlines()[1:]]
    assert rows == sorted(set(rows)), "log rows duplicated or out of order"


def check_train(out, ref):
    import torch

    for member in sorted(Path(ref).glob("**/model.pt")):
        mine = Path(out) / member.relative_to(ref)
        a, b = torch.load(member, weights_only=False)["model"], torch.load(mine, weights_only=False)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{mine}: weights differ from the uninterrupted run"
        ma, mb = [(p.parent / "metrics.csv").read_text().splitlines() for p in (member, mine)]
        la, lb = ([float(r.split(",")[1]) for r in m[1:]] for m in (ma, mb))
        assert la == lb, f"{mine.parent}/metrics.csv: losses differ or epochs duplicated/missing"


def check_label(out, ref):
    import h5py

    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        names = []
        b.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for key in names:
            assert np.array_equal(a[key][()], b[key][()]), f"{out}: {key} differs from the uninterrupted run"


def check_simulate(out, ref):
    from cgkd.h5md import H5MDTrajectory

    traj, reftraj = Path(out) / "replica_0" / "traj.h5", Path(ref) / "replica_0" / "traj.h5"
    assert np.array_equal(check_h5md(traj), check_h5md(reftraj)), "frames differ in steps"
    with H5MDTrajectory(traj) as a, H5MDTrajectory(reftraj) as b:
        assert np.allclose(a.positions(), b.positions(), atol=1e-4), "positions differ from the uninterrupted run"


def save(results):
    """Merge this sweep's stages into benchmarks/results/faults.json."""
    from cgkd.bench import record

    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"stages": {}}
    old["stages"].update(results["stages"])
    record(RESULTS, {**old, **{k: v for k, v in results.items() if k != "stages"}, "stages": old["stages"]})


def table(results):
    """The README's table: per stage, kills tried, how many landed while it ran, restarts, and what held."""
    rows = ["| stage | SIGKILLs | landed while running | started again (no checkpoint yet) | final output complete, "
            "readable, equal to the uninterrupted run |", "|---|---|---|---|---|"]
    for name, rec in results["stages"].items():
        pts = rec["points"]
        rows.append(f"| {name} | {len(pts)} | {sum(p['killed'] for p in pts)} | "
                    f"{sum(bool(p.get('restarted')) for p in pts)} | {rec['held']}/{len(pts)} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20, help="kill points per stage")
    ap.add_argument("--stages", nargs="*", default=["aa", "train", "label", "distill", "simulate"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="print the README table of the recorded results, run nothing")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    results = {"points_per_stage": args.points, "seed": args.seed, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        commands = stages(work)
        t0 = time.perf_counter()
        subprocess.run(CGKD + ["label", "--help"], check=True, capture_output=True)
        startup = time.perf_counter() - t0
        results["startup_s"] = round(startup, 1)
        for name in args.stages:
            start, resume, out_name, check = commands[name]
            ref = work / f"ref_{out_name}"
            code, wall, _, err = run(start, ref)
            assert code == 0, f"{name}: the reference run failed: {err}"
            rec = {"reference_wall_s": round(wall, 1), "points": [], "held": 0}
            rng = random.Random(f"{args.seed}:{name}")  # kill times per stage, whichever stages run together
            for k in range(args.points):
                out = work / f"{name}_{k}_{out_name}"
                at = rng.uniform(startup, wall)
                code, _, killed, _ = run(start, out, kill_after=at)
                point = {"kill_at_s": round(at, 2), "killed": killed}
                resumes = 0
                while True:  # resume until done (a kill before the first checkpoint: start again)
                    code, _, _, err = run(resume, out)
                    resumes += 1
                    if code == 0:
                        break
                    if "nothing to resume" in err or "no checkpoint" in err or "no saved run settings" in err:
                        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
                        code, _, _, err = run(start, out)
                        point["restarted"] = True
                        break
                    if resumes > 3:
                        break
                point["resumes"], point["exit"] = resumes, code
                try:
                    assert code == 0, f"final run exited {code}: {err.strip().splitlines()[-1:] }"
                    check(out, ref)
                    point["held"] = True
                    rec["held"] += 1
                except AssertionError as e:
                    point["held"], point["failure"] = False, str(e)
                rec["points"].append(point)
                print(f"{name} point {k}: kill at {at:.1f}s/{wall:.1f}s -> {'held' if point['held'] else point['failure']}",
                      flush=True)
            results["stages"][name] = rec
            save(results)  # after every stage: a sweep cut short keeps what it measured
    for name, rec in results["stages"].items():
        print(f"{name:9s} {rec['held']}/{len(rec['points'])} held (reference {rec['reference_wall_s']} s)")


if __name__ == "__main__":
    main()
