"""Faults survived, nothing lost: a second run into a locked output, disk full while writing, damaged inputs.
(The full kill sweep is benchmarks/faults.py.)"""
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cgkd import cli
from cgkd.h5md import H5MDTrajectory, H5MDWriter
from cgkd.reporters import read_checkpoint

from .conftest import FAST

SIM = ["--platform", "CPU", "--threads", "1", "--report", "20", "--dt-fs", "4", "--checkpoint-every", "2"]


def _cli(capsys, *argv):
    """(exit code, stderr lines) of a cgkd command."""
    code = cli.main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]


def _disk_full_at(monkeypatch, owner, method, call, path, code=errno.ENOSPC):
    """owner.method raises ENOSPC (as a full disk does; or another errno, e.g. EACCES) at its call-th call."""
    original, calls = getattr(owner, method), {"n": 0}

    def full(*a, **k):
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError(code, os.strerror(code), str(path))
        return original(*a, **k)

    monkeypatch.setattr(owner, method, full)
    return lambda: monkeypatch.setattr(owner, method, original)


def test_a_second_run_into_a_locked_output_is_refused(cg, trained, tmp_path, capsys):
    model, _ = trained
    out = tmp_path / "sim"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cgkd.fileio import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _cli(capsys, "simulate", "--model", model, "--start", cg, "--out", out, "--steps", 40, *SIM)
        assert code == 2 and len(err) == 1 and f"another cgkd run (pid {holder.pid})" in err[0]
        assert not out.exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    code, _ = _cli(capsys, "simulate", "--model", model, "--start", cg, "--out", out, "--steps", 40, *SIM)
    assert code == 0  # the lock died with its holder


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_disk_full_while_simulating_keeps_the_checkpoint_and_resume_completes(cg, trained, tmp_path, capsys,
                                                                             monkeypatch, code):
    """A full disk (ENOSPC) or a refused write (EACCES: the tests run as root, so a read-only folder would not
    refuse) in the middle of a run."""
    model, _ = trained
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _cli(capsys, "simulate", "--model", model, "--start", cg, "--out", ref, "--steps", 200, *SIM)[0] == 0
    restore = _disk_full_at(monkeypatch, H5MDWriter, "extend", 6, out / "replica_0" / "traj.h5", code)
    exit_code, err = _cli(capsys, "simulate", "--model", model, "--start", cg, "--out", out, "--steps", 200, *SIM)
    restore()
    assert exit_code == 1 and len(err) == 1 and os.strerror(code) in err[0] and "traj.h5" in err[0]
    chk = out / "replica_0" / "traj.h5.chk"
    assert read_checkpoint(chk)[0]["frames"] == 4  # checkpoints every 2 frames: the one at frame 4 is intact
    with H5MDTrajectory(out / "replica_0" / "traj.h5") as t:
        assert len(t) == 5
    assert _cli(capsys, "simulate", "--out", out, "--resume")[0] == 0
    with H5MDTrajectory(ref / "replica_0" / "traj.h5") as a, H5MDTrajectory(out / "replica_0" / "traj.h5") as b:
        assert np.array_equal(a.steps(), b.steps())
        np.testing.assert_allclose(b.positions(), a.positions(), atol=1e-4)


