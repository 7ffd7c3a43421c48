"""Infinite context: a sample of any length is processed in chunks of ``ctx_len`` tokens with the
recurrent state carried between chunks.

Memory stays flat because each chunk's blocks run under activation checkpointing: only the
chunk-boundary states (a few MB) are kept, and the chunk is recomputed in the backward pass. The
last chunk is the exception: its backward runs first, right after its forward, so keeping its
activations costs no extra peak memory, and a sample of one chunk runs its forward only once.
The head and the loss run outside the recomputation, once per token, in token slices with their
gradients computed on the way (ops/head_loss.py): the logits never exist whole, and the chunks
share one head-weight gradient. Gradients flow through the carried state (exact BPTT) unless
``bptt_truncate`` detaches it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..model import RWKV, RecurrentState
from ..ops.head_loss import SharedWeightGrad


# Measured (x070 L4 D256, ctx_len 128, one step on a CPU): a 64-chunk sample peaked 25-40% above a
# 2-chunk one, not for what autograd keeps (0.4 MB per chunk) but because glibc's heap fragments
# between the chunks' short-lived tensors and the few kept ones, and its freed pages stay resident.
# malloc_trim before every chunk after the first (forward and recompute) brought that to +4%
# (peak 1396 vs 1340 MiB); trimming every 2, 4 or 8 chunks left +10%, +14%, +15%.


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim (returns freed heap pages to the system), or None on other C libraries."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    return getattr(libc, "malloc_trim", None)


def _release_freed_host_memory(device: torch.device, chunk_index: int) -> None:
    if device.type == "cpu" and chunk_index:
        trim = _malloc_trim()
        if trim is not None:
            trim(0)


class StepAbandoned(SystemExit):
    """Raised between two chunks when ``should_stop()`` says so: the step is dropped unfinished
    (a SystemExit, so that uncaught it ends the program like Lightning's SIGTERMException)."""


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
    should_stop: Callable[[], bool] | None = None,
) -> SampleLoss:
    """Mean next-token loss of whole samples (B, T), cut into chunks of ctx_len tokens.

    ``should_stop`` is asked before every chunk after the first: a preempted job must not wait
    for a sample of thousands of chunks to end (it raises ``StepAbandoned``)."""
    B, T = input_ids.shape
    state = model.empty_state(B, input_ids.device) if state is None else state
    mask = mask.float()

    def run_blocks(chunk_index, ids, *state_parts):
        _release_freed_host_memory(ids.device, chunk_index)  # also when recomputed in the backward
        hidden, new_state = model.hidden(ids, RecurrentState(*state_parts))
        return (hidden, *new_state)

    head_weight_grad = SharedWeightGrad()
    loss_sum = torch.zeros((), device=input_ids.device)
    n_chunks = 0
    for start in range(0, T, ctx_len):
        if start and should_stop is not None and should_stop():
            raise StepAbandoned()
        chunk = slice(start, start + ctx_len)
        if bptt_truncate:
            state = state.detach()
        is_last = start + ctx_len >= T
        if recompute and torch.is_grad_enabled() and not is_last:
            hidden, *parts = checkpoint(run_blocks, n_chunks, input_ids[:, chunk], *state, use_reentrant=False)
        else:
            hidden, *parts = run_blocks(n_chunks, input_ids[:, chunk], *state)
        state = RecurrentState(*parts)
        loss_sum = loss_sum + model.head(hidden, targets[:, chunk], mask[:, chunk], l2wrap, head_weight_grad)
        n_chunks += 1
    n_tokens = mask.sum()
    return SampleLoss(loss_sum / n_tokens.clamp(min=1), loss_sum.detach(), n_tokens, n_chunks)
