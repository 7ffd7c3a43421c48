"""The loss curve as a PNG, for users who would rather look than read.

``LossCurve`` (added by RWKVModule when ``plot_loss`` is on) collects train and validation loss
while fitting, whatever the logger, and writes ``loss.png`` next to the run's logs at the end.
For an earlier run: ``python -m rwkv_infctx.training.plot out/run/version_0/metrics.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ..files import atomic_write, first_unused

Curve = list[tuple[int, float]]


def plot_losses(train: Curve, val: Curve, path: str | Path, title: str = "") -> Path | None:
    """Train loss per optimizer step (raw and smoothed) and validation loss. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on training machines
        import matplotlib.pyplot as plt
    except ImportError:
        rank_zero_warn("loss curve: matplotlib is not installed (pip install matplotlib); no PNG written")
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        ax.plot(steps, smooth(losses), color="tab:blue", label="train (smoothed)")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    ax.set_xlabel("optimizer step (metrics.csv's step column)")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def smooth(values, half_width: int | None = None) -> list[float]:
    """Centred moving average, the window shrinking symmetrically at both ends. Unlike an
    exponential average it does not lag: early in a run, where the loss falls fast, a lagging curve
    sits far above the raw one. The default half-width is 1/40 of the run (at least 1 point)."""
    n = len(values)
    half_width = max(1, n // 40) if half_width is None else half_width
    totals = [0.0]
    for v in values:
        totals.append(totals[-1] + v)
    out = []
    for i in range(n):
        w = min(half_width, i, n - 1 - i)
        out.append((totals[i + w + 1] - totals[i - w]) / (2 * w + 1))
    return out


class LossCurve(L.Callback):
    """Writes <log dir>/loss.png when fit ends (rank 0), one train point per optimizer step (the
    mean of its micro-batches' losses), numbered as metrics.csv's ``step`` column (from 0)."""

    def __init__(self, filename: str = "loss.png"):
        self.filename = filename
        self.train: Curve = []
        self.val: Curve = []
        self._micro_batch_losses: list[float] = []
        self._steps_done = 0
        self._csv_step = 0

    def on_train_start(self, trainer, pl_module):
        self._steps_done = trainer.global_step  # non-zero after a resume

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # metrics.csv's step for what this micro-batch (and a validation after it) logs: the steps
        # completed before it, as Lightning's loggers count a step only after its last micro-batch
        self._csv_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None or not trainer.is_global_zero:
            return
        self._micro_batch_losses.append(float(loss))
        if trainer.global_step != self._steps_done:  # this micro-batch closed an optimizer step
            self._steps_done = trainer.global_step
            mean = sum(self._micro_batch_losses) / len(self._micro_batch_losses)
            self.train.append((self._csv_step, mean))
            self._micro_batch_losses.clear()

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and trainer.is_global_zero and not trainer.sanity_checking and math.isfinite(loss):
            self.val.append((self._csv_step, float(loss)))

    def on_train_end(self, trainer, pl_module):
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        if trainer.is_global_zero and self.train:
            plot_losses(self.train, self.val, first_unused(folder / self.filename), title=folder.as_posix())


def read_metrics_csv(path: str | Path) -> tuple[Curve, Curve]:
    """(step, loss) curves from a CSVLogger file; rows of one step (its micro-batches under gradient
    accumulation) are averaged, as LossCurve does while fitting."""
    rows: dict[str, dict[int, list[float]]] = {"train/loss": {}, "val/loss": {}}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, by_step in rows.items():
                if row.get(key):
                    by_step.setdefault(int(row["step"]), []).append(float(row[key]))
    train, val = ([(step, sum(v) / len(v)) for step, v in sorted(by_step.items())] for by_step in rows.values())
    return train, val


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot train/val loss from a CSVLogger metrics.csv")
    parser.add_argument("metrics_csv")
    parser.add_argument("--out", help="PNG path (default: loss.png beside the CSV)")
    args = parser.parse_args(argv)
    train, val = read_metrics_csv(args.metrics_csv)
    if not train and not val:
        raise SystemExit(f"error: {args.metrics_csv} has no train/loss or val/loss column values")
    out = plot_losses(train, val, args.out or Path(args.metrics_csv).with_name("loss.png"), args.metrics_csv)
    if out is None:
        raise SystemExit("error: install matplotlib to plot (pip install matplotlib)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
