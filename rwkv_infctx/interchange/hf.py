"""BlinkDL ``.pth`` <-> Hugging Face folder for flash-linear-attention's ``RWKV7ForCausalLM``
(x070) and ``RWKV6ForCausalLM`` (x060).

The key names and tensor layouts follow fla's ``fla/models/rwkv7`` and ``rwkv6`` modules (and the
one-way ``utils/convert_from_rwkv7.py`` / ``convert_from_rwkv6.py`` in fla's repository). x070:
BlinkDL's LoRA pairs ``w1``/``w2`` are fla's ``w_lora.lora.0``/``lora.2`` weights, transposed
(fla keeps them as nn.Linear, out x in), and the LoRA offsets ``w0``/``a0``/``v0`` become the
second Linear's bias. x060: the token-shift LoRA ``time_maa_w1``/``w2`` is fla's ``x_proj.0``/
``x_proj.2`` with its five blocks reordered (BlinkDL w, k, v, r, g; fla r, w, k, v, g), the five
static mixes ``time_maa_r/w/k/v/g`` are the rows of ``x_bias``, and the decay LoRA is ``w_proj``'s
(``time_decay`` its bias). Per-channel vectors that BlinkDL keeps as (1, 1, C) are (C,) in fla,
except x070's six token-shift mixes.

One mapping (``hf_entry``) serves both directions: the reverse walks our model's own key list,
so every key of a complete model must be found in the folder (a folder with tied embeddings gives
BlinkDL's head a copy of them). What does not carry over: a learned
initial state (``att.time_state``; fla's models have none), the tokenizer (fla folders name it
separately) and x052 (fla has no RWKV-5). GroupNorm eps differs from BlinkDL's 64e-5: fla's
RWKV-7 uses head_dim * norm_eps (equal at head size 64, all released RWKV-7), fla's RWKV-6 uses
norm_eps itself (1e-5, which its LayerNorms need), so fla's RWKV-6 and ours differ slightly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import DTYPES, IGNORED_KEYS, config_from_state_dict, load_pth, save_pth
from ..config import ModelConfig
from ..errors import CheckpointError
from ..model import RWKV
from ..model.v6 import MIXES

FLA_RWKV6_EPS_NOTE = ("fla's RWKV-6 normalises each head (ln_x) with eps 1e-5, BlinkDL's x060 with 64e-5: "
                      "the same weights give slightly different logits in the two")
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


# fla's RWKV-6 names below model.layers.N.attn / .ffn; the five static mixes are x_bias's rows.
_V6_ATT = {"time_maa_x": "x_proj.0.mu", "time_maa_w1": "x_proj.0.linear.weight", "time_maa_w2": "x_proj.2.weight",
           "time_decay": "w_proj.linear.lora.2.bias", "time_decay_w1": "w_proj.linear.lora.0.weight",
           "time_decay_w2": "w_proj.linear.lora.2.weight", "time_faaaa": "bonus", "receptance": "r_proj.linear",
           "key": "k_proj.linear", "value": "v_proj.linear", "gate": "g_proj.linear", "output": "o_proj",
           "ln_x": "g_norm"}
_V6_FFN = {"key": "key.linear", "receptance": "receptance.linear", "time_maa_k": "key.mu",
           "time_maa_r": "receptance.mu", "value": "value"}
_V6_TRANSFORM = {"time_maa_w1": "mix_w1", "time_maa_w2": "mix_w2", "time_decay_w1": "T", "time_decay_w2": "T"}
FLA_MIXES = ("r", "w", "k", "v", "g")  # fla's order of x_bias rows and x_proj blocks
_TO_FLA = [MIXES.index(m) for m in FLA_MIXES]  # fla block i is BlinkDL's block _TO_FLA[i]
_TO_BLINKDL = [FLA_MIXES.index(m) for m in MIXES]
_KEPT_3D = re.compile(r"\.attn\.x_[rwkvag]$")


def hf_name_x060(key: str) -> tuple[str, int | None, str]:
    """fla's RWKV-6 name for a BlinkDL x060 key, the row it fills in a stacked tensor (or None),
    and how the tensor is laid out there ("same", "T" transposed, "mix_w1"/"mix_w2" reordered)."""
    if key in _TOP:
        return _TOP[key], None, "same"
    _, layer, part, name, *rest = key.split(".")
    prefix = f"model.layers.{layer}"
    if part == "att" and name.startswith("time_maa_") and name[-1] in FLA_MIXES and name not in _V6_ATT:
        return f"{prefix}.attn.x_bias", FLA_MIXES.index(name[-1]), "same"
    if part in ("att", "ffn"):
        table = _V6_ATT if part == "att" else _V6_FFN
        return ".".join([prefix, _PARTS[part], table[name], *rest]), None, _V6_TRANSFORM.get(name, "same")
    return ".".join([prefix, _PARTS[part], name, *rest]), None, "same"


def hf_entry(version: str, key: str) -> tuple[str, int | None, str]:
    """(fla name, row of a stacked tensor or None, layout) of a BlinkDL key of this version."""
    if version == "x060":
        return hf_name_x060(key)
    name, transposed = hf_name(key)
    return name, None, "T" if transposed else "same"


def _to_hf_tensor(name: str, layout: str, tensor: Tensor) -> Tensor:
    if layout == "T":
        return tensor.t()
    if layout == "mix_w1":  # (C, 5 * D), column blocks reordered, transposed
        C, width = tensor.shape
        return tensor.view(C, len(MIXES), -1)[:, _TO_FLA].reshape(C, width).t()
    if layout == "mix_w2":  # (5, D, C) -> (C, 5 * D), blocks reordered
        return tensor[_TO_FLA].permute(2, 0, 1).reshape(tensor.shape[2], -1)
    if tensor.dim() == 3 and not _KEPT_3D.search(name):  # (1, 1, C) -> (C,); fla's x070 keeps x_r .. x_g
        return tensor.reshape(-1)
    return tensor


def _from_hf_tensor(layout: str, tensor: Tensor, shape: torch.Size) -> Tensor:
    if layout == "T":
        return tensor.t()
    if layout == "mix_w1":
        return tensor.t().reshape(shape[0], len(MIXES), -1)[:, _TO_BLINKDL].reshape(shape)
    if layout == "mix_w2":
        return tensor.reshape(shape[2], shape[0], shape[1]).permute(1, 2, 0)[_TO_BLINKDL]
    return tensor.reshape(shape)


def key_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Every key of our model of this architecture and its shape, without allocating the weights."""
    with torch.device("meta"):
        return {k: v.shape for k, v in RWKV(cfg, "reference").state_dict().items()}


