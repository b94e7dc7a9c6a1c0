"""The ablation's table and plots from ablation.json (`cgkd study` writes <out>/study.md after every run;
`cgkd study --report` writes it from whatever has finished): every row (variant or reference) as mean ± std over
its seeds, next to the AA reference's own half-vs-half differences (the noise floor)."""
from pathlib import Path

import numpy as np


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else None, len(values)


def _cell(stats, digits=3):
    if stats is None:
        return "–"
    mean, std, _ = stats
    return f"{mean:.{digits}g}" + (f" ± {std:.2g}" if std is not None else "")


def _test_rmse(entry):
    test = entry.get("test") or {}
    errors = test.get("forces_vs_mapped") or test.get("all")
    return errors["rmse"] if errors else None


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
            rdf[name] = _stats([e.get("rdf_error_mean") for e in entries])
            ratio = [float(np.mean(list(e["time_rescaling_D_cg_over_aa"].values())))
                     for e in entries if e.get("time_rescaling_D_cg_over_aa")]
            table[name] = {
                "seeds": str(len(entries)),
                "test force RMSE vs mapped": _cell(_stats([_test_rmse(e) for e in entries]), 4),
                "RDF error (mean of pairs)": _cell(rdf[name]),
                "ADF JS": _cell(_stats([e.get("adf_js_mean") for e in entries])),
                "CDF JS": _cell(_stats([e.get("cdf_js_mean") for e in entries])),
                "stable (default runs)": _cell(_stats([e.get("stable_fraction") for e in entries]), 2),
                **{f"stress {s}": _stress(entries, s) for s in stress_names},
                "D_CG/D_AA": _cell(_stats(ratio)),
                "ns/day": _cell(_stats([e.get("ns_per_day") for e in entries])),
            }
    return table, rdf


def markdown(result, plots=()):
    table, _ = rows(result)
    floor = result.get("noise_floor") or {}
    floor_rdf = [v for k, v in floor.items() if k.startswith("rdf ")]
    lines = ["# Distillation ablation", "",
             "Mean ± standard deviation over seeds (each seed: its own student and CG replicas); RDF error "
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
    lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
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
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.8))
    means = [rdf[n][0] for n in names]
    errs = [rdf[n][1] or 0.0 for n in names]
    colors = ["tab:blue" if n in result["variants"] else "tab:gray" for n in names]
    ax.bar(range(len(names)), means, yerr=errs, color=colors, capsize=3)
    floor = [v for k, v in (result.get("noise_floor") or {}).items() if k.startswith("rdf ")]
    if floor:
        ax.axhspan(0, np.mean(floor), color="tab:green", alpha=0.2, label="AA noise floor (half vs half)")
        ax.legend(loc="upper left")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("RDF error, mean over pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(result, out):
    """<out>/study.md and its plot; returns the Markdown path."""
    out = Path(out)
    plot = plot_rdf_errors(result, out / "study_rdf_error.png")
    path = out / "study.md"
    path.write_text(markdown(result, [plot] if plot else []))
    return path
