"""RWKV-6 (x060) time-mix and channel-mix, with BlinkDL's parameter names and shapes.

Math as BlinkDL's RWKV-LM ``RWKV-v5/src/model.py`` (RWKV_Tmix_x060, RWKV_CMix_x060) and its wkv6
CUDA kernel; every parameter's official initial value is in ``V6_INIT``. What RWKV-6 adds to
RWKV-5: data-dependent token-shift mixes (the time_maa LoRA) and a data-dependent decay (the
time_decay LoRA); the output stage and the channel-mix MLP are RWKV-5's (``v5.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .init_rules import const, uniform, zeros
from .layers import token_shift
from .v5 import SHARED_INIT, GatedChannelMix, HeadsTimeMix, ratios, vector

# The five token-shift mixes the time_maa LoRA produces, in the order of time_maa_w1's column
# blocks and time_maa_w2's first axis (BlinkDL's order: w, k, v, r, g).
MIXES = ("w", "k", "v", "r", "g")


class TimeMixV6(HeadsTimeMix):
    def __init__(self, cfg: ModelConfig, layer_id: int, wkv_backend: str):
        super().__init__(cfg, wkv_backend)
        C, D_mix, D_decay = cfg.n_embd, cfg.mix_lora, cfg.decay_lora
        self.time_maa_x = vector(cfg)
        for name in MIXES:
            setattr(self, f"time_maa_{name}", vector(cfg))
        self.time_maa_w1 = nn.Parameter(torch.empty(C, len(MIXES) * D_mix))
        self.time_maa_w2 = nn.Parameter(torch.empty(len(MIXES), D_mix, C))
        self.time_decay = vector(cfg)
        self.time_decay_w1 = nn.Parameter(torch.empty(C, D_decay))
        self.time_decay_w2 = nn.Parameter(torch.empty(D_decay, C))

    def mixed_inputs(self, x: Tensor, shift: Tensor) -> list[Tensor]:
        """x moved towards the previous token by a static plus a data-dependent amount, per branch."""
        B, T, C = x.shape
        xx = token_shift(x, shift) - x
        hidden = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1).view(B, T, len(MIXES), -1)
        dynamic = torch.einsum("btjd,jdc->jbtc", hidden, self.time_maa_w2)
        return [x + xx * (getattr(self, f"time_maa_{name}") + m) for name, m in zip(MIXES, dynamic)]

    def forward(self, x: Tensor, shift: Tensor, wkv_state: Tensor, v_first: Tensor | None):
        B, T, C = x.shape
        xw, xk, xv, xr, xg = self.mixed_inputs(x, shift)
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        log_decay = -torch.exp(w.float()).view(B, T, self.n_head, self.head_size)
        out, wkv_state = self.mix_heads(xr, xk, xv, xg, log_decay, wkv_state)
        return out, x[:, -1], wkv_state, v_first


class ChannelMixV6(GatedChannelMix):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg)
        self.time_maa_k, self.time_maa_r = vector(cfg), vector(cfg)

    def forward(self, x: Tensor, shift: Tensor):
        xx = token_shift(x, shift) - x
        return self.mlp(x + xx * self.time_maa_k, x + xx * self.time_maa_r), x[:, -1]


# ---------------------------------------------------------------------------------------------
# Official initialisation (BlinkDL's RWKV-v5/src/model.py, x060). The time-mix's time_maa start
# at 1 - x052's time_mix, the same token shift: x060 writes the mix as x + (prev - x) * maa where
# x052 wrote x * mix + prev * (1 - mix). The channel-mix's start elsewhere (power r1**3).


def _time_maa(power: float, offset: float = 0.0):
    """1 - (ddd ** (power * ratio_1_to_almost0) + offset * ratio_0_to_1)."""
    def values(cfg, layer_id):
        r0, r1, ddd, _ = ratios(cfg, layer_id)
        return 1.0 - (ddd ** (power * r1) + offset * r0)
    return const(values)


def _ffn_time_maa(cfg, layer_id):
    _, r1, ddd, _ = ratios(cfg, layer_id)
    return 1.0 - ddd ** (r1**3)


V6_INIT = {
    **SHARED_INIT,
    "att.time_maa_x": _time_maa(1.0),
    "att.time_maa_w": _time_maa(1.0),
    "att.time_maa_k": _time_maa(1.0),
    "att.time_maa_v": _time_maa(1.0, offset=0.3),
    "att.time_maa_r": _time_maa(0.5),
    "att.time_maa_g": _time_maa(0.5),
    "att.time_maa_w1": zeros,
    "att.time_maa_w2": uniform(0.01),
    "att.time_decay_w1": zeros,
    "att.time_decay_w2": uniform(0.01),
    "ffn.time_maa_k": const(_ffn_time_maa),
    "ffn.time_maa_r": const(_ffn_time_maa),
}
