"""The `cgkd` command line: one-line errors, exit code 2, existing files untouched."""
import os
import subprocess
import sys

import pytest


def cgkd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cgkd.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["build", "--system", "nosuch"], "unknown system 'nosuch'"),
    (["build", "--system", "reline", "--units", "3"], "fill a box of only"),
    (["aa", "--pdb", "missing.pdb", "--out", "x.h5"], "missing.pdb: box PDB does not exist"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    r = cgkd(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "box.pdb"
    out.write_text("precious")
    r = cgkd("build", "--system", "ethaline", "--out", str(out))
    assert r.returncode == 2 and "output exists; pass --overwrite" in r.stderr and str(out) in r.stderr
    assert out.read_text() == "precious"
    h5 = tmp_path / "aa.h5"
    h5.write_text("precious")
    r = cgkd("aa", "--pdb", str(out), "--out", str(h5))
    assert r.returncode == 2 and "output exists" in r.stderr and h5.read_text() == "precious"


def test_config_file_unknown_key(tmp_path):
    (tmp_path / "aa.yaml").write_text("npt_ps: 10\nnvt_pss: 5\n")
    r = cgkd("aa", "--config", "aa.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "aa.yaml: unknown key 'nvt_pss'" in r.stderr


def test_help_lists_every_stage():
    r = cgkd("--help")
    assert r.returncode == 0 and "build" in r.stdout and "aa" in r.stdout
    r = cgkd("aa", "--help")
    assert "--resume" in r.stdout and "--hmr" in r.stdout and "--platform" in r.stdout


def test_every_stage_takes_a_config_and_documents_every_flag():
    from cgkd.cli import parser

    sub = next(a for a in parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        if name == "demo":
            continue
        flags = {o for a in p._actions for o in a.option_strings}
        assert "--config" in flags, name
        undocumented = [a.option_strings[0] for a in p._actions
                        if a.option_strings and not (a.help or "").split("(default")[0].strip()]
        assert not undocumented, (name, undocumented)  # inherited flags too (distill shares train's)


def test_the_torchforce_import_is_quiet_unless_verbose():
    """openmmtorch imports the deprecated simtk.openmm, which logs a warning on every `cgkd simulate`."""
    code = "from cgkd.export import _import_openmmtorch; _import_openmmtorch()"
    env = {k: v for k, v in os.environ.items() if k != "CGKD_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "CGKD_VERBOSE": "1"})
    assert quiet.returncode == 0 and "simtk" not in quiet.stderr
    assert "simtk" in loud.stderr  # the warning exists: the quiet run hid it
