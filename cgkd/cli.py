"""The `cgkd` command: thin sub-commands that parse flags, load the stage config and call the stage."""
import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import typing
from pathlib import Path

from . import __version__, config
from .errors import CgkdError

HELP = {
    "build": "pack an AA box of a DES with packmol at its experimental density",
    "aa": "AA MD with forces: minimise, NPT equilibrate, NVT production to H5MD (resumable)",
    "map": "map an AA trajectory with forces to a CG dataset (bead positions, mapped forces) in H5MD",
    "train": "force matching: train a CG potential or an ensemble (--ensemble N) on a CG dataset",
    "label": "evaluate a teacher ensemble on every frame of a CG dataset or trajectory (cached labels for distill)",
    "distill": "train a student from teacher labels (forces, energy, per-bead energies) and/or mapped forces",
    "study": "the distillation ablation: variants x seeds -> students, CG runs, comparisons (submitit jobs)",
    "export": "TorchScript export of a model or ensemble for openmmtorch.TorchForce",
    "simulate": "CG MD with a trained model in OpenMM (TorchForce + native priors), with a stability monitor",
    "compare": "score CG trajectories against the mapped AA reference: RDF, ADF, CDF, diffusion; report + plots",
    "pipeline": "the whole chain from one YAML: [build, aa, map, train,] label, distill, export, simulate, compare, report",
    "demo": "the smallest pipeline on the shipped ethaline data and teachers: a student, its CG run and a report vs AA",
}


MAP_FORMAT = """mapping YAML (systems/<name>/mapping.yaml):

  residues:
    CHO:                          # residue name in the AA topology
      force_map: sum              # sum (default) or optimal (least-noise map, Kramer et al. 2023)
      beads:
        - name: HEAD              # bead name
          type: NME               # bead type (what the CG model sees)
          atoms: [N, C3, C4, C5, H31, H32, H33, H41, H42, H43, H51, H52, H53]   # or: all
          weights: mass           # mass (default), geometry, or one number per atom
        - {name: TAIL, type: OHE, atoms: [C1, H11, H12, C2, H21, H22, O, HO]}
    CL:
      beads: [{name: CL, type: CL, atoms: all}]

Every atom must be in exactly one bead, and a constrained pair may not cross two beads."""


