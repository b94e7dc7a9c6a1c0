"""Teacher labels (`cgkd label`): a teacher ensemble evaluated once on every frame of a CG dataset or trajectory.

Per frame and member the file holds the forces (priors included: every member and the student share the
same fixed priors), the network energy E = sum of the per-bead energies, and the per-bead energies eps
(network part, without the priors), plus their ensemble means and standard deviations.

Centring. A network's energy has an arbitrary offset, and its per-bead energies one per bead type. Each
member's eps are centred per bead type on that member's own training frames (eps - mean over the training
frames and beads of that type; `eps_offsets_kJ_mol` in its metadata, or computed from its training dataset),
and E is the sum of the centred eps. Only then are members averaged. Forces are unaffected.

The file (HDF5, format cgkd-labels-1) holds `forces` (frames, members, beads, 3), `energy` (frames, members),
`eps` (frames, members, beads) and, for readers outside cgkd, their member means and standard deviations
(`mean_forces`, `std_forces`, ...), every dataset Fletcher-32 checksummed (a bit flip fails loudly). It is
keyed by the sha256 of the labelled file, of every member's model.pt and of the centring offsets: unchanged
inputs reuse it, changed ones get new labels in the cache
(<teachers>/labels/), and a label file given by path that no longer matches is refused, saying what changed.
Work in progress lives in <file>.partial (frames done so far), so an interrupted run resumes; the final name
appears only when complete.
"""
import fcntl
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .dataset import CGDataset, batch
from .errors import CgkdError
from .fileio import file_hash
from .model import ensemble_members, load_model
from .observables import max_cutoff

FORMAT = "cgkd-labels-1"
ARRAYS = ("forces", "energy", "eps")


def eps_offsets(model, ds, frames, batch_size=8):
    """{bead type: mean per-bead energy (kJ/mol)} of the model over the given frames of a dataset."""
    types = model.type_index(ds.type_names)
    names = np.array(ds.type_names)
    sums = {t: 0.0 for t in model.type_names if t in set(ds.type_names)}
    for s in range(0, len(frames), batch_size):
        fr = np.asarray(frames[s:s + batch_size])
        t_, p, b, bi, _ = batch(ds, fr, types, forces=False)
        with torch.no_grad():
            eps, _ = model(t_, p, b, bi)
        eps = eps.reshape(len(fr), ds.n_beads).numpy()
        for t in sums:
            sums[t] += float(eps[:, names == t].sum())
    return {t: sums[t] / (len(frames) * int((names == t).sum())) for t in sums}


def label_key(dataset_hash, member_hashes, offsets):
    """The cache key: format, labelled file, every member's model.pt and its centring offsets."""
    return hashlib.sha256(json.dumps([FORMAT, dataset_hash, list(member_hashes), offsets],
                                     sort_keys=True).encode()).hexdigest()


class Teachers:
    """A teacher ensemble (or one model): member folders, models, metadata and model.pt hashes."""

    def __init__(self, path):
        self.path = Path(path)
        self.members = ensemble_members(path)
        self.models = [load_model(m) for m in self.members]
        self.metas = []
        for m in self.members:
            f = m / "metadata.json"
            if not f.is_file():
                raise CgkdError(f"{f}: missing; a teacher needs the metadata `cgkd train` writes")
            self.metas.append(json.loads(f.read_text()))
        self.hashes = [file_hash(m / "model.pt") for m in self.members]
        self.model = self.models[0]
        self.onsets = np.asarray(self.metas[0]["pair_onsets_nm"])
        if any(m.type_names != self.model.type_names for m in self.models):
            raise CgkdError(f"{self.path}: members were trained on different bead types")
        for member, meta in zip(self.members, self.metas):  # one dataset and split, or test frames could leak
            if (meta["dataset_sha256"], meta["split"]) != (self.metas[0]["dataset_sha256"], self.metas[0]["split"]):
                raise CgkdError(f"{member}: trained on another dataset or split than {self.members[0]}")
        self.budget_model = min(self.models, key=lambda m: m.max_num_neighbors)

    def check(self, ds):
        """Refuse a dataset the teachers cannot label: unknown bead types, boxes too small for their reach."""
        unknown = sorted(set(ds.type_names) - set(self.model.type_names))
        if unknown:
            raise CgkdError(f"{ds.path}: bead types {unknown} are unknown to the teachers in {self.path} "
                            f"(they know {self.model.type_names})")
        reach = max(max(m.cutoff, m.prior.cutoff if m.prior is not None else 0.0) for m in self.models)
        if reach > max_cutoff(ds.boxes) + 1e-9:
            raise CgkdError(f"{ds.path}: boxes are too small for the teachers' reach of {reach} nm "
                            f"(half the shortest box edge is {max_cutoff(ds.boxes):.3f} nm)")

    def offsets(self, k, ds):
        """Per-type eps offsets of member k: from its metadata, else from its training frames."""
        meta = self.metas[k]
        if "eps_offsets_kJ_mol" in meta:
            return meta["eps_offsets_kJ_mol"]
        train = CGDataset(meta["dataset"]) if meta["dataset_sha256"] != ds.hash else ds
        if train.hash != meta["dataset_sha256"]:
            raise CgkdError(f"{meta['dataset']}: changed since {self.members[k]} was trained on it, so its "
                            "energies cannot be centred on its training frames")
        return eps_offsets(self.models[k], train, np.arange(*meta["split"]["train"]))


