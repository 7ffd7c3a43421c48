"""What a user sees of a run: the logged metrics, loss.png, and wandb without an account."""

import csv
import glob
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import Namespace

from rwkv_infctx.cli import wandb_offline_without_account
from rwkv_infctx.training.plot import LossCurve
from rwkv_infctx.training.plot import main as plot_main
from rwkv_infctx.training.plot import smooth

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.n_layer", "1", "--model.n_embd", "32", "--model.head_size", "16", "--model.ctx_len", "32",
        "--data.sample_len", "64", "--data.batch_size", "2", "--trainer.accelerator", "cpu", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.callbacks", "null", "--trainer.enable_checkpointing", "false"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fit(out: Path, *args, env=None):
    proc = subprocess.run([sys.executable, "lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY,
                           "--trainer.default_root_dir", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_csv_run_logs_every_metric_and_draws_loss_png(tmp_path):
    fit(tmp_path, "--trainer.logger.init_args.save_dir", str(tmp_path))
    (metrics,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows = list(csv.DictReader(open(metrics)))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/tokens_per_s_per_device", "train/tokens_seen",
            "train/step_tokens", "train/chunks", "val/loss"} <= logged
    png = Path(metrics).with_name("loss.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000

    # the helper redraws it from the CSV of any earlier run
    redrawn = tmp_path / "again.png"
    plot_main([metrics, "--out", str(redrawn)])
    assert redrawn.read_bytes()[:8] == PNG_MAGIC


def test_plot_helper_refuses_a_csv_without_losses(tmp_path):
    empty = tmp_path / "metrics.csv"
    empty.write_text("epoch,step,other\n0,1,2\n")
    with pytest.raises(SystemExit, match="no train/loss"):
        plot_main([str(empty)])


def test_smoothing_is_debiased():
    assert smooth([5.0, 5.0, 5.0]) == pytest.approx([5.0, 5.0, 5.0])
    assert smooth([0.0, 10.0])[1] == pytest.approx(10 * 0.1 / (1 - 0.81))


def test_wandb_without_an_account_logs_offline(tmp_path):
    """No WANDB_MODE, no API key, no netrc: the run logs offline (with a warning), does not stop."""
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(WANDB_DIR=str(tmp_path), WANDB_SILENT="true", HOME=str(tmp_path))
    proc = fit(tmp_path, "--trainer.logger.class_path", "lightning.pytorch.loggers.WandbLogger",
               "--trainer.logger.init_args.project", "rwkv-test", "--trainer.logger.init_args.name", "tiny",
               "--trainer.logger.init_args.save_dir", str(tmp_path), env=env)
    assert "logging offline" in proc.stderr
    runs = glob.glob(str(tmp_path / "**" / "offline-run-*"), recursive=True)
    assert runs, "no offline wandb run folder"
    records = glob.glob(str(tmp_path / "**" / "offline-run-*" / "run-*.wandb"), recursive=True)
    assert records and b"train/loss" in Path(records[0]).read_bytes()  # the metrics reached wandb's log
    assert glob.glob(str(tmp_path / "**" / "rwkv-final.pth"), recursive=True)
    assert glob.glob(str(tmp_path / "**" / "loss.png"), recursive=True)


@pytest.mark.parametrize("setting, offline", [({}, True), ({"WANDB_MODE": "online"}, False),
                                              ({"WANDB_API_KEY": "k" * 40}, False)])
def test_wandb_offline_only_without_credentials_or_a_mode(tmp_path, monkeypatch, setting, offline):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    trainer = Namespace(logger=Namespace(class_path="lightning.pytorch.loggers.WandbLogger",
                                         init_args=Namespace(project="p", offline=False)))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        wandb_offline_without_account(trainer)
    assert trainer.logger.init_args.offline is offline


def test_loss_curve_has_one_point_per_optimizer_step_numbered_like_metrics_csv():
    """With gradient accumulation over 2 micro-batches: the mean of each pair, at steps 0, 1, ..."""
    curve, trainer = LossCurve(), SimpleNamespace(global_step=0, is_global_zero=True, callback_metrics={})
    curve.on_train_start(trainer, None)
    for loss, step_after in [(4.0, 0), (2.0, 1), (3.0, 1), (1.0, 2)]:
        trainer.callback_metrics["train/loss"] = torch.tensor(loss)
        trainer.global_step = step_after
        curve.on_train_batch_end(trainer, None, None, None, 0)
    assert curve.train == [(0, 3.0), (1, 2.0)]
