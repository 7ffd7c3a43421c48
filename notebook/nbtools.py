"""What the notebooks share: run the repository's scripts as a shell would, prepare a run's
folders, read a run's logged metrics. Each notebook finds this file (at or above its working
directory) and imports it; it is not part of the package, as it only serves the notebooks."""

from __future__ import annotations

import codecs
import csv
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository checkout
HERE = ROOT / "notebook"


def here(path: str | Path) -> Path:
    """Relative paths in the notebooks' parameters are relative to the notebook folder."""
    return (HERE / path).resolve()


def prepare_run(name: str, work_dir: str, model_dir: str, accelerator: str, precision: str):
    """(this run's empty work folder, the shared token cache folder, the model folder, on_gpu, precision).
    The run's folder is emptied first; the token cache is kept while the data settings stay the same."""
    import torch

    work, cache, models = here(work_dir) / name, here(work_dir) / "token-cache", here(model_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    models.mkdir(parents=True, exist_ok=True)
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    precision = precision or ("bf16-mixed" if on_gpu else "32-true")
    print(f"repository: {ROOT}\nthis run:   {work}\nmodels:     {models}\n{'GPU' if on_gpu else 'CPU'}, {precision}")
    return work, cache, models, on_gpu, precision


def run(script: str, *args, env: dict | None = None, wrapper: Path | None = None) -> None:
    """`python <script> <args>` from the repository root, as in a shell; its output shows in the
    notebook as it comes; raises if the script fails. ``wrapper``: a script that runs it (peak_memory.py)."""
    args = [str(a) for a in args]
    print("$ python", script, *map(shlex.quote, args), flush=True)
    command = [sys.executable, *([str(wrapper)] if wrapper else []), str(ROOT / script), *args]
    with subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            print(decode(chunk), end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"{script} exited with code {proc.returncode} (its output is above)")


def metrics(folder: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric from a run's CSV log."""
    with open(folder / "logs" / "fit" / "metrics.csv") as f:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(f) if row.get(key)]
