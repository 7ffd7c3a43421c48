"""Tokenisation throughput (tokens/s, MB/s) on a few MB of real English text.

    python benchmarks/tokenize_benchmark.py [--tokenizer world] [--mb 4] [--workers 1 2]
                                            [--out benchmarks/results/tokenize.json]

The text is CPython's documentation prose: the ``pydoc_data.topics`` help pages and the embedded
corpus ``rwkv_infctx/data/corpus/english_prose.jsonl``, repeated until the target size. Each
page or record is one document; documents are spread over a ``multiprocessing.Pool`` the way a
data-preparation job would, so the timings include sending the ids back to the parent. The
in-process row (0 workers) shows what the pool's overhead costs. MB means 10**6 bytes of UTF-8.
No torch import: this measures the data path only. For the world tokenizer it also times the `rwkv`
package's TRIE_TOKENIZER in process, which must give the same ids: the reason we keep our own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from rwkv_infctx.data.tokenizer import load_tokenizer  # noqa: E402

CORPUS = ROOT / "rwkv_infctx" / "data" / "corpus" / "english_prose.jsonl"

_worker_tokenizer = None


def build_documents(target_mb: float) -> list[str]:
    """Whole documents, repeated until ``target_mb``: no document is cut, so none loses its ending."""
    import pydoc_data.topics

    with open(CORPUS, encoding="utf-8") as f:
        corpus = [json.loads(line)["text"] for line in f if line.strip()]
    base = list(pydoc_data.topics.topics.values()) + corpus
    docs, size = [], 0
    while size < target_mb * 1e6:
        doc = base[len(docs) % len(base)]
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs


RWKV_PACKAGE = "rwkv-package"  # the rwkv pip package's TRIE_TOKENIZER, which our world tokenizer must equal


def _init_worker(name: str) -> None:
    global _worker_tokenizer
    if name == RWKV_PACKAGE:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

        _worker_tokenizer = TRIE_TOKENIZER(str(load_tokenizer("world").vocab_path))
    else:
        _worker_tokenizer = load_tokenizer(name)


def _encode(doc: str) -> list[int]:
    return _worker_tokenizer.encode(doc)


def _time_once(docs: list[str], pool) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    if pool is None:
        ids = [_encode(d) for d in docs]
    else:
        # Small chunks keep both workers busy to the end; larger ones would barely cut IPC further.
        ids = pool.map(_encode, docs, chunksize=8)
    return time.perf_counter() - start, ids


def measure(docs: list[str], name: str, workers: int, repeats: int) -> tuple[dict, int]:
    """Median of ``repeats`` timed passes; pool start-up and vocabulary loading are left out."""
    _init_worker(name)
    pool = None
    if workers:
        # spawn: forking after the Rust `tokenizers` library has started its threads can deadlock.
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(name,))
        pool.map(_encode, ["warm-up"] * workers * 2, chunksize=1)  # every worker has loaded its vocabulary
    try:
        runs = [_time_once(docs, pool) for _ in range(repeats)]
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    times = [t for t, _ in runs]
    tokens = sum(len(ids) for ids in runs[0][1])
    checksum = hash(tuple(tuple(ids) for ids in runs[0][1]))
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    median = statistics.median(times)
    return {"workers": workers, "seconds_median": round(median, 3), "seconds_min": round(min(times), 3),
            "tokens": tokens, "tokens_per_s": round(tokens / median), "mb_per_s": round(megabytes / median, 3)}, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="world", help="world, neox or a tokenizer.json path")
    parser.add_argument("--mb", type=float, default=4.0, help="size of the text, in MB")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0 = in the main process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tokenize.json"))
    args = parser.parse_args()

    docs = build_documents(args.mb)
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    results = {"machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(),
                           "usable_cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                           "platform": platform.platform(),
                           # Other jobs on the machine slow the pool rows most: keep the context.
                           "load_average_1min_at_start": round(os.getloadavg()[0], 2)},
               "tokenizer": args.tokenizer, "documents": len(docs), "megabytes": round(megabytes, 3),
               "repeats": args.repeats, "runs": []}
    print(f"{args.tokenizer} tokenizer, {len(docs)} documents, {megabytes:.2f} MB, {results['machine']['cpu']}")
    print(f"{'workers':>7} {'median s':>9} {'tokens':>9} {'tokens/s':>10} {'MB/s':>7}")
    checksums = set()
    for workers in args.workers:
        row, checksum = measure(docs, args.tokenizer, workers, args.repeats)
        checksums.add(checksum)
        results["runs"].append(row)
        print(f"{workers:>7} {row['seconds_median']:>9.3f} {row['tokens']:>9} {row['tokens_per_s']:>10} "
              f"{row['mb_per_s']:>7.3f}")
    if args.tokenizer == "world":
        # Why we keep our own world tokenizer rather than wrapping the rwkv package's: this row.
        row, checksum = measure(docs, RWKV_PACKAGE, 0, args.repeats)
        checksums.add(checksum)
        ours = results["runs"][0]
        row["speedup_of_ours_in_process"] = round(ours["tokens_per_s"] / row["tokens_per_s"], 2) if ours["workers"] == 0 else None
        results["rwkv_package_trie_tokenizer"] = row
        print(f"rwkv package's TRIE_TOKENIZER, in process: {row['seconds_median']:.3f} s, {row['tokens_per_s']} tokens/s"
              f" (ours in process: {row['speedup_of_ours_in_process']}x)")
    if len(checksums) != 1:
        raise SystemExit("error: worker counts (or the rwkv package's tokenizer) gave different token ids")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