class Labels:
    """A complete label file: arrays (frames, members, ...) and the means/stds over any subset of members."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise CgkdError(f"{self.path}: not a cgkd label file")
                self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
                for name in ARRAYS:
                    setattr(self, name, f[name][:])
        except OSError as e:
            raise CgkdError(f"{self.path}: not a readable label file ({e})") from None
        except KeyError as e:
            raise CgkdError(f"{self.path}: incomplete label file ({e})") from None
        self.member_hashes = json.loads(self.attrs["member_sha256"])

    def mean(self, members=None):
        """Ensemble means over `members` (indices; default all): forces (F, N, 3), energy (F,), eps (F, N),
        and the ensemble's force standard deviation per frame and bead (F, N, 3)."""
        sel = slice(None) if members is None else list(members)
        f = self.forces[:, sel]
        return {"forces": f.mean(axis=1), "energy": self.energy[:, sel].mean(axis=1),
                "eps": self.eps[:, sel].mean(axis=1), "force_std": f.std(axis=1)}

    def uncertainty(self, type_names, frames=slice(None)):
        """{bead type: RMS over frames, beads and components of the members' force standard deviation}."""
        std = self.forces[frames].std(axis=1)
        names = np.array(type_names)
        return {t: float(np.sqrt((std[:, names == t] ** 2).mean())) for t in sorted(set(type_names))}


