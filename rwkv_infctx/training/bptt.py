"""Infinite context: a sample of any length is processed in chunks of ``ctx_len`` tokens with the
recurrent state carried between chunks.

Memory stays flat because each chunk's forward runs under activation checkpointing: only the
chunk-boundary states (a few MB) are kept, and the chunk is recomputed in the backward pass. The
last chunk is the exception: its backward runs first, right after its forward, so keeping its
activations costs no extra peak memory, and a sample of one chunk runs its forward only once.
Gradients flow through the carried state (exact BPTT) unless ``bptt_truncate`` detaches it.
The head and the loss run after the chunk loop, over all the chunks' hidden states at once but in
slices of tokens, so neither the vocabulary-sized logits nor their recomputation cost memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..model import RWKV, RecurrentState


@dataclass
class SampleLoss:
    loss: Tensor  # mean cross-entropy per valid token of this batch (differentiable)
    loss_sum: Tensor  # summed over valid tokens (for token-weighted averages across batches)
    n_tokens: Tensor  # number of valid tokens
    n_chunks: int


def chunked_sample_loss(
    model: RWKV,
    input_ids: Tensor,
    targets: Tensor,
    mask: Tensor,
    ctx_len: int,
    bptt_truncate: bool = False,
    recompute: bool = True,
    l2wrap: float = 0.0,
    state: RecurrentState | None = None,
) -> SampleLoss:
    """Mean next-token loss of whole samples (B, T), cut into chunks of ctx_len tokens."""
    B, T = input_ids.shape
    state = model.empty_state(B, input_ids.device) if state is None else state
    mask = mask.float()

    def run_chunk(ids, *state_parts):
        hidden, new_state = model.hidden(ids, RecurrentState(*state_parts))
        return (hidden, *new_state)

    hiddens = []
    for start in range(0, T, ctx_len):
        chunk = slice(start, start + ctx_len)
        if bptt_truncate:
            state = state.detach()
        args = (input_ids[:, chunk], *state)
        is_last = start + ctx_len >= T
        if recompute and torch.is_grad_enabled() and not is_last:
            hidden, *parts = checkpoint(run_chunk, *args, use_reentrant=False)
        else:
            hidden, *parts = run_chunk(*args)
        state = RecurrentState(*parts)
        hiddens.append(hidden)
    n_chunks = len(hiddens)
    # The head and the loss run once over every chunk's hidden states (B x T x n_embd, small),
    # outside the recomputed chunks, in token slices: see ops/head_loss.py.
    hidden = torch.cat(hiddens, 1) if hiddens else input_ids.new_zeros((B, 0, model.cfg.n_embd), dtype=torch.float32)
    ran = hidden.shape[1]
    loss_sum = model.head(hidden, targets[:, :ran], mask[:, :ran], l2wrap)
    n_tokens = mask.sum()
    return SampleLoss(loss_sum / n_tokens.clamp(min=1), loss_sum.detach(), n_tokens, n_chunks)
