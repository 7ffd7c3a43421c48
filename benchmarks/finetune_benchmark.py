"""Finetuning benchmark (CPU or GPU): memory and speed of full finetuning vs LoRA vs state tuning.

    python benchmarks/finetune_benchmark.py [--n_layer 12 --n_embd 768 --ctx_len 128 --sample_len 256 --steps 2]

Each mode trains the same x070 model (official init) in its own process, through the trainer's
own pieces (``prepare_finetuning``, ``param_groups``, AdamW, ``chunked_sample_loss`` with full
BPTT and per-chunk recompute): one warm-up step, then ``--steps`` timed steps. Recorded per mode:
trained and frozen parameters, optimizer-state bytes (Adam's moments, as allocated), tokens/s of
the timed steps, peak RSS of the process (and CUDA peak allocation on a GPU). Results go to
benchmarks/results/finetune.json and .md, with machine, commit and command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_name, git_commit, peak_rss_mib  # noqa: E402

MODES = {
    "full": {},
    "lora_r16": {"lora": {"r": 16, "alpha": 16}},
    "state": {"train_state": True},
}


def run_mode(mode: str, args) -> dict:
    """One mode, measured in this process (its peak RSS is this mode's alone)."""
    import torch

    from rwkv_infctx.config import ModelConfig
    from rwkv_infctx.model import RWKV
    from rwkv_infctx.model.adapters import LoraConfig, parameter_counts, prepare_finetuning
    from rwkv_infctx.training.bptt import chunked_sample_loss
    from rwkv_infctx.training.optim import param_groups

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = ModelConfig(version="x070", n_layer=args.n_layer, n_embd=args.n_embd, vocab_size=args.vocab_size)
    model = RWKV(cfg)
    model.init_weights()
    setup = MODES[mode]
    lora = LoraConfig(**setup["lora"]) if "lora" in setup else None
    prepare_finetuning(model, lora, setup.get("train_state", False), [], [], [], None)
    model.to(device)
    trained, frozen = parameter_counts(model)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.sample_len + 1), generator=g).to(device)
    mask = torch.ones(args.batch_size, args.sample_len, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = chunked_sample_loss(model, ids[:, :-1], ids[:, 1:], mask, args.ctx_len)
        out.loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return out.loss.item()

    step()  # warm-up: allocates the optimizer state
    started = time.perf_counter()
    for i in range(args.steps):
        loss = step()
        print(f"  {mode}: step {i + 1}/{args.steps}, loss {loss:.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    optimizer_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                          for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    result = {"mode": mode, "trained_params": trained, "frozen_params": frozen,
              "optimizer_state_bytes": optimizer_bytes,
              "tokens_per_s": args.batch_size * args.sample_len * args.steps / seconds,
              "peak_rss_gib": peak_rss_mib() / 1024}
    if device == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def write_results(results: list[dict], args, command: str) -> None:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu_name()}"
    out = ROOT / "benchmarks" / "results"
    record = {"device": device, "threads": torch.get_num_threads(), "commit": git_commit(), "command": command,
              "model": f"x070 L{args.n_layer}-D{args.n_embd} vocab {args.vocab_size}",
              "step": f"batch {args.batch_size} x {args.sample_len} tokens in chunks of {args.ctx_len}, full BPTT, "
                      f"AdamW fp32, {args.steps} timed steps after 1 warm-up", "results": results}
    (out / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    cuda = any("cuda_peak_gib" in r for r in results)
    lines = [f"# Finetuning modes: {record['model']}", "",
             f"{device}, {record['threads']} threads; commit {record['commit']}; `{command}`", "",
             f"One training step: {record['step']}.", "",
             "| mode | trained params | frozen params | optimizer state | tokens/s | peak RSS (GiB) |"
             + (" CUDA peak (GiB) |" if cuda else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | error: {r['error']} |")
            continue
        lines.append(f"| {r['mode']} | {r['trained_params']:,} | {r['frozen_params']:,} | "
                     f"{r['optimizer_state_bytes'] / 2**20:,.1f} MiB | {r['tokens_per_s']:.1f} | {r['peak_rss_gib']:.2f} |"
                     + (f" {r['cuda_peak_gib']:.2f} |" if cuda else ""))
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--vocab_size", type=int, default=65536)
    p.add_argument("--ctx_len", type=int, default=128)
    p.add_argument("--sample_len", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args)))
        return
    results = []
    for mode in args.modes:
        print(f"{mode} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", mode, *sys.argv[1:]], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            results.append({"mode": mode, "error": f"exit {proc.returncode}"})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    write_results(results, args, "python benchmarks/finetune_benchmark.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
