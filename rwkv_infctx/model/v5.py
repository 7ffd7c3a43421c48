"""RWKV-5 (x052) time-mix and channel-mix, with BlinkDL's parameter names and shapes.

Math as BlinkDL's RWKV-LM ``RWKV-v5/src/model.py`` (RWKV_Tmix_x052, RWKV_CMix_x052) and its wkv5
CUDA kernel; every parameter's official initial value is in ``V5_INIT``. The WKV recurrence is
WKV-6's with a decay constant in time. Pieces RWKV-6 inherits unchanged (output stage, gated
channel-mix MLP, init formulas) live here and are imported by ``v6.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import wkv6
from .init_rules import const, orthogonal, per_channel, zeros
from .layers import token_shift

# BlinkDL's x052 normalises ln_x(y / 8) with eps 1e-5; GroupNorm(y) with eps 1e-5 * 8**2 is the
# same function (x060 and the rwkv package write it this way), so one form serves both versions.
HEAD_SIZE_DIVISOR = 8
LN_X_EPS = 1e-5 * HEAD_SIZE_DIVISOR**2


def vector(cfg: ModelConfig) -> nn.Parameter:
    return nn.Parameter(torch.empty(1, 1, cfg.n_embd))


class HeadsTimeMix(nn.Module):
    """What x052 and x060 time-mix share: projections, WKV over heads, GroupNorm, silu gate, output.
    Subclasses add their token-shift and decay parameters and call ``mix_heads`` in forward."""

    def __init__(self, cfg: ModelConfig, wkv_backend: str):
        super().__init__()
        C = cfg.n_embd
        self.n_head, self.head_size = cfg.n_head, cfg.head_size
        self.wkv_backend = wkv_backend
        self.time_faaaa = nn.Parameter(torch.empty(cfg.n_head, cfg.head_size))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(cfg.n_head, C, eps=LN_X_EPS)

    def mix_heads(self, xr, xk, xv, xg, log_decay, wkv_state):
        """(B, T, C) inputs of each branch and the (B, T, H, N) log-decay -> output, new state."""
        B, T, C = xr.shape
        r, k, v = (proj(x).view(B, T, self.n_head, self.head_size)
                   for proj, x in ((self.receptance, xr), (self.key, xk), (self.value, xv)))
        y, wkv_state = wkv6(r, log_decay, k, v, self.time_faaaa, wkv_state, backend=self.wkv_backend)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * F.silu(self.gate(xg))), wkv_state


class TimeMixV5(HeadsTimeMix):
    def __init__(self, cfg: ModelConfig, layer_id: int, wkv_backend: str):
        super().__init__(cfg, wkv_backend)
        self.time_mix_k, self.time_mix_v, self.time_mix_r, self.time_mix_g = (vector(cfg) for _ in range(4))
        self.time_decay = nn.Parameter(torch.empty(cfg.n_head, cfg.head_size))

    def forward(self, x: Tensor, shift: Tensor, wkv_state: Tensor, v_first: Tensor | None):
        B, T, _ = x.shape
        prev = token_shift(x, shift)
        xk, xv, xr, xg = (x * m + prev * (1 - m) for m in (self.time_mix_k, self.time_mix_v,
                                                           self.time_mix_r, self.time_mix_g))
        log_decay = -torch.exp(self.time_decay.float()).expand(B, T, self.n_head, self.head_size)
        out, wkv_state = self.mix_heads(xr, xk, xv, xg, log_decay, wkv_state)
        return out, x[:, -1], wkv_state, v_first


class GatedChannelMix(nn.Module):
    """The channel-mix MLP of x052 and x060: sigmoid(receptance) * value(relu(key)^2).
    Subclasses add their token-shift parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.receptance = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def mlp(self, xk: Tensor, xr: Tensor) -> Tensor:
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)) ** 2)


class ChannelMixV5(GatedChannelMix):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg)
        self.time_mix_k, self.time_mix_r = vector(cfg), vector(cfg)

    def forward(self, x: Tensor, shift: Tensor):
        prev = token_shift(x, shift)
        xk = x * self.time_mix_k + prev * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + prev * (1 - self.time_mix_r)
        return self.mlp(xk, xr), x[:, -1]


# ---------------------------------------------------------------------------------------------
# Official initialisation (BlinkDL's RWKV-v5/src/model.py: the values set in each module's
# __init__, kept by generate_init_weight, which then sets the matrices and ln_x.weight).


def ratios(cfg: ModelConfig, layer_id: int):
    """BlinkDL's ramps: ratio_0_to_1, ratio_1_to_almost0, i / C and i / (C - 1) per channel i."""
    C = cfg.n_embd
    n = torch.arange(C, dtype=torch.float64)
    ratio_0_to_1 = layer_id / max(cfg.n_layer - 1, 1)  # BlinkDL divides by zero for n_layer = 1
    ratio_1_to_almost0 = 1.0 - layer_id / cfg.n_layer
    return ratio_0_to_1, ratio_1_to_almost0, n / C, n / (C - 1)


def decay_speed(cfg: ModelConfig, layer_id: int) -> Tensor:
    """time_decay: -6 .. -1 across channels, bending towards slow decay in deeper layers."""
    r0, _, _, across = ratios(cfg, layer_id)
    return -6 + 5 * across ** (0.7 + 1.3 * r0)


def bonus(cfg: ModelConfig, layer_id: int) -> Tensor:
    """time_faaaa: a ramp from ratio_0_to_1 to 0 across channels plus a period-3 zigzag of +-0.1."""
    r0, _, _, across = ratios(cfg, layer_id)
    n = torch.arange(cfg.n_embd)
    zigzag = ((n + 1) % 3 - 1) * 0.1
    return r0 * (1 - across) + zigzag


def _time_mix(power: float, offset: float = 0.0):
    """ddd ** (power * ratio_1_to_almost0) + offset * ratio_0_to_1, BlinkDL's "fancy time_mix"."""
    def values(cfg, layer_id):
        r0, r1, ddd, _ = ratios(cfg, layer_id)
        return ddd ** (power * r1) + offset * r0
    return const(values)


# Rules x052 and x060 share: matrices and ln_x (generate_init_weight), time_decay and time_faaaa.
SHARED_INIT = {
    "att.receptance.weight": orthogonal(1.0),
    "att.key.weight": orthogonal(0.1),
    "att.value.weight": orthogonal(1.0),
    "att.gate.weight": orthogonal(0.1),
    "att.output.weight": zeros,
    "att.ln_x.weight": const(lambda c, i: ((1 + i) / c.n_layer) ** 0.7),
    "att.ln_x.bias": zeros,
    "att.time_decay": per_channel(decay_speed),  # (H, N) in x052, (1, 1, C) in x060
    "att.time_faaaa": per_channel(bonus),
    "ffn.key.weight": orthogonal(1.0),
    "ffn.receptance.weight": zeros,
    "ffn.value.weight": zeros,
}

V5_INIT = {
    **SHARED_INIT,
    "att.time_mix_k": _time_mix(1.0),
    "att.time_mix_v": _time_mix(1.0, offset=0.3),
    "att.time_mix_r": _time_mix(0.5),
    "att.time_mix_g": _time_mix(0.5),
    "ffn.time_mix_k": _time_mix(1.0),
    "ffn.time_mix_r": _time_mix(1.0),
}
