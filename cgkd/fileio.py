"""Safe output: refuse to clobber without --overwrite, write to a temporary file and rename."""
import contextlib
import fcntl
import functools
import hashlib
import os
from pathlib import Path

from .errors import CgkdError, OutputLocked


def check_writable(path, overwrite=False):
    """Refuse an existing output unless overwrite is set; create missing parent folders."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CgkdError(f"{path}: output exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def output_lock(path):
    """Hold an exclusive lock on the output `path` (a file or a folder) while a run writes it: a second run
    into the same output is refused instead of interleaving frames. The lock (`.<name>.lock` beside the
    output, with the holder's pid) is released when the process ends, however it ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise OutputLocked(f"{path}: another cgkd run (pid {fh.read().strip() or '?'}) is writing this output; "
                               "wait for it to finish or choose another output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def locks_output(run):
    """Decorator of a stage `run(cfg, ...)`: it holds output_lock(cfg.out) while it works."""

    @functools.wraps(run)
    def locked(cfg, *args, **kwargs):
        if cfg.out is None:  # the stage names the missing option itself
            return run(cfg, *args, **kwargs)
        with output_lock(cfg.out):
            return run(cfg, *args, **kwargs)

    return locked


def file_hash(path, chunk=1 << 20):
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_yaml(path, what="file"):
    """Parse a YAML mapping from `path`; errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CgkdError(f"{path}: {what} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CgkdError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise CgkdError(f"{path}: expected a mapping of keys to values")
    return data


def write_json(path, data):
    """Write JSON atomically (temporary file, then rename), creating parent folders."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def trim_csv(path, column, last):
    """Keep the header and the rows of a CSV log whose integer `column` is <= last (used on resume); a row
    cut short by a crash is dropped."""
    path = Path(path)
    if not path.exists():
        return
    rows = path.read_text().splitlines()
    keep = []
    for r in rows[1:]:
        try:
            if int(float(r.split(",")[column])) <= last:
                keep.append(r)
        except (ValueError, IndexError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(rows[:1] + keep) + "\n")


def check_zip(path, what):
    """Refuse a damaged zip archive (torch's checkpoint and TorchScript formats: torch does not check their
    CRC-32s itself): a CgkdError naming the file and the failing part."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile) as e:
        raise CgkdError(f"{path}: not a readable {what} ({e})") from None
    if bad is not None:
        raise CgkdError(f"{path}: damaged (the checksum of its part {bad} fails)")
