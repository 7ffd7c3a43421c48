"""WKV operators: one dispatch point for every backend.

``reference`` is the readable per-token loop (the oracle); ``chunked`` is the chunk-parallel
pure-PyTorch path (exact, fast enough for CPU training); ``cuda`` is our CUDA kernels (JIT-built
on first use, see ops/csrc/README.md); ``fla`` is flash-linear-attention's Triton kernels. The GPU
backends import nothing heavy until used; ``resolve_backend`` says whether one can run here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from . import cuda, fla
from .chunked import wkv6_chunked, wkv7_chunked
from .reference import wkv6_reference, wkv7_reference

# Every backend must accept chunk lengths that are multiples of this, so that one config runs
# on all of them (BlinkDL's CUDA kernels process 16 tokens per chunk).
CTX_LEN_MULTIPLE = 16


@dataclass(frozen=True)
class WKVBackend:
    name: str
    wkv7: Callable[..., tuple[Tensor, Tensor]]
    wkv6: Callable[..., tuple[Tensor, Tensor]]  # also serves RWKV-5 (decay constant in time)
    description: str
    available: Callable[[], str | None] = lambda: None  # None, or why it cannot run here


BACKENDS: dict[str, WKVBackend] = {
    "reference": WKVBackend("reference", wkv7=wkv7_reference, wkv6=wkv6_reference,
                            description="per-token PyTorch loop (slow, the oracle)"),
    "chunked": WKVBackend("chunked", wkv7=wkv7_chunked, wkv6=wkv6_chunked,
                          description="chunk-parallel PyTorch (CPU and any GPU)"),
    "cuda": WKVBackend("cuda", wkv7=cuda.wkv7_cuda, wkv6=cuda.wkv6_cuda, available=cuda.available,
                       description="our CUDA kernels, JIT-built with nvcc on first use"),
    "fla": WKVBackend("fla", wkv7=fla.wkv7_fla, wkv6=fla.wkv6_fla, available=fla.available,
                      description="flash-linear-attention's Triton kernels"),
}
_warned_fallbacks: set[tuple[str, str]] = set()


def get_backend(name: str) -> WKVBackend:
    if name not in BACKENDS:
        raise ConfigError(f"model.wkv_backend: unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def resolve_backend(name: str, fallback: str | None = None) -> str:
    """``name`` if that backend can run here; else ``fallback`` (warning once) if given; else a
    one-line ConfigError saying why and what to use instead."""
    reason = get_backend(name).available()
    if reason is None:
        return name
    if fallback is None:
        raise ConfigError(f"model.wkv_backend={name} cannot run here: {reason}; use wkv_backend: chunked")
    resolved = resolve_backend(fallback)
    if (name, resolved) not in _warned_fallbacks:
        _warned_fallbacks.add((name, resolved))
        warnings.warn(f"model.wkv_backend={name} cannot run here: {reason}; using {resolved} instead",
                      stacklevel=2)
    return resolved


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
         initial_state: Tensor | None = None, backend: str = "chunked") -> tuple[Tensor, Tensor]:
    """WKV-7 through the chosen backend; see ``reference.wkv7_reference`` for the contract."""
    return get_backend(backend).wkv7(r, w, k, v, a, b, initial_state)


def wkv6(r: Tensor, w: Tensor, k: Tensor, v: Tensor, u: Tensor,
         initial_state: Tensor | None = None, backend: str = "chunked") -> tuple[Tensor, Tensor]:
    """WKV-6 (and WKV-5) through the chosen backend; see ``reference.wkv6_reference`` for the contract."""
    return get_backend(backend).wkv6(r, w, k, v, u, initial_state)
