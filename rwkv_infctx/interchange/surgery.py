"""Model surgery on a .pth: more layers, a wider residual, more vocabulary tokens, another dtype,
no stray keys.

What holds exactly: every block the official init creates adds nothing to the residual stream
(its ``att.output`` and ``ffn.value`` matrices are zero), so layers appended after the last one
leave the logits bit-identical until training moves them; tokens added to the vocabulary leave
every old token's embedding and head row, hence the old tokens' logits, bit-identical. New
``emb``/``head`` rows are the mean of the old rows (a new token starts as an average token rather
than as noise that could dominate the softmax).

Widening (n_embd C -> C'; head size and LoRA ranks kept, so heads are added) keeps what every
LayerNorm sees. When C' is a multiple of C, new residual channel j copies old channel j mod C
(``emb`` columns, LayerNorm weights and biases, the rows of every matrix that writes the
residual): each LayerNorm sees the old mean and variance exactly, eps included, and the grown
model gives the small model's logits up to rounding, for every version. Otherwise every new
residual channel holds the mean of the old channels (new rows of the residual writers are the
mean of the old rows; ``emb`` and ``ln0`` solved per token, see ``widen_embedding``), so a
LayerNorm sees the old mean and the old variance times C/C', which its old weights scaled by
sqrt(C/C') undo, and outputs 0 on the new channels. In both, nothing new reaches an old channel
(the blocks from new inputs to old outputs are zero; the new heads' ``att.output`` columns are
zero, as in the official init), and new heads, FFN units and readers of the new channels take the
official init; copies separate in training, since only the old channels feed the old heads.
Approximate in the mean scheme: LayerNorm's eps acts as eps * C'/C; ``ln0``'s per-token solution
leaves an error of second order; and x052/x060's channel-mix gates each channel (sigmoid(receptance)
* value), so a new channel given the mean of the old receptance and value rows only approximates
the old channels' mean. Measured on random 2-layer models (tests/test_interchange.py), logits'
relative RMS against the small model's: 64 -> 128, 9e-16 in fp64; 64 -> 96, x070 7.7e-5, x052/x060
3% (copying the small model into a fresh init instead: 34-80%).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import IGNORED_KEYS, config_from_state_dict, from_blinkdl
from ..config import VERSION_DEFAULTS, ModelConfig
from ..errors import CheckpointError
from ..model import RWKV

GROWN_ROWS = ("emb.weight", "head.weight")
# Parameters used as x @ W, (input, output), time_maa_w2 (5, input, output); the other 2-D
# ``.weight`` are nn.Linear's (output, input); the rest are per-channel or per-head vectors.
_LORA = re.compile(r"\.att\.(?:[wavg][12]|time_maa_w[12]|time_decay_w[12])$")
# Matrices whose output is added to the residual stream (x052/x060's ffn.receptance gates it per channel).
_RESIDUAL_WRITERS = ("emb.weight", ".att.output.weight", ".ffn.value.weight", ".ffn.receptance.weight")
_LAYER_NORM = re.compile(r"(?:^|\.)(?:ln0|ln1|ln2|ln_out)\.(weight|bias)$")


def grown_config(cfg: ModelConfig, n_layer: int | None, vocab_size: int | None, n_embd: int | None) -> ModelConfig:
    """The grown architecture: dim_ffn follows the version's default for the new width when the
    source has its width's default (else it is kept); head size and LoRA ranks are kept."""
    new_cfg = replace(cfg, n_layer=n_layer or cfg.n_layer, vocab_size=vocab_size or cfg.vocab_size)
    if n_embd and n_embd != cfg.n_embd:
        if n_embd % cfg.head_size:
            raise CheckpointError(f"--n_embd {n_embd} is not a multiple of the model's head size {cfg.head_size}")
        default_ffn = VERSION_DEFAULTS[cfg.version](cfg.n_embd)["dim_ffn"]
        new_cfg = replace(new_cfg, n_embd=n_embd, dim_ffn=None if cfg.dim_ffn == default_ffn else cfg.dim_ffn)
        new_cfg.__post_init__()  # fill dim_ffn for the new width
    for name in ("n_layer", "vocab_size", "n_embd"):
        if getattr(new_cfg, name) < getattr(cfg, name):
            raise CheckpointError(f"--{name} {getattr(new_cfg, name)} is smaller than the model's "
                                  f"{getattr(cfg, name)}; surgery only grows a model")
    return new_cfg


