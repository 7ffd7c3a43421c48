"""Small pieces shared by every RWKV version."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.head_loss import SharedWeightGrad, linear_loss_sum


def token_shift(x: Tensor, previous: Tensor) -> Tensor:
    """x shifted one step back in time, the carried last token of the previous chunk first.

    x: (B, T, C), previous: (B, C) -> (B, T, C)
    """
    return torch.cat([previous.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)


class Head(nn.Linear):
    """The output projection (vocab_size x n_embd, no bias): logits, or, given targets, the loss.

    With targets it returns the masked cross-entropy summed over tokens (L2Wrap folded into the
    gradient), computed in token slices so the logits never exist whole (``linear_loss_sum``).
    That path is a call of this module, not a use of its weight from outside, so that wrappers
    which gather sharded parameters around a module's forward (DeepSpeed ZeRO-3) see it.
    """

    def __init__(self, n_embd: int, vocab_size: int):
        super().__init__(n_embd, vocab_size, bias=False)

    def forward(self, x: Tensor, targets: Tensor | None = None, mask: Tensor | None = None,
                l2wrap: float = 0.0, weight_grad: SharedWeightGrad | None = None) -> Tensor:
        if targets is None:
            return super().forward(x)
        return linear_loss_sum(x, self.weight, targets, mask, l2wrap, weight_grad=weight_grad)
