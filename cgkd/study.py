"""`cgkd study`: the distillation ablation as independent jobs run by submitit.

For every variant (a set of `cgkd distill` settings) and seed it distils a student, runs CG simulations of it
(default replicas and stress runs: larger timesteps, a higher temperature) and compares the default replicas
with the AA reference; reference rows (a teacher member, the whole ensemble) skip the distillation. The AA
reference's first half against its second half gives the noise floor. The work of one model (distil, its default
runs, their comparison) is a chain of tasks done in order, and its stress runs a second chain; chains are
independent and run in stages, seed by seed: the main chains of the first seed, then its stress chains beside
the main chains of the second seed, and so on, so a study cut short has every row's first seed complete
(accuracy and stability) early, and a stress chain never starts before its model exists. Each task writes its
output under <out>/ and is skipped once finished (a re-run only does what is left; interrupted distillations and
simulations resume from their checkpoints). A chain is finished once its comparison is, so a study folder kept
without trajectories and checkpoints (models, run summaries, comparisons: what the reference ablation commits)
continues where it stopped; the FM-vs-best-KD overlay is drawn from the comparisons' saved curves. Local
execution runs `workers` submitit jobs at a time, each taking the next chain that no job holds; `executor:
slurm` submits one job per chain with the YAML's `slurm` settings. ablation.json and study.md (see `aggregate`)
are rewritten whenever a chain finishes.
"""
import contextlib
import dataclasses
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import config
from .errors import CgkdError, OutputLocked
from .fileio import output_lock, write_json

@dataclass
class StudyConfig:
    dataset: Optional[str] = None     # the AA reference CG dataset (the teachers' training data)
    teachers: Optional[str] = None    # teacher ensemble folder (member_*) every variant distils from
    out: str = "runs/study"           # study folder: models/, runs/, compare/, ablation.json
    executor: str = "local"           # local (submitit's local processes) | slurm
    workers: int = 2                  # local: jobs at once (one thread each)
    seeds: list = field(default_factory=lambda: [1, 2, 3])  # every row is trained/run once per seed (a row's
    #   own `seeds` key overrides it: more seeds where a comparison needs them)
    student: dict = field(default_factory=dict)      # DistillConfig keys shared by every variant
    variants: dict = field(default_factory=dict)     # name: DistillConfig keys; members: per-seed picks member seed-1
    references: dict = field(default_factory=dict)   # name: {model: teacher | ensemble, replicas, simulate, stress}
    simulate: dict = field(default_factory=dict)     # SimConfig keys of the default runs (replicas, steps, dt_fs, ...)
    stress: dict = field(default_factory=dict)       # {timesteps: [fs], temperature: K, steps: n}
    compare: dict = field(default_factory=dict)      # CompareSettings keys (stride, blocks, n_bins)
    slurm: dict = field(default_factory=dict)        # submitit slurm parameters (partition, timeout_min, gpus_per_node)
    rows: list = field(default_factory=list)         # run only these rows (all when empty); the report has all


