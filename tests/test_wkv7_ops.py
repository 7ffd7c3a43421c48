"""WKV-7: the reference against an independent formulation, and the chunked path against it."""

import pytest
import torch

from rwkv_infctx.ops import BACKENDS, wkv7
from rwkv_infctx.ops.chunked import wkv7_chunked
from rwkv_infctx.ops.reference import wkv7_reference

from .helpers import assert_bf16_close, assert_wkv_close, forward_backward, in_two_calls, rel_err, wkv_inputs, wkv7_inputs


def blinkdl_layout_loop(r, w, k, v, a, b, s0):
    """Independent formulation in BlinkDL's [value, key] state layout, as the rwkv package's RNN mode:
    S <- S * w^T + (S a) b^T + v k^T ;  y = S r."""
    B, T, H, N = r.shape
    S = s0.transpose(-1, -2).clone()  # [value, key]
    ys = []
    for t in range(T):
        S = S * w[:, t].exp()[:, :, None, :] + (S @ a[:, t, :, :, None]) @ b[:, t, :, None, :] \
            + v[:, t, :, :, None] @ k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None]).squeeze(-1))
    return torch.stack(ys, 1), S.transpose(-1, -2)


def test_reference_matches_blinkdl_layout_formulation():
    xs, s0 = wkv7_inputs()
    out, state = wkv7_reference(*xs, initial_state=s0)
    out2, state2 = blinkdl_layout_loop(*xs, s0)
    torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state2, rtol=1e-5, atol=1e-5)


def test_reference_hand_computed_single_token():
    # One head of size 2, zero initial state: S_1 = k v^T, o = S_1^T r = v (k.r).
    r = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    k = torch.tensor([0.5, -1.0]).view(1, 1, 1, 2)
    v = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    zeros = torch.zeros(1, 1, 1, 2)
    out, state = wkv7_reference(r, zeros, k, v, zeros, zeros)
    assert torch.allclose(out.view(2), torch.tensor([-4.5, -6.0]))
    assert torch.allclose(state.view(2, 2), torch.tensor([[1.5, 2.0], [-3.0, -4.0]]))


@pytest.mark.parametrize("backend", sorted(name for name, b in BACKENDS.items() if b.available() is None))
@pytest.mark.parametrize("T", [16, 15, 63], ids=lambda t: f"T{t}")
def test_state_round_trip(backend, T):
    """T tokens at once == T/2 then the rest with the state carried (fp32, atol 1e-5)."""
    xs, s0 = wkv7_inputs(T=T)
    out, state = wkv7(*xs, initial_state=s0, backend=backend)
    o, s2 = in_two_calls(BACKENDS[backend].wkv7, 7, T // 2)(*xs, initial_state=s0)
    torch.testing.assert_close(o, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 15, 16, 63, 100], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("block_len", [16, 32])
def test_chunked_matches_reference_fp32(T, block_len):
    """Output, final state and the gradients of every input and of the initial state: rel. RMS < 1e-5."""
    xs, s0 = wkv7_inputs(B=2, T=T, H=2, N=16)
    ref = forward_backward(wkv7_reference, xs, s0)
    fast = forward_backward(lambda *a, **kw: wkv7_chunked(*a, block_len=block_len, **kw), xs, s0)
    assert_wkv_close(ref, fast, 7, 1e-5)


def test_chunked_bf16_inputs_close_to_fp32_reference():
    """bf16 inputs (fp32 state and accumulation): rel. RMS error against fp32 < 5e-3."""
    xs, s0 = wkv7_inputs(B=1, T=64, H=4, N=16)
    ref = forward_backward(wkv7_reference, xs, s0)
    fast = forward_backward(wkv7_chunked, [x.bfloat16() for x in xs], s0)
    assert_bf16_close(fast, ref)


def test_chunked_strong_decay_is_finite():
    """Decays far below the model's clamp (v5/v6 allow them) must not overflow the pair ratios."""
    xs, s0 = wkv7_inputs(T=64)
    xs[1] = xs[1] * 40  # log-decay down to about -24 per token
    out, state = wkv7_chunked(*xs, initial_state=s0)
    ref, ref_state = wkv7_reference(*xs, initial_state=s0)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5 and rel_err(state, ref_state) < 1e-5


def test_factored_form_is_exact_at_the_strongest_decay_the_model_allows():
    """x070 clamps log-decay to >= -0.6065 per token: at that decay everywhere, every block of the
    default length still takes the factored path, and it matches the reference."""
    from rwkv_infctx.ops.chunked import DEFAULT_BLOCK_LEN, _factorable

    xs, s0 = wkv7_inputs(T=100, H=2, N=16)
    xs[1] = torch.full_like(xs[1], -0.6065)
    assert _factorable(xs[1], DEFAULT_BLOCK_LEN) and not _factorable(xs[1] * 40, DEFAULT_BLOCK_LEN)
    assert_wkv_close(forward_backward(wkv7_reference, xs, s0), forward_backward(wkv7_chunked, xs, s0), 7, 1e-5)


def test_unknown_backend_is_a_config_error():
    from rwkv_infctx.errors import ConfigError
    xs, s0 = wkv7_inputs(T=4)
    with pytest.raises(ConfigError, match="wkv_backend"):
        wkv7(*xs, backend="triton-typo")


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_state_arithmetic_stays_float32_under_autocast(backend, version):
    """bf16 autocast (bf16-mixed training) changes neither output nor state of float32 inputs."""
    op = getattr(BACKENDS[backend], f"wkv{version}")
    xs, s0 = wkv_inputs(version, B=2, T=64, H=2, N=16)
    plain = op(*xs, initial_state=s0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = op(*xs, initial_state=s0)
    assert autocast[0].dtype == autocast[1].dtype == torch.float32
    assert rel_err(autocast[0], plain[0]) < 1e-6 and rel_err(autocast[1], plain[1]) < 1e-6


def test_ops_run_on_meta_tensors():
    """Shape inference (meta device, where autocast does not exist) still works through the ops."""
    xs, s0 = wkv7_inputs(B=1, T=20, H=2, N=8)
    out, state = BACKENDS["chunked"].wkv7(*(x.to("meta") for x in xs), initial_state=s0.to("meta"))
    assert out.shape == xs[0].shape and state.shape == s0.shape and out.device.type == "meta"
