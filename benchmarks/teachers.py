"""Teacher ensemble on the reference dataset: per-member and ensemble-mean test force RMSE (the ensemble's
prediction is the members' mean force), from a folder written by `cgkd train --ensemble N`.
Records benchmarks/results/teachers.json.

    cgkd train --dataset systems/ethaline/reference/ethaline_cg.h5 --out runs/teachers --ensemble 8 --workers 2 \
        --channels 32 --layers 1 --cutoff 1.0 --epochs 8
    python benchmarks/teachers.py --model runs/teachers
"""
import argparse
import json
from pathlib import Path

import numpy as np

from cgkd.bench import record

RESULTS = Path(__file__).resolve().parent / "results" / "teachers.json"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/teachers")
    a = p.parse_args()
    out = Path(a.model)
    ens = json.loads((out / "ensemble.json").read_text())
    metas = [json.loads((m / "metadata.json").read_text()) for m in sorted(out.glob("member_*"))]
    members = [{"seed": m["seed"], "epochs": m["epochs_run"], "test_rmse": m["metrics"]["test"]["all"]["rmse"],
                "test_mae": m["metrics"]["test"]["all"]["mae"],
                "test_rmse_per_type": {k: v["rmse"] for k, v in m["metrics"]["test"].items() if k != "all"},
                "force_energy_consistency_max_rel": m["force_energy_consistency_max_rel"]} for m in metas]
    average = float(np.mean([m["test_rmse"] for m in members]))
    mean = ens["ensemble_mean"]["all"]["rmse"]
    res = {"model": str(out), "dataset": metas[0]["dataset"], "dataset_sha256": metas[0]["dataset_sha256"],
           "split": metas[0]["split"], "hparams": metas[0]["hparams"], "config": metas[0]["config"],
           "members": members, "average_member_test_rmse": average, "ensemble_mean_test_rmse": mean,
           "ensemble_mean_test_rmse_per_type": {k: v["rmse"] for k, v in ens["ensemble_mean"].items() if k != "all"},
           "ensemble_beats_average_member": bool(mean < average)}
    record(RESULTS, res)
    for m in members:
        print(f"member seed {m['seed']}: test force RMSE {m['test_rmse']:.2f} kJ/mol/nm ({m['epochs']} epochs)")
    print(f"ensemble mean of {len(members)}: {mean:.2f} kJ/mol/nm; average member {average:.2f} "
          f"({'better' if mean < average else 'NOT better'})")


if __name__ == "__main__":
    main()