def slug(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


@dataclass
class Task:
    """One independent job: `kind` (distill, simulate, compare, floor), its output folder and its settings.
    trajectory: a simulation whose trajectory a later task of its chain reads (it is done only while the
    trajectory is there: a committed study keeps run summaries, not trajectories)."""
    kind: str
    out: str
    settings: dict
    trajectory: bool = False

    def done(self):
        marker = {"distill": "metadata.json", "simulate": "summary.json", "compare": "results.json",
                  "floor": "results.json"}[self.kind]
        if self.kind == "simulate":
            f = Path(self.out) / marker
            if not f.exists():
                return False
            summary = json.loads(f.read_text())
            wrote = any(r.get("frames", 0) > 0 for r in summary.get("replicas", []))
            return _finished(summary, self.settings["steps"]) and not (
                self.trajectory and wrote and not any(Path(self.out).glob("replica_*/traj.h5")))
        return (Path(self.out) / marker).exists()

    def run(self):
        out = Path(self.out)
        if self.kind == "distill":
            from .distill import distill

            distill(config.DistillConfig(**self.settings, out=str(out), resume=out.exists()), progress=False)
        elif self.kind == "simulate":
            from .simulate import simulate

            # Resume from a checkpoint; a folder without one (e.g. a fresh clone of a study whose checkpoints
            # are not kept) starts the run again.
            resume = (out / "config.yaml").exists() and any(out.glob("replica_*/traj.h5.chk"))
            cfg = config.SimConfig(**self.settings, out=str(out), resume=resume, overwrite=not resume)
            try:
                simulate(cfg, progress=False)
            except OutputLocked:  # another process runs this task: not a result
                raise
            except CgkdError as e:  # a run that cannot start (e.g. NaN at step 0) is a failed replica
                write_json(out / "summary.json", {"replicas": [{"stable": False, "failed_check": "start",
                                                                "detail": str(e), "time_to_failure_ps": 0.0,
                                                                "steps": 0}], "fraction_stable": 0.0})
        else:
            from .report import CompareSettings, compare

            s = self.settings
            models = s.get("models", {})
            if "runs" in s:  # the replicas of one row and seed, as they stand when the comparison runs
                trajs = _trajectories(s["runs"])
                models = {s["name"]: trajs} if trajs else {}
            if not models:
                write_json(out / "results.json", {"scores": {}, "note": "no trajectory long enough to compare"})
                return
            compare(s["reference"], models, out, CompareSettings(**s.get("compare", {})), progress=False)


def chain_done(chain):
    """A chain that ends in a comparison is done once the comparison is (its runs' trajectories may be gone)."""
    return chain[-1].done() if chain[-1].kind == "compare" else all(t.done() for t in chain)


def tasks_done(chain):
    return len(chain) if chain_done(chain) else sum(t.done() for t in chain)


def _finished(summary, steps):
    reps = summary.get("replicas", [])
    return bool(reps) and all((not r["stable"]) or r["steps"] >= steps for r in reps)


def run_chains(chains, threads=1):
    """What one submitit job does: the chains in turn, each chain's tasks in order, skipping finished ones and
    chains another job holds (a job claims a chain with an output_lock while it works on it, so the local
    executor's jobs share one list and each takes the next free chain; any other process on the same
    chains skips them). A task that raises ends its chain (the rest depends on it), not the job: its traceback
    goes to <task out>/failed.txt and the job goes on with its next chain. Returns [(task out, error)]."""
    import torch

    torch.set_num_threads(threads)
    failures = []
    for chain in chains:
        if chain_done(chain):
            continue
        with contextlib.ExitStack() as claim:
            try:
                claim.enter_context(output_lock(chain_claim(chain)))
            except OutputLocked:
                continue
            if not chain_done(chain):  # another job may have finished it meanwhile
                failures += _run_chain(chain)
    return failures


def chain_claim(chain):
    """The path whose output_lock a job holds while it works on `chain` (beside the chain's last output)."""
    last = Path(chain[-1].out)
    return last.with_name(f"{last.name}.chain")


def _run_chain(chain):
    failures = []
    for t in chain:
        if t.done():
            continue
        try:
            t.run()
            (Path(t.out) / "failed.txt").unlink(missing_ok=True)
        except Exception as e:
            Path(t.out).mkdir(parents=True, exist_ok=True)
            (Path(t.out) / "failed.txt").write_text(traceback.format_exc())
            failures.append((t.out, f"{type(e).__name__}: {e}"))
            break
    return failures


class Study:
    """The task chains of a StudyConfig (one per model) and their execution through submitit."""

    def __init__(self, cfg):
        for key in ("dataset", "teachers"):
            if getattr(cfg, key) is None:
                raise CgkdError(f"cgkd study: `{key}` is required (in the YAML or as --{key})")
        if cfg.executor not in ("local", "slurm"):
            raise CgkdError(f"cgkd study: executor must be local or slurm, got {cfg.executor!r}")
        if not cfg.variants and not cfg.references:
            raise CgkdError("cgkd study: no variants and no references to run")
        unknown = [r for r in cfg.rows if r not in cfg.variants and r not in cfg.references]
        if unknown:
            raise CgkdError(f"cgkd study: rows: no variant or reference named {', '.join(map(repr, unknown))}; "
                            f"the study has {', '.join(map(repr, [*cfg.variants, *cfg.references]))}")
        row_seeds = {name: row.get("seeds", cfg.seeds) for name, row in {**cfg.variants, **cfg.references}.items()}
        for name, s in row_seeds.items():
            if not (isinstance(s, list) and s and all(isinstance(x, int) and x >= 1 for x in s)):
                raise CgkdError(f"cgkd study: {name!r}: seeds must be a list of integers >= 1, got {s!r}")
        self.cfg = cfg
        self.out = Path(cfg.out)
        from .model import ensemble_members

        self.members = ensemble_members(cfg.teachers)
        self.models = {}  # (row name, seed) -> model folder
        for name in cfg.variants:
            for seed in row_seeds[name]:
                self.models[(name, seed)] = str(self.out / "models" / slug(name) / f"seed_{seed}")
        for name, ref in cfg.references.items():
            kind = ref.get("model", "teacher")
            for seed in (row_seeds[name] if kind == "teacher" else row_seeds[name][:1]):
                self.models[(name, seed)] = str(self.members[(seed - 1) % len(self.members)] if kind == "teacher"
                                                 else cfg.teachers)

    @property
    def seeds(self):
        """Every seed some row runs: the study's seeds, then the extra seeds of rows that have more, in order."""
        return list(dict.fromkeys([*self.cfg.seeds, *sorted({s for name, s in self.models})]))

    def _distill_settings(self, name, seed):
        v = dict(self.cfg.variants[name])
        v.pop("seeds", None)
        if v.get("members") == "per-seed":  # one teacher: a different member for each seed
            v["members"] = str((seed - 1) % len(self.members))
        return {**self.cfg.student, **v, "dataset": self.cfg.dataset, "teachers": self.cfg.teachers, "seed": seed}

    def chains(self, stage="main", seeds=None):
        """[[Task]] of one stage for `seeds` (default all). main: the noise floor (with the first seed), then per
        seed, per row: distil (variants), the default runs, their comparison with the reference. stress: per
        seed, per row whose model exists: the stress runs."""
        c = self.cfg
        seeds = self.seeds if seeds is None else seeds
        out = [] if stage == "stress" or c.seeds[0] not in seeds else [[Task(
            "floor", str(self.out / "compare" / "noise_floor"), {
                "reference": str(self.out / "extra" / "aa_first_half.h5"),
                "models": {"AA second half": [str(self.out / "extra" / "aa_second_half.h5")]},
                "compare": c.compare})]]
        for seed in seeds:
            for (name, s), model in self.models.items():
                if s != seed or (c.rows and name not in c.rows) or (
                        stage == "stress" and name in c.variants and not (Path(model) / "metadata.json").exists()):
                    continue
                base = {**c.simulate, **c.references.get(name, {}).get("simulate", {}), "model": model,
                        "start": c.dataset, "threads": 1}
                base.pop("replicas", None)
                base.setdefault("steps", config.SimConfig.steps)
                folder = self.out / "runs" / slug(name) / f"seed_{seed}"
                chain = []
                if stage == "main":
                    if name in c.variants:
                        chain.append(Task("distill", model, self._distill_settings(name, seed)))
                    for k in range(c.references.get(name, {}).get("replicas", c.simulate.get("replicas", 3))):
                        chain.append(Task("simulate", str(folder / f"replica_{k}"), {**base, "seed": 1000 * seed + k},
                                          trajectory=True))
                    chain.append(Task("compare", str(self.out / "compare" / slug(name) / f"seed_{seed}"),
                                      {"reference": c.dataset, "name": name, "runs": str(folder),
                                       "compare": c.compare}))
                else:
                    stress = c.references.get(name, {}).get("stress", c.stress)
                    steps = stress.get("steps", base["steps"])
                    for dt in stress.get("timesteps", []):
                        chain.append(Task("simulate", str(folder / f"dt{dt:g}"),
                                          {**base, "seed": 1000 * seed, "dt_fs": dt, "steps": steps}))
                    if stress.get("temperature"):
                        chain.append(Task("simulate", str(folder / f"T{stress['temperature']:g}"),
                                          {**base, "seed": 1000 * seed, "temperature": stress["temperature"],
                                           "steps": steps}))
                if chain:
                    out.append(chain)
        return out

    def prepare(self, progress=True):
        """Inputs every phase needs, made once in this process: the teachers' labels of the dataset, the AA
        halves for the noise floor."""
        from .dataset import CGDataset
        from .labels import label

        extra = self.out / "extra"
        if (extra / "aa_second_half.h5").exists():
            return
        extra.mkdir(parents=True, exist_ok=True)
        ds = CGDataset(self.cfg.dataset)
        if self.cfg.variants:
            label(self.cfg.teachers, ds, progress=progress)
        ds.write_halves(extra)  # last: its second file marks `prepare` complete

    def executor(self):
        import submitit

        folder = self.out / "jobs"
        if self.cfg.executor == "slurm":
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
            ex.update_parameters(**{"timeout_min": 240, "cpus_per_task": 1, **self.cfg.slurm})
        else:
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=int(self.cfg.slurm.get("timeout_min", 7 * 24 * 60)))
        return ex

    def stages(self):
        """(label, chains) in order: the first seed's main chains; then each seed's stress chains (first) beside
        the next seed's main chains (its models exist by then); last, the last seed's stress chains."""
        seeds = self.seeds
        for k in range(len(seeds) + 1):
            main = self.chains("main", seeds[k:k + 1]) if k < len(seeds) else []
            stress = self.chains("stress", seeds[k - 1:k]) if k else []
            label = " + ".join([*([f"seed {seeds[k - 1]} stress"] if k else []),
                                *([f"seed {seeds[k]} main"] if k < len(seeds) else [])])
            yield label, stress + main  # the short stress chains first: the finished seed's stability soon

    def run_chains(self, stage, chains, progress=True, poll=5.0):
        """Submit the unfinished chains of a stage and wait for them, printing progress (chains and tasks done,
        running jobs) and rewriting the report whenever a chain finishes; returns the failed tasks."""
        todo = [ch for ch in chains if not chain_done(ch)]
        n_tasks = sum(len(ch) for ch in chains)

        def status():
            return (len(chains) - sum(not chain_done(ch) for ch in todo),
                    n_tasks - sum(len(ch) - tasks_done(ch) for ch in todo))

        if progress:
            print(f"cgkd study: {stage}: {len(chains) - len(todo)}/{len(chains)} chains done, {len(todo)} to run "
                  f"({n_tasks} tasks)", flush=True)
        if not todo:
            return []
        if self.cfg.executor == "slurm":
            groups = [[ch] for ch in todo]
        else:
            groups = [todo] * min(self.cfg.workers, len(todo))  # each job takes the next chain no job holds
        ex = self.executor()
        with ex.batch():
            jobs = [ex.submit(run_chains, g) for g in groups]
        last = None
        while True:
            running = sum(not j.done() for j in jobs)
            state = (*status(), running)
            if state != last:
                if last is not None and state[0] != last[0]:
                    self.report()
                if progress:
                    print(f"cgkd study: {stage}: {state[0]}/{len(chains)} chains, {state[1]}/{n_tasks} tasks done; "
                          f"{running} job(s) running", flush=True)
                last = state
            if not running:
                break
            time.sleep(poll)
        failures = []
        for j in jobs:
            try:
                failures += [f for f in j.result() if f not in failures]  # two jobs may try a failing chain
            except Exception as e:  # submitit re-raises the job's error with its traceback as text
                raise CgkdError(f"cgkd study: a job failed; its log is in {self.out / 'jobs'}:\n{e}") from None
        return failures

    def run(self, progress=True):
        with output_lock(self.out):
            self.prepare(progress)
            failures = []
            for label, chains in self.stages():
                failures += self.run_chains(label, chains, progress)
                result = self.report()
            if failures:
                raise CgkdError(f"cgkd study: {len(failures)} task(s) failed; their chains stopped there, the others "
                                "ran (a re-run retries them):\n" + "\n".join(
                                    f"  {out}: {err} (traceback in {out}/failed.txt)" for out, err in failures))
            return result

    def overlay(self, result, base="FM"):
        """<out>/compare/overlay: RDF and ADF plots of the KD variant of lowest mean RDF error against AA (over
        the seeds compared so far; among the variants whose default runs never failed, if any) and of the FM row
        it is paired with (same student architecture), each the mean over its seeds of their comparisons'
        replica-mean curves (structure.npz)."""
        from .report import load_structure, plot_adf, plot_rdf, structure_mean
        from .study_report import paired_base

        scored = {n: [e for e in es if e.get("rdf_error_mean") is not None]
                  for n, es in result["variants"].items() if n != base and not n.startswith(base + " [")}
        stable = {n for n, es in scored.items() if es and all(e.get("stable_fraction") == 1.0 for e in es)}
        means = {n: float(np.mean([e["rdf_error_mean"] for e in es])) for n, es in scored.items()  # seeds so far
                 if es and (n in stable or not stable)}  # a variant that never failed, when there is one
        if base not in result["variants"] or not means:
            return None
        best = min(means, key=means.get)
        fm = paired_base(best, result["variants"], base)
        rows = {fm: fm, f"{best} (best KD)": best}
        files = {label: sorted((self.out / "compare" / slug(row)).glob("seed_*/structure.npz"))
                 for label, row in rows.items()}
        if not all(files.values()):
            return None
        curves = {}
        for label, row in rows.items():
            seeds = [load_structure(f) for f in files[label]]
            curves.setdefault("reference", seeds[0]["reference"])
            curves[label] = structure_mean([st[row] for st in seeds])
        out = self.out / "compare" / "overlay"
        out.mkdir(parents=True, exist_ok=True)
        plot_rdf(curves, out / "rdf.png")
        plot_adf(curves, out / "adf.png")
        summary = {"models": {label: [str(f) for f in fs] for label, fs in files.items()},
                   "curves": "mean over seeds of each seed's mean over its replicas"}
        write_json(out / "results.json", summary)
        return summary

    def report(self):
        """ablation.json, the overlay and study.md (table and plots) from whatever has finished; returns the
        aggregate."""
        from . import study_report

        result = aggregate(self)
        self.overlay(result)
        overlay = self.out / "compare" / "overlay"
        study_report.write(result, self.out, [overlay / p for p in ("rdf.png", "adf.png") if (overlay / p).exists()])
        return result


