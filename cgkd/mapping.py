"""Mapping specs (YAML), sparse position/force operators, PBC unwrapping and statistically optimal force maps.

A mapping file lists, per residue, its beads (name, type, member atoms, position weights) and the force
map of that residue (`sum`, or `optimal`: Krämer et al., JCTC 2023, "aggforce"):

    residues:
      CHO:
        force_map: sum               # or optimal
        beads:
          - {name: HEAD, type: NME, atoms: [N, C3, C4, C5, ...], weights: mass}
          - {name: TAIL, type: OHE, atoms: [C1, H11, ...], weights: geometry}   # or a list of numbers
      CL:
        beads: [{name: CL, type: CL, atoms: all}]

Positions map with M (n_beads x n_atoms, rows sum to 1) after unwrapping each molecule to the minimum
image of its first atom; forces map with W. `sum` adds the atomic forces of each bead. `optimal` is the
force map of least mean-square mapped force among those that give correct mean forces (W M^T = I, equal
weights across constrained atoms so constraint forces cancel), fitted on the copies of each residue.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
import yaml

from .errors import CgkdError
from .fileio import read_yaml

WEIGHT_KINDS = ("mass", "geometry")
FORCE_MAPS = ("sum", "optimal")


@dataclass
class BeadSpec:
    name: str
    type: str
    atoms: list          # atom names, or ["all"]
    weights: object = "mass"


@dataclass
class ResidueMap:
    beads: list
    force_map: str = "sum"


@dataclass
class MappingSpec:
    residues: dict
    path: Path = None
    raw: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path):
        return cls.from_dict(read_yaml(path, "mapping file"), path)

    @classmethod
    def from_dict(cls, data, path="<mapping>"):
        if not isinstance(data.get("residues"), dict) or not data["residues"]:
            raise CgkdError(f"{path}: expected 'residues:' mapping residue names to their beads")
        residues = {}
        for res, body in data["residues"].items():
            where = f"{path}: residues.{res}"
            if not isinstance(body, dict) or not isinstance(body.get("beads"), list) or not body["beads"]:
                raise CgkdError(f"{where}: expected 'beads:' with at least one bead")
            fmap = body.get("force_map", "sum")
            if fmap not in FORCE_MAPS:
                raise CgkdError(f"{where}.force_map: expected one of {FORCE_MAPS}, got {fmap!r}")
            beads = []
            for i, b in enumerate(body["beads"]):
                for key in ("name", "type", "atoms"):
                    if key not in b:
                        raise CgkdError(f"{where}.beads[{i}]: missing '{key}'")
                atoms = ["all"] if b["atoms"] == "all" else [str(a) for a in b["atoms"]]
                if len(set(atoms)) != len(atoms):
                    dup = sorted({a for a in atoms if atoms.count(a) > 1})
                    raise CgkdError(f"{where}.beads[{i}]: atoms {dup} listed twice")
                w = b.get("weights", "mass")
                if not isinstance(w, str) and atoms == ["all"]:
                    raise CgkdError(f"{where}.beads[{i}].weights: numbers need the atoms listed by name, not 'all'")
                if isinstance(w, str) and w not in WEIGHT_KINDS:
                    raise CgkdError(f"{where}.beads[{i}].weights: expected mass, geometry or numbers, got {w!r}")
                if not isinstance(w, str):
                    w = [float(x) for x in w]
                    if len(w) != len(atoms) or sum(w) <= 0 or min(w) < 0:
                        raise CgkdError(f"{where}.beads[{i}].weights: need {len(atoms)} non-negative numbers "
                                        f"with a positive sum, got {w}")
                beads.append(BeadSpec(str(b["name"]), str(b["type"]), atoms, w))
            residues[str(res)] = ResidueMap(beads, fmap)
        return cls(residues, Path(str(path)), data)


@dataclass
class Operators:
    """Sparse maps and the per-bead tables of one topology."""
    M: sp.csr_matrix            # positions: (n_beads, n_atoms)
    W: sp.csr_matrix            # forces: (n_beads, n_atoms)
    ref_atom: np.ndarray        # (n_atoms,) index of the unwrapping reference atom of each atom's molecule
    bead_names: list
    bead_types: list
    bead_masses: np.ndarray
    bead_residues: np.ndarray   # residue index of each bead
    residue_names: list         # per bead


def build_operators(spec, atom_names, residue_names, residue_ids, masses, constraints=(), where="trajectory"):
    """Validate `spec` against a topology given per atom, and return the mapping operators.

    Every atom must belong to exactly one bead; a constrained pair must not cross two beads."""
    atom_names = [str(a) for a in atom_names]
    residue_names = [str(r) for r in residue_names]
    residue_ids = np.asarray(residue_ids)
    masses = np.asarray(masses, dtype=np.float64)
    n_atoms = len(atom_names)
    bead_of_atom = np.full(n_atoms, -1)
    rows, cols, vals = [], [], []
    names, types, bmass, bres, rnames = [], [], [], [], []
    ref_atom = np.zeros(n_atoms, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, residue_ids[1:] != residue_ids[:-1]])
    ends = np.r_[starts[1:], n_atoms]
    for s, e in zip(starts, ends):
        res = residue_names[s]
        if res not in spec.residues:
            raise CgkdError(f"{spec.path}: no mapping for residue {res} (atoms {s}-{e - 1} of {where})")
        ref_atom[s:e] = s
        index = {atom_names[a]: a for a in range(s, e)}
        for bead in spec.residues[res].beads:
            members = list(range(s, e)) if bead.atoms == ["all"] else []
            for name in ([] if bead.atoms == ["all"] else bead.atoms):
                if name not in index:
                    raise CgkdError(f"{spec.path}: residues.{res} bead {bead.name}: no atom '{name}' in residue "
                                    f"{res} (has {sorted(index)})")
                members.append(index[name])
            taken = [atom_names[a] for a in members if bead_of_atom[a] >= 0]
            if taken:
                raise CgkdError(f"{spec.path}: residues.{res}: atoms {taken} are in more than one bead")
            if isinstance(bead.weights, list):
                w = np.array(bead.weights)
            else:
                w = masses[members] if bead.weights == "mass" else np.ones(len(members))
            bead_of_atom[members] = len(names)
            rows += [len(names)] * len(members)
            cols += members
            vals += list(w / w.sum())
            names.append(bead.name)
            types.append(bead.type)
            bmass.append(masses[members].sum())
            bres.append(residue_ids[s])
            rnames.append(res)
        missing = [atom_names[a] for a in range(s, e) if bead_of_atom[a] < 0]
        if missing:
            raise CgkdError(f"{spec.path}: residues.{res}: atoms {missing} are in no bead")
    for a, b in np.asarray(constraints, dtype=np.int64).reshape(-1, 2):
        if bead_of_atom[a] != bead_of_atom[b]:
            raise CgkdError(f"{spec.path}: constrained atoms {atom_names[a]} ({a}) and {atom_names[b]} ({b}) of "
                            f"residue {residue_names[a]} are in different beads ({names[bead_of_atom[a]]}, "
                            f"{names[bead_of_atom[b]]}); their constraint forces would not cancel")
    shape = (len(names), n_atoms)
    M = sp.csr_matrix((vals, (rows, cols)), shape=shape)
    W = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
    return Operators(M, W, ref_atom, names, types, np.array(bmass), np.array(bres), rnames)


@numba.njit(parallel=True, cache=True)
def _map_frames(pos, frc, boxes, ref, bead, weight, w_ptr, w_idx, w_val, n_beads):
    """Per frame: unwrap each atom to its molecule's reference atom (minimum image, any cell shape),
    average into beads with the position weights, wrap beads into the cell; forces through CSR W."""
    nf, na = pos.shape[0], pos.shape[1]
    R = np.zeros((nf, n_beads, 3))
    F = np.zeros((nf, n_beads, 3))
    for t in numba.prange(nf):
        box = boxes[t].astype(np.float64)
        inv = np.linalg.inv(box)
        ortho = box[0, 1] == 0 and box[0, 2] == 0 and box[1, 0] == 0 and box[1, 2] == 0 \
            and box[2, 0] == 0 and box[2, 1] == 0
        for a in range(na):
            r = ref[a]
            d0 = pos[t, a, 0] - pos[t, r, 0]
            d1 = pos[t, a, 1] - pos[t, r, 1]
            d2 = pos[t, a, 2] - pos[t, r, 2]
            if ortho:  # the common case: three products instead of a 3x3 transform
                d0 -= np.rint(d0 * inv[0, 0]) * box[0, 0]
                d1 -= np.rint(d1 * inv[1, 1]) * box[1, 1]
                d2 -= np.rint(d2 * inv[2, 2]) * box[2, 2]
            else:
                s0 = np.rint(d0 * inv[0, 0] + d1 * inv[1, 0] + d2 * inv[2, 0])
                s1 = np.rint(d0 * inv[0, 1] + d1 * inv[1, 1] + d2 * inv[2, 1])
                s2 = np.rint(d0 * inv[0, 2] + d1 * inv[1, 2] + d2 * inv[2, 2])
                d0 -= s0 * box[0, 0] + s1 * box[1, 0] + s2 * box[2, 0]
                d1 -= s0 * box[0, 1] + s1 * box[1, 1] + s2 * box[2, 1]
                d2 -= s0 * box[0, 2] + s1 * box[1, 2] + s2 * box[2, 2]
            w = weight[a]
            b = bead[a]
            R[t, b, 0] += w * (pos[t, r, 0] + d0)
            R[t, b, 1] += w * (pos[t, r, 1] + d1)
            R[t, b, 2] += w * (pos[t, r, 2] + d2)
        for b in range(n_beads):
            f0 = np.floor(R[t, b, 0] * inv[0, 0] + R[t, b, 1] * inv[1, 0] + R[t, b, 2] * inv[2, 0])
            f1 = np.floor(R[t, b, 0] * inv[0, 1] + R[t, b, 1] * inv[1, 1] + R[t, b, 2] * inv[2, 1])
            f2 = np.floor(R[t, b, 0] * inv[0, 2] + R[t, b, 1] * inv[1, 2] + R[t, b, 2] * inv[2, 2])
            for k in range(3):
                R[t, b, k] -= f0 * box[0, k] + f1 * box[1, k] + f2 * box[2, k]
            for j in range(w_ptr[b], w_ptr[b + 1]):
                a = w_idx[j]
                for k in range(3):
                    F[t, b, k] += w_val[j] * frc[t, a, k]
    return R, F


def map_block(op, positions, forces, boxes):
    """Bead positions (wrapped into the cell) and mapped forces of a block of frames (f, n_atoms, 3)."""
    M = op.M.tocoo()
    bead = np.empty(M.shape[1], dtype=np.int64)
    weight = np.empty(M.shape[1])
    bead[M.col], weight[M.col] = M.row, M.data
    W = op.W.tocsr()
    return _map_frames(np.ascontiguousarray(positions), np.ascontiguousarray(forces), np.ascontiguousarray(boxes),
                       op.ref_atom, bead, weight, W.indptr.astype(np.int64), W.indices.astype(np.int64),
                       W.data.astype(np.float64), M.shape[0])


def optimal_force_weights(M, second_moment, groups):
    """Least mean-square force map of one molecule under W M^T = I with equal weights inside each group.

    M: (b, a) position map of the molecule; second_moment: (a, a) E[f_a . f_b]; groups: (g, a) 0/1
    matrix joining atoms linked by constraints. Returns W (b, a)."""
    K = M @ groups.T                       # (b, g)
    S = groups @ second_moment @ groups.T  # (g, g)
    S_inv = np.linalg.pinv(S, hermitian=True)
    V = np.linalg.solve(K @ S_inv @ K.T, K @ S_inv)
    return V @ groups


def constraint_groups(n_atoms, pairs):
    """(g, n) 0/1 matrix of connected components of the constraint graph (singletons included)."""
    graph = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_atoms, n_atoms)) \
        if len(pairs) else sp.coo_matrix((n_atoms, n_atoms))
    n, labels = sp.csgraph.connected_components(graph, directed=False)
    G = np.zeros((n, n_atoms))
    G[labels, np.arange(n_atoms)] = 1.0
    return G


def residue_copies(residue_names, residue_ids, atom_names, wanted):
    """{residue name: (copies, atoms per copy) index array} for the residues in `wanted`; every copy must list
    the same atom names in the same order (the optimal map is fitted per position in the residue)."""
    residue_ids = np.asarray(residue_ids)
    starts = np.flatnonzero(np.r_[True, residue_ids[1:] != residue_ids[:-1]])
    ends = np.r_[starts[1:], len(residue_ids)]
    out = {}
    for s, e in zip(starts, ends):
        if str(residue_names[s]) in wanted:
            out.setdefault(str(residue_names[s]), []).append(np.arange(s, e))
    for res, copies in out.items():
        first = [atom_names[a] for a in copies[0]]
        for c in copies[1:]:
            if [atom_names[a] for a in c] != first:
                raise CgkdError(f"residue {res}: copies list different atoms or orders (atoms {c[0]}-{c[-1]}); "
                                "the optimal force map needs identical copies")
    return {k: np.array(v) for k, v in out.items()}


def fit_optimal(op, spec, residue_names, residue_ids, atom_names, constraints, force_blocks):
    """Replace the force rows of every residue whose map is `optimal` by the fitted optimal map.

    force_blocks: an iterable of (f, n_atoms, 3) force arrays (streamed). Returns {residue: stats}."""
    optimal = {r for r, m in spec.residues.items() if m.force_map == "optimal"}
    copies = residue_copies(residue_names, residue_ids, atom_names, optimal)
    if not copies:
        return {}
    moments = {r: np.zeros((c.shape[1], c.shape[1])) for r, c in copies.items()}
    counts = dict.fromkeys(copies, 0)
    for block in force_blocks:
        for r, c in copies.items():
            f = block[:, c]  # (frames, copies, atoms, 3)
            moments[r] += np.einsum("fcai,fcbi->ab", f, f, optimize=True)
            counts[r] += f.shape[0] * f.shape[1] * 3
    pairs = np.asarray(constraints, dtype=np.int64).reshape(-1, 2)
    residue_ids = np.asarray(residue_ids)
    W = op.W.tolil()
    stats = {}
    for r, c in copies.items():
        first = c[0]
        beads = np.flatnonzero(op.bead_residues == residue_ids[first[0]])
        inside = pairs[np.isin(pairs, first).all(axis=1)] - first[0]
        S = moments[r] / counts[r]
        w = optimal_force_weights(op.M[beads][:, first].toarray(), S, constraint_groups(len(first), inside))
        w_sum = op.W[beads][:, first].toarray()
        stats[r] = {"mean_square_force_sum": float(np.einsum("ba,ac,bc->", w_sum, S, w_sum) / len(beads)),
                    "mean_square_force_optimal": float(np.einsum("ba,ac,bc->", w, S, w) / len(beads))}
        for atoms in c:
            rows = np.flatnonzero(op.bead_residues == residue_ids[atoms[0]])
            for i, row in enumerate(rows):
                W.rows[row], W.data[row] = list(atoms), list(w[i])
    op.W = W.tocsr()
    return stats


def write_cg_pdb(path, op, positions, box):
    """A CG topology PDB: one pseudo-atom per bead, named by its bead type (what CG models see), in its
    molecule's residue; bead names are in the dataset's /cgkd/bead_names."""
    a, b, c = np.linalg.norm(box, axis=1) * 10.0

    def angle(u, v):
        return np.degrees(np.arccos(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))))

    alpha, beta, gamma = angle(box[1], box[2]), angle(box[0], box[2]), angle(box[0], box[1])
    lines = [f"CRYST1{a:9.3f}{b:9.3f}{c:9.3f}{alpha:7.2f}{beta:7.2f}{gamma:7.2f} P 1           1"]
    for i, (name, res, rid, xyz) in enumerate(zip(op.bead_types, op.residue_names, op.bead_residues,
                                                  positions * 10.0)):
        lines.append(f"HETATM{(i + 1) % 100000:5d} {name[:4]:<4s} {res[:3]:>3s} A{(rid + 1) % 10000:4d}    "
                     f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00")
    lines.append("END")
    Path(path).write_text("\n".join(lines) + "\n")


def map_trajectory(reader, spec, out, chunk=256, overwrite=False, progress=True, config_text=""):
    """Map an AA trajectory (a readers.* object) to a CG dataset in H5MD; returns a summary dict."""
    from tqdm import tqdm

    from . import __version__
    from .fileio import atomic_path, check_writable
    from .h5md import H5MDWriter

    out = Path(out)
    check_writable(out, overwrite)
    top = reader.topology
    op = build_operators(spec, top.atom_names, top.residue_names, top.residue_ids, top.masses,
                         top.constraints, where=str(reader.path))
    stats = fit_optimal(op, spec, top.residue_names, top.residue_ids, top.atom_names, top.constraints,
                        (b[1] for b in reader.blocks(chunk)))
    pdb_out = out.with_suffix(".pdb")
    with atomic_path(out) as tmp:
        w = H5MDWriter.create(tmp, len(op.bead_names), group="cg", masses=op.bead_masses,
                              dtype={"position": np.float32, "force": np.float32}, compression="gzip")
        g = w.cgkd
        g.attrs["mapping"] = yaml.safe_dump(spec.raw, sort_keys=False)
        g.attrs["mapping_file"] = str(spec.path)
        g.attrs["source"] = str(reader.path)
        g.attrs["source_sha256"] = reader.hash()
        g.attrs["cgkd_version"] = __version__
        g.attrs["config"] = config_text
        g.attrs["force_map_stats"] = yaml.safe_dump(stats)
        if reader.temperature is not None:
            g.attrs["temperature_K"] = reader.temperature
        for key, values in (("bead_names", op.bead_names), ("bead_types", op.bead_types),
                            ("residue_names", op.residue_names)):
            g.create_dataset(key, data=np.array(values, dtype="S"))
        g.create_dataset("residue_ids", data=op.bead_residues)
        first = None
        with tqdm(total=reader.n_frames, unit="frame", disable=not progress, desc="cgkd map") as bar:
            for pos, frc, box, steps, times in reader.blocks(chunk):
                R, F = map_block(op, pos, frc, box)
                w.extend(steps, times, box, position=R, force=F)
                first = (R[0], box[0]) if first is None else first
                bar.update(len(R))
        w.close()
    write_cg_pdb(pdb_out, op, *first)
    return {"out": str(out), "topology": str(pdb_out), "frames": reader.n_frames, "beads": len(op.bead_names),
            "bead_types": sorted(set(op.bead_types)), "force_map_stats": stats}
