"""What keeps a run of days from destroying its own work.

- ``AtomicCheckpointIO``: every Lightning checkpoint is written beside its final name and renamed
  into place (Lightning's own writer goes through fsspec, which stages the file in /tmp and then
  copies it over the target: a kill during that copy truncates ``last.ckpt``), and a checkpoint
  holding a NaN or infinite weight is never written.
- ``NonFiniteGuard``: a non-finite loss or gradient norm stops the run with one line naming the
  step, or skips the update while ``model.skip_nonfinite_steps`` allows.
- ``StopOnSignal``: SIGTERM (schedulers' stop) and SIGUSR1 (SLURM's warning before a time limit)
  save a resumable checkpoint and end the run with one line saying how to resume. Lightning's
  signal connector receives SIGTERM (and, with SLURM auto-requeue, SIGUSR1: it saves its
  ``hpc_ckpt`` and requeues the job, as Lightning documents); this callback adds the checkpoint,
  the message and the exit code, and stops a long sample between two chunks.
- ``KeepCurrentSettings``: a resumed run trains with the optimizer settings of its command line,
  not those saved in the checkpoint; the architecture must match the checkpoint's.
- ``RemoveEmptyRunFolder``: a run that fails before training leaves no empty ``version_N``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..checkpoint import check_compatible, config_from_state_dict, refuse_nonfinite, strip_wrapper_prefixes
from ..errors import CheckpointError, ConfigError, TrainingStopped
from ..files import atomic_write, remove_stale_temporaries
from .bptt import StepAbandoned

# Lightning resolves these ckpt_path values itself
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, writing atomically in the checkpoint's own folder, refusing
    non-finite weights, and reading with one-line errors."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: fsspec's transaction is the atomic write there
            return super().save_checkpoint(checkpoint, path, storage_options)
        refuse_nonfinite(checkpoint.get("state_dict", {}), f"not writing {path}: the model has")
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if "://" not in str(path) and not Path(path).exists():
            raise CheckpointError(f"ckpt_path: no such file {str(path)!r}")
        try:
            checkpoint = super().load_checkpoint(path, map_location or (lambda storage, loc: storage), weights_only)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            reason = " ".join(str(exc).split()).split(". ")[0][:200]
            raise CheckpointError(f"ckpt_path: {path} is not a readable Lightning checkpoint "
                                  f"({type(exc).__name__}: {reason}); give another .ckpt") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            hint = ("it is a .pth model: start from it with --model.load_model"
                    if isinstance(checkpoint, dict) and any(k.endswith("emb.weight") for k in checkpoint) else "give a .ckpt")
            raise CheckpointError(f"ckpt_path: {path} is not a Lightning training checkpoint; {hint}")
        return checkpoint


def install_atomic_checkpoint_io(trainer) -> None:
    """Replace Lightning's default writer (never one the user configured, nor DeepSpeed's folders)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def adam_eps_for(precision: str, eps: float) -> float:
    """An Adam epsilon the optimizer's dtype can hold. Under 16-true the Adam moments are fp16,
    where BlinkDL's 1e-18 is 0: a parameter whose squared gradients underflow would then divide
    by zero. 16-mixed and bf16 keep fp32 moments (bf16 has fp32's range): eps is kept there."""
    if precision in ("16-true", "16") and eps < torch.finfo(torch.float16).tiny:
        raised = torch.finfo(torch.float16).tiny
        rank_zero_info(f"model.adam_eps={eps:g} is 0 in float16: using {raised:.3g}, the smallest "
                       f"normal float16, under precision {precision}")
        return raised
    return eps


def newest_checkpoint(trainer) -> str | None:
    saved = [p for cb in trainer.checkpoint_callbacks for p in [*cb.best_k_models, cb.last_model_path]]
    saved = [p for p in saved if p and os.path.exists(p)]
    return max(saved, key=os.path.getmtime) if saved else None


def save_logs(trainer) -> None:
    """What the loggers hold so far (metrics.csv), which Lightning writes only at a normal end."""
    for logger in trainer.loggers:
        logger.save()


