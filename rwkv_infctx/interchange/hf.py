"""BlinkDL x070 ``.pth`` <-> Hugging Face folder for flash-linear-attention's ``RWKV7ForCausalLM``.

The key names and tensor layouts follow fla's ``fla/models/rwkv7`` modules (and the one-way
``utils/convert_from_rwkv7.py`` in fla's repository): BlinkDL's LoRA pairs ``w1``/``w2`` are fla's
``w_lora.lora.0``/``lora.2`` weights, transposed (fla keeps them as nn.Linear, out x in), and the
LoRA offsets ``w0``/``a0``/``v0`` become the second Linear's bias. Per-channel vectors that
BlinkDL keeps as (1, 1, C) are (C,) in fla, except the six token-shift mixes.

One mapping function (``hf_name``) serves both directions: the reverse walks our model's own key
list, so every key of a complete x070 model must be found in the folder. What does not carry
over: a learned initial state (``att.time_state``; fla's model has none) and the tokenizer (fla
folders name it separately). fla's GroupNorm eps is head_dim * norm_eps while BlinkDL's is 64e-5
for every head size, so the two models agree exactly only at head_size 64 (all released RWKV-7).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import DTYPES, IGNORED_KEYS, config_from_state_dict, load_pth, save_pth
from ..config import ModelConfig
from ..errors import CheckpointError
from ..model import RWKV

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
BLINKDL_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which BlinkDL's ln0/ln1/ln2/ln_out use
_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
_PARTS = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_PROJ = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
_LORA = {"0": "lora.2.bias", "1": "lora.0.weight", "2": "lora.2.weight"}


def hf_name(key: str) -> tuple[str, bool]:
    """fla's name for a BlinkDL x070 key, and whether the tensor is stored transposed there."""
    if key in _TOP:
        return _TOP[key], False
    _, layer, part, *rest = key.split(".")
    name = rest[0]
    if part == "att" and len(name) == 2 and name[0] in "wavg" and name[1] in "012":
        return f"model.layers.{layer}.attn.{name[0]}_lora.{_LORA[name[1]]}", name[1] != "0"
    if part == "att" and name in _PROJ:
        rest[0] = _PROJ[name]
    return ".".join(["model.layers", layer, _PARTS[part], *rest]), False


def _to_hf_tensor(key: str, tensor: Tensor) -> Tensor:
    name, transposed = hf_name(key)
    if transposed:
        return tensor.t().contiguous()
    if tensor.dim() == 3 and ".attn.x_" not in name:  # (1, 1, C) -> (C,), as fla's k_k, k_a, ffn.x_k, LoRA biases
        return tensor.reshape(-1).contiguous()
    return tensor.contiguous()


def x070_key_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Every key of our x070 model and its shape, without allocating the weights."""
    with torch.device("meta"):
        return {k: v.shape for k, v in RWKV(cfg, "reference").state_dict().items()}


def hf_config(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """fla's RWKV7Config fields for this architecture (what ``AutoConfig`` reads)."""
    return {
        "model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"],
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "head_dim": cfg.head_size,
        "num_heads": cfg.n_head, "intermediate_size": cfg.dim_ffn, "hidden_ratio": cfg.dim_ffn / cfg.n_embd,
        "decay_low_rank_dim": cfg.decay_lora, "a_low_rank_dim": cfg.iclr_lora,
        "v_low_rank_dim": cfg.value_lora, "gate_low_rank_dim": cfg.gate_lora,
        "value_dim": [cfg.n_embd] * cfg.n_layer, "vocab_size": cfg.vocab_size, "hidden_act": "sqrelu",
        "norm_first": True, "norm_bias": True, "norm_eps": BLINKDL_LAYER_NORM_EPS,
        "tie_word_embeddings": False, "attn_mode": "chunk", "attn": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def config_from_hf(hf: dict, folder: str) -> ModelConfig:
    if hf.get("model_type") != "rwkv7":
        raise CheckpointError(f"{folder}: model_type is {hf.get('model_type')!r}; only fla's 'rwkv7' converts to x070")
    C, L = hf["hidden_size"], hf["num_hidden_layers"]
    value_dim = hf.get("value_dim") or C
    if hf.get("attn") or not hf.get("norm_first", True) or any(v != C for v in
                                                             (value_dim if isinstance(value_dim, list) else [value_dim])):
        raise CheckpointError(f"{folder}: an fla RWKV-7 variant BlinkDL's x070 cannot hold "
                              "(hybrid attention layers, norm_first=false or value_dim != hidden_size)")
    head_dim = hf.get("head_dim") or C // hf["num_heads"]
    return ModelConfig(version="x070", n_layer=L, n_embd=C, vocab_size=hf["vocab_size"], head_size=head_dim,
                       dim_ffn=hf.get("intermediate_size") or int(C * (hf.get("hidden_ratio") or 4)),
                       decay_lora=hf["decay_low_rank_dim"], iclr_lora=hf["a_low_rank_dim"],
                       value_lora=hf["v_low_rank_dim"], gate_lora=hf["gate_low_rank_dim"])


