"""`cgkd pipeline --config <yaml>`: the whole chain in one command, at any scale; `cgkd demo` is its smallest
config (systems/ethaline/pipeline_demo.yaml).

Stages, each with its own YAML section (the keys of that stage's config; see `cgkd <stage> --help`):

    build -> aa -> map      only when the YAML has these sections (from scratch); else `dataset:` is used
    train                   only with a `train:` section; else `teachers:` is used
    label -> distill -> export -> simulate -> compare -> report.md

Everything goes under `out:` (box.pdb, aa.h5, cg.h5, teachers/, student/, sim/<model>/, compare/,
report.md). `against:` names other models (e.g. the shipped student) that are simulated and compared too.
<out>/pipeline.json records every finished stage with its time; a re-run skips them and resumes an interrupted
stage from its checkpoints.
"""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import config
from .errors import CgkdError
from .fileio import output_lock, write_json

STAGES = ("build", "aa", "map", "train", "label", "distill", "export", "simulate", "compare", "report")
# YAML section -> (its config class, the keys the pipeline sets itself)
SECTIONS = {"build": (config.BuildConfig, {"out"}), "aa": (config.AAConfig, {"out"}),
            "map": (config.MapConfig, {"traj", "out"}), "train": (config.TrainConfig, {"dataset", "out"}),
            "distill": (config.DistillConfig, {"dataset", "teachers", "out"}),
            "simulate": (config.SimConfig, {"model", "start", "out"})}


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"        # folder of every stage's output, pipeline.json and report.md
    dataset: Optional[str] = None     # CG dataset (mapped AA reference) when there are no build/aa/map sections
    teachers: Optional[str] = None    # teacher ensemble folder when there is no train section
    build: dict = None                # BuildConfig keys: pack an AA box (from scratch)
    aa: dict = None                   # AAConfig keys: the AA run on that box
    map: dict = None                  # MapConfig keys: map the AA run to the CG dataset
    train: dict = None                # TrainConfig keys: train the teacher ensemble on the dataset
    distill: dict = field(default_factory=dict)   # DistillConfig keys of the student
    simulate: dict = field(default_factory=dict)  # SimConfig keys of the CG runs (every model)
    compare: dict = field(default_factory=dict)   # CompareSettings keys (stride, blocks, n_bins)
    against: dict = field(default_factory=dict)   # name: model folder, simulated and compared beside the student


