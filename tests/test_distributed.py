"""DDP on CPU (gloo): two processes with half the batch each train exactly like one process.

The global batch is the same samples on any number of devices (``GlobalBatchSampler``) and DDP
averages the two halves' gradients, so losses and weights agree up to float summation order.
"""

import csv
import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .helpers import ROOT, TINY_CLI

TINY = [*TINY_CLI, "--model.lr_init", "1e-2", "--model.warmup_steps", "0", "--data.test_split", "5",
        "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "2",
        "--trainer.callbacks", "null", "--trainer.enable_checkpointing", "false"]


def fit_rows(out: Path) -> list[dict]:
    (metrics,) = glob.glob(str(out / "**" / "metrics.csv"), recursive=True)
    return list(csv.DictReader(open(metrics)))


def fit(out: Path, *args) -> tuple[list[float], dict, list[dict]]:
    proc = subprocess.run([sys.executable, "lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY, *args,
                           "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = fit_rows(out)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    (pth,) = glob.glob(str(out / "**" / "rwkv-final.pth"), recursive=True)
    return losses, torch.load(pth, weights_only=True), rows


def documents_of_varied_length(folder: Path) -> Path:
    """Whole documents of 5 to 60 words (a sample each): the devices' token counts differ."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    path = folder / "varied.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(24):
            n = 5 + (i * 37) % 56
            f.write(json.dumps({"text": " ".join(words[i * 60: i * 60 + n])}) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("samples", ["fixed-length", "varied-length"])
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, samples):
    lambada = tmp_path / "lambada.jsonl"  # 5 records: 3 on rank 0, 2 (and a repeat not counted) on rank 1
    lambada.write_text("".join(json.dumps({"text": f"record {i} of the held-out file ends with word{i}"}) + "\n"
                               for i in range(5)))
    data = ["--model.val_lambada", str(lambada)] if samples == "fixed-length" else [
        "--data.source", str(documents_of_varied_length(tmp_path)), "--data.sample_len", "null"]
    one_losses, one_weights, _ = fit(tmp_path / "one", "--data.batch_size", "4", *data)
    two_losses, two_weights, rows = fit(tmp_path / "two", "--data.batch_size", "2", "--trainer.strategy", "ddp",
                                        "--trainer.devices", "2", *data)
    assert len(one_losses) == len(two_losses) == 4
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    assert one_weights.keys() == two_weights.keys()
    for name, weight in one_weights.items():
        torch.testing.assert_close(two_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    assert one_losses[-1] < one_losses[0] - 0.1  # the weights moved: their agreement means something
    one_val = [float(r["val/loss"]) for r in fit_rows(tmp_path / "one") if r.get("val/loss")]
    two_val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(one_val) == 2 and two_val == pytest.approx(one_val, rel=1e-5)  # 5 samples: 3 on rank 0, 2 on rank 1
    if samples == "fixed-length":
        one_lambada = [float(r["val/lambada_ppl"]) for r in fit_rows(tmp_path / "one") if r.get("val/lambada_ppl")]
        two_lambada = [float(r["val/lambada_ppl"]) for r in rows if r.get("val/lambada_ppl")]
        assert len(one_lambada) == 2 and two_lambada == pytest.approx(one_lambada, rel=1e-5)
        last = [r for r in rows if r.get("train/loss")][-1]
        tokens_per_step = 4 * 64  # global batch 4 samples x 64 positions, whatever the device count
        assert float(last["train/step_tokens"]) == float(last["train/micro_batch_tokens"]) == tokens_per_step
        assert float(last["train/tokens_seen"]) == 4 * tokens_per_step


def _pad_worker(rank: int, port: int, results):
    import torch.distributed as dist

    from rwkv_infctx.training.strategy import pad_to_longest_across_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    T = 32 * (rank + 1)
    batch = {"input_ids": torch.ones(2, T, dtype=torch.long), "targets": torch.ones(2, T, dtype=torch.long),
             "mask": torch.ones(2, T)}
    padded = pad_to_longest_across_ranks(batch)
    results[rank] = (tuple(padded["input_ids"].shape), float(padded["mask"].sum()), int(padded["targets"][:, T:].sum()))
    dist.destroy_process_group()


def test_zero3_batches_are_padded_to_the_longest_rank_with_untrained_positions():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_pad_worker, args=(port, results), nprocs=2)
    # both ranks run 64 positions (= the same number of chunks); the added ones are masked out
    assert dict(results) == {0: ((2, 64), 2 * 32.0, 0), 1: ((2, 64), 2 * 64.0, 0)}
