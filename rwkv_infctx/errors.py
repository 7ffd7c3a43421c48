"""User-facing errors: each is printed as one line (``error: ...``) by the command-line entry points."""

import contextlib
import sys


class RWKVTrainerError(Exception):
    """Base class; the message says what to fix."""


class ConfigError(RWKVTrainerError, ValueError):
    """A configuration value is invalid or inconsistent."""


class DataError(RWKVTrainerError, ValueError):
    """Input data is missing, empty or out of range."""


class CheckpointError(RWKVTrainerError, ValueError):
    """A checkpoint or .pth file cannot be used as asked."""


class WriteError(RWKVTrainerError, OSError):
    """A file could not be written (disk full, no permission); the previous file is untouched."""


class TrainingStopped(RWKVTrainerError):
    """Training stopped early on purpose (a signal, a diverged loss); the message says what was kept."""


@contextlib.contextmanager
def one_line_errors(*also: type[BaseException]):
    """For the command-line entry points: an error the user can fix (an ``RWKVTrainerError``, or one
    of ``also``) is printed as one line, ``error: ...``, and the program exits with code 2; any
    other exception is a bug and keeps its traceback."""
    try:
        yield
    except (RWKVTrainerError, *also) as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