class Pipeline:
    """The stages of a PipelineConfig, run in order; finished ones (in pipeline.json) are skipped."""

    def __init__(self, cfg, progress=True):
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        self.dataset = cfg.dataset if cfg.map is None else str(self.out / "cg.h5")
        self.teachers = cfg.teachers if cfg.train is None else str(self.out / "teachers")
        if self.dataset is None:
            raise CgkdError("cgkd pipeline: give `dataset:` (a CG dataset) or the build, aa and map sections")
        if self.teachers is None:
            raise CgkdError("cgkd pipeline: give `teachers:` (an ensemble folder) or a train section")
        if cfg.aa is not None and cfg.build is None and "pdb" not in cfg.aa:
            raise CgkdError("cgkd pipeline: the aa section needs a build section or `pdb:`")
        import dataclasses

        from .report import CompareSettings

        for name, (cls, fixed) in {**SECTIONS, "compare": (CompareSettings, set())}.items():
            keys = set(getattr(cfg, name) or {})
            unknown = keys - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise CgkdError(f"cgkd pipeline: unknown keys in its {name} section: {', '.join(sorted(unknown))}")
            if keys & fixed:
                raise CgkdError(f"cgkd pipeline: {', '.join(sorted(keys & fixed))} in its {name} section are set by "
                                "the pipeline; leave them out")
        for name, model in cfg.against.items():
            if not Path(model).is_dir():
                raise CgkdError(f"cgkd pipeline: against.{name}: {model} is not a model folder")
        self.state_file = self.out / "pipeline.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"stages": {}}
        self.student = self.out / "student"
        self.models = {"student": str(self.student), **cfg.against}

    def stages(self):
        wanted = {"build": self.cfg.build is not None, "aa": self.cfg.aa is not None,
                  "map": self.cfg.map is not None, "train": self.cfg.train is not None}
        return [s for s in STAGES if wanted.get(s, True)]

    def run(self):
        with output_lock(self.out):
            todo = self.stages()
            for k, stage in enumerate(todo):
                if stage in self.state["stages"]:
                    self._say(f"[{k + 1}/{len(todo)}] {stage}: done before, skipped")
                    continue
                self._say(f"[{k + 1}/{len(todo)}] {stage} ...")
                t0 = time.perf_counter()
                info = getattr(self, "_" + stage)() or {}
                self.state["stages"][stage] = {"seconds": round(time.perf_counter() - t0, 1), **info}
                write_json(self.state_file, self.state)
                self._say(f"[{k + 1}/{len(todo)}] {stage}: {self.state['stages'][stage]['seconds']:.0f} s")
        return self.state

    def _say(self, text):
        if self.progress:
            print(text, flush=True)

    def _section(self, cls, section, **fixed):
        """A stage config from its YAML section, with the pipeline's own paths (and resume) filled in."""
        return config.load(cls, **{**(section or {}), **fixed})

    def _build(self):
        from . import systems

        cfg = self._section(config.BuildConfig, self.cfg.build, out=str(self.out / "box.pdb"), overwrite=True)
        spec = systems.load_system(cfg.system, cfg.forcefield)
        systems.build_box(spec, cfg.units, cfg.out, seed=cfg.seed, overwrite=True, cutoff=cfg.cutoff)
        return {"out": cfg.out}

    def _aa(self):
        from .aa import run_aa

        out = self.out / "aa.h5"
        fixed = {"out": str(out), "resume": out.with_name("aa.h5.chk").exists(), "overwrite": True}
        if self.cfg.build is not None:
            fixed["pdb"] = str(self.out / "box.pdb")
        summary = run_aa(self._section(config.AAConfig, self.cfg.aa, **fixed), progress=self.progress)
        return {"out": str(out), "frames": summary["frames"]}

    def _map(self):
        from . import mapping, readers, systems

        cfg = self._section(config.MapConfig, self.cfg.map, traj=str(self.out / "aa.h5"), out=self.dataset,
                            overwrite=True)
        spec = mapping.MappingSpec.load(cfg.mapping or systems.load_system(cfg.system).path / "mapping.yaml")
        s = mapping.map_trajectory(readers.open_trajectory(cfg.traj), spec, cfg.out, cfg.chunk, True,
                                   config_text=config.to_yaml(cfg), progress=self.progress)
        return {"out": s["out"], "frames": s["frames"]}

    def _train(self):
        from .train import train

        metas = train(self._section(config.TrainConfig, self.cfg.train, dataset=self.dataset, out=self.teachers,
                                    resume=True), progress=self.progress).members
        return {"out": self.teachers, "test_force_rmse": [m["metrics"]["test"]["all"]["rmse"] for m in metas]}

    def _label(self):
        from .labels import label

        labels, status = label(self.teachers, self.dataset, progress=self.progress)
        return {"out": str(labels.path), "status": status}

    def _distill(self):
        from .distill import distill

        cfg = self._section(config.DistillConfig, self.cfg.distill, dataset=self.dataset, teachers=self.teachers,
                            out=str(self.student), resume=True)
        meta = distill(cfg, progress=self.progress)
        t = meta["metrics"]["test"]
        return {"out": str(self.student), "epochs": meta["epochs_run"],
                "test_force_rmse_vs_mapped": t["forces_vs_mapped"]["all"]["rmse"],
                "test_force_rmse_vs_teachers": t["forces_vs_teachers"]["all"]["rmse"]}

    def _export(self):
        from .export import export_model

        return {"out": str(export_model(self.student, self.dataset)[0])}

    def _simulate(self):
        from .simulate import simulate

        info = {}
        for name, model in self.models.items():
            out = self.out / "sim" / name
            resume = (out / "config.yaml").exists()
            cfg = self._section(config.SimConfig, self.cfg.simulate, model=str(model), start=self.dataset,
                                out=str(out), resume=resume, overwrite=not resume)
            s = simulate(cfg, progress=self.progress)
            info[name] = {"fraction_stable": s["fraction_stable"], "time_ps": [r["time_ps"] for r in s["replicas"]],
                          "ns_per_day": [r["ns_per_day"] for r in s["replicas"]],
                          "failed": [r.get("failed_check") for r in s["replicas"]]}
        return info

    def _compare(self):
        from .report import CompareSettings, compare

        runs = {}
        for name in self.models:
            summary = json.loads((self.out / "sim" / name / "summary.json").read_text())
            runs[name] = [r["out"] for r in summary["replicas"] if r["frames"] >= 2]
        runs = {n: p for n, p in runs.items() if p}
        if not runs:
            raise CgkdError(f"{self.out / 'sim'}: no CG run wrote two frames; nothing to compare")
        result = compare(self.dataset, runs, self.out / "compare", CompareSettings(**self.cfg.compare),
                         progress=self.progress)
        return {"out": result["out"], "scores": {n: {k: v["mean"] for k, v in s.items()}
                                                 for n, s in result["scores"].items()}}

    def _report(self):
        out = self.out / "report.md"
        out.write_text(report_markdown(self.cfg, self.state["stages"], self.out))
        return {"out": str(out)}


def report_markdown(cfg, stages, out):
    """report.md: what each stage did and took, then the comparison (its table and plots, paths from out)."""
    lines = ["# cgkd pipeline report", "", f"Dataset `{stages.get('map', {}).get('out', cfg.dataset)}`, teachers "
             f"`{stages.get('train', {}).get('out', cfg.teachers)}`.", "", "| stage | seconds | result |",
             "|---|---|---|"]
    for name, info in stages.items():
        brief = ", ".join(f"{k} {_fmt(v, out)}" for k, v in info.items() if k not in ("seconds", "scores"))
        lines.append(f"| {name} | {info['seconds']:.0f} | {brief} |")
    comparison = (out / "compare" / "report.md").read_text().splitlines()
    body = [line.replace("](", "](compare/") if line.startswith("![") else line for line in comparison[1:]]
    return "\n".join(lines + ["", "## Comparison with the AA reference"] + body) + "\n"


def _fmt(v, out):
    """A stage result for the report's table: numbers to 3 digits, paths under `out` relative to it."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x, out)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x, out) for x in v) + "]"
    if isinstance(v, str) and v.startswith(str(out) + "/"):
        return f"`{v[len(str(out)) + 1:]}`"
    return str(v)


def score_table(state):
    """A short text table of the comparison scores per model (what `cgkd pipeline` prints at the end)."""
    scores = state["stages"]["compare"]["scores"]
    names = list(scores)
    keys = list(scores[names[0]])
    rows = [f"{'score':28s}" + "".join(f" {n:>16s}" for n in names)]
    rows += [f"{k:28s}" + "".join(f" {scores[n][k]:16.4g}" for n in names) for k in keys]
    return "\n".join(rows)
