"""The ablation's table and plots from ablation.json (`cgkd study` writes <out>/study.md after every run;
`cgkd study --report` writes it from whatever has finished): every row (variant or reference) as mean ± std over
its seeds, next to the AA reference's own half-vs-half differences (the noise floor); every row against FM
paired by seed with a 95 % confidence interval; plots of the RDF errors, of stability against timestep and
(when the study has made it) of the RDF/ADF overlays of FM, the best KD variant and AA."""
import re
import textwrap
from pathlib import Path

import numpy as np


def seed_stats(values):
    """(mean, sample standard deviation or None for one value, count) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None, len(values)


def _cell(stats, digits=3):
    if stats is None:
        return "–"
    mean, std, _ = stats
    return f"{mean:.{digits}g}" + (f" ± {std:.2g}" if std is not None else "")


def _stress(entries, name):
    """'stable/runs, mean time to failure of the failed ones' of one stress condition over the seeds."""
    runs = [e["stress"][name] for e in entries if e.get("stress", {}).get(name)]
    if not runs:
        return "–"
    failed = [r["time_to_failure_ps"] for r in runs if not r["stable"] and r.get("time_to_failure_ps") is not None]
    text = f"{sum(r['stable'] for r in runs)}/{len(runs)}"
    return text + (f", fails at {np.mean(failed):.3g} ps" if failed else "")


def rows(result):
    """{row name: {column: text}} and the per-row RDF-error statistics (for the plot)."""
    table, rdf = {}, {}
    stress_names = sorted({k for kind in ("variants", "references") for es in result[kind].values()
                           for e in es for k in e.get("stress", {})})
    for kind in ("variants", "references"):
        for name, entries in result[kind].items():
            rdf[name] = seed_stats([e.get("rdf_error_mean") for e in entries])
            ratio = [float(np.mean(list(e["time_rescaling_D_cg_over_aa"].values())))
                     for e in entries if e.get("time_rescaling_D_cg_over_aa")]
            table[name] = {
                "seeds compared": f"{sum(e.get('rdf_error_mean') is not None for e in entries)}/{len(entries)}",
                "test force RMSE vs mapped": _cell(seed_stats([e.get("test_force_rmse") for e in entries]), 4),
                "RDF error (mean of pairs)": _cell(rdf[name]),
                "ADF JS": _cell(seed_stats([e.get("adf_js_mean") for e in entries])),
                "CDF JS": _cell(seed_stats([e.get("cdf_js_mean") for e in entries])),
                "stable (default runs)": _cell(seed_stats([e.get("stable_fraction") for e in entries]), 2),
                **{f"stress {s}": _stress(entries, s) for s in stress_names},
                "D_CG/D_AA": _cell(seed_stats(ratio)),
                "ns/day": _cell(seed_stats([e.get("ns_per_day") for e in entries])),
            }
    return table, rdf


def paired_base(name, names, base="FM"):
    """The row `name` is paired with: for a row tagged with a student architecture ("... [tensornet 8x1]"), the
    FM row of the same tag when the study has one (that FM row itself: the untagged FM); else `base`."""
    tag = re.search(r" \[[^\]]+\]$", name)
    tagged = f"{base}{tag.group(0)}" if tag else None
    return tagged if tagged in names and tagged != name else base


def paired(result, base="FM", key="rdf_error_mean"):
    """{row: (base row, n, mean of row - base over the seeds both have, half-width of the 95 % t-interval or
    None)}; the base row of each is paired_base's."""
    from scipy import stats

    names = set(result["variants"])
    out = {}
    for kind in ("variants", "references"):
        for name, entries in result[kind].items():
            against = paired_base(name, names, base)
            ref = {e["seed"]: e.get(key) for e in result["variants"].get(against, [])}
            d = [e[key] - ref[e["seed"]] for e in entries
                 if name != against and e.get(key) is not None and ref.get(e["seed"]) is not None]
            if d:
                half = (float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d)))
                        if len(d) > 1 else None)
                out[name] = (against, len(d), float(np.mean(d)), half)
    return out


def _paired_lines(result):
    lines = []
    for key, what, digits in (("rdf_error_mean", "RDF error", 3), ("test_force_rmse", "test force RMSE", 4)):
        diffs = paired(result, key=key)
        if not diffs:
            continue
        if not lines:
            lines += ["## Against FM, paired by seed", "",
                      "Row minus FM over the seeds both have (same seed: same split, initial weights and CG "
                      "starting velocities); a row tagged with a student architecture ([…]) against the FM row of "
                      "the same tag. 95 % confidence interval from Student's t. Negative: better than FM.",
                      "", "| model | against | quantity | seeds | row − FM | 95 % CI | reading |",
                      "|---|---|---|---|---|---|---|"]
        for name, (against, n, mean, half) in diffs.items():
            if half is None:
                ci, reading = "–", "one seed: no interval"
            else:
                ci = f"[{mean - half:.{digits}g}, {mean + half:.{digits}g}]"
                reading = ("better than FM" if mean + half < 0 else "worse than FM" if mean - half > 0
                           else "no difference resolved")
            lines.append(f"| {name} | {against} | {what} | {n} | {mean:+.{digits}g} | {ci} | {reading} |")
    return lines + [""] if lines else []


