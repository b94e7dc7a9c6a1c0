"""The one error type of cgkd: bad input, named precisely; the CLI prints it without a traceback."""


class CgkdError(Exception):
    """Bad input or a refused operation. The message names the file, the field and what was expected."""


class OutputLocked(CgkdError):
    """Another cgkd process holds the output (see fileio.output_lock)."""
