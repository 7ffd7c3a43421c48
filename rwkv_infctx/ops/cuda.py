"""WKV backend ``cuda``: our CUDA kernels (``csrc/wkv7.cu``, ``csrc/wkv6.cu``), JIT-built on first use.

The kernels take raw pointers; this module owns everything around them: the autograd Functions,
dtype and layout normalisation, buffer allocation, and the build. Both Functions talk to the
kernels through a tiny interface, ``kernels.call(name, *tensors)`` (argument order as in
``csrc/wkv_launchers.h``, without the sizes), so the test suite can drive the very same Python code
with the CPU emulation of the kernels (``tests/test_kernel_emulation.py``).

Dtypes: r, k, v, a, b run in bfloat16 or float32 (float16 and anything else runs in float32);
w, u and the states are always float32, as the model produces them. The output comes back in
r's dtype, the final state in float32. Any T; the head size N picks the build (one per N).

Build: ``torch.utils.cpp_extension.load`` with ninja and nvcc, once per (version, head size),
into ``$TORCH_EXTENSIONS_DIR/<name>`` or ``~/.cache/rwkv_infctx/cuda/<name>``; the name carries a
hash of the sources and flags, so an edited kernel gets a fresh folder. torch file-locks the build
folder, so the processes of a DDP or DeepSpeed run wait for one build instead of racing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError

CHUNK = 16  # the kernels' checkpoint interval, csrc/wkv_common.cuh
CUDA_DIR = Path(__file__).resolve().parent / "csrc"  # kernel sources, shipped as package data
NVCC_FLAGS = ["-O3", "-Xptxas=-O3"]  # no --use_fast_math: it would make expf approximate
_BUILT: dict[tuple[int, int], CudaKernels] = {}


def available() -> str | None:
    """None when the backend can run here, else why not (one short phrase)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    if torch.version.hip is not None:
        return "ROCm is not supported"
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return "nvcc was not found (install the CUDA toolkit or set CUDA_HOME)"
    if not is_ninja_available():
        return "ninja was not found (pip install ninja)"
    if not (CUDA_DIR / "wkv7.cu").is_file():
        return f"kernel sources missing in {CUDA_DIR} (a broken install: reinstall rwkv-infctx)"
    return None


def require_available() -> None:
    reason = available()
    if reason is not None:
        raise ConfigError(f"model.wkv_backend=cuda cannot run here: {reason}; use wkv_backend: chunked")


class CudaKernels:
    """The JIT-built extension of one version and head size, behind ``call(name, *tensors)``."""

    def __init__(self, module):
        self.module = module

    def call(self, name: str, *tensors: Tensor | None) -> None:
        device = tensors[0].device
        with torch.cuda.device(device):
            getattr(self.module, name)(*tensors, torch.cuda.current_stream(device).cuda_stream)


def _build_dir_root() -> Path:
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return Path.home() / ".cache" / "rwkv_infctx" / "cuda"


def build(version: int, head_size: int) -> CudaKernels:
    """Compile (or load the cached build of) the kernels of one version and head size."""
    key = (version, head_size)
    if key in _BUILT:
        return _BUILT[key]
    require_available()
    from torch.utils.cpp_extension import load

    defines = [f"-DWKV_HEAD_SIZE={head_size}", f"-DWKV_VERSION={version}"]
    sources = [CUDA_DIR / f"wkv{version}.cu", CUDA_DIR / "wkv_bindings.cpp"]
    digest = hashlib.sha256(" ".join(defines + NVCC_FLAGS).encode())
    for path in sorted(CUDA_DIR.glob("*")):  # the sources and every header they include
        if path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            digest.update(path.read_bytes())
    name = f"rwkv_infctx_wkv{version}_n{head_size}_{digest.hexdigest()[:12]}"
    build_dir = _build_dir_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    module = load(name=name, sources=[str(s) for s in sources], build_directory=str(build_dir),
                  extra_include_paths=[str(CUDA_DIR)], extra_cflags=["-O3", *defines],
                  extra_cuda_cflags=NVCC_FLAGS + defines, verbose=False)
    _BUILT[key] = CudaKernels(module)
    return _BUILT[key]


def _compute_dtype(r: Tensor) -> torch.dtype:
    return torch.bfloat16 if r.dtype == torch.bfloat16 else torch.float32


def _needs_backward(ctx, grad_enabled: bool) -> bool:
    # needs_input_grad is set under torch.no_grad() too, and grad mode is always off inside
    # forward, so the caller's grad mode comes in as an argument: validation and generation
    # then skip the checkpoint buffers (8x a bf16 activation per layer).
    return grad_enabled and any(ctx.needs_input_grad)


