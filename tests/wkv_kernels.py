"""The WKV kernels under test, as one ``kernel`` fixture (registered in conftest.py):

- ``emulated``: our CUDA sources compiled by g++ for the CPU under ops/csrc/emulate/cuda_emulation.h
  (blocks run one after another, a block's threads are real threads meeting at real barriers),
  driven through the cuda backend's own autograd Functions (run_wkv7 / run_wkv6) via ctypes;
- ``cuda`` and ``fla``: the real backends on a GPU (marked gpu).

A kernel that cannot run here is skipped with the reason. Each kernel keeps the sizes and
tolerances its suite always had: the emulation is slow on a CPU, so it runs small heads; a GPU runs
model-sized ones. fla's chunked Triton kernels use TF32 tensor-core products even for float32
inputs; their own test suite accepts 2e-3..5e-3, and so do we.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rwkv_infctx.ops import BACKENDS
from rwkv_infctx.ops.cuda import CUDA_DIR, run_wkv6, run_wkv7

from .helpers import fill_allocations_with_nan

HEAD_SIZES = (64, 16)  # the emulation's builds: the default, and a second to show N is a free parameter

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


def emulated_op(version: int, kernels):
    run = run_wkv7 if version == 7 else run_wkv6
    return lambda *xs, initial_state=None: run(kernels, *xs, initial_state=initial_state)


def gpu_op(version: int, backend: str):
    """The backend's op, wrapped to take and return CPU tensors: the reference and
    ``helpers.forward_backward`` run unchanged on the CPU and every gradient arrives at the CPU leaves."""
    op = BACKENDS[backend].wkv7 if version == 7 else BACKENDS[backend].wkv6

    def on_gpu(*xs, initial_state=None):
        s0 = None if initial_state is None else initial_state.cuda()
        out, state = op(*(x.cuda() for x in xs), initial_state=s0)
        return out.cpu(), state.cpu()

    return on_gpu


@dataclass
class Kernel:
    """One WKV kernel and the sizes and tolerances its cases run with."""

    name: str
    op: object  # op(version) -> fn(*xs, initial_state=None) -> (out, state), CPU tensors in and out
    fp32_tol: float  # relative RMS error against the float32 reference
    split_tol: float  # one call against two with the state carried
    fp32_shapes: list[dict]  # B, T, H, N (and seed) of the fp32 comparison
    sizes: dict[str, dict] = field(default_factory=dict)  # per case: B, T, H, N
    split_at: int = 0  # where the split case cuts its sizes["split"] sequence
    model: dict = field(default_factory=dict)  # the model training-step case's sizes and tolerances


def _emulated_kernel(request, monkeypatch) -> Kernel:
    kernels = request.getfixturevalue("emulated")
    fill_allocations_with_nan(monkeypatch)
    import rwkv_infctx.ops.cuda as cuda_backend  # the model's cuda backend, on the emulated kernels

    monkeypatch.setattr(cuda_backend, "_kernels_for", lambda v, tensors: kernels[tensors[0].shape[-1]])
    return Kernel(
        "emulated", lambda version, n=64: emulated_op(version, kernels[n]), fp32_tol=1e-5, split_tol=1e-6,
        fp32_shapes=[dict(B=2, T=T, H=2, N=64, seed=T) for T in (1, 16, 37, 64)],
        sizes={"bf16": dict(B=1, T=40, H=2, N=64), "split": dict(B=2, T=48, H=2, N=16),
               "no_state": dict(B=2, T=20, H=2, N=16), "broadcast": dict(B=2, T=24, H=2, N=16)},
        split_at=32,
        model=dict(backend="cuda", device="cpu", cfg={}, T=64, ctx_len=16, loss_tol=1e-5, grad_tol=1e-5))


def require_gpu_backend(backend: str) -> None:
    """Skip, saying why, when ``backend`` (cuda or fla) cannot run here."""
    if backend == "fla":
        pytest.importorskip("fla")
    reason = BACKENDS[backend].available()
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _gpu_kernel(backend: str) -> Kernel:
    require_gpu_backend(backend)
    fp32_tol = {"cuda": 1e-5, "fla": 5e-3}[backend]
    return Kernel(
        backend, lambda version, n=64: gpu_op(version, backend), fp32_tol=fp32_tol,
        split_tol={"cuda": 1e-6, "fla": 5e-3}[backend],
        # one sequence and many heads, T not a power of two, T below one chunk
        fp32_shapes=[dict(B=1, T=100, H=32, N=64), dict(B=2, T=48, H=4, N=64), dict(B=3, T=7, H=2, N=64)],
        sizes={"bf16": dict(B=2, T=100, H=8, N=64), "split": dict(B=2, T=128, H=4, N=64),
               "no_state": dict(B=2, T=40, H=4, N=64), "broadcast": dict(B=2, T=40, H=4, N=64)},
        split_at=64,
        model=dict(backend=backend, device="cuda", cfg=dict(n_embd=128, head_size=64), T=128, ctx_len=32,
                   loss_tol=1e-4, grad_tol=fp32_tol * 10))


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu),
                        pytest.param("fla", marks=pytest.mark.gpu)])
def kernel(request, monkeypatch) -> Kernel:
    return _emulated_kernel(request, monkeypatch) if request.param == "emulated" else _gpu_kernel(request.param)
