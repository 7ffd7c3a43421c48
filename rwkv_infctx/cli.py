"""``lightning_trainer.py``: LightningCLI over one LightningModule and one DataModule.

``model:`` holds the RWKV switches (RWKVModule's arguments), ``data:`` the data switches
(RWKVDataModule's), ``trainer:`` Lightning's own keys, untouched.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from .data.datamodule import RWKVDataModule
from .errors import RWKVTrainerError
from .training.module import RWKVModule


class RWKVTrainerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.gradient_clip_val": 1.0})


def run_cli(args: list[str] | None = None) -> RWKVTrainerCLI:
    return RWKVTrainerCLI(
        RWKVModule,
        RWKVDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        auto_configure_optimizers=False,  # the model builds BlinkDL's optimizer groups itself
        seed_everything_default=42,
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    try:
        run_cli(args)
    except RWKVTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
