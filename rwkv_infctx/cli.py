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

from .cli_wandb import wandb_offline_without_account
from .config import ARCHITECTURE_SIZES
from .data.datamodule import RWKVDataModule
from .errors import ConfigError, one_line_errors
from .files import atomic_write, first_unused
from .training.module import RWKVModule
from .training.safety import LIGHTNING_CKPT_NAMES
from .training.strategy import check_strategy


class SaveFitConfig(SaveConfigCallback):
    """Record the config of training runs only (validate/test must not collide with a fit's
    config.yaml), as config.yaml or, where an earlier run left one, config-2.yaml, ..."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.already_saved:
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # broadcast by Lightning
        if trainer.is_global_zero:  # only rank 0 writes
            with atomic_write(first_unused(log_dir / "config.yaml")) as tmp:
                self.parser.save(self.config, str(tmp), skip_none=False, overwrite=True, multifile=False)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class RWKVTrainerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.gradient_clip_val": 1.0})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        wandb_offline_without_account(config.get("trainer"))
        loggers_write_into_default_root_dir(config.get("trainer"))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI overlays the hyperparameters saved in --ckpt_path on the parsed config,
        silently replacing the command line's (a new lr_init, even a new n_layer). Here the
        command line wins: what may change on resume changes, and an architecture that differs
        from the checkpoint's is a one-line error when the checkpoint is restored."""
        config = self.config.get(self.config.get("subcommand") or "", {})
        ckpt_path = config.get("ckpt_path") if config else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES and not Path(ckpt_path).exists():
            raise ConfigError(f"ckpt_path: no such file {ckpt_path!r}")
        if ckpt_path and Path(ckpt_path).is_file():
            sizes_from_checkpoint(config.get("model"), ckpt_path)

    def before_fit(self) -> None:
        check_strategy(self.trainer)
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:  # a fresh run: a missing or unreadable load_model fails now, before the data is read
            self.model.prepare_weights()
        elif ckpt_path not in LIGHTNING_CKPT_NAMES:
            # given to the trainer before fit (not as fit's argument, which Lightning reveals only after
            # setup), so that the module's setup knows the checkpoint brings the weights: no .pth is read
            self.trainer.ckpt_path, config["ckpt_path"] = ckpt_path, None

    before_validate = before_test = before_fit


def sizes_from_checkpoint(model_config, ckpt_path: str) -> None:
    """A resume builds the model before its checkpoint is restored: the sizes the command line
    leaves to their defaults (dim_ffn, LoRA ranks) are the checkpoint's, which a run from a .pth
    recorded from the file's shapes (the .pth itself may be gone by now)."""
    import torch

    try:  # memory-mapped: only the hyperparameters are read
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters") or {}
    except Exception:  # not a readable checkpoint: the restore names the problem in one line
        return
    for name in ARCHITECTURE_SIZES:
        if model_config is not None and model_config.get(name) is None and saved.get(name) is not None:
            model_config[name] = saved[name]


def loggers_write_into_default_root_dir(trainer_config) -> None:
    """A logger whose save_dir is empty ("", as in config-example.yaml) or null writes under
    trainer.default_root_dir, so that this one setting holds every output of the run."""
    if not trainer_config:
        return
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None) if not isinstance(logger, (bool, type(None))) else None
        if init_args is not None and "save_dir" in init_args and not init_args.save_dir:
            init_args.save_dir = trainer_config.get("default_root_dir") or "."


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


def refuse_empty_configs(args: list[str]) -> None:
    """jsonargparse reads an empty YAML as null and says only ``Unexpected config:``."""
    import yaml

    for flag, value in zip(args, args[1:]):
        if flag in ("-c", "--config") and Path(value).is_file():
            try:
                content = yaml.safe_load(Path(value).read_text())
            except (yaml.YAMLError, UnicodeDecodeError):
                continue  # jsonargparse names the problem itself
            if content is None:
                raise ConfigError(f"{value}: the config file is empty; give model:, data: and trainer: keys "
                                  "(see config-example.yaml)")


def main(args: list[str] | None = None) -> None:
    # MisconfigurationException: a trainer setting Lightning refuses (e.g. DeepSpeed not installed)
    with one_line_errors(argparse.ArgumentError, MisconfigurationException):
        refuse_empty_configs(sys.argv[1:] if args is None else args)
        run_cli(args)