def _diffusion_lines(result):
    """Per species: the AA diffusion coefficient and every row's D_CG/D_AA (mean ± std over seeds), the factor
    that maps CG time onto AA time for that species."""
    aa = result.get("aa_diffusion_nm2_per_ps") or {}
    if not aa:
        return []
    species = sorted(aa)
    lines = ["## Diffusion: time rescaling per species", "",
             "D_CG/D_AA per species (mean ± std over seeds): CG dynamics run this many times faster than AA; "
             "multiply a CG time by it for the AA time it stands for.", "",
             "| model | " + " | ".join(species) + " |", "|---|" + "---|" * len(species),
             "| AA: D (nm²/ps) | " + " | ".join(f"{aa[t]:.3g}" for t in species) + " |"]
    for kind in ("variants", "references"):
        for name, entries in result[kind].items():
            ratios = [e["time_rescaling_D_cg_over_aa"] for e in entries if e.get("time_rescaling_D_cg_over_aa")]
            if ratios:
                lines.append(f"| {name} | " + " | ".join(_cell(seed_stats([r.get(t) for r in ratios])) for t in species)
                             + " |")
    return lines + [""]


def markdown(result, plots=()):
    table, _ = rows(result)
    floor = result.get("noise_floor") or {}
    floor_rdf = [v for k, v in floor.items() if k.startswith("rdf ")]
    lines = ["# Distillation ablation", "",
             "Mean ± sample standard deviation over seeds (each seed: its own student and CG replicas); RDF error "
             "∫|g−g_AA|dr/∫g_AA dr averaged over bead-type pairs, Jensen–Shannon divergences (bits) of the ADFs and "
             "CDFs averaged over triplets; stress: stable runs / runs, and the mean time to failure of those that "
             "failed; D_CG/D_AA: CG over AA diffusion coefficient, averaged over species. Lower errors are better.",
             ""]
    if floor_rdf:
        js = [v for k, v in floor.items() if k.startswith(("adf ", "cdf "))]
        lines += [f"AA noise floor (first half vs second half of the reference): RDF error {np.mean(floor_rdf):.3g} "
                  f"(pairs {min(floor_rdf):.3g}–{max(floor_rdf):.3g})"
                  + (f", ADF/CDF JS {np.mean(js):.3g}" if js else "")
                  + ". Differences between rows below it are not differences.", ""]
    if table:
        cols = list(next(iter(table.values())))
        lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(row[c] for c in cols) + " |" for name, row in table.items()]
    lines += [""] + _paired_lines(result) + _diffusion_lines(result) + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_rdf_errors(result, path):
    """Bars: each row's RDF error (mean over pairs) with the seed standard deviation; band: the noise floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, rdf = rows(result)
    names = [n for n, s in rdf.items() if s is not None]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.6))
    means = [rdf[n][0] for n in names]
    errs = [rdf[n][1] or 0.0 for n in names]
    colors = ["tab:blue" if n in result["variants"] else "tab:gray" for n in names]
    ax.bar(range(len(names)), means, yerr=errs, color=colors, capsize=3)
    floor = [v for k, v in (result.get("noise_floor") or {}).items() if k.startswith("rdf ")]
    if floor:
        ax.axhspan(0, np.mean(floor), color="tab:green", alpha=0.2, label="AA noise floor (half vs half)")
        ax.legend(loc="upper right")
    ax.set_ylim(0, 1.08 * max(m + e for m, e in zip(means, errs)))
    ax.set_xticks(range(len(names)), [textwrap.fill(n, 18) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("RDF error, mean over pairs\n(bars: ± sample SD over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_stability(result, path):
    """Per row: the fraction of the planned run time survived (mean over seeds and replicas) against the
    timestep, at the study's temperature (default runs and timestep stress runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for kind in ("variants", "references"):
        for name, entries in result[kind].items():
            by_dt = {}
            for e in entries:
                runs = list(e.get("replicas") or []) + [r for k, r in (e.get("stress") or {}).items()
                                                       if r and k.startswith("dt")]
                for r in runs:
                    if r.get("dt_fs") and r.get("planned_ps"):
                        lasted = r["planned_ps"] if r["stable"] else (r.get("time_to_failure_ps") or 0.0)
                        by_dt.setdefault(r["dt_fs"], []).append(min(1.0, lasted / r["planned_ps"]))
            if by_dt:
                curves[name] = sorted((dt, float(np.mean(v))) for dt, v in by_dt.items())
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(9.6, 4.2))
    for k, (name, pts) in enumerate(curves.items()):  # tab20: a distinct colour for each of up to 20 rows
        x, y = zip(*pts)
        ax.plot(x, np.array(y) + 0.006 * (k - len(curves) / 2), marker="o", label=name, color=plt.cm.tab20(k % 20),
                ls="-" if name in result["variants"] else "--")
    ax.set_xlabel("timestep (fs)")
    ax.set_ylabel("fraction of the planned run survived")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("Stability against timestep (mean over seeds and runs;\nlines offset slightly)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: it hid points
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(result, out, extra_plots=()):
    """<out>/study.md and its plots (links relative to out; `extra_plots` too); returns the Markdown path."""
    out = Path(out)
    plots = [p for p in (plot_rdf_errors(result, out / "study_rdf_error.png"),
                         plot_stability(result, out / "study_stability.png")) if p]
    path = out / "study.md"
    path.write_text(markdown(result, [Path(p).relative_to(out) for p in [*plots, *extra_plots]]))
    return path
