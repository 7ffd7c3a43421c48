"""``lightning_trainer.py``: LightningCLI over one LightningModule and one DataModule.

``model:`` holds the RWKV switches (RWKVModule's arguments), ``data:`` the data switches
(RWKVDataModule's), ``trainer:`` Lightning's own keys, untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from .data.datamodule import RWKVDataModule
from .errors import ConfigError, RWKVTrainerError
from .files import first_unused
from .training.module import RWKVModule
from .training.wandb_login import wandb_offline_without_account


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


def run_cli(args: list[str] | None = None) -> RWKVTrainerCLI:
    # --help reads the settings dataclasses' attribute docstrings (e.g. model.lora's), as litgpt does
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
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
