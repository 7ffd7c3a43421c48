"""User-facing errors: each is printed as one line (``error: ...``) by the command-line entry points."""


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
