"""Write cgkd's OPLS-DES OpenMM force fields and molecule PDBs from the published GROMACS parameters.

OPLS-DES: B. Doherty, O. Acevedo, "OPLS Force Field for Choline Chloride-Based Deep Eutectic
Solvents", J. Phys. Chem. B 2018, 122, 9982-9993, doi:10.1021/acs.jpcb.8b06647. The numbers
come from the authors' .itp/.pdb files (github.com/orlandoacevedo/DES, GPL-3.0); this script
reads them and writes OpenMM files of our own design:

- atom types are the OPLS types; bonds, angles and proper torsions are keyed by type (the script
  checks that the .itp files are type-consistent and complete, so the result is exact);
- Lennard-Jones uses OPLS's geometric rule for sigma and epsilon: every type pair is an explicit
  NBFixPair of a <LennardJonesForce> (a tabulated CustomNonbondedForce), NonbondedForce carries the
  charges only;
- 1-4 pairs are scaled by 0.5 (Coulomb and LJ), standard OPLS. The GROMACS release has no
  [ pairs ] sections, so GROMACS silently drops 1-4 interactions there; we keep the OPLS rule the
  torsions were fitted with;
- the impropers (all have their central atom second, as listed) and the extra exclusions of
  ethylene glycol are added by a <Script>, atom by atom, exactly as in the .itp files.

Run:  python forcefields/make_opls_des.py [path/to/opls-des]   (rewrites forcefields/ and systems/)
"""
import itertools
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
KCAL = 4.184

# (residue name, itp stem, pdb stem, our unique atom names in itp order)
MOLECULES = {
    "CHO": ("choline", "choline", ["C1", "H11", "H12", "N", "C2", "H21", "H22", "O", "HO",
                                   "C3", "H31", "H32", "H33", "C4", "H41", "H42", "H43",
                                   "C5", "H51", "H52", "H53"]),
    "CL": ("cl", "chloride", ["CL"]),
    "EGL": ("ethgly", "ethylene_glycol", ["C1", "H11", "H12", "C2", "H21", "H22", "O2", "HO2", "O1", "HO1"]),
    "URE": ("urea", "urea", ["C", "O", "N1", "N2", "H21", "H22", "H11", "H12"]),
}
ELEMENTS = {12.011: "C", 1.008: "H", 14.007: "N", 15.999: "O", 35.45: "Cl"}
SYSTEMS = {"ethaline": ["CHO", "CL", "EGL"], "reline": ["CHO", "CL", "URE"]}
EG_SCALE = 1.75  # the ethylene-glycol epsilon set given in the .itp comments


