"""wandb on the command line: a WandbLogger on a machine that never ran ``wandb login`` would stop
the run with wandb's login error before the first step; such a run logs offline instead (``wandb
sync`` uploads it later). Part of the CLI layer: it rewrites the parsed ``trainer:`` config."""

from __future__ import annotations

import importlib.util
import os
import warnings

from jsonargparse import Namespace

from .errors import ConfigError


def wandb_offline_without_account(trainer_config) -> None:
    """Set ``offline: true`` on every WandbLogger of the parsed ``trainer:`` config when wandb has
    no credentials here, and say so. WANDB_MODE, when the user set it, is wandb's to honour."""
    loggers = trainer_config.get("logger") if trainer_config is not None else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not (hasattr(logger, "class_path") and logger.class_path.endswith("WandbLogger")):
            continue
        init_args = logger.get("init_args")
        if (init_args is not None and init_args.get("offline")) or "WANDB_MODE" in os.environ:
            continue
        if importlib.util.find_spec("wandb") is None:
            return  # Lightning's WandbLogger says to install it
        if not has_wandb_credentials():
            if init_args is None:
                logger.init_args = init_args = Namespace()
            init_args["offline"] = True
            warnings.warn("wandb has no API key here (wandb login, or WANDB_API_KEY): logging offline; "
                          "upload later with `wandb sync <run folder>`", stacklevel=2)


def has_wandb_credentials() -> bool:
    """wandb's own lookup (WANDB_API_KEY, an identity token, its settings files, the netrc entry of
    the server it is set to), through ``wandb.login`` without a prompt and without asking the
    server. With credentials it also logs this process's wandb session in, as the logger would."""
    import wandb

    try:
        logged_in = bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # a wandb without login(prompt=...), which would ask on a terminal or fail
        raise ConfigError(f"wandb {wandb.__version__} cannot check for credentials without asking for them: "
                          "pip install -U wandb (tested: 0.31), or set WANDB_MODE=offline") from None
    if not logged_in:  # wandb keeps the settings it read for the process: drop them for the offline logger's
        wandb.teardown()
    return logged_in
