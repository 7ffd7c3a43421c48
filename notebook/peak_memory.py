"""Run a script as `python SCRIPT ARGS...` would, then record the peak memory of the process.

    PEAK_FILE=peak.json python notebook/peak_memory.py lightning_trainer.py fit -c config.yaml

At exit it writes {"rss_mib": peak resident memory, "cuda_mib": peak CUDA memory allocated by
torch (when CUDA was used)} to $PEAK_FILE. Used by rwkv7-infinite-context.ipynb, one process per run.
"""

import atexit
import json
import os
import resource
import runpy
import sys


def write_peak() -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"rss_mib": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        peak["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with open(os.environ["PEAK_FILE"], "w") as f:
        json.dump(peak, f)


if __name__ == "__main__":
    if len(sys.argv) < 2 or "PEAK_FILE" not in os.environ:
        sys.exit(__doc__)
    atexit.register(write_peak)
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
