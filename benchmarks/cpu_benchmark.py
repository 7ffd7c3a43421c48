"""CPU benchmark: training throughput of the default job, and memory against sample length.

    python benchmarks/cpu_benchmark.py [--out benchmarks/results/cpu.json]

1. tokens/s of full training steps (forward, backward, AdamW) with the default job's shapes
   (x070 L4-D256, vocab 65536, batch 2, 512-token samples, ctx_len 128, chunked WKV backend);
2. peak resident memory of one training step on samples of 2x, 8x and 64x ctx_len with exact
   BPTT, with per-chunk recomputation (the default) and without it. Each measurement runs in a
   fresh process, so that the peaks do not mix.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name, peak_rss_mib  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _build(batch: int, ctx_len: int, recompute: bool):
    import torch

    from rwkv_infctx.training.module import RWKVModule

    torch.manual_seed(0)
    module = RWKVModule(n_layer=4, n_embd=256, ctx_len=ctx_len, recompute_chunks=recompute)
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-4, eps=1e-18, fused=True)  # as the trainer
    return module, optimizer


def _step(module, optimizer, batch: int, length: int):
    import torch

    from rwkv_infctx.training.bptt import chunked_sample_loss

    ids = torch.randint(0, 65536, (batch, length + 1))
    hp = module.hparams
    out = chunked_sample_loss(module.model, ids[:, :-1], ids[:, 1:], torch.ones(batch, length), hp.ctx_len,
                              recompute=hp.recompute_chunks, l2wrap=1e-4)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_throughput(steps: int) -> dict:
    batch, sample_len, ctx_len = 2, 512, 128
    module, optimizer = _build(batch, ctx_len, recompute=True)
    _step(module, optimizer, batch, sample_len)  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _step(module, optimizer, batch, sample_len)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"batch": batch, "sample_len": sample_len, "ctx_len": ctx_len, "steps": steps,
            "median_step_s": round(median, 3), "tokens_per_s": round(batch * sample_len / median, 1)}


def measure_memory(chunks: int, ctx_len: int, recompute: bool) -> dict:
    """Runs in a child process: peak RSS growth of one training step (MiB)."""
    module, optimizer = _build(1, ctx_len, recompute)
    _step(module, optimizer, 1, ctx_len)  # allocate optimizer state and warm the allocator
    before = _rss_mib()
    peak_before = peak_rss_mib()
    start = time.perf_counter()
    _step(module, optimizer, 1, chunks * ctx_len)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {"chunks": chunks, "tokens": chunks * ctx_len, "recompute_chunks": recompute,
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(max(peak, peak_before), 1),
            "step_growth_mib": round(max(peak - before, 0.0), 1), "step_s": round(seconds, 2)}


def run_child(chunks: int, ctx_len: int, recompute: bool) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from benchmarks.cpu_benchmark import measure_memory; "
            f"print(json.dumps(measure_memory({chunks}, {ctx_len}, {recompute})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu.json"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ctx_len", type=int, default=128)
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without recomputation")
    args = parser.parse_args()

    import torch

    results = {"machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "python": platform.python_version()}
    results["throughput"] = measure_throughput(args.steps)
    print(f"throughput: {results['throughput']['tokens_per_s']} tokens/s "
          f"(median step {results['throughput']['median_step_s']} s)")
    results["memory"] = []
    for recompute in (True,) if args.no_baseline else (True, False):
        for chunks in (2, 8, 64):
            row = run_child(chunks, args.ctx_len, recompute)
            results["memory"].append(row)
            print(f"recompute={recompute!s:5} {chunks:3d} x ctx_len ({row['tokens']:5d} tokens): "
                  f"peak RSS {row['peak_rss_mib']:8.1f} MiB, step growth {row['step_growth_mib']:8.1f} MiB, "
                  f"{row['step_s']} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
