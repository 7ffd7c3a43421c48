"""The GPU backends (cuda: our kernels, fla: flash-linear-attention) against the float32 reference.

Marked gpu: skipped without a CUDA GPU (conftest). The fla cases also skip when fla is not
installed. Inputs are made on the CPU and moved to the GPU inside the op (``on_gpu``), so the
reference and ``helpers.forward_backward`` run unchanged on the CPU and every gradient arrives
back at the CPU leaves.

Tolerances (relative RMS error, helpers.rel_err): cuda computes in float32 exactly as the
reference does (only the order of additions differs), so 1e-5 in float32. fla's chunked Triton
kernels use TF32 tensor-core products even for float32 inputs; their own test suite accepts
2e-3..5e-3, and so do we. These bounds have not been observed yet: no GPU run has happened.
"""

import pytest
import torch

from rwkv_infctx.ops import BACKENDS
from rwkv_infctx.ops.reference import wkv6_reference, wkv7_reference

from .helpers import (assert_bf16_close, chunked_step_grads, forward_backward, in_two_calls, random_model, rel_err,
                      tiny_config)
from .test_wkv6_ops import make_inputs as make_inputs6
from .test_wkv7_ops import make_inputs as make_inputs7

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["cuda", "fla"]
FP32_TOL = {"cuda": 1e-5, "fla": 5e-3}
SPLIT_TOL = {"cuda": 1e-6, "fla": 5e-3}
NAMES = {7: ["r", "w", "k", "v", "a", "b", "initial_state"], 6: ["r", "w", "k", "v", "u", "initial_state"]}
SHAPES = [  # (B, T, H, N): one sequence and many heads, T not a power of two, T below one chunk
    (1, 100, 32, 64),
    (2, 48, 4, 64),
    (3, 7, 2, 64),
]


def gpu_op(version: int, backend: str):
    """The backend's op, wrapped to take and return CPU tensors (see the module docstring)."""
    if backend == "fla":
        pytest.importorskip("fla")
    reason = BACKENDS[backend].available()
    if reason is not None:
        pytest.skip(reason)
    op = BACKENDS[backend].wkv7 if version == 7 else BACKENDS[backend].wkv6

    def on_gpu(*xs, initial_state=None):
        s0 = None if initial_state is None else initial_state.cuda()
        out, state = op(*(x.cuda() for x in xs), initial_state=s0)
        return out.cpu(), state.cpu()

    return on_gpu


def inputs(version, B, T, H, N):
    return (make_inputs7 if version == 7 else make_inputs6)(B=B, T=T, H=H, N=N)


def reference(version):
    return wkv7_reference if version == 7 else wkv6_reference


def assert_close(fast, ref, names, tol):
    assert rel_err(fast[0], ref[0]) < tol, "output"
    assert rel_err(fast[1], ref[1]) < tol, "final state"
    for name, g_fast, g_ref in zip(names, fast[2], ref[2]):
        assert torch.isfinite(g_fast).all(), name
        assert rel_err(g_fast.float(), g_ref) < tol, name


versions = pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
backends = pytest.mark.parametrize("backend", GPU_BACKENDS)


@versions
@backends
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-H{}-N{}".format(*s))
def test_matches_reference_fp32(version, backend, shape):
    """Output, final state, gradients of every input and of the (non-zero) initial state."""
    op = gpu_op(version, backend)
    xs, s0 = inputs(version, *shape)
    fast = forward_backward(op, xs, s0)
    assert fast[0].dtype == torch.float32 and fast[1].dtype == torch.float32
    assert_close(fast, forward_backward(reference(version), xs, s0), NAMES[version], FP32_TOL[backend])


@versions
@backends
def test_bf16_close_to_fp32_reference(version, backend):
    op = gpu_op(version, backend)
    xs, s0 = inputs(version, 2, 100, 8, 64)
    ref = forward_backward(reference(version), xs, s0)
    fast = forward_backward(op, [x.bfloat16() for x in xs], s0)
    if backend == "cuda":
        assert_bf16_close(fast, ref)
    else:  # fla: bf16 tensor-core products on top of bf16 inputs
        assert_close(fast, ref, NAMES[version], 3e-2)


