"""Safe output: refuse to clobber without --overwrite, write to a temporary file and rename."""
import contextlib
import hashlib
import os
from pathlib import Path

from .errors import CgkdError


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


def file_hash(path, chunk=1 << 20):
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
