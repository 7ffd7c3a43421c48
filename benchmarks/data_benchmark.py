"""Data pipeline at corpus scale: preload time and peak memory, fit start-up time and peak memory.

    python benchmarks/data_benchmark.py [--tokens 25e6 100e6] [--binidx_tokens 1e6 40e6] [--num_proc 2]

Corpora are jsonl files of real text gathered from the machine (the .py/.md/.txt/.rst files of
the installed Python packages, one file per record), written to --work (not committed). Each
step runs in its own process, whose memory (and its workers') is sampled every 0.1 s from /proc:
RSS (what `top` shows; it includes the pages of memory-mapped files it has read, which the kernel
reclaims at will) and RssAnon (the process's own heap, the memory it needs).

data start-up = open the cache (or binidx) as fit does, split, and collate the first batch;
fit start-up = `lightning_trainer.py fit` with a tiny model (2 layers, n_embd 64) for one step
(sample_len 512, batch 1): the cache is opened, split and sampled, and one batch is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import ROOT, cpu_name, git_commit  # noqa: E402

BYTES_PER_TOKEN = 4.2  # world tokenizer on package sources and docs, JSON-escaped (measured here)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    pids += _tree(int(child))
    except OSError:
        pass
    return pids


def _memory_kb(pid: int) -> dict:
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    fields[key] = int(line.split()[1])
    except OSError:
        pass
    return fields


def run_measured(cmd: list[str], cwd: Path = ROOT) -> dict:
    """Wall time, and the peaks of the whole process tree's RSS and RssAnon (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"rss": 0, "anon": 0, "main_anon": 0}

    def sample():
        while proc.poll() is None:
            per_pid = [_memory_kb(p) for p in _tree(proc.pid)]
            peaks["rss"] = max(peaks["rss"], sum(m.get("VmRSS", 0) for m in per_pid))
            peaks["anon"] = max(peaks["anon"], sum(m.get("RssAnon", 0) for m in per_pid))
            peaks["main_anon"] = max(peaks["main_anon"], per_pid[0].get("RssAnon", 0) if per_pid else 0)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peaks["rss"] / 1024),
            "peak_anon_mb": round(peaks["anon"] / 1024), "peak_main_anon_mb": round(peaks["main_anon"] / 1024),
            "stdout": out.strip().splitlines()[-1] if out.strip() else ""}


def text_files():
    for base in site.getsitepackages():
        for path in sorted(Path(base).rglob("*")):
            if path.suffix in (".py", ".md", ".txt", ".rst") and path.is_file():
                yield path


def make_corpus(path: Path, tokens: float) -> Path:
    """A jsonl of about ``tokens`` world tokens of real text (files repeated if the machine has too few)."""
    target = int(tokens * BYTES_PER_TOKEN)
    if path.exists() and path.stat().st_size >= target:
        return path
    tmp, written = path.with_name(path.name + ".tmp"), 0
    with open(tmp, "w") as f:
        while written < target:
            for file in text_files():
                text = file.read_text(encoding="utf-8", errors="ignore")
                if text.strip():
                    line = json.dumps({"text": text}) + "\n"
                    f.write(line)
                    written += len(line.encode())
                    if written >= target:
                        break
    os.replace(tmp, path)
    return path