def hf_config(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """fla's RWKV7Config / RWKV6Config fields for this architecture (what ``AutoConfig`` reads)."""
    common = {"hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_heads": cfg.n_head,
              "intermediate_size": cfg.dim_ffn, "hidden_ratio": cfg.dim_ffn / cfg.n_embd,
              "vocab_size": cfg.vocab_size, "hidden_act": "sqrelu", "norm_first": True, "norm_bias": True,
              "norm_eps": BLINKDL_LAYER_NORM_EPS, "tie_word_embeddings": False, "attn_mode": "chunk", "attn": None,
              "torch_dtype": str(dtype).removeprefix("torch.")}
    if cfg.version == "x060":  # BlinkDL's x060 has key and value widths n_embd
        return {"model_type": "rwkv6", "architectures": ["RWKV6ForCausalLM"], **common, "expand_k": 1.0,
                "expand_v": 1.0, "proj_low_rank_dim": cfg.mix_lora, "gate_low_rank_dim": cfg.decay_lora}
    return {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], **common, "head_dim": cfg.head_size,
            "decay_low_rank_dim": cfg.decay_lora, "a_low_rank_dim": cfg.iclr_lora,
            "v_low_rank_dim": cfg.value_lora, "gate_low_rank_dim": cfg.gate_lora,
            "value_dim": [cfg.n_embd] * cfg.n_layer}


