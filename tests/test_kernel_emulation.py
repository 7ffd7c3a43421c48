"""The CUDA WKV kernels, tested on the CPU: the same sources compiled by g++ under
ops/csrc/emulate/cuda_emulation.h (blocks run one after another, a block's threads are real threads
meeting at real barriers) and driven through the backend's own autograd Functions
(rwkv_infctx.ops.cuda.run_wkv7 / run_wkv6) via ctypes. What a GPU adds beyond this (speed, the
real bf16 type, register and shared-memory limits) is covered by tests/test_wkv_cuda.py (gpu).

Also compile-checks the kernels with nvcc and the PyTorch binding with g++ when those exist.
"""

import ctypes
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from rwkv_infctx.ops.cuda import CUDA_DIR, run_wkv6, run_wkv7
from rwkv_infctx.ops.reference import wkv6_reference, wkv7_reference

from .helpers import (assert_bf16_close, chunked_step_grads, forward_backward, in_two_calls, random_model, rel_err,
                      tiny_config)
from .test_wkv6_ops import make_inputs as make_inputs6
from .test_wkv7_ops import make_inputs as make_inputs7

HEAD_SIZES = (64, 16)  # the default build, and a second one to show N is a free parameter
FP32_TOL = 1e-5  # relative RMS error against the float32 reference; observed <= 3e-7

_ARG_KINDS = {  # "i": int size, "p": pointer (tensor or None); see rwkv_infctx/ops/csrc/wkv_launchers.h
    "wkv7_forward": "iiii" + "p" * 12,
    "wkv7_backward": "iiii" + "p" * 18,
    "wkv6_forward": "iiii" + "p" * 10,
    "wkv6_backward": "iiii" + "p" * 15,
}


class EmulatedKernels:
    """The ``kernels.call(name, *tensors)`` interface of rwkv_infctx.ops.cuda, over the CPU build."""

    def __init__(self, path: Path, head_size: int):
        self.lib = ctypes.CDLL(str(path))
        self.head_size = head_size
        for name, kinds in _ARG_KINDS.items():
            for dtype in ("fp32", "bf16"):
                fn = getattr(self.lib, f"{name}_{dtype}")
                fn.argtypes = [ctypes.c_int if kind == "i" else ctypes.c_void_p for kind in kinds]
                fn.restype = ctypes.c_char_p

    def call(self, name, *tensors):
        r = tensors[0]
        for x in tensors:
            assert x is None or (x.is_contiguous() and x.device.type == "cpu")
        dtype = "bf16" if r.dtype == torch.bfloat16 else "fp32"
        pointers = [None if x is None else x.data_ptr() for x in tensors]
        error = getattr(self.lib, f"{name}_{dtype}")(*r.shape, *pointers, None)
        if error is not None:
            raise RuntimeError(error.decode())


def _compile(out: Path, head_size: int) -> subprocess.CompletedProcess:
    sources = [str(CUDA_DIR / "wkv7.cu"), str(CUDA_DIR / "wkv6.cu")]
    command = ["g++", "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-x", "c++",
               "-DWKV_CPU_EMULATION", f"-DWKV_HEAD_SIZE={head_size}", "-Wall", "-Wno-unknown-pragmas",
               f"-I{CUDA_DIR}", *sources, "-o", str(out)]
    return subprocess.run(command, check=False, capture_output=True, text=True)


