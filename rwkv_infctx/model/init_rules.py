"""Building blocks of the per-parameter init tables (``V5_INIT``, ``V6_INIT``, ``V7_INIT``).

A rule is a function (parameter, cfg, layer_id) -> None that fills the parameter in place.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig


def const(fn):
    """An init from a formula of (cfg, layer_id) -> values broadcastable to the parameter."""
    def init(p: Tensor, cfg: ModelConfig, layer_id: int) -> None:
        p.copy_(torch.as_tensor(fn(cfg, layer_id), dtype=p.dtype).expand_as(p))
    return init


def zeros(p: Tensor, cfg: ModelConfig, layer_id: int) -> None:
    p.zero_()


def uniform(bound: float):
    def init(p: Tensor, cfg: ModelConfig, layer_id: int) -> None:
        nn.init.uniform_(p, -bound, bound)
    return init


def orthogonal(gain: float):
    """Plain ``nn.init.orthogonal_``, as BlinkDL's generate_init_weight (RWKV-5/6)."""
    def init(p: Tensor, cfg: ModelConfig, layer_id: int) -> None:
        nn.init.orthogonal_(p, gain=gain)
    return init


def per_channel(fn):
    """A formula of (cfg, layer_id) -> one value per channel (C,), laid out in the parameter's
    shape: BlinkDL builds some per-head (H, N) parameters from a formula over all C channels."""
    def init(p: Tensor, cfg: ModelConfig, layer_id: int) -> None:
        p.copy_(torch.as_tensor(fn(cfg, layer_id), dtype=p.dtype).reshape(p.shape))
    return init
