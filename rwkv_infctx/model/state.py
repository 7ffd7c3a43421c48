"""The recurrent state carried from chunk to chunk (the "infinite context")."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class RecurrentState(NamedTuple):
    """Every layer's state, stacked on a leading layer axis.

    att_shift: (L, B, C)        last input of each time-mix (token shift), model dtype
    wkv:       (L, B, H, N, N)  WKV state [key, value], always float32
    ffn_shift: (L, B, C)        last input of each channel-mix (token shift), model dtype
    A tuple of plain tensors, so it passes through activation checkpointing unchanged.
    """

    att_shift: Tensor
    wkv: Tensor
    ffn_shift: Tensor

    @classmethod
    def zeros(cls, n_layer: int, batch: int, n_embd: int, n_head: int, head_size: int,
              device=None, dtype=torch.float32) -> "RecurrentState":
        shift = torch.zeros(n_layer, batch, n_embd, device=device, dtype=dtype)
        wkv = torch.zeros(n_layer, batch, n_head, head_size, head_size, device=device, dtype=torch.float32)
        return cls(shift, wkv, shift.clone())

    def detach(self) -> "RecurrentState":
        return RecurrentState(*(t.detach() for t in self))

    def layer(self, i: int) -> "RecurrentState":
        """Layer i's slice (no layer axis)."""
        return RecurrentState(self.att_shift[i], self.wkv[i], self.ffn_shift[i])

    @classmethod
    def stack(cls, layers: list["RecurrentState"]) -> "RecurrentState":
        return cls(*(torch.stack(parts) for parts in zip(*layers)))
