"""Training throughput: frames/s of force-matching steps (forward, forces, backward through the forces,
Adam) for the reference teacher configuration on this machine. Records benchmarks/results/train_speed.json.

    python benchmarks/train_speed.py --dataset systems/ethaline/reference/ethaline_cg.h5 --steps 20
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cgkd import config
from cgkd.bench import record
from cgkd.dataset import CGDataset
from cgkd.train import batch, build_model, force_loss

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--cutoff", type=float, default=1.0)
    a = p.parse_args()
    cfg = config.TrainConfig(dataset=a.dataset, channels=a.channels, layers=a.layers, cutoff=a.cutoff,
                             batch_size=a.batch_size)
    ds = CGDataset(a.dataset)
    split = ds.split(cfg.val_fraction, cfg.test_fraction)
    _, model = build_model(cfg, ds, split)
    types = model.type_index(ds.type_names)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    frames = np.arange(*split["train"])
    rng = np.random.default_rng(0)

    def step():
        t, pos, b, bi, f = batch(ds, rng.choice(frames, a.batch_size), types)
        _, _, pred = model.energy_forces(t, pos, b, bi, create_graph=True)
        loss = force_loss(pred, f, "mse")
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # compile kernels
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    fps = a.steps * a.batch_size / (time.perf_counter() - t0)
    res = {"dataset": a.dataset, "beads": len(types), "batch_size": a.batch_size, "steps": a.steps,
           "model": model.hparams, "train_frames_per_s": fps, "threads": torch.get_num_threads()}
    record(RESULTS, res)
    print(f"training: {fps:.1f} frames/s ({len(types)} beads, batch {a.batch_size}, {model.hparams['arch']} "
          f"{a.layers} layer(s) x {a.channels} channels, cutoff {a.cutoff} nm)")


if __name__ == "__main__":
    main()
