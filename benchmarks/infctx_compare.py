"""Our trainer against the RWKV-infctx-trainer at identical shapes: tokens/s and peak RSS, alternating.

    python benchmarks/infctx_compare.py [--infctx-path /tmp/infctx] [--versions x052 x070]
        [--steps 35] [--pairs 2] [--threads 2] [--out benchmarks/results/infctx_compare.json]

Each run is a fresh process training ``--steps`` optimizer steps with Lightning (CPU, fp32) on
random tokens (micro-batch ``--batch`` x ``--sample-len`` tokens, chunks of ``--ctx-len``, world
vocabulary); tokens/s is taken from the median step after the first ``--warmup`` steps, peak RSS
from the process's maximum resident set. Runs alternate (ours x052, ours x070, theirs, then again)
so that a busy machine slows both sides alike; the ratio to the infctx trainer's median is what
counts. Our side runs with full BPTT (bptt_truncate: false) and per-chunk recomputation.

The infctx trainer is not part of this project: ``--infctx-path`` is a checkout of
https://github.com/RWKV/RWKV-infctx-trainer (its RWKV-v5 folder, x052 only, is used). It runs its
own LightningModule (compute_loss, per-block gradient checkpointing, its L2Wrap) with two changes
needed on a CPU: torch's fused Adam replaces DeepSpeed's FusedAdam (a CUDA op) in the same parameter
groups, and TorchScript is off (RWKV_JIT_ON=0, as with torch.compile it is a CUDA-era switch).
Without ``--infctx-path`` only our side runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _random_batches(batch: int, sample_len: int, vocab: int, count: int, ours: bool) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, vocab, (batch, sample_len + 1), generator=g)
        if ours:
            batches.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:], "mask": torch.ones(batch, sample_len)})
        else:  # the infctx trainer shifts the targets itself
            batches.append({"input_ids": ids, "attention_mask": torch.ones(batch, sample_len)})
    return batches


def _our_module(args):
    from rwkv_infctx.training.module import RWKVModule

    return RWKVModule(version=args.version, n_layer=args.n_layer, n_embd=args.n_embd, vocab_size=args.vocab,
                      ctx_len=args.ctx_len, bptt_truncate=False, recompute_chunks=True, lr_init=1e-4,
                      lr_final=1e-4, warmup_steps=0, export_pth=False, plot_loss=False)


def _their_module(args):
    os.environ["RWKV_JIT_ON"] = "0"  # their switch; read when their package is imported
    os.environ["RWKV_TORCH_COMPILE"] = "0"
    sys.path.insert(0, str(Path(args.infctx_path) / "RWKV-v5"))
    import torch
    from src.model import RWKV  # noqa: the other trainer's package, from --infctx-path

    class CPURWKV(RWKV):
        def configure_optimizers(self):
            # DeepSpeed's FusedAdam cannot step on a CPU: the same groups in torch's fused Adam
            # (one kernel over all tensors, as FusedAdam on a GPU; our side fuses its AdamW too)
            fused = super().configure_optimizers()
            fused = fused["optimizer"] if isinstance(fused, dict) else fused
            return torch.optim.Adam(fused.param_groups, betas=(self.beta1, self.beta2), eps=self.adam_eps,
                                    fused=True)

    return CPURWKV(load_model=".//<#|=@%!$init_model$!%@=|#>//.", n_embd=args.n_embd, n_layer=args.n_layer,
                   vocab_size=args.vocab, ctx_len=args.ctx_len, lr_init=1e-4, lr_final=1e-4,
                   torch_set_float32_matmul_precision=None)


def run_one(args) -> dict:
    """In the child process: train and time one configuration."""
    import lightning as L
    import torch

    from benchmarks.machine import peak_rss_mib

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = args.trainer == "ours"
    module = _our_module(args) if ours else _their_module(args)
    step_times: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step_times.append(time.perf_counter() - self.start)

    batches = _random_batches(args.batch, args.sample_len, args.vocab, args.steps, ours)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=args.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StepTimer()], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.microbatch_size = args.batch  # read by the infctx trainer (its own Trainer subclass sets it)
    trainer.fit(module, train_dataloaders=loader)
    timed = step_times[args.warmup:] or step_times
    median = statistics.median(timed)
    return {"trainer": args.trainer, "version": args.version, "steps": len(step_times),
            "median_step_s": round(median, 3), "tokens_per_s": round(args.batch * args.sample_len / median, 1),
            "peak_rss_mb": round(peak_rss_mib(), 1)}


def run_child(args, trainer: str, version: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", trainer, "--version", version]
    for key in ("steps", "warmup", "batch", "sample_len", "ctx_len", "n_layer", "n_embd", "vocab", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.infctx_path:
        cmd += ["--infctx-path", str(args.infctx_path)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        raise RuntimeError(f"{trainer} {version} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio_table(runs: list[dict]) -> list[dict]:
    """Per version: our median tokens/s and peak RSS over the runs, and their ratio to the infctx trainer's."""
    theirs = [r for r in runs if r["trainer"] == "infctx"]
    base_tps = statistics.median(r["tokens_per_s"] for r in theirs) if theirs else None
    base_rss = statistics.median(r["peak_rss_mb"] for r in theirs) if theirs else None
    rows = []
    for version in sorted({r["version"] for r in runs if r["trainer"] == "ours"}):
        mine = [r for r in runs if r["trainer"] == "ours" and r["version"] == version]
        tps = statistics.median(r["tokens_per_s"] for r in mine)
        rss = statistics.median(r["peak_rss_mb"] for r in mine)
        rows.append({"version": version, "tokens_per_s": [r["tokens_per_s"] for r in mine],
                     "peak_rss_mb": [r["peak_rss_mb"] for r in mine],
                     "speed_ratio": round(tps / base_tps, 2) if base_tps else None,
                     "rss_ratio": round(rss / base_rss, 2) if base_rss else None})
    if theirs:
        rows.append({"version": "x052 (infctx trainer)", "tokens_per_s": [r["tokens_per_s"] for r in theirs],
                     "peak_rss_mb": [r["peak_rss_mb"] for r in theirs], "speed_ratio": 1.0, "rss_ratio": 1.0})
    return rows