def test_disk_full_while_training_keeps_the_last_checkpoint_and_resume_is_exact(cg, tmp_path, capsys,
                                                                               monkeypatch):
    import torch

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**FAST, "epochs": 3}.items()]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _cli(capsys, "train", "--dataset", cg, "--out", ref, *flags)[0] == 0
    restore = _disk_full_at(monkeypatch, torch, "save", 2, out / "member_0" / "checkpoint.pt")  # epoch 2's
    code, err = _cli(capsys, "train", "--dataset", cg, "--out", out, *flags)
    restore()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0]
    member = out / "member_0"
    assert torch.load(member / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    assert not list(member.glob(".*.tmp"))  # no half-written temporary left behind
    assert _cli(capsys, "train", "--dataset", cg, "--out", out, *flags, "--resume")[0] == 0
    rows = [(d / "member_0" / "metrics.csv").read_text().splitlines() for d in (ref, out)]
    losses = [[float(r.split(",")[1]) for r in rr[1:]] for rr in rows]
    assert len(losses[1]) == 3 and np.allclose(losses[0], losses[1], rtol=1e-6)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one bit in each of 16 bytes spread over the middle of the file
        for i in np.linspace(len(data) // 4, 3 * len(data) // 4, 16).astype(int):
            data[i] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_inputs_give_one_line_errors_and_overwrite_nothing(cg, trained, tmp_path, capsys, how):
    model, _ = trained
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    # A CG dataset (H5MD): train refuses it and creates nothing.
    bad = tmp_path / "bad.h5"
    shutil.copy(cg, bad)
    _damage(bad, how)
    code, err = _cli(capsys, "train", "--dataset", bad, "--out", tmp_path / "t", *flags)
    assert code == 2 and len(err) == 1 and "bad.h5" in err[0] and not (tmp_path / "t").exists()
    # A model (model.pt): simulate refuses it and creates nothing.
    shutil.copytree(model, tmp_path / "m")
    _damage(tmp_path / "m" / "member_0" / "model.pt", how)
    code, err = _cli(capsys, "simulate", "--model", tmp_path / "m", "--start", cg, "--out", tmp_path / "s",
                     "--steps", 40, *SIM)
    assert code == 2 and len(err) == 1 and "model.pt" in err[0] and not (tmp_path / "s").exists()
    # A run's checkpoint: --resume refuses it and leaves the trajectory as it was.
    run = tmp_path / "run"
    assert _cli(capsys, "simulate", "--model", model, "--start", cg, "--out", run, "--steps", 40, *SIM)[0] == 0
    traj = (run / "replica_0" / "traj.h5").read_bytes()
    _damage(run / "replica_0" / "traj.h5.chk", how)
    code, err = _cli(capsys, "simulate", "--out", run, "--resume", "--steps", 80)
    assert code == 2 and len(err) == 1 and "traj.h5.chk" in err[0]
    assert (run / "replica_0" / "traj.h5").read_bytes() == traj
    # A training checkpoint: --resume refuses it.
    shutil.copytree(model, tmp_path / "r")
    _damage(tmp_path / "r" / "member_0" / "checkpoint.pt", how)
    code, err = _cli(capsys, "train", "--dataset", cg, "--out", tmp_path / "r", *flags, "--epochs=3", "--resume")
    assert code == 2 and len(err) == 1 and "checkpoint.pt" in err[0]
    # A label file: distill refuses it and creates nothing; the file is left as it was.
    labels = tmp_path / "labels.h5"
    assert _cli(capsys, "label", "--teachers", model, "--dataset", cg, "--out", labels)[0] == 0
    _damage(labels, how)
    damaged = labels.read_bytes()
    code, err = _cli(capsys, "distill", "--teachers", model, "--dataset", cg, "--labels", labels,
                     "--out", tmp_path / "student", "--epochs", 1, "--channels", 8, "--rbf", 4, "--cutoff", 0.7)
    assert code == 2 and len(err) == 1 and "labels.h5" in err[0] and not (tmp_path / "student").exists()
    assert labels.read_bytes() == damaged
    # A TorchScript export: the TorchForce is refused with the file named.
    from cgkd import CgkdError
    from cgkd.export import torch_force

    ts = tmp_path / "model.ts"
    assert _cli(capsys, "export", "--model", model, "--topology", cg, "--out", ts)[0] == 0
    torch_force(ts)  # intact: loads
    _damage(ts, how)
    with pytest.raises(CgkdError, match="model.ts"):
        torch_force(ts)
    # A YAML config.
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"{{dataset: \"{cg}\", out: \"{tmp_path / 'y'}\", epochs: 2, cutoff: 0.7}}\n")
    _damage(cfg, how)
    code, err = _cli(capsys, "train", "--config", cfg)
    assert code == 2 and len(err) == 1 and "train.yaml" in err[0] and not (tmp_path / "y").exists()


def _kill_when(cmd, ready, delay):
    """Start `cmd`, wait until the file `ready` exists, wait `delay` s more, SIGKILL it; True if it was killed."""
    import os
    import signal
    import time

    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    while not ready.exists() and p.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    killed = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    return killed


@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_sigkill_during_a_cg_run_then_resume_gives_the_uninterrupted_run(cg, trained, tmp_path, capsys, delay):
    model, _ = trained
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["simulate", "--model", model, "--start", cg, "--steps", 1000, *SIM]
    assert _cli(capsys, *args, "--out", ref)[0] == 0
    cmd = [sys.executable, "-m", "cgkd.cli", *map(str, args), "--out", str(out)]
    assert _kill_when(cmd, out / "replica_0" / "traj.h5.chk", delay)
    assert _cli(capsys, "simulate", "--out", out, "--resume")[0] == 0
    with H5MDTrajectory(ref / "replica_0" / "traj.h5") as a, H5MDTrajectory(out / "replica_0" / "traj.h5") as b:
        assert np.array_equal(a.steps(), b.steps())
        np.testing.assert_allclose(b.positions(), a.positions(), atol=1e-4)


def test_sigkill_during_training_then_resume_gives_the_uninterrupted_run(cg, tmp_path, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**FAST, "epochs": 4}.items()]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _cli(capsys, "train", "--dataset", cg, "--out", ref, *flags)[0] == 0
    cmd = [sys.executable, "-m", "cgkd.cli", "train", "--dataset", str(cg), "--out", str(out), *flags]
    assert _kill_when(cmd, out / "member_0" / "checkpoint.pt", 0.3)
    assert _cli(capsys, "train", "--dataset", cg, "--out", out, *flags, "--resume")[0] == 0
    rows = [(d / "member_0" / "metrics.csv").read_text().splitlines() for d in (ref, out)]
    losses = [[float(r.split(",")[1]) for r in rr[1:]] for rr in rows]
    assert len(losses[1]) == 4 and np.allclose(losses[0], losses[1], rtol=1e-6)
