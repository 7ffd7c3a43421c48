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
from torch import Tensor

# Tokens per slice: the slice's fp32 logits take about 64 MB whatever the vocabulary.
SLICE_ELEMENTS = 2**24


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype F.linear would compute the logits in here (autocast's, when it is on)."""
    device = hidden.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class SharedWeightGrad:
    """One float32 head-weight gradient for all the chunks of a sample.

    Each chunk's loss op adds its weight gradient here in its forward, instead of keeping a
    vocab x n_embd tensor per chunk until the backward (64 MB each with the world vocabulary): so
    the head can run outside the recomputed chunks, once per token. The chunks' losses enter the
    sample's loss summed, so every op receives the same incoming gradient; the last op to run
    backward checks that and returns the whole gradient, the others return none.
    """

    def __init__(self) -> None:
        self.buffer: Tensor | None = None
        self.grad_loss: Tensor | None = None
        self.pending = 0

    def open(self, weight: Tensor) -> Tensor:
        """The buffer an op adds its contribution to; the op's backward must then call ``take``."""
        self.pending += 1
        if self.buffer is None:
            self.buffer = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        return self.buffer

    def take(self, grad_loss: Tensor) -> Tensor | None:
        """The op's share of the weight gradient: all of it for the last op, else None."""
        if self.grad_loss is None:
            self.grad_loss = grad_loss.detach().clone()
        elif not torch.allclose(self.grad_loss, grad_loss, rtol=0.0, atol=0.0, equal_nan=True):  # NaN steps too
            raise RuntimeError("SharedWeightGrad: the chunk losses must enter the total loss with equal weight")
        self.pending -= 1
        if self.pending:
            return None
        grad, self.buffer, self.grad_loss = self.buffer.mul_(grad_loss), None, None
        return grad


class _LinearLossSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, mask: Tensor, l2wrap: float,
                slice_tokens: int, with_grads: bool, weight_grad: SharedWeightGrad | None) -> Tensor:
        dtype = _compute_dtype(hidden, weight)
        grad_weight = weight_grad.open(weight) if weight_grad is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            loss_sum, grad_hidden = _LinearLossSum._slices(
                hidden, weight.to(dtype), targets, mask, l2wrap, slice_tokens, with_grads, grad_weight)
        ctx.save_for_backward(grad_hidden)
        ctx.weight_grad, ctx.weight_dtype = weight_grad, weight.dtype
        return loss_sum

    @staticmethod
    def _slices(hidden, weight, targets, mask, l2wrap, slice_tokens, with_grads, grad_weight):
        """The loop over token slices, with weight already in the compute dtype.

        The slices' logits and scores live in buffers allocated once: a fresh 64 MB tensor per slice
        comes straight from the kernel (mmap) and is page-faulted in at first touch, which cost
        about a third of the head's time on a CPU."""
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grads else None
        # grad_weight is None for a frozen head (LoRA, state tuning): a third of the products skipped
        rows = min(slice_tokens, hidden.shape[0])
        logits_buffer = hidden.new_empty((rows, weight.shape[0]), dtype=weight.dtype)
        separate_scores = weight.dtype != torch.float32  # bf16/fp16 logits: the softmax runs on a float32 copy
        scores_buffer = torch.empty_like(logits_buffer, dtype=torch.float32) if separate_scores else logits_buffer
        for start in range(0, hidden.shape[0], slice_tokens):
            part = slice(start, start + slice_tokens)
            h, tgt, msk = hidden[part].to(weight.dtype), targets[part, None], mask[part, None]
            logits = torch.mm(h, weight.t(), out=logits_buffer[:h.shape[0]])
            scores = scores_buffer[:h.shape[0]].copy_(logits) if separate_scores else logits
            # softmax in as few passes over the (tokens x vocab) slice as possible, in place: max,
            # exp(x - max), sum, and one scaling that also applies the mask
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
            if separate_scores:  # back to the compute dtype, as the plain head's gradient
                grad_logits = logits.copy_(grad_logits)
            grad_hidden[part] = grad_logits @ weight
            if grad_weight is None:
                continue
            if grad_logits.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.t(), h)
            else:
                grad_weight += (grad_logits.t() @ h).float()
        return loss_sum, grad_hidden

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            raise RuntimeError("linear_loss_sum ran without gradients (under no_grad) and cannot backpropagate")
        weight_grad = None if ctx.weight_grad is None else ctx.weight_grad.take(grad_loss)
        if weight_grad is not None:
            weight_grad = weight_grad.to(ctx.weight_dtype)
        return grad_hidden * grad_loss.to(grad_hidden.dtype), weight_grad, None, None, None, None, None, None


def linear_loss_sum(hidden: Tensor, weight: Tensor, targets: Tensor, mask: Tensor, l2wrap: float = 0.0,
                    slice_tokens: int | None = None, weight_grad: SharedWeightGrad | None = None) -> Tensor:
    """Sum over tokens of mask * cross_entropy(hidden @ weight.T, targets), L2Wrap in the gradient.

    hidden (..., C), weight (V, C), targets (...) int64, mask (...) float -> scalar float32. The
    same loss and gradients as ``masked_token_loss_sum(F.linear(hidden, weight), ...)``. Calls
    whose losses are summed may share one ``weight_grad`` (see SharedWeightGrad).
    """
    hidden, targets, mask = hidden.flatten(0, -2), targets.flatten(), mask.flatten().float()
    slice_tokens = slice_tokens or max(1, SLICE_ELEMENTS // weight.shape[0])
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if with_grads and weight.requires_grad:
        weight_grad = weight_grad or SharedWeightGrad()
    else:
        weight_grad = None
    return _LinearLossSum.apply(hidden, weight, targets, mask, l2wrap if with_grads else 0.0, slice_tokens,
                                with_grads, weight_grad)
