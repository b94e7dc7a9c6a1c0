"""`cgkd compare`: observables of CG models against the mapped AA reference, scored, plotted and reported.

For the reference and every model trajectory (replicas allowed) it computes RDFs of all bead-type pairs,
ADFs and CDFs of the chosen triplets (first-shell cutoffs from the reference RDFs), MSDs and diffusion
coefficients; scores each model (RDF error, Jensen-Shannon divergence of ADF and CDF, relative error of
D) with block-averaged uncertainties and mean +- std over replicas; writes report.md, results.json and
PNG plots to the output folder.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import observables as obs  # noqa: E402
from .dataset import CGDataset  # noqa: E402
from .errors import CgkdError  # noqa: E402
from .fileio import atomic_path, write_json  # noqa: E402


@dataclass
class CompareSettings:
    r_max: float = None          # nm; default: half the shortest box edge of all inputs
    n_bins: int = 100
    triplets: list = None        # [(centre, (neighbour, neighbour))]; default: every centre with like neighbours
    stride: int = 1              # use every stride-th frame for RDF/ADF/CDF
    blocks: int = 4              # blocks for the uncertainties
    fit_window: tuple = (0.2, 0.8)
    extra: dict = field(default_factory=dict)


class Traj(CGDataset):
    """Positions, boxes, bead types and time step of one CG (or mapped) trajectory file, in float64."""

    def __init__(self, path):
        super().__init__(path, forces=False, dtype=np.float64)
        self.types = np.array(self.type_names)
        if len(self.positions) < 2:
            raise CgkdError(f"{self.path}: needs at least 2 frames")
        self.dt = float(self.times[1] - self.times[0])
        if np.abs(np.diff(self.times) - self.dt).max() > 1e-6 * max(abs(self.dt), 1.0):
            raise CgkdError(f"{self.path}: frames are not evenly spaced in time (MSD needs a fixed interval)")

    def unwrap(self):
        return self.unwrapped if self.unwrapped is not None else obs.unwrap_in_time(self.positions, self.boxes)


def _observe(tr, s, cutoffs, frames):
    r, g, cn = obs.rdf(tr.positions[frames], tr.boxes[frames], tr.types, r_max=s.r_max, n_bins=s.n_bins,
                       where=str(tr.path))
    adfs, cdfs = {}, {}
    for c, nb in s.triplets:
        cut = (cutoffs[tuple(sorted((c, nb[0])))], cutoffs[tuple(sorted((c, nb[1])))])
        adfs[(c, nb)] = obs.adf(tr.positions[frames], tr.boxes[frames], tr.types, c, nb, cut, where=str(tr.path),
                                empty_ok=True)
        cdfs[(c, nb)] = obs.cdf(tr.positions[frames], tr.boxes[frames], tr.types, c, nb, cut, n_r=30, n_theta=36,
                                where=str(tr.path), empty_ok=True)
    return {"r": r, "rdf": g, "cn": cn, "adf": adfs, "cdf": cdfs}


def _diffusion(tr, s, frames=slice(None)):
    """(lags ps, MSD per type, D per type nm^2/ps, fit window (t0, t1) ps); D and window are None for a run
    too short for the fit (a model that failed early still has its structure scored)."""
    lags, m = obs.msd(tr.unwrap()[frames], tr.dt, tr.types)
    try:
        fits = {t: obs.diffusion(lags, v, s.fit_window) for t, v in m.items()}
    except CgkdError:
        return lags, m, None, None
    return lags, m, {t: f[0] for t, f in fits.items()}, next(iter(fits.values()))[1]


def _scores(o, ref, D, D_ref):
    out = {f"rdf {a}-{b}": obs.rdf_error(o["rdf"][(a, b)], ref["rdf"][(a, b)], ref["r"]) for a, b in ref["rdf"]}
    for (c, nb), (_, p) in o["adf"].items():
        out[f"adf {nb[0]}-{c}-{nb[1]}"] = obs.jensen_shannon(p, ref["adf"][(c, nb)][1])
        out[f"cdf {nb[0]}-{c}-{nb[1]}"] = obs.jensen_shannon(o["cdf"][(c, nb)][2], ref["cdf"][(c, nb)][2])
    for t in D_ref if D is not None else ():
        out[f"D {t}"] = abs(D[t] - D_ref[t]) / D_ref[t]
    return out


def compare(reference, models, out, settings=None, progress=True):
    """reference: CG dataset path; models: {name: [trajectory paths]}; out: report folder."""
    s = settings or CompareSettings()
    ref = Traj(reference)
    runs = {name: [Traj(p) for p in paths] for name, paths in models.items()}
    if not runs:
        raise CgkdError("cgkd compare: give at least one model trajectory (--model NAME=PATH[,PATH...])")
    for name, trs in runs.items():
        for tr in trs:
            if len(tr.types) != len(ref.types) or not np.array_equal(np.sort(tr.types), np.sort(ref.types)):
                raise CgkdError(f"{tr.path}: bead types/counts {_count(tr.types)} differ from the reference "
                                f"{reference} {_count(ref.types)}")
    every = [ref] + [t for trs in runs.values() for t in trs]
    limit = min(obs.max_cutoff(t.boxes) for t in every)
    if s.r_max is not None and s.r_max > limit + 1e-9:
        raise CgkdError(f"cgkd compare: --r-max {s.r_max} nm is beyond half the shortest box edge ({limit:.3f} nm)")
    s.r_max = s.r_max or limit
    types = sorted(set(ref.types))
    s.triplets = s.triplets or [(c, (n, n)) for c in types for n in types]
    frames = slice(None, None, s.stride)
    r, g, _ = obs.rdf(ref.positions[frames], ref.boxes[frames], ref.types, r_max=s.r_max, n_bins=s.n_bins)
    cutoffs = {p: obs.first_minimum(r, v) for p, v in g.items()}
    ref_obs = _observe(ref, s, cutoffs, frames)
    # Triplets the reference never shows cannot be scored.
    s.triplets = [t for t in s.triplets if ref_obs["adf"][t][1].any()]
    for key in ("adf", "cdf"):
        ref_obs[key] = {t: v for t, v in ref_obs[key].items() if t in s.triplets}
    ref_diff = _diffusion(ref, s)
    if ref_diff[2] is None:
        raise CgkdError(f"{reference}: too few frames for a diffusion fit over {s.fit_window} of its lags")
    results, curves = {}, {"reference": (ref_obs, ref_diff)}
    structure = {"reference": structure_mean([ref_obs])}
    for name, trs in runs.items():
        per_replica, observed = [], []
        for k, tr in enumerate(trs):
            o = _observe(tr, s, cutoffs, frames)
            observed.append(o)
            d = _diffusion(tr, s)
            if k == 0:
                curves[name] = (o, d)
            full = _scores(o, ref_obs, d[2], ref_diff[2])
            n = len(tr.positions)
            blocks = [_scores(_observe(tr, s, cutoffs, slice(b * n // s.blocks, (b + 1) * n // s.blocks, s.stride)),
                              ref_obs, _diffusion(tr, s, slice(b * n // s.blocks, (b + 1) * n // s.blocks))[2],
                              ref_diff[2]) for b in range(s.blocks)] if n >= 4 * s.blocks else []
            sem = {}
            for key in full:  # a block can be too short for a diffusion fit that the whole run allows
                vals = [b[key] for b in blocks if key in b]
                sem[key] = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else None
            per_replica.append((full, sem))
        keys = list(dict.fromkeys(key for p in per_replica for key in p[0]))  # D only where a fit was possible
        results[name] = {}
        for key in keys:
            vals = [p[0][key] for p in per_replica if key in p[0]]
            results[name][key] = {"mean": float(np.mean(vals)),
                                  "std_replicas": float(np.std(vals)) if len(vals) > 1 else None,
                                  "sem_blocks": _mean_or_none([p[1].get(key) for p in per_replica]),
                                  "replicas": len(vals)}
        structure[name] = structure_mean(observed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_structure(out / "structure.npz", structure)
    meta = {"reference": str(reference), "models": {k: [str(p) for p in v] for k, v in models.items()},
            "r_max_nm": s.r_max, "shell_cutoffs_nm": {f"{a}-{b}": c for (a, b), c in cutoffs.items()},
            "diffusion_nm2_per_ps": {"reference": ref_diff[2], **{n: c[1][2] for n, c in curves.items() if n != "reference"}},
            "fit_window_ps": [s.fit_window[0] * ref_diff[0][-1], s.fit_window[1] * ref_diff[0][-1]],
            "fit_windows_ps": {"reference": ref_diff[3], **{n: c[1][3] for n, c in curves.items() if n != "reference"}}}
    write_json(out / "results.json", {"scores": results, **_jsonable(meta)})
    plots = plot_all(curves, out)
    (out / "report.md").write_text(markdown(results, meta, plots))
    return {"out": str(out), "scores": results, "plots": plots}


def _mean_or_none(values):
    """Mean of the replicas' block standard errors (None when the runs were too short for blocks)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _count(types):
    return {t: int((types == t).sum()) for t in sorted(set(types))}


