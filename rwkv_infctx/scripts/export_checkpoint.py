"""Export a training checkpoint (Lightning .ckpt, or a DeepSpeed checkpoint folder) as a BlinkDL .pth."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from unittest import mock

import torch

from ..checkpoint import DTYPES, config_from_state_dict, load_pth, save_pth, strip_wrapper_prefixes
from ..errors import CheckpointError, one_line_errors
from ..files import save_torch_atomic
from ..model.adapters import adapter_dict_from_checkpoint, merged_state_dict, state_dict_from_checkpoint


def read_deepspeed_folder(folder: Path) -> dict:
    """Consolidate ZeRO shards into one fp32 state dict with DeepSpeed's own utility, every file
    unpickled with weights_only=True (DeepSpeed's utility would run any code a file carries)."""
    if not (folder / "latest").is_file() and not any(folder.glob("**/*model_states.pt")):
        raise CheckpointError(f"{folder} is a folder but not a DeepSpeed checkpoint (no 'latest' file, no "
                              "*model_states.pt); give a Lightning .ckpt file or a DeepSpeed checkpoint folder")
    try:
        from deepspeed.utils import zero_to_fp32
    except ImportError:
        raise CheckpointError(f"{folder} is a DeepSpeed checkpoint folder: exporting it needs `pip install deepspeed`") from None
    try:
        with mock.patch.object(zero_to_fp32.torch, "load", weights_only_load(zero_to_fp32.torch.load)):
            sd = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(folder))
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        raise CheckpointError(f"{folder}: not exported: a file holds {refused.group(1) if refused else 'a pickled object'}, "
                              "which DeepSpeed checkpoints do not need and which could run code") from None
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}: not a complete DeepSpeed checkpoint ({type(exc).__name__}: {exc})") from None
    sd = strip_wrapper_prefixes(sd)
    if "emb.weight" not in sd:
        raise CheckpointError(f"{folder}: the DeepSpeed checkpoint holds no RWKV weights (no 'emb.weight')")
    return sd


def deepspeed_checkpoint_types() -> list:
    """The classes DeepSpeed pickles into its ZeRO checkpoints besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_only_load(torch_load):
    """torch.load forced to weights_only=True, with DeepSpeed's checkpoint classes allowed."""
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(deepspeed_checkpoint_types()):
            return torch_load(f, *args, **kwargs)

    return load


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
           lora_alpha: float | None = None, only: str | None = None) -> Path:
    """The checkpoint's model as a BlinkDL .pth, LoRA adapters merged into the weights; with
    ``only``, just what a finetune changed ("adapter", for model.load_adapter) or its learned
    starting state ("state", an RWKV-Runner state file)."""
    source = Path(checkpoint)
    if not source.exists():
        raise CheckpointError(f"no such checkpoint {checkpoint!r}")
    sd = read_deepspeed_folder(source) if source.is_dir() else load_pth(source)
    if only:
        return export_part(source, sd, Path(out), only, overwrite)
    sd = merged_state_dict(sd, lora_scaling(source, sd, lora_alpha))
    config_from_state_dict(sd)  # refuse anything that is not a complete RWKV model
    return save_pth(sd, out, dtype=dtype, overwrite=overwrite)


def export_part(source: Path, sd: dict, out: Path, only: str, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists; pass --overwrite to replace it")
    if only == "state":
        return save_torch_atomic(state_dict_from_checkpoint(sd, str(source)), out)
    if source.is_dir():
        raise CheckpointError(f"{source}: --only adapter needs a Lightning .ckpt (its hyperparameters record "
                              "what was trained); a DeepSpeed folder does not have them")
    hparams = torch.load(source, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    return save_torch_atomic(adapter_dict_from_checkpoint(sd, hparams, str(source)), out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="export_checkpoint.py", description=__doc__)
    p.add_argument("checkpoint", help="a Lightning .ckpt file or a DeepSpeed checkpoint folder")
    p.add_argument("out", help="the .pth to write")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="convert every tensor (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--lora_alpha", type=float, default=None,
                   help="LoRA alpha, where the checkpoint does not record it (DeepSpeed folders)")
    p.add_argument("--only", choices=["adapter", "state"], default=None,
                   help="write only what the finetune changed (adapter: LoRA, state and train_also tensors, for "
                        "model.load_adapter / dragon_test.py --adapter) or only the learned state (an RWKV-Runner "
                        "state file); default: the whole model, LoRA merged")
    args = p.parse_args(argv)
    with one_line_errors():
        path = export(args.checkpoint, args.out, args.dtype, args.overwrite, args.lora_alpha, args.only)
    print(f"wrote {path}")
