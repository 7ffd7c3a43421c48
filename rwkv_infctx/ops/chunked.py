"""Chunk-parallel pure-PyTorch WKV-7 and WKV-6: the fast path for CPUs and the portable GPU fallback.

Within a block of L tokens the recurrences of ``wkv7_reference`` and ``wkv6_reference`` are solved
in closed form, so a block costs a handful of batched matrix products (and, for WKV-7, one
unit-triangular solve) instead of L sequential steps. Between blocks the state is carried exactly
as in the reference.

WKV-7 derivation (per head; S has shape (K, V); G_t = prod_{s<=t} exp(w_s), the cumulative decay):
    S_t = G_t * (S_0 + sum_{s<=t} (b_s / G_s) u_s^T + (k_s / G_s) v_s^T),   u_t = S_{t-1}^T a_t
so the "delta" rows u_t satisfy a lower-triangular system
    u_t = S_0^T (a_t * G_{t-1}) + sum_{s<t} <a_t, b_s G_{t-1}/G_s> u_s + <a_t, k_s G_{t-1}/G_s> v_s.
Every decay ratio G_t / G_s with s <= t is formed as exp(log G_t - log G_s) <= 1, never as a
quotient, so no intermediate overflows however strong the decay is.

WKV-6 is the special case without the delta term, plus the bonus u of the current token:
    S_{t-1} = G_{t-1} * S_0 + sum_{s<t} (G_{t-1} / G_s) * k_s v_s^T
    o_t     = S_{t-1}^T r_t + <r_t, u * k_t> v_t
Its decays are unbounded (x070 clamps them to >= exp(-0.61) per token), so there each log ratio is
summed over the tokens it spans instead of taken as a difference of running sums; see _wkv6_block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import float32_arithmetic, zero_state

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


def _scan_blocks(block_fn, seqs, initial_state, block_len, *constants):
    """Run block_fn over consecutive blocks of the (B, T, H, N) tensors in seqs, carrying the state.

    Everything is handed to block_fn as float32 in (B, H, L, N) layout; the output comes back in
    the dtype and layout of seqs[0].
    """
    out_dtype = seqs[0].dtype
    seqs = [x.float().transpose(1, 2) for x in seqs]
    state = zero_state(seqs[0].transpose(1, 2)) if initial_state is None else initial_state.float()
    outputs = []
    for start in range(0, seqs[0].shape[2], block_len):
        block = slice(start, start + block_len)
        out, state = block_fn(*(x[:, :, block] for x in seqs), *constants, state)
        outputs.append(out)
    out = torch.cat(outputs, dim=2) if outputs else torch.zeros_like(seqs[-1])
    return out.transpose(1, 2).to(out_dtype), state


@float32_arithmetic
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
    return _scan_blocks(_wkv7_block, (r, w, k, v, a, b), initial_state, block_len)


def _sum_before(x: Tensor, dim: int) -> Tensor:
    """Exclusive cumsum: at each position, the sum of x over the positions strictly before it."""
    running = x.cumsum(dim).narrow(dim, 0, x.shape[dim] - 1)
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), running], dim)


def _sum_after(x: Tensor, dim: int) -> Tensor:
    """At each position, the sum of x over the positions strictly after it."""
    return _sum_before(x.flip(dim), dim).flip(dim)


def _wkv6_block(r, w, k, v, u, state):
    """One block; r, w, k, v (B, H, L, N) float32, u (H, N), state (B, H, K, V).

    Every log-decay is summed over exactly the tokens it spans, never formed as a difference of
    two running sums: RWKV-6's decays are unbounded, a block's running sum can reach -1000, and
    the difference of two such sums would lose all precision of the small decays between them.
    """
    L = r.shape[2]
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    # between[t, s] = exp(sum of w over s < tau < t): what is left of token s's write at token t's read
    spanned = torch.where(strict[:, :, None], w[:, :, None], 0.0)  # [t, tau] = w_tau for tau < t
    between = torch.where(strict[:, :, None], _sum_after(spanned, 3), float("-inf")).exp()
    scores = _pair_scores(r, k, between)  # earlier tokens of the block, via the state
    bonus = (r * u[:, None] * k).sum(-1, keepdim=True)  # the current token, via u only
    out = (r * _sum_before(w, 2).exp()) @ state + scores @ v + bonus * v

    to_end = _sum_after(w, 2).exp()
    whole = w.sum(2).exp()
    new_state = whole[..., None] * state + (k * to_end).transpose(2, 3) @ v
    return out, new_state


@float32_arithmetic
def wkv6_chunked(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    u: Tensor,
    initial_state: Tensor | None = None,
    block_len: int = DEFAULT_BLOCK_LEN,
) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv6_reference``; any T (the last block may be shorter)."""
    return _scan_blocks(_wkv6_block, (r, w, k, v), initial_state, block_len, u.float())
