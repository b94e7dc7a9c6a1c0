"""Structural and dynamical observables of CG (or mapped AA) trajectories: RDF, ADF, CDF, MSD, density.

All inputs are in nm and ps: positions (frames, n, 3), boxes (frames, 3, 3) with box vectors as rows
(orthorhombic for the neighbour search), bead types (n,). Neighbours come from scipy's periodic cKDTree,
frame by frame, so memory stays bounded whatever the trajectory length.
"""
import itertools

import numba
import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from .errors import CgkdError


def _edges(boxes, where="trajectory"):
    boxes = np.asarray(boxes, dtype=np.float64)
    edges = boxes[:, [0, 1, 2], [0, 1, 2]]
    if np.abs(boxes - edges[:, :, None] * np.eye(3)).max() > 1e-8:
        raise CgkdError(f"{where}: only orthorhombic boxes are supported by the neighbour search")
    return edges


def max_cutoff(boxes):
    """Half the shortest box edge over all frames: the largest r with a unique minimum image."""
    return 0.5 * _edges(boxes).min()


def type_pairs(types):
    names = sorted(set(types))
    return list(itertools.combinations_with_replacement(names, 2))


def _check_types(types, wanted, where):
    missing = [t for t in wanted if t not in set(types)]
    if missing:
        raise CgkdError(f"{where}: no beads of type {missing} (have {sorted(set(types))})")


DENSE_PAIRS = 2_000_000  # up to this many bead pairs per frame, RDFs loop over all pairs in compiled code


@numba.njit(cache=True)
def _all_pairs_hist(pos, edges, vol, code, nt, n_bins, r_max, hist):
    """Add every bead pair's minimum-image distance to hist[(lower type * nt + upper type) * n_bins + bin],
    weighted by its frame's volume (orthorhombic boxes)."""
    scale = n_bins / r_max
    n = pos.shape[1]
    for f in range(pos.shape[0]):
        ex, ey, ez = edges[f, 0], edges[f, 1], edges[f, 2]
        ix, iy, iz = 1.0 / ex, 1.0 / ey, 1.0 / ez
        for i in range(n):
            for j in range(i + 1, n):
                dx = pos[f, j, 0] - pos[f, i, 0]
                dy = pos[f, j, 1] - pos[f, i, 1]
                dz = pos[f, j, 2] - pos[f, i, 2]
                dx -= ex * np.rint(dx * ix)
                dy -= ey * np.rint(dy * iy)
                dz -= ez * np.rint(dz * iz)
                b = int(np.sqrt(dx * dx + dy * dy + dz * dz) * scale)
                if b < n_bins:
                    a, c = code[i], code[j]
                    lo, hi = (a, c) if a < c else (c, a)
                    hist[(lo * nt + hi) * n_bins + b] += vol[f]


def in_box(pos, edge):
    """Wrap into [0, edge) exactly (np.mod can return edge itself for tiny negatives)."""
    p = np.mod(pos, edge)
    return np.where(p >= edge, p - edge, p)


def _pairs(tree, pos, edge, r_max):
    """All unordered pairs within r_max: (i, j, minimum-image vector j - i, distance)."""
    ij = tree.query_pairs(r_max, output_type="ndarray")
    d = pos[ij[:, 1]] - pos[ij[:, 0]]
    d -= edge * np.round(d / edge)
    return ij[:, 0], ij[:, 1], d, np.linalg.norm(d, axis=1)


