"""Small pieces shared by every RWKV version."""

from __future__ import annotations

import torch
from torch import Tensor


def token_shift(x: Tensor, previous: Tensor) -> Tensor:
    """x shifted one step back in time, the carried last token of the previous chunk first.

    x: (B, T, C), previous: (B, C) -> (B, T, C)
    """
    return torch.cat([previous.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)
