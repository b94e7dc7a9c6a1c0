"""MODEL_CARD.md of the shipped ethaline models, written from their metadata and the measured results, so the
card's numbers are the files' numbers.

    python benchmarks/model_card.py      # the shipped models, their committed results (defaults below)

--compare: `cgkd compare` results of the student's CG runs against the AA reference (first model in it);
--sim: the `cgkd simulate` summary.json of those runs; --speed: student_speed.json;
--study: ablation.json of `cgkd study` (the student's row, seeds and stress runs). benchmarks/study_table.py
rewrites the card whenever it rewrites ablation.json; a test checks that the committed card is up to date.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from cgkd.fileio import file_hash

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else None


def rel(path):
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def _frames(block):
    return f"{block[0]}–{block[1] - 1}"


def study_lines(student, study):
    """The student's entry in the ablation (found by its model.pt's hash), its rank among the students of its
    seed, the references' scores; the stress runs once they exist."""
    digest = file_hash(Path(student) / "model.pt")
    hit = [(name, e) for name, entries in study["variants"].items() for e in entries
           if (ROOT / e["model"] / "model.pt").exists() and file_hash(ROOT / e["model"] / "model.pt") == digest]
    if not hit:
        return ["- Ablation (`cgkd study`, STUDY.md): this student is not one of its models."]
    name, e = hit[0]

    def scored(kind):
        return sorted((x["rdf_error_mean"], n, x) for n, entries in study[kind].items() for x in entries
                      if x["seed"] == e["seed"] and x.get("rdf_error_mean") is not None)

    students = [n for _, n, _ in scored("variants")]
    refs = ", ".join(f"{n} {v:.3f} ({len(x['replicas'])} × {x['replicas'][0]['planned_ps']:g} ps)"
                     for v, n, x in scored("references"))
    reps = e["replicas"]
    out = [f"- Ablation (`cgkd study`, STUDY.md): this student is row \"{name}\", seed {e['seed']}: {len(reps)} "
           f"replica(s) of {reps[0]['planned_ps']:g} ps at {reps[0]['dt_fs']:g} fs, fraction stable "
           f"{e['stable_fraction']:.2f}; RDF error {e['rdf_error_mean']:.3f} (mean of pairs), ADF/CDF JS "
           f"{e['adf_js_mean']:.4f}/{e['cdf_js_mean']:.4f}: rank {students.index(name) + 1} of the "
           f"{len(students)} students of seed {e['seed']} compared so far by RDF error (references: {refs}; "
           "shorter runs carry more sampling noise in this error, so the 100 ps runs above and the references' "
           "are not comparable with it as they stand: STUDY.md, \"Run length and drift\")."]
    for cond, r in sorted(e.get("stress", {}).items()):
        if r:
            out.append(f"- Stress run {cond}: " + (f"stable over {r['time_ps']:g} ps" if r["stable"] else
                       f"failed after {r['time_to_failure_ps']:g} ps ({r['failed_check']})") + ".")
    return out