def rdf(positions, boxes, types, r_max=None, n_bins=200, pairs=None, progress=False, where="trajectory"):
    """g(r) of every bead-type pair, averaged over frames.

    Returns (r centres, {(A, B): g}, {(A, B): coordination number of B around A}). Like pairs exclude the
    bead itself; each frame is normalised by its own volume (ideal-gas shell counts)."""
    types = np.asarray(types)
    edges = _edges(boxes, where)
    limit = 0.5 * edges.min()
    r_max = limit if r_max is None else r_max
    if r_max > limit + 1e-9:
        raise CgkdError(f"{where}: RDF cutoff {r_max:.3f} nm is beyond half the shortest box edge ({limit:.3f} nm)")
    pairs = pairs or type_pairs(types)
    _check_types(types, {t for p in pairs for t in p}, where)
    bins = np.linspace(0.0, r_max, n_bins + 1)
    shell = 4.0 / 3.0 * np.pi * (bins[1:] ** 3 - bins[:-1] ** 3)
    names = sorted(set(types))
    code = np.searchsorted(names, types)
    count = {t: int((types == t).sum()) for t in names}
    g = {}
    rho = {t: 0.0 for t in names}
    for (a, b) in pairs:
        if a == b and count[a] < 2:
            raise CgkdError(f"{where}: one bead of type {a}: no {a}-{a} pairs for an RDF")
    nt, n_beads = len(names), len(types)
    # Histogram of every type pair in one bincount: key = (lower type * nt + upper type) * n_bins + bin,
    # each pair weighted by its frame's volume (the per-frame ideal-gas normalisation).
    hist = np.zeros(nt * nt * n_bins)
    dense = n_beads * (n_beads - 1) // 2 <= DENSE_PAIRS  # all pairs, compiled; else a periodic k-d tree
    step = 256 if dense else 1
    for s in tqdm(range(0, len(positions), step), disable=not progress, desc="RDF", unit="block"):
        edge = edges[s:s + step]
        vol = np.prod(edge, axis=1)
        if dense:
            _all_pairs_hist(np.asarray(positions[s:s + step], dtype=np.float64), edge, vol, code, nt, n_bins,
                            r_max, hist)
        else:
            pos = in_box(positions[s], edge[0])
            i, j, _, r = _pairs(cKDTree(pos, boxsize=edge[0]), pos, edge[0], r_max)
            key = (np.minimum(code[i], code[j]) * nt + np.maximum(code[i], code[j])) * n_bins
            b = (r * (n_bins / r_max)).astype(np.int64)
            inside = b < n_bins
            hist += np.bincount((key + b)[inside], minlength=len(hist)) * vol[0]
        for t in names:
            rho[t] += count[t] * np.sum(1.0 / vol)
    hist = hist.reshape(nt, nt, n_bins)
    for a, b_ in pairs:
        ia, ib = sorted((names.index(a), names.index(b_)))
        n_pairs = count[a] * (count[a] - 1) / 2 if a == b_ else count[a] * count[b_]
        g[(a, b_)] = hist[ia, ib] / (n_pairs * shell)
    n = len(positions)
    r = 0.5 * (bins[1:] + bins[:-1])
    g = {p: v / n for p, v in g.items()}
    cn = {p: (rho[p[1]] / n - (1.0 / np.mean(np.prod(edges, axis=1)) if p[0] == p[1] else 0.0))
          * np.cumsum(g[p] * shell) for p in pairs}
    return r, g, cn


def first_minimum(r, g, rise=3):
    """r of the first minimum after the main peak of g(r) (the first-shell cutoff), on a smoothed curve:
    the first point after the peak followed by `rise` consecutive increases (noise does not stop it early)."""
    smooth = np.convolve(g, np.ones(5) / 5, mode="same")
    peak = int(np.argmax(smooth))
    up = np.diff(smooth[peak:]) > 0
    for k in range(len(up) - rise + 1):
        if up[k:k + rise].all():
            return float(r[peak + k])
    return float(r[peak + int(np.argmin(smooth[peak:]))])


