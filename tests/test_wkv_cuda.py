"""What only the GPU backends (cuda: our kernels, fla: flash-linear-attention) are asked: mixed
dtypes, strided views, devices. The cases every kernel shares run over the ``kernel`` fixture in
tests/test_wkv_kernels.py (tests/wkv_kernels.py holds the sizes and tolerances).

Marked gpu: skipped without a CUDA GPU (conftest). The fla cases also skip when fla is not installed.
Tolerances (relative RMS error, helpers.rel_err) as in tests/wkv_kernels.py. These bounds have not been
observed yet: no GPU run has happened.
"""

import pytest
import torch

from rwkv_infctx.ops import BACKENDS

from .helpers import assert_wkv_close, forward_backward, wkv7_inputs, wkv_inputs, wkv_reference
from .wkv_kernels import gpu_op, require_gpu_backend

pytestmark = pytest.mark.gpu

versions = pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
backends = pytest.mark.parametrize("backend", ["cuda", "fla"])


def runnable_op(version: int, backend: str):
    """The backend's op on CPU tensors (kernels.gpu_op), or a skip saying why it cannot run here."""
    require_gpu_backend(backend)
    return gpu_op(version, backend)


@versions
@backends
def test_model_dtypes_bf16_with_fp32_decay(version, backend):
    """What the model passes under bf16 autocast: r, k, v (, a, b) bf16, w (and u) float32."""
    op = runnable_op(version, backend)
    xs, s0 = wkv_inputs(version, B=2, T=64, H=4, N=64)
    names = ["r", "w", "k", "v", "a", "b"] if version == 7 else ["r", "w", "k", "v", "u"]
    mixed = [x if name in ("w", "u") else x.bfloat16() for name, x in zip(names, xs)]
    fast = forward_backward(op, mixed, s0)
    assert fast[0].dtype == torch.bfloat16 and fast[2][1].dtype == torch.float32  # d w stays float32
    assert_wkv_close(forward_backward(wkv_reference(version), xs, s0), fast, version, 3e-2)


@versions
def test_cuda_non_contiguous_inputs(version):
    """Views with odd strides (as from a transpose) give the same result as contiguous copies."""
    op = runnable_op(version, "cuda")
    xs, s0 = wkv_inputs(version, B=2, T=33, H=4, N=64)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) if x.dim() == 4 else x for x in xs]
    assert not strided[0].is_contiguous()
    assert_wkv_close(forward_backward(op, xs, s0), forward_backward(op, strided, s0), version, 1e-7)


def test_cuda_refuses_mixed_devices():
    runnable_op(7, "cuda")
    xs, s0 = wkv7_inputs(B=1, T=16, H=2, N=64)
    with pytest.raises(ValueError, match="one CUDA device"):
        BACKENDS["cuda"].wkv7(*(x.cuda() for x in xs), initial_state=s0)
