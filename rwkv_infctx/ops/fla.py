"""WKV backend ``fla``: flash-linear-attention's chunked Triton kernels (``pip install flash-linear-attention``).

fla is imported lazily, on first use, and only this module knows its conventions. What we rely
on (checked against fla 0.5.2's source, fla/ops/rwkv7/chunk.py and fla/ops/rwkv6/chunk.py):
  - tensors are (B, T, H, N), the same layout as ours ("head_first" was removed in 0.5; releases
    before 0.2 defaulted to head_first=True, so it is passed as False whenever fla accepts it);
  - w is the log decay (decay = exp(w)), as ours; the state is (B, H, K, V), as ours;
  - chunk_rwkv7(r, w, k, v, a, b, scale, initial_state, output_final_state) computes
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T + b_t (a_t^T S_{t-1}), o_t = scale * S_t^T r_t,
    i.e. our a and b in the same roles; the scale must be 1.0;
  - chunk_rwkv6(r, k, v, w, u, scale, ...) takes w after v, and its scale defaults to
    1/sqrt(K), so it too is passed as 1.0.
Not yet used: fla's own RWKV-7 layer also passes safe_gate/lower_bound=-exp(-0.5) and chunk_size=64
(faster; valid for RWKV-7's bounded decay), to be tried once a GPU run can compare them.
w and the state stay in float32 (fla keeps log-decay cumulative sums in float32 internally and
casts every gradient back to its input's dtype); r, k, v, a, b go in r's dtype.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch
from torch import Tensor

from ..errors import ConfigError

INSTALL_HINT = "pip install flash-linear-attention (needs a CUDA GPU)"


def available() -> str | None:
    """None when the backend can run here, else why not (one short phrase)."""
    if importlib.util.find_spec("fla") is None:
        return INSTALL_HINT
    if not torch.cuda.is_available():
        return "fla's Triton kernels need a CUDA GPU"
    return None


def _require_available() -> None:
    reason = available()
    if reason is not None:
        raise ConfigError(f"model.wkv_backend=fla cannot run here: {reason}; use wkv_backend: chunked")


def _call(fn, *tensors, initial_state) -> tuple[Tensor, Tensor]:
    # by position: fla 0.1 named rwkv6's arguments q, k, v, g, u, later releases r, k, v, w, u
    kwargs = {"head_first": False} if "head_first" in inspect.signature(fn).parameters else {}  # fla < 0.5
    out, state = fn(*tensors, scale=1.0, initial_state=initial_state, output_final_state=True, **kwargs)
    return out, state.float()


def _initial_state(initial_state: Tensor | None) -> Tensor | None:
    return None if initial_state is None else initial_state.float().contiguous()


def wkv7_fla(r, w, k, v, a, b, initial_state=None) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv7_reference``, on fla's ``chunk_rwkv7``."""
    _require_available()
    from fla.ops.rwkv7 import chunk_rwkv7

    dtype = r.dtype
    k, v, a, b = (x.to(dtype) for x in (k, v, a, b))
    return _call(chunk_rwkv7, r, w.float(), k, v, a, b, initial_state=_initial_state(initial_state))


def wkv6_fla(r, w, k, v, u, initial_state=None) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv6_reference``, on fla's ``chunk_rwkv6`` (RWKV-5 passes a broadcast w)."""
    _require_available()
    from fla.ops.rwkv6 import chunk_rwkv6

    dtype = r.dtype
    k, v = (x.to(dtype) for x in (k, v))
    return _call(chunk_rwkv6, r, k, v, w.float().contiguous(), u, initial_state=_initial_state(initial_state))
