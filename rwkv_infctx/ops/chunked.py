"""Chunk-parallel pure-PyTorch WKV-7: the fast path for CPUs and the portable GPU fallback.

Within a block of L tokens the recurrence of ``wkv7_reference`` is solved in closed form, so a
block costs a handful of batched matrix products and one unit-triangular solve instead of L
sequential steps. Between blocks the state is carried exactly as in the reference.

Derivation (per head; S has shape (K, V); G_t = prod_{s<=t} exp(w_s), the cumulative decay):
    S_t = G_t * (S_0 + sum_{s<=t} (b_s / G_s) u_s^T + (k_s / G_s) v_s^T),   u_t = S_{t-1}^T a_t
so the "delta" rows u_t satisfy a lower-triangular system
    u_t = S_0^T (a_t * G_{t-1}) + sum_{s<t} <a_t, b_s G_{t-1}/G_s> u_s + <a_t, k_s G_{t-1}/G_s> v_s.
Every decay ratio G_t / G_s with s <= t is formed as exp(log G_t - log G_s) <= 1, never as a
quotient, so no intermediate overflows however strong the decay is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import zero_state

DEFAULT_BLOCK_LEN = 16


def _pair_decay(query_log: Tensor, key_log: Tensor, mask: Tensor) -> Tensor:
    """exp(query_log[t] - key_log[s]) where mask[t, s], else 0: (B, H, L, L, K)."""
    diff = query_log[:, :, :, None, :] - key_log[:, :, None, :, :]
    return torch.where(mask[:, :, None], diff, float("-inf")).exp()


def _pair_scores(x: Tensor, y: Tensor, decay: Tensor) -> Tensor:
    """sum_k x[t, k] * y[s, k] * decay[t, s, k]: (B, H, L, L)."""
    return (x[:, :, :, None, :] * y[:, :, None, :, :] * decay).sum(-1)


def _wkv7_block(r, w, k, v, a, b, state):
    """One block; every input (B, H, L, N) float32, state (B, H, K, V)."""
    L = r.shape[2]
    log_g = w.cumsum(2)  # log G_t, inclusive of t
    log_g_prev = log_g - w  # log G_{t-1}
    lower = torch.ones(L, L, dtype=torch.bool, device=r.device).tril()
    strict = lower.tril(-1)

    decay_strict = _pair_decay(log_g_prev, log_g, strict)  # G_{t-1} / G_s, s < t
    decay_incl = _pair_decay(log_g, log_g, lower)  # G_t / G_s, s <= t

    a_b = _pair_scores(a, b, decay_strict)
    a_k = _pair_scores(a, k, decay_strict)
    rhs = (a * log_g_prev.exp()) @ state + a_k @ v  # (B, H, L, V)
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    u = torch.linalg.solve_triangular(eye - a_b, rhs, upper=False, unitriangular=True)

    out = (r * log_g.exp()) @ state + _pair_scores(r, b, decay_incl) @ u
    out = out + _pair_scores(r, k, decay_incl) @ v

    log_g_last = log_g[:, :, -1:, :]
    to_end = (log_g_last - log_g).exp()  # G_L / G_s
    new_state = log_g_last.squeeze(2).exp()[..., None] * state
    new_state = new_state + (b * to_end).transpose(2, 3) @ u + (k * to_end).transpose(2, 3) @ v
    return out, new_state


def wkv7_chunked(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    block_len: int = DEFAULT_BLOCK_LEN,
) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv7_reference``; any T (the last block may be shorter)."""
    out_dtype = r.dtype
    r, w, k, v, a, b = (x.float().transpose(1, 2) for x in (r, w, k, v, a, b))  # (B, H, T, N)
    state = zero_state(r.transpose(1, 2)) if initial_state is None else initial_state.float()
    outputs = []
    for start in range(0, r.shape[2], block_len):
        block = slice(start, start + block_len)
        out, state = _wkv7_block(r[:, :, block], w[:, :, block], k[:, :, block],
                                 v[:, :, block], a[:, :, block], b[:, :, block], state)
        outputs.append(out)
    out = torch.cat(outputs, dim=2) if outputs else torch.zeros_like(v)
    return out.transpose(1, 2).to(out_dtype), state
