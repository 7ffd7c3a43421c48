"""``lightning_trainer.py``: LightningCLI over one LightningModule and one DataModule.

``model:`` holds the RWKV switches (RWKVModule's arguments), ``data:`` the data switches
(RWKVDataModule's), ``trainer:`` Lightning's own keys, untouched.
"""

from __future__ import annotations

import argparse
import netrc
import os
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from .data.datamodule import RWKVDataModule
from .errors import ConfigError, RWKVTrainerError
from .files import first_unused
from .training.module import RWKVModule


class SaveFitConfig(SaveConfigCallback):
    """Record the config of training runs only (validate/test must not collide with a fit's
    config.yaml), as config.yaml or, where an earlier run left one, config-2.yaml, ..."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # broadcast by Lightning
        if trainer.is_global_zero:  # only rank 0 writes
            self.config_filename = first_unused(log_dir / "config.yaml").name
        super().setup(trainer, pl_module, stage)


class RWKVTrainerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.gradient_clip_val": 1.0})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        wandb_offline_without_account(config.get("trainer"))

    def before_fit(self) -> None:
        check_strategy(self.trainer)

    before_validate = before_test = before_fit


def check_strategy(trainer) -> None:
    """What Lightning would only refuse with a stack trace, refused in one line."""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy) and not isinstance(trainer.accelerator, CUDAAccelerator):
        raise ConfigError("trainer.strategy: DeepSpeed runs on CUDA GPUs only (Lightning refuses it on "
                          f"{type(trainer.accelerator).__name__}); on this machine use strategy auto or ddp")


def wandb_offline_without_account(trainer_config) -> None:
    """A WandbLogger on a machine that never ran ``wandb login`` would stop the run with wandb's
    login error: log offline instead (``wandb sync`` uploads later), and say so. WANDB_MODE, when
    the user set it, is wandb's to honour."""
    loggers = trainer_config.get("logger") if trainer_config is not None else None
    loggers = loggers if isinstance(loggers, list) else [loggers]
    for logger in loggers:
        if not (hasattr(logger, "class_path") and logger.class_path.endswith("WandbLogger")):
            continue
        init_args = logger.get("init_args")
        if (init_args is not None and init_args.get("offline")) or "WANDB_MODE" in os.environ:
            continue
        if not has_wandb_credentials():
            if init_args is None:
                logger.init_args = init_args = Namespace()
            init_args["offline"] = True
            warnings.warn("wandb has no API key here (wandb login, or WANDB_API_KEY): logging offline; "
                          "upload later with `wandb sync <run folder>`", stacklevel=2)


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_cli(args: list[str] | None = None) -> RWKVTrainerCLI:
    return RWKVTrainerCLI(
        RWKVModule,
        RWKVDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        auto_configure_optimizers=False,
        save_config_callback=SaveFitConfig,  # the model builds BlinkDL's optimizer groups itself
        seed_everything_default=42,
        parser_kwargs={"exit_on_error": False},  # raise, so that main() can print one line
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    try:
        run_cli(args)
    except (RWKVTrainerError, argparse.ArgumentError, MisconfigurationException) as exc:
        # MisconfigurationException: a trainer setting Lightning refuses (e.g. DeepSpeed not installed)
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
