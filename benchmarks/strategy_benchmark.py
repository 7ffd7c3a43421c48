"""Strategy benchmark (GPU): peak memory and tokens/s of DDP and each DeepSpeed ZeRO stage.

    python benchmarks/strategy_benchmark.py [--n_layer 12 --n_embd 768 --steps 20 --devices 1]

Each strategy trains the same model through ``lightning_trainer.py fit`` (as users run it), in
its own process; the figures come from the run's metrics.csv: the median tokens/s over the
steps after the first quarter, and the largest ``train/peak_mem_gib`` (torch's peak allocation
on rank 0). Results go to benchmarks/results/strategies.json and .md, with device, commit and command.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import git_commit  # noqa: E402

STRATEGIES = ["ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
              "deepspeed_stage_3_offload"]


def run_strategy(strategy: str, args, out: Path) -> dict:
    cmd = [sys.executable, "lightning_trainer.py", "fit", "-c", "config-example.yaml",
           "--model.n_layer", str(args.n_layer), "--model.n_embd", str(args.n_embd), "--model.ctx_len", str(args.ctx_len),
           "--model.wkv_backend", args.wkv_backend, "--model.export_pth", "false", "--model.plot_loss", "false",
           "--data.sample_len", str(args.sample_len), "--data.batch_size", str(args.batch_size),
           "--trainer.accelerator", "gpu", "--trainer.devices", str(args.devices), "--trainer.strategy", strategy,
           "--trainer.precision", "bf16-mixed", "--trainer.max_steps", str(args.steps),
           "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "null",
           "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(out),
           "--trainer.logger.init_args.save_dir", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"strategy": strategy, "error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "failed"}
    (metrics,) = glob.glob(str(out / "**" / "metrics.csv"), recursive=True)
    rows = [r for r in csv.DictReader(open(metrics)) if r.get("train/tokens_per_s")]
    speeds = [float(r["train/tokens_per_s"]) for r in rows[len(rows) // 4:]]
    return {"strategy": strategy, "tokens_per_s": statistics.median(speeds),
            "tokens_per_s_per_device": statistics.median(speeds) / args.devices,
            "peak_mem_gib": max(float(r["train/peak_mem_gib"]) for r in rows),
            "final_loss": float(rows[-1]["train/loss"]), "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--ctx_len", type=int, default=512)
    p.add_argument("--sample_len", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--wkv_backend", default="chunked")
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "strategies.json"))
    p.add_argument("--commit", help="the commit measured, where the checkout has no .git")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("strategy_benchmark.py needs CUDA GPUs (DeepSpeed does not run on a CPU)")
    commit = git_commit(args.commit)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            results.append(run_strategy(strategy, args, Path(tmp) / strategy))
            print(json.dumps(results[-1]), flush=True)
    record = {"device": torch.cuda.get_device_name(0), "devices": args.devices, "torch": torch.__version__,
              "commit": commit, "command": " ".join(sys.argv), "settings": vars(args), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Strategies on {record['device']} x{args.devices} (commit {commit})", "",
             f"`{record['command']}`: x070 L{args.n_layer}-D{args.n_embd}, ctx_len {args.ctx_len}, "
             f"{args.batch_size} x {args.sample_len} tokens per device, bf16-mixed, {args.wkv_backend} WKV", "",
             "| strategy | tokens/s | peak GiB (rank 0) | final loss | wall s |", "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['strategy']} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {r['strategy']} | {r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.2f} | "
                         f"{r['final_loss']:.3f} | {r['wall_s']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
