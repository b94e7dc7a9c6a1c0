"""Where a CG model's time goes, per architecture and size, before any training (timings do not depend on the
weights): neighbour search, representation + head (forward), autograd (backward), a bare TorchScript energy +
force call, and OpenMM steps/s with the model as an openmm-torch TorchForce and as an OpenMM PythonForce
(reference box, 200 beads, 4 fs, CPU platform, --threads). Records benchmarks/results/model_cost.json.

    python benchmarks/model_cost.py --threads 2
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cg_speed import steps_per_s, torch_calls_per_s  # noqa: E402
from student_speed import breakdown  # noqa: E402

from cgkd import config, systems  # noqa: E402
from cgkd.bench import record  # noqa: E402
from cgkd.dataset import CGDataset  # noqa: E402
from cgkd.openmm import CGForceField, topology_from_dataset  # noqa: E402
from cgkd.train import build_model, model_metadata, write_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "model_cost.json"
SIZES = ["tensornet:32x1@1.0", "tensornet:16x1@0.8", "gn:64x3@1.0", "gn:32x2@0.8", "gn:32x1@0.7", "gn:16x1@0.6",
         "et:16x1@0.7"]


def untrained(size, ds, folder):
    """A model folder (model.pt + metadata) of the given size with walls at the dataset's RDF onsets."""
    arch, rest = size.split(":")
    shape, cutoff = rest.split("@")
    channels, layers = (int(x) for x in shape.split("x"))
    cfg = config.TrainConfig(dataset=str(ds.path), arch=arch, channels=channels, layers=layers, cutoff=float(cutoff))
    split = {"train": [0, len(ds)], "val": [0, 1], "test": [0, 1]}
    torch.manual_seed(0)
    onsets, model = build_model(cfg, ds, split)
    with torch.no_grad():  # TorchMD-Net zero-initialises some output layers; give every path a gradient
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    write_model(folder, model, model_metadata(model, cfg, ds, split, 0, {"epoch": 0}, onsets))
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="systems/ethaline/reference/ethaline_cg.h5")
    p.add_argument("--sizes", nargs="+", default=SIZES, help="ARCH:CHANNELSxLAYERS@CUTOFF")
    p.add_argument("--steps", type=int, default=100, help="timed OpenMM steps (scaled down for slow models)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    platform = systems.default_platform("CPU")
    props = systems.platform_properties(platform, a.threads)
    ds = CGDataset(a.dataset, frames=slice(0, 50))
    top, pos = topology_from_dataset(a.dataset, -1)
    frames = list(ds.positions[::5].astype(np.float64))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for size in a.sizes:
            folder = Path(d) / size.replace(":", "_")
            model = untrained(size, ds, folder)
            row = {"size": size, "parameters": sum(x.numel() for x in model.parameters()), **breakdown(model, ds)}
            ff = CGForceField(folder)
            steps = max(10, int(a.steps * 20 / row["forward_backward_ms"]))
            row["torchscript_call_ms"] = 1e3 / torch_calls_per_s(ff, top, frames, "cell", steps)
            for backend in ("torchforce", "pythonforce"):
                import openmm
                import openmm.app as app
                import openmm.unit as u

                system = ff.createSystem(top, backend=backend)
                integ = openmm.LangevinMiddleIntegrator(298.15 * u.kelvin, 1 / u.picosecond, 4 * u.femtosecond)
                sim = app.Simulation(top, system, integ, platform, props)
                sim.context.setPositions(pos)
                row[f"{backend}_steps_per_s"] = steps_per_s(sim, steps)
            rows.append(row)
            print(f"{size}: neighbours {row['neighbour_search_ms']:.2f} ms, forward {row['forward_ms']:.2f}, "
                  f"+autograd {row['forward_backward_ms']:.2f}, TorchScript call {row['torchscript_call_ms']:.2f}; "
                  f"OpenMM {row['torchforce_steps_per_s']:.1f} steps/s (TorchForce), "
                  f"{row['pythonforce_steps_per_s']:.1f} (PythonForce)", flush=True)
    record(RESULTS, {"dataset": a.dataset, "beads": top.getNumAtoms(), "threads": a.threads,
                     "platform": platform.getName(), "dt_fs": 4.0, "models": rows})


if __name__ == "__main__":
    main()
