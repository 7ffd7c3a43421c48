"""Run in a child process by tests/test_interchange.py: fla's RWKV-7 or RWKV-6 (the folder's
model_type) on the CPU under Triton's interpreter. Prints one JSON line.

The parent sets TRITON_INTERPRET=1 (read when triton is imported), FLA_USE_COMPILE=0 and
TORCHDYNAMO_DISABLE=1 (fla's torch.compile'd helpers would otherwise build C++ for minutes).
Each autotuned kernel keeps one config: the interpreter would run every candidate.
usage: python tests/fla_cpu_child.py HF_FOLDER TOKEN,TOKEN,... [--backend]
(--backend: also check our fla WKV backend's conventions, see our_fla_backend_errors)
"""

import json
import sys
from pathlib import Path

import triton

_autotune = triton.autotune
triton.autotune = lambda configs, *args, **kwargs: _autotune(configs[-1:], *args, **kwargs)

import torch  # noqa: E402
from fla.models import RWKV6ForCausalLM, RWKV7ForCausalLM  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fla_logits(folder: str, tokens: list[int]) -> tuple[list, list, list]:
    """fla's logits (its layers take fused_recurrent for <= 64 tokens), and the keys fla's model
    lacks from the folder or the folder lacks from fla's model."""
    model_type = json.loads((Path(folder) / "config.json").read_text())["model_type"]
    model_class = {"rwkv7": RWKV7ForCausalLM, "rwkv6": RWKV6ForCausalLM}[model_type]
    model = model_class.from_pretrained(folder, fuse_norm=False).eval()
    result = model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    return logits.tolist(), list(result.missing_keys), list(result.unexpected_keys)


def our_fla_backend_errors() -> dict:
    """Our ``fla`` WKV backend (ops/fla.py) against the reference, with fla's chunk kernels (which
    the interpreter cannot run) replaced by its fused_recurrent kernels of the same contract:
    checks the argument order, scale, log-decay sign and state layout our wrapper passes."""
    import fla.ops.rwkv6 as fla_rwkv6
    import fla.ops.rwkv7 as fla_rwkv7

    from rwkv_infctx.ops import fla as our_fla
    from rwkv_infctx.ops.reference import wkv6_reference, wkv7_reference

    fla_rwkv7.chunk_rwkv7 = fla_rwkv7.fused_recurrent_rwkv7
    fla_rwkv6.chunk_rwkv6 = fla_rwkv6.fused_recurrent_rwkv6
    our_fla.available = lambda: None  # it asks for CUDA
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 12, 2, 16
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = -torch.rand(B, T, H, N, generator=g) * 0.6
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=g)
    u = torch.randn(H, N, generator=g)
    s0 = torch.randn(B, H, N, N, generator=g)
    errors = {}
    for name, ours, reference, args in (
            ("wkv7", our_fla.wkv7_fla, wkv7_reference, (r, w, k, v, -kk, kk * iclr)),
            ("wkv6", our_fla.wkv6_fla, wkv6_reference, (r, w, k, v, u))):
        ref_out, ref_state = reference(*args, s0)
        out, state = ours(*args, s0)
        errors[name] = {"out": (out - ref_out).abs().max().item(), "state": (state - ref_state).abs().max().item(),
                        "out_scale": ref_out.abs().max().item(), "state_scale": ref_state.abs().max().item()}
    return errors


if __name__ == "__main__":
    logits, missing, unexpected = fla_logits(sys.argv[1], [int(t) for t in sys.argv[2].split(",")])
    backend = our_fla_backend_errors() if "--backend" in sys.argv[3:] else None
    print(json.dumps({"logits": logits, "missing": missing, "unexpected": unexpected, "backend": backend}))
