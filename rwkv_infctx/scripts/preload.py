"""Tokenise a config's data once and cache it in data.data_path, so that `fit` starts at once."""

from __future__ import annotations

import argparse
import time

import yaml
from jsonargparse import ArgumentParser

from ..data.datamodule import RWKVDataModule
from ..data.tokenizer import load_tokenizer
from ..errors import ConfigError, one_line_errors


def data_module_from_config(path: str, overrides: dict) -> tuple[RWKVDataModule, dict]:
    """The config file's data section, validated exactly as `fit` validates it."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path!r}: {exc.strerror}") from None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RWKVDataModule, "data")
    try:
        parsed = parser.parse_object({"data": {**(config.get("data") or {}), **overrides}})
    except argparse.ArgumentError as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    data = parser.instantiate_classes(parsed).data
    return data, config.get("model") or {}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="preload_datapath.py", description=__doc__)
    p.add_argument("config", help="a trainer config (only its data: and model.vocab_size are read)")
    p.add_argument("--num_proc", type=int, default=None, help="tokenisation processes (default: data.num_proc)")
    p.add_argument("--overwrite", action="store_true", help="rebuild this setting's cache if it exists")
    args = p.parse_args(argv)
    with one_line_errors():
        overrides = {"num_proc": args.num_proc} if args.num_proc else {}
        data, model = data_module_from_config(args.config, overrides)
        if not data.hparams.data_path:
            raise ConfigError("data.data_path is not set: preloading needs a folder to write the cache to")
        vocab = model.get("vocab_size")
        tokenizer_vocab = load_tokenizer(data.hparams.tokenizer).vocab_size
        if vocab is not None and tokenizer_vocab > vocab:
            raise ConfigError(f"data.tokenizer has {tokenizer_vocab} tokens but model.vocab_size={vocab}")
        start = time.perf_counter()
        meta = data.preload(overwrite=args.overwrite)
    if meta.get("in_place"):
        print(f"nothing to cache: the binidx source is read in place ({meta['samples']} samples, "
              f"{meta['tokens']} tokens)")
        return
    verb = "built" if meta["built"] else "found (use --overwrite to rebuild)"
    print(f"{verb}: {meta['samples']} samples, {meta['tokens']} tokens, max token id {meta['max_token_id']} "
          f"in {data.hparams.data_path} ({time.perf_counter() - start:.1f} s)")