def _add_config_flags(p, cls, skip=()):
    """One flag per config field (--npt-ps for npt_ps); default None so YAML and code defaults apply."""
    hints = typing.get_type_hints(cls)
    notes = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):  # subclasses override
        notes.update(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(base), re.M))
    p.add_argument("--config", help="YAML file with any of the keys below (flags win)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        if kind in (list, dict):  # structured settings live in the YAML only
            continue
        default = f"{notes.get(f.name, '')} (default: {f.default})".strip()
        if kind is bool:
            p.add_argument(flag, action="store_const", const=True, default=None, help=f"on/off {default}")
        else:
            p.add_argument(flag, type=kind, default=None, help=default)


def _config(cls, args):
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return config.load(cls, args.config, **values)


def cmd_build(args):
    from . import systems

    cfg = _config(config.BuildConfig, args)
    spec = systems.load_system(cfg.system, cfg.forcefield)
    out = Path(cfg.out or f"{spec.name}_{cfg.units}.pdb")
    systems.build_box(spec, cfg.units, out, seed=cfg.seed, overwrite=cfg.overwrite, cutoff=cfg.cutoff)
    edge = systems.box_edge(spec, cfg.units)
    print(f"wrote {out}: {cfg.units} formula units of {spec.name}, cubic box {edge:.3f} nm "
          f"at {spec.density} g/cm^3")


def cmd_aa(args):
    from .aa import run_aa

    summary = run_aa(_config(config.AAConfig, args))
    print(json.dumps(summary, indent=2))


def cmd_map(args):
    from . import mapping, readers, systems

    cfg = _config(config.MapConfig, args)
    if cfg.traj is None:
        raise CgkdError("cgkd map: --traj (an AA trajectory with forces) is required")
    spec_path = cfg.mapping or systems.load_system(cfg.system).path / "mapping.yaml"
    spec = mapping.MappingSpec.load(spec_path)
    reader = readers.open_trajectory(cfg.traj, cfg.topology, cfg.format, cfg.lammps_units, cfg.constraints,
                                     cfg.dt_ps)
    summary = mapping.map_trajectory(reader, spec, cfg.out, cfg.chunk, cfg.overwrite, config_text=config.to_yaml(cfg))
    print(json.dumps(summary, indent=2))


def cmd_train(args):
    from .train import train

    result = train(_config(config.TrainConfig, args))
    for k, m in enumerate(result.members):
        t = m["metrics"]["test"]["all"]
        print(f"member {k} (seed {m['seed']}): test force RMSE {t['rmse']:.2f} kJ/mol/nm, MAE {t['mae']:.2f}; "
              f"force-energy consistency {m['force_energy_consistency_max_rel']:.1e}")
    summary = result.ensemble
    if "ensemble_mean" in summary:
        print(f"ensemble mean: test force RMSE {summary['ensemble_mean']['all']['rmse']:.2f} kJ/mol/nm "
              f"(average member {summary['average_member_rmse']:.2f})")


def cmd_label(args):
    from .labels import label

    cfg = _config(config.LabelConfig, args)
    if cfg.teachers is None or cfg.dataset is None:
        raise CgkdError("cgkd label: --teachers (a teacher ensemble folder) and --dataset (a CG dataset or "
                        "trajectory) are required")
    labels, status = label(cfg.teachers, cfg.dataset, cfg.out, cfg.batch_size, cfg.overwrite)
    print(f"{'reused' if status == 'reused' else 'wrote'} {labels.path}: {labels.forces.shape[0]} frames x "
          f"{labels.forces.shape[1]} members")
    types = json.loads(labels.attrs["type_names"])
    print("ensemble force std (RMS per bead type, kJ/mol/nm): " + ", ".join(
        f"{t} {v:.1f}" for t, v in labels.uncertainty(types).items()))
    if labels.forces.shape[1] > 1:
        from .labels import plot_uncertainty

        print(f"histogram: {plot_uncertainty(labels, types, labels.path.with_suffix('.uncertainty.png'))}")


def cmd_distill(args):
    from .distill import distill

    meta = distill(_config(config.DistillConfig, args))
    t = meta["metrics"]["test"]
    print(f"student {meta['config']['out']} ({meta['hparams']['arch']}, {meta['hparams']['channels']} channels x "
          f"{meta['hparams']['layers']} layers, cutoff {meta['hparams']['cutoff']} nm, {meta['epochs_run']} epochs): test "
          f"force RMSE {t['forces_vs_mapped']['all']['rmse']:.2f} vs mapped, "
          f"{t['forces_vs_teachers']['all']['rmse']:.2f} vs teachers (kJ/mol/nm); per-bead energy RMSE vs "
          f"teachers {t['eps_vs_teachers_rmse']['all']:.3f} kJ/mol")


def cmd_study(args):
    import numpy as np

    from .study import Study, StudyConfig
    from .study_report import seed_stats

    if not args.config:
        raise CgkdError("cgkd study: --config (a study YAML, e.g. benchmarks/ablation.yaml) is required")
    study = Study(_config(StudyConfig, args))
    result = study.report() if args.report else study.run()
    for kind in ("variants", "references"):
        for name, seeds in result[kind].items():
            rdf = seed_stats([e.get("rdf_error_mean") for e in seeds])
            stable = [e["stable_fraction"] for e in seeds if e.get("stable_fraction") is not None]
            print(f"{name}: RDF error {rdf[0]:.3f} +- {rdf[1] or 0.0:.3f} over {rdf[2]} seed(s); "
                  f"stable {np.mean(stable):.2f}" if rdf else f"{name}: no comparison yet")
    out = Path(result["config"]["out"])
    print(f"cgkd study: results in {out / 'ablation.json'}; table and plot in {out / 'study.md'}")


def cmd_export(args):
    from .export import export_model

    cfg = _config(config.ExportConfig, args)
    if not cfg.model or not cfg.topology:
        raise CgkdError("cgkd export: --model (a model or ensemble folder) and --topology (a CG dataset or "
                        "trajectory giving the bead types) are required")
    out = Path(cfg.out or Path(cfg.model) / "model.ts")
    if out.exists() and not cfg.overwrite:
        raise CgkdError(f"{out}: output exists; pass --overwrite to replace it")
    out, members, beads = export_model(cfg.model, cfg.topology, out, include_prior=not cfg.no_prior)
    print(f"wrote {out}: {members} member(s), {beads} beads, energy in kJ/mol from positions in nm")


def cmd_simulate(args):
    from .simulate import resume_config, simulate

    cfg = _config(config.SimConfig, args)
    if cfg.resume:  # flags left out must not override the saved run's settings with defaults
        cfg = resume_config(cfg.out, args.steps, args.threads)
    summary = simulate(cfg)
    for k, r in enumerate(summary["replicas"]):
        state = "stable" if r["stable"] else f"FAILED ({r['failed_check']}: {r['detail']}) at {r['time_to_failure_ps']:.1f} ps"
        print(f"replica {k}: {r['time_ps']:.1f} ps, {r['frames']} frames, {state}; {r['ns_per_day']:.2f} ns/day")
    print(f"fraction stable: {summary['fraction_stable']:.2f}; summary {Path(cfg.out) / 'summary.json'}")
    if summary["fraction_stable"] < 1.0:
        raise SystemExit(1)


def cmd_compare(args):
    from . import report

    cfg = _config(config.CompareConfig, args)
    if cfg.reference is None:
        raise CgkdError("cgkd compare: --reference (the mapped AA reference dataset) is required")
    models = {}
    for item in cfg.model or []:
        name, _, paths = item.partition("=")
        if not paths:
            raise CgkdError(f"--model {item!r}: expected NAME=PATH[,PATH...]")
        models[name] = paths.split(",")
    triplets = None
    if cfg.triplets:
        triplets = []
        for t in cfg.triplets:
            parts = t.split("-")
            if len(parts) != 3:
                raise CgkdError(f"--triplets {t!r}: expected NEIGHBOUR-CENTRE-NEIGHBOUR, e.g. CL-CHO-CL")
            triplets.append((parts[1], (parts[0], parts[2])))
    settings = report.CompareSettings(r_max=cfg.r_max, n_bins=cfg.n_bins, triplets=triplets, stride=cfg.stride,
                                      blocks=cfg.blocks)
    result = report.compare(cfg.reference, models, cfg.out, settings)
    print(f"wrote {result['out']}/report.md, results.json and {len(result['plots'])} plots")


def cmd_pipeline(args, cfg=None):
    from .pipeline import Pipeline, PipelineConfig, score_table

    cfg = cfg or _config(PipelineConfig, args)
    state = Pipeline(cfg).run()
    print(f"\nreport: {state['stages']['report']['out']}\n")
    print(score_table(state))


def cmd_demo(args):
    from .pipeline import PipelineConfig
    from .systems import ROOT

    cfg = config.load(PipelineConfig, args.config or DEMO_CONFIG, out=args.out)
    for key in ("dataset", "teachers"):  # the YAML's relative paths are in the repository
        if getattr(cfg, key) is not None:
            setattr(cfg, key, str(ROOT / getattr(cfg, key)))
    cfg.against = {name: str(ROOT / model) for name, model in cfg.against.items() if (ROOT / model).is_dir()}
    cmd_pipeline(args, cfg)


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "systems" / "ethaline" / "pipeline_demo.yaml"  # `cgkd demo`


def parser():
    from .pipeline import PipelineConfig
    from .study import StudyConfig

    p = argparse.ArgumentParser(prog="cgkd", description="Machine-learned CG force fields for deep eutectic "
                                "solvents: AA data, mapping, teachers, distilled students, OpenMM runs.")
    p.add_argument("--version", action="version", version=f"cgkd {__version__}")
    p.add_argument("--verbose", action="store_true", help="also show the log of TorchMD-Net's warp kernels")
    sub = p.add_subparsers(dest="command", required=True)
    stages = {"build": (config.BuildConfig, cmd_build), "aa": (config.AAConfig, cmd_aa),
              "map": (config.MapConfig, cmd_map), "train": (config.TrainConfig, cmd_train),
              "label": (config.LabelConfig, cmd_label), "distill": (config.DistillConfig, cmd_distill),
              "study": (StudyConfig, cmd_study), "pipeline": (PipelineConfig, cmd_pipeline),
              "export": (config.ExportConfig, cmd_export),
              "simulate": (config.SimConfig, cmd_simulate), "compare": (config.CompareConfig, cmd_compare)}
    parsers = {}
    for name, (cls, func) in stages.items():
        extra = {"description": HELP["map"] + "\n\n" + MAP_FORMAT,
                 "formatter_class": argparse.RawDescriptionHelpFormatter} if name == "map" else {}
        parsers[name] = sp = sub.add_parser(name, help=HELP[name], **{"description": HELP[name], **extra})
        _add_config_flags(sp, cls)
        sp.set_defaults(func=func)
    parsers["study"].add_argument("--report", action="store_true", help="only gather what has finished into "
                                  "ablation.json and study.md (table, RDF-error plot); run nothing")
    parsers["study"].add_argument("--rows", nargs="+", metavar="ROW", help="run only these rows (variant or "
                                  "reference names, e.g. 'FM' 'KD-8 {f,eps}'), seed by seed, to get the comparisons "
                                  "that matter first; the report still covers every row (YAML key: rows)")
    c = parsers["compare"]
    c.add_argument("--model", action="append", help="NAME=PATH[,PATH...]: a model's CG trajectories (replicas); "
                   "repeat for more models")
    c.add_argument("--triplets", nargs="+", help="ADF/CDF triplets NEIGHBOUR-CENTRE-NEIGHBOUR (default: like "
                   "neighbours around every centre type)")
    d = sub.add_parser("demo", help=HELP["demo"], description=HELP["demo"])
    d.add_argument("--config", help=f"pipeline YAML (default: {DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[2])}; "
                   "relative paths in it are taken from the repository)")
    d.add_argument("--out", help="output folder (default: the YAML's out, runs/demo)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.verbose:
        os.environ["CGKD_VERBOSE"] = "1"
    try:
        args.func(args)
    except CgkdError as e:
        print(f"cgkd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cgkd {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, no permission, ...: checkpoints and finished outputs are written atomically
        what = (e.strerror or str(e) or type(e).__name__).splitlines()[0]
        where = f"{e.filename}: " if e.filename else ""
        print(f"cgkd {args.command}: error: {where}{what}; what was written before is intact: free space or fix "
              "permissions, then rerun with --resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
