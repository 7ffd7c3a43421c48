"""Export a training checkpoint (Lightning .ckpt, or a DeepSpeed checkpoint folder) as a BlinkDL .pth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import DTYPES, config_from_state_dict, load_pth, save_pth, strip_wrapper_prefixes
from ..errors import CheckpointError, RWKVTrainerError
from ..model.adapters import merged_state_dict


def read_deepspeed_folder(folder: Path) -> dict:
    """Consolidate ZeRO shards into one fp32 state dict with DeepSpeed's own utility."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise CheckpointError(f"{folder} is a DeepSpeed checkpoint folder: exporting it needs `pip install deepspeed`") from None
    sd = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    sd = strip_wrapper_prefixes(sd)
    if "emb.weight" not in sd:
        raise CheckpointError(f"{folder}: the DeepSpeed checkpoint holds no RWKV weights (no 'emb.weight')")
    return sd


def lora_scaling(source: Path, sd: dict, lora_alpha: float | None) -> float | None:
    """alpha / r of a checkpoint's LoRA adapters (None without any): alpha from the command line,
    else from the Lightning checkpoint's hyperparameters; r from the adapter shapes."""
    rank = next((v.shape[0] for k, v in sd.items() if ".lora_A." in k), None)
    if rank is None:
        return None
    if lora_alpha is None and source.is_file():
        hparams = torch.load(source, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
        lora_alpha = (hparams.get("lora") or {}).get("alpha")
    if lora_alpha is None:
        raise CheckpointError(f"{source} has LoRA adapters but no record of their alpha: pass --lora_alpha")
    return lora_alpha / rank


def export(checkpoint: str, out: str, dtype: str | None = None, overwrite: bool = False,
           lora_alpha: float | None = None) -> Path:
    """The checkpoint's model as a BlinkDL .pth, LoRA adapters merged into the weights."""
    source = Path(checkpoint)
    if not source.exists():
        raise CheckpointError(f"no such checkpoint {checkpoint!r}")
    sd = read_deepspeed_folder(source) if source.is_dir() else load_pth(source)
    sd = merged_state_dict(sd, lora_scaling(source, sd, lora_alpha))
    config_from_state_dict(sd)  # refuse anything that is not a complete RWKV model
    return save_pth(sd, out, dtype=dtype, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="export_checkpoint.py", description=__doc__)
    p.add_argument("checkpoint", help="a Lightning .ckpt file or a DeepSpeed checkpoint folder")
    p.add_argument("out", help="the .pth to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="convert every tensor (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--lora_alpha", type=float, default=None,
                   help="LoRA alpha, where the checkpoint does not record it (DeepSpeed folders)")
    args = p.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out, args.dtype, args.overwrite, args.lora_alpha)
    except RWKVTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path}")
