"""RWKV-7 (x070) time-mix and channel-mix, with BlinkDL's parameter names and shapes.

Math as in BlinkDL's RWKV-LM ``RWKV-v7/train_temp``; every parameter's official initial value is
in ``V7_INIT`` below (one explicit table instead of name substring matching).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import wkv7
from .init_rules import const, orthogonal, zeros
from .layers import token_shift

# Decay is exp(-exp(-0.5) * sigmoid(w)): soft-clamped into (exp(-0.6065), 1), as BlinkDL's kernel.
DECAY_SCALE = math.exp(-0.5)


class TimeMixV7(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, wkv_backend: str):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.n_head, self.head_size = layer_id, H, N
        self.wkv_backend = wkv_backend

        def vec() -> nn.Parameter:
            return nn.Parameter(torch.empty(1, 1, C))

        def mat(rows: int, cols: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(rows, cols))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w0, self.w1, self.w2 = vec(), mat(C, cfg.decay_lora), mat(cfg.decay_lora, C)
        self.a0, self.a1, self.a2 = vec(), mat(C, cfg.iclr_lora), mat(cfg.iclr_lora, C)
        if layer_id > 0:  # value residual mixes towards layer 0's value; layer 0 has none
            self.v0, self.v1, self.v2 = vec(), mat(C, cfg.value_lora), mat(cfg.value_lora, C)
        self.g1, self.g2 = mat(C, cfg.gate_lora), mat(cfg.gate_lora, C)
        self.k_k, self.k_a = vec(), vec()
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)  # eps as BlinkDL's: released weights rely on it

    def forward(self, x: Tensor, shift: Tensor, wkv_state: Tensor, v_first: Tensor | None):
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xx = token_shift(x, shift) - x
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)
        log_decay = -DECAY_SCALE * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float())
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0)
        k = k * (1 + (iclr - 1) * self.k_a)
        r, k, v, iclr, log_decay = (t.view(B, T, H, N) for t in (r, k, v, iclr, log_decay))
        y, wkv_state = wkv7(r, log_decay, k, v, -kk, kk * iclr, wkv_state, backend=self.wkv_backend)

        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r * k * self.r_k).sum(-1, keepdim=True) * v  # (B, T, H, N): the current token's own term
        y = y + bonus.view(B, T, C)
        return self.output(y * g), x[:, -1], wkv_state, v_first


class ChannelMixV7(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.x_k = nn.Parameter(torch.empty(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def forward(self, x: Tensor, shift: Tensor):
        xx = token_shift(x, shift) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2
        return self.value(k), x[:, -1]


# ---------------------------------------------------------------------------------------------
# Official initialisation (BlinkDL's RWKV-v7/train_temp, fresh-model path).


def _orthogonal(gain: float):
    def init(p: Tensor, cfg: ModelConfig, layer_id: int) -> None:
        rows, cols = p.shape
        extra = math.sqrt(rows / cols) if rows > cols else 1.0
        nn.init.orthogonal_(p, gain=gain * extra)
    return init


def _ramps(cfg: ModelConfig, layer_id: int):
    """The per-channel and per-layer ramps BlinkDL's formulas are built from."""
    C, N = cfg.n_embd, cfg.head_size
    n = torch.arange(C, dtype=torch.float64)
    depth = layer_id / max(cfg.n_layer - 1, 1)  # 0 at the first layer, 1 at the last
    shallowness = 1.0 - layer_id / cfg.n_layer  # 1 at the first layer, ~0 at the last
    channel = n / C  # 0 .. ~1
    linear = n / (C - 1) - 0.5
    zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zigzag = zigzag * zigzag.abs()
    return depth, shallowness, channel, linear, zigzag


def _token_shift_mix(power: float):
    def values(cfg, layer_id):
        _, shallowness, channel, _, _ = _ramps(cfg, layer_id)
        return 1.0 - channel ** (power * shallowness)
    return const(values)


def _w0(cfg, layer_id):
    depth, _, _, linear, zigzag = _ramps(cfg, layer_id)
    n = torch.arange(cfg.n_embd, dtype=torch.float64)
    decay_speed = -6 + 6 * (n / (cfg.n_embd - 1)) ** (1 + depth**0.3)
    return decay_speed + 0.5 + zigzag * 2.5


def _ffn_x_k(cfg, layer_id):
    _, shallowness, channel, _, _ = _ramps(cfg, layer_id)
    return 1.0 - channel ** (shallowness**4)


V7_INIT = {
    "att.x_r": _token_shift_mix(0.2),
    "att.x_w": _token_shift_mix(0.9),
    "att.x_k": _token_shift_mix(0.7),
    "att.x_v": _token_shift_mix(0.7),
    "att.x_a": _token_shift_mix(0.9),
    "att.x_g": _token_shift_mix(0.2),
    "att.w0": const(_w0),
    "att.w1": zeros,
    "att.w2": _orthogonal(0.1),
    "att.a0": const(lambda c, i: -0.19 + _ramps(c, i)[4] * 0.3 + _ramps(c, i)[3] * 0.4),
    "att.a1": zeros,
    "att.a2": _orthogonal(0.1),
    "att.v0": const(lambda c, i: 0.73 - _ramps(c, i)[3] * 0.4),
    "att.v1": zeros,
    "att.v2": _orthogonal(0.1),
    "att.g1": zeros,
    "att.g2": _orthogonal(0.1),
    "att.k_k": const(lambda c, i: 0.71 - _ramps(c, i)[3] * 0.1),
    "att.k_a": const(lambda c, i: 1.02),
    "att.r_k": const(lambda c, i: -0.04),
    "att.receptance.weight": _orthogonal(1.0),
    "att.key.weight": _orthogonal(0.1),
    "att.value.weight": _orthogonal(1.0),
    "att.output.weight": zeros,
    "att.ln_x.weight": const(lambda c, i: ((1 + i) / c.n_layer) ** 0.7),
    "att.ln_x.bias": zeros,
    "ffn.x_k": const(_ffn_x_k),
    # train_temp's generate_init_weight: plain orthogonal_(gain=1) on (dim_ffn, C), no sqrt(4)
    # shape gain (that one is rwkv7_train_simplified.py's): std 1/sqrt(dim_ffn)
    "ffn.key.weight": orthogonal(1.0),
    "ffn.value.weight": zeros,
}


LAYER0_VALUE_RESIDUAL = ("att.v0", "att.v1", "att.v2")


def layer0_value_residual(cfg: ModelConfig) -> dict[str, Tensor]:
    """Layer 0's ``att.v0``/``v1``/``v2`` at their official init values, as BlinkDL's files carry them.

    BlinkDL's layer 0 has these parameters although it never uses them, and its trainer loads
    strictly; our layer 0 has none (they would be dead weights in the optimizer), so they are
    added to every .pth we write. The RNG is fixed and forked so that a written file depends on,
    and advances, no global random state.
    """
    C, Dv = cfg.n_embd, cfg.value_lora
    shapes = {"att.v0": (1, 1, C), "att.v1": (C, Dv), "att.v2": (Dv, C)}
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name in LAYER0_VALUE_RESIDUAL:
            param = torch.empty(shapes[name])
            V7_INIT[name](param, cfg, 0)
            out[f"blocks.0.{name}"] = param
    return out