def _triplets(positions, boxes, types, center, neighbours, cutoffs, progress, where, desc):
    """For each frame, the (r_ij, r_ik, theta_jik) of every centre i of type `center` and ordered pair of
    distinct neighbours j, k of types neighbours[0], neighbours[1] within their cutoffs."""
    types = np.asarray(types)
    _check_types(types, {center, *neighbours}, where)
    edges = _edges(boxes, where)
    r_cut = max(cutoffs)
    if r_cut > 0.5 * edges.min() + 1e-9:
        raise CgkdError(f"{where}: shell cutoff {r_cut:.3f} nm is beyond half the shortest box edge")
    is_c = types == center
    for f in tqdm(range(len(positions)), disable=not progress, desc=desc, unit="frame"):
        edge = edges[f]
        pos = in_box(positions[f], edge)
        i, j, d, r = _pairs(cKDTree(pos, boxsize=edge), pos, edge, r_cut)
        # Directed edges centre -> neighbour, in both directions of each pair.
        c = np.r_[i, j]
        nb = np.r_[j, i]
        vec = np.r_[d, -d]
        dist = np.r_[r, r]
        keep = is_c[c]
        c, nb, vec, dist = c[keep], nb[keep], vec[keep], dist[keep]
        order = np.argsort(c, kind="stable")
        c, nb, vec, dist = c[order], nb[order], vec[order], dist[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        sizes = np.diff(np.r_[starts, len(c)])
        # All ordered pairs (p, q), p != q, of edges sharing a centre.
        size_of = np.repeat(sizes, sizes)
        start_of = np.repeat(starts, sizes)
        p = np.repeat(np.arange(len(c)), size_of)
        q = start_of[p] + (np.arange(len(p)) - np.repeat(np.cumsum(size_of) - size_of, size_of))
        ok = p != q
        p, q = p[ok], q[ok]
        sel = ((types[nb[p]] == neighbours[0]) & (dist[p] <= cutoffs[0])
               & (types[nb[q]] == neighbours[1]) & (dist[q] <= cutoffs[1]))
        p, q = p[sel], q[sel]
        cos = np.einsum("ij,ij->i", vec[p], vec[q]) / (dist[p] * dist[q])
        yield dist[p], dist[q], np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def adf(positions, boxes, types, center, neighbours, cutoffs, n_bins=90, progress=False, where="trajectory",
        empty_ok=False):
    """P(theta) of the angle j-i-k (degrees) for centres of type `center` and neighbours j, k of types
    `neighbours` within `cutoffs` (nm, one per neighbour type); a probability density over 0-180.
    No triplet at all is an error unless empty_ok (then P = 0)."""
    bins = np.linspace(0.0, 180.0, n_bins + 1)
    h = np.zeros(n_bins)
    for _, _, theta in _triplets(positions, boxes, types, center, neighbours, cutoffs, progress, where, "ADF"):
        h += np.histogram(theta, bins=bins)[0]
    _check_found(h, empty_ok, where, center, neighbours, cutoffs)
    return 0.5 * (bins[1:] + bins[:-1]), h / (max(h.sum(), 1) * np.diff(bins))


def _check_found(h, empty_ok, where, center, neighbours, cutoffs):
    if h.sum() == 0 and not empty_ok:
        raise CgkdError(f"{where}: no {neighbours[0]}-{center}-{neighbours[1]} triplets within {cutoffs} nm")


def cdf(positions, boxes, types, center, neighbours, cutoffs, r_range=None, n_r=50, n_theta=45,
        progress=False, where="trajectory", empty_ok=False):
    """Combined distribution (TRAVIS): joint density of r_ij (neighbour j) and theta_jik (to a second
    neighbour k). Returns (r centres, theta centres, density (n_r, n_theta)) normalised to 1."""
    r_range = r_range or (0.0, cutoffs[0])
    rb = np.linspace(*r_range, n_r + 1)
    tb = np.linspace(0.0, 180.0, n_theta + 1)
    h = np.zeros((n_r, n_theta))
    for rij, _, theta in _triplets(positions, boxes, types, center, neighbours, cutoffs, progress, where, "CDF"):
        h += np.histogram2d(rij, theta, bins=(rb, tb))[0]
    _check_found(h, empty_ok, where, center, neighbours, cutoffs)
    area = np.outer(np.diff(rb), np.diff(tb))
    return 0.5 * (rb[1:] + rb[:-1]), 0.5 * (tb[1:] + tb[:-1]), h / (max(h.sum(), 1) * area)


def unwrap_in_time(positions, boxes):
    """Undo periodic wrapping along a trajectory (each step assumed shorter than half a box edge)."""
    edges = _edges(boxes)
    d = np.diff(positions, axis=0)
    d -= edges[1:, None, :] * np.round(d / edges[1:, None, :])
    return np.concatenate([positions[:1], positions[0] + np.cumsum(d, axis=0)])


def msd(unwrapped, dt_ps, types, max_lag=None):
    """Mean-squared displacement per bead type over all time origins (FFT, O(T log T)); lags in ps."""
    unwrapped = np.asarray(unwrapped, dtype=np.float64)
    n = len(unwrapped)
    max_lag = max_lag or n // 2
    types = np.asarray(types)
    out = {}
    for t in sorted(set(types)):
        x = unwrapped[:, types == t]  # (T, m, 3)
        # MSD(k) = mean over origins of |x(t+k) - x(t)|^2 = S1(k) - 2 S2(k) (Calandrini et al.)
        sq = (x ** 2).sum(axis=2)
        total = 2 * sq.sum(axis=0)
        s1 = np.empty((max_lag, x.shape[1]))
        for k in range(max_lag):
            total = total - (sq[k - 1] if k > 0 else 0) - (sq[n - k] if k > 0 else 0)
            s1[k] = total / (n - k)
        fx = np.fft.rfft(x, n=2 * n, axis=0)
        ac = np.fft.irfft(fx * fx.conj(), axis=0)[:max_lag].sum(axis=2) / (n - np.arange(max_lag))[:, None]
        out[t] = (s1 - 2 * ac).mean(axis=1)
    return np.arange(max_lag) * dt_ps, out


def diffusion(lags, msd_values, window=(0.2, 0.8)):
    """Self-diffusion coefficient (nm^2/ps) from a least-squares line MSD = 6 D t + c over the lag window
    given as fractions of the longest lag. Returns (D, (t_start, t_end))."""
    lo, hi = window[0] * lags[-1], window[1] * lags[-1]
    sel = (lags >= lo) & (lags <= hi)
    if sel.sum() < 3:
        raise CgkdError(f"diffusion fit window {window} holds fewer than 3 lags; use a longer trajectory")
    slope = np.polyfit(lags[sel], msd_values[sel], 1)[0]
    return slope / 6.0, (float(lo), float(hi))


def density(masses_amu, boxes):
    """Mass density (g/cm^3) per frame."""
    vol = np.abs(np.linalg.det(np.asarray(boxes, dtype=np.float64)))
    return np.sum(masses_amu) / 6.02214076e23 / (vol * 1e-21)


def rdf_error(g, g_ref, r):
    """Integrated absolute RDF error, normalised: int |g - g_ref| dr / int g_ref dr."""
    return float(np.trapezoid(np.abs(g - g_ref), r) / np.trapezoid(g_ref, r))


def jensen_shannon(p, q):
    """Jensen-Shannon divergence (bits, 0..1) of two histograms of the same binning (1 if one is empty)."""
    p = np.asarray(p, dtype=float).ravel()
    q = np.asarray(q, dtype=float).ravel()
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return np.sum(a[nz] * np.log2(a[nz] / b[nz]))

    return float(0.5 * kl(p, m) + 0.5 * kl(q, m))
