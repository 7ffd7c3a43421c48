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

Both run all blocks at once where they can (``_wkv7_all_blocks``, ``_wkv6_all_blocks``): the pair ratios G_t / G_s
factor as (G_t) * (1 / G_s), so each block's pair terms are plain L x L matrix products instead of
(L, L, N) elementwise tensors, and the state recursion reduces to S_{j+1} = M_j S_j + C_j per
block (the "WY" form of flash-linear-attention's chunk kernels): one small product per block is
all that runs in sequence. 1 / G_s grows as the decay strengthens, so this form is used only while
every block's total log-decay stays within ``FACTORED_LOG_DECAY_LIMIT`` (always, for x070's
clamped decays: at most 0.61 per token); stronger decays (possible in v5/v6) take the per-block
pairwise paths below, which stay exact for any decay.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import float32_arithmetic, zero_state

# Measured on 2 CPU cores (B 4, T 256, H 4, N 64, forward + backward): WKV-7 factored 54 ms at
# 16-token blocks, 40 at 32, 39 at 64, pairwise 144 at 16; WKV-6 24 / 18 / 16, pairwise 83. The
# pairwise path's (L, L, N) tensors make it slower beyond 16 tokens. 32 keeps x070's strongest
# block (32 x 0.61 = 19.4) within the limit below.
DEFAULT_BLOCK_LEN = 32
PAIRWISE_BLOCK_LEN = 16
# exp(30) ~ 1e13 keeps every factored product far from float32's range (3e38) and the decays'
# relative rounding (|log G| times 6e-8) at the level of the pairwise path's.
FACTORED_LOG_DECAY_LIMIT = 30.0


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


def _in_blocks(seqs, block_len: int) -> list[Tensor]:
    """(B, T, H, N) tensors as float32 (B, H, T / L, L, N), T zero-padded to a multiple of L.

    Zero padding is inert at the end of a sequence: decay exp(0) = 1 and nothing written or read."""
    B, T, H, N = seqs[0].shape
    pad = -T % block_len
    blocks = []
    for x in seqs:
        x = x.float().transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        blocks.append(x.reshape(B, H, (T + pad) // block_len, block_len, N))
    return blocks


def _factorable(w: Tensor, block_len: int) -> bool:
    """Whether every block's total log-decay is within FACTORED_LOG_DECAY_LIMIT (see the module doc)."""
    if w.device.type == "meta":
        return True
    block_sums = _in_blocks([w.detach()], block_len)[0].sum(3)
    return block_sums.numel() == 0 or -block_sums.min().item() <= FACTORED_LOG_DECAY_LIMIT


def _wkv7_all_blocks(r, w, k, v, a, b, state):
    """Every block at once; inputs (B, H, J, L, N) float32 (J blocks of L), state (B, H, K, V).

    Per block, with G_t = exp(log_g_t) and inv_s = 1 / G_s, the delta rows are
    u = P S_0 + u_c with (I - A_ab) [P | u_c] = [a G_{t-1} | A_ak v], A_xy = strict-lower x G y inv;
    then out = O_s S_0 + O_c and S_L = M S_0 + C, all computed for every block in parallel."""
    L, N = r.shape[-2], r.shape[-1]
    log_g = w.cumsum(3)
    log_g_last = log_g[..., -1:, :]
    a_scaled = a * (log_g - w).exp()  # a_t G_{t-1}
    r_scaled = r * log_g.exp()  # r_t G_t
    inv = (-log_g).exp()
    keys_t = torch.cat([b * inv, k * inv], 3).transpose(-1, -2)  # (.., K, 2L): [b / G | k / G]
    a_pairs, r_pairs = a_scaled @ keys_t, r_scaled @ keys_t  # (.., L, 2L)
    a_b, a_k = torch.tril(a_pairs[..., :L], -1), torch.tril(a_pairs[..., L:], -1)  # s < t
    r_b, r_k = torch.tril(r_pairs[..., :L]), torch.tril(r_pairs[..., L:])  # s <= t
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    solved = torch.linalg.solve_triangular(eye - a_b, torch.cat([a_scaled, a_k @ v], -1),
                                           upper=False, unitriangular=True)
    p, u_c = solved[..., :N], solved[..., N:]
    out_s, out_c = r_scaled + r_b @ p, r_b @ u_c + r_k @ v
    to_end = (log_g_last - log_g).exp()  # G_L / G_s <= 1
    b_end = (b * to_end).transpose(-1, -2)
    carry = b_end @ p + torch.diag_embed(log_g_last.squeeze(-2).exp())  # (.., K, K)
    written = b_end @ u_c + (k * to_end).transpose(-1, -2) @ v  # (.., K, V)
    starts = []
    for j in range(r.shape[2]):  # the only sequential part: one (K, K) x (K, V) product per block
        starts.append(state)
        state = carry[:, :, j] @ state + written[:, :, j]
    out = out_s @ torch.stack(starts, 2) + out_c if starts else out_c
    return out, state


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
    if not _factorable(w, block_len):
        return _scan_blocks(_wkv7_block, (r, w, k, v, a, b), initial_state, min(block_len, PAIRWISE_BLOCK_LEN))
    T = r.shape[1]
    state = zero_state(r) if initial_state is None else initial_state.float()
    out, state = _wkv7_all_blocks(*_in_blocks((r, w, k, v, a, b), block_len), state)
    return out.flatten(2, 3)[:, :, :T].transpose(1, 2).to(r.dtype), state


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


def _wkv6_all_blocks(r, w, k, v, u, state):
    """Every block at once (the factored form, as _wkv7_all_blocks); inputs (B, H, J, L, N) float32,
    u (H, N), state (B, H, K, V)."""
    log_g = w.cumsum(3)
    log_g_last = log_g[..., -1:, :]
    r_scaled = r * (log_g - w).exp()  # r_t G_{t-1}: the state holds tokens before t
    pairs = torch.tril(r_scaled @ (k * (-log_g).exp()).transpose(-1, -2), -1)  # s < t
    bonus = (r * u[:, None, None] * k).sum(-1, keepdim=True)  # the current token, via u only
    out_c = pairs @ v + bonus * v
    written = (k * (log_g_last - log_g).exp()).transpose(-1, -2) @ v  # (.., K, V)
    block_decay = log_g_last.squeeze(-2).exp()[..., None]  # (.., K, 1)
    starts = []
    for j in range(r.shape[2]):  # the only sequential part: one scaled add per block
        starts.append(state)
        state = block_decay[:, :, j] * state + written[:, :, j]
    out = r_scaled @ torch.stack(starts, 2) + out_c if starts else out_c
    return out, state


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
    if not _factorable(w, block_len):
        return _scan_blocks(_wkv6_block, (r, w, k, v), initial_state, min(block_len, PAIRWISE_BLOCK_LEN),
                            u.float())
    T = r.shape[1]
    state = zero_state(r) if initial_state is None else initial_state.float()
    out, state = _wkv6_all_blocks(*_in_blocks((r, w, k, v), block_len), u.float(), state)
    return out.flatten(2, 3)[:, :, :T].transpose(1, 2).to(r.dtype), state