def write_results(args, runs: list[dict], out: Path) -> None:
    rows = ratio_table(runs)
    shapes = (f"L{args.n_layer} D{args.n_embd}, vocab {args.vocab}, micro-batch {args.batch} x {args.sample_len} "
              f"tokens, ctx_len {args.ctx_len}, fp32, {args.steps} steps (median after {args.warmup}), "
              f"{args.threads} thread(s), {args.pairs} alternated round(s)")
    lines = ["# Our trainer vs the RWKV-infctx-trainer", "", f"Shapes: {shapes}.", "",
             "| model | tokens/s (each run) | peak RSS MB (each run) | speed vs infctx | RSS vs infctx |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['version']} | {', '.join(map(str, row['tokens_per_s']))} | "
                     f"{', '.join(map(str, row['peak_rss_mb']))} | {row['speed_ratio']} | {row['rss_ratio']} |")
    for path, text in ((out, json.dumps({"shapes": shapes, "runs": runs, "table": rows}, indent=2) + "\n"),
                       (out.with_suffix(".md"), "\n".join(lines) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--infctx-path", type=Path, help="checkout of RWKV-infctx-trainer (with RWKV-v5/)")
    parser.add_argument("--versions", nargs="+", default=["x052", "x070"], choices=["x052", "x060", "x070"])
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2, help="alternated rounds")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sample-len", type=int, default=256)
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "infctx_compare.json")
    parser.add_argument("--child", choices=["ours", "infctx"], help=argparse.SUPPRESS)
    parser.add_argument("--version", default="x052", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        args.trainer = args.child
        print(json.dumps(run_one(args)))
        return
    if args.infctx_path and not (args.infctx_path / "RWKV-v5" / "src" / "model.py").is_file():
        parser.error(f"--infctx-path {args.infctx_path} has no RWKV-v5/src/model.py (an RWKV-infctx-trainer checkout)")
    runs = []
    for round_ in range(args.pairs):
        plan = [("ours", v) for v in args.versions] + ([("infctx", "x052")] if args.infctx_path else [])
        for trainer, version in plan if round_ % 2 == 0 else reversed(plan):
            run = run_child(args, trainer, version)
            runs.append(run)
            print(f"round {round_ + 1}: {trainer} {version}: {run['tokens_per_s']} tokens/s, "
                  f"peak RSS {run['peak_rss_mb']} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args, runs, args.out)


if __name__ == "__main__":
    main()