def describe_growth(old: ModelConfig, new: ModelConfig) -> list[str]:
    """One line per size that grew, saying what holds exactly."""
    lines = [f"n_layer {old.n_layer} -> {new.n_layer}: new layers add nothing until trained (exact)"
             if new.n_layer > old.n_layer else "",
             f"vocab_size {old.vocab_size} -> {new.vocab_size}: old tokens' logits unchanged (exact)"
             if new.vocab_size > old.vocab_size else ""]
    if new.n_embd > old.n_embd:
        how = ("new residual channels copy old ones: the logits are the small model's up to rounding"
               if new.n_embd % old.n_embd == 0 else "new residual channels hold the old channels' mean: "
               "the logits are close to the small model's, not equal (see --help)")
        lines.append(f"n_embd {old.n_embd} -> {new.n_embd} ({old.n_head} -> {new.n_head} heads, "
                     f"dim_ffn {old.dim_ffn} -> {new.dim_ffn}): {how}")
    return [line for line in lines if line]


def grow_state_dict(sd: dict[str, Tensor], n_layer: int | None = None, vocab_size: int | None = None,
                    seed: int = 0, n_embd: int | None = None) -> tuple[dict[str, Tensor], list[str]]:
    """(the grown fp32 state dict in our layout, the keys left out because no model uses them)."""
    cfg = config_from_state_dict(sd)
    new_cfg = grown_config(cfg, n_layer, vocab_size, n_embd)
    lora = [k for k in sd if "lora_" in k]
    if lora:
        raise CheckpointError(f"key {lora[0]!r} is a LoRA adapter weight; merge the adapter into the model first")
    sd = {k: v.float() for k, v in from_blinkdl(sd, cfg.n_layer).items()}
    torch.manual_seed(seed)
    model = RWKV(new_cfg)
    model.init_weights()
    grown = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stripped = sorted(k for k in sd if k not in grown and k not in IGNORED_KEYS and k != "initial_wkv")
    for key in GROWN_ROWS:  # new tokens start as the old rows' mean
        sd[key] = torch.cat([sd[key], sd[key].mean(0).expand(new_cfg.vocab_size - cfg.vocab_size, -1)])
    copies = new_cfg.n_embd % cfg.n_embd == 0  # new channels copy old ones (exact) rather than hold their mean
    if new_cfg.n_embd > cfg.n_embd and not copies:
        sd.update(widen_embedding(sd, new_cfg.n_embd))
    for key, tensor in sd.items():
        if key == "initial_wkv":  # a learned start state (L, H, N, N); new layers and heads start from zeros
            grown[key] = torch.zeros((new_cfg.n_layer, new_cfg.n_head, *tensor.shape[2:]))
            grown[key][: cfg.n_layer, : cfg.n_head] = tensor
        elif key in grown:
            grown[key] = widen(key, tensor, grown[key], cfg.n_embd, copies)
    return grown, stripped