class NonFiniteGuard(L.Callback):
    """Stops at a non-finite loss or gradient norm, or skips up to ``skip_limit`` such updates."""

    def __init__(self, skip_limit: int = 0):
        self.skip_limit = skip_limit
        self.skipped = 0
        self._bad_loss: float | None = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        value = float(loss.detach())
        if not math.isfinite(value) and self._bad_loss is None:
            self._bad_loss = value

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad_loss, self._bad_loss = self._bad_loss, None
        problem = f"train/loss is {bad_loss}" if bad_loss is not None else None
        # under a GradScaler (16-mixed) infinite gradients are routine: the scaler skips those steps
        if problem is None and getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            problem = None if math.isfinite(norm) else f"the gradient norm is {norm}"
        if problem is None:
            return
        step = trainer.global_step + 1  # the update being made (metrics.csv numbers it global_step)
        if self.skipped >= self.skip_limit or trainer.strategy.handles_gradient_accumulation:
            # (DeepSpeed keeps the gradients in its engine: dropping ours would not skip its update)
            kept = newest_checkpoint(trainer)
            raise TrainingStopped(
                f"step {step}: {problem}; training stopped, nothing of this step is saved"
                + (f" (newest checkpoint: {kept})" if kept else "")
                + "; lower model.lr_init, or let model.skip_nonfinite_steps skip such steps")
        self.skipped += 1
        optimizer.zero_grad(set_to_none=True)  # Adam leaves a parameter without a gradient untouched
        rank_zero_warn(f"step {step}: {problem}; update skipped ({self.skipped} of "
                       f"model.skip_nonfinite_steps={self.skip_limit})")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, TrainingStopped):
            save_logs(trainer)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)


class StopOnSignal(L.Callback):
    """On SIGTERM or SIGUSR1: a checkpoint of the last completed step, then exit 128 + signal."""

    def __init__(self):
        self.signal_name = "SIGTERM"
        self._previous_sigusr1 = None
        self._saved_at_step: int | None = None
        self._deferred = False  # a signal held back until the step's last micro-batch ends
        self._steps_before_batch = 0

    def should_stop(self) -> bool:
        """Asked by the chunk loop between chunks: drop the step in progress? On one device, and
        in the first micro-batch of a step (a later one would lose the gradients accumulated so
        far); on several devices Lightning stops every rank together at the end of the step."""
        trainer = self._trainer
        if not trainer.received_sigterm or trainer.world_size != 1:
            return False
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done % trainer.accumulate_grad_batches == 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning takes SIGUSR1 only for SLURM auto-requeue; elsewhere its default would kill us
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def _on_sigusr1(self, signum, frame) -> None:
        self.signal_name = "SIGUSR1"
        handler = signal.getsignal(signal.SIGTERM)  # Lightning's: treat it as a SIGTERM
        if callable(handler):
            handler(signal.SIGTERM, frame)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._steps_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step_complete = trainer.global_step != self._steps_before_batch  # this micro-batch made the update
        # Lightning has no public way to hold back or re-raise a received SIGTERM: its signal
        # connector's flag (tests/test_lightning_internals.py checks that it is still there)
        if self._deferred and step_complete:
            trainer._signal_connector.received_sigterm, self._deferred = True, False
        if not trainer.received_sigterm:
            return
        if step_complete:  # where ModelCheckpoint saves; Lightning raises SIGTERMException next
            self._save(trainer)
        else:  # Lightning would stop after this micro-batch, mid-step: finish the step first
            trainer._signal_connector.received_sigterm, self._deferred = False, True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning calls no teardown hook after an exception
        if not isinstance(exception, (SIGTERMException, StepAbandoned)):
            return
        if isinstance(exception, StepAbandoned) and trainer.global_step > 0:
            # the state of the last completed step, as ModelCheckpoint saves it at that step's end:
            # before Lightning counts the step for its loggers (it counts it again on restore);
            # that count is private (tests/test_lightning_internals.py checks that it is still there)
            trainer.fit_loop.epoch_loop._batches_that_stepped -= 1
        path = self._save(trainer)
        save_logs(trainer)
        exception.code = 128 + getattr(signal, self.signal_name, signal.SIGTERM)
        if trainer.is_global_zero:
            print(f"stopped by {self.signal_name} after step {trainer.global_step}: saved {path}; resume with "
                  f"the same command and --ckpt_path {path}", file=sys.stderr, flush=True)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None

    def _save(self, trainer) -> str:
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = Path(folder or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints")
        path = folder / f"interrupted-step={trainer.global_step}.ckpt"
        if self._saved_at_step != trainer.global_step:
            trainer.save_checkpoint(path)
            self._saved_at_step = trainer.global_step
        return str(path)


class KeepCurrentSettings(L.Callback):
    """Resuming restores the optimizer's saved hyperparameters (lr, betas, eps, weight decay) and
    the schedule's base learning rates; put back those of this run's configuration, so that
    ``fit --ckpt_path last.ckpt --model.lr_init 0.05`` trains at 0.05 (the moments are kept)."""

    def on_fit_start(self, trainer, pl_module) -> None:  # after configure_optimizers, before the restore
        self._groups = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                        for opt in trainer.optimizers]

    def on_train_start(self, trainer, pl_module) -> None:  # after the restore
        if not trainer.ckpt_path:
            return
        for optimizer, groups in zip(trainer.optimizers, self._groups):
            for group, configured in zip(optimizer.param_groups, groups):
                group.update(configured)
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [g["initial_lr"] for g in scheduler.optimizer.param_groups]
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # the lr of the step about to run
                for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                               scheduler.lr_lambdas):
                    group["lr"] = base * factor(scheduler.last_epoch)


