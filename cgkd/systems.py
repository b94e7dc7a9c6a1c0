"""AA systems: system.yaml specs, molecule checks, packmol boxes and OpenMM Systems from forcefields/."""
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from .errors import CgkdError
from .fileio import atomic_path, check_writable, read_yaml

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS_DIR = ROOT / "systems"
FORCEFIELDS_DIR = ROOT / "forcefields"
AVOGADRO = 6.02214076e23
HMR_HYDROGEN_MASS = 3.024  # amu; hydrogen mass repartitioning for a 4 fs step (Hopkins et al. 2015)


@dataclass
class Component:
    residue: str
    pdb: Path
    per_unit: int


@dataclass
class SystemSpec:
    name: str
    path: Path
    forcefield: Path
    components: list
    temperature: float
    pressure: float
    density: float
    density_source: str = ""


def _field(data, key, path, kind):
    if key not in data:
        raise CgkdError(f"{path}: missing field '{key}'")
    try:
        return kind(data[key])
    except (TypeError, ValueError):
        raise CgkdError(f"{path}: field '{key}' must be {kind.__name__}, got {data[key]!r}") from None


def load_system(name_or_path, forcefield=None):
    """Load a system spec by name (systems/<name>/) or by a directory or system.yaml path."""
    p = Path(name_or_path)
    if p.is_file():
        p = p.parent
    elif not (p / "system.yaml").is_file():  # a name, or a local folder that merely shares it
        p = SYSTEMS_DIR / str(name_or_path)
    yml = p / "system.yaml"
    if not yml.is_file():
        known = sorted(d.name for d in SYSTEMS_DIR.iterdir() if (d / "system.yaml").is_file())
        raise CgkdError(f"{yml}: unknown system '{name_or_path}' (known: {', '.join(known)})")
    data = read_yaml(yml, "system file")
    comps = []
    for i, c in enumerate(data.get("components") or []):
        where = f"{yml} components[{i}]"
        comps.append(Component(_field(c, "residue", where, str), p / _field(c, "pdb", where, str),
                               _field(c, "per_unit", where, int)))
    if not comps or any(c.per_unit < 1 for c in comps):
        raise CgkdError(f"{yml}: 'components' must list molecules with per_unit >= 1")
    ff = Path(forcefield or _field(data, "forcefield", yml, str))
    if not ff.is_absolute() and not ff.exists():
        ff = FORCEFIELDS_DIR / ff
    if not ff.is_file():
        raise CgkdError(f"{yml}: force field file {ff} does not exist")
    return SystemSpec(name=data.get("name", p.name), path=p, forcefield=ff, components=comps,
                      temperature=_field(data, "temperature", yml, float),
                      pressure=_field(data, "pressure", yml, float),
                      density=_field(data, "density", yml, float),
                      density_source=str(data.get("density_source", "")))


def atom_masses(spec, topology):
    """Physical atom masses (amu) from the force field's atom types, whatever HMR does to the System."""
    root = ET.parse(spec.forcefield).getroot()
    type_mass = {t.get("name"): float(t.get("mass")) for t in root.iter("Type")}
    atom_type = {(r.get("name"), a.get("name")): a.get("type") for r in root.iter("Residue") for a in r.iter("Atom")}
    return np.array([type_mass[atom_type[(a.residue.name, a.name)]] for a in topology.atoms()])


def residue_templates(ff_path):
    """{residue: {atom name: element symbol}} and {residue: [(name1, name2)]} from a force-field XML."""
    root = ET.parse(ff_path).getroot()
    elements = {t.get("name"): t.get("element") for t in root.iter("Type")}
    atoms, bonds = {}, {}
    for res in root.iter("Residue"):
        atoms[res.get("name")] = {a.get("name"): elements[a.get("type")] for a in res.iter("Atom")}
        bonds[res.get("name")] = [(b.get("atomName1"), b.get("atomName2")) for b in res.iter("Bond")]
    return atoms, bonds


