"""WKV-6 (also RWKV-5's op): the reference against an independent formulation, the chunked path against it."""

import pytest
import torch

from rwkv_infctx.ops import BACKENDS, wkv6
from rwkv_infctx.ops.chunked import wkv6_chunked
from rwkv_infctx.ops.reference import wkv6_reference

from .helpers import assert_bf16_close, assert_wkv_close, forward_backward, in_two_calls, rel_err, wkv6_inputs


def attention_form(r, w, k, v, u, s0):
    """Independent formulation: every output as an explicit sum over earlier tokens with the
    decays multiplied out (float64 products, no logs, no recurrence):
        o_t = (r_t * D(0, t)) S_0 + sum_{s<t} <r_t, k_s * D(s, t)> v_s + <r_t, u * k_t> v_t,
    D(s, t) = prod_{s<tau<t} exp(w_tau); the final state S_T likewise."""
    r, w, k, v, u, s0 = (x.double() for x in (r, w, k, v, u, s0))
    B, T, H, N = r.shape
    d = w.exp()

    def D(s, t):  # decay applied to what token s wrote, as seen by token t (exclusive both ends)
        return d[:, s + 1:t].prod(1) if t > s + 1 else torch.ones(B, H, N, dtype=torch.float64)

    out = torch.zeros(B, T, H, N, dtype=torch.float64)
    for t in range(T):
        out[:, t] = torch.einsum("bhk,bhkv->bhv", r[:, t] * D(-1, t), s0)
        for s in range(t):
            out[:, t] += (r[:, t] * k[:, s] * D(s, t)).sum(-1, keepdim=True) * v[:, s]
        out[:, t] += (r[:, t] * u * k[:, t]).sum(-1, keepdim=True) * v[:, t]
    state = D(-1, T)[..., None] * s0
    for s in range(T):
        state = state + (k[:, s] * D(s, T))[..., None] * v[:, s, :, None, :]
    return out, state


def test_reference_matches_attention_form():
    xs, s0 = wkv6_inputs(T=12)
    out, state = wkv6_reference(*xs, initial_state=s0)
    out2, state2 = attention_form(*xs, s0)
    assert rel_err(out, out2) < 1e-6 and rel_err(state, state2) < 1e-6


def test_reference_hand_computed_two_tokens():
    # One head of size 2, zero initial state, u = (2, 1), decay (0.5, 1) at the second token.
    #   y_1 = <r_1, u k_1> v_1 = (1*2*0.5 + 2*1*(-1)) v_1 = -v_1 ;  S_1 = k_1 v_1^T
    #   y_2 = <r_2, k_1> v_1 + <r_2, u k_2> v_2 = 0.5 v_1 + 2 v_2
    #   S_2 = diag(0.5, 1) S_1 + k_2 v_2^T
    r = torch.tensor([[1.0, 2.0], [1.0, 0.0]]).view(1, 2, 1, 2)
    k = torch.tensor([[0.5, -1.0], [1.0, 1.0]]).view(1, 2, 1, 2)
    v = torch.tensor([[3.0, 4.0], [1.0, -1.0]]).view(1, 2, 1, 2)
    w = torch.tensor([[0.25, 0.25], [0.5, 1.0]]).log().view(1, 2, 1, 2)  # the first decay meets S_0 = 0
    u = torch.tensor([[2.0, 1.0]])
    out, state = wkv6_reference(r, w, k, v, u)
    assert torch.allclose(out.view(2, 2), torch.tensor([[-3.0, -4.0], [3.5, 0.0]]))
    assert torch.allclose(state.view(2, 2), torch.tensor([[1.75, 0.0], [-2.0, -5.0]]))


@pytest.mark.parametrize("backend", sorted(name for name, b in BACKENDS.items() if b.available() is None))
@pytest.mark.parametrize("T", [16, 15, 63], ids=lambda t: f"T{t}")
def test_state_round_trip(backend, T):
    """T tokens at once == T/2 then the rest with the state carried (fp32, atol 1e-5)."""
    xs, s0 = wkv6_inputs(T=T)
    out, state = wkv6(*xs, initial_state=s0, backend=backend)
    o, s2 = in_two_calls(BACKENDS[backend].wkv6, 6, T // 2)(*xs, initial_state=s0)
    torch.testing.assert_close(o, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 15, 16, 63], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("block_len", [16, 32])
def test_chunked_matches_reference_fp32(T, block_len):
    """Output, final state and the gradients of r, w, k, v, u and the initial state: rel. RMS < 1e-5."""
    xs, s0 = wkv6_inputs(B=2, T=T, H=2, N=16)
    ref = forward_backward(wkv6_reference, xs, s0)
    fast = forward_backward(lambda *a, **kw: wkv6_chunked(*a, block_len=block_len, **kw), xs, s0)
    assert_wkv_close(ref, fast, 6, 1e-5)


def test_time_constant_decay_as_rwkv5_uses_it():
    """x052 passes one (H, N) log-decay broadcast over batch and time; its gradient sums over both."""
    xs, s0 = wkv6_inputs(B=2, T=40, H=2, N=8)
    w_heads = xs[1][0, 0].clone()
    grads = []
    for fn in (wkv6_reference, wkv6_chunked):
        w = w_heads.clone().requires_grad_()
        out, state = fn(xs[0], w.expand_as(xs[0]), xs[2], xs[3], xs[4], initial_state=s0)
        (out.square().sum() + state.sum()).backward()
        grads.append(w.grad)
    assert grads[0].shape == (2, 8)
    assert rel_err(grads[1], grads[0]) < 1e-5


def test_chunked_bf16_inputs_close_to_fp32_reference():
    """bf16 inputs (fp32 state and accumulation): rel. RMS error against fp32 < 5e-3."""
    xs, s0 = wkv6_inputs(B=1, T=64, H=4, N=16)
    ref = forward_backward(wkv6_reference, xs, s0)
    fast = forward_backward(wkv6_chunked, [x.bfloat16() for x in xs], s0)
    assert_bf16_close(fast, ref)


def test_chunked_strong_decay_is_finite_and_exact():
    """RWKV-5/6 decays are unbounded (exp(-exp(w))). With half the log-decays at -100 a block's
    cumulative decay reaches exp(-1600), whose inverse overflows, and the mild decays between
    two strong ones are lost if taken as differences of running sums (rel. error ~1e-4 in fp32)."""
    xs, s0 = wkv6_inputs(T=64)
    strong = torch.rand(xs[1].shape, generator=torch.Generator().manual_seed(5)) < 0.5
    xs[1] = torch.where(strong, -100.0, xs[1])
    ref = forward_backward(wkv6_reference, xs, s0)
    fast = forward_backward(wkv6_chunked, xs, s0)
    assert_wkv_close(ref, fast, 6, 1e-5)  # a NaN or an infinity fails it too