def _jsonable(x):
    return json.loads(json.dumps(x, default=float))


def structure_mean(observations):
    """The RDFs and ADFs of several observations (replicas, or seeds' replica means) averaged."""
    first = observations[0]
    return {"r": first["r"],
            "rdf": {p: np.mean([o["rdf"][p] for o in observations], axis=0) for p in first["rdf"]},
            "adf": {t: (first["adf"][t][0], np.mean([o["adf"][t][1] for o in observations], axis=0))
                    for t in first["adf"]}}


def save_structure(path, structure):
    """{name: structure_mean(...)} as one .npz (keys name|r, name|rdf|A|B, name|adf|C|N1|N2|theta and |p)."""
    arrays = {}
    for name, st in structure.items():
        arrays[f"{name}|r"] = st["r"]
        arrays.update({f"{name}|rdf|{a}|{b}": g for (a, b), g in st["rdf"].items()})
        for (c, (n1, n2)), (theta, p) in st["adf"].items():
            arrays[f"{name}|adf|{c}|{n1}|{n2}|theta"], arrays[f"{name}|adf|{c}|{n1}|{n2}|p"] = theta, p
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_structure(path):
    """The {name: {"r", "rdf", "adf"}} that save_structure wrote."""
    out = {}
    with np.load(path) as z:
        for key in z.files:
            name, kind, *rest = key.split("|")
            st = out.setdefault(name, {"rdf": {}, "adf": {}})
            if kind == "r":
                st["r"] = z[key]
            elif kind == "rdf":
                st["rdf"][tuple(rest)] = z[key]
            else:
                c, n1, n2, which = rest
                pair = st["adf"].setdefault((c, (n1, n2)), [None, None])
                pair[0 if which == "theta" else 1] = z[key]
    for st in out.values():
        st["adf"] = {t: tuple(v) for t, v in st["adf"].items()}
    return out


