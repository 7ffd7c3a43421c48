"""BlinkDL-format ``.pth`` files: read, check, write.

Our module tree uses BlinkDL's names (emb, blocks.N.ln0/ln1/ln2/att/ffn, ln_out, head), so a
model's ``state_dict()`` *is* the .pth layout; this module only validates and converts dtypes.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .errors import CheckpointError
from .files import save_torch_atomic
from .model import VERSIONS
from .model.v7 import layer0_value_residual

# Keys some released files carry that our models do not use (layer 0 has no value residual).
IGNORED_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
WRAPPER_PREFIXES = ("_forward_module.", "model.", "module.")


def detect_version(state_dict: dict[str, Tensor]) -> str:
    if "blocks.0.att.r_k" in state_dict:
        return "x070"
    if "blocks.0.att.time_maa_x" in state_dict:
        return "x060"
    if "blocks.0.att.time_mix_k" in state_dict and "blocks.0.att.ln_x.weight" in state_dict:
        return "x052"
    raise CheckpointError("cannot tell the RWKV version of this state dict (no x052/x060/x070 keys)")


def load_pth(path: str | os.PathLike, argument: str = "model.load_model") -> dict[str, Tensor]:
    """A .pth state dict on CPU, with any Lightning/DeepSpeed wrapper prefix removed; ``argument``
    names the setting the path came from in error messages."""
    sd = _read_state_dict(path, argument)
    refuse_nonfinite(sd, f"{path}: holds")
    return sd


def pth_config(path: str | os.PathLike, argument: str = "model.load_model") -> ModelConfig:
    """The architecture of a .pth, from its tensor shapes: a zip-format file is memory-mapped, so
    no weight is read (the training module builds its model with this before it loads any weight)."""
    return config_from_state_dict(_read_state_dict(path, argument))


def _read_state_dict(path: str | os.PathLike, argument: str) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{argument}: no such file {str(path)!r}")
    sd = _torch_load_weights(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # a Lightning .ckpt
    if not isinstance(sd, dict) or "emb.weight" not in strip_wrapper_prefixes(sd):
        raise CheckpointError(f"{path}: not an RWKV state dict (no 'emb.weight')")
    return strip_wrapper_prefixes(sd)


def _torch_load_weights(path: Path):
    """weights_only load, memory-mapped where the file allows it: mmap needs the zip format, so a
    legacy (torch.save(..., _use_new_zipfile_serialization=False)) file is read whole instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises many types for a corrupt file
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a readable .pth state dict ({type(exc).__name__}: {reason})") from None


def nonfinite_key(tensors: dict) -> str | None:
    """The first key whose floating-point tensor holds a NaN or an infinity, or None."""
    for key, value in tensors.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def refuse_nonfinite(tensors: dict, what: str) -> None:
    """A diverged model is never loaded or written: one line naming the first bad tensor."""
    key = nonfinite_key(tensors)
    if key is not None:
        raise CheckpointError(f"{what} non-finite values (nan/inf) in {key!r}: the model diverged; "
                              "use an earlier checkpoint and a lower model.lr_init")


def strip_wrapper_prefixes(sd: dict) -> dict:
    """Remove the module prefixes Lightning and DeepSpeed add (e.g. '_forward_module.model.')."""
    for key in sd:
        prefix = key[: -len("emb.weight")] if key.endswith("emb.weight") else None
        if prefix and _is_wrapper_prefix(prefix):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _is_wrapper_prefix(prefix: str) -> bool:
    while prefix:
        match = next((p for p in WRAPPER_PREFIXES if prefix.startswith(p)), None)
        if match is None:
            return False
        prefix = prefix[len(match):]
    return True


def config_from_state_dict(sd: dict[str, Tensor]) -> ModelConfig:
    """The architecture a state dict describes, every dim read from tensor shapes."""
    version = detect_version(sd)
    vocab_size, n_embd = sd["emb.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    dims = {}
    for name, (key, axis) in VERSIONS[version].shape_dims.items():
        if key in sd:
            dims[name] = sd[key].shape[axis]
        elif int(key.split(".")[1]) < n_layer:  # a later layer's key is absent only from shallower models
            raise CheckpointError(f"not a complete {version} state dict: no {key!r}")
    return ModelConfig(version=version, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, **dims)


def check_compatible(cfg: ModelConfig, file_cfg: ModelConfig, path: str) -> None:
    """The user's config must describe the same model as the file (LoRA ranks excepted)."""
    for name in ("version", "n_layer", "n_embd", "vocab_size", "head_size"):
        want, have = getattr(cfg, name), getattr(file_cfg, name)
        if want != have:
            raise CheckpointError(f"{path}: has {name}={have} but the config says model.{name}={want}")


TIME_STATE = "blocks.{}.att.time_state"


def to_blinkdl(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> BlinkDL's: a learned initial state becomes per-layer ``att.time_state``,
    and an x070 model gains layer 0's unused v0/v1/v2 (see ``layer0_value_residual``).

    BlinkDL's files (and the rwkv package, which transposes on load) keep it as [H, value, key];
    we keep [key, value].
    """
    sd = dict(sd)
    if IGNORED_KEYS[0] not in sd and "emb.weight" in sd and detect_version(sd) == "x070":
        dtype = sd["emb.weight"].dtype
        sd.update({k: v.to(dtype) for k, v in layer0_value_residual(config_from_state_dict(sd)).items()})
    initial = sd.pop("initial_wkv", None)
    if initial is not None:
        for i, layer_state in enumerate(initial):
            sd[TIME_STATE.format(i)] = layer_state.transpose(-1, -2)
    return sd


def from_blinkdl(sd: dict[str, Tensor], n_layer: int, path: str = "state dict") -> dict[str, Tensor]:
    sd = dict(sd)
    states = [sd.pop(TIME_STATE.format(i), None) for i in range(n_layer)]
    if any(s is not None for s in states):
        if any(s is None for s in states):
            raise CheckpointError(f"{path}: att.time_state is present in some layers only")
        sd["initial_wkv"] = torch.stack([s.float().transpose(-1, -2) for s in states])
    return sd


def load_state_into(model: nn.Module, sd: dict[str, Tensor], path: str = "state dict") -> None:
    """Copy weights with strict name and shape checks that name the offending key."""
    sd = from_blinkdl(sd, model.cfg.n_layer, path)
    if "initial_wkv" in sd and model.initial_wkv is None:
        model.initial_wkv = torch.zeros_like(sd["initial_wkv"])
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = [k for k in sd if k not in own and k not in IGNORED_KEYS]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    for key, target in own.items():
        source = sd[key]
        if source.shape != target.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(source.shape)}, the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(sd[key].to(target.dtype))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def save_pth(model_or_sd: nn.Module | dict, path: str | os.PathLike, dtype: str | None = None,
             overwrite: bool = False) -> Path:
    """Write a plain BlinkDL-format state dict. Refuses to replace an existing file unless asked."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the .pth file to write, e.g. {path / 'rwkv.pth'}")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; choose another path or pass overwrite")
    sd = to_blinkdl(model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd)
    refuse_nonfinite(sd, f"not writing {path}: the model has")
    out = {}
    for key, tensor in sd.items():
        tensor = tensor.detach().cpu()
        out[key] = tensor.to(DTYPES[dtype]) if dtype else tensor.clone()
    return save_torch_atomic(out, path)
