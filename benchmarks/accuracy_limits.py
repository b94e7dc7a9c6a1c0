"""What limits a force-matched model's accuracy on the ethaline reference? Structure errors of simulated
TensorNet teachers against training epochs, training frames and model size, next to the AA noise floor.

Every condition starts from the shipped teachers' settings (forcefields/cg/ethaline/teachers/train.yaml: 1x32
TensorNet, Gaussian RBF, cutoff 1.0 nm, seed 1) and changes one thing:
  epochs:  one training run continued step by step (1, 2, 4, 8 epochs, then to its early stop); `--resume`
           is exact, so every snapshot is the same run seen at that epoch (best validation weights so far)
  frames:  250 or 500 training frames (--max-frames 312 / 625: the same contiguous train | val | test blocks
           of 80/10/10 %, so validation and test blocks shrink too)
  size:    2 layers x 64 channels, after 4 epochs (beside `epochs 4`) and at its early stop (one run)
Each model is simulated --steps at 10 fs from the dataset's last frame (one replica, seed 1) and compared with
the whole AA reference (`cgkd compare`); the AA first half against its second half is the noise floor.
Resumable: conditions recorded in the results (at the same --steps) are skipped, so a fresh clone goes on
where the last session stopped; training resumes from checkpoints in the work folder. Work in runs/accuracy_limits/;
results in benchmarks/results/accuracy_limits.json.

    python benchmarks/accuracy_limits.py                         # everything (hours on 2 cores)
    python benchmarks/accuracy_limits.py --only "epochs 1" "epochs 2" --steps 2000
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from cgkd import config
from cgkd.bench import record
from cgkd.dataset import CGDataset
from cgkd.model import load_checkpoint
from cgkd.report import CompareSettings, compare
from cgkd.simulate import simulate
from cgkd.train import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy_limits.json"
TEACHERS = ROOT / "forcefields" / "cg" / "ethaline" / "teachers" / "train.yaml"
CONDITIONS = {"epochs 1": {"epochs": 1}, "epochs 2": {"epochs": 2}, "epochs 4": {"epochs": 4},
              "epochs 8": {"epochs": 8}, "early stop": {}, "250 frames": {"max_frames": 312},
              "500 frames": {"max_frames": 625}, "2x64 epochs 4": {"layers": 2, "channels": 64, "epochs": 4},
              "2x64": {"layers": 2, "channels": 64}}


def run_folder(change):
    """Conditions that differ only in epochs share one training run, seen at each epoch count."""
    rest = {k: v for k, v in change.items() if k != "epochs"}
    return "_".join(f"{k}{v}" for k, v in sorted(rest.items())) or "epochs"


def trained(name, change, work, threads):
    """The model of one condition (member folder); epoch snapshots share a run (`run_folder`)."""
    base = config.load(config.TrainConfig, TEACHERS, ensemble=1, workers=1)
    snap = work / "models" / name.replace(" ", "_")
    if (snap / "model.pt").exists():
        return snap
    import torch

    torch.set_num_threads(threads)
    run = work / run_folder(change)
    ckpt = run / "member_0" / "checkpoint.pt"
    if ckpt.exists() and load_checkpoint(ckpt)["state"]["epoch"] > change.get("epochs", base.epochs):
        raise SystemExit(f"{name}: the shared run is already past this epoch; run the epoch conditions in order")
    train(config.TrainConfig(**{**vars(base), **change, "out": str(run), "resume": True}), progress=True)
    shutil.copytree(run / "member_0", snap)
    return snap


def floor(dataset, work):
    out = work / "noise_floor"
    if not (out / "results.json").exists():
        first, second = CGDataset(dataset).write_halves(work)
        compare(str(first), {"AA second half": [str(second)]}, out, CompareSettings(blocks=4), progress=False)
    return json.loads((out / "results.json").read_text())["scores"]["AA second half"]


def summarise(scores):
    mean = {k: v["mean"] for k, v in scores.items()}
    rdf = {k[4:]: v for k, v in mean.items() if k.startswith("rdf ")}
    js = [v for k, v in mean.items() if k.startswith(("adf ", "cdf "))]
    return {"rdf_error": rdf, "rdf_error_mean": float(np.mean(list(rdf.values()))),
            "adf_cdf_js_mean": float(np.mean(js)) if js else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="conditions to run (default: all, in order)")
    ap.add_argument("--steps", type=int, default=10000, help="CG steps at 10 fs per model (default 100 ps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "accuracy_limits"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = config.load(config.TrainConfig, TEACHERS).dataset
    dataset = str(ROOT / dataset)
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    before = res.get("steps")  # the run length of conditions recorded before entries carried their own
    res.update({"dataset": dataset, "teacher_config": str(TEACHERS.relative_to(ROOT)), "steps": a.steps,
                "dt_fs": 10.0, "noise_floor": summarise(floor(dataset, work))})
    res.setdefault("conditions", {})
    for name in a.only or list(CONDITIONS):
        if name not in CONDITIONS:
            raise SystemExit(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}")
        if name in res["conditions"] and res["conditions"][name].get("steps", before) == a.steps:
            print(f"{name}: recorded in {RESULTS.name}, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        model = trained(name, CONDITIONS[name], work, a.threads)
        meta = json.loads((model / "metadata.json").read_text())
        sim = work / "runs" / model.name
        resume = (sim / "config.yaml").exists()
        s = simulate(config.SimConfig(model=str(model), start=dataset, out=str(sim), steps=a.steps, dt_fs=10.0,
                                      report=50, threads=a.threads, resume=resume, overwrite=not resume))
        r = s["replicas"][0]
        entry = {"change": CONDITIONS[name], "steps": a.steps, "epochs_run": meta["epochs_run"],
                 "train_frames": meta["split"]["train"][1] - meta["split"]["train"][0],
                 "test_force_rmse": meta["metrics"]["test"]["all"]["rmse"], "stable": r["stable"],
                 "time_ps": r["time_ps"], "failed_check": r.get("failed_check")}
        if r["frames"] >= 16:
            c = compare(dataset, {name: [r["out"]]}, work / "compare" / model.name, CompareSettings(blocks=4),
                        progress=False)
            entry.update(summarise(c["scores"][name]))
        entry["seconds"] = round(time.perf_counter() - t0)
        res["conditions"][name] = entry
        record(RESULTS, res)
        print(f"{name}: {entry['epochs_run']} epochs, {entry['train_frames']} frames, test RMSE "
              f"{entry['test_force_rmse']:.1f}; RDF error mean {entry.get('rdf_error_mean', float('nan')):.3f} "
              f"(floor {res['noise_floor']['rdf_error_mean']:.3f}); stable {entry['stable']}", flush=True)


if __name__ == "__main__":
    main()