def _colors(names):
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"reference": "black", **{n: palette[i % len(palette)] for i, n in enumerate(x for x in names
                                                                                      if x != "reference")}}


def _grid(n):
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_rdf(structure, path):
    """One panel per bead-type pair, every curve of {name: {"r", "rdf"}} (the reference solid)."""
    colors = _colors(structure)
    pairs = list(structure["reference"]["rdf"])
    fig, axes = _grid(len(pairs))
    for ax, p in zip(axes, pairs):
        for name, o in structure.items():
            ax.plot(o["r"], o["rdf"][p], color=colors[name], lw=1.5 if name == "reference" else 1.2,
                    ls="-" if name == "reference" else "--", label=name)
        ax.set(title=f"{p[0]}–{p[1]}", xlabel="r (nm)", ylabel="g(r)")
    return _save(fig, Path(path), legend_of=axes[0])


def plot_adf(structure, path):
    """One panel per triplet, every curve of {name: {"adf"}} (the reference solid)."""
    colors = _colors(structure)
    trip = list(structure["reference"]["adf"])
    fig, axes = _grid(len(trip))
    for ax, t in zip(axes, trip):
        for name, o in structure.items():
            theta, p = o["adf"][t]
            ax.plot(theta, p, color=colors[name], ls="-" if name == "reference" else "--", label=name)
        ax.set(title=f"{t[1][0]}–{t[0]}–{t[1][1]}", xlabel="angle θ (degrees)", ylabel="P(θ) (1/degree)")
    return _save(fig, Path(path), legend_of=axes[0])