def pth_to_hf(source: str, out: str, dtype: str | None = None) -> Path:
    """Write the x070 ``.pth`` at ``source`` as a new HF folder ``out`` (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    sd = load_pth(source)
    cfg = config_from_state_dict(sd)
    if cfg.version != "x070":
        raise CheckpointError(f"{source}: is {cfg.version}; Hugging Face export supports x070 (fla's RWKV7ForCausalLM)")
    if any(k.endswith(".att.time_state") for k in sd):
        raise CheckpointError(f"{source}: has a learned initial state (att.time_state), which fla's RWKV-7 cannot hold")
    keys = x070_key_shapes(cfg)
    tensors = {}
    for key in keys:
        if key not in sd:
            raise CheckpointError(f"{source}: not a complete x070 model, no {key!r}")
        tensor = sd[key].to(DTYPES[dtype]) if dtype else sd[key]
        tensors[hf_name(key)[0]] = _to_hf_tensor(key, tensor)
    leftover = sorted(set(sd) - set(keys) - set(IGNORED_KEYS))
    if leftover:
        raise CheckpointError(f"{source}: key {leftover[0]!r} has no place in fla's RWKV-7 ({len(leftover)} in all)")
    out_dtype = DTYPES[dtype] if dtype else sd["emb.weight"].dtype

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(json.dumps(hf_config(cfg, out_dtype), indent=2) + "\n")

    return _write_folder_atomically(Path(out), write)


def _write_folder_atomically(out: Path, write) -> Path:
    if out.exists():
        raise CheckpointError(f"{out} exists; choose another output folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        os.replace(tmp, out)  # the folder appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_hf_folder(folder: str) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, every tensor) of an HF folder, one safetensors file or a sharded index."""
    from safetensors.torch import load_file

    path = Path(folder)
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; expected a Hugging Face model folder")
    hf = json.loads((path / CONFIG_FILE).read_text())
    if (path / INDEX_FILE).is_file():
        shards = sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
    elif (path / WEIGHTS_FILE).is_file():
        shards = [WEIGHTS_FILE]
    else:
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} (or {INDEX_FILE}); save the model with safetensors")
    tensors = {}
    for shard in shards:
        tensors.update(load_file(str(path / shard)))
    return hf, tensors


def hf_to_pth(source: str, out: str, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write the fla RWKV-7 HF folder ``source`` as a BlinkDL x070 ``.pth``."""
    hf, tensors = read_hf_folder(source)
    cfg = config_from_hf(hf, source)
    sd = {}
    for key, shape in x070_key_shapes(cfg).items():
        name, transposed = hf_name(key)
        if name not in tensors:
            raise CheckpointError(f"{source}: no tensor {name!r} (for {key}); is it an fla RWKV7ForCausalLM folder?")
        tensor = tensors.pop(name)
        tensor = tensor.t() if transposed else tensor
        if tensor.numel() != shape.numel():
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(shape)}")
        sd[key] = tensor.reshape(shape).contiguous()
    if tensors:
        raise CheckpointError(f"{source}: tensor {sorted(tensors)[0]!r} has no place in BlinkDL's x070 ({len(tensors)} in all)")
    return save_pth(sd, out, dtype=dtype, overwrite=overwrite)
