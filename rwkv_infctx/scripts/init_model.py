"""Write a freshly initialised RWKV model (official per-parameter init) as a BlinkDL .pth."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import torch

from ..checkpoint import DTYPES, save_pth
from ..config import SUPPORTED_VERSIONS, ModelConfig
from ..errors import RWKVTrainerError, one_line_errors
from ..model import RWKV

NAMED_VOCABS = {"world": 65536, "neox": 50277}


def vocab_size_arg(value: str) -> int:
    if value in NAMED_VOCABS:
        return NAMED_VOCABS[value]
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or one of {sorted(NAMED_VOCABS)}, got {value!r}")


def init_model(out: str, cfg: ModelConfig, seed: int = 42, dtype: str = "fp32",
               skip_if_exists: bool = False) -> Path | None:
    """Returns the written path, or None when ``skip_if_exists`` found a file already there."""
    path = Path(out)
    if path.exists():
        if skip_if_exists:
            return None
        raise RWKVTrainerError(f"{path} exists; pass --skip-if-exists to keep it, or choose another path")
    torch.manual_seed(seed)
    model = RWKV(cfg)
    model.init_weights()
    return save_pth(model, path, dtype=dtype)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="init_model.py", description=__doc__)
    p.add_argument("out", help="path of the .pth to write")
    p.add_argument("--version", default="x070", choices=SUPPORTED_VERSIONS, help="RWKV generation")
    p.add_argument("--n_layer", type=int, required=True)
    p.add_argument("--n_embd", type=int, required=True)
    p.add_argument("--vocab_size", type=vocab_size_arg, default=65536, help="a number, world (65536) or neox (50277)")
    p.add_argument("--head_size", type=int, default=64)
    p.add_argument("--dim_ffn", type=int, default=None)
    for rank in ("decay_lora", "iclr_lora", "value_lora", "gate_lora", "mix_lora"):  # ModelConfig's docstring
        p.add_argument(f"--{rank}", type=int, default=None, help="LoRA rank; default: BlinkDL's for n_embd")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--skip-if-exists", dest="skip_if_exists", action="store_true",
                   help="leave an existing file untouched and exit 0")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        cfg = ModelConfig(**{f.name: getattr(args, f.name) for f in fields(ModelConfig)})
        written = init_model(args.out, cfg, args.seed, args.dtype, args.skip_if_exists)
    if written is None:
        print(f"{args.out} exists, left untouched (--skip-if-exists)")
    else:
        n_params = sum(t.numel() for t in torch.load(written, weights_only=True, mmap=True).values())
        print(f"wrote {written}: {args.version} L{cfg.n_layer}-D{cfg.n_embd}, {n_params / 1e6:.2f}M parameters")