def plot_all(curves, out):
    """RDF, ADF, CDF and MSD figures; returns the PNG names."""
    colors = _colors(curves)
    ref = curves["reference"][0]
    structure = {name: o for name, (o, _) in curves.items()}
    files = [plot_rdf(structure, out / "rdf.png"), plot_adf(structure, out / "adf.png")]
    for t in ref["adf"]:
        models = [n for n in curves if n != "reference"]
        fig, axes = plt.subplots(len(models), 3, figsize=(12, 3.4 * len(models)), squeeze=False)
        rr, th, dref = ref["cdf"][t]
        ext = [th[0], th[-1], rr[0], rr[-1]]
        for row, name in zip(axes, models):
            d = curves[name][0]["cdf"][t][2]
            vmax = max(dref.max(), d.max())
            for ax, data, title, cmap, lim in ((row[0], dref, "reference", "viridis", (0, vmax)),
                                               (row[1], d, name, "viridis", (0, vmax)),
                                               (row[2], d - dref, f"{name} − reference", "RdBu_r",
                                                (-np.abs(d - dref).max(), np.abs(d - dref).max()))):
                im = ax.imshow(data, origin="lower", aspect="auto", extent=ext, cmap=cmap, vmin=lim[0], vmax=lim[1])
                ax.set(title=title, xlabel="angle θ (degrees)", ylabel="r (nm)")
                fig.colorbar(im, ax=ax, label="density (1/(nm·degree))")
        fig.suptitle(f"CDF {t[1][0]}–{t[0]}–{t[1][1]}: distance r and angle θ")
        files.append(_save(fig, out / f"cdf_{t[1][0]}-{t[0]}-{t[1][1]}.png"))

    types = list(curves["reference"][1][1])
    fig, axes = _grid(len(types))
    for ax, ty in zip(axes, types):
        ends = []
        for name, (_, (lags, m, D, window)) in curves.items():
            fit = (f"D = {D[ty]:.2e} nm²/ps (fit {window[0]:.3g}–{window[1]:.3g} ps)" if D is not None
                   else "too short for a D fit")
            ax.plot(lags[1:], m[ty][1:], color=colors[name], ls="-" if name == "reference" else "--",
                    label=f"{name}: {fit}")
            ends.append(m[ty][-1])
        if max(ends) > 10 * max(min(ends), 1e-12):  # CG dynamics can run orders of magnitude faster than AA
            ax.set(xscale="log", yscale="log")
        ax.set(title=ty, xlabel="lag time (ps)", ylabel="MSD (nm²)")
        ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    w, h = fig.get_size_inches()
    fig.set_size_inches(w, h + 0.25 * len(curves) * -(-len(types) // 3))  # room for the legends below
    files.append(_save(fig, out / "msd.png"))
    return files


def _save(fig, path, legend_of=None):
    """Save and close; legend_of: an axis whose curves get one legend in a row above the panels (long model
    names cover no curve)."""
    if legend_of is None:
        fig.tight_layout()
    else:
        handles, labels = legend_of.get_legend_handles_labels()
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_size_inches()[1]))
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def markdown(results, meta, plots):
    names = list(results)
    keys = list(dict.fromkeys(k for n in names for k in results[n]))

    def cell(v):
        s = f"{v['mean']:.3g}"
        if v["sem_blocks"] is not None:
            s += f" ± {v['sem_blocks']:.2g}"
        if v["std_replicas"] is not None:
            s += f" (replicas ± {v['std_replicas']:.2g})"
        return s

    lines = ["# cgkd comparison with the AA reference", "",
             f"Reference: `{meta['reference']}`; RDF up to {meta['r_max_nm']:.3f} nm; first-shell cutoffs from the "
             "reference RDFs. Scores: RDF error ∫|g−g_ref|dr/∫g_ref dr, Jensen–Shannon divergence (bits) of ADF "
             "and CDF, |relative error| of the diffusion coefficient D (signed values below; fit window "
             f"{meta['fit_window_ps'][0]:.3g}–{meta['fit_window_ps'][1]:.3g} ps). ± block standard error; "
             "replicas ± std. Lower is better.", "",
             "| score | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(cell(results[n][k]) if k in results[n] else "–" for n in names) + " |")
    lines += ["", "Diffusion coefficients (nm²/ps):", ""]
    for n, d in meta["diffusion_nm2_per_ps"].items():
        w = meta["fit_windows_ps"][n]
        lines.append(f"- {n}: " + (", ".join(f"{t} {v:.3e}" for t, v in d.items()) + f" (fit {w[0]:.3g}–{w[1]:.3g} ps)"
                                   if d is not None else "its first replica is too short for a fit"))
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
