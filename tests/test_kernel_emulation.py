"""The CUDA WKV kernels on the CPU: what only the emulated build can show (see tests/wkv_kernels.py,
whose ``kernel`` fixture runs the cases every kernel shares in tests/test_wkv_kernels.py). What a
GPU adds beyond this (speed, the real bf16 type, register and shared-memory limits) is covered by
the GPU kernels of that fixture and tests/test_wkv_cuda.py (gpu).

Also compile-checks the kernels with nvcc and the PyTorch binding with g++ when those exist.
"""

import shutil
import subprocess
import sys

import pytest
import torch

from rwkv_infctx.ops.cuda import CUDA_DIR, run_wkv7

from .helpers import (assert_wkv_close, fill_allocations_with_nan, forward_backward, wkv7_inputs, wkv_inputs,
                      wkv_reference)
from .wkv_kernels import emulated_op

FP32_TOL = 1e-5  # relative RMS error against the float32 reference; observed <= 3e-7


@pytest.fixture(autouse=True)
def unwritten_memory_is_nan(monkeypatch):
    """Every buffer the kernel wrapper allocates starts as NaN (helpers.fill_allocations_with_nan)."""
    fill_allocations_with_nan(monkeypatch)


def test_allocated_buffers_start_as_nan():
    assert torch.empty_like(torch.zeros(3)).isnan().all() and torch.zeros(2).new_empty(4).isnan().all()


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_other_head_size(emulated, version):
    xs, s0 = wkv_inputs(version, B=3, T=37, H=3, N=16)
    ref = forward_backward(wkv_reference(version), xs, s0)
    assert_wkv_close(ref, forward_backward(emulated_op(version, emulated[16]), xs, s0), version, FP32_TOL)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_strong_decay_is_exact(emulated, version):
    """Decays that underflow to 0 in float32: replaying from checkpoints needs no division by them."""
    xs, s0 = wkv_inputs(version, B=1, T=40, H=2, N=16)
    strong = torch.rand(xs[1].shape, generator=torch.Generator().manual_seed(5)) < 0.5
    xs[1] = torch.where(strong, -100.0, xs[1])
    ref = forward_backward(wkv_reference(version), xs, s0)
    assert_wkv_close(ref, forward_backward(emulated_op(version, emulated[16]), xs, s0), version, FP32_TOL)


class RecordingKernels:
    """Passes calls through, keeping which of each call's tensor arguments were given (not None)."""

    def __init__(self, kernels):
        self.kernels, self.calls = kernels, []

    def call(self, name, *tensors):
        self.calls.append((name, [x is not None for x in tensors]))
        self.kernels.call(name, *tensors)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_no_backward_buffers_under_no_grad(emulated, version):
    """Parameters that require grad (as in validation and generation) under torch.no_grad(): the
    forward pass gets no checkpoint (nor sa) buffer; with grad enabled it does."""
    recorder = RecordingKernels(emulated[16])
    op = emulated_op(version, recorder)
    xs, s0 = wkv_inputs(version, B=1, T=20, H=2, N=16)
    xs = [x.requires_grad_() for x in xs]
    with torch.no_grad():
        op(*xs, initial_state=s0)
    op(*xs, initial_state=s0)
    buffers = slice(9, None) if version == 7 else slice(8, None)  # ckpt (, sa) follow out and state
    (name0, given0), (name1, given1) = recorder.calls
    assert name0 == name1 == f"wkv{version}_forward"
    assert not any(given0[buffers]) and all(given1[buffers])


def test_wrong_head_size_is_refused(emulated):
    xs, s0 = wkv7_inputs(B=1, T=4, H=1, N=16)
    with pytest.raises(RuntimeError, match="WKV_HEAD_SIZE"):
        run_wkv7(emulated[64], *xs, initial_state=s0)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_nvcc_compiles_kernel(tmp_path, version):
    """The .cu file as the GPU build sees it (no torch headers), for sm_80 (A100) and sm_90 (H100/H200)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    command = ["nvcc", "-c", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
               "-std=c++17", "-O3", f"-I{CUDA_DIR}",
               str(CUDA_DIR / f"wkv{version}.cu"), "-o", str(tmp_path / "wkv.o")]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_binding_compiles_against_torch_headers():
    """ops/csrc/wkv_bindings.cpp needs only torch/extension.h, so the CPU torch wheel can check it
    (WKV_VERSION=0 declares the bindings of both versions)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    import sysconfig

    from torch.utils.cpp_extension import include_paths
    includes = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"], str(CUDA_DIR)]]
    command = ["g++", "-std=c++20", "-fsyntax-only", "-DWKV_VERSION=0", "-DTORCH_EXTENSION_NAME=check",
               *includes, str(CUDA_DIR / "wkv_bindings.cpp")]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