def widen_embedding(sd: dict[str, Tensor], n_embd: int) -> dict[str, Tensor]:
    """``emb`` and layer 0's ``ln0`` at the new width, such that ``ln0`` gives each token the small
    model's output on the old channels and that output's mean on every new channel.

    The new channels of a token's embedding are its mean plus t times a fixed zero-sum pattern v,
    the new ``ln0`` weights W / v and biases c (the vocabulary's average mean output): a new
    channel then outputs c + W * t * sqrt(C' / (C + t^2 |v|^2)), and t is solved per token to make
    that the token's own mean output. The old channels' variance gains t^2 |v|^2 / C, which the old
    ``ln0`` weights undo for the vocabulary's average t^2 only: the error left is of order
    (t^2 - mean t^2) |v|^2 / 2C, small because W is the old weights' scale and t ~ (mean - c) / W.
    """
    emb, weight, bias = sd["emb.weight"], sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"]
    C, extra = emb.shape[1], n_embd - emb.shape[1]
    means = torch.cat([F.layer_norm(emb[i:i + 4096], (C,), weight, bias).mean(1) for i in range(0, len(emb), 4096)])
    pattern = _zero_sum_pattern(extra)
    spread = pattern.pow(2).sum()
    c = means.mean()
    W = max(weight.pow(2).mean().sqrt().item(), 2 * (means - c).abs().max().item() * math.sqrt(spread / n_embd)) or 1.0
    y = (means - c) / W
    t = y * torch.sqrt(C / (n_embd - y.pow(2) * spread))
    row_mean, row_std = emb.mean(1, keepdim=True), emb.var(1, unbiased=False, keepdim=True).sqrt()
    return {"emb.weight": torch.cat([emb, row_mean + row_std * t[:, None] * pattern], 1),
            "blocks.0.ln0.weight": torch.cat([weight * torch.sqrt((C + t.pow(2).mean() * spread) / n_embd),
                                               W / pattern]),
            "blocks.0.ln0.bias": torch.cat([bias, c.expand(extra)])}


def _zero_sum_pattern(n: int) -> Tensor:
    """n values, none zero, summing to zero: +1, -1, ..., ending in 1, 1, -2 when n is odd."""
    if n == 1:
        raise CheckpointError("widening by a single channel is not supported; grow n_embd by at least 2")
    if n % 2:
        return torch.cat([torch.tensor([1.0, -1.0]).repeat((n - 3) // 2), torch.tensor([1.0, 1.0, -2.0])])
    return torch.tensor([1.0, -1.0]).repeat(n // 2)


def widen(key: str, old: Tensor, init: Tensor, n_embd: int, copies: bool) -> Tensor:
    """``old`` placed in the leading block of ``init`` (the grown model's official init for this
    key), the new parts set as the module docstring says; ``copies``: new residual channel j is
    old channel j mod C, else the old channels' mean."""
    out = init.clone()
    out[tuple(slice(0, n) for n in old.shape)] = old
    if out.shape == old.shape:
        return out
    norm = _LAYER_NORM.search(key)
    if norm and copies:
        return old[torch.arange(out.shape[0]) % n_embd]
    if norm:
        if norm.group(1) == "weight":
            out[:n_embd] = old * math.sqrt(n_embd / out.shape[0])
            out[n_embd:] = out[:n_embd].mean()  # any non-zero value: it multiplies 0 at first
        else:
            out[n_embd:] = 0.0
        return out
    axis = _output_axis(key, old)
    if axis is None:
        return out
    for other in range(old.dim()):  # nothing new reaches an old output
        if other != axis and out.shape[other] > old.shape[other]:
            block = [slice(None)] * old.dim()
            block[axis], block[other] = slice(0, old.shape[axis]), slice(old.shape[other], None)
            out[tuple(block)] = 0
    if key.endswith(_RESIDUAL_WRITERS):  # new residual channels: copies of old ones, or their mean
        new, source = out.narrow(axis, n_embd, out.shape[axis] - n_embd), out.narrow(axis, 0, n_embd)
        if copies:
            new.copy_(source.index_select(axis, torch.arange(new.shape[axis]) % n_embd))
        else:
            new.copy_(source.mean(axis, keepdim=True).expand_as(new))
    return out


def _output_axis(key: str, tensor: Tensor) -> int | None:
    if key == "emb.weight":
        return 1
    if _LORA.search(key):
        return tensor.dim() - 1
    if key.endswith(".weight") and tensor.dim() == 2:
        return 0
    return None