@versions
@backends
def test_model_dtypes_bf16_with_fp32_decay(version, backend):
    """What the model passes under bf16 autocast: r, k, v (, a, b) bf16, w (and u) float32."""
    op = gpu_op(version, backend)
    xs, s0 = inputs(version, 2, 64, 4, 64)
    mixed = [x if name in ("w", "u") else x.bfloat16() for name, x in zip(NAMES[version], xs)]
    fast = forward_backward(op, mixed, s0)
    assert fast[0].dtype == torch.bfloat16 and fast[2][1].dtype == torch.float32  # d w stays float32
    ref = forward_backward(reference(version), xs, s0)
    assert_close(fast, ref, NAMES[version], 3e-2)


@versions
@backends
def test_split_sequence_equals_whole(version, backend):
    """T=128 in one call == two calls of 64 with the state carried: output, state, all gradients."""
    op = gpu_op(version, backend)
    xs, s0 = inputs(version, 2, 128, 4, 64)
    split = forward_backward(in_two_calls(op, version, 64), xs, s0)
    assert_close(split, forward_backward(op, xs, s0), NAMES[version], SPLIT_TOL[backend])


@versions
@backends
def test_no_initial_state_and_inference(version, backend):
    op = gpu_op(version, backend)
    xs, _ = inputs(version, 2, 40, 4, 64)
    with torch.no_grad():
        out, state = op(*xs)
    ref_out, ref_state = reference(version)(*xs)
    assert rel_err(out, ref_out) < FP32_TOL[backend] and rel_err(state, ref_state) < FP32_TOL[backend]


@backends
def test_rwkv5_broadcast_decay(backend):
    """x052 passes one (H, N) log-decay expanded over batch and time (a non-contiguous view)."""
    op = gpu_op(6, backend)
    xs, s0 = make_inputs6(B=2, T=40, H=4, N=64)
    grads = []
    for fn in (op, wkv6_reference):
        w = xs[1][0, 0].clone().requires_grad_()
        out, state = fn(xs[0], w.expand_as(xs[0]), xs[2], xs[3], xs[4], initial_state=s0)
        (out.square().sum() + state.sum()).backward()
        grads.append(w.grad)
    assert rel_err(grads[0], grads[1]) < FP32_TOL[backend]


@backends
@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_model_chunked_training_step_matches_reference(version, backend):
    """A training step on the GPU (128 tokens in 4 chunks of 32, state carried, full BPTT) gives the
    loss and parameter gradients of the reference backend on the whole sample on the CPU."""
    gpu_op(6, backend)  # skips when the backend cannot run here
    cfg = tiny_config(version=version, n_embd=128, head_size=64)
    ref, ref_grads = chunked_step_grads(random_model(cfg, backend="reference"), ctx_len=128, T=128)
    out, grads = chunked_step_grads(random_model(cfg, backend=backend), ctx_len=32, device="cuda", T=128)
    assert out.n_chunks == 4 and abs(out.loss.item() - ref.loss.item()) < 1e-4
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert rel_err(g, ref_grads[name]) < FP32_TOL[backend] * 10, name


@versions
def test_cuda_non_contiguous_inputs(version):
    """Views with odd strides (as from a transpose) give the same result as contiguous copies."""
    op = gpu_op(version, "cuda")
    xs, s0 = inputs(version, 2, 33, 4, 64)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) if x.dim() == 4 else x for x in xs]
    assert not strided[0].is_contiguous()
    fast = forward_backward(op, strided, s0)
    assert_close(fast, forward_backward(op, xs, s0), NAMES[version], 1e-7)


def test_cuda_refuses_mixed_devices():
    gpu_op(7, "cuda")
    xs, s0 = make_inputs7(B=1, T=16, H=2, N=64)
    with pytest.raises(ValueError, match="one CUDA device"):
        BACKENDS["cuda"].wkv7(*(x.cuda() for x in xs), initial_state=s0)
