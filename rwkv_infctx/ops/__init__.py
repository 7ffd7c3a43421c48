"""WKV operators: one dispatch point for every backend.

``reference`` is the readable per-token loop (the oracle); ``chunked`` is the chunk-parallel
pure-PyTorch path (exact, fast enough for CPU training). GPU kernels register here as they land.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..errors import ConfigError
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


BACKENDS: dict[str, WKVBackend] = {
    "reference": WKVBackend("reference", wkv7=wkv7_reference, wkv6=wkv6_reference,
                            description="per-token PyTorch loop (slow, the oracle)"),
    "chunked": WKVBackend("chunked", wkv7=wkv7_chunked, wkv6=wkv6_chunked,
                          description="chunk-parallel PyTorch (CPU and any GPU)"),
}


def get_backend(name: str) -> WKVBackend:
    if name not in BACKENDS:
        raise ConfigError(f"model.wkv_backend: unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
         initial_state: Tensor | None = None, backend: str = "chunked") -> tuple[Tensor, Tensor]:
    """WKV-7 through the chosen backend; see ``reference.wkv7_reference`` for the contract."""
    return get_backend(backend).wkv7(r, w, k, v, a, b, initial_state)


def wkv6(r: Tensor, w: Tensor, k: Tensor, v: Tensor, u: Tensor,
         initial_state: Tensor | None = None, backend: str = "chunked") -> tuple[Tensor, Tensor]:
    """WKV-6 (and WKV-5) through the chosen backend; see ``reference.wkv6_reference`` for the contract."""
    return get_backend(backend).wkv6(r, w, k, v, u, initial_state)
