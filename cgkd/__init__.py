"""cgkd: machine-learned coarse-grained force fields for deep eutectic solvents, run in OpenMM."""
__version__ = "0.1.0"

from .errors import CgkdError  # noqa: E402,F401
