"""Per-chunk loss pieces: masked cross-entropy and BlinkDL's L2Wrap logit regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward, pushes each token's largest logit towards 0.

    BlinkDL's regulariser keeps logits from drifting upwards (which hurts bf16 training). The
    extra gradient is ``factor * max_logit`` at the argmax of every unmasked token, scaled by the
    loss's own incoming gradient, so it follows the loss normalisation (per valid token).
    """

    @staticmethod
    def forward(ctx, loss: Tensor, logits: Tensor, mask: Tensor, factor: float) -> Tensor:
        max_logit, argmax = logits.detach().max(dim=-1, keepdim=True)
        ctx.save_for_backward(max_logit * mask.unsqueeze(-1) * factor, argmax)
        ctx.logits_meta = (logits.shape, logits.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        push, argmax = ctx.saved_tensors
        shape, dtype = ctx.logits_meta
        grad_logits = torch.zeros(shape, dtype=dtype, device=push.device)
        grad_logits.scatter_(-1, argmax, (push * grad_loss).to(dtype))
        return grad_loss, grad_logits, None, None


def masked_token_loss_sum(logits: Tensor, targets: Tensor, mask: Tensor, l2wrap: float = 0.0) -> Tensor:
    """Sum of next-token cross-entropy over tokens where mask is 1.

    logits (B, T, V), targets (B, T) int64, mask (B, T) float -> scalar (float32).
    """
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    loss_sum = (losses * mask.flatten()).sum()
    if l2wrap > 0 and torch.is_grad_enabled():
        loss_sum = L2Wrap.apply(loss_sum, logits, mask, l2wrap)
    return loss_sum