def card(student, teachers, compare, sim, speed, study):
    s = load(Path(student) / "metadata.json")
    tmetas = [load(m / "metadata.json") for m in sorted(Path(teachers).glob("member_*"))]
    ens = load(Path(teachers) / "ensemble.json") or {}
    h, th = s["hparams"], tmetas[0]["hparams"]
    cfg, d = s["config"], s.get("distillation", {})
    test = s["metrics"]["test"]
    member = [m["metrics"]["test"]["all"]["rmse"] for m in tmetas]
    lines = ["# Ethaline CG models: model card", "",
             "Shipped in `forcefields/cg/ethaline/`: `student/` (the model to run) and `teachers/` (the ensemble it "
             "was distilled from). Both run without training:", "",
             "    cgkd simulate --model forcefields/cg/ethaline/student --start systems/ethaline/reference/ethaline_cg.h5 "
             "--dt-fs 10 --steps 100000", "    cgkd.openmm.CGForceField(\"forcefields/cg/ethaline/student\")  "
             "# in an OpenMM script (README)", "",
             "## Data", "",
             f"`{rel(s['dataset'])}` (sha256 `{s['dataset_sha256'][:16]}…`): 1000 frames, one per ps, of 200 beads "
             "(50 CHO, 50 CL, 100 EGL: one bead per molecule at its centre of mass, forces summed over its atoms), "
             "mapped from 1 ns of all-atom NVT of 50 choline chloride : ethylene glycol 1:2 formula units (2100 "
             "atoms, OPLS-DES, Doherty & Acevedo 2018) at 298.15 K and the NPT density 1.1175 g/cm³ (experiment "
             f"1.1156). Contiguous blocks: frames {_frames(s['split']['train'])} train, {_frames(s['split']['val'])} "
             f"validation, {_frames(s['split']['test'])} test (the last 100 ps are never seen in training). Recipe: "
             "`systems/ethaline/reference/README.md`.", "",
             "## Architecture", "",
             f"- Student: TorchMD-Net `{h['arch']}` representation, " + (
                 f"its embedding alone (0 interaction layers: the norms of each bead's summed neighbour tensors "
                 f"carry the angles between its neighbours, a learned three-body model) with {h['channels']} channels, "
                 if h["layers"] == 0 else f"{h['layers']} layer(s) × {h['channels']} channels, ") +
             f"{h['rbf']} {h.get('rbf_type', 'expnorm')} radial functions, cutoff {h['cutoff']} nm, per-bead energy head; "
             f"prior: {s['prior']['kind']} (ε = {s['prior']['epsilon_kJ_mol']} kJ/mol) as native OpenMM forces.",
             f"- Teachers: {len(tmetas)} × `{th['arch']}` {th['layers']} × {th['channels']}, {th['rbf']} "
             f"{th.get('rbf_type', 'expnorm')} radial functions, cutoff {th['cutoff']} nm, the same prior.", "",
             "## Training", "",
             f"- Teachers: force matching on the mapped forces (Adam, lr {tmetas[0]['config']['lr']}, batch "
             f"{tmetas[0]['config']['batch_size']}, ReduceLROnPlateau, early stopping with patience "
             f"{tmetas[0]['config']['patience']}), seeds {[m['seed'] for m in tmetas]}, epochs run "
             f"{[m['epochs_run'] for m in tmetas]}.",
             f"- Student: `cgkd distill` from {len(d.get('used_members', []))} teachers; loss weights (each term divided "
             f"by its target's variance) " + ", ".join(f"w_{k} {v:g}" for k, v in d.get("weights", {}).items() if v)
             + "; teacher-labelled displaced training frames: "
             f"{'σ = %g nm, %d copy (weighted by the ensemble agreement)' % (cfg['perturb'], cfg['perturb_copies']) if cfg.get('perturb') else 'none'}; "
             f"{s['epochs_run']} epochs " + (f"(the cap: the validation loss was still falling; patience {cfg['patience']})"
                                             if s["epochs_run"] >= cfg["epochs"] else
                                             f"(early stopping on the validation loss, patience {cfg['patience']})")
             + f", seed {s['seed']}.", "",
             "## Test metrics (last 100 frames)", "",
             "| model | force RMSE vs mapped (kJ/mol/nm) | vs teachers' mean |", "|---|---|---|",
             f"| student | {test['forces_vs_mapped']['all']['rmse']:.1f} | {test['forces_vs_teachers']['all']['rmse']:.1f} |",
             f"| teacher (mean of members; range {min(member):.1f}–{max(member):.1f}) | {np.mean(member):.1f} | – |"]
    if "ensemble_mean" in ens:
        lines.append(f"| teacher ensemble mean | {ens['ensemble_mean']['all']['rmse']:.1f} | (itself) |")
    lines += ["", "The mapped forces are noisy (RMS 274 kJ/mol/nm per component): most of the RMSE against them is "
              "the noise of the mapping, which no model can predict.", ""]
    lines += ["## Structure and stability", ""]
    if compare:
        name = next(iter(compare["scores"]))
        sc = compare["scores"][name]
        rdf = {k[4:]: v["mean"] for k, v in sc.items() if k.startswith("rdf ")}
        js = [v["mean"] for k, v in sc.items() if k.startswith(("adf ", "cdf "))]
        runs = load(sim)
        lines += ["CG runs of the student compared with the AA reference (`cgkd compare`; results in "
                  f"`{rel(Path(sim).parent)}/`):", ""]
        if runs:
            reps = runs["replicas"]
            lines.append(f"- {len(reps)} replica(s) of {reps[0]['time_ps']:.0f} ps at {runs['timestep_fs']:g} fs, "
                         f"{runs['temperature_K']} K (Langevin 1/ps): fraction stable {runs['fraction_stable']:.2f}.")
        lines += ["- RDF error ∫|g−g_AA|dr/∫g_AA dr per pair: " + ", ".join(f"{k} {v:.3f}" for k, v in rdf.items())
                  + f" (mean {np.mean(list(rdf.values())):.3f}); AA first vs second half: 0.027–0.065.",
                  f"- ADF/CDF Jensen–Shannon divergence, mean over triplets: {np.mean(js):.3g}.",
                  "- Diffusion: D_CG/D_AA " + ", ".join(
                      f"{t} {compare['diffusion_nm2_per_ps'][name][t] / v:.0f}"
                      for t, v in compare["diffusion_nm2_per_ps"]["reference"].items())
                  + " (CG dynamics are faster than AA: rescale time, or use the model for structure)."]
    if study:
        lines += study_lines(student, study)
    if speed:
        scan = [f"{r['dt_fs']:g}" for r in speed["student_timestep_scan"]]
        lines += ["", f"## Speed ({speed['platform']} platform, {speed['threads']} threads, 200 beads; "
                  "`benchmarks/results/student_speed.json`)", "",
                  (f"Each model runs at the largest timestep that kept 2 replicas of 5 ps stable in a scan over "
                   f"{', '.join(scan)} fs" if len(scan) > 1 else
                   f"Each model runs at {scan[0]} fs, where 2 replicas of 5 ps stayed stable")
                  + " — a short test: the structure runs above used 10 fs.", "",
                  "| model | timestep (largest stable in the scan) | steps/s | ns/day |", "|---|---|---|---|"]
        for key, label in (("student", "student"), ("teacher", "one teacher"), ("ensemble", "8-teacher ensemble")):
            v = speed[key]
            lines.append(f"| {label} | {v['dt_fs']:g} fs | {v['steps_per_s']:.1f} | {v['ns_per_day']:.1f} |")
        lines.append(f"| AA, {speed['aa']['atoms']} atoms (OPLS-DES, PME, HMR) | 4 fs | – | {speed['aa']['ns_per_day']:.1f} |")
        at10 = speed["student"]["steps_per_s"] * 10.0 * 86400e-6
        lines += ["", f"Student vs ensemble {speed['student_vs_ensemble']:.1f}×, vs one teacher "
                  f"{speed['student_vs_teacher']:.1f}×, CG student vs AA {speed['student_cg_vs_aa']:.1f}× "
                  f"(ns/day ratios measured in one run); at 10 fs the student makes {at10:.0f} ns/day, "
                  f"{at10 / speed['aa']['ns_per_day']:.1f}× AA."]
    lines += ["", "## Limits", "",
              "- One state point: 298.15 K, 1:2 composition, the reference density (NVT). Other temperatures, "
              "compositions or pressures are extrapolation; the stress runs at 350 K only test stability.",
              "- Timestep: tested at the settings above; the beads' closest approaches in the data set the walls "
              "(`pair_onsets_nm` in the metadata) and the stability monitor's floors.",
              "- Box sizes: any box of whole molecules with edges ≥ 2 × the model's reach "
              f"({h['cutoff']} nm plus the walls); `--replicate` and `--units` build larger ones (tested), "
              "the neighbour budget grows with density, not size.",
              "- Dynamics: faster than AA (see D_CG/D_AA); time-dependent properties need rescaling.",
              "- Trained on 800 ps of one 2100-atom box: rare configurations are under-sampled."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default=str(ROOT / "forcefields/cg/ethaline/student"))
    ap.add_argument("--teachers", default=str(ROOT / "forcefields/cg/ethaline/teachers"))
    ap.add_argument("--compare", default=str(ROOT / "benchmarks/results/shipped_student/compare_results.json"))
    ap.add_argument("--sim", default=str(ROOT / "benchmarks/results/shipped_student/sim_summary.json"))
    ap.add_argument("--speed", default=str(ROOT / "benchmarks/results/student_speed.json"))
    ap.add_argument("--study", default=str(ROOT / "benchmarks/results/ablation.json"))
    ap.add_argument("--out", default=str(ROOT / "forcefields/cg/ethaline/MODEL_CARD.md"))
    a = ap.parse_args(argv)
    text = card(a.student, a.teachers, load(a.compare), a.sim, load(a.speed), load(a.study))
    Path(a.out).write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
