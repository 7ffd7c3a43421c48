"""Readable float32 references of the WKV recurrences.

Every fast path (the chunk-parallel PyTorch path here, CUDA and Triton kernels later) is tested
against these loops. They favour clarity over speed: one token at a time, exactly as the
recurrence is written in the RWKV papers.

Layout conventions shared by every WKV op in this package:
    r, w, k, v, a, b : (B, T, H, N)   batch, time, heads, head size
    u                : (H, N)         the per-head bonus of RWKV-5/6 ("time_faaaa")
    state            : (B, H, N, N)   float32, indexed [batch, head, key, value]
    output           : (B, T, H, N)   same dtype as ``r``
``w`` is the natural log of the per-channel decay (w <= 0, decay = exp(w)), so every backend
receives the same, already-activated quantity. The state layout [key, value] is the one
flash-linear-attention uses; BlinkDL's x070 kernels keep [value, key] and are converted at the
edges (see ``rwkv_infctx.checkpoint``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def float32_arithmetic(wkv_op):
    """Run a WKV op with autocast off: under bf16/fp16 autocast its products with the state would
    run in half precision, and their rounding would pile up in the state from chunk to chunk.
    (The ops cast their inputs to float32 themselves.)"""

    @functools.wraps(wkv_op)
    def wrapper(r: Tensor, *args, **kwargs):
        if not torch.amp.is_autocast_available(r.device.type):  # e.g. meta tensors: nothing to switch off
            return wkv_op(r, *args, **kwargs)
        with torch.autocast(r.device.type, enabled=False):
            return wkv_op(r, *args, **kwargs)

    return wrapper


def zero_state(r: Tensor) -> Tensor:
    B, _, H, N = r.shape
    return torch.zeros(B, H, N, N, dtype=torch.float32, device=r.device)


@float32_arithmetic
def wkv7_reference(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-7 (x070) generalised delta rule, one token at a time.

    For each token t, with S of shape (N_key, N_value):
        S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
        o_t = S_t^T r_t
    In the model a = -kk and b = kk * iclr (kk the normalised key), which makes the middle term
    the delta-rule "forget what kk pointed at" update.

    Returns (output (B, T, H, N) in r.dtype, final state (B, H, N, N) float32).
    """
    out_dtype = r.dtype
    r, w, k, v, a, b = (x.float() for x in (r, w, k, v, a, b))
    state = zero_state(r) if initial_state is None else initial_state.float()
    decay = w.exp()
    outputs = []
    for t in range(r.shape[1]):
        sa = torch.einsum("bhk,bhkv->bhv", a[:, t], state)  # (B, H, V)
        state = (
            decay[:, t, :, :, None] * state
            + b[:, t, :, :, None] * sa[:, :, None, :]
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        )
        outputs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], state))
    out = torch.stack(outputs, dim=1) if outputs else torch.zeros_like(v)
    return out.to(out_dtype), state


@float32_arithmetic
def wkv6_reference(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    u: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-6 (x060) and RWKV-5 (x052, with ``w`` constant in time), one token at a time.

    For each token t, with S of shape (N_key, N_value) and u the per-head bonus ("time_faaaa"):
        o_t = (S_{t-1} + diag(u) k_t v_t^T)^T r_t
        S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T
    The current token enters the output through the bonus only, and the state only afterwards
    (BlinkDL's wkv5/wkv6 CUDA kernels).

    u: (H, N). Returns (output (B, T, H, N) in r.dtype, final state (B, H, N, N) float32).
    """
    out_dtype = r.dtype
    r, w, k, v, u = (x.float() for x in (r, w, k, v, u))
    state = zero_state(r) if initial_state is None else initial_state.float()
    decay = w.exp()
    outputs = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        outputs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], state + u[:, :, None] * kv))
        state = decay[:, t, :, :, None] * state + kv
    out = torch.stack(outputs, dim=1) if outputs else torch.zeros_like(v)
    return out.to(out_dtype), state
