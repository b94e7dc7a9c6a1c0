"""System specs, packed boxes and bad-input errors of `cgkd build`."""
import numpy as np
import openmm.unit as u
import pytest
from scipy.spatial import cKDTree

from cgkd import CgkdError, systems


def test_box_has_composition_density_and_no_overlaps(small_box):
    spec = systems.load_system("ethaline")
    top, pos = systems.load_box(spec, small_box)
    counts = {}
    for r in top.residues():
        counts[r.name] = counts.get(r.name, 0) + 1
    assert counts == {"CHO": 10, "CL": 10, "EGL": 20}
    assert top.getNumAtoms() == 420 and top.getNumBonds() == 10 * 20 + 20 * 9
    edge = top.getPeriodicBoxVectors()[0][0].value_in_unit(u.nanometer)
    mass = sum(a.element.mass.value_in_unit(u.dalton) for a in top.atoms())
    assert systems.density_g_cm3(mass, edge ** 3) == pytest.approx(spec.density, rel=1e-3)
    # Atoms of different molecules keep packmol's tolerance, across the periodic faces too.
    tree = cKDTree(np.mod(pos, edge), boxsize=edge)
    res = np.array([a.residue.index for a in top.atoms()])
    pairs = tree.query_pairs(0.17, output_type="ndarray")
    assert not np.any(res[pairs[:, 0]] != res[pairs[:, 1]])


def test_unknown_system_names_the_path():
    with pytest.raises(CgkdError, match="unknown system 'nosuch'.*known: ethaline, reline"):
        systems.load_system("nosuch")


def test_molecule_pdb_not_matching_template(tmp_path):
    spec = systems.load_system("ethaline")
    bad = tmp_path / "EGL.pdb"
    bad.write_text((spec.path / "EGL.pdb").read_text().replace(" O1  EGL", " OX  EGL"))
    (tmp_path / "system.yaml").write_text((spec.path / "system.yaml").read_text())
    for name in ("CHO.pdb", "CL.pdb"):
        (tmp_path / name).write_text((spec.path / name).read_text())
    bad_spec = systems.load_system(tmp_path)
    with pytest.raises(CgkdError, match=r"EGL.pdb: residue EGL atoms .* do not match the template"):
        systems.build_box(bad_spec, 50, tmp_path / "box.pdb")
    assert not (tmp_path / "box.pdb").exists()


def test_composition_that_cannot_fill_the_box(tmp_path):
    spec = systems.load_system("reline")
    with pytest.raises(CgkdError, match=r"fill a box of only .*twice the 1.0 nm cutoff"):
        systems.build_box(spec, 5, tmp_path / "box.pdb")
    with pytest.raises(CgkdError, match="--units must be >= 1"):
        systems.build_box(spec, 0, tmp_path / "box.pdb")
