"""Every WKV kernel (the ``kernel`` fixture of tests/wkv_kernels.py: the CUDA sources emulated on the
CPU, and the cuda and fla backends on a GPU) against the float32 reference: the same cases, each
kernel with its own sizes and tolerances (relative RMS error, helpers.rel_err)."""

import pytest
import torch

from .helpers import (assert_bf16_close, assert_close, assert_wkv_close, chunked_step_grads,
                      forward_backward, in_two_calls, random_model, tiny_config, wkv6_inputs, wkv_inputs,
                      wkv_reference)

versions = pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")


@versions
@pytest.mark.parametrize("case", range(4), ids=lambda i: f"shape{i}")
def test_matches_reference_fp32(kernel, version, case):
    """Output, final state, gradients of every input and of the (non-zero) initial state."""
    if case >= len(kernel.fp32_shapes):
        pytest.skip(f"{kernel.name} runs {len(kernel.fp32_shapes)} shapes")
    xs, s0 = wkv_inputs(version, **kernel.fp32_shapes[case])
    fast = forward_backward(kernel.op(version), xs, s0)
    assert fast[0].dtype == torch.float32 and fast[1].dtype == torch.float32
    assert_wkv_close(forward_backward(wkv_reference(version), xs, s0), fast, version, kernel.fp32_tol)


@versions
def test_bf16_close_to_fp32_reference(kernel, version):
    """bf16 r, k, v (, a, b), rounded to nearest even as on the GPU; fp32 state and arithmetic."""
    xs, s0 = wkv_inputs(version, **kernel.sizes["bf16"])
    ref = forward_backward(wkv_reference(version), xs, s0)
    fast = forward_backward(kernel.op(version), [x.bfloat16() for x in xs], s0)
    if kernel.name == "fla":  # bf16 tensor-core products on top of bf16 inputs
        assert_wkv_close(ref, fast, version, 3e-2)
    else:
        assert_bf16_close(fast, ref)


@versions
def test_split_sequence_equals_whole(kernel, version):
    """One call == two calls with the state carried (full BPTT through the state): output, state, all gradients."""
    op = kernel.op(version, kernel.sizes["split"]["N"])
    xs, s0 = wkv_inputs(version, **kernel.sizes["split"])
    split = forward_backward(in_two_calls(op, version, kernel.split_at), xs, s0)
    assert_wkv_close(forward_backward(op, xs, s0), split, version, kernel.split_tol)


@versions
def test_no_initial_state_and_inference(kernel, version):
    """initial_state=None means zeros; without autograd no checkpoints are written."""
    xs, _ = wkv_inputs(version, **kernel.sizes["no_state"])
    with torch.no_grad():
        out, state = kernel.op(version, kernel.sizes["no_state"]["N"])(*xs)
    ref_out, ref_state = wkv_reference(version)(*xs)
    assert_close("output", ref_out, out, kernel.fp32_tol)
    assert_close("final state", ref_state, state, kernel.fp32_tol)


def test_rwkv5_broadcast_decay(kernel):
    """x052 passes one (H, N) log-decay expanded over batch and time (a non-contiguous view); its
    gradient sums over both."""
    xs, s0 = wkv6_inputs(**kernel.sizes["broadcast"])
    grads = []
    for op in (kernel.op(6, kernel.sizes["broadcast"]["N"]), wkv_reference(6)):
        w = xs[1][0, 0].clone().requires_grad_()
        out, state = op(xs[0], w.expand_as(xs[0]), xs[2], xs[3], xs[4], initial_state=s0)
        (out.square().sum() + state.sum()).backward()
        grads.append(w.grad)
    assert_close("grad of w", grads[1], grads[0], kernel.fp32_tol)


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_model_training_step_matches_reference(kernel, version):
    """The model on the kernel's backend (its real dispatch, autograd Functions and dtype handling),
    a sample in 4 chunks with the state carried, against the reference backend on the whole
    sample on the CPU: loss and every parameter gradient (fp32)."""
    m = kernel.model
    cfg = tiny_config(version=version, **m["cfg"])
    ref, ref_grads = chunked_step_grads(random_model(cfg, backend="reference"), ctx_len=m["T"], T=m["T"])
    out, grads = chunked_step_grads(random_model(cfg, backend=m["backend"]), ctx_len=m["ctx_len"],
                                    device=m["device"], T=m["T"])
    assert out.n_chunks == 4 and abs(out.loss.item() - ref.loss.item()) < m["loss_tol"]
    for name, g in grads.items():
        assert_close(name, ref_grads[name], g, m["grad_tol"])