class WKV7Function(torch.autograd.Function):
    """Inputs already normalised by ``run_wkv7``: contiguous, r..b of one dtype, w and s0 float32."""

    @staticmethod
    def forward(ctx, kernels, grad_enabled, r, w, k, v, a, b, s0):
        B, T, H, N = r.shape
        out = torch.empty_like(r)
        state = r.new_empty(B, H, N, N, dtype=torch.float32)
        ckpt = sa = None
        if _needs_backward(ctx, grad_enabled):
            ckpt = r.new_empty(B, H, -(-T // CHUNK), N, N, dtype=torch.float32)
            sa = torch.empty_like(w)
        kernels.call("wkv7_forward", r, w, k, v, a, b, s0, out, state, ckpt, sa)
        if ckpt is not None:
            ctx.kernels = kernels
            ctx.save_for_backward(r, w, k, v, a, b, ckpt, sa)
        return out, state

    @staticmethod
    def backward(ctx, d_out, d_state):
        r, w, k, v, a, b, ckpt, sa = ctx.saved_tensors
        grads = [torch.empty_like(x) for x in (r, w, k, v, a, b)]
        d_s0 = torch.empty_like(d_state, dtype=torch.float32)
        ctx.kernels.call("wkv7_backward", r, w, k, v, a, b, d_out.to(r.dtype).contiguous(),
                         d_state.float().contiguous(), ckpt, sa, *grads, d_s0)
        return (None, None, *grads, d_s0 if ctx.needs_input_grad[8] else None)


class WKV6Function(torch.autograd.Function):
    """Inputs already normalised by ``run_wkv6``: contiguous, r, k, v of one dtype, w, u, s0 float32."""

    @staticmethod
    def forward(ctx, kernels, grad_enabled, r, w, k, v, u, s0):
        B, T, H, N = r.shape
        out = torch.empty_like(r)
        state = r.new_empty(B, H, N, N, dtype=torch.float32)
        keep = _needs_backward(ctx, grad_enabled)
        ckpt = r.new_empty(B, H, -(-T // CHUNK), N, N, dtype=torch.float32) if keep else None
        kernels.call("wkv6_forward", r, w, k, v, u, s0, out, state, ckpt)
        if ckpt is not None:
            ctx.kernels = kernels
            ctx.save_for_backward(r, w, k, v, u, ckpt)
        return out, state

    @staticmethod
    def backward(ctx, d_out, d_state):
        r, w, k, v, u, ckpt = ctx.saved_tensors
        B, _, H, N = r.shape
        d_r, d_w, d_k, d_v = (torch.empty_like(x) for x in (r, w, k, v))
        d_u_per_sequence = u.new_empty(B, H, N)
        d_s0 = torch.empty_like(d_state, dtype=torch.float32)
        ctx.kernels.call("wkv6_backward", r, w, k, v, u, d_out.to(r.dtype).contiguous(),
                         d_state.float().contiguous(), ckpt, d_r, d_w, d_k, d_v, d_u_per_sequence, d_s0)
        d_s0 = d_s0 if ctx.needs_input_grad[7] else None
        return None, None, d_r, d_w, d_k, d_v, d_u_per_sequence.sum(0), d_s0


def _check_shapes(seqs: list[Tensor], initial_state: Tensor | None) -> None:
    shape = seqs[0].shape
    if len(shape) != 4 or any(x.shape != shape for x in seqs):
        raise ValueError(f"wkv: r, w, k, v (, a, b) must share one (B, T, H, N) shape, got {[tuple(x.shape) for x in seqs]}")
    B, _, H, N = shape
    if initial_state is not None and initial_state.shape != (B, H, N, N):
        raise ValueError(f"wkv: initial_state must be {(B, H, N, N)}, got {tuple(initial_state.shape)}")


def _float_state(initial_state: Tensor | None) -> Tensor | None:
    return None if initial_state is None else initial_state.float().contiguous()


# The casts and .contiguous() below are ordinary differentiable ops: autograd brings the kernels'
# gradients back to the caller's dtypes and layouts (e.g. RWKV-5's w broadcast from (H, N)).
def run_wkv7(kernels, r, w, k, v, a, b, initial_state=None) -> tuple[Tensor, Tensor]:
    """``wkv7_reference``'s contract through ``kernels`` (the CUDA build or the CPU emulation)."""
    _check_shapes([r, w, k, v, a, b], initial_state)
    dtype, s0 = _compute_dtype(r), _float_state(initial_state)
    r_, k_, v_, a_, b_ = (x.to(dtype).contiguous() for x in (r, k, v, a, b))
    out, state = WKV7Function.apply(kernels, torch.is_grad_enabled(), r_, w.float().contiguous(), k_, v_, a_, b_, s0)
    return out.to(r.dtype), state


def run_wkv6(kernels, r, w, k, v, u, initial_state=None) -> tuple[Tensor, Tensor]:
    """``wkv6_reference``'s contract through ``kernels`` (the CUDA build or the CPU emulation)."""
    _check_shapes([r, w, k, v], initial_state)
    dtype, s0 = _compute_dtype(r), _float_state(initial_state)
    if u.shape != r.shape[2:]:
        raise ValueError(f"wkv6: u must be (H, N) = {tuple(r.shape[2:])}, got {tuple(u.shape)}")
    r_, k_, v_ = (x.to(dtype).contiguous() for x in (r, k, v))
    out, state = WKV6Function.apply(kernels, torch.is_grad_enabled(), r_, w.float().contiguous(), k_, v_,
                                    u.float().contiguous(), s0)
    return out.to(r.dtype), state


def _kernels_for(version: int, tensors: list[Tensor | None]) -> CudaKernels:
    r = tensors[0]
    if (version, r.shape[-1]) not in _BUILT:  # checked once, not on every call
        require_available()
    if not r.is_cuda or any(x is not None and x.device != r.device for x in tensors):
        raise ValueError(f"wkv_backend=cuda: every input must be on one CUDA device, got "
                         f"{sorted({str(x.device) for x in tensors if x is not None})}")
    return build(version, r.shape[-1])


def wkv7_cuda(r, w, k, v, a, b, initial_state=None) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv7_reference``, on our CUDA kernels."""
    kernels = _kernels_for(7, [r, w, k, v, a, b, initial_state])
    return run_wkv7(kernels, r, w, k, v, a, b, initial_state)


def wkv6_cuda(r, w, k, v, u, initial_state=None) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv6_reference``, on our CUDA kernels (RWKV-5 passes a broadcast w)."""
    kernels = _kernels_for(6, [r, w, k, v, u, initial_state])
    return run_wkv6(kernels, r, w, k, v, u, initial_state)