def load_molecule(spec, comp):
    """Read one molecule PDB and check it against its residue template; returns an openmm PDBFile."""
    if not comp.pdb.is_file():
        raise CgkdError(f"{comp.pdb}: molecule PDB for residue {comp.residue} does not exist")
    try:
        pdb = app.PDBFile(str(comp.pdb))
    except Exception as e:  # OpenMM raises bare exceptions for malformed PDBs
        raise CgkdError(f"{comp.pdb}: cannot read PDB ({e})") from None
    templates, _ = residue_templates(spec.forcefield)
    residues = list(pdb.topology.residues())
    if len(residues) != 1 or residues[0].name != comp.residue:
        found = ", ".join(r.name for r in residues)
        raise CgkdError(f"{comp.pdb}: expected one residue {comp.residue}, found [{found}]")
    _check_residue(residues[0], templates, comp.pdb, spec.forcefield)
    return pdb


def _check_residue(res, templates, where, ff_path):
    template = templates.get(res.name)
    if template is None:
        raise CgkdError(f"{where}: residue {res.name} has no template in {ff_path}")
    names = [a.name for a in res.atoms()]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CgkdError(f"{where}: residue {res.name} has duplicate atom names {dup}")
    if set(names) != set(template):
        raise CgkdError(f"{where}: residue {res.name} atoms {sorted(names)} do not match the template "
                        f"{sorted(template)} in {ff_path}")
    for a in res.atoms():
        if a.element is None or a.element.symbol != template[a.name]:
            got = a.element.symbol if a.element is not None else "none"
            raise CgkdError(f"{where}: residue {res.name} atom {a.name} has element {got}, "
                            f"expected {template[a.name]}")


def unit_mass(spec):
    """Mass of one formula unit in g/mol."""
    total = 0.0
    for comp in spec.components:
        pdb = load_molecule(spec, comp)
        total += comp.per_unit * sum(a.element.mass.value_in_unit(u.dalton) for a in pdb.topology.atoms())
    return total


def box_edge(spec, units, density=None):
    """Cubic box edge (nm) holding `units` formula units at `density` g/cm^3 (default: experiment)."""
    grams = units * unit_mass(spec) / AVOGADRO
    volume_cm3 = grams / (density or spec.density)
    return (volume_cm3 * 1e21) ** (1.0 / 3.0)


def build_box(spec, units, out, seed=1, overwrite=False, cutoff=1.0, tolerance=0.2):
    """Pack `units` formula units at the experimental density with packmol; write a PDB with box vectors."""
    out = Path(out)
    check_writable(out, overwrite)
    if units < 1:
        raise CgkdError(f"{spec.path / 'system.yaml'}: --units must be >= 1, got {units}")
    edge = box_edge(spec, units)
    if edge < 2 * cutoff:
        raise CgkdError(f"{spec.path / 'system.yaml'}: {units} formula units fill a box of only {edge:.2f} nm "
                        f"at {spec.density} g/cm^3; need >= {2 * cutoff:.2f} nm (twice the {cutoff} nm cutoff): "
                        "use more units")
    mols = [(comp, load_molecule(spec, comp)) for comp in spec.components]
    from packmol.cli import get_binary_path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inner = 10.0 * (edge - tolerance)  # packmol works in Angstrom; leave a gap across the periodic faces
        lines = [f"tolerance {10 * tolerance}", "filetype pdb", "output packed.pdb", f"seed {seed}",
                 "nloop 400", "movebadrandom"]
        for comp, pdb in mols:
            app.PDBFile.writeFile(pdb.topology, pdb.positions, str(tmp / f"{comp.residue}.pdb"))
            lines += [f"structure {comp.residue}.pdb", f"  number {comp.per_unit * units}",
                      f"  inside cube 0. 0. 0. {inner:.3f}", "end structure"]
        (tmp / "pack.inp").write_text("\n".join(lines) + "\n")
        with open(tmp / "pack.inp") as stdin:
            res = subprocess.run([str(get_binary_path())], stdin=stdin, cwd=tmp, capture_output=True, text=True)
        packed = tmp / "packed.pdb"
        if not packed.exists() or "Success!" not in res.stdout and "FORCED" not in res.stdout:
            tail = "\n".join(res.stdout.splitlines()[-5:])
            raise CgkdError(f"{spec.path / 'system.yaml'}: packmol could not pack {units} units into a "
                            f"{edge:.2f} nm box:\n{tail}")
        xyz = app.PDBFile(str(packed)).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    top = app.Topology()
    chain = top.addChain()
    positions = []
    offset = 0
    for comp, pdb in mols:
        n = pdb.topology.getNumAtoms()
        for _ in range(comp.per_unit * units):
            _copy_residue(top, chain, next(pdb.topology.residues()))
            positions.append(xyz[offset:offset + n])
            offset += n
    top.setPeriodicBoxVectors(np.eye(3) * edge * u.nanometer)
    with atomic_path(out) as tmp_out:
        with open(tmp_out, "w") as f:
            app.PDBFile.writeFile(top, np.concatenate(positions) * u.nanometer, f)
    return out


