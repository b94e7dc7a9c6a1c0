"""Helpers of the benchmark scripts in benchmarks/: provenance and recording of measured results."""
import os
import platform
import time

from . import __version__
from .fileio import write_json


def record(path, result):
    """Add provenance (cgkd version, machine, cores, date) to a result dict and write it as JSON."""
    result = {**result, "cgkd_version": __version__, "machine": platform.node(), "cpu_count": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d")}
    write_json(path, result)
    return result
