"""Model surgery on a .pth: more layers, more vocabulary tokens, another dtype, no stray keys.

What holds exactly: every block the official init creates adds nothing to the residual stream
(its ``att.output`` and ``ffn.value`` matrices are zero), so layers appended after the last one
leave the logits bit-identical until training moves them; tokens added to the vocabulary leave
every old token's embedding and head row, hence the old tokens' logits, bit-identical. New
``emb``/``head`` rows are the mean of the old rows (a new token starts as an average token rather
than as noise that could dominate the softmax). Widening the residual (n_embd) is not offered: no
init keeps a LayerNorm model's function except duplicating channels, whose copies then receive
identical gradients and never separate.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..checkpoint import IGNORED_KEYS, config_from_state_dict, from_blinkdl
from ..errors import CheckpointError
from ..model import RWKV

GROWN_ROWS = ("emb.weight", "head.weight")


def grow_state_dict(sd: dict[str, Tensor], n_layer: int | None = None, vocab_size: int | None = None,
                    seed: int = 0) -> tuple[dict[str, Tensor], list[str]]:
    """(the grown fp32 state dict in our layout, the keys left out because no model uses them)."""
    cfg = config_from_state_dict(sd)
    new_cfg = replace(cfg, n_layer=n_layer or cfg.n_layer, vocab_size=vocab_size or cfg.vocab_size)
    for name in ("n_layer", "vocab_size"):
        if getattr(new_cfg, name) < getattr(cfg, name):
            raise CheckpointError(f"--{name} {getattr(new_cfg, name)} is smaller than the model's "
                                  f"{getattr(cfg, name)}; surgery only grows a model")
    lora = [k for k in sd if "lora_" in k]
    if lora:
        raise CheckpointError(f"key {lora[0]!r} is a LoRA adapter weight; merge the adapter into the model first")
    sd = from_blinkdl(sd, cfg.n_layer)
    torch.manual_seed(seed)
    model = RWKV(new_cfg)
    model.init_weights()
    grown = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stripped = sorted(k for k in sd if k not in grown and k not in IGNORED_KEYS and k != "initial_wkv")
    for key, tensor in sd.items():
        if key in GROWN_ROWS:
            old = tensor.float()
            grown[key][: cfg.vocab_size] = old
            grown[key][cfg.vocab_size:] = old.mean(0)
        elif key == "initial_wkv":  # a learned start state; appended layers start from zeros
            grown[key] = torch.zeros((new_cfg.n_layer, *tensor.shape[1:]))
            grown[key][: cfg.n_layer] = tensor.float()
        elif key in grown:
            grown[key] = tensor.float().clone()
    return grown, stripped