def _frames(path):
    from .h5md import H5MDTrajectory

    try:
        with H5MDTrajectory(path) as t:
            return len(t)
    except CgkdError:
        return 0


def _trajectories(folder):
    """The default replicas' trajectories of one row and seed that are long enough to compare."""
    return [str(t) for t in sorted(Path(folder).glob("replica_*/replica_0/traj.h5")) if _frames(t) >= 8]


def _run_summary(folder):
    """One run's outcome, with its timestep, temperature and planned length (from its config.yaml)."""
    import yaml

    f = Path(folder) / "summary.json"
    if not f.exists():
        return None
    r = json.loads(f.read_text())["replicas"][0]
    saved = Path(folder) / "config.yaml"
    cfg = yaml.safe_load(saved.read_text()) if saved.exists() else {}
    return {"stable": r["stable"], "time_ps": r.get("time_ps"), "ns_per_day": r.get("ns_per_day"),
            "failed_check": r.get("failed_check"), "time_to_failure_ps": r.get("time_to_failure_ps"),
            "dt_fs": cfg.get("dt_fs"), "temperature_K": cfg.get("temperature"),
            "planned_ps": cfg["steps"] * cfg["dt_fs"] / 1000.0 if cfg else None}


def aggregate(study):
    """ablation.json: per row (variant or reference) a list with one entry per seed: test metrics, scores
    (RDF error per pair and mean, ADF/CDF Jensen-Shannon, diffusion), stability (default and stress runs) and
    speed; plus the AA noise floor."""
    out = study.out
    rows, aa_diffusion = {}, None
    for (name, seed), model in study.models.items():
        entry = {"seed": seed, "model": model}
        meta_file = Path(model) / "metadata.json"
        if meta_file.exists():
            m = json.loads(meta_file.read_text())["metrics"]["test"]
            entry["test"] = {k: (v["all"] if isinstance(v, dict) and "all" in v else v) for k, v in m.items()}
            errors = entry["test"].get("forces_vs_mapped") or entry["test"].get("all")  # students | teachers
            entry["test_force_rmse"] = errors["rmse"] if errors else None
        folder = out / "runs" / slug(name) / f"seed_{seed}"
        default = [s for s in (_run_summary(p) for p in sorted(folder.glob("replica_*"))) if s]
        entry["replicas"] = default
        entry["stable_fraction"] = float(np.mean([r["stable"] for r in default])) if default else None
        entry["stress"] = {p.name: _run_summary(p) for p in sorted(folder.iterdir()) if p.is_dir()
                           and not p.name.startswith("replica_")} if folder.exists() else {}
        speeds = [r["ns_per_day"] for r in default if r["ns_per_day"]]
        entry["ns_per_day"] = float(np.mean(speeds)) if speeds else None
        res = out / "compare" / slug(name) / f"seed_{seed}" / "results.json"
        if res.exists():
            r = json.loads(res.read_text())
            scores = r.get("scores", {}).get(name, {})
            entry["scores"] = {k: v["mean"] for k, v in scores.items()}
            for kind in ("rdf", "adf", "cdf"):
                vals = [v["mean"] for k, v in scores.items() if k.startswith(kind + " ")]
                entry[f"{kind}_error_mean" if kind == "rdf" else f"{kind}_js_mean"] = float(np.mean(vals)) if vals else None
            d = r.get("diffusion_nm2_per_ps", {})
            aa_diffusion = d.get("reference", aa_diffusion)
            if d.get(name):
                entry["diffusion_nm2_per_ps"] = d[name]
                entry["time_rescaling_D_cg_over_aa"] = {t: d[name][t] / d["reference"][t] for t in d["reference"]}
        rows.setdefault(name, []).append(entry)
    floor = {}
    f = out / "compare" / "noise_floor" / "results.json"
    if f.exists():
        scores = json.loads(f.read_text())["scores"].get("AA second half", {})
        floor = {k: v["mean"] for k, v in scores.items()}
    settings = {k: v for k, v in dataclasses.asdict(study.cfg).items() if k != "rows"}  # rows: what one run ran
    result = {"config": settings,
              "variants": {k: v for k, v in rows.items() if k in study.cfg.variants},
              "references": {k: v for k, v in rows.items() if k in study.cfg.references},
              "noise_floor": floor, "aa_diffusion_nm2_per_ps": aa_diffusion}
    write_json(out / "ablation.json", result)
    return result