@pytest.fixture(autouse=True)
def unwritten_memory_is_nan(monkeypatch):
    """Every buffer the kernel wrapper allocates (torch.empty_like, Tensor.new_empty) starts as NaN,
    as flash-linear-attention's tests do: a kernel that leaves an element unwritten, or reads one
    before writing it, then fails the comparison instead of passing on leftover zeros."""
    empty_like, new_empty = torch.empty_like, torch.Tensor.new_empty

    def nan_filled(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_filled(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: nan_filled(new_empty(self, *a, **k)))


def test_allocated_buffers_start_as_nan():
    assert torch.empty_like(torch.zeros(3)).isnan().all() and torch.zeros(2).new_empty(4).isnan().all()


@pytest.fixture(scope="session")
def emulated(tmp_path_factory) -> dict[int, EmulatedKernels]:
    """The kernels built for the CPU once per session, one library per head size."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot build the CPU emulation of the CUDA kernels")
    folder = tmp_path_factory.mktemp("wkv_emulation")
    paths = {n: folder / f"libwkv_n{n}.so" for n in HEAD_SIZES}
    with ThreadPoolExecutor(len(paths)) as pool:
        results = dict(zip(paths, pool.map(lambda n: _compile(paths[n], n), paths)))
    for n, result in results.items():
        assert result.returncode == 0, f"g++ failed for N={n}:\n{result.stderr}"
    return {n: EmulatedKernels(paths[n], n) for n in paths}


def _ops(version, kernels):
    """(kernel op, reference op, input maker, gradient names) for one WKV version."""
    if version == 7:
        return (lambda *xs, initial_state=None: run_wkv7(kernels, *xs, initial_state=initial_state),
                wkv7_reference, make_inputs7, ["r", "w", "k", "v", "a", "b", "initial_state"])
    return (lambda *xs, initial_state=None: run_wkv6(kernels, *xs, initial_state=initial_state),
            wkv6_reference, make_inputs6, ["r", "w", "k", "v", "u", "initial_state"])


def _assert_matches(fast, ref, names, tol=FP32_TOL):
    assert rel_err(fast[0], ref[0]) < tol, "output"
    assert rel_err(fast[1], ref[1]) < tol, "final state"
    for name, g_fast, g_ref in zip(names, fast[2], ref[2]):
        assert torch.isfinite(g_fast).all(), name
        assert rel_err(g_fast, g_ref) < tol, name


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
@pytest.mark.parametrize("T", [1, 16, 37, 64], ids=lambda t: f"T{t}")
def test_matches_reference_fp32(emulated, version, T):
    """Output, final state, gradients of every input and of the initial state (B=2, H=2, N=64)."""
    op, reference, make_inputs, names = _ops(version, emulated[64])
    xs, s0 = make_inputs(B=2, T=T, H=2, N=64, seed=T)
    _assert_matches(forward_backward(op, xs, s0), forward_backward(reference, xs, s0), names)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_other_head_size(emulated, version):
    op, reference, make_inputs, names = _ops(version, emulated[16])
    xs, s0 = make_inputs(B=3, T=37, H=3, N=16)
    _assert_matches(forward_backward(op, xs, s0), forward_backward(reference, xs, s0), names)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_bf16_close_to_fp32_reference(emulated, version):
    """bf16 r, k, v, a, b (rounded to nearest even, as on the GPU); fp32 state and arithmetic."""
    op, reference, make_inputs, _ = _ops(version, emulated[64])
    xs, s0 = make_inputs(B=1, T=40, H=2, N=64)
    ref = forward_backward(reference, xs, s0)
    assert_bf16_close(forward_backward(op, [x.bfloat16() for x in xs], s0), ref)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_strong_decay_is_exact(emulated, version):
    """Decays that underflow to 0 in float32: replaying from checkpoints needs no division by them."""
    op, reference, make_inputs, names = _ops(version, emulated[16])
    xs, s0 = make_inputs(B=1, T=40, H=2, N=16)
    strong = torch.rand(xs[1].shape, generator=torch.Generator().manual_seed(5)) < 0.5
    xs[1] = torch.where(strong, -100.0, xs[1])
    _assert_matches(forward_backward(op, xs, s0), forward_backward(reference, xs, s0), names)


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_no_initial_state_and_inference(emulated, version):
    """initial_state=None means zeros; without autograd no checkpoints are written."""
    op, reference, make_inputs, _ = _ops(version, emulated[16])
    xs, _ = make_inputs(B=2, T=20, H=2, N=16)
    with torch.no_grad():
        out, state = op(*xs)
    ref_out, ref_state = reference(*xs)
    assert rel_err(out, ref_out) < FP32_TOL and rel_err(state, ref_state) < FP32_TOL


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
    op = _ops(version, recorder)[0]
    xs, s0 = (make_inputs7 if version == 7 else make_inputs6)(B=1, T=20, H=2, N=16)
    xs = [x.requires_grad_() for x in xs]
    with torch.no_grad():
        op(*xs, initial_state=s0)
    op(*xs, initial_state=s0)
    buffers = slice(9, None) if version == 7 else slice(8, None)  # ckpt (, sa) follow out and state
    (name0, given0), (name1, given1) = recorder.calls
    assert name0 == name1 == f"wkv{version}_forward"
    assert not any(given0[buffers]) and all(given1[buffers])


@pytest.mark.parametrize("version", [7, 6], ids=lambda v: f"wkv{v}")
def test_split_sequence_gives_same_gradients(emulated, version):
    """T=48 in one call == 32 + 16 tokens with the state carried (full BPTT through the state)."""
    op, _, make_inputs, names = _ops(version, emulated[16])
    xs, s0 = make_inputs(B=2, T=48, H=2, N=16)
    split = forward_backward(in_two_calls(op, version, 32), xs, s0)
    _assert_matches(split, forward_backward(op, xs, s0), names, tol=1e-6)


def test_rwkv5_broadcast_decay(emulated):
    """x052 passes its (H, N) log-decay expanded over batch and time; its gradient sums over both."""
    xs, s0 = make_inputs6(B=2, T=24, H=2, N=16)
    grads = []
    for op in (_ops(6, emulated[16])[0], wkv6_reference):
        w = xs[1][0, 0].clone().requires_grad_()
        out, state = op(xs[0], w.expand_as(xs[0]), xs[2], xs[3], xs[4], initial_state=s0)
        (out.square().sum() + state.sum()).backward()
        grads.append(w.grad)
    assert rel_err(grads[0], grads[1]) < FP32_TOL


def test_wrong_head_size_is_refused(emulated):
    xs, s0 = make_inputs7(B=1, T=4, H=1, N=16)
    with pytest.raises(RuntimeError, match="WKV_HEAD_SIZE"):
        run_wkv7(emulated[64], *xs, initial_state=s0)


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_model_training_step_matches_reference(emulated, monkeypatch, version):
    """The model with wkv_backend=cuda (the emulated kernels behind the real dispatch, autograd
    Functions and dtype handling), 64 tokens in 4 chunks of 16 with the state carried, against the
    reference backend on the whole sample: loss and every parameter gradient (fp32)."""
    import rwkv_infctx.ops.cuda as cuda_backend

    monkeypatch.setattr(cuda_backend, "_kernels_for", lambda v, tensors: emulated[tensors[0].shape[-1]])
    cfg = tiny_config(version=version)
    ref, ref_grads = chunked_step_grads(random_model(cfg, backend="reference"), ctx_len=64)
    out, grads = chunked_step_grads(random_model(cfg, backend="cuda"), ctx_len=16)
    assert out.n_chunks == 4 and abs(out.loss.item() - ref.loss.item()) < 1e-5
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert rel_err(g, ref_grads[name]) < FP32_TOL, name


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