def read_itp(path):
    """Sections of a GROMACS .itp file as {name: [list of fields]}, comments stripped."""
    sections, current = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.split(";")[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line.strip("[] ").lower()
            sections.setdefault(current, [])
        elif current:
            sections[current].append(line.split())
    return sections


def read_molecule(src, resname):
    stem, pdb, names = MOLECULES[resname]
    itp = read_itp(src / "itp" / f"{stem}_DES.itp")
    atypes = read_itp(src / "itp" / f"{stem}_atomtypes_DES.itp")["atomtypes"]
    atoms = itp["atoms"]
    assert len(atoms) == len(names), resname
    mol = {
        "names": names,
        "types": [a[1] for a in atoms],
        "charges": [float(a[6]) for a in atoms],
        "masses": [float(a[7]) for a in atoms],
        "bonds": [(int(b[0]) - 1, int(b[1]) - 1, float(b[3]), float(b[4])) for b in itp.get("bonds", [])],
        "angles": [(int(a[0]) - 1, int(a[1]) - 1, int(a[2]) - 1, float(a[4]), float(a[5]))
                   for a in itp.get("angles", [])],
        "dihedrals": [(tuple(int(x) - 1 for x in d[:4]), [float(x) for x in d[5:9]])
                      for d in itp.get("dihedrals", [])],
        "exclusions": [(int(e[0]) - 1, int(e[1]) - 1) for e in itp.get("exclusions", [])],
        "lj": {t[0]: (float(t[4]), float(t[5])) for t in atypes},
        "coords": [],
    }
    for line in (src / "pdb" / f"{pdb}.pdb").read_text().splitlines():
        if line.startswith(("ATOM", "HETATM")):
            mol["coords"].append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    assert len(mol["coords"]) == len(names), resname
    return mol


def bonded_graph(mol):
    nb = {i: set() for i in range(len(mol["names"]))}
    for i, j, *_ in mol["bonds"]:
        nb[i].add(j)
        nb[j].add(i)
    return nb


def propers_and_impropers(mol):
    """Split dihedrals into propers (bonded chains) and impropers; check the propers cover every chain."""
    nb = bonded_graph(mol)
    chains = set()
    for j in nb:
        for k in nb[j]:
            if j < k:
                for i in nb[j] - {k}:
                    for l in nb[k] - {j, i}:
                        chains.add((i, j, k, l))
    propers, impropers = [], []
    for quad, coeffs in mol["dihedrals"]:
        i, j, k, l = quad
        if k in nb[j] and i in nb[j] and l in nb[k]:
            propers.append((quad, coeffs))
        else:
            assert {i, k, l} <= nb[j], f"unexpected dihedral {quad}"
            impropers.append((quad, coeffs))
    listed = {q if q[1] < q[2] else q[::-1] for q, _ in propers}
    missing = chains - listed
    return propers, impropers, missing


def fourier_terms(coeffs):
    """GROMACS type-5 (OPLS Fourier) coefficients F1..F4 as OpenMM periodic terms (n, k, phase)."""
    return [(n, f / 2.0, 0.0 if n % 2 else math.pi) for n, f in enumerate(coeffs, start=1) if f != 0.0]


def keyed(table, key, value, what):
    """Insert a type-keyed parameter, checking that every occurrence of the key agrees."""
    rkey = key[::-1]
    key = min(key, rkey)
    if key in table:
        assert all(abs(a - b) < 1e-9 for a, b in zip(table[key], value)), f"{what} {key} is not type-consistent"
    table[key] = value


def build_tables(mols):
    bonds, angles, torsions, lj = {}, {}, {}, {}
    scripted = {}
    for res, mol in mols.items():
        t = mol["types"]
        for i, j, r0, k in mol["bonds"]:
            keyed(bonds, (t[i], t[j]), (r0, k), "bond")
        for i, j, k, th, kth in mol["angles"]:
            keyed(angles, (t[i], t[j], t[k]), (th, kth), "angle")
        propers, impropers, missing = propers_and_impropers(mol)
        for quad, coeffs in propers:
            keyed(torsions, tuple(t[a] for a in quad), tuple(coeffs), "torsion")
        # A chain without its own dihedral must not share a type key with a listed one.
        for quad in missing:
            key = tuple(t[a] for a in quad)
            assert min(key, key[::-1]) not in torsions, f"{res}: untyped chain {quad} would get a torsion"
        names = mol["names"]
        scripted[res] = {
            "impropers": [([names[a] for a in q], fourier_terms(c)) for q, c in impropers],
            "exclusions": [(names[i], names[j]) for i, j in mol["exclusions"]],
        }
        for typ, (sig, eps) in mol["lj"].items():
            lj[typ] = (sig, eps)
    return bonds, angles, torsions, lj, scripted


SCRIPT = '''
# cgkd OPLS-DES: impropers (central atom second) and extra exclusions, atom by atom as in the .itp files.
import openmm as _mm
_extra = %r
_tors = [f for f in sys.getForces() if isinstance(f, _mm.PeriodicTorsionForce)][0]
_nb = [f for f in sys.getForces() if isinstance(f, _mm.NonbondedForce)][0]
_lj = [f for f in sys.getForces() if isinstance(f, _mm.CustomNonbondedForce)][0]
for _res in topology.residues():
    if _res.name not in _extra:
        continue
    _idx = {a.name: a.index for a in _res.atoms()}
    for _names, _terms in _extra[_res.name]["impropers"]:
        for _n, _k, _phase in _terms:
            _tors.addTorsion(*[_idx[n] for n in _names], _n, _phase, _k)
    for _a, _b in _extra[_res.name]["exclusions"]:
        _nb.addException(_idx[_a], _idx[_b], 0.0, 1.0, 0.0, True)
        _lj.addExclusion(_idx[_a], _idx[_b])
'''


def write_xml(path, mols, tables, eg_scale, scale14=0.5):
    bonds, angles, torsions, lj, scripted = tables
    eg_types = set(mols["EGL"]["types"]) if "EGL" in mols else set()
    lj = {t: (s, e * (eg_scale if t in eg_types else 1.0)) for t, (s, e) in lj.items()}
    element_of = {}
    for mol in mols.values():
        for typ, m in zip(mol["types"], mol["masses"]):
            element_of[typ] = (ELEMENTS[m], m)
    out = ['<ForceField>',
           ' <Info>',
           '  <Reference>B. Doherty, O. Acevedo, OPLS Force Field for Choline Chloride-Based Deep Eutectic '
           'Solvents, J. Phys. Chem. B 2018, 122, 9982-9993 (OPLS-DES)</Reference>',
           f'  <Source>written by cgkd forcefields/make_opls_des.py; ethylene-glycol LJ epsilon scale {eg_scale:g}; '
           f'geometric combining rule via NBFixPair; 1-4 scaled by {scale14:g}</Source>',
           ' </Info>',
           ' <AtomTypes>']
    for typ in sorted(element_of):
        el, m = element_of[typ]
        out.append(f'  <Type name="{typ}" class="{typ}" element="{el}" mass="{m}"/>')
    out.append(' </AtomTypes>')
    out.append(' <Residues>')
    for res, mol in mols.items():
        out.append(f'  <Residue name="{res}">')
        for n, t, q in zip(mol["names"], mol["types"], mol["charges"]):
            out.append(f'   <Atom name="{n}" type="{t}" charge="{q}"/>')
        for i, j, *_ in mol["bonds"]:
            out.append(f'   <Bond atomName1="{mol["names"][i]}" atomName2="{mol["names"][j]}"/>')
        out.append('  </Residue>')
    out.append(' </Residues>')
    out.append(' <HarmonicBondForce>')
    for (a, b), (r0, k) in sorted(bonds.items()):
        out.append(f'  <Bond type1="{a}" type2="{b}" length="{r0}" k="{k}"/>')
    out.append(' </HarmonicBondForce>')
    out.append(' <HarmonicAngleForce>')
    for (a, b, c), (th, k) in sorted(angles.items()):
        out.append(f'  <Angle type1="{a}" type2="{b}" type3="{c}" angle="{math.radians(th)!r}" k="{k}"/>')
    out.append(' </HarmonicAngleForce>')
    out.append(' <PeriodicTorsionForce>')
    for key, coeffs in sorted(torsions.items()):
        terms = fourier_terms(coeffs)
        if not terms:
            continue
        attrs = " ".join(f'type{i + 1}="{t}"' for i, t in enumerate(key))
        attrs += "".join(f' periodicity{m}="{n}" phase{m}="{ph!r}" k{m}="{k!r}"'
                         for m, (n, k, ph) in enumerate(terms, start=1))
        out.append(f'  <Proper {attrs}/>')
    out.append(' </PeriodicTorsionForce>')
    out.append(f' <NonbondedForce coulomb14scale="{scale14:g}" lj14scale="{scale14:g}">')
    out.append('  <UseAttributeFromResidue name="charge"/>')
    for typ in sorted(lj):
        out.append(f'  <Atom type="{typ}" sigma="1.0" epsilon="0.0"/>')
    out.append(' </NonbondedForce>')
    out.append(f' <LennardJonesForce lj14scale="{scale14:g}" useDispersionCorrection="True">')
    for typ, (s, e) in sorted(lj.items()):
        out.append(f'  <Atom type="{typ}" sigma="{s}" epsilon="{e!r}"/>')
    for a, b in itertools.combinations_with_replacement(sorted(lj), 2):
        s = math.sqrt(lj[a][0] * lj[b][0])
        e = math.sqrt(lj[a][1] * lj[b][1])
        out.append(f'  <NBFixPair type1="{a}" type2="{b}" sigma="{s!r}" epsilon="{e!r}"/>')
    out.append(' </LennardJonesForce>')
    out.append(' <Script>' + escape(SCRIPT % (scripted,)) + ' </Script>')
    out.append('</ForceField>')
    path.write_text("\n".join(out) + "\n")


def write_pdb(path, res, mol):
    lines = [f"REMARK   {res}: OPLS-DES geometry (Doherty & Acevedo 2018), atom names by cgkd"]
    for i, (n, m, xyz) in enumerate(zip(mol["names"], mol["masses"], mol["coords"]), start=1):
        el = ELEMENTS[m]
        name = n if len(n) == 4 else f" {n:<3s}"
        lines.append(f"HETATM{i:5d} {name} {res:>3s} A   1    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}"
                     f"  1.00  0.00          {el.upper():>2s}")
    for i, j, *_ in mol["bonds"]:
        lines.append(f"CONECT{i + 1:5d}{j + 1:5d}")
    lines.append("END")
    path.write_text("\n".join(lines) + "\n")


def main(src):
    src = Path(src)
    mols = {res: read_molecule(src, res) for res in MOLECULES}
    tables = build_tables(mols)
    # Four variants: ethylene-glycol epsilons as released (1.0) or 1.75x (the .itp comments), and 1-4 pairs
    # excluded (what the GROMACS release runs: no [ pairs ]) or scaled by 0.5 (the OPLS rule in [ defaults ]).
    for eg in (1.0, EG_SCALE):
        for scale14, tag in ((0.0, "no14"), (0.5, "14")):
            write_xml(ROOT / "forcefields" / f"opls_des_eg{eg:.2f}_{tag}.xml", mols, tables, eg, scale14)
    for system, residues in SYSTEMS.items():
        for res in residues:
            write_pdb(ROOT / "systems" / system / f"{res}.pdb", res, mols[res])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "opls-des")