def plot_uncertainty(labels, type_names, path):
    """Histogram per bead type of the members' force standard deviation (norm over components, every frame and
    bead), the ensemble's disagreement, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = np.linalg.norm(labels.forces.std(axis=1), axis=-1)  # (frames, beads)
    names = np.array(type_names)
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted(set(type_names)):
        ax.hist(std[:, names == t].ravel(), bins=60, histtype="step", density=True, label=t)
    ax.set(xlabel="|std of member forces| (kJ/mol/nm)", ylabel="probability density",
           title=f"Teacher disagreement, {labels.forces.shape[1]} members, {labels.forces.shape[0]} frames")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _stale_reason(attrs, ds, teachers):
    if attrs.get("format") != FORMAT:
        return f"it has format {attrs.get('format')}, this cgkd writes {FORMAT}"
    if attrs.get("dataset_sha256") != ds.hash:
        return f"it was made for {attrs.get('dataset')} (sha256 {str(attrs.get('dataset_sha256'))[:12]}), not {ds.path}"
    old = json.loads(attrs.get("member_sha256", "[]"))
    if len(old) != len(teachers.hashes):
        return f"it was made by {len(old)} members, {teachers.path} has {len(teachers.hashes)}"
    changed = [str(teachers.members[k]) for k, (a, b) in enumerate(zip(old, teachers.hashes)) if a != b]
    if not changed:
        return "the members' centring offsets (eps_offsets_kJ_mol in their metadata) changed since"
    return f"these members changed since: {', '.join(changed)}"


def label(teachers, dataset, out=None, batch_size=8, overwrite=False, progress=True):
    """Label every frame of `dataset` (a CGDataset or path) with `teachers` (a Teachers or path); returns
    (Labels, status) with status "reused", "resumed" or "new". The file is `out`, or by default
    <teachers>/labels/<dataset stem>-<key>.h5."""
    teachers = teachers if isinstance(teachers, Teachers) else Teachers(teachers)
    ds = dataset if isinstance(dataset, CGDataset) else CGDataset(dataset, forces=False)
    teachers.check(ds)
    offsets = [teachers.offsets(k, ds) for k in range(len(teachers.models))]
    key = label_key(ds.hash, teachers.hashes, offsets)
    out = Path(out) if out else teachers.path / "labels" / f"{ds.path.stem}-{key[:16]}.h5"
    if out.exists() and not overwrite:
        Labels(out)  # refuse a foreign or damaged file before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:  # one labeller per file; the others wait, then reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _label_locked(teachers, ds, key, offsets, out, batch_size, overwrite, progress)


def _partial_key(partial):
    """The key of a work-in-progress file, or None if it is damaged (a kill during its creation)."""
    try:
        with h5py.File(partial, "r") as f:
            return f.attrs.get("key") if "done" in f else None
    except OSError:
        return None


def _label_locked(teachers, ds, key, offsets, out, batch_size, overwrite, progress):
    if out.exists():
        try:
            labels = Labels(out)
        except CgkdError:
            if not overwrite:
                raise
            labels = None  # a damaged file that --overwrite replaces
        if labels is not None and labels.attrs["key"] == key:
            return labels, "reused"
        if not overwrite:
            raise CgkdError(f"{out}: stale labels, {_stale_reason(labels.attrs, ds, teachers)}; relabel into it "
                            "with `cgkd label --overwrite --out FILE`, or leave the label file out to use the cache")
    partial = out.with_name(out.name + ".partial")
    status = "new"
    if partial.exists():
        if _partial_key(partial) == key:
            status = "resumed"
        else:
            partial.unlink()
    m, n, f_total = len(teachers.models), ds.n_beads, len(ds)
    off = np.array([[o[t] for t in ds.type_names] for o in offsets])  # (members, beads)
    with h5py.File(partial, "a") as f:
        if status == "new":
            f.attrs.update(format=FORMAT, key=key, cgkd_version=__version__, dataset=str(ds.path),
                           dataset_sha256=ds.hash, teachers=str(teachers.path),
                           members=json.dumps([str(p) for p in teachers.members]),
                           member_sha256=json.dumps(teachers.hashes), type_names=json.dumps(ds.type_names),
                           eps_offsets=json.dumps(offsets),
                           units=json.dumps({"forces": "kJ/mol/nm", "energy": "kJ/mol", "eps": "kJ/mol"}))
            f.create_dataset("forces", (f_total, m, n, 3), np.float32, chunks=(1, m, n, 3), fletcher32=True)
            f.create_dataset("energy", (f_total, m), np.float64, fletcher32=True)
            f.create_dataset("eps", (f_total, m, n), np.float32, chunks=(1, m, n), fletcher32=True)
            f.create_dataset("done", (f_total,), bool, fletcher32=True)
        todo = np.flatnonzero(~f["done"][:])
        types = teachers.model.type_index(ds.type_names)
        for fr in tqdm([todo[s:s + batch_size] for s in range(0, len(todo), batch_size)], disable=not progress,
                       desc=f"cgkd label {ds.path.name}", unit="batch"):
            k = len(fr)
            for i in fr:
                teachers.budget_model.check_neighbors(torch.from_numpy(ds.positions[i]), torch.from_numpy(ds.boxes[i]))
            t, p, b, bi, _ = batch(ds, fr, types, forces=False)
            for j, model in enumerate(teachers.models):
                eps, _, forces = model.energy_forces(t, p.clone(), b, bi)
                eps = eps.detach().numpy().reshape(k, n) - off[j]
                f["forces"][fr, j] = forces.detach().numpy().reshape(k, n, 3)
                f["eps"][fr, j] = eps
                f["energy"][fr, j] = eps.astype(np.float64).sum(axis=1)
            f["done"][fr] = True
            f.flush()
        for name in ARRAYS:
            values = f[name][:]
            for stat in ("mean", "std"):
                if f"{stat}_{name}" in f:
                    del f[f"{stat}_{name}"]
            f.create_dataset(f"mean_{name}", data=values.mean(axis=1), fletcher32=True)
            f.create_dataset(f"std_{name}", data=values.std(axis=1), fletcher32=True)
    os.replace(partial, out)
    return Labels(out), status