def make_binidx(prefix: Path, tokens: float) -> Path:
    from rwkv_infctx.data.binidx import write_binidx

    if not prefix.with_suffix(".idx").exists():
        rng = np.random.default_rng(0)
        write_binidx(prefix, (rng.integers(0, 65536, 1000, dtype=np.uint16) for _ in range(int(tokens) // 1000)))
    return prefix


def write_config(folder: Path, source: Path, sample_len: int = 512) -> Path:
    cfg = folder / "config.yaml"
    cfg.write_text(f"model:\n  n_layer: 2\n  n_embd: 64\n  head_size: 32\n  ctx_len: 512\n  vocab_size: 65536\n"
                   f"  export_pth: false\n  plot_loss: false\n"
                   f"data:\n  source: {source}\n  data_path: {folder / 'cache'}\n  sample_len: {sample_len}\n"
                   f"  batch_size: 1\n  test_split: 1\n")
    return cfg


def fit_startup(cfg: Path, folder: Path) -> dict:
    return run_measured([sys.executable, "lightning_trainer.py", "fit", "-c", str(cfg), "--trainer.max_steps", "1",
                         "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
                         "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(folder / "run")])


_DATA_STARTUP = """
import sys, time
start = time.perf_counter()
sys.path.insert(0, {root!r})
from rwkv_infctx.scripts.preload import data_module_from_config
data, _ = data_module_from_config({cfg!r}, {{}})
data.setup("fit")
batch = next(iter(data.train_dataloader()))
print(f"{{len(data.train_set)}} training samples, first batch {{tuple(batch['input_ids'].shape)}} "
      f"in {{time.perf_counter() - start:.2f}} s")
"""


def data_startup(cfg: Path) -> dict:
    """The data side of fit's start-up alone: open the cache (or binidx), split, sample, collate one batch."""
    return run_measured([sys.executable, "-c", _DATA_STARTUP.format(root=str(ROOT), cfg=str(cfg))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, nargs="+", default=[25e6, 100e6])
    parser.add_argument("--binidx_tokens", type=float, nargs="+", default=[1e6, 40e6])
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--work", default="/tmp/rwkv-data-benchmark")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "commit": git_commit(), "jsonl": [], "binidx": []}
    for tokens in args.tokens:
        folder = work / f"jsonl-{tokens / 1e6:g}M"
        folder.mkdir(exist_ok=True)
        corpus = make_corpus(folder / "corpus.jsonl", tokens)
        cfg = write_config(folder, corpus)
        row = {"target_tokens": tokens, "corpus_mb": round(corpus.stat().st_size / 2**20)}
        row["preload"] = run_measured([sys.executable, "preload_datapath.py", str(cfg), "--overwrite",
                                       "--num_proc", str(args.num_proc)])
        row["data_startup"] = data_startup(cfg)
        row["fit_startup"] = fit_startup(cfg, folder)
        results["jsonl"].append(row)
        print(json.dumps(row), flush=True)
    for tokens in args.binidx_tokens:
        folder = work / f"binidx-{tokens / 1e6:g}M"
        folder.mkdir(exist_ok=True)
        cfg = write_config(folder, make_binidx(folder / "corpus", tokens))
        row = {"tokens": tokens, "data_startup": data_startup(cfg), "fit_startup": fit_startup(cfg, folder)}
        results["binidx"].append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))


def to_markdown(results: dict) -> str:
    lines = [f"# Data benchmark\n\nmachine: {results['machine']}; commit {results['commit']}\n",
             "| data | corpus | step | wall s | peak RSS MB | peak RssAnon MB (all processes) | main process RssAnon MB | output |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["jsonl"]:
        for step in ("preload", "data_startup", "fit_startup"):
            r = row[step]
            lines.append(f"| jsonl {row['target_tokens'] / 1e6:g}M tokens | {row['corpus_mb']} MB | {step} | {r['seconds']} | "
                         f"{r['peak_rss_mb']} | {r['peak_anon_mb']} | {r['peak_main_anon_mb']} | "
                         f"{r['stdout'][:110] if step != 'fit_startup' else ''} |")
    for row in results["binidx"]:
        for step in ("data_startup", "fit_startup"):
            r = row[step]
            lines.append(f"| binidx {row['tokens'] / 1e6:g}M tokens | {row['tokens'] * 2 / 2**20:.0f} MB | {step} | "
                         f"{r['seconds']} | {r['peak_rss_mb']} | {r['peak_anon_mb']} | {r['peak_main_anon_mb']} | "
                         f"{r['stdout'][:110] if step == 'data_startup' else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
