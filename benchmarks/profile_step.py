"""Where one training step's time goes: torch.profiler over one full step (forward, backward, AdamW).

    python benchmarks/profile_step.py [--code-root DIR] [--label after] [--out benchmarks/results/profile.json]

Profiles, after one warm-up step, one step of each job below and prints the operators with the
most self CPU time. ``--code-root`` points at another checkout of this project (e.g. an older
commit unpacked with ``git archive``) to profile that code with this script: before/after tables.
Results are merged into the JSON file under ``--label`` (one entry per job).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import git_commit  # noqa: E402

# name -> (version, batch, sample_len, ctx_len): the default job, and the issue-17 comparison shapes
JOBS = {
    "default x070 2x512 ctx128": ("x070", 2, 512, 128),
    "x052 4x256 ctx256": ("x052", 4, 256, 256),
    "x070 4x256 ctx256": ("x070", 4, 256, 256),
}


def profile_job(version: str, batch: int, sample_len: int, ctx_len: int, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rwkv_infctx.config import ModelConfig
    from rwkv_infctx.model import RWKV
    from rwkv_infctx.training.bptt import chunked_sample_loss

    torch.manual_seed(0)
    model = RWKV(ModelConfig(version=version, n_layer=4, n_embd=256, vocab_size=65536, head_size=64))
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-18, fused=True)  # as the trainer
    ids = torch.randint(0, 65536, (batch, sample_len + 1))

    def step():
        out = chunked_sample_loss(model, ids[:, :-1], ids[:, 1:], torch.ones(batch, sample_len), ctx_len,
                                  recompute=True, l2wrap=1e-4)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state, allocator
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    seconds = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    rows = [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in events[:top]]
    return {"step_s_profiled": round(seconds, 2), "self_total_ms": round(total / 1e3, 1), "top": rows}


def write_markdown(results: dict, path: Path) -> None:
    """Every label's top operators, job by job, side by side in one file."""
    lines = ["# Where a training step's time goes (torch.profiler, self CPU time)", "",
             "Written by `benchmarks/profile_step.py`; one step after a warm-up, each job in one process. "
             "Absolute times are inflated by the profiler and by the shared machine; compare shares.", ""]
    for name in JOBS:
        for label, run in results.items():
            job = run["jobs"].get(name)
            if not job:
                continue
            lines += [f"## {name}: {label} ({run.get('commit', run['code_root'])})", "",
                      f"Step under the profiler: {job['step_s_profiled']} s; self CPU total {job['self_total_ms']} ms.", "",
                      "| operator | calls | self ms | share |", "|---|---|---|---|"]
            lines += [f"| {r['op']} | {r['calls']} | {r['self_ms']} | {r['share']:.1%} |" for r in job["top"]]
            lines.append("")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-root", default=str(ROOT), help="checkout of rwkv-infctx whose code is profiled")
    parser.add_argument("--label", default="after", help="key of this run in the JSON file")
    parser.add_argument("--commit", help="the commit of --code-root, recorded beside its figures")
    parser.add_argument("--jobs", nargs="*", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profile.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.code_root).resolve()))

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.label] = {"code_root": str(args.code_root), "commit": args.commit or git_commit(), "jobs": {}}
    for name in args.jobs:
        print(f"profiling {name} ...", flush=True)
        job = profile_job(*JOBS[name], top=args.top)
        results[args.label]["jobs"][name] = job
        print(f"  step {job['step_s_profiled']} s under the profiler")
        for row in job["top"]:
            print(f"  {row['op']:<45} {row['calls']:6d} calls {row['self_ms']:9.1f} ms {row['share']:6.1%}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)
    write_markdown(results, out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
