"""wandb on the command line: a WandbLogger on a machine that never ran ``wandb login`` would stop
the run with wandb's login error before the first step; such a run logs offline instead (``wandb
sync`` uploads it later). Part of the CLI layer: it rewrites the parsed ``trainer:`` config."""

from __future__ import annotations

import configparser
import netrc
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

from jsonargparse import Namespace

DEFAULT_BASE_URL = "https://api.wandb.ai"


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
        if not has_wandb_credentials():
            if init_args is None:
                logger.init_args = init_args = Namespace()
            init_args["offline"] = True
            warnings.warn("wandb has no API key here (wandb login, or WANDB_API_KEY): logging offline; "
                          "upload later with `wandb sync <run folder>`", stacklevel=2)


def has_wandb_credentials() -> bool:
    """An API key or identity token in the environment, or a netrc entry for wandb's server (where
    ``wandb login`` stores the key, under the host and port of the server it logged in to).

    Ours, not wandb's: wandb 0.31's public lookup, ``wandb.login(prompt=False, verify=False)``,
    starts wandb's service process and keeps process-wide settings that make the offline
    WandbLogger fail afterwards ("No API key configured") unless ``wandb.teardown()`` drops them,
    and that teardown waits on the service process (seen blocking a test for over 10 minutes).
    wandb has no side-effect-free public function for the question; these few lines read the same
    places (tests/test_logging.py checks each)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    url = urlparse(wandb_base_url())
    try:
        entries = netrc.netrc(os.environ.get("NETRC"))
    except (OSError, netrc.NetrcParseError):
        return False
    return any(entries.authenticators(host) is not None for host in {url.netloc, url.hostname} if host)


def wandb_base_url() -> str:
    """WANDB_BASE_URL, else the server ``wandb login --host`` recorded in wandb's settings files."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    for settings in (Path("wandb") / "settings", config_dir / "settings"):  # the project's first
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
        except configparser.Error:
            continue
        if parser.has_option("default", "base_url"):
            return parser.get("default", "base_url")
    return DEFAULT_BASE_URL