def config_from_hf(hf: dict, folder: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in ("rwkv6", "rwkv7"):
        raise CheckpointError(f"{folder}: model_type is {model_type!r}; only fla's 'rwkv7' (x070) and "
                              "'rwkv6' (x060) convert")
    C, L = hf["hidden_size"], hf["num_hidden_layers"]
    if hf.get("attn") or not hf.get("norm_first", True) or not hf.get("norm_bias", True):
        raise CheckpointError(f"{folder}: an fla {model_type} variant BlinkDL's models cannot hold "
                              "(hybrid attention layers, norm_first=false or norm_bias=false)")
    if model_type == "rwkv6":
        if hf.get("expand_k", 0.5) != 1 or hf.get("expand_v", 1.0) != 1:
            raise CheckpointError(f"{folder}: expand_k={hf.get('expand_k', 0.5)}, expand_v={hf.get('expand_v', 1.0)}; "
                                  "BlinkDL's x060 needs key and value widths equal to hidden_size (both 1.0)")
        ffn = hf.get("intermediate_size") or 32 * -(-int(C * (hf.get("hidden_ratio") or 3.5)) // 32)  # fla's rounding
        return ModelConfig(version="x060", n_layer=L, n_embd=C, vocab_size=hf["vocab_size"],
                           head_size=C // hf["num_heads"], dim_ffn=ffn, mix_lora=hf.get("proj_low_rank_dim", 32),
                           decay_lora=hf.get("gate_low_rank_dim", 64))
    value_dim = hf.get("value_dim") or C
    if any(v != C for v in (value_dim if isinstance(value_dim, list) else [value_dim])):
        raise CheckpointError(f"{folder}: value_dim != hidden_size, which BlinkDL's x070 cannot hold")
    head_dim = hf.get("head_dim") or C // hf["num_heads"]
    return ModelConfig(version="x070", n_layer=L, n_embd=C, vocab_size=hf["vocab_size"], head_size=head_dim,
                       dim_ffn=hf.get("intermediate_size") or int(C * (hf.get("hidden_ratio") or 4)),
                       decay_lora=hf["decay_low_rank_dim"], iclr_lora=hf["a_low_rank_dim"],
                       value_lora=hf["v_low_rank_dim"], gate_lora=hf["gate_low_rank_dim"])


def pth_to_hf(source: str, out: str, dtype: str | None = None) -> Path:
    """Write the x070/x060 ``.pth`` at ``source`` as a new HF folder ``out`` (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    sd = load_pth(source)
    cfg = config_from_state_dict(sd)
    if cfg.version not in ("x060", "x070"):
        raise CheckpointError(f"{source}: is {cfg.version}; Hugging Face export supports x070 and x060 "
                              "(fla's RWKV7ForCausalLM and RWKV6ForCausalLM)")
    if any(k.endswith(".att.time_state") for k in sd):
        raise CheckpointError(f"{source}: has a learned initial state (att.time_state), which fla's models cannot hold")
    keys = key_shapes(cfg)
    tensors, stacked = {}, {}
    for key in keys:
        if key not in sd:
            raise CheckpointError(f"{source}: not a complete {cfg.version} model, no {key!r}")
        name, row, layout = hf_entry(cfg.version, key)
        tensor = _to_hf_tensor(name, layout, sd[key].to(DTYPES[dtype]) if dtype else sd[key]).contiguous()
        if row is None:
            tensors[name] = tensor
        else:
            stacked.setdefault(name, {})[row] = tensor
    tensors.update({name: torch.stack([rows[i] for i in sorted(rows)]) for name, rows in stacked.items()})
    leftover = sorted(set(sd) - set(keys) - set(IGNORED_KEYS))
    if leftover:
        raise CheckpointError(f"{source}: key {leftover[0]!r} has no place in fla's model ({len(leftover)} in all)")
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
    """Write the fla RWKV-7 / RWKV-6 HF folder ``source`` as a BlinkDL x070 / x060 ``.pth``."""
    hf, tensors = read_hf_folder(source)
    cfg = config_from_hf(hf, source)
    if hf.get("tie_word_embeddings") and _TOP["head.weight"] not in tensors:  # BlinkDL's head is its own tensor
        tensors[_TOP["head.weight"]] = tensors.get(_TOP["emb.weight"])
    sd, used = {}, set()
    for key, shape in key_shapes(cfg).items():
        name, row, layout = hf_entry(cfg.version, key)
        if tensors.get(name) is None:
            raise CheckpointError(f"{source}: no tensor {name!r} (for {key}); is it an fla {hf['model_type']} folder?")
        used.add(name)
        tensor = tensors[name] if row is None or len(tensors[name]) <= row else tensors[name][row]
        if tensor.numel() != shape.numel():
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(shape)}")
        sd[key] = _from_hf_tensor(layout, tensor, shape).contiguous()
    leftover = sorted(set(tensors) - used)
    if leftover:
        raise CheckpointError(f"{source}: tensor {leftover[0]!r} has no place in BlinkDL's {cfg.version} "
                              f"({len(leftover)} in all)")
    return save_pth(sd, out, dtype=dtype, overwrite=overwrite)