def check_resumable(checkpoint: dict, model_cfg, path) -> None:
    """A Lightning checkpoint of this very architecture, else one line naming the difference."""
    state = checkpoint.get("state_dict")
    if not state:  # DeepSpeed keeps the weights in its own files
        return
    try:
        saved = config_from_state_dict(strip_wrapper_prefixes(state))
    except (CheckpointError, KeyError):  # a layout we do not read (adapters): Lightning's strict load checks it
        return
    check_compatible(model_cfg, saved, str(path))
    if saved.dim_ffn != model_cfg.dim_ffn:
        raise CheckpointError(f"{path}: has dim_ffn={saved.dim_ffn} but the config says model.dim_ffn={model_cfg.dim_ffn}")


class RemoveEmptyRunFolder(L.Callback):
    """A run that fails before its first step leaves no empty ``version_N`` (nor one holding only
    the config.yaml / hparams.yaml it wrote while setting up)."""

    SETUP_FILES = ("config", "hparams")

    def __init__(self):
        self._started = time.time()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.global_step > 0 or not trainer.is_global_zero or not trainer.loggers:
            return
        folder = Path(getattr(trainer.loggers[0], "log_dir", None) or "")
        if not folder.name or not folder.is_dir():
            return
        entries = list(folder.iterdir())
        if all(e.is_file() and e.suffix == ".yaml" and e.stem.split("-")[0] in self.SETUP_FILES
               and e.stat().st_mtime >= self._started - 1 for e in entries):
            for entry in entries:
                entry.unlink()
            folder.rmdir()
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()


class AtomicCheckpoints(L.Callback):
    def setup(self, trainer, pl_module, stage: str) -> None:  # before any checkpoint is read or written
        install_atomic_checkpoint_io(trainer)

    def on_fit_start(self, trainer, pl_module) -> None:  # the checkpoint folders are known by now
        if trainer.is_global_zero:
            for callback in trainer.checkpoint_callbacks:
                for path in remove_stale_temporaries(callback.dirpath) if callback.dirpath else []:
                    rank_zero_info(f"removed {path}, left by a killed checkpoint write")


def safety_callbacks(skip_nonfinite_steps: int, stop_on_signal: StopOnSignal) -> list[L.Callback]:
    if skip_nonfinite_steps < 0:
        raise ConfigError(f"model.skip_nonfinite_steps={skip_nonfinite_steps} must be 0 or more")
    return [AtomicCheckpoints(), NonFiniteGuard(skip_nonfinite_steps), stop_on_signal, KeepCurrentSettings(),
            RemoveEmptyRunFolder()]