def _copy_residue(top, chain, res, bonds=None):
    new = top.addResidue(res.name, chain)
    atoms = {a.name: top.addAtom(a.name, a.element, new) for a in res.atoms()}
    for a, b in (bonds if bonds is not None else [(b[0].name, b[1].name) for b in res.bonds()]):
        top.addBond(atoms[a], atoms[b])
    return new


def load_box(spec, pdb_path):
    """Read a box PDB; returns (topology with template bonds, positions in nm as an (n, 3) array)."""
    pdb_path = Path(pdb_path)
    if not pdb_path.is_file():
        raise CgkdError(f"{pdb_path}: box PDB does not exist (make one with `cgkd build`)")
    try:
        pdb = app.PDBFile(str(pdb_path))
    except Exception as e:
        raise CgkdError(f"{pdb_path}: cannot read PDB ({e})") from None
    if pdb.topology.getPeriodicBoxVectors() is None:
        raise CgkdError(f"{pdb_path}: no box vectors (CRYST1 record)")
    templates, tbonds = residue_templates(spec.forcefield)
    top = app.Topology()
    chain = top.addChain()
    for res in pdb.topology.residues():
        _check_residue(res, templates, pdb_path, spec.forcefield)
        _copy_residue(top, chain, res, tbonds[res.name])
    top.setPeriodicBoxVectors(pdb.topology.getPeriodicBoxVectors())
    return top, pdb.getPositions(asNumpy=True).value_in_unit(u.nanometer)


def create_system(spec, topology, cutoff=1.0, constraints="HBonds", hmr=False):
    """The AA openmm.System: PME electrostatics, exact OPLS geometric LJ with dispersion correction."""
    cons = {"none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds, "hangles": app.HAngles}
    if str(constraints).lower() not in cons:
        raise CgkdError(f"constraints must be one of {sorted(cons)}, got {constraints!r}")
    edge = min(np.diag(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer)))
    if edge < 2 * cutoff:
        raise CgkdError(f"box edge {edge:.3f} nm is shorter than twice the cutoff ({cutoff} nm)")
    ff = app.ForceField(str(spec.forcefield))
    kwargs = dict(nonbondedMethod=app.PME, nonbondedCutoff=cutoff * u.nanometer,
                  constraints=cons[str(constraints).lower()], rigidWater=False, ewaldErrorTolerance=5e-4)
    if hmr:
        kwargs["hydrogenMass"] = HMR_HYDROGEN_MASS * u.amu
    try:
        return ff.createSystem(topology, **kwargs)
    except ValueError as e:
        raise CgkdError(f"{spec.forcefield}: cannot parametrise the topology ({e})") from None


def constrained_pairs(system):
    """(n, 2) int array of the constrained atom pairs."""
    pairs = [system.getConstraintParameters(i)[:2] for i in range(system.getNumConstraints())]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def masses(system):
    return np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())])


def density_g_cm3(total_mass_amu, volume_nm3):
    return total_mass_amu / AVOGADRO / (volume_nm3 * 1e-21)


def default_platform(name=None):
    """An OpenMM Platform: the one named, else CUDA when present, else CPU."""
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name:
        if name not in names:
            raise CgkdError(f"--platform {name} is not available here (have: {', '.join(names)})")
        return openmm.Platform.getPlatformByName(name)
    for pick in ("CUDA", "CPU", "Reference"):
        if pick in names:
            return openmm.Platform.getPlatformByName(pick)
    raise CgkdError("no usable OpenMM platform")


def platform_properties(platform, threads=None):
    if platform.getName() == "CUDA":
        return {"Precision": "mixed"}
    if platform.getName() == "CPU" and (threads or os.environ.get("OPENMM_CPU_THREADS")):
        return {"Threads": str(threads or os.environ["OPENMM_CPU_THREADS"])}
    return {}
