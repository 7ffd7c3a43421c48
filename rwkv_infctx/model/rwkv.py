"""The RWKV language model: embedding, a stack of blocks, head; state in, state out.

What differs between versions (time-mix, channel-mix, their init) lives in ``v5.py``/``v6.py``/
``v7.py``; everything here is shared.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import get_backend
from .layers import Head
from .state import RecurrentState
from .v5 import V5_INIT, ChannelMixV5, TimeMixV5
from .v6 import V6_INIT, ChannelMixV6, TimeMixV6
from .v7 import V7_INIT, ChannelMixV7, TimeMixV7


class VersionSpec(NamedTuple):
    """Everything that differs between RWKV generations, as data."""

    time_mix: type[nn.Module]  # (cfg, layer_id, wkv_backend); forward(x, shift, wkv, v_first)
    channel_mix: type[nn.Module]  # (cfg, layer_id); forward(x, shift)
    init: dict[str, Callable]  # block parameter name -> official init rule
    # config field -> (state-dict key, axis): where a .pth records each size that is not
    # n_layer/n_embd/vocab_size (keys of blocks.1 are absent from 1-layer models: default then)
    shape_dims: dict[str, tuple[str, int]]
    double_lr: tuple[str, ...]  # parameter name suffixes BlinkDL trains at 2x the learning rate (the decay bias)


VERSIONS: dict[str, VersionSpec] = {
    "x052": VersionSpec(TimeMixV5, ChannelMixV5, V5_INIT, {
        "head_size": ("blocks.0.att.time_faaaa", 1),
        "dim_ffn": ("blocks.0.ffn.key.weight", 0),
    }, ("att.time_decay",)),
    "x060": VersionSpec(TimeMixV6, ChannelMixV6, V6_INIT, {
        "head_size": ("blocks.0.att.time_faaaa", 1),
        "dim_ffn": ("blocks.0.ffn.key.weight", 0),
        "mix_lora": ("blocks.0.att.time_maa_w2", 1),
        "decay_lora": ("blocks.0.att.time_decay_w1", 1),
    }, ("att.time_decay",)),
    "x070": VersionSpec(TimeMixV7, ChannelMixV7, V7_INIT, {
        "head_size": ("blocks.0.att.r_k", 1),
        "dim_ffn": ("blocks.0.ffn.key.weight", 0),
        "decay_lora": ("blocks.0.att.w1", 1),
        "iclr_lora": ("blocks.0.att.a1", 1),
        "value_lora": ("blocks.1.att.v1", 1),
        "gate_lora": ("blocks.0.att.g1", 1),
    }, ("att.w0",)),
}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, wkv_backend: str):
        super().__init__()
        spec = VERSIONS[cfg.version]
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)  # normalises the embedding once, as BlinkDL's
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = spec.time_mix(cfg, layer_id, wkv_backend)
        self.ffn = spec.channel_mix(cfg, layer_id)

    def forward(self, x: Tensor, v_first: Tensor | None, state: RecurrentState):
        if self.layer_id == 0:
            x = self.ln0(x)
        att, att_shift, wkv, v_first = self.att(self.ln1(x), state.att_shift, state.wkv, v_first)
        x = x + att
        ffn, ffn_shift = self.ffn(self.ln2(x), state.ffn_shift)
        x = x + ffn
        return x, v_first, RecurrentState(att_shift, wkv, ffn_shift)


class RWKV(nn.Module):
    """forward(idx (B, T), state) -> (logits (B, T, V), new state). Any T; the state carries the past."""

    def __init__(self, cfg: ModelConfig, wkv_backend: str = "chunked"):
        super().__init__()
        get_backend(wkv_backend)  # fail early on an unknown name
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i, wkv_backend) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = Head(cfg.n_embd, cfg.vocab_size)
        # A state-tuned model's learned starting WKV state (L, H, N, N) [key, value], or None (zeros).
        self.register_buffer("initial_wkv", None)

    def set_wkv_backend(self, name: str) -> None:
        get_backend(name)
        for block in self.blocks:
            block.att.wkv_backend = name

    def empty_state(self, batch_size: int, device=None) -> RecurrentState:
        cfg = self.cfg
        device = device if device is not None else self.emb.weight.device
        state = RecurrentState.zeros(cfg.n_layer, batch_size, cfg.n_embd, cfg.n_head, cfg.head_size,
                                     device=device, dtype=self.emb.weight.dtype)
        if self.initial_wkv is not None:
            state.wkv.copy_(self.initial_wkv.unsqueeze(1).expand_as(state.wkv))
        return state

    def hidden(self, idx: Tensor, state: RecurrentState | None = None) -> tuple[Tensor, RecurrentState]:
        """Final normalised hidden states (B, T, C), before the head."""
        if state is None:
            state = self.empty_state(idx.shape[0], idx.device)
        x = self.emb(idx)
        v_first = None
        new_states = []
        for i, block in enumerate(self.blocks):
            x, v_first, layer_state = block(x, v_first, state.layer(i))
            new_states.append(layer_state)
        return self.ln_out(x), RecurrentState.stack(new_states)

    def forward(self, idx: Tensor, state: RecurrentState | None = None) -> tuple[Tensor, RecurrentState]:
        x, state = self.hidden(idx, state)
        return self.head(x), state

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official per-parameter initialisation of this version (BlinkDL's fresh-model init)."""
        cfg = self.cfg
        table = VERSIONS[cfg.version].init
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        head_gain = 0.5 * (cfg.vocab_size / cfg.n_embd) ** 0.5 if cfg.vocab_size > cfg.n_embd else 0.5
        nn.init.orthogonal_(self.head.weight, gain=head_gain)
        for norm in [self.ln_out] + [m for b in self.blocks for m in (b.ln1, b.ln2, getattr(b, "ln0", None)) if m]:
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)
        for i, block in enumerate(self.blocks):
            for name, param in block.named_parameters():
                if name.startswith(("ln0.", "ln1.", "ln2.")):
                    continue
                if name not in table:
                    raise KeyError(f"no init rule for blocks.{i}.{name} in the {cfg.version} table")
                table[name](param, cfg, i)
