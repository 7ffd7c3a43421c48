"""GPU benchmark of the WKV backends: forward + backward time per token, with state in and out.

    python benchmarks/kernel_benchmark.py [--batch 8] [--tokens 4096] [--channels 768 2048]
                                          [--backends chunked cuda fla] [--repeat 10]

For every available backend and version (x060 and x070; x052 runs x060's kernel with a decay
constant in time, so it is not measured separately) and every width C, one call of the op on
(B, T, H = C / 64, N = 64) inputs in the dtypes the model passes under bf16 autocast (r, k, v, a, b
bfloat16; w, u and the state float32), then backward from the output and the final state.
The first call (JIT build, Triton autotuning) is not timed. Writes
benchmarks/results/kernels-<gpu>.json and .md with the device, torch and CUDA versions, git
commit and the command. Without a CUDA GPU it exits with a one-line message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # rwkv_infctx is imported where needed, from this checkout
from benchmarks.machine import git_commit  # noqa: E402
HEAD_SIZE = 64


def wkv_op(backend: str, version: str):
    from rwkv_infctx.ops import BACKENDS

    return BACKENDS[backend].wkv7 if version == "x070" else BACKENDS[backend].wkv6


def unavailable_reason(backend: str) -> str | None:
    from rwkv_infctx.ops import BACKENDS

    return BACKENDS[backend].available()


def make_inputs(version: str, B: int, T: int, C: int, device: str = "cuda") -> list:
    """Model-like magnitudes and dtypes; every tensor requires grad, the initial state too."""
    H, N = C // HEAD_SIZE, HEAD_SIZE
    def rnd(*shape):
        return torch.randn(*shape, device=device)

    r, k, v = rnd(B, T, H, N), rnd(B, T, H, N) * 0.5, rnd(B, T, H, N)
    if version == "x070":
        w = -0.6065 * torch.sigmoid(rnd(B, T, H, N) * 2)
        kk = F.normalize(rnd(B, T, H, N), dim=-1)
        seqs = [r, w, k, v, -kk, kk * torch.sigmoid(rnd(B, T, H, N))]
    else:
        seqs = [r, -torch.exp(rnd(B, T, H, N) * 1.5 - 2.0), k, v, rnd(H, N) * 0.5]
    float32 = {1} if version == "x070" else {1, 4}  # w (and u) as the model computes them
    xs = [x if i in float32 else x.bfloat16() for i, x in enumerate(seqs)]
    s0 = rnd(B, H, N, N) * 0.3
    return [x.requires_grad_() for x in xs] + [s0.requires_grad_()]


def fwd_bwd(op, xs) -> None:
    out, state = op(*xs[:-1], initial_state=xs[-1])
    (out.float().square().mean() + state.square().mean()).backward()
    for x in xs:
        x.grad = None


def time_ms(op, xs, repeat: int) -> float:
    """Median milliseconds of one forward + backward, after one untimed call."""
    fwd_bwd(op, xs)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fwd_bwd(op, xs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(backend: str, version: str, B: int, T: int, C: int, repeat: int) -> dict:
    op = wkv_op(backend, version)
    row = {"backend": backend, "version": version, "B": B, "T": T, "C": C, "H": C // HEAD_SIZE, "N": HEAD_SIZE}
    try:
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(op, make_inputs(version, B, T, C), repeat)
        row.update(ms=round(ms, 3), ns_per_token=round(ms * 1e6 / (B * T), 2),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    except torch.cuda.OutOfMemoryError:
        row.update(ms=None, ns_per_token=None, peak_gib=None, error="out of memory")
    torch.cuda.empty_cache()
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# WKV kernels, forward + backward: {meta['device']}", "",
             f"torch {meta['torch']} (CUDA {meta['cuda']}), commit `{meta['commit'][:12]}`, {meta['date']}",
             f"command: `{meta['command']}`", "",
             "| version | backend | B | T | C (H x N) | ms per call | ns per token | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['version']} | {r['backend']} | {r['B']} | {r['T']} | {r['C']} ({r['H']} x {r['N']}) "
                     f"| {r['ms'] if r['ms'] is not None else r.get('error')} | {r['ns_per_token']} | {r['peak_gib']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--channels", type=int, nargs="+", default=[768, 2048])
    parser.add_argument("--backends", nargs="+", default=["chunked", "cuda", "fla"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--commit", help="the commit measured, where the checkout has no .git")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("kernel_benchmark: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")

    backends = []
    for name in args.backends:
        reason = unavailable_reason(name)
        if reason is None:
            backends.append(name)
        else:
            print(f"skipping {name}: {reason}")
    rows = []
    for version in ("x060", "x070"):
        for C in args.channels:
            for backend in backends:
                rows.append(measure(backend, version, args.batch, args.tokens, C, args.repeat))
                print(json.dumps(rows[-1]), flush=True)

    device = torch.cuda.get_device_name()
    meta = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "commit": git_commit(args.commit),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/kernel_benchmark.py", *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"kernels-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
