"""What a user sees of a run: the logged metrics, loss.png, and wandb without an account."""

import csv
import glob
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
import torch
from jsonargparse import Namespace

from rwkv_infctx.cli_wandb import has_wandb_credentials, wandb_offline_without_account
from rwkv_infctx.training.plot import LossCurve
from rwkv_infctx.training.plot import main as plot_main
from rwkv_infctx.training.plot import smooth

from .helpers import ROOT, TINY_CLI

TINY = [*TINY_CLI, "--data.batch_size", "2", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.callbacks", "null",
        "--trainer.enable_checkpointing", "false"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fit(out: Path, *args, env=None):
    proc = subprocess.run([sys.executable, "lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY,
                           "--trainer.default_root_dir", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_csv_run_logs_every_metric_and_draws_loss_png(tmp_path):
    fit(tmp_path, "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.accumulate_grad_batches", "2")
    (metrics,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows = list(csv.DictReader(open(metrics)))
    logged = {key for row in rows for key, value in row.items() if value}
    last = [row for row in rows if row.get("train/loss")][-1]
    assert float(last["train/micro_batch_tokens"]) == 2 * 64  # batch 2 x 64 positions
    assert float(last["train/step_tokens"]) == 2 * float(last["train/micro_batch_tokens"])  # 2 micro-batches
    assert float(last["train/tokens_seen"]) == 4 * 2 * 2 * 64  # 4 steps of 2 micro-batches
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/tokens_per_s_per_device", "train/tokens_seen",
            "train/micro_batch_tokens", "train/step_tokens", "train/chunks", "val/loss"} <= logged
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


def test_smoothing_does_not_lag():
    """A steadily falling loss is its own smoothed curve (an exponential average would trail above
    it); noise around a constant is averaged out; the ends are kept."""
    falling = [10.0 - 0.05 * i for i in range(150)]
    assert smooth(falling) == pytest.approx(falling)
    noisy = [4.0 + (1.0 if i % 2 else -1.0) for i in range(200)]
    assert max(abs(v - 4.0) for v in smooth(noisy)[5:-5]) < 0.1
    assert smooth(noisy)[0] == noisy[0] and smooth(noisy)[-1] == noisy[-1]
    assert smooth([]) == []


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


def wandb_logger_config() -> Namespace:
    return Namespace(logger=Namespace(class_path="lightning.pytorch.loggers.WandbLogger",
                                      init_args=Namespace(project="p", offline=False)))


@pytest.fixture
def no_wandb_setup(tmp_path, monkeypatch):
    """No wandb variable, an empty home (no netrc, no wandb settings), a working folder of its own."""
    for key in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("setting, offline", [({}, True), ({"WANDB_MODE": "online"}, False),
                                              ({"WANDB_API_KEY": "k" * 40}, False)])
def test_wandb_offline_only_without_credentials_or_a_mode(no_wandb_setup, monkeypatch, setting, offline):
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    trainer = wandb_logger_config()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        wandb_offline_without_account(trainer)
    assert trainer.logger.init_args.offline is offline


@pytest.mark.parametrize("base_url, where", [("https://api.wandb.ai", "default"),
                                             ("http://localhost:8080", "WANDB_BASE_URL"),
                                             ("https://wandb.example.org", "settings")])
def test_wandb_login_in_netrc_counts_for_its_server(no_wandb_setup, monkeypatch, base_url, where):
    """``wandb login [--host URL]`` writes the key to ~/.netrc under the server's host[:port]."""
    home = no_wandb_setup
    if where == "WANDB_BASE_URL":
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    elif where == "settings":
        (home / ".config" / "wandb").mkdir(parents=True)
        (home / ".config" / "wandb" / "settings").write_text(f"[default]\nbase_url = {base_url}\n")
    netloc = urlparse(base_url).netloc
    (home / ".netrc").write_text(f"machine {netloc}\n  login user\n  password {'k' * 40}\n")
    (home / ".netrc").chmod(0o600)
    assert has_wandb_credentials()
    (home / ".netrc").write_text(f"machine other.example.com\n  login user\n  password {'k' * 40}\n")
    assert not has_wandb_credentials()


def test_loss_curve_has_one_point_per_optimizer_step_numbered_like_metrics_csv():
    """With gradient accumulation over 2 micro-batches: the mean of each pair, at steps 0, 1, ..."""
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, callback_metrics={}, sanity_checking=False)
    curve = LossCurve()
    curve.on_train_start(trainer, None)
    for i, (loss, step_after) in enumerate([(4.0, 0), (2.0, 1), (3.0, 1), (1.0, 2)]):
        curve.on_train_batch_start(trainer, None, None, i)
        trainer.callback_metrics["train/loss"] = torch.tensor(loss)
        trainer.global_step = step_after
        curve.on_train_batch_end(trainer, None, None, None, i)
        if i == 2:  # a validation in the middle of step 1's accumulation window, logged at step 1
            trainer.callback_metrics["val/loss"] = torch.tensor(5.0)
            curve.on_validation_end(trainer, None)
    assert curve.train == [(0, 3.0), (1, 2.0)] and curve.val == [(1, 5.0)]


def test_loss_curve_of_a_run_is_what_its_metrics_csv_gives(tmp_path):
    """A real fit with gradient accumulation: loss.png's points carry metrics.csv's step numbers."""
    from rwkv_infctx.training.plot import read_metrics_csv

    from .helpers import tiny_fit
    from .test_resume import small_corpus

    curve = LossCurve()
    trainer = tiny_fit(tmp_path, small_corpus(tmp_path), 3, callbacks=[curve], accumulate_grad_batches=2)
    train, _ = read_metrics_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    assert [s for s, _ in curve.train] == [s for s, _ in train] == [0, 1, 2]


def test_redrawn_curve_averages_the_micro_batches_of_a_step(tmp_path):
    from rwkv_infctx.training.plot import read_metrics_csv

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/loss\n0,0,4.0,\n0,0,2.0,\n0,1,3.0,\n0,1,,5.0\n0,1,1.0,\n")
    assert read_metrics_csv(path) == ([(0, 3.0), (1, 2.0)], [(1, 5.0)])
