"""What the figures were measured on, recorded beside them."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git_commit(given: str | None = None) -> str:
    """The commit measured: ``given`` (a copy without .git, as on a lent GPU machine, passes it
    with --commit), else this checkout's HEAD, else "unknown"."""
    if given:
        return given
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB), from its own address space's high-water mark.

    Not getrusage's ru_maxrss: Linux carries that over from the address space a process is
    exec'd from, so a child started by a big parent (a pytest run at 1.5 GB) reports the
    parent's peak as its own."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
