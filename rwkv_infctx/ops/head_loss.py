"""The head and the loss in one op, over slices of tokens: the (tokens x vocab) logits never exist whole.

With the world vocabulary the logits dwarf everything else a small model computes (1024 tokens x
65536 x fp32 = 268 MB), and autograd would keep them, their log-softmax and their gradient. Here
each slice of tokens computes its logits, its masked cross-entropy, BlinkDL's L2Wrap push and, as
the loss is the end of the graph, at once its gradient w.r.t. the hidden states and the head
weight (for a unit incoming gradient; backward only scales them). So the head runs three matrix
products per token (as plain autograd does), nothing is recomputed, and peak memory is bounded by
one slice. The idea is flash-linear-attention's fused linear cross-entropy; the code is ours
because L2Wrap has to be folded into the same gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Tokens per slice: the slice's fp32 logits take about 64 MB whatever the vocabulary.
SLICE_ELEMENTS = 2**24


class _LinearLossSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, mask: Tensor, l2wrap: float,
                slice_tokens: int, with_grads: bool, weight_grad: bool) -> Tensor:
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grads else None
        # a frozen head (LoRA, state tuning) skips a third of the head's matrix products
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight_grad else None
        for start in range(0, hidden.shape[0], slice_tokens):
            part = slice(start, start + slice_tokens)
            h, tgt, msk = hidden[part], targets[part, None], mask[part, None]
            logits = F.linear(h, weight)  # model dtype (bf16 under autocast), as the plain head gives
            # softmax in as few passes over the (tokens x vocab) slice as possible, in place: max,
            # exp(x - max), sum, and one scaling that also applies the mask
            scores = logits.float()
            max_score, argmax = scores.max(-1, keepdim=True)
            target_score = scores.gather(-1, tgt)
            exp_scores = scores.sub_(max_score).exp_()
            total = exp_scores.sum(-1, keepdim=True)
            loss_sum += ((max_score + total.log() - target_score) * msk).sum()
            if not with_grads:
                continue
            grad_logits = exp_scores.mul_(msk / total)  # masked softmax
            grad_logits.scatter_add_(-1, tgt, -msk)
            if l2wrap > 0:  # BlinkDL's L2Wrap: push every token's largest logit towards 0
                grad_logits.scatter_add_(-1, argmax, max_score * msk * l2wrap)
            grad_logits = grad_logits.to(logits.dtype)
            grad_hidden[part] = grad_logits @ weight.to(logits.dtype)
            if weight_grad:
                grad_weight += (grad_logits.t() @ h.to(logits.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is None:
            raise RuntimeError("linear_loss_sum ran without gradients (under no_grad) and cannot backpropagate")
        weight_grad = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden * grad_loss.to(grad_hidden.dtype), weight_grad, None, None, None, None, None, None


def linear_loss_sum(hidden: Tensor, weight: Tensor, targets: Tensor, mask: Tensor, l2wrap: float = 0.0,
                    slice_tokens: int | None = None) -> Tensor:
    """Sum over tokens of mask * cross_entropy(hidden @ weight.T, targets), L2Wrap in the gradient.

    hidden (..., C), weight (V, C), targets (...) int64, mask (...) float -> scalar float32. The
    same loss and gradients as ``masked_token_loss_sum(F.linear(hidden, weight), ...)``.
    """
    hidden, targets, mask = hidden.flatten(0, -2), targets.flatten(), mask.flatten().float()
    slice_tokens = slice_tokens or max(1, SLICE_ELEMENTS // weight.shape[0])
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearLossSum.apply(hidden, weight, targets, mask, l2wrap if with_grads else 0.0, slice_tokens,
                                with_grads, with_grads and weight.requires_grad)
